"""Attack metrics, canary exposure and the bag-of-words check, on fixed and random inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import beta, binomtest, skewnorm
from sklearn.metrics import roc_auc_score

from prm_check.errors import DataError
from prm_check.privacy import (
    auc_with_ci,
    bag_of_words_auc,
    clopper_pearson,
    exposure,
    exposures,
    roc_auc,
    summarise_exposures,
    tpr_at_fpr,
)
from prm_check.privacy.metrics import _bootstrap_aucs

scores = st.lists(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=40
)


# ---------------------------------------------------------------- AUC
def test_auc_hand_example():
    # pairs (m > n): 3 > 1, 3 > 2, 2 > 1, 2 == 2 (tie = 1/2) -> 3.5 of 4
    assert roc_auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(3.5 / 4)


def test_auc_matches_sklearn():
    rng = np.random.default_rng(3)
    m, n = rng.normal(0.5, 1, 37), rng.normal(0, 1, 53)
    expected = roc_auc_score(np.r_[np.ones(37), np.zeros(53)], np.r_[m, n])
    assert roc_auc(m, n) == pytest.approx(expected, abs=1e-12)


lattice = st.lists(st.integers(-1000, 1000), min_size=1, max_size=40)  # ties likely, floats exact


@given(lattice, lattice, st.sampled_from(["exp", "cube", "affine"]))
def test_auc_invariant_to_strictly_monotone_transform(m, n, kind):
    f = {
        "exp": lambda x: np.exp(np.asarray(x) / 100.0),
        "cube": lambda x: np.asarray(x) ** 3,
        "affine": lambda x: 2.5 * np.asarray(x) - 7,
    }[kind]
    assert roc_auc(f(m), f(n)) == pytest.approx(roc_auc(m, n), abs=1e-12)


@given(scores, scores)
def test_auc_swap_gives_one_minus(m, n):
    assert roc_auc(n, m) == pytest.approx(1 - roc_auc(m, n), abs=1e-12)


def test_bootstrap_replicates_match_naive_resampling():
    rng = np.random.default_rng(0)
    m, n = np.round(rng.normal(1, 1, 9), 1), np.round(rng.normal(0, 1, 7), 1)  # with ties
    fast = _bootstrap_aucs(m, n, 50, seed=11)
    draw = np.random.default_rng(11)
    im, i_n = draw.integers(0, m.size, (50, m.size)), draw.integers(0, n.size, (50, n.size))
    naive = [roc_auc(m[a], n[b]) for a, b in zip(im, i_n, strict=True)]
    np.testing.assert_allclose(fast, naive, atol=1e-12)


@given(
    st.lists(st.floats(-10, 10), min_size=5, max_size=30),
    st.lists(st.floats(-10, 10), min_size=5, max_size=30),
    st.integers(0, 2**16),
)
def test_bootstrap_ci_contains_estimate(m, n, seed):
    res = auc_with_ci(m, n, n_boot=300, seed=seed)
    assert res.ci_low - 1e-12 <= res.auc <= res.ci_high + 1e-12
    assert 0.0 <= res.ci_low <= res.ci_high <= 1.0


def test_bootstrap_ci_is_deterministic_and_sane():
    rng = np.random.default_rng(1)
    m, n = rng.normal(0.5, 1, 400), rng.normal(0, 1, 400)
    a, b = auc_with_ci(m, n, seed=5), auc_with_ci(m, n, seed=5)
    assert a == b and a.n_members == 400 and a.n_nonmembers == 400
    # the AUC's standard error at 400 vs 400 is ~0.02: a 95 % CI ~0.08 wide
    assert 0.04 < a.ci_high - a.ci_low < 0.12
    assert a.as_dict()["auc"] == a.auc


# ---------------------------------------------------------------- TPR at FPR
def test_tpr_at_fpr_hand_example():
    nonmember = np.arange(10, dtype=float)  # 0..9; at FPR 0.1 one false positive: t = 8
    member = np.array([8.0, 8.5, 9.5, 10.0, 3.0])
    res = tpr_at_fpr(member, nonmember, 0.1)
    assert res.defined and res.tpr == pytest.approx(3 / 5)  # 8.5, 9.5, 10 > 8
    assert res.achieved_fpr == pytest.approx(0.1)
    assert (res.ci_low, res.ci_high) == pytest.approx(clopper_pearson(3, 5))
    res2 = tpr_at_fpr(member, nonmember, 0.2)  # two false positives allowed: t = 7
    assert res2.tpr == pytest.approx(4 / 5)


def test_tpr_ties_never_exceed_target_fpr():
    nonmember = np.array([0.0] * 8 + [5.0, 5.0])  # top two tie
    res = tpr_at_fpr([5.0, 6.0], nonmember, 0.1)  # one FP allowed but the top two tie
    assert res.achieved_fpr == 0.0 and res.tpr == pytest.approx(0.5)


def test_tpr_undefined_with_too_few_nonmembers():
    res = tpr_at_fpr(np.ones(500), np.zeros(500), 0.001)
    assert not res.defined and res.tpr is None and res.ci_low is None
    assert "1000 non-members" in res.reason
    assert tpr_at_fpr(np.ones(5), np.zeros(1000), 0.001).defined
    assert tpr_at_fpr(np.ones(5), np.zeros(100), 0.29).defined  # floor(0.29 * 100) = 29


@given(scores, st.lists(st.floats(-1e3, 1e3), min_size=20, max_size=80))
def test_tpr_monotone_in_fpr(m, n):
    tprs = [tpr_at_fpr(m, n, f).tpr for f in (0.05, 0.1, 0.2, 0.5, 0.9)]
    assert all(t is not None for t in tprs)
    assert all(a <= b for a, b in itertools.pairwise(tprs))


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (7, 250)])
def test_clopper_pearson_against_scipy_and_beta(k, n):
    lo, hi = clopper_pearson(k, n)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    exp_lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    exp_hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    assert (lo, hi) == pytest.approx((exp_lo, exp_hi), abs=1e-9)


@pytest.mark.parametrize(
    "call",
    [
        lambda: roc_auc([], [1.0]),
        lambda: roc_auc([1.0], []),
        lambda: roc_auc([1.0, float("nan")], [0.0]),
        lambda: auc_with_ci([1.0], [float("inf")]),
        lambda: auc_with_ci([1.0], [0.0], level=1.5),
        lambda: auc_with_ci([1.0], [0.0], n_boot=0),
        lambda: tpr_at_fpr([1.0], [0.0], 0.0),
        lambda: tpr_at_fpr([1.0], [0.0], 1.0),
        lambda: tpr_at_fpr([1.0], [0.0], -0.1),
    ],
)
def test_metric_errors_are_typed(call):
    with pytest.raises(DataError):
        call()


# ---------------------------------------------------------------- exposure
def test_rank_exposure_hand_example():
    refs = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])  # |R| = 7, log2(8) = 3
    assert exposure(0.5, refs).rank == 1
    assert exposure(0.5, refs).rank_exposure == pytest.approx(3.0)
    assert exposure(3.5, refs).rank == 4  # three references below
    assert exposure(3.5, refs).rank_exposure == pytest.approx(3 - 2)
    assert exposure(3.0, refs).rank == 4  # a tie counts against the canary
    assert exposure(9.0, refs).rank_exposure == pytest.approx(0.0)


def test_skewnorm_exposure_is_minus_log2_fitted_cdf():
    refs = skewnorm.rvs(4.0, loc=10, scale=2, size=400, random_state=0)
    a, loc, scale = skewnorm.fit(refs)
    for loss in (8.0, 10.5, 14.0):
        want = -math.log2(skewnorm.cdf(loss, a, loc, scale))
        assert exposure(loss, refs).skewnorm_exposure == pytest.approx(want, rel=1e-3, abs=1e-6)
    # extrapolates beyond the rank cap of log2(401) ≈ 8.6
    assert exposure(5.0, refs).skewnorm_exposure > math.log2(401)


def test_exposure_summary_per_repetition():
    refs = np.linspace(10, 20, 15)  # |R| = 15: rank exposure = 4 − log2(rank)
    summ = summarise_exposures([5.0, 12.0, 9.0, 25.0], [16, 1, 16, 1], refs)
    assert sorted(summ) == [1, 16]
    assert summ[16].n_canaries == 2 and summ[16].mean_rank_exposure == pytest.approx(4.0)
    r1 = [e.rank_exposure for e in exposures([12.0, 25.0], refs)]
    assert summ[1].mean_rank_exposure == pytest.approx(np.mean(r1))
    assert summ[1].min_rank_exposure == pytest.approx(0.0)
    assert summ[1].as_dict()["max_possible_rank_exposure"] == pytest.approx(4.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: exposure(1.0, [2.0]),
        lambda: exposure(1.0, [2.0, 2.0, 2.0]),
        lambda: exposure(float("nan"), [1.0, 2.0]),
        lambda: exposures([], [1.0, 2.0]),
        lambda: summarise_exposures([1.0], [1, 4], [1.0, 2.0]),
    ],
)
def test_exposure_errors_are_typed(call):
    with pytest.raises(DataError):
        call()


# ---------------------------------------------------------------- bag of words
FIRST = ["Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
LAST = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "Clark", "Lewis"]
CITY = ["Leeds", "Paris", "Oslo", "Lima", "Cairo", "Quito", "Perth", "Dakar"]


def _records(rng, n, first=FIRST, last=LAST, city=CITY):
    return [
        f"Name: {rng.choice(first)} {rng.choice(last)}, born {rng.integers(1940, 2005)}-"
        f"{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}, lives in {rng.choice(city)}, "
        f"phone {rng.integers(100, 999)}-{rng.integers(1000, 9999)}."
        for _ in range(n)
    ]


def test_bag_of_words_near_half_on_one_distribution():
    recs = _records(np.random.default_rng(0), 400)
    res = bag_of_words_auc(recs[:200], recs[200:], seed=0, n_boot=300)
    assert 0.4 < res.auc < 0.6
    assert res.ci_low < 0.5 < res.ci_high


def test_bag_of_words_near_one_on_shifted_vocabulary():
    rng = np.random.default_rng(1)
    a = _records(rng, 100)
    b = _records(rng, 100, first=["Zed", "Yan", "Xia"], last=["Quill"], city=["Vaduz", "Nuuk"])
    res = bag_of_words_auc(a, b, seed=0, n_boot=200)
    assert res.auc > 0.95 and res.ci_low > 0.9


def test_bag_of_words_errors():
    with pytest.raises(DataError):
        bag_of_words_auc(["a b", "c d"], [], folds=2)
    with pytest.raises(DataError):
        bag_of_words_auc(["a b"] * 3, ["c d"] * 3, folds=5)
    with pytest.raises(DataError):
        bag_of_words_auc(["a b"] * 3, ["c d"] * 3, folds=1)
