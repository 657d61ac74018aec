"""Hooks the plugin offers to conftest.py files and other plugins."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_prm_stage_runner(config: pytest.Config) -> Any:
    """Return the object that computes experiment stages, or None for the default.

    It needs ``run_stage(stage, spec, *, model_override=None) -> (section, record)``, which
    must enforce ``spec.budgets`` (raise :class:`prm_check.errors.BudgetExceeded` on a
    breach); optional: ``cached(...)``, ``stage_dir(...)``, ``load_model(spec, *,
    model_override)``, ``environment()``, ``close()``. Overrides ini ``prm_stage_runner``.
    """
