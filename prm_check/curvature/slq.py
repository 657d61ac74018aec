"""Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019; Ubaru et al.).

For a unit-norm probe q, m Lanczos steps give a tridiagonal T whose eigenvalues θ_j and
squared first eigenvector components τ_j are an m-point Gauss quadrature of q's spectral
measure: ``Σ τ_j θ_j^p = qᵀ H^p q`` exactly for p ≤ 2m − 1, and averaged over Rademacher
probes that is ``tr(H^p) / n``.

Memory: with full re-orthogonalisation the m Lanczos vectors are kept (m×n); with
``reorthogonalize=False`` only three length-n vectors are (the quadrature's low moments stay
right; ghost copies of extreme eigenvalues may appear in the nodes).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from prm_check.curvature.operator import HessianOperator
from prm_check.curvature.probes import rademacher
from prm_check.curvature.results import SpectralDensity
from prm_check.errors import CurvatureError


def lanczos_tridiagonal(
    op: HessianOperator, q: torch.Tensor, steps: int, reorthogonalize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Run up to ``steps`` Lanczos steps from ``q``; return (alpha, beta) of T.

    Stops early on an invariant subspace (β ≈ 0), returning fewer steps.
    """
    q = q / q.norm()
    basis = [q] if reorthogonalize else None
    alphas: list[float] = []
    betas: list[float] = []
    prev = torch.zeros_like(q)
    beta = 0.0
    scale = None
    for j in range(steps):
        w = op.matvec(q)
        alpha = float(w @ q)
        w = w - alpha * q - beta * prev
        if basis is not None:
            for _ in range(2):  # twice is enough (Kahan–Parlett)
                for b in basis:
                    w -= (w @ b) * b
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
) -> SpectralDensity:
    """Gauss quadrature nodes and weights per Rademacher probe (padded with zero weights
    where Lanczos stopped early), as a :class:`SpectralDensity`."""
    if num_probes < 1:
        raise CurvatureError(f"num_probes must be >= 1, got {num_probes}")
    if not 1 <= lanczos_steps <= op.n:
        raise CurvatureError(f"lanczos_steps must be in [1, {op.n}], got {lanczos_steps}")
    nodes = np.zeros((num_probes, lanczos_steps))
    weights = np.zeros((num_probes, lanczos_steps))
    start = op.num_matvecs
    for p in range(num_probes):
        q = torch.cat([v.reshape(-1) for v in rademacher(op.shapes, op.dtype, seed, p)])
        alpha, beta = lanczos_tridiagonal(op, q, lanczos_steps, reorthogonalize)
        theta, vecs = eigh_tridiagonal(alpha, beta)
        nodes[p, : len(theta)] = theta
        weights[p, : len(theta)] = vecs[0, :] ** 2
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        num_matvecs=op.num_matvecs - start,
        seed=seed,
        lanczos_steps=lanczos_steps,
        reorthogonalize=reorthogonalize,
    )
