"""Cost of curvature products: gradient vs HVP (rev, fwd) vs one Hutchinson probe.

Each configuration runs in a fresh subprocess (``python benchmarks/bench_curvature.py
--worker JSON``) so its peak RSS (kernel VmHWM after a reset, prm_check.budget.meter) is
clean. Models have random weights and eager attention: the tiny default-like OPT (hidden
128, 4 layers, ffn 512, vocab 2048) at 8×128 and an OPT-125m-shaped model at 4×128. The
Pareto grid covers probes-per-graph K ∈ {4, 8, 16} × micro-batch {1, 2, 4}×128 for the
default parameter set (transformer blocks) and all parameters.

    .venv/bin/python -m pytest benchmarks/bench_curvature.py -s            # full (~15 min quiet)
    PRM_BENCH_QUICK=1 .venv/bin/python -m pytest benchmarks/bench_curvature.py -s   # small grid

Writes reports/bench/curvature.json and prints a table. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT_DIR, SEQ, opt_model, worker_main
from _common import run_isolated as _run_isolated

OUT = OUT_DIR / "curvature.json"
PARAMS = {"blocks": "model.decoder.layers.*", "all": None}


def _model(kind: str):
    """The tiny default shape or the OPT-125m shape, random weights (benchmarks/_common.py)."""
    return opt_model(kind)


def worker(cfg: dict) -> dict:
    """Run one configuration in this (fresh) process; return time and peak memory."""
    import statistics
    from contextlib import nullcontext

    import torch

    from prm_check.budget.allocator import returning_freed_memory
    from prm_check.budget.meter import Meter
    from prm_check.curvature import HessianOperator, hutchinson_diagonal
    from prm_check.data.batching import Batch
    from prm_check.lm import batch_loss_sum

    if cfg.get("alloc") == "lean":  # PRM_CHECK_MALLOC=lean (prm_check/budget/allocator.py)
        os.environ["PRM_CHECK_MALLOC"] = "lean"
    torch.set_num_threads(int(cfg.get("threads", 2)))
    model = _model(cfg["model"])
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, model.config.vocab_size, (cfg["batch"], SEQ), generator=gen)
    batch = Batch(ids, torch.ones_like(ids))
    micro = cfg.get("micro")
    op = HessianOperator(
        model,
        [batch],
        PARAMS[cfg["params"]],
        method=cfg.get("method", "rev"),
        probes_per_graph=cfg.get("k", 1),
        max_tokens=None if micro is None else micro * SEQ,
    )
    mode = cfg["mode"]
    v = torch.randn(op.n, generator=gen) if mode == "hvp" else None

    def step():
        if mode == "grad":
            alloc = returning_freed_memory() if cfg.get("alloc") == "lean" else nullcontext()
            with op._scope(), alloc:
                loss, _ = batch_loss_sum(op.model, op.batches[0])
                torch.autograd.grad(loss, op.params)
        elif mode == "hvp":
            op.matvec(v)
        else:  # the diagonal probe loop; "probe_se" also keeps per-entry standard errors
            hutchinson_diagonal(op, cfg["k"], seed=0, entry_stderr=mode == "probe_se")

    if mode in ("probe", "probe_se"):  # warm-up: allocator, first-call overheads
        op.matvec(torch.ones(op.n))
    else:
        step()
    times, peaks = [], []
    for _ in range(int(cfg.get("repeats", 2))):
        with Meter() as m:
            step()
        times.append(m.wall_s)
        peaks.append(m.peak_rss_bytes)
    per = cfg["k"] if mode.startswith("probe") else 1
    return {
        **cfg,
        "n": op.n,
        "wall_s": statistics.median(times) / per,
        "peak_mib": max(peaks) / 2**20,
    }


def run_isolated(cfg: dict) -> dict:
    return _run_isolated(__file__, cfg, timeout=900)


def grid(quick: bool) -> list[dict]:
    cfgs: list[dict] = []
    for model, bsz in (("tiny", 8), ("opt125m", 4)):
        sets = ["blocks"] if quick and model == "tiny" else ["blocks", "all"]
        for ps in sets:
            base = dict(model=model, batch=bsz, params=ps)
            # PRM_CHECK_MALLOC=lean rows (budget/allocator.py): the gradient is measured with
            # and without, and every ratio uses the faster and the leaner gradient
            cfgs.append({**base, "mode": "grad", "repeats": 3})
            cfgs.append({**base, "mode": "grad", "alloc": "lean", "repeats": 3})
            cfgs.append({**base, "mode": "hvp", "method": "rev"})
            cfgs.append({**base, "mode": "hvp", "method": "fwd"})
            ks = (8,) if quick else (4, 8, 16)
            micros = (1, 4) if quick else (1, 2, 4)
            if model == "tiny":
                ks, micros = (8,), (1, 8)
            for k in ks:
                for mb in micros:
                    cfgs.append({**base, "mode": "probe", "k": k, "micro": mb, "repeats": 1})
            if model == "opt125m":  # per-entry standard errors (2n more floats); lean malloc
                cfgs.append({**base, "mode": "probe_se", "k": 8, "micro": 1, "repeats": 1})
                for mb in (1, 4):
                    lean = {"alloc": "lean", "repeats": 1}
                    cfgs.append({**base, "mode": "probe", "k": 16, "micro": mb, **lean})
    return cfgs


def _alloc(r: dict) -> str:
    return r.get("alloc") or "default"


def summarise(rows: list[dict]) -> list[dict]:
    """Add ratios to the gradient of the same model, parameter set, batch *and allocator*
    (a lean-allocator probe against a lean gradient, a default one against a default
    one), plus ``mem_x_leanest_grad`` against the leanest gradient of any allocator; mark
    the Pareto front (over all allocators) and the issue-3 target."""
    grads: dict[tuple, dict] = {}
    for r in rows:
        if r["mode"] == "grad" and "error" not in r:
            grads[(r["model"], r["params"], _alloc(r))] = r
    for r in rows:
        g = grads.get((r["model"], r["params"], _alloc(r)))
        if g and "error" not in r:
            r["time_x_grad"] = r["wall_s"] / g["wall_s"]
            r["mem_x_grad"] = r["peak_mib"] / g["peak_mib"]
            leanest = min(
                v["peak_mib"] for k, v in grads.items() if k[:2] == (r["model"], r["params"])
            )
            r["mem_x_leanest_grad"] = r["peak_mib"] / leanest
    for key in {k[:2] for k in grads}:
        probes = [
            r
            for r in rows
            if (r["model"], r["params"]) == key
            and r["mode"].startswith("probe")
            and "time_x_grad" in r
        ]
        for r in probes:
            tm = (r["time_x_grad"], r["mem_x_grad"])
            r["pareto"] = not any(
                (o["time_x_grad"], o["mem_x_grad"]) != tm
                and o["time_x_grad"] <= tm[0]
                and o["mem_x_grad"] <= tm[1]
                for o in probes
            )
            r["meets_target"] = r["time_x_grad"] <= 2.5 and r["mem_x_grad"] <= 1.8
    return rows


def _label(r: dict) -> str:
    """Mode, with ``+lean`` where it ran with ``PRM_CHECK_MALLOC=lean``."""
    return r["mode"] + ("+lean" if r.get("alloc") == "lean" else "")


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':8} {'params':6} {'mode':8} {'meth':4} {'K':>3} {'mb':>3} "
        f"{'s/op':>8} {'MiB':>7} {'t×g':>5} {'m×g':>5} pareto target"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:8} {r['params']:6} {r['mode']:6} ERROR {r['error']}")
            continue
        lines.append(
            f"{r['model']:8} {r['params']:6} {_label(r):8} {r.get('method', 'rev'):4} "
            f"{r.get('k', ''):>3} {r.get('micro') or '':>3} {r['wall_s']:8.3f} "
            f"{r['peak_mib']:7.0f} {r.get('time_x_grad', 0):5.2f} {r.get('mem_x_grad', 0):5.2f} "
            f"{'*' if r.get('pareto') else '':6} {'ok' if r.get('meets_target') else ''}"
        )
    return "\n".join(lines)


def test_bench_curvature(benchmark):
    quick = os.environ.get("PRM_BENCH_QUICK", "") not in ("", "0")
    rows = summarise([run_isolated(c) for c in grid(quick)])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps({"schema": 1, "quick": quick, "rows": rows}, indent=1))
    tmp.replace(OUT)
    print("\n" + table(rows))
    # pytest-benchmark timing of the tiny model's HVP in this process (for its comparisons)
    import torch

    from prm_check.curvature import HessianOperator
    from prm_check.data.batching import Batch

    model = _model("tiny")
    ids = torch.randint(2, 2048, (8, SEQ), generator=torch.Generator().manual_seed(1))
    op = HessianOperator(model, [Batch(ids, torch.ones_like(ids))], PARAMS["blocks"])
    v = torch.randn(op.n)
    benchmark.pedantic(op.matvec, args=(v,), rounds=3, iterations=1)
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]


if __name__ == "__main__":
    if not worker_main(worker):
        rows = summarise([run_isolated(c) for c in grid("--quick" in sys.argv)])
        print(table(rows))
