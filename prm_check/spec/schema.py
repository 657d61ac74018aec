"""The experiment spec's frozen dataclasses; field defaults reproduce the built-in experiment.

Why frozen and self-validating: a spec is the cache key of every pipeline stage and is built
from untrusted TOML or by hand in Python; validating in ``__post_init__`` means no invalid
spec object can exist, however it was made (``dataclasses.replace`` included). Error paths
are relative to the dataclass; :func:`prm_check.spec._fields.build` prefixes the section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from prm_check.errors import SpecError
from prm_check.spec._fields import (
    Boolean,
    Budget,
    Choice,
    Integer,
    Items,
    Nested,
    NestedList,
    NestedMap,
    Real,
    Text,
    Validator,
    freeze,
    input_keys,
    join,
    spec_field,
    unknown,
    validate_fields,
)
from prm_check.spec.checks import (
    ALL_ATTACKS,
    DEFAULT_SWEEP_GROUPS,
    LEVELLESS_METRICS,
    PLANTED,
    SWEEP_GROUPS,
    CheckSpec,
    metric_attack,
)

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny-opt",)
VARIANTS = ("planted", "full")
DTYPES = ("float32", "float64")
GRANULARITIES = ("tensor", "neuron", "head")
RULES = ("obd", "hdiag", "fisher", "contrast")
SIGNS = ("abs", "positive", "signed")
BASELINES = ("weight_norm", "grad_norm", "radial_grad", "random", "weight_delta")
ORACLE_BASELINES = ("weight_delta",)  # |w - w_reference|: finds planted units by construction
NOISE_SCALES = ("tensor", "row")
FIDELITY_VARIANTS = ("legacy", "calibrated")
STAGES = (
    "assets",
    "baseline",
    "curvature",
    "partition",
    "sweep",
    "embedding",
    "fidelity",
    "report",
)
PROFILES = ("quick", "full")
SEED = Integer(0, 2**63 - 1)
_PATH = r"(?s)[^\s\x00](?:[^\x00]*[^\s\x00])?"  # no NUL, no surrounding whitespace
NAME = Text(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "a name of letters, digits, '_', '.', '-'")


@dataclass(frozen=True)
class ModelSpec:
    """Which model: the built-in one (``builtin:tiny-opt``) or a local HF folder.

    A folder path is checked to exist only at run time (a spec may be written before the
    model); a relative path is relative to the spec file. ``variant`` applies to the
    built-in model only: ``planted`` (true sensitive units known) or ``full``.
    """

    source: str = spec_field("builtin:tiny-opt", Text(_PATH, "'builtin:<name>' or a path"))
    variant: str = spec_field("planted", Choice(VARIANTS))
    seed: int = spec_field(0, SEED)
    dtype: str = spec_field("float32", Choice(DTYPES))

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.is_builtin and self.builtin_name not in BUILTIN_MODELS:
            names = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)
            raise SpecError("source", self.source, f"a built-in model ({names}) or a path")

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(BUILTIN_PREFIX)

    @property
    def builtin_name(self) -> str | None:
        return self.source.removeprefix(BUILTIN_PREFIX) if self.is_builtin else None

    @property
    def is_planted(self) -> bool:
        """Whether the true sensitive units are known (partition quality is measurable)."""
        return self.is_builtin and self.variant == "planted"

    def local_path(self, base: str | Path | None = None) -> Path | None:
        """The model folder (relative paths resolved against ``base``); None if built-in."""
        if self.is_builtin:
            return None
        path = Path(self.source).expanduser()
        return path if path.is_absolute() or base is None else Path(base) / path


@dataclass(frozen=True)
class DataSpec:
    """How much of each split is used; the splits themselves are fixed by the data module."""

    max_length: int = spec_field(128, Integer(8, 8192))
    func_score_texts: int = spec_field(64, Integer(1, 1_000_000))  # corpus chunks, L_func
    sens_score_records: int = spec_field(160, Integer(1, 1_000_000))  # member records, L_sens
    eval_records: int | None = spec_field(None, Integer(2, 1_000_000, optional=True))
    ppl_eval_texts: int | None = spec_field(64, Integer(1, 1_000_000, optional=True))

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class CurvatureSpec:
    """Per-unit curvature estimation: units, which tensors, probes and the memory knobs."""

    granularity: str = spec_field("neuron", Choice(GRANULARITIES))
    params: tuple[str, ...] = spec_field(
        ("model.decoder.layers.*",), Items(Text(r"\S+", "a parameter-name glob"))
    )
    probes: int = spec_field(8, Integer(1, 4096))  # Hutchinson probes per loss
    method: str = spec_field("rev", Choice(("rev", "fwd")))  # HVP: reverse-over-reverse or fwd
    dtype: str = spec_field("float32", Choice(DTYPES))
    micro_batch_tokens: int = spec_field(2048, Integer(2, 2**20))
    probes_per_graph: int = spec_field(8, Integer(1, 256))
    fisher: bool = spec_field(True, Boolean())
    top_k: int = spec_field(3, Integer(0, 50))  # Lanczos top eigenvalues; 0 = skip
    slq_probes: int = spec_field(2, Integer(0, 256))  # spectral density; 0 = skip
    slq_steps: int = spec_field(24, Integer(2, 1000))
    # Whole-subset spectrum (top-k, SLQ) on the first score texts up to this many tokens:
    # eigsh and Lanczos need tens of products each, and the spectrum's shape is what is
    # reported (each product rebuilds its graph, so tokens here cost ~3 gradients each).
    spectrum_tokens: int = spec_field(512, Integer(2, 2**24))

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class PartitionSpec:
    """The rule that splits units into Wfunc / Wsens / Wboth / Wnone, and its baselines."""

    rule: str = spec_field("obd", Choice(RULES))
    sign: str = spec_field("abs", Choice(SIGNS))  # how negative Hessian-diagonal terms count
    q: float = spec_field(0.05, Real(0.0, 1.0, lo_open=True, hi_open=True))
    q_grid: tuple[float, ...] = spec_field(
        (0.02, 0.05, 0.1, 0.2),
        Items(Real(0.0, 1.0, lo_open=True, hi_open=True), ascending=True),
    )
    baselines: tuple[str, ...] = spec_field(BASELINES, Items(Choice(BASELINES)))
    seed: int = spec_field(0, SEED)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class SweepSpec:
    """The noise sweep: groups x levels x draws, and the attacks measured in each cell."""

    # Wnone (every unit outside the other groups, ~88 % of the built-in model's) is opt-in:
    # noise on it is noise on nearly the whole model, and 12 more cells cost ~25 s.
    groups: tuple[str, ...] = spec_field(DEFAULT_SWEEP_GROUPS, Items(Choice(SWEEP_GROUPS)))
    levels: tuple[float, ...] = spec_field(
        (0.0, 0.01, 0.03, 0.1, 0.3), Items(Real(0.0, 100.0), ascending=True)
    )
    draws: int = spec_field(3, Integer(1, 1000))
    scale: str = spec_field("tensor", Choice(NOISE_SCALES))  # reference std per tensor or row
    attacks: tuple[str, ...] = spec_field(ALL_ATTACKS, Items(Choice(ALL_ATTACKS)))
    n_boot: int = spec_field(1000, Integer(10, 1_000_000))
    seed: int = spec_field(0, SEED)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class FidelitySpec:
    """Gates on how far synthetic per-unit statistics are from the real ones."""

    variants: tuple[str, ...] = spec_field(
        FIDELITY_VARIANTS, Items(Choice(FIDELITY_VARIANTS), min_len=0)
    )
    ks_pvalue_min: float = spec_field(0.01, Real(0.0, 1.0))
    wasserstein_max: float = spec_field(0.25, Real(0.0))
    energy_pvalue_min: float = spec_field(0.01, Real(0.0, 1.0))
    corr_distance_max: float = spec_field(0.5, Real(0.0))
    ari_min: float = spec_field(0.5, Real(-1.0, 1.0))
    prm_sign_agreement_min: float = spec_field(0.75, Real(0.0, 1.0))
    # The hypothesis each fidelity item tests: "differ" = the harness must tell this
    # synthetic table apart from the real one (the shortcut is detectably wrong); "match" =
    # it must pass every measure (synthetic could stand in for real).
    expect_legacy: str = spec_field("differ", Choice(("match", "differ")))
    expect_calibrated: str = spec_field("differ", Choice(("match", "differ")))

    def __post_init__(self) -> None:
        validate_fields(self)

    def expectation(self, variant: str) -> str:
        return self.expect_legacy if variant == "legacy" else self.expect_calibrated


@dataclass(frozen=True)
class StageBudget:
    """One stage's limits; None inherits the run-wide value."""

    memory: str | None = spec_field(None, Budget("memory"))
    seconds: str | None = spec_field(None, Budget("time"))

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class BudgetSpec:
    """Memory and time limits: run-wide defaults applied to every stage, per-stage overrides.

    Values stay text as written ("4 GiB", "30 min"); ``prm_check.budget.parse`` turns them
    into bytes / seconds where they are enforced. None (``"none"`` in TOML) = no limit.
    """

    memory: str | None = spec_field("4 GiB", Budget("memory"))
    seconds: str | None = spec_field("30 min", Budget("time"))
    stages: Mapping[str, StageBudget] = spec_field(
        MappingProxyType({}), NestedMap(StageBudget, STAGES), hash=False
    )

    def __post_init__(self) -> None:
        validate_fields(self)

    def for_stage(self, stage: str) -> StageBudget:
        """The effective budget of ``stage``: its own values, else the run-wide ones."""
        if stage not in STAGES:
            raise SpecError("budgets.stages", stage, f"one of {', '.join(STAGES)}")
        own = self.stages.get(stage, StageBudget())
        return StageBudget(
            memory=own.memory if own.memory is not None else self.memory,
            seconds=own.seconds if own.seconds is not None else self.seconds,
        )


SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "data": DataSpec,
    "curvature": CurvatureSpec,
    "partition": PartitionSpec,
    "sweep": SweepSpec,
    "fidelity": FidelitySpec,
    "budgets": BudgetSpec,
}
# Sections a profile table may override (not the model: a profile changes effort, not subject).
PROFILE_SECTIONS = ("data", "curvature", "partition", "sweep", "fidelity", "budgets")


class ProfileTables(Validator):
    """``[profiles.quick.<section>]`` tables: keys checked here, values by a trial apply."""

    expected = "a table keyed by 'quick' (the 'full' profile is the spec as written)"

    def check(self, name: str, value: object) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(name, value)
        for prof, sections in value.items():
            path = join(name, str(prof))
            if prof != "quick":
                raise SpecError(path, sections, self.expected)
            if not isinstance(sections, Mapping):
                raise SpecError(path, sections, "a table of section tables")
            for sec, overrides in sections.items():
                spath = join(path, str(sec))
                if sec not in PROFILE_SECTIONS:
                    raise SpecError(spath, overrides, unknown(sec, PROFILE_SECTIONS))
                if not isinstance(overrides, Mapping):
                    raise SpecError(spath, overrides, "a table of field overrides")
                known = input_keys(SECTIONS[sec])
                for key, v in overrides.items():
                    if key not in known:
                        raise SpecError(join(spath, str(key)), v, unknown(key, known))
        return freeze(value)


