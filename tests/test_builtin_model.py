"""Built-in model: planted-set norm projection, cache key, atomic cache, miniature build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prm_check.errors import DataError, ModelLoadError, SpecError
from prm_check.models import builtin
from prm_check.models.builtin import (
    BUILTIN_NAME,
    build_default,
    cache_key,
    default_cache_dir,
    default_recipe,
    load_builtin,
)
from prm_check.models.loading import load_causal_lm
from prm_check.models.training import (
    NormProjector,
    PlantedSet,
    StageConfig,
    choose_planted,
    length_groups,
    mixed_loss,
    planted_finetune,
)
from tests.conftest import make_tiny_opt


def mini_recipe() -> dict:
    """The default recipe shrunk to a few seconds: same code path, tiny sizes."""
    r = default_recipe()
    r["tokenizer"]["vocab_size"] = 300
    r["data"].update(
        seq_len=64, n_public=12, n_members=10, canaries_per_rep=2, n_canary_references=10
    )
    r["model"].update(hidden=16, layers=2, heads=2, ffn=32, max_positions=64)
    for stage in ("pretrain", "full", "planted"):
        r[stage].update(steps=4, corpus_batch=2, record_batch=3)
    r["planted"].update(layers=[0, 1], fraction=0.25)
    return r


def _quiet(_msg: str) -> None:
    pass


def _planted_slices(planted: PlantedSet, state: dict[str, torch.Tensor]):
    for layer, idx in planted.neurons.items():
        ids = torch.as_tensor(idx)
        base = f"model.decoder.layers.{layer}"
        yield (
            state[f"{base}.fc1.weight"][ids].double().norm(dim=1),
            state[f"{base}.fc1.bias"][ids].abs(),
            state[f"{base}.fc2.weight"][:, ids].double().norm(dim=0),
        )


def test_planted_set_ids_params_and_dict_round_trip():
    p = choose_planted([0, 2], ffn_dim=40, hidden_size=8, fraction=0.25, seed=3)
    assert {k: len(v) for k, v in p.neurons.items()} == {0: 10, 2: 10}
    assert all(list(v) == sorted(set(v)) for v in p.neurons.values())
    assert p == choose_planted([0, 2], 40, 8, 0.25, 3) != choose_planted([0, 2], 40, 8, 0.25, 4)
    ids = p.unit_ids()
    assert len(ids) == 20 and ids[0] == f"model.decoder.layers.0.fc1[{p.neurons[0][0]}]"
    assert p.num_parameters() == 20 * (2 * 8 + 1)
    assert PlantedSet.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(DataError, match="fraction"):
        choose_planted([0], 40, 8, 0.0, 0)


def test_planted_set_naming_a_missing_layer_is_an_error():
    model = make_tiny_opt(hidden=8, layers=1, ffn=16)
    with pytest.raises(DataError, match="layers.3"):
        PlantedSet({3: (0,)}, 8).parameter_masks(model)


def test_planted_finetune_changes_only_planted_slices_and_holds_their_norms():
    model = make_tiny_opt(seed=1, hidden=8, layers=2, heads=2, ffn=16, vocab=16)
    with torch.no_grad():  # OPT initialises biases to 0; a trained model's are not
        for layer in model.model.decoder.layers:
            layer.fc1.bias.normal_(0.0, 0.02)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    planted = choose_planted([0, 1], ffn_dim=16, hidden_size=8, fraction=0.25, seed=0)
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(2, 16, (12,), generator=gen).tolist() for _ in range(8)]
    cfg = StageConfig(steps=6, lr=0.05, corpus_batch=2, record_batch=2)
    planted_finetune(model, planted, seqs, seqs, cfg, seed=0, pad_id=0, progress=_quiet)
    after = model.state_dict()
    masks = planted.parameter_masks(model)
    for name, value in after.items():
        if name in masks:
            m = masks[name]
            assert torch.equal(value[~m], before[name][~m]), name
            assert not torch.equal(value[m], before[name][m]), f"{name} planted part unchanged"
        else:
            assert torch.equal(value, before[name]), f"{name} changed outside the planted set"
    for (r0, b0, c0), (r1, b1, c1) in zip(
        _planted_slices(planted, before), _planted_slices(planted, after), strict=True
    ):
        torch.testing.assert_close(r1, r0, rtol=1e-6, atol=0)
        torch.testing.assert_close(c1, c0, rtol=1e-6, atol=0)
        assert torch.equal(b1, b0)
    assert all(p.requires_grad for p in model.parameters())


def test_norm_projector_projects_arbitrary_perturbations_back():
    model = make_tiny_opt(seed=2, hidden=8, layers=1, ffn=16)
    planted = PlantedSet({0: (1, 5, 9)}, 8)
    proj = NormProjector(model, planted)
    w1 = dict(model.named_parameters())["model.decoder.layers.0.fc1.weight"]
    original = w1.detach().clone()
    with torch.no_grad():
        w1.mul_(3.0).add_(0.5)
    proj.project()
    torch.testing.assert_close(
        w1[[1, 5, 9]].norm(dim=1), original[[1, 5, 9]].norm(dim=1), rtol=1e-6, atol=0
    )
    assert torch.equal(w1[[0, 2, 3]], original[[0, 2, 3]])


def test_training_is_deterministic_and_mixes_both_sources():
    from prm_check.models.training import train_stage

    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(2, 16, (10,), generator=gen).tolist() for _ in range(6)]
    cfg = StageConfig(steps=3, lr=1e-2, corpus_batch=2, record_batch=2)
    states = []
    for _ in range(2):
        model = make_tiny_opt(seed=0, hidden=8, layers=1, ffn=16)
        log = train_stage(model, seqs, seqs[:3], cfg, seed=5, pad_id=0, name="t", progress=_quiet)
        states.append(model.state_dict())
        assert log["loss_last"] == log["loss_last"]  # not NaN
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    with pytest.raises(DataError, match="empty"):
        train_stage(model, [], seqs, cfg, seed=0, pad_id=0, name="t", progress=_quiet)


def test_length_groups_partition_by_length_and_cut_padding():
    lengths = [85, 14, 88, 12, 80, 15, 86, 13]
    groups = length_groups(lengths, call_cost=16)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in g) for g in groups] == [[12, 13, 14, 15], [80, 85, 86, 88]]
    assert length_groups(lengths, call_cost=10_000) == [sorted(range(8), key=lengths.__getitem__)]
    assert length_groups([]) == []


def test_mixed_loss_equals_one_tensor_per_source_loss():
    from prm_check.data.batching import pad_batch
    from prm_check.lm import batch_loss_sum

    model = make_tiny_opt(seed=3, hidden=8, layers=1, ffn=16, vocab=16)
    gen = torch.Generator().manual_seed(2)
    corpus = [torch.randint(2, 16, (n,), generator=gen).tolist() for n in (12, 12, 9)]
    records = [torch.randint(2, 16, (n,), generator=gen).tolist() for n in (3, 11, 4, 10)]
    (c, cn), (r, rn) = (batch_loss_sum(model, pad_batch(s, 0)) for s in (corpus, records))
    for w in (0.5, 0.85, 1.0):
        want = (1 - w) * c / cn + w * r / rn
        got = mixed_loss(model, corpus, records, 0, w)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed_loss(model, [], records, 0, 0.5), 0.5 * r / rn)


def test_cache_key_depends_on_recipe_and_seed(monkeypatch, tmp_path):
    r = default_recipe()
    assert cache_key(0, r) == cache_key(0, default_recipe()) == cache_key(0)
    assert cache_key(1, r) != cache_key(0, r)
    r["planted"]["steps"] += 1
    assert cache_key(0, r) != cache_key(0)
    monkeypatch.setenv("PRM_CHECK_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("PRM_CHECK_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "prm_check"


def test_cache_key_changes_with_code_version(monkeypatch):
    key = cache_key(0)
    monkeypatch.setattr(builtin, "RECIPE_VERSION", builtin.RECIPE_VERSION + 1)
    assert cache_key(0) != key


def test_bad_recipe_and_variant_are_typed_errors(tmp_path):
    r = mini_recipe()
    del r["planted"]["fraction"]
    with pytest.raises(SpecError, match="planted"):
        build_default(0, cache_dir=tmp_path, recipe=r, progress=_quiet)
    with pytest.raises(SpecError, match="variant"):
        load_builtin("both", cache_dir=tmp_path, recipe=mini_recipe(), progress=_quiet)


def test_failure_mid_build_leaves_no_valid_cache(monkeypatch, tmp_path):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash in the planted stage")

    monkeypatch.setattr(builtin, "planted_finetune", boom)
    stale = tmp_path / f".{cache_key(0, mini_recipe())}.tmp-deadbuild"
    stale.mkdir()  # left by a killed build; the next build under the lock removes it
    with pytest.raises(RuntimeError, match="simulated"):
        build_default(0, cache_dir=tmp_path, recipe=mini_recipe(), progress=_quiet)
    assert not (tmp_path / cache_key(0, mini_recipe())).exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


@pytest.fixture(scope="module")
def mini_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    lines: list[str] = []
    folder = build_default(0, cache_dir=root, recipe=mini_recipe(), progress=lines.append)
    return folder, lines


def test_mini_build_layout_loads_and_reports_progress(mini_build):
    folder, lines = mini_build
    assert folder.name == cache_key(0, mini_recipe())
    assert any("[planted] step 4/4" in line for line in lines)
    for sub in ("reference", "full", "planted"):
        loaded = load_causal_lm(folder / sub)
        assert type(loaded.model).__name__ == "OPTForCausalLM"
        assert loaded.pad_id == 0
    meta = json.loads((folder / "data.json").read_text())
    assert meta["name"] == BUILTIN_NAME and meta["recipe"] == mini_recipe()
    assert set(meta["timings"]) >= {"data", "reference", "full", "planted", "total"}


def test_mini_build_planted_differs_from_reference_only_in_planted_slices(mini_build):
    folder, _ = mini_build
    ref = load_file(folder / "reference" / "model.safetensors")
    planted_w = load_file(folder / "planted" / "model.safetensors")
    full_w = load_file(folder / "full" / "model.safetensors")
    meta = json.loads((folder / "data.json").read_text())
    planted = PlantedSet.from_dict(meta["planted"])
    model = load_causal_lm(folder / "planted").model
    masks = planted.parameter_masks(model)
    changed = [k for k in ref if not torch.equal(ref[k], planted_w[k])]
    assert changed and all(k in masks for k in changed)
    for k in changed:
        assert torch.equal(ref[k][~masks[k]], planted_w[k][~masks[k]])
    for (r0, b0, c0), (r1, b1, c1) in zip(
        _planted_slices(planted, ref), _planted_slices(planted, planted_w), strict=True
    ):
        torch.testing.assert_close(r1, r0, rtol=1e-6, atol=0)
        torch.testing.assert_close(c1, c0, rtol=1e-6, atol=0)
        assert torch.equal(b1, b0)
    assert sum(not torch.equal(ref[k], full_w[k]) for k in ref) > len(changed)


def test_mini_build_same_seed_same_hash_and_force_rebuilds(mini_build, tmp_path):
    folder, _ = mini_build
    a = load_builtin("planted", 0, cache_dir=folder.parent, recipe=mini_recipe(), progress=_quiet)
    b = load_builtin("planted", 0, cache_dir=tmp_path, recipe=mini_recipe(), progress=_quiet)
    assert a.asset_hash == b.asset_hash and a.splits == b.splits
    assert a.planted == b.planted and a.planted is not None
    assert len(a.splits.members_eval) == len(a.splits.nonmembers_eval) == 5
    stamp = (tmp_path / b.cache_key / "data.json").stat().st_mtime_ns
    c = load_builtin("full", 0, cache_dir=tmp_path, recipe=mini_recipe(), force=True,
                     progress=_quiet)  # fmt: skip
    assert (tmp_path / c.cache_key / "data.json").stat().st_mtime_ns != stamp
    assert c.planted is None and c.variant == "full" and c.path.name == "full"
    again = load_builtin("full", 0, cache_dir=folder.parent, recipe=mini_recipe(), progress=_quiet)
    assert c.asset_hash == again.asset_hash
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []


def test_corrupt_cached_weights_are_reported(mini_build, tmp_path):
    import shutil

    folder, _ = mini_build
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    with open(copy / "full" / "model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelLoadError, match="force=True"):
        load_builtin("full", 0, cache_dir=tmp_path, recipe=mini_recipe(), progress=_quiet)
