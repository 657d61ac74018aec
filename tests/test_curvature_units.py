"""Units, per-unit reductions and the feature table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prm_check.curvature import (
    HessianOperator,
    UnitFeatures,
    compute_unit_features,
    enumerate_units,
)
from prm_check.curvature.units import reduce_per_unit
from prm_check.errors import CurvatureError
from tests.test_curvature_operator import ragged, tiny


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["opt", "gpt2"])
@pytest.mark.parametrize("granularity", ["tensor", "neuron", "head"])
def test_reductions_sum_to_the_whole_over_covered_entries(kind, granularity):
    model = tiny(kind, 0)
    units = enumerate_units(model, granularity)
    named = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    covered = {n: torch.zeros_like(t, dtype=torch.bool) for n, t in named.items()}
    for u in units:
        for name, blocks in u.slices.items():
            for idx in blocks:
                assert not covered[name][idx].any(), f"{u.id} overlaps another unit"
                covered[name][idx] = True
    whole = sum(float(t[covered[n]].double().sum()) for n, t in named.items())
    assert reduce_per_unit(units, named).sum() == pytest.approx(whole, rel=1e-10)
    if granularity == "tensor":
        assert all(c.all() for c in covered.values())


def test_unit_ids_follow_the_convention():
    opt = {u.id: u for u in enumerate_units(tiny("opt", 0), "neuron")}
    u = opt["model.decoder.layers.0.fc1[3]"]
    assert u.slices == {
        "model.decoder.layers.0.fc1.weight": ((3, slice(None)),),
        "model.decoder.layers.0.fc1.bias": ((3,),),
    }
    gpt = {u.id: u for u in enumerate_units(tiny("gpt2", 0), "neuron")}
    assert gpt["transformer.h.0.mlp.c_fc[2]"].slices["transformer.h.0.mlp.c_fc.weight"] == (
        (slice(None), 2),
    )
    heads = [u.id for u in enumerate_units(tiny("opt", 0), "head")]
    assert heads == [
        "model.decoder.layers.0.self_attn.head[0]",
        "model.decoder.layers.0.self_attn.head[1]",
    ]
    head1 = enumerate_units(tiny("gpt2", 0), "head")[1]
    assert head1.slices["transformer.h.0.attn.c_attn.weight"] == tuple(
        (slice(None), slice(o + 2, o + 4)) for o in (0, 4, 8)
    )
    with pytest.raises(CurvatureError, match="granularity"):
        enumerate_units(tiny("opt", 0), "layer")


def test_features_table_columns_se_and_csv_roundtrip(tmp_path):
    model = tiny("opt", 0)
    batches = ragged(0, (6, 4, 8, 5))
    uf = compute_unit_features(
        model,
        batches,
        loss_name="func",
        params="*layers.0.*",
        num_probes=8,
        probes_per_graph=4,
        max_tokens=12,
    )
    for col in (
        "hdiag_sum",
        "hdiag_sum_se",
        "hdiag_mean",
        "hdiag_max",
        "hdiag_q10",
        "hdiag_q50",
        "hdiag_q90",
        "obd",
        "obd_se",
        "fisher_sum",
        "grad_norm",
        "radial_grad",
        "weight_rms",
        "act_sparsity",
        "n_params",
    ):
        assert col in uf.columns
    # radial_grad is g·w per unit: neuron rows + biases of layer 0's Linears cover them all
    op = HessianOperator(model, batches, "*layers.0.*")
    w = torch.cat([p.detach().reshape(-1) for p in op.params])
    covered = [i for i, n in enumerate(op.param_names) if "layer_norm" not in n]
    mask = torch.cat([torch.full((p.numel(),), i in covered) for i, p in enumerate(op.params)])
    expected = float((op.gradient() * w)[mask].sum())
    assert float(uf.column("radial_grad").sum()) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert uf.meta["data"] == "real" and uf.meta["loss"] == "func" and uf.meta["probe_groups"] == 2
    fc1 = [i for i, u in enumerate(uf.unit_ids) if ".fc1[" in u]
    assert np.isfinite(uf.column("hdiag_sum_se")[fc1]).all()
    # ReLU fc1: sparsity is the fraction of exact zeros after the activation
    assert ((uf.column("act_sparsity")[fc1] >= 0) & (uf.column("act_sparsity")[fc1] <= 1)).all()
    q = uf.values[:, [uf.columns.index(c) for c in ("hdiag_q10", "hdiag_q50", "hdiag_q90")]]
    assert (np.diff(q, axis=1) >= 0).all()
    uf.to_csv(tmp_path / "u.csv")
    back = UnitFeatures.from_csv(tmp_path / "u.csv")
    assert back.unit_ids == uf.unit_ids and back.meta == uf.meta
    np.testing.assert_array_equal(back.values, uf.values)
    again = UnitFeatures.from_dict(uf.to_dict())
    np.testing.assert_array_equal(again.values, uf.values)


def test_relu_sparsity_matches_manual_count():
    model = tiny("opt", 1)
    batches = ragged(1, (7, 5))
    uf = compute_unit_features(
        model, batches, loss_name="f", params="*fc1*", num_probes=2, fisher=False
    )
    acts = []
    layer = model.model.decoder.layers[0]
    h = layer.fc1.register_forward_hook(lambda m, i, o: acts.append(torch.relu(o)))
    with torch.no_grad():
        for b in batches:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    h.remove()
    valid = torch.cat([b.attention_mask.reshape(-1).bool() for b in batches])
    a = torch.cat([x.reshape(-1, x.shape[-1]) for x in acts])[valid]
    manual = (a == 0).double().mean(dim=0).numpy()
    np.testing.assert_allclose(uf.column("act_sparsity"), manual, atol=1e-12)


def test_tensor_units_get_top_block_eigenvalue():
    model = tiny("opt", 0)
    batches = ragged(0, (6, 4))
    uf = compute_unit_features(
        model,
        batches,
        loss_name="f",
        granularity="tensor",
        params="*layers.0.fc*",
        num_probes=4,
        fisher=False,
    )
    assert uf.unit_ids == ["model.decoder.layers.0.fc1", "model.decoder.layers.0.fc2"]
    assert np.isfinite(uf.column("top_eig")).all()
