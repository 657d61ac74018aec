"""Top eigenpairs of the Hessian by implicitly restarted Lanczos (scipy ``eigsh``).

Memory: ARPACK keeps ``ncv`` Lanczos vectors of length n (``ncv`` defaults to
``max(2k + 1, 20)``), in the operator's dtype.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import eigsh

from prm_check.curvature.operator import HessianOperator
from prm_check.curvature.results import EigenResult
from prm_check.errors import CurvatureError


def top_eigenpairs(
    op: HessianOperator,
    k: int = 3,
    *,
    which: str = "LA",
    seed: int = 0,
    tol: float = 0.0,
    maxiter: int | None = None,
    ncv: int | None = None,
) -> EigenResult:
    """The ``k`` largest (``"LA"``, algebraic) or largest-magnitude (``"LM"``) eigenpairs.

    The start vector is drawn from ``seed`` so the result is reproducible; ``tol=0`` asks
    ARPACK for machine precision.
    """
    if not 1 <= k < op.n:
        raise CurvatureError(f"k must be in [1, n-1] = [1, {op.n - 1}], got {k}")
    if which not in ("LA", "LM", "SA"):
        raise CurvatureError(f"which must be 'LA', 'LM' or 'SA', got {which!r}")
    lin = op.to_scipy()
    count = [0]

    def mv(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        return lin.matvec(x)

    from scipy.sparse.linalg import LinearOperator

    counted = LinearOperator(lin.shape, matvec=mv, rmatvec=mv, dtype=lin.dtype)
    v0 = np.random.default_rng(seed).standard_normal(op.n).astype(lin.dtype)
    ncv = ncv if ncv is not None else min(op.n, max(2 * k + 1, 20))
    vals, vecs = eigsh(counted, k=k, which=which, v0=v0, tol=tol, maxiter=maxiter, ncv=ncv)
    order = np.argsort(vals)[::-1] if which != "SA" else np.argsort(vals)
    vals, vecs = vals[order], vecs[:, order]
    hx = lin.matmat(vecs)
    count[0] += k
    denom = np.maximum(np.abs(vals) * np.linalg.norm(vecs, axis=0), np.finfo(float).tiny)
    res = np.linalg.norm(hx - vecs * vals, axis=0) / denom
    return EigenResult(vals, vecs, res, count[0], seed)
