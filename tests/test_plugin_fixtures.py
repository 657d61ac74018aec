"""prm_spec / prm_run / prm_model share the session's stages with the spec items."""

from __future__ import annotations

from collections import Counter

from tests.plugin_support.project import SMALL_IDS, FakeProject

pytest_plugins = ["pytester", "tests.plugin_support.fixtures"]

USER_TESTS = """
def test_run(prm_run):
    assert prm_run.spec.name == "small"
    assert prm_run.observed("Wsens-0.3-delta_auc_loss") == -0.15
    assert prm_run.check("planted-partition_auc")["passed"]
    assert prm_run.results["schema_version"] == 1
    assert prm_run.section("partition")["counts"]["Wsens"] == 5

def test_model(prm_model):
    assert prm_model == {"fake_model_of": "small", "override": None}
"""


def test_fixtures_reuse_the_stages_of_the_spec_items(project: FakeProject):
    project.spec()
    project.pytester.makepyfile(test_user=USER_TESTS)
    result = project.pytester.runpytest("--prm-spec=small.prm.toml", "-p", "no:randomly")
    result.assert_outcomes(passed=len(SMALL_IDS) + 2)
    assert set(Counter(project.computed()).values()) == {1}  # one computation per stage


def test_prm_model_override_is_passed_to_the_runner(project: FakeProject):
    project.spec()
    project.pytester.makepyfile(
        test_user="""
def test_model(prm_model):
    assert prm_model["override"].endswith("my-model")
"""
    )
    result = project.pytester.runpytest(
        "test_user.py", "--prm-spec=small.prm.toml", "-k", "model", "--prm-model=my-model"
    )
    result.assert_outcomes(passed=1, deselected=len(SMALL_IDS))
