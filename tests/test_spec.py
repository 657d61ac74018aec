"""Experiment spec: shipped files load, round trips hold, every bad field is named."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prm_check.errors import SpecError
from prm_check.spec import (
    ALL_ATTACKS,
    BASELINES,
    PROFILE_OVERRIDES,
    STAGES,
    SWEEP_GROUPS,
    BudgetSpec,
    CheckSpec,
    ExperimentSpec,
    ModelSpec,
    SpecFileError,
    StageBudget,
    SweepSpec,
    apply_profile,
    default_profile,
    default_spec,
    find_spec_files,
    load_spec,
    spec_from_dict,
    spec_hash,
    spec_to_dict,
    spec_to_toml,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the packaged parser, as prm_check.spec.io uses
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def base() -> dict:
    return spec_to_dict(default_spec())


def edited(path: str, value: object) -> dict:
    """The default spec's dict with one dotted key (``a.b``, ``checks.0.op``) set."""
    d = base()
    *parents, last = path.split(".")
    node = d
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


# ---- shipped files --------------------------------------------------------------------------


def test_every_shipped_spec_loads_in_both_profiles():
    files = find_spec_files(EXPERIMENTS)
    assert {p.name for p in files} >= {"default.prm.toml", "full.prm.toml"}
    for path in files:
        spec = load_spec(path)
        assert spec.source_path == str(path)
        assert apply_profile(spec, "quick").profile == "quick"


def test_default_file_is_the_builtin_experiment():
    spec = load_spec(EXPERIMENTS / "default.prm.toml")
    assert spec == default_spec()
    assert spec.model.is_planted
    assert "planted-partition_auc" in [c.id for c in spec.checks]


def test_full_file_is_the_unplanted_variant_without_planted_checks():
    spec = load_spec(EXPERIMENTS / "full.prm.toml")
    assert spec.model.variant == "full" and not spec.model.is_planted
    assert spec.checks and all(c.group != "planted" for c in spec.checks)
    d = default_spec()
    assert spec.sweep == d.sweep and spec.curvature == d.curvature and spec.data == d.data


# ---- round trips ----------------------------------------------------------------------------


def test_default_round_trips_through_dict_json_and_toml():
    spec = default_spec()
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec
    assert spec_from_dict(tomllib.loads(spec_to_toml(spec))) == spec
    assert hash(spec) == hash(spec_from_dict(spec_to_dict(spec)))


def test_toml_dump_keeps_none_budgets_and_profiles(tmp_path):
    spec = dataclasses.replace(
        default_spec(),
        budgets=BudgetSpec(memory=None, seconds="90s", stages={"sweep": {"seconds": "1h"}}),
        profiles={"quick": {"sweep": {"draws": 1, "levels": [0.0, 0.3]}}},
    )
    path = tmp_path / "x.prm.toml"
    path.write_text(spec_to_toml(spec))
    assert load_spec(path) == spec


