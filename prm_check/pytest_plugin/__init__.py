"""pytest plugin (entry point ``pytest11: prm_check``): experiments as parametrized checks.

Imports nothing heavy (no torch, transformers, numpy): collecting a spec file parses TOML
and builds test functions; stages run in guarded children only when an item needs them.

Precedence of every budget, stated once: ``@pytest.mark.prm_budget`` > ``--prm-memory-budget``
/ ``--prm-time-budget`` > ini ``prm_memory_budget`` / ``prm_time_budget`` > the spec's own
per-stage budgets > unlimited.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from prm_check.errors import BudgetExceeded, PrmCheckError
from prm_check.pytest_plugin import collect, options, reporting
from prm_check.pytest_plugin.fixtures import (  # noqa: F401  (fixtures are found by name)
    _prm_ctx,
    prm_budget,
    prm_model,
    prm_run,
    prm_spec,
    session_stages,
)
from prm_check.pytest_plugin.gating import BaselineGate
from prm_check.pytest_plugin.runtime import UpstreamFailed

GATE_KEY = pytest.StashKey["BaselineGate | None"]()
SUMMARY_KEY = pytest.StashKey[reporting.SummaryCollector]()
NOTES_KEY = pytest.StashKey[list]()
REPORTS_KEY = pytest.StashKey[list]()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from prm_check.pytest_plugin import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{options.MARK_BUDGET}(memory=None, seconds=None): memory / time budget of the "
        "test's guarded steps (prm_budget fixture, spec stages); beats CLI and ini",
    )
    config.addinivalue_line("markers", f"{options.MARK_ITEM}: an item collected from a *.prm.toml")
    options.profile(config)  # a bad ini value is a usage error now, not per item
    path = options.baseline_path(config)
    gate = BaselineGate(config, path) if path is not None else None
    config.stash[GATE_KEY] = gate
    config.stash[SUMMARY_KEY] = reporting.SummaryCollector()
    config.stash[NOTES_KEY] = []
    if gate is not None and not _is_worker(config):
        gate.warn_mismatch()
    _add_spec_args(config)


def _add_spec_args(config: pytest.Config) -> None:
    """--prm-spec files are always collected; ini prm_spec ones only when no paths were
    given on the command line (so ``pytest tests/test_x.py`` does not run the experiment)."""
    explicit = bool(config.getoption("prm_spec"))
    if not explicit and config.args_source == pytest.Config.ArgsSource.ARGS:
        return
    args = {str(a) for a in config.args}
    for spec_path in options.spec_paths(config):
        if str(spec_path) not in args and spec_path.exists():
            config.args.append(str(spec_path))


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    return collect.collect_file(file_path, parent)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield  # a failing body raises here: nothing to compare
    gate = item.config.stash.get(GATE_KEY, None)
    if gate is not None:
        gate.judge(item)
    return result


def _applied_budget(exc: BudgetExceeded, item: pytest.Item) -> options.Budget:
    """The budget and its source; for a spec stage the spec's own values are the fallback."""
    from prm_check.pipeline import STAGES, stage_budget

    spec = getattr(getattr(item, "module", None), "__prm_spec__", None)
    stage = exc.stage.split("(")[0].split()[0]
    if spec is not None and stage in STAGES:
        return options.resolve_budget(item.config, item, *stage_budget(spec, stage))
    return options.resolve_budget(item.config, item)


def _budget_details(exc: BudgetExceeded, item: pytest.Item) -> str:
    from prm_check.units_fmt import format_quantity

    lines = [
        f"stage:    {exc.stage}",
        f"kind:     {exc.kind}",
        f"limit:    {format_quantity(exc.kind, exc.limit)}",
        "observed: "
        + ("unknown" if exc.observed is None else format_quantity(exc.kind, exc.observed)),
    ]
    with contextlib.suppress(PrmCheckError, KeyError):
        lines.append(f"budget:   {_applied_budget(exc, item).describe()}")
    lines.append("precedence: @pytest.mark.prm_budget > --prm-*-budget > ini prm_*_budget > spec")
    if exc.detail:
        tail = exc.detail.strip().splitlines()[-12:]
        lines += ["", "child process said:", *tail]
    return "\n".join(lines)


def _uses_prm(item: pytest.Item, exc: BaseException) -> bool:
    """Whether a failure is the plugin's to word: spec items, prm fixtures / marker, breaches."""
    if isinstance(exc, BudgetExceeded) or isinstance(item.parent, collect.SpecModule):
        return True
    if item.get_closest_marker(options.MARK_BUDGET) is not None:
        return True
    return any(name.startswith("prm_") for name in getattr(item, "fixturenames", ()))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Budget breaches and prm_check errors: one line, details in a report section."""
    report = yield
    exc = call.excinfo.value if call.excinfo is not None else None
    if not report.failed or not isinstance(exc, PrmCheckError):
        return report
    if item.config.getoption("fulltrace", False) or not _uses_prm(item, exc):
        return report  # someone else's test: keep pytest's traceback for debugging
    breach = exc
    while isinstance(breach, UpstreamFailed):
        breach = breach.cause
    if isinstance(exc, BudgetExceeded):
        report.longrepr = exc.one_line()
    else:
        report.longrepr = f"{type(exc).__name__}: {exc}"
    if isinstance(breach, BudgetExceeded):
        line = str(report.longrepr)
        report.sections.append(("prm budget", _budget_details(breach, item)))
        report.user_properties.append((reporting.BUDGET_FLAG, line))
        item.user_properties.append((reporting.BUDGET_FLAG, line))
    return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    """pytest-memray's habit: a budget failure gets its own letter (B) and word."""
    props = getattr(report, "user_properties", None) or []  # CollectReports have none
    if report.failed and any(k == reporting.BUDGET_FLAG for k, _ in props):
        if report.when == "call":
            return "failed", "B", ("BUDGET", {"red": True})
        if report.when == "setup":
            return "error", "B", ("BUDGET ERROR", {"red": True})
    return None


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.pluginmanager.register(_ReportListener(session.config), "prm_check-listener")


class _ReportListener:
    """Collects reports for the summary and the baseline writer (controller side)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if _is_worker(self.config):
            return
        with contextlib.suppress(Exception):
            self.config.stash[SUMMARY_KEY].add(report)
        gate = self.config.stash.get(GATE_KEY, None)
        if gate is not None:
            gate.collect(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    stages = session_stages(config)
    notes = config.stash.get(NOTES_KEY, [])
    try:
        written, more = reporting.write_reports(config, stages)
        notes += more
        config.stash[REPORTS_KEY] = written
    finally:
        with contextlib.suppress(Exception):
            stages.close()
    gate = config.stash.get(GATE_KEY, None)
    if gate is not None and not _is_worker(config):
        try:
            gate.finish()
        except OSError as exc:
            notes.append(f"prm_check: baseline not written ({exc})")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _is_worker(config):
        return
    with contextlib.suppress(Exception):
        collector = config.stash[SUMMARY_KEY]
        reports = list(config.stash.get(REPORTS_KEY, []))
        if not reports:
            names = {ln.spec for ln in collector.items.values() if ln.spec}
            reports = reporting.reports_of_this_run(config, names, collector.started)
        reporting.write_terminal_summary(
            terminalreporter,
            collector,
            config.stash.get(GATE_KEY, None),
            reports,
            config.stash.get(NOTES_KEY, []),
        )
