"""Planner: meta-device counts, per-term predictions, micro-batch choice, typed refusals."""

from __future__ import annotations

import argparse
import json

import pytest

from prm_check.budget import planner
from prm_check.budget.plan_cli import add_plan_parser, plan_table
from prm_check.budget.planner import (
    KNOWN_SHAPES,
    activation_elements,
    fit,
    plan,
    predict_peak,
    predict_terms,
    resolve_shape,
)
from prm_check.errors import BudgetError

# Parameter counts of the real checkpoints (tied embeddings counted once).
EXPECTED_PARAMS = {
    "builtin:tiny-opt": 1_088_512,
    "opt-125m": 125_239_296,
    "opt-350m": 331_196_416,
    "opt-1.3b": 1_315_758_080,
    "opt-2.7b": 2_651_596_800,
}


@pytest.fixture(scope="module")
def shapes():
    return {name: resolve_shape(name) for name in KNOWN_SHAPES}


def test_parameter_counts_on_meta_device(shapes):
    assert {k: s.n_params for k, s in shapes.items()} == EXPECTED_PARAMS


def test_local_folder_config_is_planned(tmp_path, shapes):
    cfg = {"model_type": "opt", "architectures": ["OPTForCausalLM"],
           **KNOWN_SHAPES["builtin:tiny-opt"]}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shape = resolve_shape(str(tmp_path))
    assert shape.n_params == EXPECTED_PARAMS["builtin:tiny-opt"]
    assert (shape.hidden, shape.layers, shape.heads, shape.ffn) == (128, 4, 4, 512)
    with pytest.raises(BudgetError, match="config.json"):
        resolve_shape(str(tmp_path / "missing"))


def test_terms_sum_to_peak_and_scale_with_dtype(shapes):
    s = shapes["opt-125m"]
    t32 = predict_terms(s, "hvp_rev", 2, 128)
    t16 = predict_terms(s, "hvp_rev", 2, 128, dtype="bfloat16")
    assert sum(t32.values()) == pytest.approx(predict_peak(s, "hvp_rev", 2, 128))
    assert t32["weights"] == 4 * s.n_params and t16["weights"] == 2 * s.n_params
    assert t16["activations"] == pytest.approx(t32["activations"] / 2)
    lz = predict_terms(s, "lanczos", 2, 128, m=10)
    assert lz["krylov basis"] == 10 * 4 * s.n_params
    a_l1, a_v1 = activation_elements(s, 1, 128)
    a_l4, a_v4 = activation_elements(s, 4, 128)
    assert (a_l4, a_v4) == (4 * a_l1, 4 * a_v1)


def test_methods_order_and_monotone_in_batch(shapes):
    s = shapes["opt-125m"]
    g, r, f = (predict_peak(s, m, 4, 128) for m in ("gradient", "hvp_rev", "hvp_fwd"))
    assert g < r and g < f
    peaks = [predict_peak(s, "hvp_rev", b, 128) for b in (1, 2, 4, 8)]
    assert peaks == sorted(peaks)


def test_plan_picks_the_largest_micro_batch_that_fits(shapes):
    s = shapes["opt-125m"]
    budget = int(predict_peak(s, "hvp_rev", 3, 128)) + 1
    p = plan(s, 8, 128, budget, method="hvp_rev")
    assert (p.fits, p.micro_batch, p.n_micro) == (True, 3, 3)
    assert p.predicted_peak <= budget < predict_peak(s, "hvp_rev", 4, 128)
    assert plan(s, 8, 128, None).micro_batch == 8


