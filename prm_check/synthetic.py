"""The synthetic shortcut, kept only as a labelled baseline to measure real statistics against.

Two generators:

* :func:`legacy_recipe` reproduces the researchers' "ultra-safe" script (ORIGIN.md, "The
  synthetic recipe"): features drawn to look as the theory expects. Every finding it yields
  is an input of the recipe, which is exactly why it exists here - to be compared, never
  reported as a result.
* :func:`calibrated_synthetic` is the best case for a synthetic shortcut: per-group
  multivariate normals fitted to a *real* table. If even that fails the fidelity check, no
  cheaper shortcut will pass.

Every dict produced here carries ``"data": "synthetic"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prm_check.errors import DataError
from prm_check.fidelity import FidelityReport, FidelityThresholds, as_table, compare_features

SYNTHETIC = "synthetic"

N_UNITS = 20
N_FEATURES = 10
NOISE_LEVELS: tuple[float, ...] = (0.0, 1e-4, 1e-3)
LEGACY_GROUPS: tuple[str, ...] = ("Wfunc", "Wsens", "Wboth")
#: Fixed (PPL, AUC) "sensitivities" of the recipe: the phase diagram they produce is an input.
LEGACY_SENSITIVITY: dict[str, tuple[float, float]] = {
    "Wfunc": (2.0, 0.1),
    "Wsens": (0.1, 1.5),
    "Wboth": (1.0, 1.0),
}
#: (low, high, count) of the uniform sparsity draw per recipe unit type, in unit order.
SPARSITY_RANGES: tuple[tuple[float, float, int], ...] = (
    (0.1, 0.4, 5),  # "functional" units 0-4
    (0.8, 0.95, 5),  # "sensitive" units 5-9
    (0.4, 0.7, 10),  # "mixed" units 10-19
)
UMAP_PARAMS: dict[str, Any] = {"n_neighbors": 5, "min_dist": 0.1}
DBSCAN_PARAMS: dict[str, Any] = {"eps": 0.5, "min_samples": 2}


@dataclass(frozen=True)
class LegacyPrmRow:
    """One of the recipe's 9 "PRM results": drawn around level x fixed sensitivity."""

    group: str
    noise_level: float
    delta_ppl: float
    delta_auc: float
    baseline_ppl: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": SYNTHETIC,
            "group": self.group,
            "noise_level": self.noise_level,
            "delta_ppl": self.delta_ppl,
            "delta_auc": self.delta_auc,
            "baseline_ppl": self.baseline_ppl,
        }


@dataclass(frozen=True)
class LegacySynthetic:
    """Everything the legacy script produced, arrays included, all marked synthetic."""

    seed: int
    features: np.ndarray  # (20, 10)
    sparsity: np.ndarray  # (20,)
    curvature: np.ndarray  # (20,)
    strength: np.ndarray  # (20,) sum of the first 3 features: the partition score
    groups: tuple[str, ...]  # (20,) Wfunc / Wsens / Wboth
    prm: tuple[LegacyPrmRow, ...]  # 9 rows
    embedding: np.ndarray | None = field(default=None, repr=False)  # (20, 2) UMAP
    cluster_labels: np.ndarray | None = field(default=None, repr=False)  # DBSCAN, -1 = noise
    silhouette: float | None = None  # None when DBSCAN finds < 2 clusters

    @property
    def umap_input(self) -> np.ndarray:
        """The recipe's UMAP input: 10 features, the sparsity, one uniform "curvature"."""
        return np.column_stack([self.features, self.sparsity, self.curvature])

    def group_counts(self) -> dict[str, int]:
        return {g: self.groups.count(g) for g in LEGACY_GROUPS}

    def feature_table(
        self, columns: Sequence[str] | None = None, sparsity_column: str | None = "sparsity"
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """``(values, columns, groups)`` for :func:`prm_check.fidelity.compare_features`.

        The recipe's features have no names; ``columns`` (10 names) says which real
        statistics the caller treats them as standing in for - an explicit, visible choice.
        Defaults to ``hessian_feature_0..9``. ``sparsity_column=None`` drops the sparsity.
        """
        names = [f"hessian_feature_{i}" for i in range(N_FEATURES)]
        if columns is not None:
            names = list(columns)
            if len(names) != N_FEATURES or len(set(names)) != N_FEATURES:
                raise DataError(
                    f"legacy features need {N_FEATURES} distinct column names, got {names!r}"
                )
        values = self.features
        if sparsity_column is not None:
            if sparsity_column in names:
                raise DataError(f"sparsity column {sparsity_column!r} clashes with a feature")
            names = [*names, sparsity_column]
            values = np.column_stack([values, self.sparsity])
        return values.copy(), names, list(self.groups)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": SYNTHETIC,
            "generator": "legacy",
            "seed": self.seed,
            "shape": list(self.features.shape),
            "features": self.features.tolist(),
            "sparsity": self.sparsity.tolist(),
            "curvature": self.curvature.tolist(),
            "strength": self.strength.tolist(),
            "groups": list(self.groups),
            "group_counts": self.group_counts(),
            "silhouette": self.silhouette,
            "cluster_labels": None if self.cluster_labels is None else self.cluster_labels.tolist(),
            "embedding": None if self.embedding is None else self.embedding.tolist(),
            "prm": [r.as_dict() for r in self.prm],
        }


