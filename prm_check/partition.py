"""Partition units into Wfunc / Wsens / Wboth / Wnone, with baselines and a matched control.

Scores come from per-unit curvature statistics under two losses: L_func (corpus) and
L_sens (member records). Top-q by each is "high"; the four groups are disjoint and cover
every unit. Hessian-diagonal estimates are often negative (measured: 42-48 % of fc1
entries), so every rule says how it treats sign (``abs``, ``positive``, ``signed``).

Trivial baselines are always scored beside the Hessian rules — a Hessian rule earns its
keep only by beating them — and in the planted setting every score is judged by how well
it separates the planted units from the rest (ROC-AUC, precision / recall / lift at q).
Pure numpy functions on per-unit arrays; the pipeline turns UnitFeatures into those arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from prm_check.errors import DataError, SpecError

GROUPS = ("Wfunc", "Wsens", "Wboth", "Wnone")
RULES = ("obd", "hdiag", "fisher", "contrast")
SIGNS = ("abs", "positive", "signed")
# The per-unit statistic each rule reads (from the curvature UnitFeatures columns).
RULE_COLUMN = {"obd": "obd", "hdiag": "hdiag_sum", "fisher": "fisher_sum", "contrast": "obd"}


def apply_sign(x: np.ndarray, sign: str) -> np.ndarray:
    """``abs``: magnitude counts; ``positive``: negative curvature counts as 0; ``signed``: raw."""
    if sign == "abs":
        return np.abs(x)
    if sign == "positive":
        return np.clip(x, 0.0, None)
    if sign == "signed":
        return np.asarray(x, dtype=float)
    raise SpecError("partition.sign", sign, f"one of {SIGNS}")


def rule_scores(
    rule: str,
    sign: str,
    func: Mapping[str, np.ndarray],
    sens: Mapping[str, np.ndarray],
    nonmember: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(func score, sens score) per unit under ``rule``; higher = more important.

    ``contrast`` scores sensitivity as member minus non-member statistic, so what members
    and non-members share (the record template) cancels; it needs ``nonmember`` features.
    """
    if rule not in RULES:
        raise SpecError("partition.rule", rule, f"one of {RULES}")
    col = RULE_COLUMN[rule]
    for name, table in (("func", func), ("sens", sens)):
        if col not in table:
            raise DataError(f"{name} features lack column {col!r} needed by rule {rule!r}")
    f = apply_sign(func[col], sign)
    s = apply_sign(sens[col], sign)
    if rule == "contrast":
        if nonmember is None or col not in nonmember:
            raise DataError("rule 'contrast' needs non-member curvature features")
        s = s - apply_sign(nonmember[col], sign)
    return f, s


def top_fraction(score: np.ndarray, q: float) -> np.ndarray:
    """Boolean mask of the top ``ceil(q·n)`` scores (ties broken by index, deterministic)."""
    if not 0.0 < q < 1.0:
        raise SpecError("partition.q", q, "a fraction strictly between 0 and 1")
    n = len(score)
    k = max(1, int(np.ceil(q * n)))
    order = np.lexsort((np.arange(n), -np.nan_to_num(score, nan=-np.inf)))
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return mask


def assign_groups(func_score: np.ndarray, sens_score: np.ndarray, q: float) -> np.ndarray:
    """The default rule of DESIGN §4: disjoint groups covering all units."""
    if len(func_score) != len(sens_score):
        raise DataError("func and sens scores have different lengths")
    hf, hs = top_fraction(func_score, q), top_fraction(sens_score, q)
    groups = np.full(len(func_score), "Wnone", dtype=object)
    groups[hf & ~hs] = "Wfunc"
    groups[hs & ~hf] = "Wsens"
    groups[hf & hs] = "Wboth"
    return groups


