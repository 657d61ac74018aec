"""Stage results shared by a session's items: the runner, a memo, and a cross-process lock.

Why a memo *and* a lock: items of one spec read the same expensive stages (the Hessian runs
once per session, not once per item), and under pytest-xdist several workers would otherwise
compute the same stage at once. The lock serialises computation per spec across processes;
whoever comes second finds the pipeline's on-disk cache filled and loads it.

The runner is injectable (``pytest_prm_stage_runner`` hook, or ini ``prm_stage_runner =
module:factory``) so the plugin's own tests run against a small fake through the real guard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from prm_check.errors import BudgetExceeded, PrmCheckError
from prm_check.pytest_plugin import options
from prm_check.pytest_plugin.options import Budget

RECORD_KEYS = ("wall_s", "cpu_s", "peak_rss_bytes", "cached", "key")


class StageRunner(Protocol):
    """What the plugin needs from a pipeline. ``run_stage`` enforces ``spec.budgets``."""

    def run_stage(
        self, stage: str, spec: Any, *, model_override: str | None = None
    ) -> tuple[dict, Any]: ...


class UpstreamFailed(PrmCheckError):
    """A stage could not run because a stage it reads failed first."""

    def __init__(self, stage: str, upstream: str, cause: BaseException) -> None:
        self.stage, self.upstream, self.cause = stage, upstream, cause
        line = cause.one_line() if isinstance(cause, BudgetExceeded) else str(cause)
        super().__init__(f"stage {stage} needs {upstream}, which failed: {line.splitlines()[0]}")


@dataclass
class StageOutcome:
    """A stage as an item sees it: its section, what it cost and under which budget."""

    stage: str
    budget: Budget
    section: dict | None = None
    record: dict[str, Any] = field(default_factory=dict)
    error: Exception | None = None

    @property
    def breach(self) -> BudgetExceeded | None:
        err = self.error.cause if isinstance(self.error, UpstreamFailed) else self.error
        while isinstance(err, UpstreamFailed):
            err = err.cause
        return err if isinstance(err, BudgetExceeded) else None


def _record_dict(record: Any) -> dict[str, Any]:
    if record is None:
        return {}
    raw = record.as_dict() if hasattr(record, "as_dict") else dict(record)
    return {k: raw.get(k) for k in RECORD_KEYS if k in raw}


class PipelineRunner:
    """The real thing: ``prm_check.pipeline.run_stage`` in one warm guarded child."""

    def __init__(self, config: pytest.Config | None = None) -> None:
        self._worker: Any = None

    def _progress(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)  # captured per item, shown on failure

    def run_stage(self, stage: str, spec: Any, *, model_override: str | None = None):
        from prm_check.budget.guard import GuardWorker
        from prm_check.pipeline import run_stage

        if self._worker is None:
            self._worker = GuardWorker()
        return run_stage(
            stage,
            spec,
            model_override=model_override,
            guard=True,
            worker=self._worker,
            progress=self._progress,
        )

    def cached(self, stage: str, spec: Any, *, model_override: str | None = None):
        """The stage's on-disk result without computing anything, else None."""
        from prm_check.pipeline import load_stage, stage_keys

        key = stage_keys(spec, model_override)[stage]
        section = load_stage(stage, key)
        if section is None:
            return None
        timing = section.get("_timing", {})
        return section, {**timing, "cached": True, "key": key}

    def stage_dir(self, stage: str, spec: Any, *, model_override: str | None = None) -> Path:
        from prm_check.pipeline import stage_dir, stage_keys

        return stage_dir(stage, stage_keys(spec, model_override)[stage])

    def load_model(self, spec: Any, *, model_override: str | None = None) -> Any:
        from prm_check.pipeline import load_inputs

        return load_inputs(spec, model_override, progress=self._progress).model

    def environment(self) -> dict:
        from prm_check.pipeline import environment

        return environment()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