def legacy_partition(strength: np.ndarray, sparsity: np.ndarray) -> tuple[str, ...]:
    """The recipe's rule: strength > 1.0 & sparsity < 0.5 -> Wfunc;
    strength < -0.5 & sparsity > 0.8 -> Wsens; everything else -> Wboth."""
    out = []
    for s, p in zip(strength.tolist(), sparsity.tolist(), strict=True):
        if s > 1.0 and p < 0.5:
            out.append("Wfunc")
        elif s < -0.5 and p > 0.8:
            out.append("Wsens")
        else:
            out.append("Wboth")
    return tuple(out)


def legacy_recipe(seed: int = 42, *, embed: bool = True) -> LegacySynthetic:
    """Reproduce the legacy synthetic script, as a labelled baseline.

    Assumptions (the write-up gives the recipe, not the code): the script called
    ``np.random.seed(seed)`` and then drew, in this order, from the legacy global API:
    ``randn(20, 10)`` features; three ``uniform(lo, hi, n)`` sparsity draws in unit order;
    ``rand(20)`` curvature; then, after UMAP, for each noise level (outer loop) and group
    in order Wfunc, Wsens, Wboth (inner loop) one ``normal`` each for ΔPPL, ΔAUC and the
    baseline PPL. We use ``np.random.RandomState(seed)``, which yields the identical stream
    without touching global state. UMAP gets ``random_state=seed`` (its own generator), so
    it does not consume the stream. ``embed=False`` skips UMAP/DBSCAN (numba start-up
    costs ~10 s) - the draws, partition and PRM rows are unchanged.
    """
    rs = np.random.RandomState(seed)
    features = rs.randn(N_UNITS, N_FEATURES)
    features[0:5] += 2.0
    features[5:10] -= 1.0
    features[10:20] *= 0.5
    sparsity = np.concatenate([rs.uniform(lo, hi, n) for lo, hi, n in SPARSITY_RANGES])
    curvature = rs.rand(N_UNITS)

    embedding = labels = None
    silhouette: float | None = None
    if embed:
        embedding, labels, silhouette = _embed_and_cluster(
            np.column_stack([features, sparsity, curvature]), seed
        )

    strength = features[:, :3].sum(axis=1)
    groups = legacy_partition(strength, sparsity)

    rows = []
    for level in NOISE_LEVELS:
        for group in LEGACY_GROUPS:
            ppl_sens, auc_sens = LEGACY_SENSITIVITY[group]
            d_ppl = rs.normal(level * ppl_sens * 10, level * 0.5)
            d_auc = rs.normal(level * auc_sens * 5, level * 0.2)
            base = 10 + rs.normal(0, 0.5)
            rows.append(LegacyPrmRow(group, level, float(d_ppl), float(d_auc), float(base)))

    return LegacySynthetic(
        seed=seed,
        features=features,
        sparsity=sparsity,
        curvature=curvature,
        strength=strength,
        groups=groups,
        prm=tuple(rows),
        embedding=embedding,
        cluster_labels=labels,
        silhouette=silhouette,
    )


