"""Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019; Ubaru et al.).

For a unit-norm probe q, m Lanczos steps give a tridiagonal T whose eigenvalues θ_j and
squared first eigenvector components τ_j are an m-point Gauss quadrature of q's spectral
measure: ``Σ τ_j θ_j^p = qᵀ H^p q`` exactly for p ≤ 2m − 1, and averaged over Rademacher
probes that is ``tr(H^p) / n``.

Memory: with full re-orthogonalisation the m Lanczos vectors are kept (m×n); with
``reorthogonalize=False`` only three length-n vectors are (the quadrature's low moments stay
right; ghost copies of extreme eigenvalues may appear in the nodes).

Deflation (``deflate=k``). Curvature spectra of language models are dominated by a few
outliers, and plain SLQ's moment estimates inherit the variance of Hutchinson on ``H^p``:
on a 172-parameter test block whose three largest |λ| carry 98 % of ``tr(H²)``, 48 probes
leave a 10 % standard error on ``E[λ²]``. With deflation the top-k eigenpairs by magnitude
are computed exactly (``eigsh``, k more length-n vectors of memory), each contributes a node
of weight 1/n, and the probes run Lanczos on the complement only (``(I − VVᵀ) H (I − VVᵀ)``),
weighted (n − k)/n. The estimate stays consistent; its variance is that of the remainder.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from prm_check.curvature.eigen import top_eigenpairs
from prm_check.curvature.operator import HessianOperator
from prm_check.curvature.probes import rademacher
from prm_check.curvature.results import SpectralDensity
from prm_check.errors import CurvatureError


def lanczos_tridiagonal(
    op: HessianOperator,
    q: torch.Tensor,
    steps: int,
    reorthogonalize: bool = True,
    deflated: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run up to ``steps`` Lanczos steps from ``q``; return (alpha, beta) of T.

    ``deflated`` (n×k, orthonormal columns): run on the complement of their span. Stops
    early on an invariant subspace (β ≈ 0), returning fewer steps.
    """

    def project(x: torch.Tensor) -> torch.Tensor:
        return x if deflated is None else x - deflated @ (deflated.T @ x)

    q = project(q)
    q = q / q.norm()
    basis = [q] if reorthogonalize else None
    alphas: list[float] = []
    betas: list[float] = []
    prev = torch.zeros_like(q)
    beta = 0.0
    scale = None
    for j in range(steps):
        w = project(op.matvec(q))
        alpha = float(w @ q)
        w = w - alpha * q - beta * prev
        if basis is not None:
            for _ in range(2):  # twice is enough (Kahan–Parlett)
                for b in basis:
                    w -= (w @ b) * b
                w = project(w)
        alphas.append(alpha)
        beta = float(w.norm())
        scale = max(scale or 0.0, abs(alpha), beta)
        if j == steps - 1 or beta <= 1e-12 * max(scale, 1e-300):
            break
        betas.append(beta)
        prev, q = q, w / beta
        if basis is not None:
            basis.append(q)
    return np.asarray(alphas), np.asarray(betas)


def slq_density(
    op: HessianOperator,
    num_probes: int,
    lanczos_steps: int,
    seed: int,
    *,
    reorthogonalize: bool = True,
    deflate: int = 0,
) -> SpectralDensity:
    """Gauss quadrature nodes and weights per Rademacher probe (padded with zero weights
    where Lanczos stopped early), as a :class:`SpectralDensity`; with ``deflate=k`` each
    probe's row also holds the k exact outlier eigenvalues (see the module docstring)."""
    if num_probes < 1:
        raise CurvatureError(f"num_probes must be >= 1, got {num_probes}")
    if not 0 <= deflate < op.n - 1:
        raise CurvatureError(f"deflate must be in [0, n-2] = [0, {op.n - 2}], got {deflate}")
    if not 1 <= lanczos_steps <= op.n - deflate:
        raise CurvatureError(f"lanczos_steps must be in [1, {op.n - deflate}], got {lanczos_steps}")
    start = op.num_matvecs
    width = deflate + lanczos_steps
    nodes = np.zeros((num_probes, width))
    weights = np.zeros((num_probes, width))
    basis = None
    if deflate:
        top = top_eigenpairs(op, k=deflate, which="LM", seed=seed)
        basis = torch.linalg.qr(torch.from_numpy(top.eigenvectors).to(op.dtype))[0]
        nodes[:, :deflate] = top.eigenvalues
        weights[:, :deflate] = 1.0 / op.n
    rest = (op.n - deflate) / op.n
    for p in range(num_probes):
        q = torch.cat([v.reshape(-1) for v in rademacher(op.shapes, op.dtype, seed, p)])
        alpha, beta = lanczos_tridiagonal(op, q, lanczos_steps, reorthogonalize, basis)
        theta, vecs = eigh_tridiagonal(alpha, beta)
        nodes[p, deflate : deflate + len(theta)] = theta
        weights[p, deflate : deflate + len(theta)] = rest * vecs[0, :] ** 2
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        num_matvecs=op.num_matvecs - start,
        seed=seed,
        lanczos_steps=lanczos_steps,
        reorthogonalize=reorthogonalize,
        extra={"deflate": deflate} if deflate else {},
    )
