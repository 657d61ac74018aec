"""Embedding: blobs that match the groups are found, scored above chance, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from prm_check.embed import embed_units, standardise
from prm_check.errors import DataError


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(n_samples=240, n_features=6, centers=4, cluster_std=1.0, random_state=0)
    x = np.column_stack([x, np.full(len(x), 3.0), x[:, 0]])
    x[5, -1] = np.nan  # a column with a non-finite value must be dropped, and named
    cols = [f"f{j}" for j in range(6)] + ["const", "broken"]
    groups = [("Wfunc", "Wsens", "Wboth", "Wnone")[v] for v in y]
    return x, cols, groups


@pytest.fixture(scope="module")
def result(blobs):
    x, cols, groups = blobs
    return embed_units(x, cols, groups, seed=3, n_perm=20, n_refit=5)


def test_blobs_beat_both_nulls_and_match_groups(result) -> None:
    assert result.k == 4
    assert result.silhouette > result.null_p95 + 0.3
    assert result.silhouette > result.refit_null_p95
    assert result.ari_vs_groups == pytest.approx(1.0, abs=0.02)
    assert result.umap.shape == (240, 2) and np.isfinite(result.umap).all()
    assert dict(result.dropped) == {"const": "constant", "broken": "1 non-finite values"}


def test_as_dict_matches_schema(result) -> None:
    d = result.as_dict()
    for key in ("data", "columns", "umap", "clusters", "method", "k", "silhouette",
                "silhouette_null", "ari_vs_groups"):  # fmt: skip
        assert key in d
    assert set(d["silhouette_null"]) >= {"mean", "p95", "n_perm"}
    assert len(d["umap"]) == len(d["clusters"]) == 240 and d["data"] == "real"


def test_deterministic_and_subsampled(blobs) -> None:
    x, cols, groups = blobs
    a = embed_units(x[:60], cols, groups[:60], seed=1, n_perm=5, n_refit=2, max_rows=40)
    b = embed_units(x[:60], cols, groups[:60], seed=1, n_perm=5, n_refit=2, max_rows=40)
    np.testing.assert_array_equal(a.umap, b.umap)
    np.testing.assert_array_equal(a.clusters, b.clusters)
    assert (a.silhouette, a.null_p95, a.refit_null_p95) == (
        b.silhouette,
        b.null_p95,
        b.refit_null_p95,
    )
    assert a.subsampled and a.silhouette_rows == 40 and a.as_dict()["subsampled"]


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="no usable"):
        standardise(np.ones((10, 2)), ["a", "b"])
    with pytest.raises(DataError, match="shape"):
        standardise(np.ones((10, 2)), ["a"])
    with pytest.raises(DataError, match="at least"):
        embed_units(np.random.default_rng(0).normal(size=(3, 2)), ["a", "b"])
    with pytest.raises(DataError, match="groups"):
        embed_units(np.random.default_rng(0).normal(size=(10, 2)), ["a", "b"], ["x"])
