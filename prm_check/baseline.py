"""Baseline gating: compare an item's metrics with stored ones under per-metric tolerances.

Why a file of its own (and stdlib only): the pytest plugin gates on it at collection-light
import cost, and the same comparison is reusable by ``prm-check compare``. The baseline is
JSON committed next to the code; results are keyed by profile (quick and full numbers differ)
and by pytest node id, and every entry keeps the machine it was recorded on, because memory
and float round-off differ between machines (a mismatch warns, it does not fail).

Tolerance of one metric: ``abs`` and ``rel`` combine as in ``math.isclose`` (allowed
difference = ``abs + rel * |expected|``); ``side`` is ``"both"`` (two-sided), ``"upper"``
(only an increase beyond the tolerance fails: memory, time) or ``"lower"`` (only a decrease
fails: an AUC that must not drop); ``ignore`` leaves the metric ungated (wall-clock time).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import platform
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from prm_check.errors import PrmCheckError

BASELINE_SCHEMA_VERSION = 1
SIDES = ("both", "upper", "lower")
# First matching glob wins (after an item's own overrides). Seconds depend on the machine's
# load, so they are recorded but not gated; memory may shrink freely but not grow by > 50 %.
# Whether a stage came from the disk cache says nothing about the result: not gated.
DEFAULT_TOLERANCES: dict[str, dict[str, Any]] = {
    "*_s": {"ignore": True},
    "cached": {"ignore": True},
    "*_bytes": {"rel": 0.5, "abs": 0.0, "side": "upper"},
    "*": {"rel": 0.02, "abs": 1e-6, "side": "both"},
}
MACHINE_KEYS = ("python", "machine", "system", "cpu_count", "torch", "transformers")


class BaselineError(PrmCheckError):
    """The baseline file is unreadable, not JSON, of another schema, or malformed."""


@dataclass(frozen=True)
class Tolerance:
    """How far ``obtained`` may move from ``expected`` before an item fails."""

    rel: float = 0.02
    abs: float = 1e-6
    side: str = "both"
    ignore: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Tolerance:
        unknown = set(d) - {"rel", "abs", "side", "ignore"}
        if unknown:
            raise BaselineError(f"{where}: unknown tolerance keys {sorted(unknown)}")
        tol = cls(
            rel=float(d.get("rel", cls.rel)),
            abs=float(d.get("abs", cls.abs)),
            side=str(d.get("side", cls.side)),
            ignore=bool(d.get("ignore", False)),
        )
        if tol.side not in SIDES or tol.rel < 0 or tol.abs < 0:
            raise BaselineError(f"{where}: side in {SIDES}, rel >= 0, abs >= 0; got {dict(d)}")
        return tol

    def allowed(self, expected: float) -> float:
        return self.abs + self.rel * abs(expected)

    def describe(self) -> str:
        if self.ignore:
            return "not gated"
        sign = {"both": "±", "upper": "+", "lower": "-"}[self.side]
        return f"{sign}({self.abs:g} + {self.rel:g}·|expected|)"


@dataclass(frozen=True)
class Row:
    """One metric's comparison: ``ok`` False means a regression."""

    metric: str
    obtained: float | None
    expected: float | None
    tolerance: Tolerance
    ok: bool
    note: str = ""

    @property
    def difference(self) -> float | None:
        if self.obtained is None or self.expected is None:
            return None
        return self.obtained - self.expected


def _finite_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def compare_metric(name: str, obtained: Any, expected: Any, tol: Tolerance) -> Row:
    """Judge one metric; a value that became non-finite (or vanished) is a regression."""
    got, want = _finite_or_none(obtained), _finite_or_none(expected)
    if tol.ignore:
        return Row(name, got, want, tol, True, "not gated")
    if want is None:
        return Row(name, got, want, tol, True, "no stored value")
    if got is None:
        return Row(name, got, want, tol, False, "missing or not finite")
    diff, limit = got - want, tol.allowed(want)
    if tol.side == "upper":
        ok = diff <= limit
    elif tol.side == "lower":
        ok = -diff <= limit
    else:
        ok = abs(diff) <= limit
    return Row(name, got, want, tol, ok)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.4g}"
    return f"{x:.6g}"