def make_runner(config: pytest.Config) -> Any:
    """Hook result, else ini ``prm_stage_runner = module:factory``, else the pipeline."""
    runner = config.hook.pytest_prm_stage_runner(config=config)
    if runner is not None:
        return runner
    target = str(config.getini("prm_stage_runner") or "").strip()
    if not target:
        return PipelineRunner(config)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise pytest.UsageError(f"ini prm_stage_runner = {target!r}: expected 'module:factory'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise pytest.UsageError(f"ini prm_stage_runner = {target!r}: {exc}") from None
    return obj(config)


@contextlib.contextmanager
def spec_lock(name: str) -> Iterator[None]:
    """Exclusive lock across processes (xdist workers, parallel sessions); no-op off POSIX."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    uid = os.getuid() if hasattr(os, "getuid") else 0
    lock_dir = Path(tempfile.gettempdir()) / f"prm_check-locks-{uid}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def budget_overrides(config: pytest.Config, item: pytest.Item | None) -> dict[str, str | None]:
    """Budget kinds set above the spec (marker / CLI / ini), as spec text ('none' = no limit)."""
    b = options.resolve_budget(config, item)
    out: dict[str, str | None] = {}
    if b.memory_from != "none":
        out["memory"] = "none" if b.memory is None else str(int(b.memory))
    if b.seconds_from != "none":
        out["seconds"] = "none" if b.seconds is None else repr(float(b.seconds))
    return out


def spec_with_budgets(spec: Any, overrides: Mapping[str, str | None]) -> Any:
    """``spec`` whose budgets carry the overrides for every stage (budgets are in no stage's
    cache key, so this changes what is enforced, never what is computed)."""
    if not overrides:
        return spec
    from prm_check.spec import BudgetSpec, StageBudget

    b = spec.budgets
    stages = {
        name: StageBudget(
            memory=None if "memory" in overrides else sb.memory,
            seconds=None if "seconds" in overrides else sb.seconds,
        )
        for name, sb in b.stages.items()
    }
    budgets = BudgetSpec(
        memory=overrides.get("memory", b.memory),
        seconds=overrides.get("seconds", b.seconds),
        stages=stages,
    )
    new = dataclasses.replace(spec, budgets=budgets)
    object.__setattr__(new, "source_path", spec.source_path)
    return new


def spec_key(spec: Any) -> str:
    """Identity of what a spec computes (not its checks or budgets)."""
    from prm_check.spec import spec_hash

    sections = ("model", "data", "curvature", "partition", "sweep", "fidelity")
    return spec_hash(spec, sections)[:16]


class SessionStages:
    """Per-process memo of stage outcomes; failures are remembered per budget so a breach
    is not recomputed by every item that reads the stage."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._runner: Any = None
        self._done: dict[tuple, StageOutcome] = {}
        self._failed: dict[tuple, StageOutcome] = {}
        self.specs: dict[str, Any] = {}  # spec key -> spec, for the end-of-session report
        self.models: dict[tuple, Any] = {}

    @property
    def runner(self) -> Any:
        if self._runner is None:
            self._runner = make_runner(self.config)
        return self._runner

    @property
    def model_override(self) -> str | None:
        return options.model_override(self.config)

    def outcome(self, spec: Any, stage: str, item: pytest.Item | None) -> StageOutcome:
        """Compute (or recall) ``stage`` of ``spec`` under the budget that applies to ``item``."""
        from prm_check.pipeline import STAGE_UPSTREAM, stage_budget

        overrides = budget_overrides(self.config, item)
        eff = spec_with_budgets(spec, overrides)
        budget = options.resolve_budget(self.config, item, *stage_budget(spec, stage))
        for up in STAGE_UPSTREAM[stage]:
            got = self.outcome(spec, up, item)
            if got.error is not None:
                return StageOutcome(stage, budget, error=UpstreamFailed(stage, up, got.error))
        skey = spec_key(spec)
        self.specs[skey] = spec
        key = (skey, stage, self.model_override)
        if key in self._done:
            return self._done[key]
        fkey = (*key, budget.memory, budget.seconds)
        if fkey in self._failed:
            return self._failed[fkey]
        try:
            with spec_lock(skey):
                section, record = self.runner.run_stage(
                    stage, eff, model_override=self.model_override
                )
        except Exception as exc:
            self._failed[fkey] = StageOutcome(stage, budget, error=exc)
            return self._failed[fkey]
        done = StageOutcome(stage, budget, section=section, record=_record_dict(record))
        self._done[key] = done
        return done

    def computed(self, spec: Any) -> dict[str, StageOutcome]:
        """This process's successful outcomes of ``spec`` by stage."""
        skey, model = spec_key(spec), self.model_override
        return {k[1]: o for k, o in self._done.items() if k[0] == skey and k[2] == model}

    def cached(self, spec: Any, stage: str) -> tuple[dict, dict] | None:
        """A stage computed earlier (another worker, another session), without computing."""
        fn = getattr(self.runner, "cached", None)
        if fn is None:
            return None
        got = fn(stage, spec, model_override=self.model_override)
        return None if got is None else (got[0], _record_dict(got[1]))

    def model(self, spec: Any) -> Any:
        key = (spec_key(spec), self.model_override)
        if key not in self.models:
            load = getattr(self.runner, "load_model", None)
            if load is None:
                raise PrmCheckError("the configured stage runner cannot load models")
            with spec_lock(key[0]):
                self.models[key] = load(spec, model_override=self.model_override)
        return self.models[key]

    def close(self) -> None:
        if self._runner is not None and hasattr(self._runner, "close"):
            self._runner.close()
