"""Per-text losses, perplexity, membership scores, MoPe and evaluate_privacy on tiny models."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prm_check.errors import DataError
from prm_check.privacy import (
    canary_exposures,
    evaluate_privacy,
    membership_scores,
    min_k_score,
    mope_scores,
    perplexity,
    roc_auc,
    scores_from_losses,
    sequence_token_losses,
)
from tests.conftest import make_tiny_opt

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a value",
    "the module imports the package and defines a class",
    "name: Alice Smith",
    "a function returns",
]


@pytest.fixture
def model(tiny_tokenizer):
    return make_tiny_opt(vocab=len(tiny_tokenizer), hidden=16, ffn=32)


def _by_hand(model, tokenizer, text):
    """Losses of one text in a batch of its own: no padding anywhere."""
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    return F.cross_entropy(logits, ids[0, 1:], reduction="none").double().numpy()


# ---------------------------------------------------------------- losses, perplexity
def test_sequence_losses_match_unpadded_and_keep_order(model, tiny_tokenizer):
    got = sequence_token_losses(model, tiny_tokenizer, TEXTS, max_tokens=4096)
    assert len(got) == len(TEXTS)
    for text, losses in zip(TEXTS, got, strict=True):
        want = _by_hand(model, tiny_tokenizer, text)
        assert losses.shape == want.shape
        np.testing.assert_allclose(losses, want, rtol=1e-5, atol=1e-5)


def test_perplexity_is_exp_token_weighted_mean_and_padding_invariant(model, tiny_tokenizer):
    hand = [_by_hand(model, tiny_tokenizer, t) for t in TEXTS]
    want = float(np.exp(np.concatenate(hand).mean()))  # token-weighted, not per-text mean
    per_text = float(np.exp(np.mean([h.mean() for h in hand])))
    assert abs(want - per_text) > 1e-3  # the two weightings differ on these ragged texts
    for max_tokens in (128, 200, 4096):  # one text per batch ... everything in one batch
        assert perplexity(model, tiny_tokenizer, TEXTS, max_tokens=max_tokens) == pytest.approx(
            want, rel=1e-5
        )


def test_losses_restore_training_mode(model, tiny_tokenizer):
    model.train()
    sequence_token_losses(model, tiny_tokenizer, TEXTS[:2])
    assert model.training


def test_loss_input_errors(model, tiny_tokenizer):
    with pytest.raises(DataError):
        sequence_token_losses(model, tiny_tokenizer, [])
    with pytest.raises(DataError):
        sequence_token_losses(model, tiny_tokenizer, "a single string")
    with pytest.raises(DataError):
        sequence_token_losses(model, tiny_tokenizer, TEXTS, max_length=64, max_tokens=8)


# ---------------------------------------------------------------- scores
def test_scores_from_hand_made_losses():
    target = [np.array([1.0, 5.0, 2.0, 8.0, 3.0]), np.array([0.5, 1.5, 1.0])]
    ref = [np.array([2.0, 2.0, 2.0, 2.0, 2.0]), np.array([1.0, 1.0, 1.0])]
    texts = ["first text", "second"]
    s = scores_from_losses(target, texts, reference_losses=ref, k=0.4)
    np.testing.assert_allclose(s["loss"], [-3.8, -1.0])
    np.testing.assert_allclose(
        s["zlib"], [-3.8 / len(zlib.compress(b"first text")), -1.0 / len(zlib.compress(b"second"))]
    )
    # k = 0.4: floor(2.0) = 2 worst of 5 -> mean(8, 5); floor(1.2) = 1 worst of 3 -> 1.5
    np.testing.assert_allclose(s["min_k"], [-6.5, -1.5])
    np.testing.assert_allclose(s["ref"], [-(3.8 - 2.0), -(1.0 - 1.0)])
    assert "ref" not in scores_from_losses(target, texts)


def test_min_k_never_empty_and_k_one_is_loss():
    x = np.array([0.2, 0.9, 0.4])
    assert min_k_score(x, 0.2) == pytest.approx(-0.9)  # floor(0.6) = 0 -> 1 token
    assert min_k_score(x, 1.0) == pytest.approx(-x.mean())


@pytest.mark.parametrize(
    "call",
    [
        lambda: scores_from_losses([np.ones(3)], ["a", "b"]),
        lambda: scores_from_losses([np.ones(3)], ["a"], reference_losses=[np.ones(3)] * 2),
        lambda: scores_from_losses([np.array([1.0, np.inf])], ["a"]),
        lambda: scores_from_losses([np.array([])], ["a"]),
        lambda: scores_from_losses([np.ones(3)], ["a"], k=0.0),
        lambda: scores_from_losses([np.ones(3)], ["a"], k=1.5),
        lambda: min_k_score(np.ones(3), k=-0.1),
    ],
)
def test_score_errors_are_typed(call):
    with pytest.raises(DataError):
        call()


def test_membership_scores_derive_from_one_loss_pass(model, tiny_tokenizer):
    ref_model = make_tiny_opt(seed=1, vocab=len(tiny_tokenizer), hidden=16, ffn=32)
    s = membership_scores(model, tiny_tokenizer, TEXTS, reference_model=ref_model)
    assert set(s) == {"loss", "zlib", "min_k", "ref"}
    t = sequence_token_losses(model, tiny_tokenizer, TEXTS)
    r = sequence_token_losses(ref_model, tiny_tokenizer, TEXTS)
    want = scores_from_losses(t, TEXTS, reference_losses=r)
    for key in s:
        np.testing.assert_allclose(s[key], want[key])


# ---------------------------------------------------------------- MoPe
def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bit_equal(model, snap):
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


def test_mope_restores_weights_bit_exactly_and_matches_definition(model, tiny_tokenizer):
    snap = _snapshot(model)
    got = mope_scores(model, tiny_tokenizer, TEXTS, sigma=0.05, n_draws=1, seed=7)
    assert _bit_equal(model, snap)
    clean = [x.mean() for x in sequence_token_losses(model, tiny_tokenizer, TEXTS)]
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen), alpha=0.05)
    noisy = [x.mean() for x in sequence_token_losses(model, tiny_tokenizer, TEXTS)]
    np.testing.assert_allclose(got, np.array(noisy) - np.array(clean), rtol=1e-6, atol=1e-9)


def test_mope_seeded_filtered_and_restored_on_error(model, tiny_tokenizer, monkeypatch):
    snap = _snapshot(model)
    kw = {"sigma": 0.1, "n_draws": 2}
    a = mope_scores(model, tiny_tokenizer, TEXTS, seed=1, **kw)
    assert np.array_equal(a, mope_scores(model, tiny_tokenizer, TEXTS, seed=1, **kw))
    assert not np.allclose(a, mope_scores(model, tiny_tokenizer, TEXTS, seed=2, **kw))
    only_fc = mope_scores(
        model, tiny_tokenizer, TEXTS, seed=1, param_filter=lambda n, p: "fc1" in n, **kw
    )
    assert not np.allclose(a, only_fc)
    assert _bit_equal(model, snap)

    import prm_check.privacy.scores as scores_mod

    clean = sequence_token_losses(model, tiny_tokenizer, TEXTS)

    def boom(*args, **kwargs):
        raise RuntimeError("forward failed mid-draw")

    monkeypatch.setattr(scores_mod, "sequence_token_losses", boom)
    with pytest.raises(RuntimeError):
        mope_scores(model, tiny_tokenizer, TEXTS, seed=1, clean_losses=clean, **kw)
    assert _bit_equal(model, snap)


@pytest.mark.parametrize(
    "kw",
    [
        {"sigma": 0.0, "n_draws": 1},
        {"sigma": -1.0, "n_draws": 1},
        {"sigma": 0.1, "n_draws": 0},
        {"sigma": 0.1, "n_draws": 1, "param_filter": lambda n, p: False},
    ],
)
def test_mope_errors_are_typed(model, tiny_tokenizer, kw):
    with pytest.raises(DataError):
        mope_scores(model, tiny_tokenizer, TEXTS, seed=0, **kw)


# ---------------------------------------------------------------- end to end
@dataclass(frozen=True)
class _Canary:
    text: str
    secret: str
    repetitions: int


WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "a", "function"]
WORDS += ["returns", "value", "module", "class"]


def _sentences(rng, n):
    return [" ".join(rng.choice(WORDS, size=8)) for _ in range(n)]


STEPS = 30


def _fine_tune(model, tokenizer, texts, steps):
    from prm_check.data.batching import make_batches, tokenize_texts
    from prm_check.lm import batch_loss_sum

    batch = make_batches(tokenize_texts(tokenizer, texts, 64), 10_000, 0)[0]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        s, n = batch_loss_sum(model, batch)
        opt.zero_grad()
        (s / n).backward()
        opt.step()
    model.eval()


def test_evaluate_privacy_detects_real_memorisation(tiny_tokenizer):
    rng = np.random.default_rng(0)
    members, nonmembers, held_out = _sentences(rng, 12), _sentences(rng, 12), _sentences(rng, 6)
    secrets = ["".join(rng.choice(list("01256"), size=5)) for _ in range(44)]
    reps = (1, 1, 8, 8)
    canaries = [_Canary(f"my pin is {s}", s, r) for s, r in zip(secrets, reps, strict=False)]
    refs = [f"my pin is {s}" for s in secrets[4:]]
    reference = make_tiny_opt(vocab=len(tiny_tokenizer), hidden=16, ffn=32)
    model = make_tiny_opt(vocab=len(tiny_tokenizer), hidden=16, ffn=32)
    train = members + [c.text for c in canaries for _ in range(c.repetitions)]
    _fine_tune(model, tiny_tokenizer, train, steps=STEPS)

    rep = evaluate_privacy(
        model, tiny_tokenizer, members=members, nonmembers=nonmembers,
        reference_model=reference, canaries=canaries, canary_references=refs,
        ppl_texts=held_out, n_boot=200, seed=0, mope_sigma=0.01, mope_draws=2,
    )  # fmt: skip
    assert set(rep.attacks) == {"loss", "zlib", "min_k", "ref", "mope"}
    loss_auc = rep.attacks["loss"].auc
    # the model saw each member STEPS times and the non-members never
    assert loss_auc.auc > 0.9 and rep.attacks["ref"].auc.auc > 0.9
    direct = membership_scores(model, tiny_tokenizer, members + nonmembers)["loss"]
    assert loss_auc.auc == pytest.approx(roc_auc(direct[:12], direct[12:]))
    tpr1, tpr01 = rep.attacks["loss"].tpr
    assert not tpr1.defined and not tpr01.defined  # 12 non-members cannot resolve 1 %
    assert sorted(rep.exposure) == [1, 8]
    assert rep.exposure[8].mean_rank_exposure > rep.exposure[1].mean_rank_exposure
    assert rep.exposure[8].mean_rank_exposure > 3.0  # of at most log2(41) = 5.36 bits
    direct_exp = canary_exposures(model, tiny_tokenizer, canaries, refs)
    assert direct_exp == rep.exposure
    assert rep.perplexity > 1 and rep.reference_perplexity > 1
    d = json.loads(json.dumps(rep.as_dict()))
    assert d["attacks"]["loss"]["tpr"][0]["tpr"] is None and "8" in d["exposure"]


def test_evaluate_privacy_input_errors(model, tiny_tokenizer):
    with pytest.raises(DataError):
        evaluate_privacy(model, tiny_tokenizer, members=[], nonmembers=TEXTS)
    with pytest.raises(DataError):
        canary = _Canary("a b", "b", 1)
        evaluate_privacy(model, tiny_tokenizer, members=TEXTS, nonmembers=TEXTS, canaries=[canary])
    with pytest.raises(DataError):
        canary_exposures(model, tiny_tokenizer, [_Canary("my pin is 12", "99", 1)], TEXTS)
    with pytest.raises(DataError):
        canary_exposures(model, tiny_tokenizer, [object()], TEXTS)
