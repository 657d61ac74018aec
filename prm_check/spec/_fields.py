"""Field validators for the experiment spec: each checks one value and says what it expected.

Why declarative: every dataclass field carries its validator in ``metadata``, so one loop
validates Python-built and TOML-loaded specs alike, and the error text (the allowed range or
choices) comes from the same object that enforces it. Stdlib only: the pytest plugin imports
the spec at collection time.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, field, fields
from types import MappingProxyType
from typing import Any

from prm_check.errors import BudgetError, SpecError


def join(path: str, name: str) -> str:
    """Dotted field path: ``join("sweep", "levels[2]") -> "sweep.levels[2]"``."""
    if not path:
        return name
    return path + name if name.startswith("[") else f"{path}.{name}"


def suggest(word: object, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when ``word`` is a near miss of a known name, else ``""``."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING_VALUE = _Missing()  # the "got" of a required key that is absent


class Validator:
    """Checks one value, returns it normalised (lists -> tuples, ints -> floats)."""

    expected = "a valid value"
    optional = False

    def __call__(self, name: str, value: object) -> Any:
        if value is None and self.optional:
            return None
        return self.check(name, value)

    def check(self, name: str, value: object) -> Any:
        raise NotImplementedError

    def fail(self, name: str, value: object, hint: str = "") -> SpecError:
        expected = self.expected + (" or omitted" if self.optional else "")
        return SpecError(name, value, expected + hint)


class Choice(Validator):
    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.expected = "one of " + ", ".join(repr(c) for c in self.choices)

    def check(self, name: str, value: object) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise self.fail(name, value, suggest(value, self.choices))
        return value


def _bound_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None and not lo_open and not hi_open:
        return f"in [{lo}, {hi}]"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return " and ".join(parts)


class Integer(Validator):
    def __init__(self, lo: int, hi: int | None = None, *, optional: bool = False) -> None:
        self.lo, self.hi, self.optional = lo, hi, optional
        self.expected = f"an integer {_bound_text(lo, hi, False, False)}"

    def check(self, name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, value)
        if value < self.lo or (self.hi is not None and value > self.hi):
            raise self.fail(name, value)
        return value


class Real(Validator):
    """A finite number (TOML ints accepted and stored as float)."""

    def __init__(
        self,
        lo: float | None = None,
        hi: float | None = None,
        *,
        lo_open: bool = False,
        hi_open: bool = False,
        optional: bool = False,
    ) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.optional = optional
        bounds = _bound_text(lo, hi, lo_open, hi_open)
        self.expected = f"a finite number {bounds}".rstrip()

    def check(self, name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, value)
        x = float(value)
        if not math.isfinite(x):
            raise self.fail(name, value)
        lo, hi = self.lo, self.hi
        if lo is not None and (x <= lo if self.lo_open else x < lo):
            raise self.fail(name, value)
        if hi is not None and (x >= hi if self.hi_open else x > hi):
            raise self.fail(name, value)
        return x


class Boolean(Validator):
    expected = "true or false"

    def check(self, name: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.fail(name, value)
        return value


class Text(Validator):
    def __init__(self, pattern: str, describe: str, *, optional: bool = False) -> None:
        self.pattern = re.compile(pattern)
        self.expected = describe
        self.optional = optional

    def check(self, name: str, value: object) -> str:
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            raise self.fail(name, value)
        return value


class Items(Validator):
    """A list of items (stored as a tuple): non-empty, unique, optionally ascending."""

    def __init__(
        self, item: Validator, *, min_len: int = 1, unique: bool = True, ascending: bool = False
    ) -> None:
        self.item, self.min_len, self.unique, self.ascending = item, min_len, unique, ascending
        rules = [f"at least {min_len}"] if min_len else []
        rules += ["unique"] if unique and not ascending else []
        rules += ["strictly ascending"] if ascending else []
        self.expected = f"a list ({', '.join(rules)}) of {item.expected}"

    def check(self, name: str, value: object) -> tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise self.fail(name, value)
        out = tuple(self.item(f"{name}[{i}]", v) for i, v in enumerate(value))
        if len(out) < self.min_len:
            raise self.fail(name, value)
        for i in range(1, len(out)):
            if self.unique and out[i] in out[:i]:
                raise SpecError(f"{name}[{i}]", value[i], f"no duplicates ({self.expected})")
            if self.ascending and not out[i - 1] < out[i]:
                raise SpecError(f"{name}[{i}]", value[i], f"> {out[i - 1]!r} ({self.expected})")
        return out


_MEMORY_FORMS = "'2 GiB', '512MB', '1.5G' (KiB/MiB/GiB and K/M/G = 1024^n, kB/MB/GB = 1000^n)"
_TIME_FORMS = "'90s', '30 min', '1h', '500ms'"


class Budget(Validator):
    """A memory or time budget kept as text (``"2 GiB"``, ``"90s"``); ``"none"`` = no limit.

    Kept as the user wrote it (readable in reports, stable in hashes) and parsed here only to
    reject typos early; the budget module parses it again where it enforces it.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.optional = True
        forms = _MEMORY_FORMS if kind == "memory" else _TIME_FORMS
        self.expected = f"a positive {kind} budget such as {forms}, or 'none' (no limit)"

    def fail(self, name: str, value: object, hint: str = "") -> SpecError:
        return SpecError(name, value, self.expected + hint)

    def check(self, name: str, value: object) -> str | None:
        if not isinstance(value, str):
            raise self.fail(name, value)
        if value.strip().lower() == "none":
            return None
        from prm_check.budget.parse import parse_duration, parse_size  # lazy: tiny, stdlib-only

        try:
            amount = parse_size(value) if self.kind == "memory" else parse_duration(value)
        except BudgetError:
            raise self.fail(name, value) from None
        if amount <= 0:
            raise self.fail(name, value)
        return value


