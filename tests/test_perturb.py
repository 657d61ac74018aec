import pytest
import torch

from prm_check.errors import CurvatureError, DataError
from prm_check.perturb import (
    cell_seed,
    entry_masks,
    perturbed,
    reference_scales,
    state_digest,
)
from tests.conftest import make_tiny_opt


def _params(model):
    return dict(model.named_parameters())


def test_noise_only_on_group_entries_and_restored_bit_exactly():
    model = make_tiny_opt(seed=1)
    params = _params(model)
    name = "model.decoder.layers.0.fc1.weight"
    masks = entry_masks(
        params, [{name: ((3,),)}, {name: ((5,),), "model.decoder.layers.0.fc1.bias": ((5,),)}]
    )
    scales = reference_scales(params, masks, "tensor")
    before = {k: v.detach().clone() for k, v in params.items()}
    digest = state_digest(params)
    with perturbed(model, masks, scales, alpha=0.5, seed=7) as inj:
        changed = params[name].detach() != before[name]
        assert changed[3].all() and changed[5].all()
        assert not changed[[0, 1, 2, 4]].any()
        others = [k for k in params if k not in masks]
        assert all(torch.equal(params[k], before[k]) for k in others)
        assert inj.num_entries == 2 * params[name].shape[1] + 1
        assert inj.noise_norm > 0
    assert state_digest(params) == digest


def test_restored_even_when_the_body_raises():
    model = make_tiny_opt(seed=2)
    params = _params(model)
    masks = entry_masks(params, [{"model.decoder.layers.0.fc2.weight": ((0,),)}])
    digest = state_digest(params)
    with (
        pytest.raises(RuntimeError),
        perturbed(model, masks, reference_scales(params, masks), 1.0, 1),
    ):
        raise RuntimeError("boom")
    assert state_digest(params) == digest


def test_same_seed_same_noise_and_norm_scales_with_alpha():
    model = make_tiny_opt(seed=3)
    params = _params(model)
    masks = entry_masks(params, [{"model.decoder.layers.0.fc1.weight": ((1,),)}])
    scales = reference_scales(params, masks)
    with perturbed(model, masks, scales, 0.1, 11) as a:
        w1 = params["model.decoder.layers.0.fc1.weight"].detach().clone()
    with perturbed(model, masks, scales, 0.1, 11):
        w2 = params["model.decoder.layers.0.fc1.weight"].detach().clone()
    with perturbed(model, masks, scales, 0.2, 11) as b:
        pass
    assert torch.equal(w1, w2)
    assert b.noise_norm == pytest.approx(2 * a.noise_norm, rel=1e-5)


def test_row_scale_and_errors():
    model = make_tiny_opt(seed=4)
    params = _params(model)
    s = reference_scales(params, ["model.decoder.layers.0.fc1.weight"], "row")
    assert s["model.decoder.layers.0.fc1.weight"].shape == (16, 1)
    with pytest.raises(DataError):
        reference_scales(params, ["nope"], "tensor")
    with pytest.raises(CurvatureError, match="nope"):
        entry_masks(params, [{"nope": ((0,),)}])
    assert cell_seed("Wsens", 0.1, 0) != cell_seed("Wsens", 0.1, 1)
