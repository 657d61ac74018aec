"""Fixtures for hand-written tests: ``prm_spec``, ``prm_run``, ``prm_model``, ``prm_budget``.

Why function-scoped thin wrappers over a session memo: the expensive part (stages, the
model) is computed once per session, but the *budget* that applies can differ per test
(``@pytest.mark.prm_budget``), so each test resolves its own budget against shared work.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prm_check.pytest_plugin import options
from prm_check.pytest_plugin.collect import load_for_session
from prm_check.pytest_plugin.runtime import SessionStages
from prm_check.pytest_plugin.spec_items import METRIC_PREFIX, ItemContext, raise_stage_error

STAGES_KEY = pytest.StashKey[SessionStages]()
DEFAULT_SPEC_FILE = Path("experiments") / "default.prm.toml"


def session_stages(config: pytest.Config) -> SessionStages:
    if STAGES_KEY not in config.stash:
        config.stash[STAGES_KEY] = SessionStages(config)
    return config.stash[STAGES_KEY]


def session_spec(config: pytest.Config) -> Any:
    """--prm-spec / ini prm_spec (the first), else ``experiments/default.prm.toml`` under the
    rootdir, else the built-in default; with the session's profile applied."""
    from prm_check.spec import apply_profile, default_spec

    stages = session_stages(config)
    if "__session__" not in stages.specs:
        paths = options.spec_paths(config)
        fallback = config.rootpath / DEFAULT_SPEC_FILE
        if paths:
            spec = load_for_session(paths[0], config)
        elif fallback.is_file():
            spec = load_for_session(fallback, config)
        else:
            spec = default_spec()
            wanted = options.profile(config)
            spec = apply_profile(spec, wanted) if wanted != "full" else spec
        stages.specs["__session__"] = spec
    return stages.specs["__session__"]


def _module_spec(request: pytest.FixtureRequest) -> Any | None:
    module = getattr(request.node, "module", None)
    return getattr(module, "__prm_spec__", None)


@pytest.fixture
def prm_spec(request: pytest.FixtureRequest) -> Any:
    """The experiment spec of this test: its spec file's, else the session's (see --prm-spec)."""
    return _module_spec(request) or session_spec(request.config)


@pytest.fixture
def _prm_ctx(request: pytest.FixtureRequest) -> ItemContext:
    spec = _module_spec(request)
    if spec is None:
        raise pytest.UsageError("_prm_ctx is internal to items collected from *.prm.toml files")
    request.node.user_properties.append(("prm_spec", spec.name))
    return ItemContext(request, spec, session_stages(request.config))


@dataclass
class PrmRun:
    """A whole experiment as the session computed it: results.json's dict and the checks."""

    spec: Any
    results: dict
    checks: list[dict] = field(default_factory=list)

    def check(self, check_id: str) -> dict:
        """The evaluated check row (``observed``, ``passed``, ``error``) by id."""
        for row in self.checks:
            if row["id"] == check_id:
                return row
        raise KeyError(f"{check_id!r}; this run's checks: {[c['id'] for c in self.checks]}")

    def observed(self, check_id: str) -> float | None:
        return self.check(check_id)["observed"]

    def section(self, stage: str) -> dict:
        return self.results[stage]


def _environment(stages: SessionStages) -> dict:
    env = getattr(stages.runner, "environment", None)
    if env is not None:
        return env()
    from prm_check.baseline import machine_info

    return machine_info()


def assemble_run(stages: SessionStages, spec: Any, item: pytest.Item | None) -> PrmRun:
    """Every stage (memoised), assembled as ``prm-check run`` assembles results.json."""
    from prm_check.observe import evaluate_checks
    from prm_check.pipeline import STAGES
    from prm_check.results import assemble_results

    sections, records = {}, {}
    for stage in STAGES:
        out = stages.outcome(spec, stage, item)
        if out.error is not None:
            raise_stage_error(out.error)
        sections[stage] = out.section
        records[stage] = types.SimpleNamespace(
            **{k: out.record.get(k) for k in ("wall_s", "cpu_s", "peak_rss_bytes")},
            cached=bool(out.record.get("cached")),
            budget_memory_bytes=out.budget.memory,
            budget_seconds=out.budget.seconds,
        )
    results = assemble_results(spec, sections, records, _environment(stages))
    results["checks"] = evaluate_checks(spec, results)
    return PrmRun(spec=spec, results=results, checks=results["checks"])


@pytest.fixture
def prm_run(request: pytest.FixtureRequest, prm_spec: Any) -> PrmRun:
    """The session's run of ``prm_spec``: stages computed once, under this test's budget."""
    return assemble_run(session_stages(request.config), prm_spec, request.node)


@pytest.fixture
def prm_model(request: pytest.FixtureRequest, prm_spec: Any) -> Any:
    """The model of ``prm_spec`` (or --prm-model), loaded once per session."""
    return session_stages(request.config).model(prm_spec)


class BudgetHelper:
    """Runs steps in a guarded child under this test's budget (marker > CLI > ini).

    A breach raises :class:`~prm_check.errors.BudgetExceeded`; the plugin turns it into a
    one-line failure of this test with a detail section, and the session goes on.
    """

    def __init__(self, item: pytest.Item) -> None:
        self.item = item
        self.budget = options.resolve_budget(item.config, item)
        self.peak_rss_bytes = 0
        self.wall_s = 0.0

    @property
    def memory(self) -> int | None:
        return self.budget.memory

    @property
    def seconds(self) -> float | None:
        return self.budget.seconds

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        stage: str | None = None,
        preload: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> Any:
        """``fn(*args, **kwargs)`` in a fresh spawned child; ``fn`` must be importable and
        its arguments and result picklable. ``preload`` modules are imported before the
        clock starts (their memory still counts)."""
        from prm_check.budget.guard import run_guarded

        try:
            res = run_guarded(
                fn,
                *args,
                memory=self.memory,
                seconds=self.seconds,
                stage=stage or self.item.name,
                preload=preload,
                **kwargs,
            )
        finally:
            self._record()
        m = res.measurement
        self.peak_rss_bytes = max(self.peak_rss_bytes, int(m.peak_rss_bytes or 0))
        self.wall_s += float(m.wall_s or 0.0)
        self._record()
        return res.value

    def _record(self) -> None:
        """Replace this helper's metrics on the item (recorded before the baseline gate)."""
        names = {f"{METRIC_PREFIX}{n}" for n in HELPER_METRICS}
        props = [p for p in self.item.user_properties if p[0] not in names]
        values = {
            "budget_memory_bytes": self.memory,
            "budget_seconds": self.seconds,
            "peak_rss_bytes": self.peak_rss_bytes or None,
            "wall_s": self.wall_s if self.peak_rss_bytes else None,
        }
        props += [(METRIC_PREFIX + k, v) for k, v in values.items() if v is not None]
        self.item.user_properties[:] = props


HELPER_METRICS = ("budget_memory_bytes", "budget_seconds", "peak_rss_bytes", "wall_s")


@pytest.fixture
def prm_budget(request: pytest.FixtureRequest) -> BudgetHelper:
    """Helper whose ``.run(fn, *args)`` enforces ``@pytest.mark.prm_budget`` (or CLI / ini)."""
    return BudgetHelper(request.node)
