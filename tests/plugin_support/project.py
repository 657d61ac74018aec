"""Shared set-up of the plugin's pytester tests: a project using the fake stage runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = "tests.plugin_support.fake_runner:make_runner"

SMALL_SPEC = """\
name = "small"

[sweep]
levels = [0.0, 0.1, 0.3]

[fidelity]
# the fake runner's synthetic tables pass every measure
expect_legacy = "match"
expect_calibrated = "match"

[[checks]]
group = "Wsens"
level = 0.3
metric = "delta_auc_loss"
op = "<"
value = 0.0

[[checks]]
group = "planted"
metric = "partition_auc"
op = ">="
value = 0.8
"""

# The items SMALL_SPEC must become, in collection order.
SMALL_IDS = [
    "small.prm.toml::curvature[func-neuron]",
    "small.prm.toml::curvature[sens-neuron]",
    "small.prm.toml::curvature[nonmember-neuron]",
    "small.prm.toml::partition",
    "small.prm.toml::sweep",
    "small.prm.toml::check[Wsens-0.3-delta_auc_loss]",
    "small.prm.toml::check[planted-partition_auc]",
    "small.prm.toml::fidelity[legacy]",
    "small.prm.toml::fidelity[calibrated]",
    *(
        f"small.prm.toml::budget[{s}]"
        for s in ("assets", "baseline", "curvature", "partition", "sweep", "embedding", "fidelity")
    ),
]


class FakeProject:
    """A pytester directory wired to the fake runner; ``behave`` sets what stages do."""

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pytester = pytester
        self.monkeypatch = monkeypatch
        self.log = pytester.path / "computed.log"
        pytester.makeini(f"[pytest]\nprm_stage_runner = {RUNNER}\n")
        monkeypatch.setenv("PYTHONPATH", str(REPO))  # subprocess runs and guard children
        monkeypatch.setenv("PRM_FAKE_LOG", str(self.log))
        monkeypatch.delenv("PRM_FAKE_STAGES", raising=False)
        monkeypatch.delenv("PRM_FAKE_CACHE", raising=False)
        monkeypatch.delenv("CI", raising=False)

    def spec(self, text: str = SMALL_SPEC, name: str = "small.prm.toml") -> Path:
        path = self.pytester.path / name
        path.write_text(text)
        return path

    def behave(self, **stages: object) -> None:
        self.monkeypatch.setenv("PRM_FAKE_STAGES", json.dumps(stages))

    def computed(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []
