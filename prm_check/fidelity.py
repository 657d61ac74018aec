"""How far synthetic per-unit features are from real ones, as a gated, thresholded check.

The legacy shortcut drew "Hessian features" to look as expected; this module answers, with
two-sample statistics, whether any synthetic table could stand in for the real one. Both
tables are aligned on the columns they share and standardised with the *real* column's
mean and SD, so every distance is in units of real spread.

Measures (each with a verdict against :class:`FidelityThresholds`):

* per feature: two-sample KS (p-values BH-adjusted across features by default, so a
  resample of the real table passes however many columns it has) and 1-Wasserstein;
* joint: multivariate energy distance (V-statistic, the same convention as
  ``scipy.stats.energy_distance`` in 1-D) with a seeded permutation p-value. Chosen over MMD
  because it has no kernel bandwidth to pick;
* correlation: Frobenius distance between the correlation matrices; the verdict uses the
  RMS over off-diagonal entries (Frobenius / sqrt(d(d-1))) so one threshold fits any width;
* partition: adjusted Rand index when the two tables hold the *same units* (matching
  ``unit_ids``, or ``units_matched=True``), else total-variation distance between the group
  proportions. Pass groups induced by running the *same rule* on each table: labels copied
  from the real table (as :func:`prm_check.synthetic.calibrated_synthetic` does) make the
  ARI 1 by construction;
* PRM response: sign agreement and Spearman correlation of mean ΔPPL / ΔAUC per
  (group, noise level > 0) cell. Both tables must use the same sign convention.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial.distance import cdist
from sklearn.metrics import adjusted_rand_score

from prm_check.errors import DataError, SpecError

SE_SUFFIX = "_se"


@dataclass(frozen=True)
class FidelityThresholds:
    """Pass/fail limits, one per measure; the experiment spec's fidelity section feeds these."""

    ks_pvalue_min: float = 0.01
    ks_adjust: str = "bh"  # "bh" (Benjamini-Hochberg across features) or "none"
    wasserstein_max: float = 0.3  # in units of the real column's SD
    energy_pvalue_min: float = 0.01
    corr_distance_max: float = 0.2  # RMS off-diagonal difference of correlation matrices
    ari_min: float = 0.5
    group_tv_max: float = 0.15  # total variation between group proportions (unmatched units)
    prm_sign_agreement_min: float = 0.8
    prm_spearman_min: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "ks_adjust":
                if v not in ("bh", "none"):
                    raise SpecError(f"fidelity.{f.name}", v, '"bh" or "none"')
            elif not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise SpecError(f"fidelity.{f.name}", v, "a finite number")
            elif f.name.endswith(("pvalue_min", "agreement_min", "tv_max")) and not 0 <= v <= 1:
                raise SpecError(f"fidelity.{f.name}", v, "a number in [0, 1]")
            elif f.name.endswith("_max") and v < 0:
                raise SpecError(f"fidelity.{f.name}", v, "a number >= 0")
            elif f.name in ("ari_min", "prm_spearman_min") and not -1 <= v <= 1:
                raise SpecError(f"fidelity.{f.name}", v, "a number in [-1, 1]")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FidelityThresholds:
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise SpecError(f"fidelity.{k}", d[k], f"one of {sorted(known)}")
        return cls(**dict(d))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Measure:
    """One verdict: ``passed`` is None when the measure could not be evaluated."""

    name: str
    value: float | None
    threshold: float
    op: str  # ">=" or "<=": how value must relate to threshold to pass
    passed: bool | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "value": _num(self.value)}


