"""Frozen results of the curvature estimators: estimate, uncertainty, cost and seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class DiagonalEstimate:
    """Estimated Hessian (or Fisher) diagonal, flat ``[n]`` in the operator's parameter order.

    ``stderr`` is the standard error of each entry (NaN when fewer than two independent
    groups were drawn); ``num_matvecs`` counts Hessian-vector products (gradients for the
    Fisher); ``num_groups`` is the degrees of freedom + 1 behind ``stderr``.
    """

    estimate: torch.Tensor
    stderr: torch.Tensor
    num_matvecs: int
    seed: int | None
    num_probes: int
    num_groups: int
    param_names: tuple[str, ...] = ()
    kind: str = "hutchinson"


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson trace with its standard error over probes and the per-probe samples."""

    estimate: float
    stderr: float
    num_matvecs: int
    seed: int
    samples: np.ndarray


@dataclass(frozen=True)
class EigenResult:
    """Top eigenpairs, eigenvalues in descending order, eigenvectors as columns ``[n, k]``.

    ``residuals`` are ``‖H x − λ x‖ / ‖λ x‖``: the a-posteriori accuracy of each pair.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residuals: np.ndarray
    num_matvecs: int
    seed: int


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature: per probe, Gauss nodes and weights ``[probes, m]``.

    The density is of the *normalised* spectrum (total mass 1, the eigenvalue histogram
    divided by n), so ``moment(p) ≈ tr(H^p) / n``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    num_matvecs: int
    seed: int
    lanczos_steps: int
    reorthogonalize: bool = True
    extra: dict = field(default_factory=dict)

    def moment(self, p: int) -> float:
        """``E[λ^p]`` under the estimated density (average of the probes' quadratures)."""
        return float(np.mean(np.sum(self.weights * self.nodes**p, axis=1)))

    def moment_stderr(self, p: int) -> float:
        """Standard error of :meth:`moment` over probes (NaN with one probe)."""
        per = np.sum(self.weights * self.nodes**p, axis=1)
        return float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else float("nan")

    @property
    def moments(self) -> tuple[float, float]:
        """First two moments ``(E[λ], E[λ²])``."""
        return self.moment(1), self.moment(2)

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian-smoothed density on ``grid`` (integrates to ~1 when the grid covers it)."""
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        grid = np.asarray(grid, dtype=float)
        diff = grid[:, None] - self.nodes.reshape(-1)[None, :]
        kern = np.exp(-0.5 * (diff / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        return kern @ self.weights.reshape(-1) / self.nodes.shape[0]
