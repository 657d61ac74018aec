"""The curvature estimators in one namespace; each lives in a module named after its method."""

from prm_check.curvature.eigen import top_eigenpairs
from prm_check.curvature.fisher import fisher_diagonal
from prm_check.curvature.hutchinson import hutchinson_diagonal, hutchinson_trace
from prm_check.curvature.results import (
    DiagonalEstimate,
    EigenResult,
    SpectralDensity,
    TraceEstimate,
)
from prm_check.curvature.slq import slq_density

__all__ = [
    "DiagonalEstimate",
    "EigenResult",
    "SpectralDensity",
    "TraceEstimate",
    "fisher_diagonal",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "slq_density",
    "top_eigenpairs",
]
