"""Next-token cross-entropy of a causal LM, with padding masked.

One definition of the loss for the whole project: perplexity, membership scores and the
curvature operator all call :func:`token_losses`, so "token-weighted mean cross-entropy"
means exactly the same thing in each.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from prm_check.data.batching import Batch


def token_losses(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position next-token losses ``[B, T-1]`` and the float mask of valid targets.

    Position t predicts token t+1; a target counts when both tokens are real (right padding).
    Loss at masked positions is exactly 0, so sums over the tensor are sums over valid tokens.
    """
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1, :]
    targets = batch.input_ids[:, 1:]
    mask = batch.attention_mask[:, 1:].to(logits.dtype)
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view_as(targets)
    return losses * mask, mask


def batch_loss_sum(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Sum of valid-token losses of one batch and the number of valid targets."""
    losses, mask = token_losses(model, batch)
    return losses.sum(), int(mask.sum())


@torch.no_grad()
def mean_token_loss(model: torch.nn.Module, batches: Iterable[Batch]) -> tuple[float, int]:
    """Token-weighted mean loss over all batches (the log of perplexity) and the token count."""
    total, count = 0.0, 0
    for batch in batches:
        s, n = batch_loss_sum(model, batch)
        total += float(s)
        count += n
    if count == 0:
        from prm_check.errors import DataError

        raise DataError("zero valid tokens: every sequence is shorter than 2 tokens or padding")
    return total / count, count
