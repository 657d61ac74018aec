"""README.md's pytest-plugin section: its example test runs as shown, its item listing is real."""

from __future__ import annotations

import re
import shutil

from tests.plugin_support.project import REPO, FakeProject

pytest_plugins = ["pytester", "tests.plugin_support.fixtures"]

DOC = REPO / "README.md"


def _example() -> str:
    text = DOC.read_text()
    block = text.split("<!-- example-test-file:start -->")[1].split(
        "<!-- example-test-file:end -->"
    )[0]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def _with_default_spec(project: FakeProject) -> None:
    project.pytester.mkdir("experiments")
    shutil.copy(REPO / "experiments" / "default.prm.toml", project.pytester.path / "experiments")


def test_readme_example_test_file_runs_as_shown(project: FakeProject):
    _with_default_spec(project)
    project.pytester.makepyfile(test_my_experiment=_example())
    result = project.pytester.runpytest("test_my_experiment.py", "-v")
    result.assert_outcomes(passed=3)


def test_readme_item_listing_matches_collection(project: FakeProject):
    _with_default_spec(project)
    result = project.pytester.runpytest(
        "experiments/default.prm.toml", "--prm-profile", "quick", "--collect-only", "-q"
    )
    collected = [line for line in result.outlines if "::" in line]
    shown = [ln for ln in DOC.read_text().splitlines() if ln.startswith("experiments/default")]
    assert len(shown) >= 10
    for line in shown:
        assert line in collected
