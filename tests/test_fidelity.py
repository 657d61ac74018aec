"""Synthetic-vs-real fidelity: acceptance (resample passes, 1-SD shift fails that column),
distance properties, input errors, the figure and the table."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from prm_check.errors import DataError, SpecError
from prm_check.fidelity import (
    FidelityThresholds,
    compare_features,
    correlation_distance,
    correlation_matrix,
    energy_distance_nd,
    energy_permutation_test,
    group_tv_distance,
)
from prm_check.report.plots_fidelity import format_fidelity_table, plot_synthetic_vs_real
from prm_check.synthetic import baseline_fidelity, calibrated_synthetic, legacy_recipe

COLS = ["func_hdiag_sum", "func_obd", "sens_obd", "sens_grad_norm", "func_act_sparsity"]
GROUPS = ("Wfunc", "Wsens", "Wboth", "Wnone")
OFFSET = {"Wfunc": 1.0, "Wsens": -1.0, "Wboth": 0.5, "Wnone": 0.0}


def real_like(n: int, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """A stand-in "real" table: correlated, skewed, bounded columns and group structure."""
    rng = np.random.default_rng(seed)
    g = rng.choice(GROUPS, size=n, p=[0.2, 0.2, 0.1, 0.5])
    z = rng.multivariate_normal(np.zeros(3), [[1, 0.6, 0.2], [0.6, 1, 0.3], [0.2, 0.3, 1]], size=n)
    off = np.array([OFFSET[x] for x in g])
    v = np.column_stack(
        [z[:, 0] + off, np.exp(z[:, 1]), z[:, 2] - off, rng.gamma(2, 1, n), rng.beta(2, 5, n)]
    )
    return v, list(COLS), [str(x) for x in g]


def prm_rows(seed: int, auc_sign: float = -1.0) -> list[dict]:
    """A noisy PRM sweep with a fixed response pattern (3 draws per cell)."""
    rng = np.random.default_rng(seed)
    pattern = {
        "Wfunc": (3.0, -0.2),
        "Wsens": (0.5, -2.0),
        "Wboth": (2.0, -1.0),
        "Wnone": (0.1, -0.1),
    }
    rows = []
    for level in (0.0, 0.01, 0.05):
        for g, (ppl, auc) in pattern.items():
            for _ in range(3):
                rows.append(
                    {
                        "group": g,
                        "noise_level": level,
                        "delta_ppl": level * ppl + rng.normal(0, 0.002) * (level > 0),
                        "delta_auc": auc_sign * abs(level * auc) - 0.001 * (level > 0),
                    }
                )
    return rows


def halves(n: int, seed: int):
    v, cols, g = real_like(n, seed)
    p = np.random.default_rng(seed + 1000).permutation(n)
    a, b = p[: n // 2], p[n // 2 :]
    return (v[a], cols, [g[i] for i in a]), (v[b], cols, [g[i] for i in b])


# ---------------------------------------------------------------- acceptance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resample_of_real_passes_every_measure(seed: int) -> None:
    syn, real = halves(800, seed)
    rep = compare_features(
        syn, real, seed=seed, synthetic_prm=prm_rows(seed + 1), real_prm=prm_rows(seed + 2)
    )
    assert rep.failed() == [] and rep.not_evaluated() == []
    assert rep.passed
    names = {m.name for m in rep.measures}
    assert {"energy", "correlation", "group_proportions", "prm_sign"} <= names
    assert {"prm_spearman_ppl", "prm_spearman_auc"} <= names
    assert {f"ks:{c}" for c in COLS} | {f"wasserstein:{c}" for c in COLS} <= names


@pytest.mark.parametrize("col", COLS)
def test_one_column_shifted_by_1sd_fails_exactly_that_column(col: str) -> None:
    syn, real = halves(800, 7)
    j = COLS.index(col)
    shifted = syn[0].copy()
    shifted[:, j] += real[0][:, j].std(ddof=1)
    rep = compare_features((shifted, syn[1], syn[2]), real, seed=7)
    per_feature = {n for n in rep.failed() if ":" in n}
    assert per_feature == {f"ks:{col}", f"wasserstein:{col}"}
    assert rep.measure("correlation").passed  # a shift leaves correlations alone
    assert rep.measure("group_proportions").passed
    assert not rep.measure("energy").passed  # the joint test sees it too
    assert not rep.passed


def test_matched_units_use_ari_and_align_by_unit_ids() -> None:
    @dataclass(frozen=True)
    class Table:  # duck-typed UnitFeatures
        unit_ids: list[str]
        columns: list[str]
        values: np.ndarray

    v, cols, _ = real_like(400, 3)
    ids = [f"layer0.fc1.{i}" for i in range(400)]

    def rule(x: np.ndarray) -> list[str]:  # the same partition rule on both tables
        hi_f = x[:, 0] > np.quantile(x[:, 0], 0.8)
        hi_s = -x[:, 2] > np.quantile(-x[:, 2], 0.8)
        return [
            {(1, 0): "Wfunc", (0, 1): "Wsens", (1, 1): "Wboth", (0, 0): "Wnone"}[(int(a), int(b))]
            for a, b in zip(hi_f, hi_s, strict=True)
        ]

    jitter = v + np.random.default_rng(0).normal(0, 0.01, v.shape)
    order = np.random.default_rng(1).permutation(400)  # synthetic rows in another order
    syn = Table([ids[i] for i in order], cols, jitter[order])
    rep = compare_features(
        syn, Table(ids, cols, v), synthetic_groups=rule(jitter[order]), real_groups=rule(v)
    )
    assert rep.partition is not None and rep.partition["mode"] == "ari"
    assert rep.measure("partition_ari").value > 0.9 and rep.passed

    # a partition unrelated to the real one fails
    shuffled = list(np.random.default_rng(2).permutation(rule(v)))
    rep = compare_features(syn, Table(ids, cols, v), synthetic_groups=shuffled, real_groups=rule(v))
    assert rep.failed() == ["partition_ari"]


def test_prm_sign_flip_fails() -> None:
    syn, real = halves(400, 4)
    rep = compare_features(
        syn, real, synthetic_prm=prm_rows(1, auc_sign=+1.0), real_prm=prm_rows(2)
    )
    assert rep.measure("prm_sign").value == pytest.approx(0.5)
    assert "prm_sign" in rep.failed()


def test_prm_without_shared_levels_compares_group_means() -> None:
    syn, real = halves(400, 4)
    legacy_like = [dict(r, noise_level=r["noise_level"] * 10) for r in prm_rows(1)]
    rep = compare_features(syn, real, synthetic_prm=legacy_like, real_prm=prm_rows(2))
    assert rep.prm is not None and rep.prm["mode"] == "group_mean"
    assert rep.measure("prm_sign").passed


def test_legacy_and_calibrated_run_end_to_end() -> None:
    """Wiring only: the verdicts on real statistics belong to the default experiment."""
    v, cols, g = real_like(600, 5)
    leg = legacy_recipe(42, embed=False)
    lv, lc, lg = leg.feature_table(COLS[:4] + [f"unmatched_{i}" for i in range(6)], COLS[4])
    rep = compare_features(
        (lv, lc, lg),
        (v, cols, g),
        synthetic_name="legacy",
        synthetic_prm=[r.as_dict() for r in leg.prm],
        real_prm=prm_rows(3),
    )
    assert rep.columns == tuple(COLS) and rep.n_synthetic == 20
    assert rep.partition["mode"] == "proportions"
    cal = calibrated_synthetic(v, cols, g, seed=0)
    rep2 = compare_features(cal, (v, cols, g), synthetic_name="calibrated", units_matched=False)
    assert rep2.measure("group_proportions").value == 0.0  # same sizes by construction
    d = rep2.as_dict()
    assert d["synthetic"]["data"] == "synthetic" and d["real"]["data"] == "real"
    json.dumps(rep.as_dict(), allow_nan=False)


# ---------------------------------------------------------------- inputs and thresholds


def test_se_columns_left_out_unless_asked() -> None:
    v, cols, _ = real_like(100, 0)
    v2 = np.column_stack([v, np.abs(v[:, 0]) * 0.1])
    cols2 = [*cols, "func_hdiag_sum_se"]
    assert "func_hdiag_sum_se" not in compare_features((v2, cols2), (v2, cols2)).columns
    assert (
        "func_hdiag_sum_se" in compare_features((v2, cols2), (v2, cols2), include_se=True).columns
    )


def test_aligns_on_shared_columns_in_real_order() -> None:
    v, cols, _ = real_like(100, 0)
    syn = (v[:, ::-1][:, :3], cols[::-1][:3])  # reversed, partial
    rep = compare_features(syn, (v, cols))
    assert rep.columns == tuple(c for c in cols if c in syn[1])
    assert all(f.ks_statistic == 0 for f in rep.features)


@pytest.mark.parametrize(
    ("syn", "real", "match"),
    [
        ((np.zeros((5, 2)), ["a", "b"]), (np.zeros((5, 2)), ["c", "d"]), "share no feature"),
        ((np.zeros((5, 2)), ["a"]), (np.zeros((5, 2)), ["a", "b"]), "1 column names"),
        ((np.zeros((5, 2)), ["a", "a"]), (np.zeros((5, 2)), ["a", "b"]), "duplicate"),
        ((np.zeros(5), ["a"]), (np.zeros((5, 1)), ["a"]), "2-D"),
        (
            (np.array([[1.0, np.inf], [2.0, 3.0]]), ["a", "b"]),
            (np.ones((2, 2)), ["a", "b"]),
            r"synthetic columns \['b'\]",
        ),
        ((np.zeros((1, 1)), ["a"]), (np.zeros((5, 1)), ["a"]), ">= 2 rows"),
        ("not a table", (np.zeros((5, 1)), ["a"]), "must be"),
    ],
)
def test_bad_tables_raise_data_error(syn, real, match) -> None:
    with pytest.raises(DataError, match=match):
        compare_features(syn, real)


def test_bad_groups_and_prm_raise_data_error() -> None:
    v, cols, g = real_like(50, 0)
    with pytest.raises(DataError, match="3 group labels for 50 rows"):
        compare_features((v, cols), (v, cols), synthetic_groups=["a"] * 3, real_groups=g)
    with pytest.raises(DataError, match="delta_auc"):
        compare_features(
            (v, cols), (v, cols), synthetic_prm=[{"group": "Wfunc", "noise_level": 0.1,
                                                  "delta_ppl": 1.0}], real_prm=prm_rows(0),
        )  # fmt: skip
    with pytest.raises(DataError, match="units_matched"):
        compare_features(
            (v, cols), (v[:10], cols), synthetic_groups=g, real_groups=g[:10], units_matched=True
        )


def test_thresholds_validate() -> None:
    assert FidelityThresholds.from_dict({"ks_pvalue_min": 0.05}).ks_pvalue_min == 0.05
    with pytest.raises(SpecError, match="fidelity.ks_pvalue_min"):
        FidelityThresholds(ks_pvalue_min=2.0)
    with pytest.raises(SpecError, match="fidelity.bogus"):
        FidelityThresholds.from_dict({"bogus": 1})
    with pytest.raises(SpecError, match="ks_adjust"):
        FidelityThresholds(ks_adjust="holm")
    with pytest.raises(SpecError, match="wasserstein_max"):
        FidelityThresholds(wasserstein_max=-1)
    with pytest.raises(SpecError, match="n_permutations"):
        v, cols, _ = real_like(20, 0)
        compare_features((v, cols), (v, cols), n_permutations=0)


def test_report_is_deterministic_and_json_ready() -> None:
    syn, real = halves(300, 9)
    a = compare_features(syn, real, seed=5).as_dict()
    b = compare_features(syn, real, seed=5).as_dict()
    assert a == b
    assert a["data"] == {"synthetic": "synthetic", "real": "real"}
    assert a["verdict"] in ("pass", "fail")
    json.dumps(a, allow_nan=False)


# ---------------------------------------------------------------- distance properties

# rounded: values 1e-16 apart would merge under the real-side standardisation's round-off
coords = st.floats(-100, 100, allow_nan=False).map(lambda v: round(v, 3))
samples = st.integers(2, 12).flatmap(
    lambda n: st.integers(1, 3).flatmap(
        lambda d: st.tuples(
            arrays(np.float64, (n, d), elements=coords),
            arrays(np.float64, (n + 1, d), elements=coords),
        )
    )
)


@given(samples, st.integers(0, 2**16))
def test_energy_distance_properties(xy, seed) -> None:
    x, y = xy
    assert energy_distance_nd(x, x) == pytest.approx(0.0, abs=1e-6)
    d = energy_distance_nd(x, y)
    assert d >= 0
    assert energy_distance_nd(y, x) == pytest.approx(d, rel=1e-9, abs=1e-9)
    rng = np.random.default_rng(seed)
    assert energy_distance_nd(x[rng.permutation(len(x))], y[rng.permutation(len(y))]) == (
        pytest.approx(d, rel=1e-9, abs=1e-9)
    )
    assert energy_distance_nd(x[:, 0], y[:, 0]) == pytest.approx(
        stats.energy_distance(x[:, 0], y[:, 0]), rel=1e-6, abs=1e-6
    )


@given(samples, st.integers(0, 2**16))
def test_permutation_test_properties(xy, seed) -> None:
    x, y = xy
    stat, p = energy_permutation_test(x, x, n_permutations=20, seed=seed)
    assert stat == pytest.approx(0.0, abs=1e-6) and p == 1.0
    stat, p = energy_permutation_test(x, y, n_permutations=20, seed=seed)
    assert 1 / 21 <= p <= 1.0
    assert stat == pytest.approx(energy_distance_nd(x, y), rel=1e-6, abs=1e-6)


@given(samples, st.integers(0, 2**16))
def test_correlation_and_per_feature_properties(xy, seed) -> None:
    x, y = xy
    rng = np.random.default_rng(seed)
    cx, cy = correlation_matrix(x), correlation_matrix(y)
    assert correlation_distance(cx, cx) == (0.0, 0.0)
    assert correlation_distance(cx, cy) == pytest.approx(correlation_distance(cy, cx))
    np.testing.assert_allclose(correlation_matrix(x[rng.permutation(len(x))]), cx, atol=1e-9)
    cols = [f"c{j}" for j in range(x.shape[1])]
    same = compare_features((x, cols), (x, cols), n_permutations=10, seed=seed)
    assert all(f.ks_statistic == 0 and f.wasserstein == pytest.approx(0, abs=1e-9)
               for f in same.features)  # fmt: skip
    ab = compare_features((x, cols), (y, cols), n_permutations=10)
    ba = compare_features((y[rng.permutation(len(y))], cols), (x, cols), n_permutations=10)
    # KS is symmetric; Wasserstein is too, but each side is scaled by the *real* SD
    for f, g in zip(ab.features, ba.features, strict=True):
        assert f.ks_statistic == pytest.approx(g.ks_statistic)


@given(st.lists(st.sampled_from(GROUPS), min_size=1), st.lists(st.sampled_from(GROUPS), min_size=1))
def test_group_tv_properties(a, b) -> None:
    assert group_tv_distance(a, a)[0] == 0
    assert group_tv_distance(a, b)[0] == pytest.approx(group_tv_distance(b, a)[0])
    assert group_tv_distance(a[::-1], b)[0] == pytest.approx(group_tv_distance(a, b)[0])
    assert 0 <= group_tv_distance(a, b)[0] <= 1


# ---------------------------------------------------------------- figure and table


@pytest.fixture(scope="module")
def shifted_report():
    syn, real = halves(400, 11)
    v = syn[0].copy()
    v[:, 1] += real[0][:, 1].std(ddof=1)
    return compare_features((v, syn[1], syn[2]), real, synthetic_name="shifted")


def test_plot_written_atomically_at_150_dpi(tmp_path, shifted_report) -> None:
    from PIL import Image

    out = plot_synthetic_vs_real(shifted_report, tmp_path)
    assert out == tmp_path / "synthetic_vs_real.png"
    assert os.listdir(tmp_path) == ["synthetic_vs_real.png"]  # no temp file left behind
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert round(im.info["dpi"][0]) == 150


def test_plot_accepts_inputs_and_rejects_missing_dir(tmp_path) -> None:
    syn, real = halves(100, 12)
    out = plot_synthetic_vs_real({"synthetic": syn, "real": real, "seed": 1}, tmp_path / "f.png")
    assert out.stat().st_size > 0
    with pytest.raises(DataError, match="does not exist"):
        plot_synthetic_vs_real((syn, real), tmp_path / "nope" / "f.png")
    with pytest.raises(DataError, match="FidelityReport"):
        plot_synthetic_vs_real(42, tmp_path)


def test_format_table_lists_every_measure(shifted_report) -> None:
    text = format_fidelity_table(shifted_report)
    assert text.splitlines()[0].endswith("FAIL")
    assert "data=synthetic" in text and "data=real" in text
    for m in shifted_report.measures:
        assert m.name in text
    assert "wasserstein:func_obd" in text and "FAIL" in text


def test_format_table_from_results_json_dict(shifted_report) -> None:
    d = json.loads(json.dumps(shifted_report.as_dict()))
    assert format_fidelity_table(d) == format_fidelity_table(shifted_report)
    with pytest.raises(DataError, match="not a fidelity report"):
        format_fidelity_table({"measures": []})


# ---------------------------------------------------------------- the single call


def _top_q_rule(values: np.ndarray, columns: list[str]) -> list[str]:
    f = values[:, columns.index("func_hdiag_sum")]
    s = -values[:, columns.index("sens_obd")]
    hf, hs = f > np.quantile(f, 0.7), s > np.quantile(s, 0.7)
    names = {(True, False): "Wfunc", (False, True): "Wsens", (True, True): "Wboth"}
    return [names.get((bool(a), bool(b)), "Wnone") for a, b in zip(hf, hs, strict=True)]


def test_baseline_fidelity_single_call(tmp_path) -> None:
    v, cols, _ = real_like(500, 21)
    se = np.abs(v[:, :1]) * 0.05
    real = (np.column_stack([v, se]), [*cols, "func_hdiag_sum_se"])
    groups = _top_q_rule(v, cols)
    res = baseline_fidelity(
        real,
        real_groups=groups,
        real_prm=prm_rows(4),
        partition_rule=_top_q_rule,
        out_dir=tmp_path,
    )
    assert res.legacy.synthetic_name == "legacy" and res.legacy.n_synthetic == 20
    assert res.legacy_column_map["sparsity"] == "func_act_sparsity"
    assert "func_hdiag_sum_se" not in res.legacy_column_map.values()
    assert res.legacy.prm is not None and res.legacy.partition["mode"] == "proportions"
    assert res.calibrated.partition["mode"] == "proportions"
    assert sorted(os.listdir(tmp_path)) == [
        "synthetic_vs_real.png",
        "synthetic_vs_real_calibrated.png",
    ]
    d = json.loads(json.dumps(res.as_dict(), allow_nan=False))
    assert d["data"] == {"synthetic": "synthetic", "real": "real"}
    assert set(d["verdict"]) == {"legacy", "calibrated"}
    assert d["legacy"]["synthetic"]["data"] == "synthetic"


def test_baseline_fidelity_without_groups_or_rule() -> None:
    v, cols, _ = real_like(200, 22)
    res = baseline_fidelity((v, cols))
    assert res.legacy.partition is None and res.calibrated.partition is None
    assert res.legacy.prm is None and res.figures == {}
    assert "no partition_rule" in res.calibrated_partition
    with pytest.raises(DataError, match="not in the real table"):
        baseline_fidelity((v, cols), legacy_columns=["nope"])
