"""Shared fixtures: tiny random causal LMs and a tiny trained tokenizer (no downloads)."""

from __future__ import annotations

import os

# Imported once here, before any pytester inline run: pytester restores sys.modules after
# each run, so a C extension first imported *inside* one would be dropped and re-imported
# later ("cannot load module more than once per process"), making results depend on order.
import numpy  # noqa: F401
import pytest
import torch
from hypothesis import settings

settings.register_profile("dev", max_examples=10, deadline=None)
settings.register_profile("ci", max_examples=10, deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

TINY_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "a function returns a value to its caller",
    "name: Alice Smith, born 1990-01-02, phone 555-0101",
    "the module imports the package and defines a class",
] * 4


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE (vocab <= 64) trained on a few lines, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=64,
        special_tokens=["<pad>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:40],
    )
    tok.train_from_iterator(TINY_TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def make_tiny_opt(
    seed: int = 0,
    hidden: int = 8,
    layers: int = 1,
    heads: int = 2,
    ffn: int = 16,
    vocab: int = 16,
    dtype=None,
):
    """A random OPT with eager attention; ~1-5k parameters at the defaults."""
    from prm_check.models.random_opt import random_opt

    model = random_opt(
        seed,
        dtype=dtype,
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ffn_dim=ffn,
        max_position_embeddings=64,
    )
    return model.eval()


def make_tiny_gpt2(
    seed: int = 0, hidden: int = 8, layers: int = 1, heads: int = 2, vocab: int = 16, dtype=None
):
    """A random GPT-2 with eager attention (Conv1D layers)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).eval()
    return model.to(dtype) if dtype is not None else model


@pytest.fixture
def tiny_opt():
    return make_tiny_opt()


@pytest.fixture
def tiny_gpt2():
    return make_tiny_gpt2()
