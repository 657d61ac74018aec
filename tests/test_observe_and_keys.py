"""Checks read their observed value from results.json; stage cache keys follow their inputs."""

import dataclasses

import pytest

from prm_check import pipeline
from prm_check.errors import SpecError
from prm_check.observe import evaluate_check, observed_value
from prm_check.pipeline import baseline_family, stage_keys, unit_module
from prm_check.spec import BASELINES, default_spec
from prm_check.spec.checks import CheckSpec

RESULTS = {
    "sweep": {
        "summary": [
            {
                "group": "Wsens",
                "level": 0.3,
                "metric": "delta_auc_loss",
                "mean": -0.02,
                "ci_low": -0.03,
                "ci_high": 0.001,
            },
            {"group": "control", "level": 0.3, "metric": "delta_auc_loss", "mean": -0.005},
            {"group": "Wfunc", "level": 0.3, "metric": "delta_auc_loss", "mean": -0.01},
        ],
        "versus_control": [
            {
                "group": "Wsens",
                "level": 0.3,
                "metric": "delta_auc_loss",
                "diff": -0.015,
                "ci_low": -0.02,
                "ci_high": -0.004,
                "basis": "equal_alpha",
            },
        ],
    },
    "partition": {
        "planted_eval": [
            {
                "name": "obd",
                "kind": "hessian_rule",
                "roc_auc": 0.85,
                "ci_low": 0.81,
                "ci_high": 0.89,
                "wsens": [{"q": 0.05, "lift": 4.0, "precision": 0.4, "recall": 0.2}],
            },
            {"name": "weight_norm_row", "kind": "baseline", "roc_auc": 0.6, "wsens": []},
            {"name": "weight_delta", "kind": "oracle", "roc_auc": 1.0, "wsens": []},
        ]
    },
}


def test_observed_values_come_from_the_right_rows():
    c = CheckSpec(group="Wsens", level=0.3, metric="delta_auc_loss", op="<", value=0.0)
    assert observed_value(RESULTS, c, "obd") == -0.02
    v = CheckSpec(group="Wsens", level=0.3, metric="delta_auc_loss_vs_control", op="<", value=0)
    assert observed_value(RESULTS, v, "obd") == -0.015
    w = CheckSpec(group="Wfunc", level=0.3, metric="delta_auc_loss_vs_control", op="<", value=0)
    assert observed_value(RESULTS, w, "obd") == pytest.approx(-0.005)
    m = CheckSpec(group="planted", metric="partition_auc_margin", op=">", value=0)
    assert observed_value(RESULTS, m, "obd") == pytest.approx(0.25)  # oracle excluded
    lift = CheckSpec(group="planted", level=0.05, metric="partition_lift", op=">=", value=2)
    assert observed_value(RESULTS, lift, "obd") == 4.0


def test_checks_on_a_ci_bound_read_it_and_name_it():
    c = CheckSpec(
        group="Wsens", level=0.3, metric="delta_auc_loss", op="<", value=0.0, stat="ci_high"
    )
    assert c.id == "Wsens-0.3-delta_auc_loss-ci_high"
    assert c.describe() == "ci_high(delta_auc_loss) < 0.0"
    row = evaluate_check(RESULTS, c, "obd")  # mean -0.02 < 0, but the CI reaches +0.001
    assert row["observed"] == 0.001 and row["passed"] is False and row["stat"] == "ci_high"
    v = CheckSpec(
        group="Wsens", level=0.3, metric="delta_auc_loss_vs_control", op="<", value=0,
        stat="ci_high",
    )  # fmt: skip
    assert observed_value(RESULTS, v, "obd") == -0.004
    a = CheckSpec(group="planted", metric="partition_auc", op=">=", value=0.8, stat="ci_low")
    assert observed_value(RESULTS, a, "obd") == 0.81


@pytest.mark.parametrize(
    "kw",
    [
        {"group": "planted", "metric": "partition_auc_margin"},
        {"group": "planted", "metric": "partition_lift", "level": 0.05},
        {"group": "Wfunc", "metric": "delta_auc_loss_vs_control", "level": 0.3},
    ],
)
def test_a_ci_bound_of_a_metric_without_a_ci_is_a_spec_error(kw):
    with pytest.raises(SpecError, match="stat"):
        CheckSpec(op="<", value=0.0, stat="ci_high", **kw)


def test_missing_values_fail_the_check_with_a_reason():
    c = CheckSpec(group="Wboth", level=0.3, metric="delta_auc_loss", op="<", value=0.0)
    row = evaluate_check(RESULTS, c, "obd")
    assert row["passed"] is False and row["observed"] is None
    assert "Wboth" in row["error"]
    ok = evaluate_check(
        RESULTS,
        CheckSpec(group="Wsens", level=0.3, metric="delta_auc_loss", op="<", value=0.0),
        "obd",
    )
    assert ok["passed"] is True and ok["error"] is None


def test_stage_keys_change_only_downstream_of_an_edit():
    spec = default_spec()
    base = stage_keys(spec)
    edited = dataclasses.replace(spec, sweep=dataclasses.replace(spec.sweep, draws=5))
    k = stage_keys(edited)
    for stage in ("assets", "curvature", "partition", "embedding"):
        assert k[stage] == base[stage], stage
    for stage in ("baseline", "sweep", "fidelity"):
        assert k[stage] != base[stage], stage
    curv = dataclasses.replace(spec, curvature=dataclasses.replace(spec.curvature, probes=12))
    k = stage_keys(curv)
    assert k["assets"] == base["assets"] and k["curvature"] != base["curvature"]
    assert k["partition"] != base["partition"] and k["sweep"] != base["sweep"]


def test_a_stage_code_version_bump_reaches_only_that_stage_and_its_downstream(monkeypatch):
    assert set(pipeline.CODE_VERSIONS) == set(pipeline.STAGES)
    spec = default_spec()
    base = stage_keys(spec)
    monkeypatch.setitem(pipeline.CODE_VERSIONS, "partition", "bumped")
    k = stage_keys(spec)
    for stage in ("assets", "baseline", "curvature"):
        assert k[stage] == base[stage], stage
    for stage in ("partition", "sweep", "embedding", "fidelity"):
        assert k[stage] != base[stage], stage


def test_unit_module():
    assert unit_module("model.decoder.layers.1.fc1[17]") == "model.decoder.layers.1.fc1"
    assert (
        unit_module("model.decoder.layers.0.self_attn.head[2]")
        == "model.decoder.layers.0.self_attn"
    )
    assert unit_module("model.decoder.layers.0.fc2") == "model.decoder.layers.0.fc2"


def test_every_baseline_score_belongs_to_a_spec_baseline():
    names = ["weight_norm_row", "weight_norm_bias", "weight_norm_col", "grad_norm"]
    names += ["radial_grad", "random", "weight_delta"]
    assert {baseline_family(n) for n in names} == set(BASELINES)
