"""pytest-xdist and JUnit XML: items spread over workers, stages computed once, metrics kept."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from tests.plugin_support.project import SMALL_IDS, FakeProject

pytest_plugins = ["pytester", "tests.plugin_support.fixtures"]


def _properties(xml_path) -> dict[str, dict[str, str]]:
    root = ET.parse(xml_path).getroot()
    out = {}
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        out[f"{case.get('classname')}::{case.get('name')}"] = props
    return out


def test_two_workers_share_stages_and_junit_carries_metrics(project: FakeProject):
    project.spec()
    cache = project.pytester.mkdir("stage-cache")
    project.monkeypatch.setenv("PRM_FAKE_CACHE", str(cache))
    result = project.pytester.runpytest_subprocess(
        "-n",
        "2",
        "--junitxml=junit.xml",
        "--prm-baseline=b.json",
        "--prm-force-baseline",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=len(SMALL_IDS))
    # the cross-process lock plus the runner's disk cache: each stage computed once overall
    counts = Counter(project.computed())
    assert counts and set(counts.values()) == {1}, counts
    props = _properties(project.pytester.path / "junit.xml")
    check = next(v for k, v in props.items() if "check[Wsens-0.3-delta_auc_loss]" in k)
    assert float(check["prm.observed"]) == pytest.approx(-0.15)
    assert check["prm_spec"] == "small"
    budget = next(v for k, v in props.items() if "budget[curvature]" in k)
    assert int(budget["prm.peak_rss_bytes"]) > 0
    # the controller wrote the baseline from the workers' reports
    data = json.loads((project.pytester.path / "b.json").read_text())
    assert set(data["profiles"]["full"]["items"]) == set(SMALL_IDS)
    result.stdout.fnmatch_lines(["*prm_check summary*", "*baseline written: *b.json (16 items)*"])


def test_junit_xml_carries_metrics_without_xdist(project: FakeProject):
    project.spec()
    result = project.pytester.runpytest("-k", "partition", "--junitxml=junit.xml")
    result.assert_outcomes(passed=3, deselected=len(SMALL_IDS) - 3)
    props = _properties(project.pytester.path / "junit.xml")
    part = next(v for k, v in props.items() if k.endswith("::partition"))
    assert part["prm.count.Wsens"] == "5"
    assert float(part["prm.planted_roc_auc"]) == pytest.approx(0.9)
