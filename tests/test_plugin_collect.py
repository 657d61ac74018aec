"""The plugin's collection: spec files become parametrized items with readable ids."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from tests.plugin_support.project import REPO, SMALL_IDS, SMALL_SPEC, FakeProject

pytest_plugins = ["pytester", "tests.plugin_support.fixtures"]  # the `project` fixture


def test_importing_the_plugin_imports_nothing_heavy():
    code = (
        "import sys, prm_check.pytest_plugin; "
        "heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_plugin_is_registered_through_the_entry_point(pytester: pytest.Pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--prm-baseline=PATH*", "*--prm-profile=*"])


def test_spec_file_becomes_items_with_readable_ids(project: FakeProject):
    project.spec()
    result = project.pytester.runpytest("--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert ids == SMALL_IDS
    assert project.computed() == []  # collection computes nothing


def test_all_items_pass_and_each_stage_is_computed_once(project: FakeProject):
    project.spec()
    result = project.pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=len(SMALL_IDS))
    counts = Counter(project.computed())
    assert set(counts) == {
        "assets",
        "baseline",
        "curvature",
        "partition",
        "sweep",
        "embedding",
        "fidelity",
    }
    assert set(counts.values()) == {1}, counts
    result.stdout.fnmatch_lines(["*prm_check summary*", "*check[[]Wsens-0.3-delta_auc_loss[]]*"])


def test_k_selects_items_and_only_their_stages_run(project: FakeProject):
    project.spec()
    result = project.pytester.runpytest("-k", "check", "-v")
    result.assert_outcomes(passed=2, deselected=len(SMALL_IDS) - 2)
    # the check items read sweep and partition only: no fidelity, embedding or baseline
    assert set(project.computed()) == {"assets", "curvature", "partition", "sweep"}


def test_m_prm_marks_every_spec_item(project: FakeProject):
    project.spec()
    project.pytester.makepyfile(test_other="def test_plain():\n    pass\n")
    result = project.pytester.runpytest("-m", "not prm")
    result.assert_outcomes(passed=1, deselected=len(SMALL_IDS))


def test_a_failing_hypothesis_fails_its_item_with_one_line(project: FakeProject):
    project.spec(SMALL_SPEC.replace("value = 0.0", "value = -1.0"))
    result = project.pytester.runpytest("-k", "check")
    result.assert_outcomes(passed=1, failed=1, deselected=len(SMALL_IDS) - 2)
    result.stdout.fnmatch_lines(
        ["*check Wsens-0.3-delta_auc_loss: observed -0.15, expected delta_auc_loss < -1.0*"]
    )
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (SMALL_SPEC + '\n[curvature]\nprobes = "many"\n', "curvature.probes"),
        (SMALL_SPEC + "\n[curvatur]\nprobes = 4\n", "curvatur"),
        (SMALL_SPEC.replace('op = "<"', 'op = "=="'), "checks[0].op"),
        ("name = [unclosed\n", "(toml)"),
    ],
    ids=["wrong-type", "unknown-section", "bad-operator", "not-toml"],
)
def test_malformed_spec_is_a_collection_error_naming_the_field(
    project: FakeProject, text: str, field: str
):
    project.spec(text, name="bad.prm.toml")
    project.pytester.makepyfile(test_other="def test_plain():\n    pass\n")
    result = project.pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection errors stop the session
    out = result.stdout.str()
    assert "ERROR collecting bad.prm.toml" in out
    assert f"spec field {field!r}" in out
    assert "Traceback" not in out and "_pytest" not in out


def test_prm_spec_option_collects_a_file_outside_the_arguments(project: FakeProject):
    sub = project.pytester.mkdir("elsewhere")
    (sub / "small.prm.toml").write_text(SMALL_SPEC)
    project.pytester.makepyfile(test_other="def test_plain():\n    pass\n")
    result = project.pytester.runpytest(
        "test_other.py", "--prm-spec", "elsewhere/small.prm.toml", "--collect-only", "-q"
    )
    assert "elsewhere/small.prm.toml::check[Wsens-0.3-delta_auc_loss]" in result.stdout.str()


PROFILE_TEST = """
def test_profile(prm_spec):
    print("PROFILE", prm_spec.profile, prm_spec.sweep.draws)
"""


@pytest.mark.parametrize(
    ("env", "args", "ini", "expected"),
    [
        ({}, [], "", "full"),
        ({"CI": "1"}, [], "", "quick"),
        ({"CI": "1"}, ["--prm-profile=full"], "", "full"),
        ({}, [], "prm_profile = quick", "quick"),
        ({}, ["--prm-profile=full"], "prm_profile = quick", "full"),
    ],
    ids=["default-full", "ci-quick", "cli-beats-ci", "ini", "cli-beats-ini"],
)
def test_profile_selection(project: FakeProject, env, args, ini, expected):
    for k, v in env.items():
        project.monkeypatch.setenv(k, v)
    project.pytester.makeini(
        f"[pytest]\nprm_stage_runner = tests.plugin_support.fake_runner:make_runner\n{ini}\n"
    )
    project.pytester.mkdir("experiments")
    project.spec(name="experiments/default.prm.toml")  # the fixtures' fallback spec
    project.pytester.makepyfile(test_profile=PROFILE_TEST)
    result = project.pytester.runpytest("test_profile.py", "-s", *args)
    result.assert_outcomes(passed=1)
    draws = 2 if expected == "quick" else 3  # the built-in quick profile caps draws at 2
    result.stdout.fnmatch_lines([f"*PROFILE {expected} {draws}*"])


def test_prm_errors_are_one_line_only_in_prm_tests(project: FakeProject):
    project.pytester.makepyfile(
        test_mixed="""
from prm_check.errors import DataError

def test_uses_prm(prm_spec):
    raise DataError("the eval split is empty")

def test_plain():
    raise DataError("a bug elsewhere keeps its traceback")
"""
    )
    result = project.pytester.runpytest("test_mixed.py")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "\nDataError: the eval split is empty\n" in out
    assert "def test_plain():" in out  # pytest's usual traceback for the other test


def test_fidelity_items_test_the_specs_hypothesis(project: FakeProject):
    differ = SMALL_SPEC.replace('expect_legacy = "match"', 'expect_legacy = "differ"')
    project.spec(differ)
    result = project.pytester.runpytest("-k", "fidelity and not budget")
    # the fake synthetic table passes every measure: "differ" must fail, "match" must pass
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*synthetic[[]legacy[]] passed every fidelity measure*"])
    project.behave(shift=-0.6)  # the fake KS p-value drops below its threshold
    result = project.pytester.runpytest("-k", "fidelity and not budget")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*synthetic[[]calibrated[]] != real*"])
