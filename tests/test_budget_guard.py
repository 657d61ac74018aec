"""The guard: results come back bit-identical, breaches fail one stage, the parent goes on.

Heavy steps run in spawned children under RLIMIT_DATA, so an over-budget step can neither
swap this machine nor wake the OOM killer. Step functions live at module level so the
spawned child can import them.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest

from prm_check.budget.guard import (
    GuardedStepError,
    GuardWorker,
    measure_only,
    minimum_budget,
    run_guarded,
    staged_path,
)
from prm_check.budget.meter import Measurement
from prm_check.errors import BudgetError, BudgetExceeded

OPT125 = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
          "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048,
          "word_embed_proj_dim": 768}  # fmt: skip


def make_tensors(seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 33, generator=g)
    return {
        "f32": x,
        "f64": torch.randn(17, generator=g, dtype=torch.float64),
        "bf16": x.to(torch.bfloat16),
        "i64": torch.randint(-(2**62), 2**62, (9,), generator=g),
        "view": x.t()[3:, ::2],
        "nan": torch.tensor([float("nan"), -0.0, float("inf")]),
        "meta": ("text", 3, 2.5),
    }


def allocate(nbytes: int) -> int:
    import torch

    return int(torch.ones(nbytes, dtype=torch.uint8).sum())


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def fail_with_value_error(msg: str) -> None:
    raise ValueError(msg)


class _Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(a)  # pickling re-calls __init__ with one argument: fails


def fail_unpicklably() -> None:
    raise _Unpicklable("x", "y")


def write_then(fail: bool) -> str:
    path = staged_path("out")
    path.write_text("partial" if fail else "complete")
    if fail:
        raise RuntimeError("step failed after writing")
    return str(path)


def opt125_hvp(seq: int) -> float:
    from prm_check.budget.steps import run_step

    return run_step(OPT125, "hvp_rev", 1, seq)["peak_rss_bytes"]


@pytest.fixture(scope="module")
def worker():
    with GuardWorker(preload=("torch",)) as w:
        yield w


def test_tensors_come_back_bit_identical(worker):
    import torch

    got = worker.run(make_tensors, 3, memory="2GiB", seconds=60, stage="tensors")
    want = make_tensors(3)
    assert isinstance(got.measurement, Measurement) and got.measurement.isolated
    assert got.measurement.peak_rss_bytes >= got.measurement.start_rss_bytes > 0
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            g = got.value[key]
            assert g.dtype == value.dtype and g.shape == value.shape
            assert g.stride() == value.stride()
            assert torch.equal(
                g.view(torch.uint8) if g.is_contiguous() else g,
                value.view(torch.uint8) if value.is_contiguous() else value,
            ) or torch.equal(g.contiguous().view(torch.uint8), value.contiguous().view(torch.uint8))
        else:
            assert got.value[key] == value


def test_child_exception_reraised_with_child_traceback(worker):
    with pytest.raises(ValueError, match="bad input 42") as info:
        worker.run(fail_with_value_error, "bad input 42", memory=None, seconds=60, stage="s")
    assert "fail_with_value_error" in info.value.child_traceback
    # the worker survives an ordinary exception
    assert worker.run(sleep_for, 0, memory=None, seconds=60, stage="s").value == "slept"


def test_unpicklable_child_exception_becomes_guarded_step_error(worker):
    with pytest.raises(GuardedStepError, match="_Unpicklable"):
        worker.run(fail_unpicklably, memory=None, seconds=60, stage="s")


def test_memory_breach_fails_the_stage_and_the_next_step_runs(worker):
    with pytest.raises(BudgetExceeded) as info:
        worker.run(allocate, 2 * 2**30, memory="600MiB", seconds=60, stage="alloc")
    err = info.value
    assert (err.kind, err.stage, err.limit) == ("memory", "alloc", 600 * 2**20)
    assert 0 < err.observed < err.limit  # resident peak; RLIMIT_DATA counts reservations
    assert err.requested == 2 * 2**30
    assert "alloc" in str(err) and "600.0 MiB" in str(err) and "2.0 GiB" in str(err)
    assert pickle.loads(pickle.dumps(err)).requested == err.requested
    out = worker.run(allocate, 10 * 2**20, memory="600MiB", seconds=60, stage="small")
    assert out.value == 10 * 2**20


def test_time_budget_kills_a_long_step_within_three_seconds(worker):
    worker.run(sleep_for, 0, memory=None, seconds=60, stage="warm")  # start-up not timed
    t0 = time.perf_counter()
    with pytest.raises(BudgetExceeded) as info:
        worker.run(sleep_for, 60, memory="1GiB", seconds="5s", stage="slow step")
    elapsed = time.perf_counter() - t0
    assert info.value.kind == "time" and info.value.stage == "slow step"
    assert 5.0 <= elapsed <= 8.0 and info.value.observed <= 8.0
    assert not worker.alive  # killed, whole process group
    assert worker.run(sleep_for, 0.1, memory="1GiB", seconds=30, stage="next").value == "slept"


def test_outputs_promoted_only_on_success(worker, tmp_path: Path):
    final = tmp_path / "result.txt"
    with pytest.raises(RuntimeError, match="after writing"):
        worker.run(write_then, True, memory=None, seconds=60, stage="w", outputs={"out": final})
    assert not final.exists() and list(tmp_path.iterdir()) == []
    worker.run(write_then, False, memory=None, seconds=60, stage="w", outputs={"out": final})
    assert final.read_text() == "complete" and len(list(tmp_path.iterdir())) == 1


def test_budget_below_import_footprint_fails_before_spawning():
    t0 = time.perf_counter()
    with pytest.raises(BudgetError, match="at least") as info:
        run_guarded(sleep_for, 0, memory="64MiB", seconds=10, stage="tiny budget")
    assert time.perf_counter() - t0 < 0.5  # nothing was spawned
    assert "256.0 MiB" in str(info.value) and minimum_budget(("torch",)) == 256 * 2**20
    with pytest.raises(BudgetError, match="negative"):
        run_guarded(sleep_for, 0, memory="-1GiB", seconds=10, stage="s")
    with pytest.raises(BudgetError, match="positive"):
        run_guarded(sleep_for, 0, memory=None, seconds=0, stage="s")


def test_measure_only_in_process():
    value, m = measure_only(allocate, 50 * 2**20, stage="inproc")
    assert value == 50 * 2**20 and m.stage == "inproc" and not m.isolated
    assert m.peak_delta_bytes >= 40 * 2**20 and m.wall_s > 0


def test_opt125m_hvp_under_1_5_gib_fails_in_child_then_parent_continues():
    """The acceptance case: a real OPT-125m-shaped HVP (built in the child) over budget."""
    with pytest.raises(BudgetExceeded) as info:
        run_guarded(opt125_hvp, 32, memory="1.5GiB", seconds=300, stage="hvp opt-125m",
                    preload=("torch", "transformers"))  # fmt: skip
    err = info.value
    assert (err.kind, err.stage, err.limit) == ("memory", "hvp opt-125m", int(1.5 * 2**30))
    assert err.observed > 800 * 2**20  # runtime + 125M float32 weights were resident
    assert "hvp opt-125m" in str(err) and "1.5 GiB" in str(err) and "refused" in str(err)
    ok = run_guarded(allocate, 2**20, memory="1.5GiB", seconds=60, stage="after")
    assert ok.value == 2**20
