"""Render ``reports/bench/*.json`` into ``docs/benchmarks.md`` (run by ``make bench``).

    .venv-bench/bin/python benchmarks/render.py [--out docs/benchmarks.md]

Sections whose JSON is missing are listed as not run; nothing here measures anything.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "reports" / "bench"
DOC = ROOT / "docs" / "benchmarks.md"
MIB = 2**20
GIB = 2**30


def _load(name: str) -> dict[str, Any] | None:
    path = BENCH / name
    return json.loads(path.read_text()) if path.is_file() else None


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, list):
        return ", ".join(_num(v, digits) for v in x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{max(digits - 1, 1)}e}"
        return f"{x:.{digits}g}"
    return str(x)


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _env_line(d: dict[str, Any]) -> str:
    s, e = d.get("env_start", {}), d.get("env_end", {})
    la = lambda v: "/".join(f"{x:.1f}" for x in v.get("load_avg", [])) or "?"  # noqa: E731
    return (
        f"{s.get('time', '?')} → {e.get('time', '?')}; torch {s.get('torch', '?')}, "
        f"{s.get('threads', '?')} threads, {s.get('cpus', '?')} CPUs; load average (1/5/15 min) "
        f"at start {la(s)}, at end {la(e)}"
    )


def accuracy_section(d: dict[str, Any] | None) -> list[str]:
    out = ["## Accuracy against the exact Hessian (float64, tiny models)", ""]
    if d is None:
        return [*out, "_not run (reports/bench/peers_accuracy.json missing)_", ""]
    out += [
        f"Run {_env_line(d)}.",
        "",
        f"Every library gets the same model, batch (4×16 tokens), loss and parameters, and "
        f"{d['matvecs']} Hessian-vector products per trace / diagonal estimate; iterative "
        f"eigensolvers get about {d['eig_budget']}. The exact values come from the dense "
        "float64 Hessian. `stderr` is the library's own standard error where it reports one "
        "(PyHessian: the spread of the samples it returns); for eigenvalues it is the "
        "a-posteriori residual bound plus the operator's product error. "
        "`z = |estimate − exact| / stderr` (diagonal: RMS of per-entry z, and the share of "
        "entries within 2 stderr). A row with an error is a measured failure.",
        "",
    ]
    for name, ex in d["exact"].items():
        out.append(
            f"- {name}: n = {ex['n']} parameters, trace {ex['trace']:.4g}, top-3 "
            f"{_num(ex['top3'], 5)}, dense asymmetry {ex['asymmetry']:.1e}"
        )
    out.append("")
    rows = []
    for r in d["rows"]:
        note = r.get("error", "")
        if "stopped_at_2" in r:
            note = (
                f"stopped after 2 probes in {r['stopped_at_2']}/{r['runs']} seeds; "
                f"probes used {r['matvecs_min']}–{r['matvecs_max']}; rel. error is RMS over seeds"
            )
        if "within_2se" in r:
            note = f"{100 * r['within_2se']:.0f} % of entries within 2 stderr"
        rows.append([
            r["model"], f"{r['lib']} {r.get('version') or ''}".strip(), r["quantity"],
            _num(r.get("matvecs")), _num(r.get("estimate"), 5), _num(r.get("exact"), 5),
            _num(r.get("rel_err")), _num(r.get("stderr")), _num(r.get("z")),
            _num(r.get("corr")), note,
        ])  # fmt: skip
    head = ["model", "library", "quantity", "matvecs", "estimate", "exact", "rel. error",
            "stderr", "z", "corr", "note / error"]  # fmt: skip
    return [*out, *_table(head, rows), ""]


def speed_section(d: dict[str, Any] | None) -> list[str]:
    out = ["## Speed and memory (float32, random weights, all parameters)", ""]
    if d is None:
        return [*out, "_not run (reports/bench/peers_speed.json missing)_", ""]
    out += [
        f"Run {_env_line(d)}. **Timings are wall-clock on a shared 2-core machine that other "
        "jobs were using; ratios to the gradient measured in the same round are more "
        "meaningful than seconds.** `in-proc MiB` is the VmHWM high-water mark of the "
        "operation inside the timing process (reset before each operation, so earlier "
        "allocations the allocator kept can inflate it).",
        "",
        "One fresh process per model times every library in turn, round after round "
        "(A, B, C, D, A, B, ...), after every operation ran once on a very small OPT (first-call "
        "costs); `s/op` is the median over rounds (tiny: 2 rounds after a warm-up round; "
        "OPT-125m shape: 1 round after a warm-up round, which pays the first large allocations). "
        "Peak RSS is the kernel high-water mark "
        "(VmHWM) of a separate fresh process per (library, probe), absolute (model and "
        "runtime included); `isolated s` is that process's time for the same operation. "
        "`hvp` is one Hessian-vector product from scratch (graph built inside); `probe` is "
        f"per Hutchinson probe, K = {d['probes']} per call, each library's own way "
        "(prm_check: K probes through one graph; PyHessian: `trace` with tol disabled, graph "
        "built in its constructor; curvlinops: `hutchinson_diag` — all K vmapped at once on "
        "the tiny model, one at a time on the OPT-125m shape; hessian-eigenthings: "
        "`hutchinson`, a graph per probe); `topk` is top-3 eigenvalues at a fixed budget of "
        "about 21 products (ARPACK `eigsh` on the operator for prm_check and curvlinops, "
        "power iteration for PyHessian, Lanczos for hessian-eigenthings).",
        "",
    ]
    rows = []
    for r in d["rows"]:
        err = r.get("error") or r.get("rss_error") or ""
        rows.append([
            f"{r['model']} ({r['batch']}×128)", r["lib"],
            r["op"] + (f" (K={r['k']})" if r.get("k") else ""), _num(r.get("time_s")),
            _num(r.get("time_x_grad")), _num(r.get("isolated_wall_s")),
            _num(r.get("peak_mib"), 5), _num(r.get("mem_x_grad")),
            _num(r.get("inproc_peak_mib"), 5), _num(r.get("matvecs")), err,
        ])  # fmt: skip
    head = ["model", "library", "operation", "s/op", "× grad time", "isolated s",
            "isolated peak MiB", "× grad mem", "in-proc MiB", "matvecs", "error"]  # fmt: skip
    return [*out, *_table(head, rows), ""]


def scale_section(d: dict[str, Any] | None) -> list[str]:
    out = ["## Scale ladder: plan vs measured (float32, all parameters, 1×128 tokens)", ""]
    if d is None:
        return [*out, "_not run (reports/bench/scale.json missing)_", ""]
    out += [
        f"Run {_env_line(d)}. Budget {d['budget']}. The plan is `prm_check.budget.plan` for "
        "one reverse-over-reverse HVP (`hvp_rev`); the measured HVP and probe peaks are "
        "absolute VmHWM of a fresh worker (RLIMIT_DATA = the budget); time per probe is "
        "K = 2 probes through one graph, graph build included. Where the plan does not fit "
        "nothing runs and the row is the planner's verdict.",
        "",
    ]
    rows = []
    for r in d["rows"]:
        measured = "probe_peak_bytes" in r
        rows.append([
            r["model"], f"{r['n_params'] / 1e6:.1f} M", f"{r['plan_peak_bytes'] / GIB:.2f}",
            f"{r['hvp_peak_bytes'] / GIB:.2f}" if measured else "",
            f"{100 * r['plan_error']:+.0f} %" if measured else "",
            f"{r['probe_peak_bytes'] / GIB:.2f}" if measured else "",
            _num(r.get("hvp_s")), _num(r.get("probe_s")),
            r.get("error") or ("measured" if measured else r["verdict"]),
        ])  # fmt: skip
    head = ["shape", "params", "plan GiB", "HVP GiB", "plan error", "probe GiB", "s/HVP",
            "s/probe", "verdict"]  # fmt: skip
    out += _table(head, rows)
    out.append("")
    for key, label in (("probe", "measured probe peak"), ("hvp", "measured HVP peak"),
                       ("plan", "plan")):  # fmt: skip
        f = d.get("linear_fit", {}).get(key)
        if f:
            out.append(
                f"- {label} ≈ {f['intercept_bytes'] / GIB:.2f} GiB + "
                f"{f['bytes_per_param']:.1f} bytes × parameters (R² = {f['r2']:.4f}, largest "
                f"residual {100 * f['max_rel_residual']:.1f} %)"
            )
    return [*out, ""]


def curvature_section(d: dict[str, Any] | None) -> list[str]:
    out = ["## Curvature products: gradient vs HVP vs one Hutchinson probe (issue 3 grid)", ""]
    if d is None:
        return [*out, "_not run (reports/bench/curvature.json missing; `make bench "
                "BENCH_FULL=1`)_", ""]  # fmt: skip
    out += [
        "Random-weight models, eager attention, 2 threads, each row a fresh worker (peak = "
        "VmHWM after a reset). Ratios are to the gradient of the same model, parameter set, "
        "batch and allocator (`+lean` rows ran with `PRM_CHECK_MALLOC=lean`, and are "
        "compared with the lean gradient); the last ratio is against the leanest gradient of "
        "either allocator. Target (issue 3): a probe ≤ 2.5× time and ≤ 1.8× memory of the "
        "gradient in one configuration. K = probes per graph, mb = micro-batch in sequences "
        "of 128 tokens. One repeat per probe row: ±5–10 % run to run.",
        "",
    ]
    rows = []
    for r in d["rows"]:
        if "error" in r:
            rows.append([r["model"], r["params"], r["mode"], *[""] * 7, r["error"]])
            continue
        mode = r["mode"] + ("+lean" if r.get("alloc") == "lean" else "")
        if r["mode"] == "hvp":
            mode += f" ({r.get('method', 'rev')})"
        mark = ("Pareto " if r.get("pareto") else "") + ("meets" if r.get("meets_target") else "")
        rows.append([
            r["model"], r["params"], mode, r.get("k", ""), r.get("micro") or "",
            _num(r["wall_s"]), f"{r['peak_mib']:.0f}", _num(r.get("time_x_grad")),
            _num(r.get("mem_x_grad")), _num(r.get("mem_x_leanest_grad")), mark,
        ])  # fmt: skip
    head = ["model", "params", "mode", "K", "mb", "s / op", "peak MiB", "time × grad",
            "mem × grad", "mem × leanest grad", ""]  # fmt: skip
    return [*out, *_table(head, rows), ""]


GATING = """## Gating with pytest-benchmark

