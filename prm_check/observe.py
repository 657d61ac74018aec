"""Read a check's observed value out of results.json and judge it.

Shared by ``prm-check run`` (the summary's pass/fail column) and the pytest plugin (one
item per check), so both always agree on what "observed" means.
"""

from __future__ import annotations

import math

from prm_check.errors import DataError


def _sweep_value(results: dict, group: str, level: float, metric: str, stat: str = "mean") -> float:
    """``stat`` is "mean" (the point estimate) or a bound of the row's 95 % CI."""
    sweep = results.get("sweep") or {}
    if metric.endswith("_vs_control"):
        base = metric.removesuffix("_vs_control")
        for row in sweep.get("versus_control", []):
            if (row["group"], row["metric"], row["basis"]) == (group, base, "equal_alpha") and (
                math.isclose(row["level"], level)
            ):
                return float(row["diff" if stat == "mean" else stat])
        if stat != "mean":
            raise DataError(f"no confidence interval for {metric} of {group} at level {level}")
        # groups other than the default Wsens: difference of the two means
        a = _sweep_value(results, group, level, base)
        b = _sweep_value(results, "control", level, base)
        return a - b
    if level == 0:
        return 0.0  # the clean model against itself, by definition
    for row in sweep.get("summary", []):
        if row["group"] == group and row["metric"] == metric and math.isclose(row["level"], level):
            return float(row[stat])
    raise DataError(
        f"results have no sweep value for {group} at level {level} ({metric}); "
        "is the group in sweep.groups and the attack in sweep.attacks?"
    )


def _partition_value(
    results: dict, metric: str, level: float | None, rule: str, stat: str = "mean"
) -> float:
    part = results.get("partition") or {}
    evals = part.get("planted_eval")
    if not evals:
        raise DataError("no planted evaluation in results: partition checks need variant planted")
    by_name = {e["name"]: e for e in evals}
    if rule not in by_name:
        raise DataError(f"rule {rule!r} was not evaluated against the planted units")
    e = by_name[rule]
    if metric == "partition_auc":
        return float(e["roc_auc" if stat == "mean" else stat])
    if stat != "mean":
        raise DataError(f"no confidence interval is recorded for {metric}")
    if metric == "partition_auc_margin":
        base = [x["roc_auc"] for x in evals if x["kind"] == "baseline"]
        return float(e["roc_auc"] - max(base)) if base else float("nan")
    field = metric.removeprefix("partition_")
    for row in e["wsens"]:
        if math.isclose(row["q"], level):
            return float(row[field])
    raise DataError(f"q = {level} is not in partition.q_grid; add it to evaluate {metric}")


def observed_value(results: dict, check, rule: str) -> float:
    """The number ``check`` is judged on; DataError if the run did not compute it."""
    if check.metric.startswith("partition_"):
        return _partition_value(results, check.metric, check.level, rule, check.stat)
    return _sweep_value(results, check.group, float(check.level), check.metric, check.stat)


def evaluate_check(results: dict, check, rule: str) -> dict:
    """One check as a results.json row: the threshold, what was observed, pass/fail."""
    try:
        observed: float | None = observed_value(results, check, rule)
        error = None
    except DataError as exc:
        observed, error = None, str(exc)
    return {
        "id": check.id,
        "group": check.group,
        "level": check.level,
        "metric": check.metric,
        "stat": check.stat,
        "op": check.op,
        "value": check.value,
        "observed": observed,
        "passed": observed is not None and check.evaluate(observed),
        "error": error,
    }


def evaluate_checks(spec, results: dict) -> list[dict]:
    return [evaluate_check(results, c, spec.partition.rule) for c in spec.checks]
