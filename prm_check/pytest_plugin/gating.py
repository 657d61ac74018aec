"""Baseline gating inside pytest: judge each item after its body, write the file at the end.

Why split this way: the verdict must fail the *item* (so it runs where the item runs, also in
an xdist worker), while the file must be written once, by the process that sees every
item's report (the controller, or the only process) — reports carry the metrics as
``user_properties``, which xdist ships back.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from prm_check.baseline import (
    Baseline,
    BaselineError,
    format_table,
    machine_info,
    model_divergence,
)
from prm_check.baseline import machine_mismatch as _mismatch
from prm_check.pytest_plugin import options
from prm_check.pytest_plugin.spec_items import METRIC_PREFIX, MODEL_RECIPE, MODEL_WEIGHTS

# user property: missing / ok / updated / unchanged / recorded / not-comparable
STATUS = "prm_baseline"


def item_metrics(props: list[tuple[str, Any]]) -> dict[str, float]:
    """``prm.<name>`` numbers from user_properties (the last value of a name wins)."""
    out: dict[str, float] = {}
    for name, value in props:
        if name.startswith(METRIC_PREFIX) and isinstance(value, (int, float)):
            out[name[len(METRIC_PREFIX) :]] = value
    return out


def model_identity(props: list[tuple[str, Any]]) -> dict[str, str] | None:
    """The item's model recipe and weights hash (set by the spec items), if it has one."""
    d = dict(props)
    if MODEL_WEIGHTS not in d:
        return None
    return {"recipe": str(d.get(MODEL_RECIPE)), "weights": str(d[MODEL_WEIGHTS])}


class BaselineGate:
    """Mode ``check`` (--prm-baseline), ``update`` (+ --prm-update-baseline, fails changed
    items once) or ``force`` (+ --prm-force-baseline, passes)."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.path = path
        if config.getoption("prm_force_baseline"):
            self.mode = "force"
        elif config.getoption("prm_update_baseline"):
            self.mode = "update"
        else:
            self.mode = "check"
        self.profile = options.profile(config)
        try:
            self.baseline = Baseline.load(path, missing_ok=self.mode != "check")
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.recorded: dict[str, tuple[dict[str, float], dict[str, str] | None]] = {}
        self.missing: list[str] = []
        self.written: Path | None = None
        self.mismatch = []
        stored = self.baseline.machine(self.profile)
        if self.mode == "check" and stored:
            self.mismatch = _mismatch(stored, machine_info())

    def warn_mismatch(self) -> None:
        if self.mismatch:
            self.config.issue_config_time_warning(
                pytest.PytestWarning(
                    f"baseline {self.path} was recorded on another machine "
                    f"({'; '.join(self.mismatch)}); memory and round-off may differ"
                ),
                stacklevel=2,
            )

    def judge(self, item: pytest.Item) -> None:
        """Called after a passing body: fail the item on a regression (or on update)."""
        metrics = item_metrics(item.user_properties)
        if not metrics:
            return
        entry = self.baseline.entry(self.profile, item.nodeid)
        rows = self.baseline.compare(self.profile, item.nodeid, metrics)
        regressed = [r for r in rows if not r.ok]
        here = model_identity(item.user_properties)
        if self.mode == "force":
            item.user_properties.append((STATUS, "recorded"))
            return
        if self.mode == "update":
            changed = entry is None or bool(regressed) or entry.get("model") != here
            item.user_properties.append((STATUS, "updated" if changed else "unchanged"))
            if changed:
                what = (
                    "new item"
                    if entry is None
                    else "values moved beyond tolerance"
                    if regressed
                    else "measured on other model weights"
                )
                pytest.fail(
                    f"baseline updated for this item ({what}); rerun without "
                    f"--prm-update-baseline and commit {self.path.name}\n" + format_table(rows),
                    pytrace=False,
                )
            return
        if entry is None:
            item.user_properties.append((STATUS, "missing"))
            self.missing.append(item.nodeid)
            return
        diverged = model_divergence(entry.get("model"), here)
        if regressed and diverged:
            # Not a regression of the code: the numbers come from other weights. Say so
            # loudly, and how to gate on this machine, but do not fail.
            item.user_properties.append((STATUS, "not-comparable"))
            warnings.warn(
                pytest.PytestWarning(
                    f"{item.nodeid}: baseline not applied: {diverged}. To gate on this "
                    f"machine, record its numbers with --prm-update-baseline.\n"
                    + format_table(rows)
                ),
                stacklevel=2,
            )
            return
        item.user_properties.append((STATUS, "regression" if regressed else "ok"))
        if regressed:
            names = ", ".join(r.metric for r in regressed)
            pytest.fail(
                f"baseline regression in {names} (profile {self.profile}, {self.path.name}):\n"
                + format_table(rows)
                + "\nIf the change is intended: rerun with --prm-update-baseline and commit.",
                pytrace=False,
            )

    def collect(self, report: pytest.TestReport) -> None:
        """Controller side: remember metrics to write (update / force modes)."""
        if self.mode == "check" or report.when != "teardown":
            return
        metrics = item_metrics(report.user_properties)
        if metrics:
            self.recorded[report.nodeid] = (metrics, model_identity(report.user_properties))

    def finish(self) -> None:
        """Write the baseline atomically once per session (controller only)."""
        if self.mode == "check" or not self.recorded:
            return
        for nodeid, (metrics, model) in self.recorded.items():
            self.baseline.record(self.profile, nodeid, metrics, model)
        self.baseline.set_machine(self.profile, machine_info())
        self.written = self.baseline.write(self.path)
