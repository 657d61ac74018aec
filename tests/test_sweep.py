"""The noise sweep on a tiny random model: cells, restoration, paired-bootstrap summaries."""

import numpy as np
import pytest

from prm_check import sweep as S
from prm_check.data.batching import tokenize_texts
from prm_check.perturb import entry_masks, reference_scales, state_digest
from tests.conftest import make_tiny_opt

MEMBERS = [f"name {i} born 19{i % 90:02d} phone {i * 7 % 1000}" for i in range(12)]
NONMEMBERS = [f"name {i} born 20{i % 90:02d} phone {i * 3 % 1000}" for i in range(12)]


class _Canary:
    def __init__(self, text, reps):
        self.text, self.repetitions, self.secret = text, reps, None


@pytest.fixture(scope="module")
def setting(tiny_tokenizer):
    model = make_tiny_opt(seed=5, vocab=len(tiny_tokenizer), hidden=16, ffn=32)
    tok = lambda texts: tokenize_texts(tiny_tokenizer, texts, 32)  # noqa: E731
    canaries = [_Canary(f"pin {d}{d}{d}", r) for d, r in zip("1234", (1, 1, 4, 4), strict=True)]
    ev = S.EvalSet(
        member_ids=tok(MEMBERS),
        nonmember_ids=tok(NONMEMBERS),
        member_texts=MEMBERS,
        nonmember_texts=NONMEMBERS,
        ppl_ids=tok(MEMBERS[:4] + NONMEMBERS[:4]),
        canary_ids=tok([c.text for c in canaries]),
        canary_reps=[c.repetitions for c in canaries],
        reference_ids=tok([f"pin {d}{d}{d}" for d in "56789"]),
        pad_id=0,
        max_tokens=256,
        max_length=32,
        tokenizer=tiny_tokenizer,
    )
    params = dict(model.named_parameters())
    fc1 = "model.decoder.layers.0.fc1.weight"
    targets = [
        S.GroupTarget("Wsens", entry_masks(params, [{fc1: ((r,),)} for r in range(4)]), 64),
        S.GroupTarget("control", entry_masks(params, [{fc1: ((r,),)} for r in range(4, 8)]), 64),
    ]
    scales = reference_scales(params, params, "tensor")
    return model, ev, targets, scales


def test_sweep_cells_restore_weights_and_summarise(setting):
    model, ev, targets, scales = setting
    digest = state_digest(dict(model.named_parameters()))
    res = S.run_sweep(
        model,
        ev,
        targets,
        scales,
        [0.0, 0.5, 2.0],
        draws=2,
        attacks=["loss", "zlib", "min_k"],
        seed=1,
    )
    assert state_digest(dict(model.named_parameters())) == digest
    assert len(res.cells) == 2 * 2 * 2  # groups × levels > 0 × draws
    assert all(c.restored for c in res.cells)
    big = [c for c in res.cells if c.level == 2.0]
    small = [c for c in res.cells if c.level == 0.5]
    assert np.mean([c.noise_norm for c in big]) > 3 * np.mean([c.noise_norm for c in small])
    reps = S.bootstrap_deltas(res, n_boot=200, seed=0)
    rows = S.summarise(res, reps)
    assert {r["metric"] for r in rows} >= {"delta_auc_loss", "delta_ppl", "rel_delta_ppl"}
    for r in rows:
        assert r["ci_low"] <= r["ci_high"]
    # noise on a random model moves perplexity either way, but it must move it
    ppl = [r for r in rows if r["metric"] == "delta_ppl" and r["level"] == 2.0]
    assert all(abs(r["mean"]) > 0 and r["ci_low"] < r["ci_high"] for r in ppl)
    vs = S.versus_control(reps)
    assert {r["basis"] for r in vs} == {"equal_alpha", "equal_noise_norm"}
    d = res.cells[0].to_dict(res.clean)
    assert d["delta_auc"]["loss"] == pytest.approx(
        d["auc"]["loss"] - S.roc_auc(*res.clean.scores["loss"])
    )


def test_auc_rows_match_sklearn():
    rng = np.random.default_rng(0)
    m, n = rng.normal(1, 1, 30), rng.normal(0, 1, 40)
    im = rng.integers(0, 30, size=(5, 30))
    inn = rng.integers(0, 40, size=(5, 40))
    got = S._auc_rows(m, n, im, inn)
    for b in range(5):
        assert got[b] == pytest.approx(S.roc_auc(m[im[b]], n[inn[b]]))


def test_same_seed_same_sweep(setting):
    model, ev, targets, scales = setting
    a = S.run_sweep(model, ev, targets[:1], scales, [0.0, 1.0], 1, attacks=["loss"], seed=3)
    b = S.run_sweep(model, ev, targets[:1], scales, [0.0, 1.0], 1, attacks=["loss"], seed=3)
    assert a.cells[0].noise_norm == b.cells[0].noise_norm
    assert np.array_equal(
        a.cells[0].measure.scores["loss"][0], b.cells[0].measure.scores["loss"][0]
    )


def test_mope_runs_on_the_first_draw_of_each_group_and_level_only(setting):
    model, ev, targets, scales = setting
    res = S.run_sweep(
        model, ev, targets[:1], scales, [0.0, 1.0], 3, attacks=["loss", "mope"], seed=2
    )
    assert [("mope" in c.measure.scores) for c in res.cells] == [
        d < S.MOPE_SWEEP_DRAWS for d in range(3)
    ]
    reps = S.bootstrap_deltas(res, n_boot=100, seed=0)
    rows = {r["metric"]: r for r in S.summarise(res, reps)}
    assert rows["delta_auc_mope"]["n_draws"] == S.MOPE_SWEEP_DRAWS
    assert rows["delta_auc_loss"]["n_draws"] == 3
    first = res.cells[0]
    point = S.roc_auc(*first.measure.scores["mope"]) - S.roc_auc(*res.clean.scores["mope"])
    assert rows["delta_auc_mope"]["mean"] == pytest.approx(point)
    assert "mope" not in res.cells[1].to_dict(res.clean)["auc"]
