"""Hutchinson estimates of the Hessian diagonal and trace, in O(n) memory.

``diag(H) = E[v ⊙ H v]`` and ``tr(H) = E[vᵀ H v]`` for Rademacher v. Probes are processed in
blocks of ``op.probes_per_graph`` that share one gradient graph per micro-batch (graph
reuse); each probe is regenerated from (seed, index) whenever it is needed, so the state is
a few length-n vectors however many probes run — never an n×K probe matrix.

Standard errors. A probe's sample ``v ⊙ H v`` is only complete after every micro-batch
has contributed, and with graph reuse the micro-batch loop is the outer one, so keeping a
complete sample per probe would cost n×K memory. Instead probes are pooled into *groups*:
with one micro-batch every probe is its own group; with several, the probes that share a
graph form a group. Group sums are O(n) to accumulate, and the between-group variance
``Σ_j s_j (m_j − m)² / (J − 1)`` (s_j probes in group j with mean m_j) is an unbiased
estimate of the per-probe variance, so ``stderr = sqrt(that / K)`` with J − 1 degrees of
freedom. Fewer than two groups give NaN standard errors. The trace keeps per-probe
scalars and always has K − 1 degrees of freedom.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch

from prm_check.curvature.operator import HessianOperator
from prm_check.curvature.probes import rademacher
from prm_check.curvature.results import DiagonalEstimate, TraceEstimate
from prm_check.errors import CurvatureError

GroupHook = Callable[[list[torch.Tensor], int], None]
Progress = Callable[[str], None] | bool | None


def _emit(progress: Progress, line: str) -> None:
    if progress is True:
        print(line, file=sys.stderr, flush=True)
    elif callable(progress):
        progress(line)


def _blocks(num_probes: int, size: int) -> list[range]:
    return [range(s, min(s + size, num_probes)) for s in range(0, num_probes, size)]


def _check_probes(num_probes: int) -> None:
    if int(num_probes) < 1:
        raise CurvatureError(f"num_probes must be >= 1, got {num_probes}")


def _run(
    op: HessianOperator,
    num_probes: int,
    seed: int,
    on_group: GroupHook | None,
    keep_diagonal: bool,
    progress: Progress,
) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None, np.ndarray, int]:
    """The probe loop. Returns (Σ group sums, Σ group sums²/s, per-probe vᵀHv, groups)."""
    _check_probes(num_probes)
    zeros = lambda: [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in op.params]  # noqa: E731
    total = zeros() if keep_diagonal else None
    total_sq = zeros() if keep_diagonal else None
    quad = np.zeros(num_probes, dtype=np.float64)
    per_probe_groups = len(op.batches) == 1
    need_group = keep_diagonal or on_group is not None
    group = zeros() if need_group and not per_probe_groups else None
    num_groups = 0
    scale = 1.0 / op.num_tokens

    def close(acc: list[torch.Tensor], size: int) -> None:
        nonlocal num_groups
        num_groups += 1
        if on_group is not None:
            on_group(acc, size)
        if keep_diagonal:
            for t, q, a in zip(total, total_sq, acc, strict=True):
                t.add_(a)
                q.addcmul_(a, a, value=1.0 / size)

    blocks = _blocks(num_probes, op.probes_per_graph)
    for b, block in enumerate(blocks):
        if group is not None:
            for g in group:
                g.zero_()
        for m, product in enumerate(op.micro_batch_products()):
            for k in block:
                vs = rademacher(op.shapes, op.dtype, seed, k)
                hv = product(vs)
                for h, v in zip(hv, vs, strict=True):
                    h.mul_(v).mul_(scale)  # in place: h is now this micro-batch's v ⊙ H_b v
                quad[k] += float(sum(float(h.sum(dtype=torch.float64)) for h in hv))
                if group is not None:
                    for g, h in zip(group, hv, strict=True):
                        g.add_(h)
                elif need_group:
                    close(hv, 1)
                del vs, hv
            if len(op.batches) > 1:
                _emit(
                    progress,
                    f"hutchinson block {b + 1}/{len(blocks)} micro-batch {m + 1}/{len(op.batches)}",
                )
        if group is not None:
            close(group, len(block))
        _emit(
            progress,
            f"hutchinson block {b + 1}/{len(blocks)}: probes {block.start}-"
            f"{block.stop - 1} of {num_probes} done",
        )
    op.num_matvecs += num_probes
    return total, total_sq, quad, num_groups


def hutchinson_diagonal(
    op: HessianOperator,
    num_probes: int,
    seed: int,
    *,
    on_group: GroupHook | None = None,
    progress: Progress = None,
) -> DiagonalEstimate:
    """Hutchinson diagonal of ``op`` with per-entry standard errors (see module docstring).

    ``on_group(acc, size)`` sees each group's summed samples (per-parameter tensors, the sum
    of ``size`` probes' ``v ⊙ Hv``) before they are folded in, so callers can build exact
    standard errors of *linear* reductions (per-unit sums) at no extra memory.
    """
    total, total_sq, _, groups = _run(op, num_probes, seed, on_group, True, progress)
    k = float(num_probes)
    est = torch.empty(op.n, dtype=op.dtype)
    se = torch.empty(op.n, dtype=op.dtype)
    offset = 0
    for i, numel in enumerate(op.numels):
        t, q = total[i], total_sq[i]
        mean = t / k
        if groups > 1:
            var = (q - t * mean).clamp_(min=0.0) / (groups - 1)  # per-probe variance
            err = (var / k).sqrt_()
        else:
            err = torch.full_like(mean, float("nan"))
        est[offset : offset + numel] = mean.reshape(-1)
        se[offset : offset + numel] = err.reshape(-1)
        offset += numel
        total[i] = total_sq[i] = None  # free as we go: peak stays at the loop's
    return DiagonalEstimate(
        estimate=est,
        stderr=se,
        num_matvecs=num_probes,
        seed=seed,
        num_probes=num_probes,
        num_groups=groups,
        param_names=tuple(op.param_names),
    )


def hutchinson_trace(
    op: HessianOperator, num_probes: int, seed: int, *, progress: Progress = None
) -> TraceEstimate:
    """Hutchinson trace ``mean_k vₖᵀ H vₖ`` with its standard error over probes."""
    _, _, quad, _ = _run(op, num_probes, seed, None, False, progress)
    se = float(quad.std(ddof=1) / np.sqrt(num_probes)) if num_probes > 1 else float("nan")
    return TraceEstimate(float(quad.mean()), se, num_probes, seed, quad)
