"""Typed errors: each names what was wrong and how to fix it.

Every error the tool raises on bad input derives from :class:`PrmCheckError`, so the CLI
and the pytest plugin can print one readable line instead of a stack trace.
"""

from __future__ import annotations


class PrmCheckError(Exception):
    """Base class of every error prm_check raises on purpose."""


class SpecError(PrmCheckError, ValueError):
    """An experiment spec field is missing, unknown, of the wrong type or out of range."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"spec field {field!r}: got {value!r}, expected {expected}")


class ModelLoadError(PrmCheckError):
    """A model folder is missing, unreadable, or not a causal language model."""


class DataError(PrmCheckError, ValueError):
    """A data set is empty, malformed, or has no valid tokens."""


class CurvatureError(PrmCheckError, ValueError):
    """A curvature computation got an unusable parameter subset, probe or loss."""


class BudgetError(PrmCheckError, ValueError):
    """A budget is unparsable, negative, or too small to ever fit."""


class BudgetExceeded(PrmCheckError):
    """A guarded step broke its memory or time budget.

    ``kind`` is ``"memory"`` or ``"time"``; ``limit`` and ``observed`` are bytes or seconds.
    """

    def __init__(
        self, kind: str, limit: float, observed: float | None, stage: str, detail: str = ""
    ) -> None:
        self.kind = kind
        self.limit = limit
        self.observed = observed
        self.stage = stage
        self.detail = detail
        super().__init__(self.one_line())

    def one_line(self) -> str:
        from prm_check.units_fmt import format_quantity

        lim = format_quantity(self.kind, self.limit)
        if self.observed is None:
            obs = "observed unknown"
        else:
            obs = ("peak " if self.kind == "memory" else "ran ") + format_quantity(
                self.kind, self.observed
            )
        return f"{self.kind} budget {lim} exceeded in stage {self.stage}: {obs}"

    def __reduce__(self):  # picklable across the guard's process boundary
        return (
            type(self),
            (self.kind, self.limit, self.observed, self.stage, self.detail),
        )


class ReportError(PrmCheckError):
    """A results file is missing, corrupt, or of an unknown schema version."""