def matched_control(
    strata: Sequence[str], selected: np.ndarray, seed: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Random units matching ``selected`` count per stratum (module = layer and tensor kind).

    Units within one module have equal parameter counts, so matching per module matches
    both parameter count and layer mix. Drawn from units outside ``exclude`` (default: the
    selected group itself) where possible.
    """
    strata = np.asarray(strata, dtype=object)
    exclude = selected if exclude is None else exclude
    rng = np.random.default_rng(seed)
    control = np.zeros(len(strata), dtype=bool)
    for stratum in sorted(set(strata[selected])):
        need = int(np.sum(selected & (strata == stratum)))
        pool = np.flatnonzero((strata == stratum) & ~exclude)
        if len(pool) < need:  # tiny module: fall back to any unit of the stratum
            pool = np.flatnonzero(strata == stratum)
        control[rng.choice(pool, size=need, replace=False)] = True
    return control


@dataclass(frozen=True)
class SelectionQuality:
    """How well a selected set recovers the planted units."""

    q: float
    selected: int
    precision: float
    recall: float
    lift: float


@dataclass(frozen=True)
class PlantedScore:
    """A score's planted-vs-rest ROC-AUC (bootstrap CI) and its top-q and Wsens quality."""

    name: str
    kind: str  # "hessian_rule" | "baseline" | "oracle"
    roc_auc: float
    top_q: list[SelectionQuality] = field(default_factory=list)
    wsens: list[SelectionQuality] = field(default_factory=list)
    ci_low: float = float("nan")
    ci_high: float = float("nan")


def selection_quality(selected: np.ndarray, planted: np.ndarray, q: float) -> SelectionQuality:
    n_sel = int(selected.sum())
    hits = int((selected & planted).sum())
    base = planted.mean()
    precision = hits / n_sel if n_sel else 0.0
    recall = hits / int(planted.sum()) if planted.any() else float("nan")
    return SelectionQuality(
        q=q,
        selected=n_sel,
        precision=precision,
        recall=recall,
        lift=precision / base if base > 0 else float("nan"),
    )


def _ranked_finite(score: np.ndarray) -> np.ndarray:
    """NaN and -inf just below the lowest finite score, +inf just above the highest."""
    finite = np.isfinite(score)
    if finite.all():
        return score
    lo, hi = (float(f(score[finite])) if finite.any() else 0.0 for f in (np.min, np.max))
    low = np.isnan(score) | np.isneginf(score)
    return np.where(low, lo - 1.0, np.where(np.isposinf(score), hi + 1.0, score))


def planted_score(
    name: str,
    kind: str,
    score: np.ndarray,
    planted: np.ndarray,
    q_grid: Sequence[float],
    func_score: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> PlantedScore:
    """Threshold-free AUC with a bootstrap 95 % CI (planted and other units resampled
    separately), plus top-q (and, with ``func_score``, Wsens) quality per q.

    A unit whose score is NaN ranks below every scored unit.
    """
    from prm_check.privacy.metrics import auc_with_ci

    planted = np.asarray(planted, dtype=bool)
    if planted.all() or not planted.any():
        raise DataError("planted evaluation needs both planted and non-planted units in the pool")
    score = _ranked_finite(np.asarray(score, dtype=float))
    auc = auc_with_ci(score[planted], score[~planted], n_boot=n_boot, seed=seed)
    top = [selection_quality(top_fraction(score, q), planted, q) for q in q_grid]
    ws = []
    if func_score is not None:
        for q in q_grid:
            ws.append(selection_quality(assign_groups(func_score, score, q) == "Wsens", planted, q))
    return PlantedScore(
        name=name,
        kind=kind,
        roc_auc=auc.auc,
        top_q=top,
        wsens=ws,
        ci_low=auc.ci_low,
        ci_high=auc.ci_high,
    )


def planted_verdict(evals: Sequence[PlantedScore]) -> dict:
    """Best Hessian rule vs best trivial baseline (and the oracle), in one plain sentence.

    The acceptance question of a planted run is whether curvature finds the planted units
    better than statistics that need no curvature; this states the answer whichever way
    it goes, and whether the two AUCs' 95 % CIs overlap (then the order is not resolved).
    """

    def best(kind: str) -> PlantedScore | None:
        pool = [e for e in evals if e.kind == kind]
        return max(pool, key=lambda e: e.roc_auc) if pool else None

    rule, base, oracle = best("hessian_rule"), best("baseline"), best("oracle")
    out: dict = {"data": "real"}
    for key, e in (("best_hessian_rule", rule), ("best_baseline", base), ("oracle", oracle)):
        out[key] = (
            None
            if e is None
            else {"name": e.name, "roc_auc": e.roc_auc, "ci_low": e.ci_low, "ci_high": e.ci_high}
        )
    if rule is None or base is None:
        out["winner"] = None
        out["finding"] = "no Hessian rule or no trivial baseline was evaluated"
        return out
    margin = rule.roc_auc - base.roc_auc
    resolved = rule.ci_low > base.ci_high or base.ci_low > rule.ci_high
    out["margin"] = margin
    out["ci_separated"] = bool(resolved)
    out["winner"] = "hessian_rule" if margin > 0 else "baseline"
    lead, other = (rule, base) if margin > 0 else (base, rule)
    lead_kind = "the Hessian rule" if margin > 0 else "a trivial baseline"
    other_kind = "the best trivial baseline" if margin > 0 else "the best Hessian rule"
    sentence = (
        f"{lead_kind} ({lead.name}, ROC-AUC {lead.roc_auc:.3f} "
        f"[{lead.ci_low:.3f}, {lead.ci_high:.3f}]) finds the planted units better than "
        f"{other_kind} ({other.name}, {other.roc_auc:.3f} [{other.ci_low:.3f}, "
        f"{other.ci_high:.3f}])"
    )
    if not resolved:
        sentence += "; their 95 % CIs overlap, so the order is not resolved"
    if oracle is not None:
        sentence += f"; oracle |w - w_ref| {oracle.roc_auc:.3f}"
    out["finding"] = sentence[0].upper() + sentence[1:]
    return out


@dataclass(frozen=True)
class PartitionResult:
    """Groups per unit (aligned with ``unit_ids``), the control, and planted evaluation."""

    unit_ids: list[str]
    rule: str
    sign: str
    q: float
    groups: np.ndarray
    control: np.ndarray
    func_score: np.ndarray
    sens_score: np.ndarray
    planted_eval: list[PlantedScore] = field(default_factory=list)
    planted_pool: str = ""

    def counts(self) -> dict[str, int]:
        return {g: int(np.sum(self.groups == g)) for g in GROUPS} | {
            "control": int(self.control.sum())
        }

    def members(self, group: str) -> np.ndarray:
        """Boolean mask of a group's units; ``control`` is the matched random control."""
        if group == "control":
            return self.control
        if group not in GROUPS:
            raise DataError(f"unknown group {group!r}; known: {(*GROUPS, 'control')}")
        return self.groups == group

    def to_dict(self) -> dict:
        return {
            "data": "real",
            "rule": self.rule,
            "sign": self.sign,
            "q": self.q,
            "counts": self.counts(),
            "planted_pool": self.planted_pool,
            "planted_eval": [asdict(p) for p in self.planted_eval],
        }
