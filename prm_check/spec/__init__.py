"""Experiment spec: frozen, self-validating dataclasses loaded from ``*.prm.toml`` or built in
Python; every bad field raises :class:`~prm_check.errors.SpecError` naming its dotted path.

Stdlib only (no torch / numpy): the pytest plugin imports this at collection time.

Layout: ``_fields`` (validators), ``checks`` (hypotheses as thresholds), ``schema`` (the
sections), ``profiles`` (quick / full), ``io`` (dict / TOML / files / hashing).
"""

from prm_check.spec.checks import (
    ALL_ATTACKS,
    METRICS,
    OPS,
    PARTITION_METRICS,
    PLANTED,
    SWEEP_GROUPS,
    SWEEP_METRICS,
    CheckSpec,
)
from prm_check.spec.io import (
    DEFAULT_CHECKS,
    SPEC_SCHEMA_VERSION,
    SPEC_SUFFIX,
    SpecFileError,
    default_spec,
    find_spec_files,
    load_spec,
    spec_from_dict,
    spec_hash,
    spec_to_dict,
    spec_to_toml,
)
from prm_check.spec.profiles import PROFILE_OVERRIDES, apply_profile, default_profile
from prm_check.spec.schema import (
    BASELINES,
    PROFILES,
    RULES,
    SECTIONS,
    STAGES,
    BudgetSpec,
    CurvatureSpec,
    DataSpec,
    ExperimentSpec,
    FidelitySpec,
    ModelSpec,
    PartitionSpec,
    StageBudget,
    SweepSpec,
)

__all__ = [
    "ALL_ATTACKS",
    "BASELINES",
    "DEFAULT_CHECKS",
    "METRICS",
    "OPS",
    "PARTITION_METRICS",
    "PLANTED",
    "PROFILES",
    "PROFILE_OVERRIDES",
    "RULES",
    "SECTIONS",
    "SPEC_SCHEMA_VERSION",
    "SPEC_SUFFIX",
    "STAGES",
    "SWEEP_GROUPS",
    "SWEEP_METRICS",
    "BudgetSpec",
    "CheckSpec",
    "CurvatureSpec",
    "DataSpec",
    "ExperimentSpec",
    "FidelitySpec",
    "ModelSpec",
    "PartitionSpec",
    "SpecFileError",
    "StageBudget",
    "SweepSpec",
    "apply_profile",
    "default_profile",
    "default_spec",
    "find_spec_files",
    "load_spec",
    "spec_from_dict",
    "spec_hash",
    "spec_to_dict",
    "spec_to_toml",
]
