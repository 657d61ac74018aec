"""Budgets: parse, plan, measure and enforce memory and time of heavy steps.

Light to import (no torch): the pytest plugin imports it. ``plan``/``resolve_shape``
import torch lazily, when a model is counted on the meta device.
"""

from prm_check.budget.guard import (
    GuardedStepError,
    GuardResult,
    GuardWorker,
    MemoryBudgetExceeded,
    measure_only,
    minimum_budget,
    run_guarded,
    staged_path,
)
from prm_check.budget.meter import Measurement, Meter
from prm_check.budget.parse import parse_duration, parse_size
from prm_check.budget.planner import ModelShape, Plan, plan, predict_peak, resolve_shape

__all__ = [
    "GuardResult",
    "GuardWorker",
    "GuardedStepError",
    "Measurement",
    "MemoryBudgetExceeded",
    "Meter",
    "ModelShape",
    "Plan",
    "measure_only",
    "minimum_budget",
    "parse_duration",
    "parse_size",
    "plan",
    "predict_peak",
    "resolve_shape",
    "run_guarded",
    "staged_path",
]
