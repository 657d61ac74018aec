"""Atomic, strict file I/O for a run directory (results.json, CSV tables, figures).

Every write goes to a temp file in the target's own directory and is renamed over the
target (``os.replace`` is atomic on POSIX and Windows within one file system), so an
interrupted run or report never leaves a half-written file and the previous one survives.
JSON is written strictly (no NaN / Infinity tokens, which other parsers reject): non-finite
floats become ``null``. Reading validates the schema version so an old or foreign file
gives one clear :class:`~prm_check.errors.ReportError` instead of a half report.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prm_check.errors import ReportError

SCHEMA_VERSION = 1
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
UNITS_CSV = "units.csv"
# What a results.json must hold for a report to make sense; every other section is
# optional and shown as "not computed" when absent.
REQUIRED_KEYS = ("schema_version", "data", "run")
DATA_LABELS = ("real", "synthetic")
SECTIONS = ("run", "environment", "model", "baseline", "curvature", "partition", "sweep",
            "embedding", "fidelity", "timings")  # fmt: skip


def safe_child(run_dir: Path, name: str | os.PathLike[str]) -> Path:
    """``run_dir / name``, refusing names that would land outside ``run_dir``.

    Rejects absolute paths, ``..`` components, NUL bytes, backslashes and anything that
    resolves (through symlinks) outside the directory, because names can come from specs
    and results files we did not write.
    """
    text = os.fspath(name)
    if not text or "\x00" in text or "\\" in text:
        raise ReportError(f"refusing output name {text!r}: empty or has NUL / backslash")
    rel = Path(text)
    if rel.is_absolute() or rel.drive or ".." in rel.parts or rel.parts in ((), (".",)):
        raise ReportError(f"refusing output name {text!r}: must be a plain name inside {run_dir}")
    base = Path(run_dir).resolve()
    target = (base / rel).resolve()
    if target == base or base not in target.parents:
        raise ReportError(f"refusing output name {text!r}: resolves outside {run_dir}")
    return Path(run_dir) / rel


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a same-directory temp file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """UTF-8 text, written atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples, paths and dataclasses.

    Non-finite floats become ``None`` so the output is strict JSON.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        as_dict = getattr(obj, "as_dict", None) or getattr(obj, "to_dict", None)
        return to_jsonable(as_dict() if as_dict else dataclasses.asdict(obj))
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r:.80}")


def atomic_write_json(path: Path, obj: Any) -> Path:
    """Strict JSON (NaN/inf -> null, ``allow_nan=False``), written atomically."""
    text = json.dumps(to_jsonable(obj), indent=1, allow_nan=False, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return repr(f) if math.isfinite(f) else ""
    return str(value)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV table, atomically; ``None`` and non-finite floats become empty cells."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([str(h) for h in header])
    width = len(header)
    for i, row in enumerate(rows):
        cells = [_csv_cell(v) for v in row]
        if len(cells) != width:
            raise ReportError(f"{path}: row {i} has {len(cells)} cells, header has {width}")
        writer.writerow(cells)
    return atomic_write_text(path, buf.getvalue())


def _reject_constant(token: str) -> float:
    raise ValueError(f"non-standard JSON constant {token}")


def load_results(run_dir: Path) -> dict[str, Any]:
    """Read and validate ``run_dir/results.json`` (schema_version 1).

    Raises :class:`ReportError` naming the file and the problem when it is missing,
    unreadable, not strict JSON, of another schema version, or lacks a required key.
    """
    path = Path(run_dir) / RESULTS_JSON
    if not Path(run_dir).is_dir():
        raise ReportError(f"{run_dir} is not a directory; expected a run directory with results")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path} not found; run `prm-check run` to produce it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} is unreadable: {exc}") from exc
    try:
        results = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ReportError(f"{path} is corrupt (not valid JSON): {exc}") from exc
    if not isinstance(results, dict):
        raise ReportError(f"{path}: top level is {type(results).__name__}, expected an object")
    version = results.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"{path}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ReportError(f"{path}: missing required key(s) {', '.join(missing)}")
    if results["data"] not in DATA_LABELS:
        raise ReportError(f"{path}: 'data' is {results['data']!r}, expected one of {DATA_LABELS}")
    if not isinstance(results["run"], dict) or not isinstance(results["run"].get("name"), str):
        raise ReportError(f"{path}: 'run' must be an object with a string 'name'")
    for key in SECTIONS:
        value = results.get(key)
        if value is not None and not isinstance(value, dict):
            raise ReportError(f"{path}: section {key!r} is {type(value).__name__}, not an object")
    if not isinstance(results.get("checks", []), list):
        raise ReportError(f"{path}: 'checks' must be a list")
    return results


@dataclass(frozen=True)
class UnitsTable:
    """units.csv as read: the header and one list of string cells per unit."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.rows)

    def has(self, name: str) -> bool:
        return name in self.header

    def column(self, name: str) -> list[str]:
        """The raw string cells of one column."""
        try:
            j = self.header.index(name)
        except ValueError:
            raise ReportError(f"units.csv has no column {name!r}") from None
        return [r[j] for r in self.rows]

    def numeric(self, name: str) -> np.ndarray:
        """One column as float64; empty cells are NaN."""
        try:
            return np.array([float(c) if c != "" else np.nan for c in self.column(name)])
        except ValueError as exc:
            raise ReportError(f"units.csv column {name!r} is not numeric: {exc}") from exc

    def boolean(self, name: str) -> np.ndarray:
        """One column of true/false (also 1/0) as a bool array."""
        return np.array([c.strip().lower() in ("true", "1", "yes") for c in self.column(name)])


def read_units_csv(run_dir: Path, name: str = UNITS_CSV) -> UnitsTable:
    """Read ``run_dir/units.csv``; :class:`ReportError` when missing or ragged."""
    path = safe_child(Path(run_dir), name)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [tuple(r) for r in reader]
    except FileNotFoundError:
        raise ReportError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"{path} is unreadable: {exc}") from exc
    if not header:
        raise ReportError(f"{path} is empty (no header)")
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise ReportError(f"{path}: row {bad + 1} has {len(rows[bad])} cells, header {len(header)}")
    return UnitsTable(tuple(header), tuple(rows))
