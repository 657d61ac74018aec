"""Human-readable sizes and durations (no heavy imports: used by the pytest plugin)."""

from __future__ import annotations

_BINARY = [("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)]


def format_bytes(n: float) -> str:
    """``1610612736 -> '1.5 GiB'``; plain bytes below 1 KiB."""
    for unit, size in _BINARY:
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_seconds(s: float) -> str:
    """``75.0 -> '75.0 s'``; minutes above 10 min for readability."""
    if s >= 600:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def format_quantity(kind: str, value: float) -> str:
    """Format a budget quantity of ``kind`` ``"memory"`` (bytes) or ``"time"`` (seconds)."""
    return format_bytes(value) if kind == "memory" else format_seconds(value)
