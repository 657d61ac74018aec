"""Attack-success metrics on (member scores, non-member scores); higher score = member.

ROC-AUC with a stratified bootstrap CI, and TPR at a fixed low FPR with a Clopper–Pearson
interval — reported as *undefined* (not as a number) when there are too few non-members
to resolve that FPR, because "TPR at 0.1 % FPR" from 250 non-members is really TPR at 0 %.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from prm_check.errors import DataError

_EPS = 1e-9  # guards floor(fpr * n) against float error, e.g. 0.29 * 100 = 28.999...


@dataclass(frozen=True)
class AucResult:
    """ROC-AUC (P[member score > non-member score], ties ½) and its bootstrap CI."""

    auc: float
    ci_low: float
    ci_high: float
    n_members: int
    n_nonmembers: int
    level: float = 0.95
    n_boot: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TprResult:
    """TPR at empirical FPR ≤ ``fpr``, Clopper–Pearson CI over members; None when undefined.

    The CI covers the TPR's sampling error given the threshold, not the threshold's own.
    """

    fpr: float
    tpr: float | None
    ci_low: float | None
    ci_high: float | None
    defined: bool
    reason: str | None
    achieved_fpr: float | None
    n_members: int
    n_nonmembers: int
    level: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def check_scores(member, nonmember) -> tuple[np.ndarray, np.ndarray]:
    """Both score sets as finite 1-D float64 arrays, or a :class:`DataError`."""
    out = []
    for name, x in (("member", member), ("non-member", nonmember)):
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 1:
            raise DataError(f"{name} scores must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            raise DataError(f"{name} scores are empty; pass at least one {name} record")
        bad = int(np.sum(~np.isfinite(arr)))
        if bad:
            raise DataError(
                f"{bad} {name} score(s) are not finite (nan/inf); fix the losses that produced them"
            )
        out.append(arr)
    return out[0], out[1]


def _check_level(level: float) -> float:
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise DataError(f"confidence level must be in (0, 1), got {level!r}; e.g. 0.95")
    return float(level)


def roc_auc(member, nonmember) -> float:
    """ROC-AUC of the scores with members as the positive class (scikit-learn)."""
    m, n = check_scores(member, nonmember)
    y = np.r_[np.ones(m.size), np.zeros(n.size)]
    return float(roc_auc_score(y, np.r_[m, n]))


def _counts(idx: np.ndarray, size: int) -> np.ndarray:
    """Row-wise multiplicity counts of resample indices ``idx`` [b, k] over ``size`` records."""
    b = idx.shape[0]
    flat = (idx + size * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * size).reshape(b, size).astype(np.float64)


def _bootstrap_aucs(m: np.ndarray, n: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """AUC of ``n_boot`` stratified resamples, O(n_boot·(|m|+|n|)) memory and time.

    A resample is a multiplicity count per record; with non-members sorted, the weighted
    count of resampled non-members below / tied with each member is a gather from the
    cumulative counts, so no replicate is materialised as a score array.
    """
    rng = np.random.default_rng(seed)
    y = np.sort(n)
    below = np.searchsorted(y, m, side="left")  # non-members strictly below each member
    upto = np.searchsorted(y, m, side="right")  # ... below or tied
    out = np.empty(n_boot)
    chunk = max(1, 500_000 // (m.size + n.size))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        cm = _counts(rng.integers(0, m.size, (b, m.size)), m.size)
        cn = np.zeros((b, n.size + 1))
        cn[:, 1:] = _counts(rng.integers(0, n.size, (b, n.size)), n.size)
        cum = np.cumsum(cn, axis=1)  # cum[:, j] = resampled non-members among y[:j]
        wins = 0.5 * (cum[:, below] + cum[:, upto])
        out[start : start + b] = np.sum(cm * wins, axis=1) / (m.size * n.size)
    return out


def auc_with_ci(
    member, nonmember, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> AucResult:
    """ROC-AUC with a percentile bootstrap CI, resampling members and non-members separately."""
    m, n = check_scores(member, nonmember)
    level = _check_level(level)
    if not (isinstance(n_boot, int) and n_boot >= 1):
        raise DataError(f"n_boot must be an integer ≥ 1, got {n_boot!r}; 1000 is typical")
    auc = roc_auc(m, n)
    boots = _bootstrap_aucs(m, n, n_boot, seed)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return AucResult(float(auc), float(lo), float(hi), int(m.size), int(n.size), level, n_boot)


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) binomial CI, via scipy's binomtest."""
    ci = binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=_check_level(level), method="exact"
    )
    return float(ci.low), float(ci.high)


def tpr_at_fpr(member, nonmember, fpr: float, *, level: float = 0.95) -> TprResult:
    """TPR at the threshold with the most true positives whose empirical FPR is ≤ ``fpr``.

    Rule: with n non-members, f = floor(fpr·n) false positives are allowed; a record is
    called a member when its score is strictly above the (f+1)-th highest non-member
    score. Undefined when f = 0 (n < 1/fpr): the only admissible threshold then has FPR
    0, so the number would not be a TPR at ``fpr``.
    """
    if not (isinstance(fpr, (int, float)) and 0.0 < fpr < 1.0):
        raise DataError(f"fpr must be in (0, 1), got {fpr!r}; e.g. 0.01 for 1 %")
    m, n = check_scores(member, nonmember)
    level = _check_level(level)
    allowed = math.floor(fpr * n.size + _EPS)
    if allowed < 1:
        need = math.ceil(1.0 / fpr - _EPS)
        return TprResult(
            float(fpr), None, None, None, False,
            f"needs ≥ {need} non-members to resolve FPR {fpr:g}, have {n.size}",
            None, int(m.size), int(n.size), level,
        )  # fmt: skip
    threshold = np.sort(n)[::-1][allowed]  # (f+1)-th highest non-member score
    tp = int(np.sum(m > threshold))
    lo, hi = clopper_pearson(tp, m.size, level)
    achieved = float(np.sum(n > threshold)) / n.size
    return TprResult(
        float(fpr), tp / m.size, lo, hi, True, None, achieved, int(m.size), int(n.size), level
    )