@st.composite
def specs(draw) -> ExperimentSpec:
    """Random valid specs, checks drawn to fit their sweep."""
    levels = sorted(draw(st.lists(st.floats(0, 100), min_size=1, max_size=5, unique=True)))
    groups = draw(st.lists(st.sampled_from(SWEEP_GROUPS), min_size=1, unique=True))
    attacks = draw(st.lists(st.sampled_from(ALL_ATTACKS), min_size=1, unique=True))
    metrics = ["delta_ppl", "rel_delta_ppl", *(f"delta_auc_{a}" for a in attacks)]
    if "control" in groups:
        metrics += [f"delta_auc_{a}_vs_control" for a in attacks]
    checks = {}
    for _ in range(draw(st.integers(0, 3))):
        group = draw(st.sampled_from([g for g in groups if g != "control"] or groups))
        ok = [m for m in metrics if not (group == "control" and m.endswith("_vs_control"))]
        check = CheckSpec(
            group=group,
            level=draw(st.sampled_from(levels)),
            metric=draw(st.sampled_from(ok)),
            op=draw(st.sampled_from(["<", "<=", ">", ">="])),
            value=draw(st.floats(-1e6, 1e6)),
        )
        checks[check.id] = check
    source = draw(
        st.one_of(
            st.just("builtin:tiny-opt"),
            st.text(
                st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
            ).filter(lambda s: s == s.strip() and not s.startswith("builtin:")),
        )
    )
    budget = st.sampled_from([None, "2 GiB", "512MB", "1.5G"])
    seconds = st.sampled_from([None, "90s", "10 min", "1h"])
    stages = draw(
        st.dictionaries(
            st.sampled_from(STAGES), st.builds(StageBudget, memory=budget, seconds=seconds)
        )
    )
    return ExperimentSpec(
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
        model=ModelSpec(source=source, variant=draw(st.sampled_from(["planted", "full"]))),
        data={
            "max_length": draw(st.integers(8, 8192)),
            "eval_records": draw(st.none() | st.integers(2, 10_000)),
        },
        curvature={
            "probes": draw(st.integers(1, 4096)),
            "fisher": draw(st.booleans()),
            "params": draw(st.lists(st.sampled_from(["a.*", "b.?", "c"]), min_size=1, unique=True)),
        },
        partition={
            "q": draw(st.floats(0.001, 0.999)),
            "baselines": draw(st.lists(st.sampled_from(BASELINES), min_size=1, unique=True)),
        },
        sweep=SweepSpec(
            groups=groups, levels=levels, attacks=attacks, draws=draw(st.integers(1, 9))
        ),
        budgets=BudgetSpec(memory=draw(budget), seconds=draw(seconds), stages=stages),
        checks=tuple(checks.values()),
        profile=draw(st.sampled_from(["full", "quick"])),
    )


@given(specs())
def test_random_specs_round_trip(spec):
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec
    again = spec_from_dict(tomllib.loads(spec_to_toml(spec)))
    assert again == spec
    assert spec_hash(again) == spec_hash(spec)


@given(specs())
def test_quick_profile_never_grows_a_random_spec(spec):
    spec = dataclasses.replace(spec, profile="full")
    quick = apply_profile(spec, "quick")
    assert quick.curvature.probes <= spec.curvature.probes
    assert quick.sweep.draws <= spec.sweep.draws
    assert set(quick.sweep.levels) <= set(spec.sweep.levels)
    assert all(c.level in quick.sweep.levels for c in quick.checks)


# ---- malformed specs ------------------------------------------------------------------------

