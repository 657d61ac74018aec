"""End of session: the terminal summary table and the experiment reports on disk.

Why defensive: a summary or report problem must never turn a green session red or hide the
real failures, so both paths catch everything and print one line instead of raising.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prm_check.pytest_plugin import options
from prm_check.pytest_plugin.gating import STATUS, item_metrics
from prm_check.units_fmt import format_bytes, format_seconds

BUDGET_FLAG = "prm_budget_exceeded"
SESSION_STAMP = ".prm-session"
MAX_METRICS_SHOWN = 3
BUDGET_METRICS = ("peak_rss_bytes", "budget_memory_bytes", "wall_s", "budget_seconds", "cpu_s")


@dataclass
class ItemLine:
    nodeid: str
    outcome: str = "passed"
    metrics: dict[str, float] = field(default_factory=dict)
    spec: str | None = None
    baseline: str | None = None
    budget_line: str | None = None


class SummaryCollector:
    """Builds the table from reports (so it works the same with and without xdist)."""

    def __init__(self) -> None:
        self.items: dict[str, ItemLine] = {}
        self.started = time.time()

    def add(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if not any(k.startswith("prm") for k in props):
            return
        line = self.items.setdefault(report.nodeid, ItemLine(report.nodeid))
        if report.failed:
            line.outcome = "failed" if report.when == "call" else "error"
        elif report.skipped and report.when != "teardown":
            line.outcome = "skipped"
        line.metrics.update(item_metrics(report.user_properties))
        line.spec = props.get("prm_spec", line.spec)
        line.baseline = props.get(STATUS, line.baseline)
        line.budget_line = props.get(BUDGET_FLAG, line.budget_line)


def _metric_text(name: str, value: float) -> str:
    if name.endswith("_bytes"):
        return f"{name}={format_bytes(value)}"
    if name.endswith("_s"):
        return f"{name}={format_seconds(value)}"
    return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"


def _budget_text(m: dict[str, float]) -> str:
    parts = []
    if "peak_rss_bytes" in m or "budget_memory_bytes" in m:
        peak = format_bytes(m["peak_rss_bytes"]) if "peak_rss_bytes" in m else "?"
        lim = format_bytes(m["budget_memory_bytes"]) if "budget_memory_bytes" in m else "-"
        parts.append(f"{peak} / {lim}")
    if "wall_s" in m or "budget_seconds" in m:
        wall = format_seconds(m["wall_s"]) if "wall_s" in m else "?"
        lim = format_seconds(m["budget_seconds"]) if "budget_seconds" in m else "-"
        parts.append(f"{wall} / {lim}")
    return ", ".join(parts)


def format_table(lines: list[ItemLine], width: int = 100) -> str:
    rows = [["item", "outcome", "metrics", "memory / budget, time / budget", "baseline"]]
    for ln in lines:
        shown = [_metric_text(k, v) for k, v in ln.metrics.items() if k not in BUDGET_METRICS][
            :MAX_METRICS_SHOWN
        ]
        item = ln.nodeid.split("::", 1)[-1] if "::" in ln.nodeid else ln.nodeid
        rows.append(
            [item, ln.outcome, " ".join(shown), _budget_text(ln.metrics), ln.baseline or ""]
        )
    widths = [min(max(len(r[i]) for r in rows), width // 2) for i in range(len(rows[0]))]

    def cell(text: str, w: int) -> str:
        return (text if len(text) <= w else text[: w - 1] + "…").ljust(w)

    out = ["  ".join(cell(c, w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _width(tr: Any) -> int:
    try:
        return int(tr._tw.fullwidth)
    except Exception:
        return 100


def write_terminal_summary(
    tr: Any, collector: SummaryCollector, gate: Any, reports: list[str], notes: list[str]
) -> None:
    """The prm_check section of the terminal summary; never raises."""
    try:
        if not collector.items and not notes and gate is None:
            return
        tr.write_sep("=", "prm_check summary")
        by_file: dict[str, list[ItemLine]] = {}
        for ln in collector.items.values():
            by_file.setdefault(ln.nodeid.split("::", 1)[0], []).append(ln)
        for path, lines in by_file.items():
            tr.write_line(path)
            tr.write_line(format_table(lines, _width(tr)))
        for ln in collector.items.values():
            if ln.budget_line:
                tr.write_line(f"BUDGET {ln.nodeid}: {ln.budget_line}")
        if gate is not None:
            for line in gate.mismatch:
                tr.write_line(f"baseline machine differs: {line}")
            if gate.missing:
                tr.write_line(
                    f"{len(gate.missing)} item(s) have no baseline in {gate.path} "
                    "(add them with --prm-update-baseline)"
                )
            if gate.written is not None:
                tr.write_line(f"baseline written: {gate.written} ({len(gate.recorded)} items)")
        for r in reports:
            tr.write_line(f"report: {r}")
        for n in notes:
            tr.write_line(n)
    except Exception as exc:  # the summary must never fail the session
        with contextlib.suppress(Exception):
            tr.write_line(f"prm_check: summary unavailable ({type(exc).__name__}: {exc})")


def run_uid(config: pytest.Config) -> str:
    """Shared by all xdist workers of one run (so only one writes a spec's report)."""
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if uid:
        return uid
    if not hasattr(config, "_prm_run_uid"):
        config._prm_run_uid = uuid.uuid4().hex  # type: ignore[attr-defined]
    return config._prm_run_uid  # type: ignore[attr-defined]


def write_reports(config: pytest.Config, stages: Any) -> tuple[list[str], list[str]]:
    """Each spec whose every stage is available gets reports/<name>/ (results, CSVs, figures).

    Returns (written report paths, notes). Never raises.
    """
    from prm_check.pipeline import STAGES
    from prm_check.pytest_plugin.fixtures import assemble_run
    from prm_check.pytest_plugin.runtime import spec_key, spec_lock

    written: list[str] = []
    notes: list[str] = []
    for key, spec in list(stages.specs.items()):
        if key == "__session__" or not stages.computed(spec):
            continue
        try:
            done = stages.computed(spec)
            if any(s not in done and stages.cached(spec, s) is None for s in STAGES):
                continue  # a partial run (-k, a failed stage): no report to draw from
            out_dir = options.report_dir(config) / spec.name
            with spec_lock(spec_key(spec) + "-report"):
                stamp = out_dir / SESSION_STAMP
                if stamp.is_file() and stamp.read_text().strip() == run_uid(config):
                    continue  # another worker of this run wrote it
                run = assemble_run(stages, spec, None)
                note = _write_outputs(stages, spec, run.results, out_dir)
                out_dir.mkdir(parents=True, exist_ok=True)
                stamp.write_text(run_uid(config) + "\n")
            written.append(str(out_dir))
            if note:
                notes.append(note)
        except Exception as exc:  # a report must never fail the session
            why = f"{type(exc).__name__}: {exc}"
            notes.append(f"prm_check: report of {spec.name} not written ({why})")
    return written, notes


def _write_outputs(stages: Any, spec: Any, results: dict, out_dir: Path) -> str | None:
    from prm_check.pipeline import STAGES
    from prm_check.results import write_outputs

    stage_dir = getattr(stages.runner, "stage_dir", None)
    dirs = {}
    if stage_dir is not None:
        dirs = {s: stage_dir(s, spec, model_override=stages.model_override) for s in STAGES}
    try:
        import prm_check.report.html  # noqa: F401  (figures need it; absent = data only)
    except ImportError as exc:
        write_outputs(results, out_dir, dirs, report=False)
        return f"prm_check: {out_dir} has data but no figures ({exc})"
    write_outputs(results, out_dir, dirs, report=True)
    return None


def reports_of_this_run(config: pytest.Config, names: set[str], since: float) -> list[str]:
    """Controller side under xdist: report folders the workers wrote during this session."""
    out = []
    for name in sorted(names):
        path = options.report_dir(config) / name / "results.json"
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= since:
                out.append(str(path.parent))
    return out