class Nested(Validator):
    """A sub-table built into dataclass ``cls`` (errors get this field's path prefix)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.expected = f"a table of {cls.__name__} fields"

    def check(self, name: str, value: object) -> Any:
        return build(self.cls, value, name)


class NestedList(Validator):
    """A list of sub-tables (``[[checks]]``), each built into ``cls``."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.expected = f"a list of {cls.__name__} tables"

    def check(self, name: str, value: object) -> tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise self.fail(name, value)
        return tuple(build(self.cls, v, f"{name}[{i}]") for i, v in enumerate(value))


class NestedMap(Validator):
    """A table of named sub-tables (``[budgets.stages.curvature]``), keys from ``names``."""

    def __init__(self, cls: type, names: Sequence[str]) -> None:
        self.cls, self.names = cls, tuple(names)
        self.expected = f"a table keyed by {', '.join(map(repr, self.names))}"

    def check(self, name: str, value: object) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(name, value)
        out = {}
        for key in sorted(value, key=str):
            if key not in self.names:
                raise SpecError(join(name, str(key)), value[key], unknown(key, self.names))
            out[key] = build(self.cls, value[key], join(name, key))
        return MappingProxyType(out)


def unknown(key: object, known: Sequence[str]) -> str:
    """The ``expected`` text for an unknown key."""
    return f"a known key: {', '.join(known)}{suggest(key, known)}"


def spec_field(default: Any = MISSING, check: Validator | None = None, **kw: Any) -> Any:
    """A dataclass field carrying its validator; mutable or dataclass defaults via factory."""
    meta = {"check": check} if check is not None else {}
    meta.update(kw.pop("metadata", {}))
    if default is not MISSING and (
        hasattr(default, "__dataclass_fields__") or type(default).__hash__ is None
    ):
        return field(default_factory=lambda: default, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def validate_fields(obj: object) -> None:
    """Run every field's validator on a (frozen) dataclass instance, storing normal forms."""
    for f in fields(obj):  # type: ignore[arg-type]
        check: Callable[[str, object], object] | None = f.metadata.get("check")
        if check is None:
            continue
        value = getattr(obj, f.name)
        new = check(f.name, value)
        if new is not value:
            object.__setattr__(obj, f.name, new)


def input_keys(cls: type) -> list[str]:
    """The keys a table for ``cls`` may contain (internal fields excluded)."""
    return [f.name for f in fields(cls) if f.init and not f.metadata.get("internal")]


def build(cls: type, data: object, path: str) -> Any:
    """``cls(**data)`` with unknown keys rejected and error paths prefixed by ``path``."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise SpecError(path or "(spec)", data, f"a table of {cls.__name__} fields")
    known = input_keys(cls)
    for key in data:
        if key not in known:
            raise SpecError(join(path, str(key)), data[key], unknown(key, known))
    for f in fields(cls):
        required = f.default is MISSING and f.default_factory is MISSING
        if f.init and required and f.name not in data:
            check = f.metadata.get("check")
            expected = check.expected if check else "a value"
            raise SpecError(join(path, f.name), MISSING_VALUE, expected)
    try:
        return cls(**data)
    except SpecError as exc:
        raise SpecError(join(path, exc.field), exc.value, exc.expected) from None


def freeze(obj: Any) -> Any:
    """Read-only deep copy: dicts -> MappingProxyType, lists -> tuples."""
    if isinstance(obj, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return tuple(freeze(v) for v in obj)
    return obj


def thaw(obj: Any) -> Any:
    """JSON-able deep copy: mappings -> dicts, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {k: thaw(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [thaw(v) for v in obj]
    return obj
