"""Budget parsing: units, decimal vs binary, and typed errors that list accepted forms."""

from __future__ import annotations

import math

import pytest

from prm_check.budget.parse import parse_duration, parse_size
from prm_check.errors import BudgetError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2 GiB", 2 * 2**30),
        ("512MB", 512 * 10**6),
        ("1.5G", int(1.5 * 2**30)),
        ("1.5 GB", 1_500_000_000),
        ("100 KiB", 102_400),
        ("3kb", 3000),
        ("7", 7),
        ("  64 mib ", 64 * 2**20),
        (1024, 1024),
        (2.0e9, 2_000_000_000),
        ("0", 0),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 90.0),
        ("10 min", 600.0),
        ("1h", 3600.0),
        ("500ms", 0.5),
        ("2.5 minutes", 150.0),
        (12, 12.0),
        (0.25, 0.25),
        ("30", 30.0),
    ],
)
def test_parse_duration(text, expected):
    assert math.isclose(parse_duration(text), expected)


@pytest.mark.parametrize("bad", ["lots", "2 GiBs", "GiB", "", "1.2.3 GB", "-1 GiB", -5, True,
                                 float("nan"), float("inf"), None, [1]])  # fmt: skip
def test_parse_size_rejects_garbage_with_accepted_forms(bad):
    with pytest.raises(BudgetError, match="GiB"):
        parse_size(bad)


@pytest.mark.parametrize("bad", ["soon", "10 parsecs", "-3s", -1, "nan s", False, None])
def test_parse_duration_rejects_garbage_with_accepted_forms(bad):
    with pytest.raises(BudgetError, match="10 min"):
        parse_duration(bad)


def test_budget_error_is_value_error():
    with pytest.raises(ValueError):
        parse_size("x")
