"""Baseline gating: pass, regression (with the table), update-then-commit, force, warnings."""

from __future__ import annotations

import json

import pytest

from prm_check.baseline import Baseline, BaselineError, Tolerance, compare_metric
from tests.plugin_support.project import SMALL_IDS, FakeProject

pytest_plugins = ["pytester", "tests.plugin_support.fixtures"]

CHECKS = ("-k", "check or sweep")  # sweep, 2 checks, budget[sweep]: quick to run
N = 4


def _record(project: FakeProject, *extra: str) -> pytest.RunResult:
    project.spec()
    return project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json", *extra)


def test_update_fails_once_then_the_gate_passes(project: FakeProject):
    first = _record(project, "--prm-update-baseline")
    first.assert_outcomes(failed=N, deselected=len(SMALL_IDS) - N)
    first.stdout.fnmatch_lines(
        ["*baseline updated for this item (new item); rerun without --prm-update-baseline*"]
    )
    data = json.loads((project.pytester.path / "b.json").read_text())
    items = data["profiles"]["full"]["items"]
    assert items["small.prm.toml::check[Wsens-0.3-delta_auc_loss]"]["metrics"]["observed"] == (
        pytest.approx(-0.15)
    )
    assert data["profiles"]["full"]["machine"]["python"]
    second = project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json", "--prm-update-baseline")
    second.assert_outcomes(passed=N, deselected=len(SMALL_IDS) - N)  # nothing changed: passes
    gate = project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json")
    gate.assert_outcomes(passed=N, deselected=len(SMALL_IDS) - N)


def test_regression_fails_the_item_with_an_obtained_expected_table(project: FakeProject):
    _record(project, "--prm-force-baseline").assert_outcomes(
        passed=N, deselected=len(SMALL_IDS) - N
    )
    project.behave(shift=0.01)  # moves every fake number a little; thresholds still hold
    result = project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json", "-rf")
    # -0.15 -> -0.14 is beyond 2 %; 0.75 -> 0.76 and 0.9 -> 0.91 are within it
    result.assert_outcomes(failed=1, passed=N - 1, deselected=len(SMALL_IDS) - N)
    result.stdout.fnmatch_lines(
        [
            "baseline regression in observed (profile full, b.json):",
            "metric * obtained * expected * difference * tolerance*",
            "observed * -0.14 * -0.15 * 0.01 * ±(1e-06 + 0.02·|expected|) * REGRESSION",
            "threshold * 0 * 0 * 0 * * ok",
            "If the change is intended: rerun with --prm-update-baseline and commit.",
        ]
    )


def test_per_metric_tolerance_override_in_the_file(project: FakeProject):
    _record(project, "--prm-force-baseline")
    path = project.pytester.path / "b.json"
    data = json.loads(path.read_text())
    data["tolerances"] = {"observed": {"abs": 0.05}, "clean.*": {"rel": 0.5}, **data["tolerances"]}
    path.write_text(json.dumps(data))
    project.behave(shift=0.01)
    result = project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json")
    result.assert_outcomes(passed=N, deselected=len(SMALL_IDS) - N)


def test_force_rewrites_and_passes(project: FakeProject):
    _record(project, "--prm-force-baseline")
    project.behave(shift=0.01)
    _record(project, "--prm-force-baseline").assert_outcomes(
        passed=N, deselected=len(SMALL_IDS) - N
    )
    project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json").assert_outcomes(
        passed=N, deselected=len(SMALL_IDS) - N
    )


def test_machine_mismatch_warns_and_missing_items_are_listed(project: FakeProject):
    _record(project, "--prm-force-baseline")
    path = project.pytester.path / "b.json"
    data = json.loads(path.read_text())
    data["profiles"]["full"]["machine"]["python"] = "2.7.18"
    del data["profiles"]["full"]["items"]["small.prm.toml::sweep"]
    path.write_text(json.dumps(data))
    result = project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json")
    result.assert_outcomes(passed=N, deselected=len(SMALL_IDS) - N, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*recorded on another machine (python: 2.7.18 (baseline) vs *",
            "1 item(s) have no baseline in *b.json (add them with --prm-update-baseline)",
        ]
    )