def test_plan_says_which_term_is_too_big(shapes):
    p = plan(shapes["opt-1.3b"], 8, 128, "4GiB")
    assert not p.fits and p.micro_batch is None
    assert "size-of-model terms" in p.reason and "budget >=" in p.reason
    long_seq = plan(shapes["opt-125m"], 1, 2048, "5GiB")
    assert not long_seq.fits and "activations" in long_seq.reason
    assert "shorten sequences to <=" in long_seq.reason
    s_max = int(long_seq.reason.split("shorten sequences to <= ")[1].split()[0])
    assert plan(shapes["opt-125m"], 1, s_max, "5GiB").fits
    assert not plan(shapes["opt-125m"], 1, s_max + 1, "5GiB").fits


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": "-1GiB"}, "negative"),
        ({"budget": "lots"}, "cannot parse"),
        ({"method": "newton"}, "method"),
        ({"dtype": "int3"}, "dtype"),
        ({"batch": 0}, "batch"),
    ],
)
def test_plan_bad_input_is_typed(shapes, kwargs, match):
    args = {"batch": 2, "seq": 64, "budget": "4GiB", **kwargs}
    with pytest.raises(BudgetError, match=match):
        plan(shapes["builtin:tiny-opt"], **args)


def test_fit_recovers_known_coefficients(shapes, monkeypatch):
    monkeypatch.setattr(planner, "resolve_shape", lambda name: shapes[name])
    true = {"gradient": (1.2, 0.9, 3.0), "hvp_rev": (3.5, 2.5, 6.0)}
    rows = []
    for name, batches in (("builtin:tiny-opt", (1, 4, 16)), ("opt-125m", (1, 2, 4))):
        s = shapes[name]
        for method, (a, bl, bv) in true.items():
            for b in batches:
                a_l, a_v = activation_elements(s, b, 128)
                peak = planner.RUNTIME_BYTES + 4 * s.n_params * (1 + a) + 4 * (bl * a_l + bv * a_v)
                rows.append({"model": name, "method": method, "batch": b, "seq": 128,
                             "peak_rss_bytes": peak})  # fmt: skip
    cal = fit(rows)
    for method, (a, bl, bv) in true.items():
        assert cal.alpha[method] == pytest.approx(a, rel=1e-6)
        assert cal.beta_layers[method] == pytest.approx(bl, rel=1e-6)
        assert cal.beta_logits[method] == pytest.approx(bv, rel=1e-6)


def test_plan_table_and_cli_parser(capsys):
    text = plan_table("opt-2.7b", 4, 256, "4GiB", time_probe=True)
    for label in ("parameters", "weights", "gradients", "activations", "HVP overhead",
                  "predicted peak per step", "chosen micro-batch", "time per probe"):  # fmt: skip
        assert label in text
    assert "2,651,596,800" in text and "cannot fit" in text
    assert "skipped: the step does not fit" in text
    parser = argparse.ArgumentParser(prog="prm-check")
    add_plan_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["plan", "--model", "builtin:tiny-opt", "--batch", "4",
                              "--seq", "64", "--budget", "4GiB", "--no-timing"])  # fmt: skip
    assert args.func(args) == 0
    assert "fits in 4.0 GiB" in capsys.readouterr().out
    bad = parser.parse_args(["plan", "--model", "opt-1.3b", "--batch", "4", "--seq", "64",
                             "--budget", "4GiB", "--no-timing"])  # fmt: skip
    assert bad.func(bad) == 1
    garbage = parser.parse_args(["plan", "--model", "opt-125m", "--batch", "4", "--seq", "64",
                                 "--budget", "4 parsecs"])  # fmt: skip
    assert garbage.func(garbage) == 2
    assert "cannot parse memory budget" in capsys.readouterr().out


def test_plan_table_measures_probe_time_where_the_model_fits():
    text = plan_table("builtin:tiny-opt", 2, 32, "2GiB", method="gradient")
    assert "measured: 1 gradient step on 2x32 in a guarded child" in text


@pytest.mark.parametrize("engine", ["operator", "standin"])
def test_calibration_steps_run_every_method(engine):
    from prm_check.budget.steps import METHODS, run_step

    cfg = {**KNOWN_SHAPES["builtin:tiny-opt"], "hidden_size": 16, "ffn_dim": 32,
           "num_hidden_layers": 1, "num_attention_heads": 2, "word_embed_proj_dim": 16,
           "vocab_size": 64}  # fmt: skip
    methods = METHODS if engine == "standin" else ("gradient", "lanczos")  # import is slow
    for method in methods:
        out = run_step(cfg, method, 2, 8, m=3, engine=engine)
        assert out["peak_rss_bytes"] >= out["start_rss_bytes"] > 0 and out["wall_s"] > 0
