"""Per-text next-token losses and token-weighted perplexity of a causal LM.

Every attack and metric downstream is derived from the per-text token losses returned here,
so one forward pass per model serves perplexity, all membership scores and exposure. The
loss itself is :func:`prm_check.lm.token_losses`, the project's single definition.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from prm_check.data.batching import Batch, make_batches, tokenize_texts
from prm_check.errors import DataError
from prm_check.lm import token_losses


def pad_id_of(tokenizer) -> int:
    """Padding id: the tokenizer's pad, else eos, else 0 (masked either way, so any id works)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run in eval mode (dropout off) and restore the caller's train/eval state afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise DataError(f"{what} must be a sequence of strings, got one string; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise DataError(f"{what} is empty; pass at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"{what}[{i}] is {type(t).__name__}, expected str")
    return texts


@torch.no_grad()
def losses_of_token_ids(
    model: torch.nn.Module, sequences: Sequence[Sequence[int]], *, pad_id: int, max_tokens: int
) -> list[np.ndarray]:
    """Per-sequence valid-target losses (float64), in input order, for pre-tokenised ids.

    Sequences are batched by length (less padding) and scattered back to input order;
    padding is masked by :func:`token_losses`, so the batching never changes a value
    beyond float rounding.
    """
    longest = max(len(s) for s in sequences)
    if max_tokens < longest:
        raise DataError(
            f"max_tokens={max_tokens} is below the longest sequence ({longest} tokens), which "
            "would be cut inside a batch; raise max_tokens to at least max_length"
        )
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    device = _device_of(model)
    out: list[np.ndarray | None] = [None] * len(sequences)
    pos = 0
    with eval_mode(model):
        for batch in make_batches([sequences[i] for i in order], max_tokens, pad_id, sort=False):
            batch = Batch(batch.input_ids.to(device), batch.attention_mask.to(device))
            losses, mask = token_losses(model, batch)
            losses = losses.detach().to("cpu", torch.float64).numpy()
            valid = mask.detach().to("cpu").numpy() > 0
            for row in range(losses.shape[0]):
                out[order[pos]] = losses[row][valid[row]]
                pos += 1
    return out  # type: ignore[return-value]


def sequence_token_losses(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    max_tokens: int = 4096,
) -> list[np.ndarray]:
    """For each text (input order), the losses of its valid next-token targets (nats).

    Texts are truncated to ``max_length`` tokens; each must have ≥ 2 tokens.
    """
    texts = _check_texts(texts)
    ids = tokenize_texts(tokenizer, texts, max_length)
    return losses_of_token_ids(model, ids, pad_id=pad_id_of(tokenizer), max_tokens=max_tokens)


def perplexity_from_losses(losses: Sequence[np.ndarray]) -> float:
    """exp of the token-weighted mean loss: every valid target counts once, texts unweighted."""
    count = sum(int(np.size(x)) for x in losses)
    if count == 0:
        raise DataError("zero valid tokens: cannot compute perplexity; pass texts of ≥ 2 tokens")
    total = float(sum(np.sum(x, dtype=np.float64) for x in losses))
    if not np.isfinite(total):
        raise DataError("non-finite token loss; the model produced inf/nan logits")
    return float(np.exp(total / count))


def perplexity(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    max_tokens: int = 4096,
) -> float:
    """Token-weighted perplexity on ``texts`` (padding masked), exp(total loss / #targets)."""
    losses = sequence_token_losses(
        model, tokenizer, texts, max_length=max_length, max_tokens=max_tokens
    )
    return perplexity_from_losses(losses)