def test_same_recipe_other_weights_warns_instead_of_failing(project: FakeProject):
    # A built-in model trained on another CPU: same recipe, other weights, other numbers.
    project.behave(model={"recipe": "tiny-opt-s0-r1", "weights": "aaaa"})
    _record(project, "--prm-force-baseline")
    data = json.loads((project.pytester.path / "b.json").read_text())
    sweep = data["profiles"]["full"]["items"]["small.prm.toml::sweep"]
    assert sweep["model"] == {"recipe": "tiny-opt-s0-r1", "weights": "aaaa"}
    project.behave(shift=0.01, model={"recipe": "tiny-opt-s0-r1", "weights": "bbbb"})
    result = project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json")
    result.assert_outcomes(passed=N, deselected=len(SMALL_IDS) - N, warnings=1)
    result.stdout.fnmatch_lines(
        ["*check[[]Wsens-0.3-delta_auc_loss[]]: baseline not applied: the baseline was "
         "measured on weights aaaa, this machine built bbbb from the same recipe*"]
    )  # fmt: skip


def test_another_recipe_is_still_a_regression(project: FakeProject):
    project.behave(model={"recipe": "tiny-opt-s0-r1", "weights": "aaaa"})
    _record(project, "--prm-force-baseline")
    project.behave(shift=0.01, model={"recipe": "tiny-opt-s0-r2", "weights": "bbbb"})
    result = project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json")
    result.assert_outcomes(failed=1, passed=N - 1, deselected=len(SMALL_IDS) - N)
    # and the same weights are gated as before
    project.behave(shift=0.01, model={"recipe": "tiny-opt-s0-r1", "weights": "aaaa"})
    result = project.pytester.runpytest(*CHECKS, "--prm-baseline=b.json")
    result.assert_outcomes(failed=1, passed=N - 1, deselected=len(SMALL_IDS) - N)


def test_missing_baseline_file_is_a_usage_error(project: FakeProject):
    project.spec()
    result = project.pytester.runpytest("--prm-baseline=nope.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline *nope.json does not exist; create it with*"])


def test_update_without_a_path_is_a_usage_error(project: FakeProject):
    result = project.pytester.runpytest("--prm-update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


# --- the comparison itself -----------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "obtained", "ok"),
    [
        ("both", 1.05, False),
        ("both", 0.95, False),
        ("both", 1.01, True),
        ("upper", 0.5, True),
        ("upper", 1.05, False),
        ("lower", 1.5, True),
        ("lower", 0.95, False),
    ],
)
def test_tolerance_sides(side: str, obtained: float, ok: bool):
    tol = Tolerance(rel=0.02, abs=0.0, side=side)
    assert compare_metric("m", obtained, 1.0, tol).ok is ok


def test_a_value_turning_nan_is_a_regression_and_ignored_metrics_pass():
    assert not compare_metric("m", float("nan"), 1.0, Tolerance()).ok
    assert compare_metric("wall_s", 100.0, 1.0, Tolerance(ignore=True)).ok


def test_default_tolerances_by_glob():
    b = Baseline()
    assert b.tolerance("wall_s").ignore
    assert b.tolerance("peak_rss_bytes").side == "upper"
    assert b.tolerance("observed") == Tolerance(rel=0.02, abs=1e-6, side="both")


def test_write_is_atomic_and_round_trips(tmp_path):
    b = Baseline()
    b.record("quick", "a.prm.toml::check[x]", {"observed": 0.5, "bad": float("nan")})
    path = b.write(tmp_path / "b.json")
    again = Baseline.load(path)
    assert again.entry("quick", "a.prm.toml::check[x]")["metrics"] == {
        "bad": None,
        "observed": 0.5,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]  # no temp file left behind


def test_malformed_baseline_is_one_line(tmp_path):
    (tmp_path / "b.json").write_text('{"schema_version": 1, "tolerances": {"x": {"side": "up"}}}')
    with pytest.raises(BaselineError, match=r"tolerances\['x'\]: side in"):
        Baseline.load(tmp_path / "b.json")
