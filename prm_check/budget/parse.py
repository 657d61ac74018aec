"""Parse human budgets ("2 GiB", "512MB", "90s", "10 min") into bytes and seconds.

Why strict: a budget typo must not silently become "unlimited" or "zero". Units follow
IEC/SI: ``KiB/MiB/GiB/TiB`` (and the shorthands ``K/M/G/T``, as ``ulimit`` and ``free -h``
use them) are powers of 1024; ``kB/KB/MB/GB/TB`` are powers of 1000. No heavy imports.
"""

from __future__ import annotations

import math
import re

from prm_check.errors import BudgetError

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_DURATION_UNITS: dict[str, float] = {
    "": 1.0,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_NUMBER_UNIT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")

SIZE_FORMS = "a byte count or a number with a unit: 512MB, 1.5G, 2 GiB (KiB/MiB/GiB = 1024^n)"
DURATION_FORMS = "seconds or a number with a unit: 500ms, 90s, 10 min, 1h"


def _split(text: str) -> tuple[float, str] | None:
    m = _NUMBER_UNIT.match(text)
    return (float(m.group(1)), m.group(2)) if m else None


def _check_number(value: float, what: str, forms: str, raw: object) -> None:
    if not math.isfinite(value):
        raise BudgetError(f"{what} {raw!r} is not finite; expected {forms}")
    if value < 0:
        raise BudgetError(f"{what} {raw!r} is negative; expected {forms}")


def _parse_quantity(
    value: str | int | float, what: str, forms: str, units: dict[str, float]
) -> tuple[float, bool]:
    """(magnitude in base units, whether it came from a unit-bearing string); typed errors."""
    if isinstance(value, bool):
        raise BudgetError(f"{what} {value!r} is a boolean; expected {forms}")
    if isinstance(value, (int, float)):
        _check_number(float(value), what, forms, value)
        return float(value), False
    if not isinstance(value, str):
        raise BudgetError(f"{what} {value!r} has type {type(value).__name__}; expected {forms}")
    parts = _split(value)
    if parts is None or parts[1].lower() not in units:
        raise BudgetError(f"cannot parse {what} {value!r}; expected {forms}")
    number, unit = parts
    _check_number(number, what, forms, value)
    return number * units[unit.lower()], True


def parse_size(value: str | int | float) -> int:
    """Bytes in ``value``: an int/float byte count or a string such as ``"2 GiB"``.

    ``MB``/``GB`` are decimal (10^6, 10^9), ``MiB``/``GiB`` and ``M``/``G`` binary.
    Raises :class:`BudgetError` on garbage, negatives, NaN/inf and booleans.
    """
    size, from_text = _parse_quantity(value, "memory budget", SIZE_FORMS, _SIZE_UNITS)
    return round(size) if from_text else int(size)


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: a number of seconds or a string such as ``"10 min"``.

    Raises :class:`BudgetError` on garbage, negatives, NaN/inf and booleans.
    """
    return _parse_quantity(value, "time budget", DURATION_FORMS, _DURATION_UNITS)[0]
