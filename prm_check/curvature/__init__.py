"""Curvature engine: Hessian-vector products over a parameter subset, estimators built on
them (Hutchinson, Lanczos, SLQ, empirical Fisher), and per-unit feature tables."""

from prm_check.curvature.estimators import (
    DiagonalEstimate,
    EigenResult,
    SpectralDensity,
    TraceEstimate,
    fisher_diagonal,
    hutchinson_diagonal,
    hutchinson_trace,
    slq_density,
    top_eigenpairs,
)
from prm_check.curvature.operator import HessianOperator
from prm_check.curvature.params import select_parameters
from prm_check.curvature.units import Unit, UnitFeatures, compute_unit_features, enumerate_units

__all__ = [
    "DiagonalEstimate",
    "EigenResult",
    "HessianOperator",
    "SpectralDensity",
    "TraceEstimate",
    "Unit",
    "UnitFeatures",
    "compute_unit_features",
    "enumerate_units",
    "fisher_diagonal",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "select_parameters",
    "slq_density",
    "top_eigenpairs",
]