@dataclass(frozen=True)
class FeatureFidelity:
    column: str
    ks_statistic: float
    ks_pvalue: float
    ks_pvalue_adjusted: float
    wasserstein: float
    synthetic_mean: float  # standardised: real mean 0, SD 1
    synthetic_sd: float

    def as_dict(self) -> dict[str, Any]:
        return {k: _num(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FidelityReport:
    """All measures and verdicts; arrays kept (not serialised) for the figure."""

    columns: tuple[str, ...]
    n_synthetic: int
    n_real: int
    synthetic_name: str
    features: tuple[FeatureFidelity, ...]
    energy: dict[str, Any]
    correlation: dict[str, Any]
    partition: dict[str, Any] | None
    prm: dict[str, Any] | None
    measures: tuple[Measure, ...]
    thresholds: FidelityThresholds
    seed: int
    synthetic_std: np.ndarray = field(repr=False, compare=False)
    real_std: np.ndarray = field(repr=False, compare=False)
    synthetic_corr: np.ndarray = field(repr=False, compare=False)
    real_corr: np.ndarray = field(repr=False, compare=False)

    @property
    def passed(self) -> bool:
        """True when no evaluated measure failed (unevaluable ones are listed, not passed)."""
        return all(m.passed is not False for m in self.measures)

    def failed(self) -> list[str]:
        return [m.name for m in self.measures if m.passed is False]

    def not_evaluated(self) -> list[str]:
        return [m.name for m in self.measures if m.passed is None]

    def measure(self, name: str) -> Measure:
        for m in self.measures:
            if m.name == name:
                return m
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": {"synthetic": "synthetic", "real": "real"},
            "synthetic": {
                "data": "synthetic",
                "name": self.synthetic_name,
                "n_units": self.n_synthetic,
            },
            "real": {"data": "real", "n_units": self.n_real},
            "columns": list(self.columns),
            "verdict": "pass" if self.passed else "fail",
            "failed": self.failed(),
            "not_evaluated": self.not_evaluated(),
            "measures": [m.as_dict() for m in self.measures],
            "features": [f.as_dict() for f in self.features],
            "energy": _jsonable(self.energy),
            "correlation": _jsonable(self.correlation),
            "partition": _jsonable(self.partition),
            "prm": _jsonable(self.prm),
            "thresholds": self.thresholds.as_dict(),
            "seed": self.seed,
        }


# ---------------------------------------------------------------- distance functions


def energy_distance_nd(x: np.ndarray, y: np.ndarray) -> float:
    """sqrt(2E|X-Y| - E|X-X'| - E|Y-Y'|) with Euclidean norms, V-statistic (>= 0).

    Equals ``scipy.stats.energy_distance`` for 1-D samples; scipy has no multivariate one.
    """
    x, y = _rows(x), _rows(y)
    e = 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()
    return math.sqrt(max(float(e), 0.0))


def energy_permutation_test(
    x: np.ndarray, y: np.ndarray, *, n_permutations: int = 199, seed: int = 0, chunk: int = 64
) -> tuple[float, float]:
    """(energy distance, permutation p-value): the pooled distance matrix is computed once
    and every relabelling is scored by matrix products, so cost is O(N^2 x permutations)."""
    x, y = _rows(x), _rows(y)
    n, m = len(x), len(y)
    d = cdist(np.vstack([x, y]), np.vstack([x, y]))
    total = d.sum()

    def stat(s: np.ndarray) -> np.ndarray:  # s: (N, P) 0/1 membership of the "x" side
        r = d @ s
        sxx = np.einsum("ip,ip->p", s, r)
        sxy = r.sum(axis=0) - sxx
        syy = total - 2 * sxy - sxx
        return 2 * sxy / (n * m) - sxx / n**2 - syy / m**2

    obs_s = np.zeros((n + m, 1))
    obs_s[:n] = 1.0
    observed = float(stat(obs_s)[0])
    tol = 1e-9 * (total / (n + m) ** 2 + 1e-300)  # round-off: E is a difference of means of D
    rng = np.random.default_rng(seed)
    exceed, done = 0, 0
    while done < n_permutations:
        p = min(chunk, n_permutations - done)
        s = np.zeros((n + m, p))
        for j in range(p):
            s[rng.permutation(n + m)[:n], j] = 1.0
        exceed += int((stat(s) >= observed - tol).sum())
        done += p
    pvalue = (1 + exceed) / (1 + n_permutations)
    return math.sqrt(max(observed, 0.0)), pvalue


def correlation_matrix(x: np.ndarray) -> np.ndarray:
    """Pearson correlations; a constant column correlates 0 with others (1 with itself)."""
    x = _rows(x)
    if len(x) < 2:
        return np.eye(x.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.atleast_2d(np.corrcoef(x, rowvar=False))
    c = np.nan_to_num(c, nan=0.0)
    np.fill_diagonal(c, 1.0)
    return c


def correlation_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Frobenius, RMS off-diagonal) distance between two correlation matrices."""
    diff = np.asarray(a) - np.asarray(b)
    fro = float(np.linalg.norm(diff))
    k = diff.shape[0]
    return fro, (fro / math.sqrt(k * (k - 1)) if k > 1 else 0.0)


def group_tv_distance(a: Sequence[str], b: Sequence[str]) -> tuple[float, dict, dict]:
    """Total variation between group-label proportions, plus both proportion tables."""
    labels = sorted(set(a) | set(b))
    pa = {g: list(a).count(g) / len(a) for g in labels}
    pb = {g: list(b).count(g) / len(b) for g in labels}
    return 0.5 * sum(abs(pa[g] - pb[g]) for g in labels), pa, pb


# ---------------------------------------------------------------- the comparison


def compare_features(
    synthetic: Any,
    real: Any,
    *,
    thresholds: FidelityThresholds = FidelityThresholds(),  # frozen: a safe default
    seed: int = 0,
    synthetic_groups: Sequence[str] | None = None,
    real_groups: Sequence[str] | None = None,
    synthetic_prm: Sequence[Any] | None = None,
    real_prm: Sequence[Any] | None = None,
    synthetic_name: str = "synthetic",
    units_matched: bool | None = None,
    include_se: bool = False,
    n_permutations: int = 199,
    max_rows: int = 1000,
) -> FidelityReport:
    """Compare a synthetic against a real feature table; see the module docstring.

    A table is ``(values, columns)``, ``(values, columns, groups)`` or any object with
    ``.values`` and ``.columns`` (and optionally ``.unit_ids``), e.g. ``UnitFeatures``.
    Standard-error columns (``*_se``) are left out unless ``include_se``: they describe
    the estimator, not the units. The joint test subsamples each side to ``max_rows``
    rows (seeded) to bound its O(N^2) memory.
    """
    if n_permutations < 1:
        raise SpecError("fidelity.n_permutations", n_permutations, "an integer >= 1")
    if max_rows < 2:
        raise SpecError("fidelity.max_rows", max_rows, "an integer >= 2")
    sv, scols, sg, sids = as_table(synthetic, "synthetic")
    rv, rcols, rg, rids = as_table(real, "real")
    sg = _groups(synthetic_groups if synthetic_groups is not None else sg, len(sv), "synthetic")
    rg = _groups(real_groups if real_groups is not None else rg, len(rv), "real")

    shared = [c for c in rcols if c in set(scols) and (include_se or not c.endswith(SE_SUFFIX))]
    if not shared:
        raise DataError(
            f"synthetic and real tables share no feature columns (synthetic {scols}, real {rcols})"
        )
    si = [scols.index(c) for c in shared]
    ri = [rcols.index(c) for c in shared]
    s, r = sv[:, si], rv[:, ri]
    for side, arr in (("synthetic", s), ("real", r)):
        bad = [c for c, ok in zip(shared, np.isfinite(arr).all(axis=0), strict=True) if not ok]
        if bad:
            raise DataError(f"non-finite values in {side} columns {bad}")
    if len(s) < 2 or len(r) < 2:
        raise DataError(f"need >= 2 rows per side, got synthetic {len(s)}, real {len(r)}")

    mu = r.mean(axis=0)
    sd = r.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, 1.0)  # a constant real column is compared unscaled
    s_std, r_std = (s - mu) / sd, (r - mu) / sd
    th = thresholds
    measures: list[Measure] = []

    feats = _per_feature(shared, s_std, r_std, th)
    for f in feats:
        measures.append(
            _verdict(
                f"ks:{f.column}",
                f.ks_pvalue_adjusted,
                th.ks_pvalue_min,
                ">=",
                f"KS D={f.ks_statistic:.3g}, raw p={f.ks_pvalue:.3g}",
            )
        )
        measures.append(
            _verdict(f"wasserstein:{f.column}", f.wasserstein, th.wasserstein_max, "<=")
        )

    rng = np.random.default_rng(seed)
    sj = s_std if len(s_std) <= max_rows else s_std[rng.choice(len(s_std), max_rows, replace=False)]
    rj = r_std if len(r_std) <= max_rows else r_std[rng.choice(len(r_std), max_rows, replace=False)]
    e_stat, e_p = energy_permutation_test(sj, rj, n_permutations=n_permutations, seed=seed)
    energy = {
        "method": "energy",
        "statistic": e_stat,
        "pvalue": e_p,
        "n_permutations": n_permutations,
        "rows_used": [len(sj), len(rj)],
    }
    measures.append(_verdict("energy", e_p, th.energy_pvalue_min, ">=", f"E={e_stat:.3g}"))

    sc, rc = correlation_matrix(s_std), correlation_matrix(r_std)
    fro, rms = correlation_distance(sc, rc)
    corr = {"frobenius": fro, "rms_offdiag": rms, "synthetic": sc.tolist(), "real": rc.tolist()}
    measures.append(
        _verdict("correlation", rms, th.corr_distance_max, "<=", f"Frobenius={fro:.3g}")
    )

    partition = None
    if sg is not None and rg is not None:
        partition = _partition(sg, rg, sids, rids, units_matched, th, measures)

    prm = None
    if synthetic_prm is not None and real_prm is not None:
        prm = _prm(synthetic_prm, real_prm, th, measures)

    return FidelityReport(
        columns=tuple(shared), n_synthetic=len(s), n_real=len(r), synthetic_name=synthetic_name,
        features=tuple(feats), energy=energy, correlation=corr, partition=partition, prm=prm,
        measures=tuple(measures), thresholds=th, seed=seed, synthetic_std=s_std, real_std=r_std,
        synthetic_corr=sc, real_corr=rc,
    )  # fmt: skip


def _per_feature(
    cols: list[str], s: np.ndarray, r: np.ndarray, th: FidelityThresholds
) -> list[FeatureFidelity]:
    with warnings.catch_warnings():  # exact KS falls back to asymptotic on large n: fine
        warnings.filterwarnings("ignore", "ks_2samp: Exact calculation", RuntimeWarning)
        ks = [stats.ks_2samp(s[:, j], r[:, j]) for j in range(len(cols))]
    raw = np.array([k.pvalue for k in ks], dtype=float)
    adj = stats.false_discovery_control(raw, method="bh") if th.ks_adjust == "bh" else raw
    return [
        FeatureFidelity(
            column=c,
            ks_statistic=float(ks[j].statistic),
            ks_pvalue=float(raw[j]),
            ks_pvalue_adjusted=float(min(adj[j], 1.0)),
            wasserstein=float(stats.wasserstein_distance(s[:, j], r[:, j])),
            synthetic_mean=float(s[:, j].mean()),
            synthetic_sd=float(s[:, j].std(ddof=1)),
        )
        for j, c in enumerate(cols)
    ]


def _partition(sg, rg, sids, rids, units_matched, th, measures) -> dict[str, Any]:
    """ARI on the same units, else TV distance of group proportions."""
    if units_matched is None:
        units_matched = sids is not None and rids is not None and set(sids) == set(rids)
    if units_matched:
        if len(sg) != len(rg):
            raise DataError(f"units_matched but {len(sg)} synthetic vs {len(rg)} real rows")
        if sids is not None and rids is not None:
            if set(sids) != set(rids):
                raise DataError("units_matched but the unit_ids of the two tables differ")
            pos = {u: i for i, u in enumerate(sids)}
            sg = [sg[pos[u]] for u in rids]
        ari = float(adjusted_rand_score(rg, sg))
        measures.append(_verdict("partition_ari", ari, th.ari_min, ">="))
        return {"mode": "ari", "ari": ari}
    tv, ps, pr = group_tv_distance(sg, rg)
    table = np.array([[sg.count(g) for g in ps], [rg.count(g) for g in ps]])
    chi_p = float(stats.chi2_contingency(table).pvalue) if table.shape[1] > 1 else 1.0
    detail = f"chi-square homogeneity p={chi_p:.3g} (reported, not gated)"
    measures.append(_verdict("group_proportions", tv, th.group_tv_max, "<=", detail))
    return {
        "mode": "proportions",
        "tv_distance": tv,
        "chi2_pvalue": chi_p,
        "synthetic": ps,
        "real": pr,
    }


def _prm(syn_rows, real_rows, th, measures) -> dict[str, Any]:
    """Sign agreement and Spearman rho of mean ΔPPL/ΔAUC per (group, level > 0) cell;
    when the two sweeps share no level, per group averaged over their levels > 0."""
    sc, rc = _prm_cells(syn_rows, "synthetic"), _prm_cells(real_rows, "real")
    keys = sorted(set(sc) & set(rc))
    mode = "group_level"
    if not keys:
        sc, rc = _by_group(sc), _by_group(rc)
        keys = sorted(set(sc) & set(rc))
        mode = "group_mean"
    if not keys:
        raise DataError("synthetic and real PRM tables share no group with a noise level > 0")
    s = np.array([sc[k] for k in keys])
    r = np.array([rc[k] for k in keys])
    agree = float((np.sign(s) == np.sign(r)).mean())
    measures.append(_verdict("prm_sign", agree, th.prm_sign_agreement_min, ">="))
    out: dict[str, Any] = {
        "mode": mode,
        "cells": [list(map(str, k)) for k in keys],
        "synthetic": s.tolist(),
        "real": r.tolist(),
        "sign_agreement": agree,
    }
    for j, metric in enumerate(("ppl", "auc")):
        rho = None
        if len(keys) >= 3 and np.ptp(s[:, j]) > 0 and np.ptp(r[:, j]) > 0:
            rho = float(stats.spearmanr(s[:, j], r[:, j]).statistic)
        out[f"spearman_{metric}"] = rho
        detail = "" if rho is not None else "needs >= 3 non-constant cells"
        measures.append(_verdict(f"prm_spearman_{metric}", rho, th.prm_spearman_min, ">=", detail))
    return out


def _prm_cells(rows: Sequence[Any], side: str) -> dict[tuple[str, float], tuple[float, float]]:
    acc: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for i, row in enumerate(rows):
        get = row.get if isinstance(row, Mapping) else lambda k, _r=row: getattr(_r, k, None)
        level = next(
            (get(k) for k in ("noise_level", "level", "alpha") if get(k) is not None), None
        )
        vals = (get("group"), level, get("delta_ppl"), get("delta_auc"))
        if any(v is None for v in vals):
            raise DataError(
                f"{side} PRM row {i} needs group, noise_level, delta_ppl, delta_auc: {row!r}"
            )
        group, lvl, dp, da = str(vals[0]), float(vals[1]), float(vals[2]), float(vals[3])
        if not all(map(math.isfinite, (lvl, dp, da))):
            raise DataError(f"{side} PRM row {i} has a non-finite value: {row!r}")
        if lvl > 0:
            acc.setdefault((group, lvl), []).append((dp, da))
    return {k: tuple(np.mean(v, axis=0).tolist()) for k, v in acc.items()}


def _by_group(cells: dict) -> dict[tuple[str], tuple[float, float]]:
    acc: dict[tuple[str], list] = {}
    for (g, _lvl), v in cells.items():
        acc.setdefault((g,), []).append(v)
    return {k: tuple(np.mean(v, axis=0).tolist()) for k, v in acc.items()}


# ---------------------------------------------------------------- helpers


def _verdict(
    name: str, value: float | None, threshold: float, op: str, detail: str = ""
) -> Measure:
    if value is None or not math.isfinite(value):
        return Measure(name, None, threshold, op, None, detail or "not computable")
    ok = value >= threshold if op == ">=" else value <= threshold
    return Measure(name, float(value), threshold, op, bool(ok), detail)


def as_table(obj: Any, side: str) -> tuple[np.ndarray, list[str], Any, Any]:
    """(values, columns, groups or None, unit_ids or None) from a tuple or a duck-typed table.

    ``side`` ("synthetic" / "real") names the table in error messages.
    """
    groups = ids = None
    if isinstance(obj, tuple) and len(obj) in (2, 3):
        values, columns = obj[0], obj[1]
        groups = obj[2] if len(obj) == 3 else None
    elif hasattr(obj, "values") and hasattr(obj, "columns"):
        values, columns = obj.values, obj.columns
        ids = getattr(obj, "unit_ids", None)
        groups = getattr(obj, "groups", None)
    else:
        raise DataError(
            f"{side} table must be (values, columns[, groups]) or have .values and .columns; "
            f"got {type(obj).__name__}"
        )
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise DataError(f"{side} values are not numeric: {e}") from None
    cols = [str(c) for c in columns]
    if x.ndim != 2:
        raise DataError(f"{side} values must be 2-D (units x features), got shape {x.shape}")
    if len(cols) != x.shape[1]:
        raise DataError(f"{side}: {len(cols)} column names for {x.shape[1]} columns")
    if len(set(cols)) != len(cols):
        raise DataError(
            f"{side}: duplicate column names {sorted({c for c in cols if cols.count(c) > 1})}"
        )
    if ids is not None:
        ids = [str(u) for u in ids]
        if len(ids) != x.shape[0]:
            raise DataError(f"{side}: {len(ids)} unit_ids for {x.shape[0]} rows")
    return x, cols, groups, ids


def _groups(groups: Sequence[str] | None, n: int, side: str) -> list[str] | None:
    if groups is None:
        return None
    g = [str(v) for v in groups]
    if len(g) != n:
        raise DataError(f"{side}: {len(g)} group labels for {n} rows")
    return g


def _rows(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a.reshape(-1, 1) if a.ndim == 1 else a


def _num(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return _num(v.item())
    return _num(v)