def _embed_and_cluster(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float | None]:
    """UMAP -> DBSCAN -> silhouette, with the recipe's parameters."""
    import umap  # heavy import (numba): only when embedding is asked for
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import silhouette_score

    emb = umap.UMAP(**UMAP_PARAMS, random_state=seed, n_jobs=1).fit_transform(x)
    labels = DBSCAN(**DBSCAN_PARAMS).fit_predict(emb)
    n_labels = len(set(labels.tolist()))  # DBSCAN noise (-1) counts as a label, as in sklearn
    sil = float(silhouette_score(emb, labels)) if 2 <= n_labels < len(labels) else None
    return np.asarray(emb, dtype=float), labels, sil


def calibrated_synthetic(
    values: np.ndarray,
    columns: Sequence[str],
    groups: Sequence[str],
    seed: int = 0,
    *,
    ridge: float = 1e-6,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Per-group multivariate-normal draws matching a real table's group means/covariances.

    Row ``i`` of the output is a fresh draw from the Gaussian fitted to row ``i``'s group,
    so group sizes and order are the real ones. A singular covariance (fewer rows than
    columns, constant columns, a one-row group) gets ``ridge`` x the mean real column
    variance added to its diagonal, so sampling is always defined; non-singular groups are
    sampled with their covariance untouched.
    """
    x = np.asarray(values, dtype=float)
    cols = list(columns)
    labels = [str(g) for g in groups]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"calibrated_synthetic needs a non-empty 2-D table, got shape {x.shape}")
    if len(cols) != x.shape[1]:
        raise DataError(f"{len(cols)} column names for {x.shape[1]} columns")
    if len(labels) != x.shape[0]:
        raise DataError(f"{len(labels)} group labels for {x.shape[0]} rows")
    bad = [c for c, ok in zip(cols, np.isfinite(x).all(axis=0), strict=True) if not ok]
    if bad:
        raise DataError(f"non-finite values in real columns {bad}")

    rng = np.random.default_rng(seed)
    col_var = x.var(axis=0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1])
    jitter = ridge * (float(col_var.mean()) if col_var.mean() > 0 else 1.0)
    out = np.empty_like(x)
    label_arr = np.asarray(labels)
    for g in sorted(set(labels)):
        idx = np.flatnonzero(label_arr == g)
        rows = x[idx]
        mean = rows.mean(axis=0)
        d = x.shape[1]
        cov = np.atleast_2d(np.cov(rows, rowvar=False)) if len(idx) > 1 else np.zeros((d, d))
        if np.linalg.matrix_rank(cov) < d:
            cov = cov + jitter * np.eye(d)
        out[idx] = rng.multivariate_normal(mean, cov, size=len(idx), method="eigh")
    return out, cols, labels


# ---------------------------------------------------------------- the one call for a run


@dataclass(frozen=True)
class BaselineFidelity:
    """Both synthetic baselines compared against one real table: the results.json section."""

    legacy: FidelityReport
    calibrated: FidelityReport
    legacy_column_map: dict[str, str]  # legacy feature -> the real column it stands in for
    calibrated_partition: str  # how the calibrated table's groups were obtained
    figures: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": {"synthetic": SYNTHETIC, "real": "real"},
            "verdict": {
                "legacy": "pass" if self.legacy.passed else "fail",
                "calibrated": "pass" if self.calibrated.passed else "fail",
            },
            "legacy": self.legacy.as_dict(),
            "calibrated": self.calibrated.as_dict(),
            "legacy_column_map": dict(self.legacy_column_map),
            "calibrated_partition": self.calibrated_partition,
            "figures": dict(self.figures),
        }


def baseline_fidelity(
    real: Any,
    *,
    real_groups: Sequence[str] | None = None,
    real_prm: Sequence[Any] | None = None,
    partition_rule: Callable[[np.ndarray, list[str]], Sequence[str]] | None = None,
    legacy_columns: Sequence[str] | None = None,
    thresholds: FidelityThresholds | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> BaselineFidelity:
    """Legacy and calibrated synthetic vs ``real`` in one call, figures into ``out_dir``.

    * legacy: the recipe at seed 42; its 10 unnamed features are mapped onto the first 10
      real non-SE, non-sparsity columns (or ``legacy_columns``) and its sparsity onto the
      first real column whose name contains "sparsity"; the map is recorded. Its own
      partition and 9 PRM rows are compared with ``real_groups`` (proportions) and
      ``real_prm``. With only 20 units its p-value tests have little power: read the
      Wasserstein distances beside them.
    * calibrated: per-group Gaussians fitted to ``real`` (one group when no groups are
      known). Its partition is compared only if ``partition_rule(values, columns)`` is
      given - labels copied from the real table would agree by construction.

    Figures: ``synthetic_vs_real.png`` (legacy) and ``synthetic_vs_real_calibrated.png``.
    """
    thresholds = thresholds if thresholds is not None else FidelityThresholds()
    rv, rcols, rg, _ = as_table(real, "real")
    groups = list(real_groups) if real_groups is not None else rg
    groups = [str(g) for g in groups] if groups is not None else None

    leg = legacy_recipe(42, embed=False)
    col_map = _legacy_column_map(rcols, legacy_columns)
    feat_names = [col_map.get(f"hessian_feature_{i}", f"legacy_unmatched_{i}") for i in range(10)]
    lv, lc, lg = leg.feature_table(feat_names, col_map.get("sparsity", "legacy_sparsity"))
    legacy_rep = compare_features(
        (lv, lc, lg),
        (rv, rcols),
        thresholds=thresholds,
        seed=seed,
        real_groups=groups,
        synthetic_prm=[r.as_dict() for r in leg.prm] if real_prm is not None else None,
        real_prm=real_prm,
        synthetic_name="legacy",
    )

    cal_groups = groups if groups is not None else ["all"] * len(rv)
    cv, cc, _ = calibrated_synthetic(rv, rcols, cal_groups, seed=seed)
    induced = None
    how = "not compared: no partition_rule given"
    if partition_rule is not None:
        induced = [str(g) for g in partition_rule(cv, cc)]
        how = "partition_rule applied to the calibrated features"
    cal_rep = compare_features(
        (cv, cc),
        (rv, rcols),
        thresholds=thresholds,
        seed=seed,
        synthetic_groups=induced,
        real_groups=groups if induced is not None else None,
        synthetic_name="calibrated",
        units_matched=False,
    )

    figures: dict[str, str] = {}
    if out_dir is not None:
        from prm_check.report.plots_fidelity import plot_synthetic_vs_real

        d = Path(out_dir)
        figures["legacy"] = str(plot_synthetic_vs_real(legacy_rep, d / "synthetic_vs_real.png"))
        figures["calibrated"] = str(
            plot_synthetic_vs_real(cal_rep, d / "synthetic_vs_real_calibrated.png")
        )
    return BaselineFidelity(legacy_rep, cal_rep, col_map, how, figures)


def _legacy_column_map(real_cols: list[str], chosen: Sequence[str] | None) -> dict[str, str]:
    usable = [c for c in real_cols if not c.endswith("_se")]
    sparsity = next((c for c in usable if "sparsity" in c), None)
    if chosen is None:
        chosen = [c for c in usable if c != sparsity][:N_FEATURES]
    chosen = list(chosen)
    if len(chosen) > N_FEATURES or len(set(chosen)) != len(chosen):
        raise DataError(f"legacy_columns: at most {N_FEATURES} distinct names, got {chosen!r}")
    missing = [c for c in chosen if c not in real_cols]
    if missing:
        raise DataError(f"legacy_columns not in the real table: {missing}")
    out = {f"hessian_feature_{i}": c for i, c in enumerate(chosen)}
    if sparsity is not None and sparsity not in chosen:
        out["sparsity"] = sparsity
    return out
