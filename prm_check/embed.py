"""2-D embedding and clustering of the per-unit feature table, with a chance baseline.

Why these choices:

* **Standardise** every column (mean 0, SD 1) so statistics with large units (Hessian
  sums) do not drown the rest; constant or non-finite columns carry no information (and
  break the scaling), so they are dropped and named in the result.
* **UMAP** (umap-learn) only for the picture. Its kNN graph comes from scikit-learn's
  exact ``NearestNeighbors`` and it starts from a PCA layout: this skips pynndescent's
  numba compile and the spectral solver, which dominated report time (measured: ~13 s
  first-call compile + ~6 s per 5000-unit fit under load, against >60 s by default).
* **k-means, k by silhouette** over k = 2..max_k, fitted in the *original* standardised
  space, not on the UMAP picture (UMAP distances are not metric, so clusters found there
  would be artefacts of the layout). k-means rather than HDBSCAN: HDBSCAN labels most
  units of heavy-tailed curvature tables as noise, which leaves no clusters to compare
  with the W-groups; k-means assigns every unit.
* **Chance baselines** for the silhouette: (1) the label-permutation null asked for in the
  schema (cluster labels shuffled ``n_perm`` times) — what a labelling unrelated to the
  geometry scores, near 0; (2) a stronger *refit* null: every column permuted
  independently (marginals kept, joint structure destroyed) and k-means refitted with the
  same k — what k-means finds in structureless data with these marginals. Heavy-tailed
  columns alone give k-means silhouettes of 0.3-0.6, so (2) is the one to beat.
* Silhouettes are computed on a deterministic subsample of at most ``max_rows`` units
  (pairwise distances are O(n²)); the result says when that happened.

k-means runs with one BLAS/OpenMP thread: on 2 shared cores its threaded path was 80x
slower (measured 12.6 s vs 0.16 s for 3000 x 30, k = 5).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prm_check.errors import DataError

MIN_UNITS = 5


@dataclass(frozen=True, eq=False)
class EmbeddingResult:
    """UMAP coordinates, clusters and their quality, aligned with the input rows."""

    columns: tuple[str, ...]  # columns used, after dropping
    dropped: tuple[tuple[str, str], ...]  # (column, reason)
    umap: np.ndarray  # (n_units, 2)
    clusters: np.ndarray  # (n_units,) int
    k: int
    k_silhouettes: dict[int, float]  # silhouette per candidate k
    silhouette: float
    null_mean: float
    null_p95: float
    n_perm: int
    refit_null_mean: float
    refit_null_p95: float
    n_refit: int
    ari_vs_groups: float | None
    n_units: int
    silhouette_rows: int  # rows the silhouettes were computed on
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    method: str = "kmeans"
    data: str = "real"

    @property
    def subsampled(self) -> bool:
        return self.silhouette_rows < self.n_units

    def as_dict(self) -> dict[str, Any]:
        """The ``embedding`` section of results.json."""
        return {
            "data": self.data,
            "columns": list(self.columns),
            "dropped_columns": [{"column": c, "reason": r} for c, r in self.dropped],
            "umap": np.round(self.umap.astype(float), 5).tolist(),
            "clusters": [int(c) for c in self.clusters],
            "method": self.method,
            "k": self.k,
            "k_silhouettes": {str(k): v for k, v in self.k_silhouettes.items()},
            "silhouette": self.silhouette,
            "silhouette_null": {
                "kind": "label_permutation",
                "mean": self.null_mean,
                "p95": self.null_p95,
                "n_perm": self.n_perm,
            },
            "silhouette_refit_null": {
                "kind": "column_permutation_refit",
                "mean": self.refit_null_mean,
                "p95": self.refit_null_p95,
                "n_perm": self.n_refit,
            },
            "ari_vs_groups": self.ari_vs_groups,
            "n_units": self.n_units,
            "silhouette_rows": self.silhouette_rows,
            "subsampled": self.subsampled,
            "seed": self.seed,
            "params": dict(self.params),
        }


def standardise(
    values: np.ndarray, columns: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Z-score each column; drop (and name) constant or non-finite ones."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(columns):
        raise DataError(f"values has shape {x.shape}, expected (n_units, {len(columns)})")
    keep, dropped = [], []
    for j, name in enumerate(columns):
        col = x[:, j]
        if not np.isfinite(col).all():
            dropped.append((str(name), f"{int((~np.isfinite(col)).sum())} non-finite values"))
        elif np.ptp(col) == 0 or np.std(col) <= 1e-12 * max(1.0, np.abs(col).max()):
            dropped.append((str(name), "constant"))
        else:
            keep.append(j)
    if not keep:
        raise DataError("no usable feature column: all are constant or non-finite")
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(x[:, keep])
    return z, tuple(str(columns[j]) for j in keep), tuple(dropped)


def _umap_2d(z: np.ndarray, seed: int, n_neighbors: int, min_dist: float, n_epochs: int):
    import umap
    from sklearn.neighbors import NearestNeighbors

    nn = min(n_neighbors, len(z) - 1)
    dist, idx = NearestNeighbors(n_neighbors=nn).fit(z).kneighbors(z)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=nn,
        min_dist=min_dist,
        n_epochs=n_epochs,
        init="pca",
        random_state=seed,
        precomputed_knn=(idx, dist, None),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": intended
        return np.asarray(reducer.fit_transform(z), dtype=float)


def _kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(z)


def _silhouette(z: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(silhouette_score(z, labels, metric="euclidean"))


def embed_units(
    values: np.ndarray,
    columns: Sequence[str],
    groups: Sequence[str] | None = None,
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_epochs: int = 200,
    n_perm: int = 50,
    n_refit: int = 10,
    max_k: int = 8,
    max_rows: int = 2000,
    data: str = "real",
) -> EmbeddingResult:
    """Embed ``values`` (n_units x n_columns) in 2-D, cluster it, and score the clusters.

    ``groups`` (Wfunc / Wsens / Wboth / Wnone per unit) gives ``ari_vs_groups``; ``data``
    labels where the values come from. Deterministic for a given ``seed``.
    """
    from sklearn.metrics import adjusted_rand_score, pairwise_distances, silhouette_score
    from threadpoolctl import threadpool_limits

    z, used, dropped = standardise(values, columns)
    n = len(z)
    if n < MIN_UNITS:
        raise DataError(f"embedding needs at least {MIN_UNITS} units, got {n}")
    if groups is not None and len(groups) != n:
        raise DataError(f"groups has {len(groups)} entries for {n} units")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=max_rows, replace=False)) if n > max_rows else np.arange(n)
    zs = z[rows]
    ks = [k for k in range(2, max_k + 1) if k < len(rows)]
    with threadpool_limits(1):
        labels_by_k = {k: _kmeans(z, k, seed) for k in ks}
        dist = pairwise_distances(zs)
        k_sil = {
            k: float(silhouette_score(dist, lab[rows], metric="precomputed"))
            if len(np.unique(lab[rows])) > 1
            else float("nan")
            for k, lab in labels_by_k.items()
        }
        best_k = max(ks, key=lambda k: (np.nan_to_num(k_sil[k], nan=-2.0), -k))
        clusters = labels_by_k[best_k]
        sil = k_sil[best_k]
        perm = [
            float(silhouette_score(dist, rng.permutation(clusters[rows]), metric="precomputed"))
            for _ in range(n_perm)
        ]
        refit = []
        for _ in range(n_refit):
            shuffled = np.column_stack([rng.permutation(col) for col in zs.T])
            refit.append(_silhouette(shuffled, _kmeans(shuffled, best_k, seed)))
    emb = _umap_2d(z, seed, n_neighbors, min_dist, n_epochs)
    ari = None if groups is None else float(adjusted_rand_score(list(groups), clusters))
    return EmbeddingResult(
        columns=used,
        dropped=dropped,
        umap=emb,
        clusters=np.asarray(clusters, dtype=int),
        k=int(best_k),
        k_silhouettes=k_sil,
        silhouette=sil,
        null_mean=_stat(perm, np.mean),
        null_p95=_stat(perm, lambda a: np.percentile(a, 95)),
        n_perm=n_perm,
        refit_null_mean=_stat(refit, np.mean),
        refit_null_p95=_stat(refit, lambda a: np.percentile(a, 95)),
        n_refit=n_refit,
        ari_vs_groups=ari,
        n_units=n,
        silhouette_rows=len(rows),
        seed=seed,
        params={
            "n_neighbors": min(n_neighbors, n - 1),
            "min_dist": min_dist,
            "n_epochs": n_epochs,
            "max_k": max_k,
            "init": "pca",
            "knn": "exact (scikit-learn)",
        },
        data=data,
    )


def _stat(xs: list[float], fn) -> float:
    a = np.asarray([x for x in xs if np.isfinite(x)], dtype=float)
    return float(fn(a)) if a.size else float("nan")
