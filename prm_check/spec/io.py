"""Spec <-> dict / TOML / file, the canonical hash, and spec-file discovery.

Why a canonical dict: the same dict is the JSON written into results, the input of
:func:`spec_hash` (every stage's cache key) and the round-trip form, so what is cached, what
is reported and what was asked for cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged (dependency tomli; python_version<'3.11')
    import tomli as tomllib

from prm_check.errors import SpecError
from prm_check.spec._fields import build, thaw
from prm_check.spec.checks import CheckSpec
from prm_check.spec.schema import SECTIONS, BudgetSpec, ExperimentSpec, StageBudget

SPEC_SCHEMA_VERSION = 1  # bump when a field's meaning changes: invalidates every cache key
SPEC_SUFFIX = ".prm.toml"
TOP_LEVEL = ("name", "profile", *SECTIONS, "checks", "profiles")
_SKIP_DIRS = ("node_modules", "__pycache__", "site-packages", "reports")

# The hypotheses of the built-in experiment (stated before running; not tuned on results).
DEFAULT_CHECKS = (
    CheckSpec(group="Wsens", level=0.3, metric="delta_auc_loss", op="<", value=0.0, stat="ci_high"),
    CheckSpec(
        group="Wsens",
        level=0.3,
        metric="delta_auc_loss_vs_control",
        op="<",
        value=0.0,
        stat="ci_high",
    ),
    CheckSpec(group="Wsens", level=0.01, metric="rel_delta_ppl", op="<=", value=0.05),
    CheckSpec(group="planted", metric="partition_auc", op=">=", value=0.8),
    CheckSpec(group="planted", metric="partition_auc_margin", op=">", value=0.0),
)

# The Hessian stage is the one that used to exhaust memory: it gets a tighter limit.
DEFAULT_BUDGETS = BudgetSpec(
    stages={"assets": StageBudget(seconds="45 min"), "curvature": StageBudget(memory="2 GiB")}
)


class SpecFileError(SpecError):
    """A spec file is unreadable, not TOML, or invalid; names the file and (if known) line."""

    def __init__(
        self, path: str, field: str, value: object, expected: str, line: int | None = None
    ) -> None:
        super().__init__(field, value, expected)
        self.path, self.line = path, line
        where = f"{path}:{line}" if line is not None else path
        self.args = (f"{where}: spec field {field!r}: got {value!r}, expected {expected}",)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # picklable (xdist workers report collection errors)
        return (type(self), (self.path, self.field, self.value, self.expected, self.line))


def default_spec() -> ExperimentSpec:
    """The built-in planted experiment with its hypotheses (= experiments/default.prm.toml)."""
    return ExperimentSpec(budgets=DEFAULT_BUDGETS, checks=DEFAULT_CHECKS)


def spec_from_dict(data: Mapping[str, Any], source: str | None = None) -> ExperimentSpec:
    """Validate a plain dict (parsed TOML or JSON) into a spec; unknown keys are errors."""
    spec = build(ExperimentSpec, data, "")
    return spec if source is None else dataclasses.replace(spec, source_path=source)


def spec_to_dict(spec: ExperimentSpec) -> dict[str, Any]:
    """JSON-able dict that :func:`spec_from_dict` turns back into an equal spec."""

    def plain(obj: Any) -> Any:
        if hasattr(obj, "__dataclass_fields__"):
            return {
                f.name: plain(getattr(obj, f.name))
                for f in fields(obj)
                if not f.metadata.get("internal")
            }
        if isinstance(obj, Mapping):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        return obj

    return plain(spec)


def spec_hash(spec: ExperimentSpec, section: str | Iterable[str] | None = None) -> str:
    """Stable sha256 of the canonical JSON of the spec, or of one or more sections.

    The cache key of a pipeline stage is the hash of the sections it reads, so editing a
    check or a budget does not recompute the Hessian. ``source_path`` never counts.
    """
    d = spec_to_dict(spec)
    names = [section] if isinstance(section, str) else None if section is None else list(section)
    if names is not None:
        for n in names:
            if n not in d:
                raise SpecError("section", n, f"one of {', '.join(d)}")
        d = {n: d[n] for n in sorted(set(names))}
    payload = {"schema": SPEC_SCHEMA_VERSION, "spec": d}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_spec(path: str | os.PathLike[str]) -> ExperimentSpec:
    """Read and validate a ``*.prm.toml`` file; every error names the file (and line).

    Without a ``name`` key the experiment is named after the file (``full.prm.toml`` ->
    ``full``), so two files never share a report folder by accident.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecFileError(str(p), "(file)", str(p), f"a readable UTF-8 file ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        line = int(m.group(1)) if m else None
        bad = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
        raise SpecFileError(str(p), "(toml)", bad, f"valid TOML: {exc}", line) from None
    if "name" not in data:
        stem = p.name.removesuffix(SPEC_SUFFIX).removesuffix(".toml")
        data["name"] = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("_.-") or "default"
    try:
        return spec_from_dict(data, source=str(p))
    except SpecError as exc:
        line = locate(text, exc.field)
        raise SpecFileError(str(p), exc.field, exc.value, exc.expected, line) from None


def find_spec_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every ``*.prm.toml`` under ``root`` (or ``root`` itself), sorted; skips hidden and
    virtualenv / cache / report folders so collection stays fast."""
    r = Path(root)
    if r.is_file():
        return [r] if r.name.endswith(SPEC_SUFFIX) else []
    found = []
    for dirpath, dirnames, filenames in os.walk(r):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and d not in _SKIP_DIRS and not d.endswith(".egg-info")
        )
        found += [Path(dirpath) / f for f in filenames if f.endswith(SPEC_SUFFIX)]
    return sorted(found)


_KEY_LINE = re.compile(r"\s*([A-Za-z0-9_.\"' -]+?)\s*=")
_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")


def locate(text: str, field: str) -> int | None:
    """Best-effort line of a dotted field (``checks[1].op``, ``sweep.levels[2]``) in TOML."""
    names = [n for n in re.sub(r"\[\d+\]", "", field).split(".") if n]
    index = re.match(r"[^.\[]+\[(\d+)\]", field)
    want_idx = int(index.group(1)) if index else None
    table: list[str] = []
    counts: dict[str, int] = {}
    cur_idx: int | None = None
    header_hit = None
    for no, line in enumerate(text.splitlines(), 1):
        h = _HEADER.match(line)
        if h:
            table = [s.strip().strip("\"'") for s in h.group(2).split(".")]
            cur_idx = None
            if h.group(1) == "[[":
                cur_idx = counts.get(h.group(2), 0)
                counts[h.group(2)] = cur_idx + 1
            if table == names[: len(table)] and (want_idx is None or cur_idx in (None, want_idx)):
                header_hit = no if table == names else header_hit or no
            continue
        k = _KEY_LINE.match(line)
        if k and not line.lstrip().startswith("#"):
            key = [s.strip().strip("\"'") for s in k.group(1).split(".")]
            full = table + key
            same_idx = want_idx is None or cur_idx in (None, want_idx)
            if same_idx and full == names[: len(full)] and len(full) >= min(2, len(names)):
                return no
    return header_hit


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise SpecError("(toml)", v, "a finite number")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        items = (f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None)
        return "{" + ", ".join(items) + "}"
    raise SpecError("(toml)", v, "a TOML-representable value")


def spec_to_toml(spec: ExperimentSpec) -> str:
    """The spec as a TOML document that :func:`load_spec` reads back into an equal spec.

    Omitted keys mean the default (None where the default is None); a run-wide budget of
    None is written as ``"none"``.
    """
    d = spec_to_dict(spec)
    out = [f"name = {_toml_value(d['name'])}", f"profile = {_toml_value(d['profile'])}"]

    def table(header: str, values: Mapping[str, Any]) -> None:
        out.append(f"\n[{header}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None)

    for sec in SECTIONS:
        values = dict(d[sec])
        if sec == "budgets":
            stages = values.pop("stages")
            values = {k: "none" if v is None else v for k, v in values.items()}
            table(sec, values)
            for stage, budget in stages.items():
                table(f"budgets.stages.{stage}", budget)
        else:
            table(sec, values)
    for check in d["checks"]:
        out.append("\n[[checks]]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in check.items() if v is not None)
    for prof, sections in thaw(d["profiles"]).items():
        for sec, overrides in sections.items():
            table(f"profiles.{prof}.{sec}", overrides)
    return "\n".join(out) + "\n"
