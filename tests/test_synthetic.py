"""The legacy synthetic recipe (as a labelled baseline) and the calibrated generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prm_check.errors import DataError
from prm_check.synthetic import LegacySynthetic, calibrated_synthetic, legacy_recipe


@pytest.fixture(scope="module")
def legacy() -> LegacySynthetic:
    """The recipe's draws, partition and PRM rows (UMAP is tested once, separately)."""
    return legacy_recipe(42, embed=False)


@pytest.fixture(scope="module")
def recipe_draws() -> dict:
    """The recipe re-implemented from ORIGIN.md with the legacy global numpy API.

    Independent of prm_check.synthetic: its own draws, its own vectorised rule.
    """
    saved = np.random.get_state()
    try:
        np.random.seed(42)
        feats = np.random.randn(20, 10)
        feats[:5] += 2.0
        feats[5:10] -= 1.0
        feats[10:] *= 0.5
        sparsity = np.concatenate(
            [
                np.random.uniform(0.1, 0.4, 5),
                np.random.uniform(0.8, 0.95, 5),
                np.random.uniform(0.4, 0.7, 10),
            ]
        )
        curvature = np.random.rand(20)
        sens = {"Wfunc": (2.0, 0.1), "Wsens": (0.1, 1.5), "Wboth": (1.0, 1.0)}
        prm = []
        for level in (0.0, 1e-4, 1e-3):
            for g, (ps, auc) in sens.items():
                prm.append(
                    (
                        g,
                        level,
                        np.random.normal(level * ps * 10, level * 0.5),
                        np.random.normal(level * auc * 5, level * 0.2),
                        10 + np.random.normal(0, 0.5),
                    )
                )
    finally:
        np.random.set_state(saved)
    strength = feats[:, 0] + feats[:, 1] + feats[:, 2]
    groups = np.full(20, "Wboth", dtype=object)
    groups[(strength < -0.5) & (sparsity > 0.8)] = "Wsens"
    groups[(strength > 1.0) & (sparsity < 0.5)] = "Wfunc"
    return {
        "features": feats,
        "sparsity": sparsity,
        "curvature": curvature,
        "groups": list(groups),
        "counts": {g: int((groups == g).sum()) for g in ("Wfunc", "Wsens", "Wboth")},
        "prm": prm,
    }


def test_legacy_printed_facts(legacy: LegacySynthetic) -> None:
    assert legacy.features.shape == (20, 10)
    assert legacy.sparsity.shape == (20,)
    assert legacy.umap_input.shape == (20, 12)
    assert len(legacy.prm) == 9


def test_legacy_partition_counts_derived_from_recipe(legacy, recipe_draws) -> None:
    np.testing.assert_array_equal(legacy.features, recipe_draws["features"])
    np.testing.assert_array_equal(legacy.sparsity, recipe_draws["sparsity"])
    np.testing.assert_array_equal(legacy.curvature, recipe_draws["curvature"])
    assert list(legacy.groups) == recipe_draws["groups"]
    assert legacy.group_counts() == recipe_draws["counts"]
    assert sum(recipe_draws["counts"].values()) == 20


def test_legacy_prm_rows_follow_recipe(legacy, recipe_draws) -> None:
    got = [(r.group, r.noise_level, r.delta_ppl, r.delta_auc, r.baseline_ppl) for r in legacy.prm]
    assert got == recipe_draws["prm"]
    assert {(r.group, r.noise_level) for r in legacy.prm} == {
        (g, lv) for g in ("Wfunc", "Wsens", "Wboth") for lv in (0.0, 1e-4, 1e-3)
    }
    for r in legacy.prm:
        if r.noise_level == 0:
            assert r.delta_ppl == 0.0 and r.delta_auc == 0.0


def test_legacy_sparsity_ranges(legacy) -> None:
    s = legacy.sparsity
    assert ((s[:5] >= 0.1) & (s[:5] <= 0.4)).all()
    assert ((s[5:10] >= 0.8) & (s[5:10] <= 0.95)).all()
    assert ((s[10:] >= 0.4) & (s[10:] <= 0.7)).all()
    assert ((legacy.curvature >= 0) & (legacy.curvature <= 1)).all()


def test_legacy_outputs_are_labelled_synthetic(legacy) -> None:
    d = legacy.as_dict()
    assert d["data"] == "synthetic"
    assert all(row["data"] == "synthetic" for row in d["prm"])
    json.dumps(d, allow_nan=False)


