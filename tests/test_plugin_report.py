"""End of session: the experiment report is written once, and a failing one never raises."""

from __future__ import annotations

import json

from tests.plugin_support.project import SMALL_IDS, FakeProject

pytest_plugins = ["pytester", "tests.plugin_support.fixtures"]

RECORDING_WRITER = """
import json
import prm_check.results

def pytest_configure(config):
    def write_outputs(results, out_dir, stage_dirs, report=True, progress=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {"checks": [c["id"] for c in results["checks"]], "run": results["run"]["name"]}
        (out_dir / "recorded.json").write_text(json.dumps(summary))
    prm_check.results.write_outputs = write_outputs
"""

FAILING_WRITER = """
import prm_check.results

def pytest_configure(config):
    def write_outputs(*args, **kwargs):
        raise RuntimeError("disk on fire")
    prm_check.results.write_outputs = write_outputs
"""


def test_full_run_writes_the_report_once_with_assembled_results(project: FakeProject):
    project.spec()
    project.pytester.makeconftest(RECORDING_WRITER)
    result = project.pytester.runpytest("--prm-report-dir=out")
    result.assert_outcomes(passed=len(SMALL_IDS))
    run_dir = project.pytester.path / "out" / "small"
    recorded = json.loads((run_dir / "recorded.json").read_text())
    assert recorded == {
        "checks": ["Wsens-0.3-delta_auc_loss", "planted-partition_auc"],
        "run": "small",
    }
    assert (run_dir / ".prm-session").is_file()
    result.stdout.fnmatch_lines(["report: *out/small"])


def test_partial_run_writes_no_report(project: FakeProject):
    project.spec()
    project.pytester.makeconftest(RECORDING_WRITER)
    result = project.pytester.runpytest("--prm-report-dir=out", "-k", "check")
    result.assert_outcomes(passed=2, deselected=len(SMALL_IDS) - 2)
    assert not (project.pytester.path / "out").exists()


def test_a_failing_report_is_one_line_and_the_session_stays_green(project: FakeProject):
    project.spec()
    project.pytester.makeconftest(FAILING_WRITER)
    result = project.pytester.runpytest("--prm-report-dir=out")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["prm_check: report of small not written (RuntimeError: disk on fire)"]
    )