def format_table(rows: list[Row]) -> str:
    """pytest-regressions style: obtained / expected / difference / tolerance per metric."""
    header = ["metric", "obtained", "expected", "difference", "tolerance", ""]
    body = [
        [
            r.metric,
            _fmt(r.obtained),
            _fmt(r.expected),
            _fmt(r.difference),
            r.tolerance.describe(),
            ("ok" if r.ok else "REGRESSION") + (f" ({r.note})" if r.note else ""),
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def machine_info() -> dict[str, Any]:
    """What makes numbers machine-dependent; package versions read without importing them."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_count": os.cpu_count(),
    }
    for pkg in ("torch", "transformers"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def machine_mismatch(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``["torch: 2.4.0 (baseline) vs 2.13.0 (here)", ...]``; empty when they agree."""
    return [
        f"{k}: {stored.get(k)} (baseline) vs {current.get(k)} (here)"
        for k in MACHINE_KEYS
        if k in stored and stored.get(k) != current.get(k)
    ]


def model_divergence(stored: Mapping[str, str] | None, current: Mapping[str, str] | None) -> str:
    """Why an item's numbers are not comparable with the baseline's, or ``""`` if they are.

    Same recipe but other weights means the built-in model was trained on a machine whose
    float round-off differs (training amplifies it into different weights, so every
    model-dependent number moves): comparing them would report hardware as a regression.
    Another recipe, or no identity on either side, is comparable — a change to what the
    model is must be gated like any other change.
    """
    if not stored or not current:
        return ""
    if stored.get("recipe") != current.get("recipe") or stored.get("weights") == current.get(
        "weights"
    ):
        return ""
    return (
        f"the baseline was measured on weights {str(stored.get('weights'))[:12]}, this machine "
        f"built {str(current.get('weights'))[:12]} from the same recipe "
        f"({current.get('recipe')}): training round-off differs between CPUs"
    )


class Baseline:
    """A baseline file in memory: tolerances plus ``profiles[profile].items[nodeid]``.

    File shape (schema 1)::

        {"schema_version": 1,
         "tolerances": {"<metric glob>": {"rel": .., "abs": .., "side": .., "ignore": ..}},
         "profiles": {"quick": {"machine": {...},
                                "items": {"<nodeid>": {"metrics": {"<name>": 0.12},
                                                       "tolerances": {...optional...}}}}}}
    """

    def __init__(self, data: Mapping[str, Any] | None = None, path: Path | None = None) -> None:
        self.path = path
        self.data: dict[str, Any] = dict(data or {})
        self.data.setdefault("schema_version", BASELINE_SCHEMA_VERSION)
        self.data.setdefault("tolerances", dict(DEFAULT_TOLERANCES))
        self.data.setdefault("profiles", {})
        self._validate()

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, missing_ok: bool = False) -> Baseline:
        """Read ``path``; a missing file is an error unless ``missing_ok`` (then empty)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            if missing_ok:
                return cls(path=p)
            raise BaselineError(
                f"baseline {p} does not exist; create it with --prm-update-baseline"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BaselineError(f"baseline {p} is unreadable: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BaselineError(f"baseline {p} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BaselineError(f"baseline {p}: expected a JSON object at the top")
        return cls(data, p)

    def _validate(self) -> None:
        where = str(self.path or "baseline")
        if self.data["schema_version"] != BASELINE_SCHEMA_VERSION:
            raise BaselineError(
                f"{where}: schema_version {self.data['schema_version']!r}, "
                f"expected {BASELINE_SCHEMA_VERSION}; regenerate with --prm-update-baseline"
            )
        for glob, d in self.data["tolerances"].items():
            Tolerance.from_dict(d, f"{where}: tolerances[{glob!r}]")
        if not isinstance(self.data["profiles"], dict):
            raise BaselineError(f"{where}: 'profiles' must be an object")

    def _profile(self, profile: str) -> dict[str, Any]:
        return self.data["profiles"].setdefault(profile, {"machine": {}, "items": {}})

    def machine(self, profile: str) -> dict[str, Any]:
        return dict(self.data["profiles"].get(profile, {}).get("machine", {}))

    def entry(self, profile: str, nodeid: str) -> dict[str, Any] | None:
        return self.data["profiles"].get(profile, {}).get("items", {}).get(nodeid)

    def tolerance(self, metric: str, entry: Mapping[str, Any] | None = None) -> Tolerance:
        """An item's own override, else the first matching glob, else the built-in default."""
        own = (entry or {}).get("tolerances", {})
        for table, where in ((own, "item tolerances"), (self.data["tolerances"], "tolerances")):
            for glob, d in table.items():
                if fnmatch.fnmatchcase(metric, glob):
                    return Tolerance.from_dict(d, f"{where}[{glob!r}]")
        return Tolerance()

    def compare(self, profile: str, nodeid: str, metrics: Mapping[str, float]) -> list[Row]:
        """One row per metric stored or obtained; stored-but-not-obtained is a regression."""
        entry = self.entry(profile, nodeid) or {}
        stored = entry.get("metrics", {})
        names = list(stored) + [m for m in metrics if m not in stored]
        return [
            compare_metric(n, metrics.get(n), stored.get(n), self.tolerance(n, entry))
            for n in names
        ]

    def record(
        self,
        profile: str,
        nodeid: str,
        metrics: Mapping[str, float],
        model: Mapping[str, str] | None = None,
    ) -> None:
        """Store ``metrics`` (and the ``model`` identity they came from) for an item,
        keeping its tolerance overrides."""
        items = self._profile(profile)["items"]
        old = items.get(nodeid, {})
        # Non-finite values are stored as null: strict JSON, and "no stored value" on compare.
        new: dict[str, Any] = {"metrics": {k: _finite_or_none(metrics[k]) for k in sorted(metrics)}}
        if model:
            new["model"] = dict(model)
        if "tolerances" in old:
            new["tolerances"] = old["tolerances"]
        items[nodeid] = new

    def set_machine(self, profile: str, info: Mapping[str, Any]) -> None:
        self._profile(profile)["machine"] = dict(info)

    def write(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Atomically (temp file + rename): an interrupted update keeps the old file."""
        p = Path(path or self.path or "baseline.json")
        p.parent.mkdir(parents=True, exist_ok=True)
        for prof in self.data["profiles"].values():
            prof["items"] = dict(sorted(prof.get("items", {}).items()))
        text = json.dumps(self.data, indent=1, sort_keys=False, allow_nan=False) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p
