"""Profiles: ``full`` is the spec as written; ``quick`` shrinks it for CI.

Why a fixed table and not free-form: the quick profile must stay the *same experiment* at
lower effort (fewer probes, draws, levels and records), so it only touches effort knobs,
never caps anything upward, and keeps every level a check needs. A spec may refine it with
``[profiles.quick.<section>]`` tables, whose values are set exactly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from prm_check.errors import SpecError
from prm_check.spec._fields import Choice, build, freeze, thaw
from prm_check.spec.checks import PLANTED
from prm_check.spec.schema import PROFILE_SECTIONS, PROFILES, ExperimentSpec

KEEP_ENDS = "lowest, highest and every level a check names"

# The built-in quick reductions, per section and field. Numbers are caps: the quick value is
# min(spec value, cap), and None ("all") becomes the cap. ``levels: KEEP_ENDS`` keeps the
# lowest and highest level plus every level a check names (default: 5 levels -> 3).
PROFILE_OVERRIDES: Any = freeze(
    {
        "quick": {
            "data": {
                "func_score_texts": 16,
                "sens_score_records": 64,
                "eval_records": 200,
                "ppl_eval_texts": 32,
            },
            "curvature": {
                "probes": 4,
                "probes_per_graph": 4,
                "top_k": 1,
                "slq_probes": 1,
                "slq_steps": 10,
            },
            "sweep": {"levels": KEEP_ENDS, "draws": 2, "n_boot": 200},
        },
        "full": {},
    }
)

_FALSY = ("", "0", "false", "no", "off")


def default_profile() -> str:
    """``"quick"`` when the ``CI`` environment variable is set (and not falsy), else ``"full"``."""
    return "quick" if os.environ.get("CI", "").strip().lower() not in _FALSY else "full"


def _reduced(field: str, current: Any, rule: Any, keep_levels: set[float]) -> Any:
    if field == "levels" and rule == KEEP_ENDS:
        kept = {current[0], current[-1]} | (keep_levels & set(current))
        return tuple(sorted(kept))
    return rule if current is None else min(current, rule)


def apply_profile(spec: ExperimentSpec, name: str) -> ExperimentSpec:
    """``spec`` reduced to profile ``name`` (see :data:`PROFILE_OVERRIDES`); idempotent.

    A spec's own ``[profiles.quick.<section>]`` values replace the built-in reductions field
    by field; levels that checks name are kept in any case, so every check stays runnable.
    """
    Choice(PROFILES)("profile", name)
    if spec.profile == name:
        return spec
    if spec.profile != "full":
        raise SpecError(
            "profile", name, f"{spec.profile!r}: profiles apply to a spec as written, once"
        )
    builtin, own = PROFILE_OVERRIDES[name], spec.profiles.get(name, {})
    keep_levels = {c.level for c in spec.checks if c.group != PLANTED and c.level is not None}
    changes: dict[str, Any] = {}
    for sec in PROFILE_SECTIONS:
        rules, sets = builtin.get(sec, {}), own.get(sec, {})
        if not rules and not sets:
            continue
        current = getattr(spec, sec)
        values = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
        for key, rule in rules.items():
            if key not in sets:
                values[key] = _reduced(key, values[key], rule, keep_levels)
        values.update(thaw(sets))
        path = f"profiles.{name}.{sec}"
        new = build(type(current), values, path)
        if sec == "sweep" and not keep_levels <= set(new.levels):
            levels = tuple(sorted(set(new.levels) | keep_levels))
            new = build(type(current), {**values, "levels": levels}, path)
        changes[sec] = new
    try:
        return dataclasses.replace(spec, **changes, profile=name)
    except SpecError as exc:
        hint = f" (after applying profile {name!r})"
        raise SpecError(exc.field, exc.value, exc.expected + hint) from None