@dataclass(frozen=True)
class ExperimentSpec:
    """A whole PRM experiment; ``ExperimentSpec()`` is the built-in planted one, no checks.

    ``profile`` records which profile's reductions have been applied ("full" = as written;
    see :func:`prm_check.spec.apply_profile`); ``profiles`` holds the spec's own overrides.
    ``source_path`` (the file it came from) is not part of equality, dicts or hashes.
    """

    name: str = spec_field("default", NAME)
    model: ModelSpec = field(default_factory=ModelSpec, metadata={"check": Nested(ModelSpec)})
    data: DataSpec = field(default_factory=DataSpec, metadata={"check": Nested(DataSpec)})
    curvature: CurvatureSpec = field(
        default_factory=CurvatureSpec, metadata={"check": Nested(CurvatureSpec)}
    )
    partition: PartitionSpec = field(
        default_factory=PartitionSpec, metadata={"check": Nested(PartitionSpec)}
    )
    sweep: SweepSpec = field(default_factory=SweepSpec, metadata={"check": Nested(SweepSpec)})
    fidelity: FidelitySpec = field(
        default_factory=FidelitySpec, metadata={"check": Nested(FidelitySpec)}
    )
    budgets: BudgetSpec = field(default_factory=BudgetSpec, metadata={"check": Nested(BudgetSpec)})
    checks: tuple[CheckSpec, ...] = spec_field((), NestedList(CheckSpec))
    profile: str = spec_field("full", Choice(PROFILES))
    profiles: Mapping[str, Any] = spec_field(MappingProxyType({}), ProfileTables(), hash=False)
    source_path: str | None = spec_field(
        None, compare=False, metadata={"internal": True}, repr=False
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        seen: dict[str, int] = {}
        for i, check in enumerate(self.checks):
            self._check_fits(check, f"checks[{i}]")
            if check.id in seen:
                raise SpecError(
                    f"checks[{i}]", check.id, f"a unique id (checks[{seen[check.id]}] has it)"
                )
            seen[check.id] = i
        if self.profile == "full" and self.profiles:
            from prm_check.spec.profiles import apply_profile  # import cycle: profiles uses us

            for prof in self.profiles:
                apply_profile(self, prof)  # trial: reject bad override values now

    def _check_fits(self, c: CheckSpec, path: str) -> None:
        """A check must name things this experiment actually measures."""
        if c.group == PLANTED:
            if not self.model.is_planted:
                raise SpecError(
                    join(path, "group"), c.group, "a sweep group: model has no planted units"
                )
            if c.metric == "partition_auc_margin" and set(self.partition.baselines) <= set(
                ORACLE_BASELINES
            ):
                raise SpecError(
                    join(path, "metric"), c.metric, "a trivial baseline in partition.baselines"
                )
            qs = (*self.partition.q_grid, self.partition.q)
            if c.metric not in LEVELLESS_METRICS and c.level not in qs:
                raise SpecError(join(path, "level"), c.level, f"a q in {sorted(set(qs))}")
            return
        sweep = self.sweep
        if c.group not in sweep.groups:
            raise SpecError(join(path, "group"), c.group, f"one of sweep.groups {sweep.groups}")
        if c.level not in sweep.levels:
            raise SpecError(join(path, "level"), c.level, f"one of sweep.levels {sweep.levels}")
        attack = metric_attack(c.metric)
        if attack is not None and attack not in self.sweep.attacks:
            raise SpecError(join(path, "metric"), c.metric, f"an attack in {self.sweep.attacks}")
        if c.metric.endswith("_vs_control") and "control" not in self.sweep.groups:
            raise SpecError(join(path, "metric"), c.metric, "'control' in sweep.groups")

    def section(self, name: str) -> Any:
        """A section by name (``"sweep"`` -> :class:`SweepSpec`)."""
        if name not in SECTIONS:
            raise SpecError("section", name, f"one of {', '.join(SECTIONS)}")
        return getattr(self, name)