BAD = [
    # (dotted key to set, value, field named in the error)
    ("nmae", "x", "nmae"),
    ("sweep.levles", [0.1], "sweep.levles"),
    ("budgets.stages.curvature.memroy", "1 GiB", "budgets.stages.curvature.memroy"),
    ("budgets.stages.curvatur", {"memory": "1 GiB"}, "budgets.stages.curvatur"),
    ("checks.0.oper", "<", "checks[0].oper"),
    ("profiles", {"quick": {"sweep": {"drawz": 1}}}, "profiles.quick.sweep.drawz"),
    ("profiles", {"full": {}}, "profiles.full"),
    ("profiles", {"quick": {"model": {"seed": 1}}}, "profiles.quick.model"),
    ("curvature.probes", "16", "curvature.probes"),
    ("curvature.probes", 16.0, "curvature.probes"),
    ("curvature.probes", 0, "curvature.probes"),
    ("curvature.fisher", 1, "curvature.fisher"),
    ("curvature.params", "model.*", "curvature.params"),
    ("curvature.granularity", "row", "curvature.granularity"),
    ("data.eval_records", 1, "data.eval_records"),
    ("sweep", [1], "sweep"),
    ("sweep.levels", [0.0, -0.1], "sweep.levels[1]"),
    ("sweep.levels", [0.0, 0.3, 0.1], "sweep.levels[2]"),
    ("sweep.levels", [0.0, 0.1, 0.1], "sweep.levels[2]"),
    ("sweep.levels", [0.0, float("nan")], "sweep.levels[1]"),
    ("sweep.draws", 0, "sweep.draws"),
    ("sweep.groups", [], "sweep.groups"),
    ("sweep.groups", ["Wsens", "Wsense"], "sweep.groups[1]"),
    ("sweep.attacks", ["loss", "loss"], "sweep.attacks[1]"),
    ("partition.q", 0.0, "partition.q"),
    ("partition.q", 1.0, "partition.q"),
    ("partition.q", True, "partition.q"),
    ("partition.rule", "eval(1)", "partition.rule"),
    ("model.source", "builtin:tiny-gpt", "model.source"),
    ("model.variant", "half", "model.variant"),
    ("budgets.memory", "2 gigs", "budgets.memory"),
    ("budgets.memory", "0 GiB", "budgets.memory"),
    ("budgets.seconds", 90, "budgets.seconds"),
    ("budgets.stages.curvature.memory", "2 gigs", "budgets.stages.curvature.memory"),
    ("checks.0.level", 0.2, "checks[0].level"),
    ("checks.0.metric", "delta_auc_lss", "checks[0].metric"),
    ("checks.0.metric", "__import__('os').system('x')", "checks[0].metric"),
    ("checks.0.op", "=<", "checks[0].op"),
    ("checks.0.op", "==", "checks[0].op"),
    ("checks.0.group", "Wnobody", "checks[0].group"),
    ("checks.0.value", "0", "checks[0].value"),
    ("checks.0.name", "has space", "checks[0].name"),
    ("checks.1.group", "control", "checks[1].group"),  # control vs control
    ("checks.3.level", 0.1, "checks[3].level"),  # partition_auc takes no level
    ("checks.2.metric", "partition_lift", "checks[2].metric"),  # partition metric, sweep group
    ("checks.1", {"group": "Wsens", "level": 0.3, "metric": "delta_auc_loss", "op": "<="}, None),
]


