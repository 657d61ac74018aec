"""Budgets through the real guard: a breach fails one item with one line; the rest go on."""

from __future__ import annotations

import pytest

from tests.plugin_support.project import SMALL_SPEC, FakeProject

pytest_plugins = ["pytester", "tests.plugin_support.fixtures"]

# No fidelity variants: only budget[fidelity] reads the fidelity stage, so a breach there
# must fail exactly that item.
LEAF_SPEC = SMALL_SPEC.replace("[fidelity]\n", "[fidelity]\nvariants = []\n")


def _budget_spec(memory: str = "none", seconds: str = "none") -> str:
    return LEAF_SPEC + f'\n[budgets.stages.fidelity]\nmemory = "{memory}"\nseconds = "{seconds}"\n'


def test_memory_breach_in_a_stage_fails_exactly_its_item(project: FakeProject):
    project.spec(_budget_spec(memory="100 MiB"))
    project.behave(fidelity={"allocate_mib": 400})
    result = project.pytester.runpytest("-rf")
    result.assert_outcomes(passed=13, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*budget?fidelity?*",
            "memory budget 100.0 MiB exceeded in stage fidelity: *",
            "*- prm budget -*",
            "stage:    fidelity",
            "kind:     memory",
            "limit:    100.0 MiB",
            "observed: *",
            "budget:   memory 100.0 MiB (spec), time 30.0 min (spec)",
        ]
    )
    assert "BUDGET small.prm.toml::budget[fidelity]" in result.stdout.str()
    assert "Traceback" not in result.stdout.str().split("prm budget")[0]


def test_time_breach_in_a_stage_fails_exactly_its_item(project: FakeProject):
    project.spec(_budget_spec(seconds="1.5s"))
    project.behave(fidelity={"sleep": 30})
    result = project.pytester.runpytest()
    result.assert_outcomes(passed=13, failed=1)
    result.stdout.fnmatch_lines(["time budget 1.5 s exceeded in stage fidelity: ran 1.5 s"])
    assert result.duration < 25  # the child was killed at the limit, not slept out


def test_breach_upstream_fails_the_dependants_with_the_cause(project: FakeProject):
    project.spec(
        SMALL_SPEC + '\n[budgets.stages.curvature]\nmemory = "100 MiB"\n', name="small.prm.toml"
    )
    project.behave(curvature={"allocate_mib": 400})
    result = project.pytester.runpytest("-k", "curvature or partition or budget", "-v")
    out = result.stdout.str()
    assert "stage partition needs curvature, which failed: memory budget 100.0 MiB" in out
    # passing: budget[assets], budget[baseline]; failing: the 3 curvature items, partition,
    # check[planted-partition_auc] and budget[curvature|partition|sweep|embedding|fidelity]
    result.assert_outcomes(passed=2, failed=10, deselected=4)
    result.stdout.fnmatch_lines(["*curvature?func-neuron? BUDGET*", "*budget?baseline? PASSED*"])


USER_TESTS = """
import pytest
from tests.plugin_support.fake_runner import allocate, nap

@pytest.mark.prm_budget(memory="100 MiB")
def test_too_big(prm_budget):
    prm_budget.run(allocate, 400)

@pytest.mark.prm_budget(memory="100 MiB")
def test_fits(prm_budget):
    assert prm_budget.run(allocate, 8) == 8 * 2**20

@pytest.mark.prm_budget(seconds=1)
def test_too_slow(prm_budget):
    prm_budget.run(nap, 30)

@pytest.mark.prm_budget(seconds=10)
def test_fast(prm_budget):
    assert prm_budget.run(nap, 0.01) == 0.01

def test_unmarked(prm_budget):
    assert prm_budget.memory is None and prm_budget.seconds is None
"""


def test_marker_breach_fails_that_test_only(project: FakeProject):
    project.pytester.makepyfile(test_user=USER_TESTS)
    result = project.pytester.runpytest("-v")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_too_big BUDGET*",
            "*test_fits PASSED*",
            "*test_too_slow BUDGET*",
            "*test_fast PASSED*",
            "*test_unmarked PASSED*",
            "memory budget 100.0 MiB exceeded in stage test_too_big: *",
            "time budget 1.0 s exceeded in stage test_too_slow: ran 1.0 s",
        ]
    )


PRECEDENCE_TESTS = """
import pytest

GiB = 2**30

@pytest.mark.prm_budget(memory="3 GiB")
def test_marker_wins(prm_budget):
    assert prm_budget.memory == 3 * GiB
    assert prm_budget.seconds == {seconds}

def test_cli_then_ini(prm_budget):
    assert prm_budget.memory == {memory}
"""


@pytest.mark.parametrize(
    ("args", "memory", "seconds"),
    [
        ([], "1 * GiB", "60.0"),
        (["--prm-memory-budget=2GiB", "--prm-time-budget=2min"], "2 * GiB", "120.0"),
    ],
    ids=["ini", "cli-beats-ini"],
)
def test_budget_precedence_marker_cli_ini(project: FakeProject, args, memory, seconds):
    project.pytester.makeini(
        "[pytest]\nprm_memory_budget = 1 GiB\nprm_time_budget = 60\n"
        "prm_stage_runner = tests.plugin_support.fake_runner:make_runner\n"
    )
    project.pytester.makepyfile(test_prec=PRECEDENCE_TESTS.format(memory=memory, seconds=seconds))
    result = project.pytester.runpytest(*args)
    result.assert_outcomes(passed=2)


def test_cli_budget_overrides_the_spec_stage_budget(project: FakeProject):
    project.spec(_budget_spec(memory="100 MiB"))
    project.behave(fidelity={"allocate_mib": 200})
    result = project.pytester.runpytest("--prm-memory-budget=1GiB", "-k", "budget")
    result.assert_outcomes(passed=7, deselected=7)


def test_bad_marker_value_is_one_readable_line(project: FakeProject):
    project.pytester.makepyfile(
        test_bad="""
import pytest

@pytest.mark.prm_budget(memory="lots")
def test_x(prm_budget):
    pass
"""
    )
    result = project.pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*BudgetError: @pytest.mark.prm_budget(memory=...): cannot parse memory budget 'lots'*"]
    )
