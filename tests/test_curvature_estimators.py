"""Estimators against exact answers from the operator's dense matrix on tiny float64 models.

The dense matrix here is ``op.matmat(I)``, which test_curvature_operator validates against
an independent dense Hessian; these tests check the estimators' statistics.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prm_check.curvature import (
    HessianOperator,
    fisher_diagonal,
    hutchinson_diagonal,
    hutchinson_trace,
    slq_density,
    top_eigenpairs,
)
from prm_check.errors import CurvatureError
from prm_check.lm import batch_loss_sum
from tests.test_curvature_operator import F64, ragged, tiny

SUBSET = ["*layers.0.*"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models: thread fan-out only adds contention (35x slower on a busy 2-core box)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=4)
def setup(kind: str = "opt", seed: int = 0, max_tokens: int | None = None):
    model = tiny(kind, seed)
    batches = ragged(seed, (6, 4, 8, 5))
    op = HessianOperator(model, batches, SUBSET, max_tokens=max_tokens, probes_per_graph=4)
    H = op.matmat(torch.eye(op.n, dtype=F64))
    return model, batches, op, (H + H.T) / 2


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), micro=st.sampled_from([None, 12]))
def test_hutchinson_within_4_standard_errors(seed, micro):
    _, _, op, H = setup(max_tokens=micro)
    d = hutchinson_diagonal(op, 64, seed)
    z = (d.estimate - torch.diagonal(H)).abs() / d.stderr
    assert torch.isfinite(d.stderr).all()
    # per-entry z-scores (t with 15 or 63 dof): allow the rare 4-sigma excursions of n entries
    assert float((z > 4).double().mean()) < 0.02
    t = hutchinson_trace(op, 128, seed)  # heavy-tailed samples: enough probes for a fair SE
    assert abs(t.estimate - float(torch.trace(H))) <= 4 * t.stderr
    assert d.num_matvecs == 64 and t.num_matvecs == 128


def test_hutchinson_error_shrinks_like_inverse_sqrt_k():
    _, _, op, H = setup()
    # Rademacher: Var(v_i (Hv)_i) = Σ_{j≠i} H_ij², so K·err_i²/var_i has mean 1 for every K
    # exactly when the error shrinks like 1/√K
    exact = torch.diagonal(H)
    var = (H**2).sum(dim=1) - exact**2
    keep = var > 1e-12 * var.max()
    for k in (4, 64):
        runs = [hutchinson_diagonal(op, k, s).estimate - exact for s in range(4)]
        scaled = float((torch.stack(runs)[:, keep] ** 2 * k / var[keep]).mean())
        assert 0.6 < scaled < 1.6, (k, scaled)


def test_group_standard_error_matches_per_probe_spread():
    # with several micro-batches the SE comes from probe groups; it must estimate the same
    # quantity as the per-probe SE of a single batch (same probes, same diagonal)
    _, _, single, _ = setup()
    _, _, micro, _ = setup(max_tokens=12)
    assert len(micro.batches) > 1 and len(single.batches) == 1
    a = hutchinson_diagonal(single, 64, 3)
    b = hutchinson_diagonal(micro, 64, 3)
    assert torch.allclose(a.estimate, b.estimate, rtol=1e-9, atol=1e-12)
    assert a.num_groups == 64 and b.num_groups == 16
    ratio = float(b.stderr.mean() / a.stderr.mean())
    assert 0.8 < ratio < 1.25, ratio


def test_same_seed_bit_identical_different_seed_differs():
    _, _, op, _ = setup()
    a, b, c = (hutchinson_diagonal(op, 4, s) for s in (7, 7, 8))
    assert torch.equal(a.estimate, b.estimate) and torch.equal(a.stderr, b.stderr)
    assert not torch.equal(a.estimate, c.estimate)
    assert np.array_equal(slq_density(op, 2, 5, 1).nodes, slq_density(op, 2, 5, 1).nodes)


def test_top3_eigenvalues_match_numpy_eigh():
    _, _, op, H = setup()
    exact = np.linalg.eigh(H.numpy())[0][::-1][:3]
    res = top_eigenpairs(op, k=3, seed=0)
    np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-6)
    assert (res.residuals < 1e-6).all() and res.eigenvectors.shape == (op.n, 3)
    assert res.num_matvecs > 3


def test_slq_moments_match_exact_spectrum():
    _, _, op, H = setup()
    lam = np.linalg.eigvalsh(H.numpy())
    m1, m2 = lam.mean(), (lam**2).mean()
    # plain SLQ: moments are Hutchinson estimates of tr(H^p)/n, right within their errors
    # (here three outliers carry 98 % of tr(H²), so 48 probes leave ~10 % error on E[λ²])
    for seed in range(3):
        plain = slq_density(op, num_probes=48, lanczos_steps=12, seed=seed)
        for p, exact in ((1, m1), (2, m2)):
            assert abs(plain.moment(p) - exact) <= 4 * plain.moment_stderr(p)
    # deflated SLQ: the outliers exact, probes on the rest -> both moments within 2 %
    dens = slq_density(op, num_probes=48, lanczos_steps=12, seed=0, deflate=3)
    assert abs(dens.moment(1) - m1) <= 0.02 * np.sqrt(m2)  # m1 itself can sit near 0
    assert abs(dens.moment(2) - m2) <= 0.02 * m2
    assert dens.moment_stderr(2) < 0.2 * plain.moment_stderr(2)
    np.testing.assert_allclose(np.sort(dens.nodes[0, :3]), np.sort(lam[[0, -2, -1]]), rtol=1e-8)
    # exactness of the quadrature for each probe: sum w θ^p = qᵀ H^p q / qᵀq, p <= 2m-1
    from prm_check.curvature.probes import rademacher

    q = torch.cat([v.reshape(-1) for v in rademacher(op.shapes, op.dtype, plain.seed, 0)])
    for p in (1, 2, 3):
        want = float(q @ torch.linalg.matrix_power(H, p) @ q / (q @ q))
        got = float(np.sum(plain.weights[0] * plain.nodes[0] ** p))
        assert got == pytest.approx(want, rel=1e-8)
    grid = np.linspace(lam.min() - 1, lam.max() + 1, 4001)
    for d in (plain, dens):
        mass = np.trapezoid(d.density(grid, sigma=0.05), grid)
        assert mass == pytest.approx(1.0, abs=1e-3)


def test_slq_without_reorthogonalisation_keeps_low_moments():
    _, _, op, _ = setup()
    a = slq_density(op, 3, 10, 5, reorthogonalize=True)
    b = slq_density(op, 3, 10, 5, reorthogonalize=False)
    for p in (1, 2):
        assert b.moment(p) == pytest.approx(a.moment(p), rel=1e-6)


def test_fisher_diagonal_equals_brute_force_per_sequence():
    model, batches, op, _ = setup()
    fd = fisher_diagonal(model, batches, SUBSET)
    total = torch.zeros(op.n, dtype=F64)
    count = 0
    for batch in batches:
        for r in range(batch.input_ids.shape[0]):
            length = int(batch.attention_mask[r].sum())
            from prm_check.data.batching import Batch

            one = Batch(
                batch.input_ids[r : r + 1, :length], batch.attention_mask[r : r + 1, :length]
            )
            loss, _ = batch_loss_sum(model, one)
            g = torch.autograd.grad(loss, op.params)
            total += torch.cat([x.reshape(-1) for x in g]) ** 2
            count += 1
    assert torch.allclose(fd.estimate, total / op.num_tokens, rtol=1e-10, atol=1e-14)
    assert fd.num_matvecs == count and torch.isfinite(fd.stderr).all()


def test_estimator_argument_errors():
    _, _, op, _ = setup()
    with pytest.raises(CurvatureError, match="num_probes"):
        hutchinson_diagonal(op, 0, 0)
    with pytest.raises(CurvatureError, match="k must be"):
        top_eigenpairs(op, k=op.n)
    with pytest.raises(CurvatureError, match="lanczos_steps"):
        slq_density(op, 1, 0, 0)