def test_legacy_embedding_runs_umap_dbscan_silhouette(legacy) -> None:
    """The one UMAP call of this module (numba compiles on first use: ~10 s)."""
    full = legacy_recipe(42)
    np.testing.assert_array_equal(full.features, legacy.features)
    assert full.groups == legacy.groups and full.prm == legacy.prm  # UMAP takes no draws
    assert full.embedding is not None and full.embedding.shape == (20, 2)
    assert full.cluster_labels is not None and len(full.cluster_labels) == 20
    assert full.silhouette is None or -1.0 <= full.silhouette <= 1.0
    assert legacy.embedding is None and legacy.silhouette is None
    json.dumps(full.as_dict(), allow_nan=False)


def test_legacy_feature_table_naming() -> None:
    leg = legacy_recipe(42, embed=False)
    v, cols, groups = leg.feature_table()
    assert v.shape == (20, 11) and cols[-1] == "sparsity" and len(groups) == 20
    names = [f"func_s{i}" for i in range(10)]
    v, cols, _ = leg.feature_table(names, sparsity_column=None)
    assert v.shape == (20, 10) and cols == names
    with pytest.raises(DataError, match="10 distinct"):
        leg.feature_table(["a", "b"])
    with pytest.raises(DataError, match="clashes"):
        leg.feature_table(names, sparsity_column="func_s0")


def _real(seed: int = 0, sizes=(300, 200, 100)) -> tuple[np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(seed)
    parts, groups = [], []
    for k, (g, n) in enumerate(zip(("Wfunc", "Wsens", "Wnone"), sizes, strict=True)):
        cov = np.array([[1.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 0.5]]) * (k + 1)
        parts.append(rng.multivariate_normal([k, -k, 2 * k], cov, size=n))
        groups += [g] * n
    return np.vstack(parts), ["func_obd", "sens_obd", "func_act_sparsity"], groups


def test_calibrated_matches_group_means_within_sampling_error() -> None:
    v, cols, groups = _real()
    sv, scols, sg = calibrated_synthetic(v, cols, groups, seed=3)
    assert sv.shape == v.shape and scols == cols and sg == groups
    g = np.asarray(groups)
    for label in set(groups):
        rows, syn = v[g == label], sv[g == label]
        se = rows.std(axis=0, ddof=1) / np.sqrt(len(rows))
        # both sides carry sampling error: the difference has SE sqrt(2) * se
        assert (np.abs(syn.mean(axis=0) - rows.mean(axis=0)) < 4 * np.sqrt(2) * se).all()
        c_real, c_syn = np.cov(rows, rowvar=False), np.cov(syn, rowvar=False)
        var = np.diag(c_real)
        # SE of a Gaussian sample covariance: sqrt((s_ii s_jj + s_ij^2) / (n - 1))
        cov_se = np.sqrt((np.outer(var, var) + c_real**2) / (len(rows) - 1))
        assert (np.abs(c_syn - c_real) < 4 * np.sqrt(2) * cov_se).all()


def test_calibrated_is_seeded() -> None:
    v, cols, groups = _real()
    a = calibrated_synthetic(v, cols, groups, seed=1)[0]
    b = calibrated_synthetic(v, cols, groups, seed=1)[0]
    c = calibrated_synthetic(v, cols, groups, seed=2)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_calibrated_singular_groups() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 4))
    v[:, 3] = 1.0  # constant column
    groups = ["Wfunc", "Wsens", "Wsens", "Wboth", "Wboth", "Wboth"]  # 1-row and n<d groups
    sv, _, _ = calibrated_synthetic(v, ["a", "b", "c", "d"], groups, seed=0)
    assert np.isfinite(sv).all()
    np.testing.assert_allclose(sv[0], v[0], atol=1e-2)  # one-row group: its mean + tiny ridge


@pytest.mark.parametrize(
    ("values", "cols", "groups", "match"),
    [
        (np.zeros((0, 2)), ["a", "b"], [], "non-empty"),
        (np.zeros((3, 2)), ["a"], ["x"] * 3, "column names"),
        (np.zeros((3, 2)), ["a", "b"], ["x"] * 2, "group labels"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), ["a", "b"], ["x"] * 2, r"\['b'\]"),
    ],
)
def test_calibrated_bad_input(values, cols, groups, match) -> None:
    with pytest.raises(DataError, match=match):
        calibrated_synthetic(values, cols, groups)


@given(
    n=st.integers(2, 12),
    d=st.integers(1, 4),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_calibrated_shape_property(n: int, d: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d))
    groups = [f"g{i % k}" for i in range(n)]
    sv, cols, sg = calibrated_synthetic(v, [f"c{j}" for j in range(d)], groups, seed=seed)
    assert sv.shape == (n, d) and np.isfinite(sv).all() and sg == groups and len(cols) == d