@pytest.mark.parametrize(("key", "value", "field"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_malformed_spec_names_field_and_value(key, value, field):
    with pytest.raises(SpecError) as info:
        spec_from_dict(edited(key, value))
    err = info.value
    if field is not None:
        assert err.field == field
        assert repr(field) in str(err)
        assert repr(err.value) in str(err) and err.expected in str(err)


def test_missing_required_check_key_is_named():
    d = base()
    del d["checks"][0]["op"]
    with pytest.raises(SpecError, match=r"'checks\[0\]\.op': got <missing>"):
        spec_from_dict(d)


def test_did_you_mean_suggestions():
    with pytest.raises(SpecError, match="did you mean 'levels'"):
        spec_from_dict(edited("sweep.levles", [0.1]))
    with pytest.raises(SpecError, match="did you mean 'Wsens'"):
        spec_from_dict(edited("sweep.groups", ["Wsense"]))


def test_cross_section_rules():
    no_control = edited("sweep.groups", ["Wfunc", "Wsens", "Wboth", "Wnone"])
    with pytest.raises(SpecError) as info:
        spec_from_dict(no_control)
    assert info.value.field == "checks[1].metric"  # delta_auc_loss_vs_control
    with pytest.raises(SpecError) as info:
        spec_from_dict(edited("model.variant", "full"))
    assert info.value.field == "checks[3].group"  # planted check on an unplanted model
    with pytest.raises(SpecError) as info:
        spec_from_dict(edited("sweep.attacks", ["zlib"]))
    assert info.value.field == "checks[0].metric"
    dup = base()
    dup["checks"].append(dict(dup["checks"][0]))
    with pytest.raises(SpecError, match="unique id"):
        spec_from_dict(dup)


def test_python_built_specs_are_validated_and_normalised():
    with pytest.raises(SpecError) as info:
        SweepSpec(levels=[0.1, 0.0])
    assert info.value.field == "levels[1]"
    sweep = SweepSpec(levels=[0, 1])
    assert sweep.levels == (0.0, 1.0) and isinstance(sweep.levels, tuple)
    with pytest.raises(SpecError):
        dataclasses.replace(default_spec(), name="bad name")
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_spec().name = "x"  # type: ignore[misc]


# ---- files ----------------------------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.prm.toml"
    path.write_text('name = "x"\n\n[sweep]\ndraws = = 3\n')
    with pytest.raises(SpecFileError) as info:
        load_spec(path)
    assert info.value.line == 4
    assert f"{path}:4" in str(info.value)
    assert isinstance(info.value, SpecError)


def test_invalid_field_in_file_names_file_field_and_line(tmp_path):
    path = tmp_path / "bad.prm.toml"
    text = (EXPERIMENTS / "default.prm.toml").read_text()
    path.write_text(text.replace('op = "<="', 'op = "=<"'))
    with pytest.raises(SpecFileError) as info:
        load_spec(path)
    err = info.value
    assert err.field == "checks[2].op" and err.value == "=<"
    assert err.line is not None and text.splitlines()[err.line - 1].startswith("op")
    assert str(path) in str(err) and "'checks[2].op'" in str(err)
    levels = text.replace("levels = [0.0, 0.01", "levels = [0.0, -0.01")
    path.write_text(levels)
    with pytest.raises(SpecFileError, match=r"sweep\.levels\[1\]") as info:
        load_spec(path)
    assert text.splitlines()[info.value.line - 1].startswith("levels")


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecFileError, match="nope.prm.toml"):
        load_spec(tmp_path / "nope.prm.toml")


def test_spec_file_error_pickles():
    err = SpecFileError("a.prm.toml", "sweep.draws", 0, "an integer", 3)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.line == 3


def test_unnamed_file_is_named_after_itself(tmp_path):
    path = tmp_path / "my-exp.prm.toml"
    path.write_text("[sweep]\ndraws = 4\n")
    spec = load_spec(path)
    assert spec.name == "my-exp" and spec.sweep.draws == 4


def test_find_spec_files_skips_hidden_and_venv(tmp_path):
    for rel in ["a.prm.toml", "sub/b.prm.toml", ".venv/c.prm.toml", "sub/d.toml"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert find_spec_files(tmp_path) == [tmp_path / "a.prm.toml", tmp_path / "sub/b.prm.toml"]
    assert find_spec_files(tmp_path / "a.prm.toml") == [tmp_path / "a.prm.toml"]


# ---- profiles -------------------------------------------------------------------------------


def test_quick_profile_really_shrinks():
    full = default_spec()
    quick = apply_profile(full, "quick")
    assert quick.profile == "quick"
    assert quick.curvature.probes < full.curvature.probes
    assert quick.sweep.draws < full.sweep.draws
    assert len(quick.sweep.levels) < len(full.sweep.levels)
    assert quick.data.eval_records is not None and full.data.eval_records is None
    assert quick.data.sens_score_records < full.data.sens_score_records
    assert quick.sweep.n_boot < full.sweep.n_boot
    # every level a check names survives, plus the lowest and highest
    assert quick.sweep.levels == (0.0, 0.01, 0.3)
    assert quick.model == full.model and quick.checks == full.checks
    for section, caps in PROFILE_OVERRIDES["quick"].items():
        for key in caps:
            assert getattr(quick.section(section), key) != getattr(full.section(section), key)


def test_profiles_idempotent_and_one_way():
    quick = apply_profile(default_spec(), "quick")
    assert apply_profile(quick, "quick") == quick
    assert apply_profile(default_spec(), "full") == default_spec()
    with pytest.raises(SpecError, match="profile"):
        apply_profile(quick, "full")
    with pytest.raises(SpecError, match="'profile'"):
        apply_profile(default_spec(), "fast")


def test_profile_table_in_spec_overrides_builtin_exactly(tmp_path):
    d = base()
    d["profiles"] = {"quick": {"sweep": {"draws": 1, "levels": [0.1]}, "curvature": {"probes": 8}}}
    spec = spec_from_dict(d)
    quick = apply_profile(spec, "quick")
    assert quick.sweep.draws == 1 and quick.curvature.probes == 8
    assert quick.sweep.levels == (0.01, 0.1, 0.3)  # 0.01 and 0.3 are named by checks
    assert quick.sweep.n_boot == 200  # built-in reduction still applies
    bad = copy.deepcopy(d)
    bad["profiles"]["quick"]["sweep"]["draws"] = 0
    with pytest.raises(SpecError) as info:
        spec_from_dict(bad)  # rejected at load time, not when CI first applies it
    assert info.value.field == "profiles.quick.sweep.draws"


def test_default_profile_follows_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert default_profile() == "full"
    monkeypatch.setenv("CI", "true")
    assert default_profile() == "quick"
    monkeypatch.setenv("CI", "0")
    assert default_profile() == "full"


# ---- hashing, checks, budgets, model --------------------------------------------------------


def test_spec_hash_stable_and_section_sensitive():
    spec = default_spec()
    code = (
        "from prm_check.spec import default_spec, spec_hash;"
        "s = default_spec(); print(spec_hash(s), spec_hash(s, 'curvature'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert out == [spec_hash(spec), spec_hash(spec, "curvature")]
    assert len(out[0]) == 64
    more = dataclasses.replace(spec, sweep=dataclasses.replace(spec.sweep, draws=5))
    assert spec_hash(more) != spec_hash(spec)
    assert spec_hash(more, "sweep") != spec_hash(spec, "sweep")
    assert spec_hash(more, "curvature") == spec_hash(spec, "curvature")
    assert spec_hash(more, ["model", "curvature"]) == spec_hash(spec, ("curvature", "model"))
    assert spec_hash(spec, "model") != spec_hash(spec, "data")
    assert spec_hash(load_spec(EXPERIMENTS / "default.prm.toml")) == spec_hash(spec)
    with pytest.raises(SpecError):
        spec_hash(spec, "sweeps")


def test_check_ids_and_evaluation_without_eval():
    c = CheckSpec(group="Wsens", level=0.1, metric="delta_auc_loss", op="<=", value=-0.05)
    assert c.id == "Wsens-0.1-delta_auc_loss"
    assert c.evaluate(-0.06) and c.evaluate(-0.05) and not c.evaluate(0.0)
    assert not c.evaluate(float("nan"))
    assert CheckSpec(group="Wsens", level=0.1, metric="delta_ppl", op=">", value=0).evaluate(1)
    assert not CheckSpec(group="Wsens", level=0.1, metric="delta_ppl", op="<", value=0).evaluate(0)
    named = CheckSpec(group="planted", metric="partition_auc", op=">=", value=0.8, name="auc")
    assert named.id == "auc" and named.describe() == "partition_auc >= 0.8"
    lift = CheckSpec(group="planted", level=0.05, metric="partition_lift", op=">=", value=2)
    assert lift.id == "planted-0.05-partition_lift"
    spec = dataclasses.replace(default_spec(), checks=(lift,))
    assert spec.checks == (lift,)
    with pytest.raises(SpecError) as info:
        dataclasses.replace(default_spec(), checks=(dataclasses.replace(lift, level=0.07),))
    assert info.value.field == "checks[0].level"


def test_budget_for_stage_inherits_run_wide_values():
    budgets = default_spec().budgets
    assert budgets.for_stage("curvature") == StageBudget(memory="2 GiB", seconds="30 min")
    assert budgets.for_stage("sweep") == StageBudget(memory="4 GiB", seconds="30 min")
    assert BudgetSpec(memory="none").memory is None
    with pytest.raises(SpecError):
        budgets.for_stage("hessian")


def test_model_paths_resolve_against_the_spec_folder(tmp_path):
    assert ModelSpec().local_path() is None and ModelSpec().builtin_name == "tiny-opt"
    local = ModelSpec(source="models/opt")
    assert not local.is_planted
    assert local.local_path(tmp_path) == tmp_path / "models/opt"
    assert ModelSpec(source="/abs/opt").local_path(tmp_path) == Path("/abs/opt")


def test_import_and_load_stay_light():
    code = (
        "import sys, prm_check.spec as s;"
        "s.load_spec('experiments/default.prm.toml');"
        "s.apply_profile(s.default_spec(), 'quick');"
        "heavy = [m for m in ('torch', 'numpy', 'transformers', 'scipy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""
