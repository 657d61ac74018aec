import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from prm_check.errors import DataError, SpecError
from prm_check.partition import (
    GROUPS,
    PlantedScore,
    apply_sign,
    assign_groups,
    matched_control,
    planted_score,
    planted_verdict,
    rule_scores,
    top_fraction,
)


@given(
    st.integers(min_value=4, max_value=200),
    st.floats(min_value=0.01, max_value=0.99),
    st.integers(0, 10_000),
)
def test_groups_are_disjoint_and_cover_all_units(n, q, seed):
    rng = np.random.default_rng(seed)
    groups = assign_groups(rng.normal(size=n), rng.normal(size=n), q)
    counts = {g: int(np.sum(groups == g)) for g in GROUPS}
    assert sum(counts.values()) == n
    k = int(np.ceil(q * n))
    assert counts["Wfunc"] + counts["Wboth"] == k
    assert counts["Wsens"] + counts["Wboth"] == k


def test_top_fraction_picks_the_largest():
    score = np.array([0.1, 5.0, -3.0, 2.0, 4.0])
    assert top_fraction(score, 0.4).tolist() == [False, True, False, False, True]
    with pytest.raises(SpecError, match="partition.q"):
        top_fraction(score, 1.0)


def test_sign_rules():
    x = np.array([-2.0, 1.0])
    assert apply_sign(x, "abs").tolist() == [2.0, 1.0]
    assert apply_sign(x, "positive").tolist() == [0.0, 1.0]
    assert apply_sign(x, "signed").tolist() == [-2.0, 1.0]
    with pytest.raises(SpecError, match="partition.sign"):
        apply_sign(x, "square")


def test_contrast_rule_subtracts_nonmember_and_requires_it():
    func = {"obd": np.array([1.0, 2.0])}
    sens = {"obd": np.array([3.0, 1.0])}
    non = {"obd": np.array([2.5, 0.0])}
    _, s = rule_scores("contrast", "signed", func, sens, non)
    assert s.tolist() == [0.5, 1.0]
    with pytest.raises(DataError, match="non-member"):
        rule_scores("contrast", "abs", func, sens, None)
    with pytest.raises(DataError, match="hdiag_sum"):
        rule_scores("hdiag", "abs", func, sens)


def test_matched_control_matches_strata_counts_and_avoids_group():
    strata = np.array(["a"] * 10 + ["b"] * 10, dtype=object)
    sel = np.zeros(20, dtype=bool)
    sel[[0, 1, 12]] = True
    ctrl = matched_control(strata, sel, seed=3)
    assert ctrl[:10].sum() == 2 and ctrl[10:].sum() == 1
    assert not (ctrl & sel).any()
    assert (matched_control(strata, sel, seed=3) == ctrl).all()


def test_planted_score_against_sklearn_and_lift():
    rng = np.random.default_rng(0)
    planted = np.zeros(100, dtype=bool)
    planted[:10] = True
    score = rng.normal(size=100) + 3 * planted
    res = planted_score("x", "baseline", score, planted, [0.1])
    assert res.roc_auc == pytest.approx(roc_auc_score(planted, score))
    top = res.top_q[0]
    hits = int((top_fraction(score, 0.1) & planted).sum())
    assert top.precision == hits / 10
    assert top.lift == pytest.approx(top.precision / 0.1)
    assert top.recall == hits / 10
    assert res.ci_low <= res.roc_auc <= res.ci_high


def test_planted_score_ranks_nan_lowest_and_keeps_inf_order():
    planted = np.array([True, True, False, False, False])
    score = np.array([np.inf, 1.0, np.nan, -np.inf, 0.5])
    res = planted_score("x", "baseline", score, planted, [0.4], n_boot=50)
    # planted: +inf and 1.0; others: nan, -inf (both lowest) and 0.5 -> perfect separation
    assert res.roc_auc == 1.0
    assert res.top_q[0].precision == 1.0


def _score(name: str, kind: str, auc: float, lo: float, hi: float) -> PlantedScore:
    return PlantedScore(name=name, kind=kind, roc_auc=auc, ci_low=lo, ci_high=hi)


def test_planted_verdict_says_plainly_when_a_baseline_wins():
    evals = [
        _score("obd", "hessian_rule", 0.49, 0.46, 0.52),
        _score("fisher", "hessian_rule", 0.55, 0.52, 0.58),
        _score("radial_grad", "baseline", 0.70, 0.67, 0.73),
        _score("weight_delta", "oracle", 1.0, 1.0, 1.0),
    ]
    v = planted_verdict(evals)
    assert v["winner"] == "baseline" and v["ci_separated"] is True
    assert v["best_hessian_rule"]["name"] == "fisher"
    assert v["margin"] == pytest.approx(0.55 - 0.70)
    assert v["finding"].startswith("A trivial baseline (radial_grad")
    assert "oracle" in v["finding"] and "not resolved" not in v["finding"]


def test_planted_verdict_flags_overlapping_cis_and_handles_missing_kinds():
    evals = [
        _score("obd", "hessian_rule", 0.82, 0.78, 0.86),
        _score("grad_norm", "baseline", 0.80, 0.76, 0.84),
    ]
    v = planted_verdict(evals)
    assert v["winner"] == "hessian_rule" and v["ci_separated"] is False
    assert "not resolved" in v["finding"] and v["oracle"] is None
    assert planted_verdict(evals[:1])["winner"] is None
