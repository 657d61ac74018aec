"""``UnitFeatures``: one row per unit, one column per statistic, with CSV/dict round trips."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prm_check.errors import DataError

_META_PREFIX = "# prm_check.UnitFeatures "


@dataclass(frozen=True)
class UnitFeatures:
    """``values[i, j]`` is statistic ``columns[j]`` of unit ``unit_ids[i]``.

    Standard errors sit beside their estimate as ``f"{col}_se"``. ``meta`` records how the
    table was made (loss name, probes, seed, method, dtype, matvecs, ``"data": "real"``).
    """

    unit_ids: list[str]
    columns: list[str]
    values: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.unit_ids), len(self.columns)):
            raise DataError(
                f"values shape {self.values.shape} does not match "
                f"{len(self.unit_ids)} units x {len(self.columns)} columns"
            )

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise DataError(f"unknown column {name!r}; have {self.columns}")
        return self.values[:, self.columns.index(name)]

    def to_dict(self) -> dict:
        return {
            "unit_ids": list(self.unit_ids),
            "columns": list(self.columns),
            "values": [[float(x) for x in row] for row in self.values],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict) -> UnitFeatures:
        values = np.asarray(d["values"], dtype=float).reshape(len(d["unit_ids"]), len(d["columns"]))
        return cls(list(d["unit_ids"]), list(d["columns"]), values, dict(d.get("meta", {})))

    def to_csv(self, path: str | Path) -> None:
        """CSV with a ``unit_id`` column; the first line is a ``#`` comment holding meta."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", newline="") as fh:
            fh.write(_META_PREFIX + json.dumps(self.meta, sort_keys=True, default=str) + "\n")
            writer = csv.writer(fh)
            writer.writerow(["unit_id", *self.columns])
            for uid, row in zip(self.unit_ids, self.values, strict=True):
                writer.writerow([uid, *(repr(float(x)) for x in row)])
        tmp.replace(path)

    @classmethod
    def from_csv(cls, path: str | Path) -> UnitFeatures:
        lines = Path(path).read_text().splitlines()
        meta: dict = {}
        if lines and lines[0].startswith(_META_PREFIX):
            meta = json.loads(lines[0][len(_META_PREFIX) :])
            lines = lines[1:]
        rows = list(csv.reader(lines))
        if not rows or rows[0][0] != "unit_id":
            raise DataError(f"{path}: not a UnitFeatures CSV (no unit_id header)")
        ids = [r[0] for r in rows[1:]]
        values = np.array([[float(x) for x in r[1:]] for r in rows[1:]], dtype=float)
        return cls(ids, rows[0][1:], values.reshape(len(ids), len(rows[0]) - 1), meta)
