"""The one way to build a randomly initialised OPT causal LM from a config.

Used by the built-in recipe (training.py), the budget planner's measured steps, the
benchmarks and the tests, so every random OPT here has the same invariants: no dropout of
any kind (a Hessian of a random function is meaningless), eager attention (the fused CPU
kernel has no second derivative), and weights drawn from ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

from typing import Any


def random_opt(seed: int, *, pad_id: int = 0, eos_id: int = 1, dtype=None, **config: Any):
    """``OPTForCausalLM`` with ``OPTConfig(**config)`` (minus dropout), weights from ``seed``.

    ``word_embed_proj_dim`` defaults to ``hidden_size``; the model is returned in training
    mode as transformers builds it (callers that measure call ``.eval()``), in ``dtype``
    when given.
    """
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    config.setdefault("word_embed_proj_dim", config["hidden_size"])
    cfg = OPTConfig(
        **config,
        pad_token_id=pad_id,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = OPTForCausalLM(cfg)
    return model.to(dtype) if dtype is not None else model
