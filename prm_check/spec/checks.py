"""Hypotheses as structured thresholds: ``Wsens at α=0.1: delta_auc_loss <= -0.05``.

Why structured and not expressions: spec files are untrusted input, so a check is data
(group, level, metric, operator, value) evaluated through a fixed operator table — nothing in
a spec is ever passed to ``eval``. Each check becomes one pytest item with a readable id.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from prm_check.errors import SpecError
from prm_check.spec._fields import Choice, Real, Text, spec_field, validate_fields

SWEEP_GROUPS = ("Wfunc", "Wsens", "Wboth", "Wnone", "control")
DEFAULT_SWEEP_GROUPS = ("Wfunc", "Wsens", "Wboth", "control")
PLANTED = "planted"  # the group of partition-quality checks (planted variant only)
ALL_ATTACKS = ("loss", "zlib", "min_k", "ref", "mope")

# Sweep metrics, per (group, level) cell, measured against the unperturbed model.
#   delta_ppl                 perplexity(noised) - perplexity(clean) on held-out text
#   rel_delta_ppl             delta_ppl / perplexity(clean)
#   rel_delta_ppl_vs_control  rel_delta_ppl(group) - rel_delta_ppl(control), same level
#   delta_auc_<a>             AUC(noised) - AUC(clean) of attack <a> on the eval halves
#   delta_auc_<a>_vs_control  delta_auc_<a>(group) - delta_auc_<a>(control), same level
SWEEP_METRICS = (
    "delta_ppl",
    "rel_delta_ppl",
    "rel_delta_ppl_vs_control",
    *(f"delta_auc_{a}" for a in ALL_ATTACKS),
    *(f"delta_auc_{a}_vs_control" for a in ALL_ATTACKS),
)
# Partition metrics of the spec's rule against the planted units (group "planted").
#   partition_auc             planted-vs-rest ROC-AUC of the rule's sensitivity score (no level)
#   partition_auc_margin      partition_auc minus the best trivial baseline's AUC (the
#                             weight_delta oracle excluded; no level)
#   partition_lift / _precision / _recall   of Wsens at q = level (level in partition q_grid)
PARTITION_METRICS = (
    "partition_auc",
    "partition_auc_margin",
    "partition_lift",
    "partition_precision",
    "partition_recall",
)
LEVELLESS_METRICS = ("partition_auc", "partition_auc_margin")
METRICS = SWEEP_METRICS + PARTITION_METRICS
# Which number of a metric a check reads: its point estimate, or a bound of its 95 % CI
# ("ci_high < 0" says the decrease is resolved, not only that the mean is negative).
STATS = ("mean", "ci_low", "ci_high")
# Metrics with a recorded CI: every sweep mean, Wsens's *_vs_control rows (bootstrapped
# pairwise), and the planted AUC. The margin and the Wsens lift/precision/recall have none.
CI_METRICS = (*SWEEP_METRICS, "partition_auc")
CI_VS_CONTROL_GROUP = "Wsens"

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}

ID_CHARS = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,79}"


def metric_attack(metric: str) -> str | None:
    """The attack a ``delta_auc_*`` metric reads, else None."""
    if not metric.startswith("delta_auc_"):
        return None
    return metric.removeprefix("delta_auc_").removesuffix("_vs_control")


def stat_label(metric: str, stat: str = "mean") -> str:
    """``delta_auc_loss``, or ``ci_high(delta_auc_loss)`` when a CI bound is judged."""
    return metric if stat == "mean" else f"{stat}({metric})"


def format_level(level: float) -> str:
    """Shortest exact text of a level for ids: ``0.1 -> '0.1'``, ``0.0 -> '0.0'``."""
    return repr(float(level))


@dataclass(frozen=True)
class CheckSpec:
    """One hypothesis: ``metric`` of ``group`` at noise ``level`` satisfies ``op value``.

    ``level`` is the noise level α for sweep metrics (one of ``sweep.levels``), the q for
    partition lift/precision/recall (one of ``partition.q_grid`` or ``partition.q``), and
    omitted for the threshold-free ``partition_auc`` / ``partition_auc_margin``.
    """

    group: str = spec_field(check=Choice((*SWEEP_GROUPS, PLANTED)))
    metric: str = spec_field(check=Choice(METRICS))
    op: str = spec_field(check=Choice(tuple(OPS)))
    value: float = spec_field(check=Real())
    level: float | None = spec_field(None, Real(0.0, optional=True))
    name: str | None = spec_field(None, Text(ID_CHARS, f"an id matching {ID_CHARS}", optional=True))
    stat: str = spec_field("mean", Choice(STATS))

    def __post_init__(self) -> None:
        validate_fields(self)
        partition = self.metric in PARTITION_METRICS
        if partition != (self.group == PLANTED):
            want = "a partition_* metric" if self.group == PLANTED else "a sweep metric"
            raise SpecError("metric", self.metric, f"{want} for group {self.group!r}")
        if self.group == "control" and self.metric.endswith("_vs_control"):
            raise SpecError("group", self.group, "not 'control' for a *_vs_control metric")
        if self.metric in LEVELLESS_METRICS and self.level is not None:
            raise SpecError("level", self.level, f"omitted for the threshold-free {self.metric}")
        if self.metric not in LEVELLESS_METRICS and self.level is None:
            what = "the q (from partition.q_grid)" if partition else "a noise level (sweep.levels)"
            raise SpecError("level", None, f"{what} for metric {self.metric!r}")
        if self.stat != "mean":
            no_ci = self.metric not in CI_METRICS or (
                self.metric.endswith("_vs_control") and self.group != CI_VS_CONTROL_GROUP
            )
            if no_ci:
                raise SpecError(
                    "stat", self.stat, f"'mean': no confidence interval is recorded for "
                    f"{self.metric} of {self.group}"
                )  # fmt: skip

    @property
    def id(self) -> str:
        """Readable pytest id: ``name`` if given, else ``"Wsens-0.1-delta_auc_loss"``."""
        if self.name is not None:
            return self.name
        stat = "" if self.stat == "mean" else f"-{self.stat}"
        if self.level is None:
            return f"{self.group}-{self.metric}{stat}"
        return f"{self.group}-{format_level(self.level)}-{self.metric}{stat}"

    def describe(self) -> str:
        """``"delta_auc_loss <= -0.05"`` (``"ci_high(delta_auc_loss) < 0.0"``) for messages."""
        return f"{stat_label(self.metric, self.stat)} {self.op} {self.value!r}"

    def evaluate(self, observed: float) -> bool:
        """Whether ``observed`` satisfies the threshold; NaN/inf never pass."""
        x = float(observed)
        return math.isfinite(x) and OPS[self.op](x, self.value)
