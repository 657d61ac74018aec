"""Scale ladder: OPT shapes from the tiny default to OPT-1.3B, plan vs measured.

For each shape (random weights from the planner's typed-in configurations, nothing is
downloaded) the planner (:func:`prm_check.budget.planner.plan`) predicts the peak RSS of
one reverse-over-reverse HVP over all parameters on 1×128 tokens against a 20 GiB budget.
Where it fits, a fresh worker (``RLIMIT_DATA`` = the budget) builds the model and meters

* one HVP (``HessianOperator.matvec``) — what the plan predicts;
* ``K`` Hutchinson probes through one graph (``hutchinson_diagonal``) — peak and time per
  probe (graph build amortised over K).

Where it does not fit, the row is the planner's verdict; nothing runs. The table ends with
a least-squares line ``peak = a + b·P`` through the measured points: memory is linear in
the parameter count when the residuals are small.

    .venv-bench/bin/python -m pytest benchmarks/bench_scale.py -p no:randomly -s

Writes ``reports/bench/scale.json``. Minutes: OPT-350m alone is ~1 min of two busy cores.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    OUT_DIR,
    environment,
    opt_model,
    run_isolated,
    token_batch,
    worker_main,
    write_json,
)

OUT = OUT_DIR / "scale.json"
LADDER = ("builtin:tiny-opt", "opt-125m", "opt-350m", "opt-1.3b")
BUDGET = "20GiB"
BATCH, SEQ, K = 1, 128, 2
TIMEOUT_S = 1500


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import time

    import torch

    from prm_check.budget.meter import Meter
    from prm_check.budget.parse import parse_size
    from prm_check.curvature import HessianOperator, hutchinson_diagonal

    limit = parse_size(cfg["budget"])
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    torch.set_num_threads(int(cfg.get("threads", 2)))
    # warm the code paths (first double backward in a process costs seconds) on a tiny OPT
    small = opt_model({"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "ffn_dim": 32, "vocab_size": 64})  # fmt: skip
    warm = HessianOperator(small, [token_batch(64, 1, 16)], None, probes_per_graph=2)
    warm.matvec(torch.ones(warm.n))
    hutchinson_diagonal(warm, 2, seed=0)
    del warm, small
    t0 = time.perf_counter()
    model = opt_model(cfg["config"])
    build_s = time.perf_counter() - t0
    batch = token_batch(model.config.vocab_size, cfg["batch"], cfg["seq"])
    op = HessianOperator(model, [batch], None, method="rev", probes_per_graph=cfg["k"])
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(3))
    with Meter() as hvp:
        op.matvec(v)
    del v
    with Meter() as probe:
        hutchinson_diagonal(op, cfg["k"], seed=0)
    return {
        "n_params": op.n,
        "build_s": build_s,
        "hvp_peak_bytes": hvp.peak_rss_bytes,
        "hvp_s": hvp.wall_s,
        "probe_peak_bytes": probe.peak_rss_bytes,
        "probe_s": probe.wall_s / cfg["k"],
        "probe_wall_s": probe.wall_s,
        "exact_peak": hvp.exact and probe.exact,
    }


def linear_fit(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least squares ``y = a + b·x`` with R² and the largest relative residual."""
    if len(points) < 2:
        return None
    x, y = np.array(points, dtype=float).T
    b, a = np.polyfit(x, y, 1)
    fit = a + b * x
    ss = float(((y - y.mean()) ** 2).sum())
    return {
        "intercept_bytes": float(a),
        "bytes_per_param": float(b),
        "r2": 1.0 - float(((y - fit) ** 2).sum()) / ss if ss > 0 else 1.0,
        "max_rel_residual": float(np.max(np.abs(fit - y) / y)),
    }


def run(ladder=LADDER, budget: str = BUDGET) -> dict[str, Any]:
    from prm_check.budget.planner import plan, resolve_shape

    env0 = environment()
    rows = []
    for name in ladder:
        p = plan(name, BATCH, SEQ, budget, method="hvp_rev")
        row: dict[str, Any] = {
            "model": name,
            "n_params": p.n_params,
            "batch": BATCH,
            "seq": SEQ,
            "k": K,
            "budget": budget,
            "plan_peak_bytes": p.predicted_peak,
            "plan_terms": p.terms,
            "fits": p.fits,
            "verdict": p.reason,
        }
        if p.fits:
            cfg = {"config": resolve_shape(name).config, "batch": BATCH, "seq": SEQ,
                   "k": K, "budget": budget}  # fmt: skip
            got = run_isolated(__file__, cfg, timeout=TIMEOUT_S)
            if "error" in got:
                row["error"] = got["error"]
            else:
                row.update({k: v for k, v in got.items() if k not in cfg})
                row["plan_error"] = p.predicted_peak / row["hvp_peak_bytes"] - 1.0
        rows.append(row)
    measured = [r for r in rows if "probe_peak_bytes" in r]
    fits = {
        "probe": linear_fit([(r["n_params"], r["probe_peak_bytes"]) for r in measured]),
        "hvp": linear_fit([(r["n_params"], r["hvp_peak_bytes"]) for r in measured]),
        "plan": linear_fit([(r["n_params"], r["plan_peak_bytes"]) for r in rows]),
    }
    return {"schema": 1, "budget": budget, "env_start": env0, "env_end": environment(),
            "rows": rows, "linear_fit": fits}  # fmt: skip


def test_scale_ladder():
    quick = os.environ.get("PRM_SCALE_QUICK", "") not in ("", "0")
    result = run(LADDER[:2] if quick else LADDER)
    write_json(OUT, result)
    errors = [r for r in result["rows"] if "error" in r]
    assert not errors, errors
    # memory linear in parameters: the straight line explains the measured peaks
    fit = result["linear_fit"]["probe"]
    assert fit is None or fit["r2"] > 0.98, fit


if __name__ == "__main__":
    if not worker_main(worker):
        import json

        print(json.dumps(run(), indent=1, default=str))