`make bench` saves every run under `reports/bench/history/` (`--benchmark-autosave`) and
writes `reports/bench/pytest-benchmark.json`. The short, stable items
`test_gate_hvp_tiny` and `test_gate_probe_tiny` (tiny shape, 2×128) are the ones to gate on;
the suite-level items time whole suites and are informational. Compare a new run with the
latest stored one and fail on a regression:

```
.venv-bench/bin/python -m pytest benchmarks/bench_peers.py -k gate -p no:randomly \\
    --benchmark-storage=file://reports/bench/history \\
    --benchmark-compare --benchmark-compare-fail=median:25%
```

(`--benchmark-compare=NNNN` picks a stored run by its number.) On a shared machine use a
generous threshold; contention alone moves medians by 10–20 %.
"""


def render() -> str:
    acc, speed, scale, curv = (_load(n) for n in ("peers_accuracy.json", "peers_speed.json",
                                                  "scale.json", "curvature.json"))  # fmt: skip
    lines = [
        "# Benchmarks: prm_check beside PyHessian, curvlinops and hessian-eigenthings",
        "",
        "_Generated by `make bench` (`benchmarks/render.py` from `reports/bench/*.json`); do "
        "not edit by hand. Timings are contended wall-clock on a shared 2-core CPU machine._",
        "",
        *accuracy_section(acc),
        *speed_section(speed),
        *scale_section(scale),
        *curvature_section(curv),
        GATING,
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else DOC
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
