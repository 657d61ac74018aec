"""``prm-check plan``: an honest table of what a curvature step will cost before it runs.

Why a table: the original crash came from running first and measuring never. The table
shows each predicted term, the micro-batch that fits, and a *measured* time per probe
(one guarded HVP at that micro-batch) where the model fits; where it does not, it says so
rather than guessing.
"""

from __future__ import annotations

import argparse
from typing import Any

from prm_check.budget.planner import FIT_NOTE, KNOWN_SHAPES, Plan, plan, resolve_shape
from prm_check.budget.steps import DTYPES, METHODS
from prm_check.errors import BudgetExceeded, PrmCheckError
from prm_check.units_fmt import format_bytes, format_seconds

_LABELS = {
    "runtime": "runtime (python + torch + transformers)",
    "weights": "weights",
    "gradients": "gradients (+ fitted buffers)",
    "activations": "activations",
    "hvp buffers": "HVP overhead: parameter-sized buffers",
    "hvp activations": "HVP overhead: second-order activations",
    "krylov basis": "Krylov basis (m vectors)",
}


def measure_probe_time(p: Plan, memory: int | None, max_params: float) -> tuple[float | None, str]:
    """Seconds per probe over the whole batch, from one timed step in a guarded child."""
    if not p.fits or p.micro_batch is None:
        return None, "skipped: the step does not fit the budget"
    if p.model not in KNOWN_SHAPES:
        return None, "skipped: timing is calibrated on OPT shapes only"
    if p.n_params > max_params:
        return None, f"skipped: > {max_params / 1e6:.0f}M parameters is too slow to time here"
    from prm_check.budget.guard import run_guarded
    from prm_check.budget.steps import run_step

    method = "hvp_rev" if p.method in ("lanczos", "slq") else p.method
    try:
        res = run_guarded(
            run_step, KNOWN_SHAPES[p.model], method, p.micro_batch, p.seq, dtype=p.dtype,
            repeat=2, memory=memory, seconds=600, stage=f"plan timing {p.model}",
            preload=("torch", "transformers"),
        )  # fmt: skip
    except BudgetExceeded as exc:
        return None, f"skipped: the timing step broke its budget ({exc})"
    except Exception as exc:  # a timing failure must not hide the plan itself
        return None, f"skipped: the timing step failed ({type(exc).__name__}: {exc})"
    per_micro = float(res.value["wall_s"])
    return per_micro * p.n_micro, (
        f"measured: 1 {method} step on {p.micro_batch}x{p.seq} in a guarded child, "
        f"engine {res.value['engine']} "
        f"({format_seconds(per_micro)}) x {p.n_micro} micro-batch(es); shared CPUs vary"
    )


def plan_table(
    model: str,
    batch: int,
    seq: int,
    budget: int | str | None,
    method: str = "hvp_rev",
    dtype: str = "float32",
    m: int = 0,
    time_probe: bool = True,
    max_timing_params: float = 400e6,
) -> str:
    """The plan of ``method`` for ``model`` as a plain-text table (see module docstring)."""
    p = plan(resolve_shape(model), batch, seq, budget, method=method, dtype=dtype, m=m)
    rows: list[tuple[str, str]] = [("parameters", f"{p.n_params:,} ({p.n_params / 1e6:.1f}M)")]
    for key, value in p.terms.items():
        if value or key in ("runtime", "weights", "gradients", "activations"):
            rows.append((_LABELS.get(key, key), format_bytes(value)))
    mb = "1 (none fits)" if p.micro_batch is None else str(p.micro_batch)
    rows.append((f"predicted peak per step (micro-batch {mb})", format_bytes(p.predicted_peak)))
    rows.append(("chosen micro-batch", f"{p.micro_batch} -> {p.n_micro} micro-batch(es)"
                 if p.fits else "none"))  # fmt: skip
    if time_probe:
        seconds, how = measure_probe_time(p, p.budget, max_timing_params)
        rows.append(("time per probe", f"{format_seconds(seconds)} ({how})" if seconds else how))
    else:
        rows.append(("time per probe", "not measured (--no-timing)"))
    rows.append(("verdict", p.reason))
    width = max(len(r[0]) for r in rows)
    budget_s = "none" if p.budget is None else format_bytes(p.budget)
    head = (f"plan: {p.model}, {p.method}{f' m={m}' if m else ''}, {p.dtype}, batch {p.batch} "
            f"x {p.seq} tokens, budget {budget_s}")  # fmt: skip
    lines = [head, "-" * len(head)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append(f"(memory model: {FIT_NOTE})")
    return "\n".join(lines)


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``plan`` on an argparse sub-parser set; ``args.func(args)`` runs it."""
    p = subparsers.add_parser("plan", help="predict memory/time of a curvature step")
    shapes = ", ".join(KNOWN_SHAPES)
    p.add_argument("--model", required=True, help=f"{shapes}, or a local model folder")
    p.add_argument("--batch", type=int, required=True, help="sequences per estimate")
    p.add_argument("--seq", type=int, required=True, help="tokens per sequence")
    p.add_argument("--budget", default=None, help="memory budget, e.g. 4GiB or 3500MB")
    p.add_argument("--method", default="hvp_rev", choices=METHODS)
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    p.add_argument("--m", type=int, default=0, help="Lanczos/SLQ vectors kept")
    p.add_argument("--no-timing", action="store_true", help="skip the measured probe time")
    p.set_defaults(func=run_plan)
    return p


def run_plan(args: argparse.Namespace) -> int:
    """Print the table; exit status 0 when the step fits the budget, 1 when it cannot."""
    try:
        text = plan_table(args.model, args.batch, args.seq, args.budget, method=args.method,
                          dtype=args.dtype, m=args.m, time_probe=not args.no_timing)  # fmt: skip
    except PrmCheckError as exc:
        print(f"prm-check plan: {exc}")
        return 2
    print(text)
    return 1 if "cannot fit" in text.rsplit("verdict", 1)[-1] else 0
