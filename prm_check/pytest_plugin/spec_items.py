"""The bodies of the items a spec file becomes; each reads cached stage sections and judges.

Why plain functions with fixture arguments: the collector copies them into a synthetic
module with ``parametrize`` marks, so they are ordinary pytest functions (``-k``, ``-m``,
fixtures and xdist behave as usual). Every failure is one readable message (no traceback
into plugin code); numbers that matter go to ``user_properties`` as ``prm.<name>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytest

from prm_check.errors import BudgetExceeded, PrmCheckError
from prm_check.pytest_plugin.runtime import StageOutcome, UpstreamFailed

METRIC_PREFIX = "prm."
# The model an item's numbers come from: the recipe it was built from (the built-in cache
# key, or the folder for a local model) and the hash of its weights. The baseline gate
# compares numbers only between the same weights (see pytest_plugin.gating).
MODEL_RECIPE = "prm_model_recipe"
MODEL_WEIGHTS = "prm_model_weights"
SWEEP_CHECK_STAGE = "sweep"
PARTITION_CHECK_STAGE = "partition"


class ItemContext:
    """What an item body needs: its spec, the session's stages, and a metrics recorder."""

    def __init__(self, request: pytest.FixtureRequest, spec: Any, stages: Any) -> None:
        self.item = request.node
        self.config = request.config
        self.spec = spec
        self.stages = stages

    def outcome(self, stage: str) -> StageOutcome:
        out = self.stages.outcome(self.spec, stage, self.item)
        self._identify_model()
        return out

    def _identify_model(self) -> None:
        """Attach the model's recipe and weights hash (once; the assets stage ran first)."""
        if any(name == MODEL_WEIGHTS for name, _ in self.item.user_properties):
            return
        assets = self.stages.outcome(self.spec, "assets", self.item)
        if assets.error is not None or not assets.section:
            return
        info = assets.section.get("model") or {}
        if info.get("hash"):
            recipe = info.get("cache_key") or info.get("source")
            self.item.user_properties.append((MODEL_RECIPE, str(recipe)))
            self.item.user_properties.append((MODEL_WEIGHTS, str(info["hash"])))

    def stage(self, stage: str) -> dict:
        """The stage's section, or this item fails with the stage's one-line error."""
        out = self.outcome(stage)
        if out.error is not None:
            raise_stage_error(out.error)
        assert out.section is not None
        return out.section

    def metric(self, name: str, value: Any) -> None:
        """Attach a number to the item (JUnit XML, xdist, baseline gate, summary table)."""
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)):
            self.item.user_properties.append((METRIC_PREFIX + name, value))


def raise_stage_error(err: Exception) -> None:
    """Budget breaches and tool errors as one line; anything else (a bug) with its trace."""
    if isinstance(err, (BudgetExceeded, UpstreamFailed)):
        raise err
    if isinstance(err, PrmCheckError):
        pytest.fail(f"{type(err).__name__}: {err}", pytrace=False)
    raise err


def require(problems: Iterable[str], what: str) -> None:
    found = [p for p in problems if p]
    if found:
        pytest.fail(f"{what}:\n" + "\n".join(f"  - {p}" for p in found), pytrace=False)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def curvature(_prm_ctx: ItemContext, loss: str) -> None:
    """Real per-unit curvature for one loss: tokens seen, finite spectrum, asked granularity."""
    ctx = _prm_ctx
    sec = ctx.stage("curvature")
    entry = (sec.get("losses") or {}).get(loss)
    if entry is None:
        pytest.fail(f"curvature has no loss {loss!r} (has {sorted(sec.get('losses') or {})})")
    eig = entry.get("top_eigenvalues") or []
    want = ctx.spec.curvature
    require(
        [
            sec.get("data") != "real" and f"data is {sec.get('data')!r}, not 'real'",
            sec.get("granularity") != want.granularity
            and f"granularity {sec.get('granularity')!r}, spec asks {want.granularity!r}",
            not (entry.get("tokens") or 0) > 0 and "no tokens were scored",
            any(not _finite(e) for e in eig) and f"non-finite top eigenvalues {eig}",
            loss != "nonmember"
            and want.top_k > 0
            and len(eig) != want.top_k
            and f"{len(eig)} top eigenvalues, spec asks {want.top_k}",
        ],
        f"curvature({loss}) is not sane",
    )
    ctx.metric("tokens", entry.get("tokens"))
    ctx.metric("texts", entry.get("texts"))
    if eig:
        ctx.metric("top_eigenvalue", max(eig))
    ctx.metric("compute_s", entry.get("seconds"))
    for key, value in sorted((entry.get("meta") or {}).items()):
        ctx.metric(f"meta.{key}", value)


def partition(_prm_ctx: ItemContext) -> None:
    """Groups are non-trivial and the matched control exists when the sweep needs it."""
    ctx = _prm_ctx
    sec = ctx.stage("partition")
    counts = sec.get("counts") or {}
    units = sum(counts.get(g, 0) for g in ("Wfunc", "Wsens", "Wboth", "Wnone"))
    need_control = "control" in ctx.spec.sweep.groups
    require(
        [
            sec.get("data") != "real" and f"data is {sec.get('data')!r}, not 'real'",
            units == 0 and "no units were partitioned",
            counts.get("Wsens", 0) == 0 and "Wsens is empty: nothing to protect",
            need_control
            and counts.get("control", 0) == 0
            and "the matched random control group is empty",
        ],
        "partition is not usable",
    )
    for group, n in sorted(counts.items()):
        ctx.metric(f"count.{group}", n)
    rule = ctx.spec.partition.rule
    for e in sec.get("planted_eval") or []:
        if e.get("name") == rule:
            ctx.metric("planted_roc_auc", e.get("roc_auc"))
    if sec.get("planted_eval"):
        verdict = sec.get("planted_verdict") or {}
        require([not verdict.get("finding") and "no planted verdict"], "partition is not usable")
        for key in ("best_hessian_rule", "best_baseline"):
            ctx.metric(f"{key}_auc", (verdict.get(key) or {}).get("roc_auc"))


