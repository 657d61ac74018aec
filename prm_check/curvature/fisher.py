"""Empirical-Fisher diagonal from per-example (per-sequence) squared gradients.

Convention: an example is one sequence s with summed loss ℓ_s, and
``F_ii = Σ_s (∂ℓ_s/∂θ_i)² / N`` with N the valid targets of the whole data set — the same
1/N scaling as the Hessian of the token-weighted mean loss, so the two are comparable
entry by entry (they coincide in expectation for a well-specified model with one target
per example). The standard error treats the examples as a sample:
``se = S/N · std_s(g_s²) / √S``. Cost: one gradient per sequence (rows are run one at a
time, trimmed of padding); memory: three length-n vectors plus one gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prm_check.curvature.microbatch import _trimmed
from prm_check.curvature.operator import HessianOperator
from prm_check.curvature.params import ParamSpec
from prm_check.curvature.results import DiagonalEstimate
from prm_check.data.batching import Batch
from prm_check.lm import batch_loss_sum


def fisher_diagonal(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    params: ParamSpec = None,
    *,
    dtype: torch.dtype | None = None,
) -> DiagonalEstimate:
    """Per-sequence empirical Fisher diagonal, flat ``[n]`` in selected-parameter order."""
    op = HessianOperator(model, batches, params, dtype=dtype)
    total = [torch.zeros_like(p) for p in op.params]
    total_sq = [torch.zeros_like(p) for p in op.params]
    count = 0
    for index, batch in enumerate(op.batches):
        for row in range(batch.input_ids.shape[0]):
            one = _trimmed(batch, slice(row, row + 1))
            if one.num_valid_targets == 0:
                continue
            with op._scope():
                loss, _ = batch_loss_sum(op.model, one)
                op._checked(loss, index)
                grads = torch.autograd.grad(loss, op.params, allow_unused=True)
            for t, q, g in zip(total, total_sq, grads, strict=True):
                if g is None:
                    continue
                sq = g * g
                t.add_(sq)
                q.addcmul_(sq, sq)
            count += 1
    flat_t = op.flatten(total)
    flat_q = op.flatten(total_sq)
    mean = flat_t / count
    if count > 1:
        var = (flat_q - count * mean * mean).clamp_(min=0.0) / (count - 1)
        se = var.sqrt_() * (count / op.num_tokens) / count**0.5
    else:
        se = torch.full_like(mean, float("nan"))
    return DiagonalEstimate(
        estimate=flat_t / op.num_tokens,
        stderr=se,
        num_matvecs=count,
        seed=None,
        num_probes=count,
        num_groups=count,
        param_names=tuple(op.param_names),
        kind="fisher",
    )
