"""Budget benchmark: predicted vs measured peak, guard overhead, spawn/import cost.

Run: ``.venv/bin/python -m pytest benchmarks/bench_budget.py -p no:randomly -s`` (or as a
script). Writes ``reports/bench/budget.json`` and prints the tables. Minutes, not seconds:
every point is an OPT step in a fresh guarded child. ``PRM_BUDGET_BENCH_QUICK=1`` keeps
only the tiny model and the overhead measurements.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from prm_check.budget.guard import GuardWorker, measure_only, run_guarded
from prm_check.budget.meter import read_rss, read_vm_data
from prm_check.budget.planner import FIT_NOTE, measure_points, predict_peak

OUT = Path(__file__).resolve().parents[1] / "reports" / "bench" / "budget.json"
TOLERANCE = 0.20


def matmul_work(n_iter: int) -> float:
    """Fixed CPU work (no allocation growth): the '1 s step' of the overhead check."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=g), torch.randn(256, 256, generator=g) / 16
    for _ in range(n_iter):
        a = torch.tanh(a @ b)
    return float(a.sum())


def footprint() -> dict[str, int]:
    """Data segment and RSS of this (child) process right after its preload imports."""
    return {"vm_data": read_vm_data() or 0, "rss": read_rss()}


def peak_table(quick: bool) -> list[dict]:
    models = ("builtin:tiny-opt",) if quick else ("builtin:tiny-opt", "opt-125m")
    rows = measure_points(models=models)
    for r in rows:
        r["predicted_peak_bytes"] = predict_peak(r["model"], r["method"], r["batch"], r["seq"])
        r["rel_error"] = r["predicted_peak_bytes"] / r["peak_rss_bytes"] - 1.0
    return rows


def overhead_table(target_s: float = 1.0, rounds: int = 3) -> dict:
    """Guard overhead = parent's wall for the call minus the child's wall for the step.

    On shared, contended CPUs a step's own time varies by more than 15 % run to run, so the
    in-process vs guarded comparison is reported too but the overhead is the difference
    measured around the same run.
    """
    n_iter = 50
    while min(measure_only(matmul_work, n_iter, stage="s")[1].wall_s for _ in range(2)) < 0.25:
        n_iter *= 2
    best = min(measure_only(matmul_work, n_iter, stage="s")[1].wall_s for _ in range(3))
    per_iter = best / n_iter
    n_iter = max(1, int(target_s / per_iter))
    inproc = [measure_only(matmul_work, n_iter, stage="inproc")[1].wall_s for _ in range(rounds)]
    with GuardWorker(preload=("torch",)) as w:
        w.run(matmul_work, 10, memory="2GiB", seconds=60, stage="warm-up")
        warm = [
            w.run(matmul_work, n_iter, memory="2GiB", seconds=120, stage="warm").measurement
            for _ in range(rounds)
        ]
    fresh = run_guarded(matmul_work, n_iter, memory="2GiB", seconds=120, stage="fresh")
    base = statistics.median(inproc)
    added = [m.total_wall_s - m.wall_s for m in warm]
    step = statistics.median(m.wall_s for m in warm)
    warm_total = statistics.median(m.total_wall_s for m in warm)
    startup = {}
    for preload in ((), ("torch",), ("torch", "transformers")):
        t0 = time.perf_counter()
        res = run_guarded(footprint, memory=None, seconds=60, stage="fp", preload=preload)
        startup["+".join(preload) or "bare"] = {
            "startup_s": res.measurement.startup_s,
            "call_s": time.perf_counter() - t0,
            **res.value,
        }
    return {
        "step_in_process_s": base,
        "in_process_runs_s": inproc,
        "warm_worker_step_s": step,
        "warm_worker_total_s": warm_total,
        "warm_worker_added_s": added,
        "warm_worker_overhead": statistics.median(added) / step,
        "warm_vs_in_process": warm_total / base - 1.0,
        "fresh_child_total_s": fresh.measurement.total_wall_s,
        "fresh_child_startup_s": fresh.measurement.startup_s,
        "fresh_child_overhead": fresh.measurement.total_wall_s / base - 1.0,
        "startup_by_preload": startup,
    }


def render(rows: list[dict], over: dict) -> str:
    mib = 2**20
    lines = [f"predicted vs measured peak RSS (guarded child; {FIT_NOTE})",
             f"{'model':18} {'method':9} {'mb x S':8} {'measured':>10} {'predicted':>10} "
             f"{'error':>7}  step wall"]  # fmt: skip
    for r in rows:
        lines.append(
            f"{r['model']:18} {r['method']:9} {str(r['batch']) + 'x' + str(r['seq']):8} "
            f"{r['peak_rss_bytes'] / mib:8.0f}Mi {r['predicted_peak_bytes'] / mib:8.0f}Mi "
            f"{100 * r['rel_error']:+6.1f}%  {r['wall_s']:.2f} s"
        )
    lines.append(
        f"guard overhead on a {over['warm_worker_step_s']:.2f} s step: warm worker "
        f"{100 * over['warm_worker_overhead']:+.1f}% (call minus step; vs a separate "
        f"in-process run {100 * over['warm_vs_in_process']:+.1f}%); fresh child "
        f"{100 * over['fresh_child_overhead']:+.1f}% "
        f"(start-up {over['fresh_child_startup_s']:.2f} s)"
    )
    for name, s in over["startup_by_preload"].items():
        lines.append(
            f"  spawn + import {name:22} {s['startup_s']:.2f} s; VmData "
            f"{s['vm_data'] / mib:.0f} MiB, RSS {s['rss'] / mib:.0f} MiB"
        )
    return "\n".join(lines)


def run(quick: bool | None = None) -> dict:
    quick = bool(os.environ.get("PRM_BUDGET_BENCH_QUICK")) if quick is None else quick
    rows = peak_table(quick)
    over = overhead_table()
    result = {"schema": 1, "load_avg": os.getloadavg(), "fit_note": FIT_NOTE,
              "tolerance": TOLERANCE, "peaks": rows, "overhead": over}  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(render(rows, over))
    return result


def test_budget_benchmark(benchmark):
    result = benchmark.pedantic(run, rounds=1, iterations=1)
    bad = [r for r in result["peaks"] if abs(r["rel_error"]) > TOLERANCE]
    assert not bad, f"predictions off by more than {TOLERANCE:.0%}: {bad}"
    assert result["overhead"]["warm_worker_overhead"] <= 0.15


if __name__ == "__main__":
    run()