def sweep(_prm_ctx: ItemContext) -> None:
    """Every cell restored its weights bit-exactly, and every (group, level) was measured."""
    ctx = _prm_ctx
    sec = ctx.stage("sweep")
    cells = sec.get("cells") or []
    summary = {(r["group"], r["level"]) for r in sec.get("summary") or []}
    missing = [
        f"{g}@{lv:g}"
        for g in ctx.spec.sweep.groups
        for lv in ctx.spec.sweep.levels
        if lv > 0 and not any(sg == g and math.isclose(sl, lv) for sg, sl in summary)
    ]
    unrestored = [f"{c['group']}@{c['level']:g}#{c['draw']}" for c in cells if not c["restored"]]
    require(
        [
            sec.get("data") != "real" and f"data is {sec.get('data')!r}, not 'real'",
            not cells and "no sweep cells",
            unrestored and f"weights not restored after {', '.join(unrestored[:5])}",
            missing and f"no summary for {', '.join(missing[:8])}",
        ],
        "noise sweep is incomplete",
    )
    clean = sec.get("clean") or {}
    ctx.metric("clean.ppl", clean.get("ppl"))
    for attack, auc in sorted((clean.get("auc") or {}).items()):
        ctx.metric(f"clean.auc_{attack}", auc)
    ctx.metric("cells", len(cells))


def check(_prm_ctx: ItemContext, check_id: str) -> None:
    """One hypothesis of the spec, judged exactly as ``prm-check run`` judges it."""
    from prm_check.observe import evaluate_check

    ctx = _prm_ctx
    spec_check = next(c for c in ctx.spec.checks if c.id == check_id)
    stage = PARTITION_CHECK_STAGE if spec_check.metric.startswith("partition_") else "sweep"
    results = {stage: ctx.stage(stage)}
    row = evaluate_check(results, spec_check, ctx.spec.partition.rule)
    ctx.metric("observed", row["observed"])
    ctx.metric("threshold", spec_check.value)
    if row["error"]:
        pytest.fail(f"check {check_id}: {row['error']}", pytrace=False)
    if not row["passed"]:
        pytest.fail(
            f"check {check_id}: observed {row['observed']!r}, expected {spec_check.describe()}",
            pytrace=False,
        )


def fidelity(_prm_ctx: ItemContext, variant: str) -> None:
    """The synthetic variant's fidelity verdict equals the spec's hypothesis for it.

    ``expect_<variant> = "match"``: every measure must pass; ``"differ"``: at least one
    must fail, i.e. the harness tells the synthetic shortcut apart from real statistics.
    """
    ctx = _prm_ctx
    rep = (ctx.stage("fidelity") or {}).get(variant)
    if rep is None:
        pytest.fail(f"fidelity stage has no variant {variant!r}", pytrace=False)
    expect = ctx.spec.fidelity.expectation(variant)
    ctx.metric("expect", expect)
    for m in rep.get("measures") or []:
        ctx.metric(f"measure.{m['name']}", m.get("value"))
    failed = [m for m in rep.get("measures") or [] if m.get("passed") is False]
    ctx.metric("failed_measures", len(failed))
    if expect == "match" and rep.get("verdict") != "pass":
        lines = [
            f"{m['name']} = {m.get('value')!r}, needs {m['op']} {m['threshold']!r}"
            + (f" ({m['detail']})" if m.get("detail") else "")
            for m in failed
        ]
        require(lines or [f"verdict {rep.get('verdict')!r}"], f"synthetic[{variant}] != real")
    if expect == "differ" and not failed:
        pytest.fail(
            f"synthetic[{variant}] passed every fidelity measure against the real statistics, "
            "but the spec expects the harness to tell them apart (fidelity.expect_"
            f"{variant} = 'differ')",
            pytrace=False,
        )


def budget(_prm_ctx: ItemContext, stage: str) -> None:
    """The stage ran (or once ran, if cached) within the budget that applies to this item."""
    from prm_check.pipeline import stage_budget
    from prm_check.pytest_plugin import options

    ctx = _prm_ctx
    out = ctx.outcome(stage)
    b = options.resolve_budget(ctx.config, ctx.item, *stage_budget(ctx.spec, stage))
    if b.memory is not None:
        ctx.metric("budget_memory_bytes", b.memory)
    if b.seconds is not None:
        ctx.metric("budget_seconds", b.seconds)
    if out.error is not None:
        raise_stage_error(out.error)
    rec = out.record
    ctx.metric("peak_rss_bytes", rec.get("peak_rss_bytes"))
    ctx.metric("wall_s", rec.get("wall_s"))
    ctx.metric("cpu_s", rec.get("cpu_s"))
    ctx.metric("cached", bool(rec.get("cached")))
    if not rec.get("cached"):
        return  # computed just now: the guard enforced the budget while it ran
    # A cached stage was measured when it was computed; a budget tightened since still binds.
    peak, wall = rec.get("peak_rss_bytes"), rec.get("wall_s")
    if b.memory is not None and _finite(peak) and peak > b.memory:
        raise BudgetExceeded("memory", b.memory, peak, f"{stage} (recorded run)")
    if b.seconds is not None and _finite(wall) and wall > b.seconds:
        raise BudgetExceeded("time", b.seconds, wall, f"{stage} (recorded run)")


ITEM_FUNCTIONS = {
    "curvature": curvature,
    "partition": partition,
    "sweep": sweep,
    "check": check,
    "fidelity": fidelity,
    "budget": budget,
}
