"""Hutchinson estimates of the Hessian diagonal and trace, in O(n) memory.

``diag(H) = E[v ⊙ H v]`` and ``tr(H) = E[vᵀ H v]`` for Rademacher v. Probes are processed in
blocks of ``op.probes_per_graph`` that share one gradient graph per micro-batch (graph
reuse); a block's probes are kept as packed sign bits (n/8 bytes each, probes.py) and
expanded into one reused buffer whenever needed, so the state is a few length-n vectors
however many probes run — never an n×K float probe matrix.

Standard errors. A probe's sample ``v ⊙ H v`` is only complete after every micro-batch
has contributed, and with graph reuse the micro-batch loop is the outer one, so keeping a
complete sample per probe would cost n×K memory. Instead probes are pooled into *groups*:
with one micro-batch every probe is its own group; with several, the probes that share a
graph form a group. Group sums are O(n) to accumulate, and the between-group variance
``Σ_j s_j (m_j − m)² / (J − 1)`` (s_j probes in group j with mean m_j) is an unbiased
estimate of the per-probe variance, so ``stderr = sqrt(that / K)`` with J − 1 degrees of
freedom. Fewer than two groups give NaN standard errors. The trace keeps per-probe
scalars and always has K − 1 degrees of freedom. Callers that only need standard errors of
per-unit sums (the group hook) turn per-entry ones off and save up to 2n floats.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch

from prm_check.budget.allocator import returning_freed_memory
from prm_check.curvature.operator import HessianOperator, SinkProduct
from prm_check.curvature.probes import packed_probe, unpack_into
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


def _stream(
    apply: SinkProduct,
    vs: list[torch.Tensor],
    target: list[torch.Tensor] | None,
    scale: float,
    quad_too: bool = True,
) -> float:
    """One product ``H_b v`` consumed part by part: adds ``scale · v ⊙ H_b v`` into
    ``target`` (if any) and returns the unnormalised ``vᵀ H_b v`` (NaN with ``quad_too``
    False: the diagonal alone takes one fused pass over each part instead of three)."""
    quad = 0.0

    def sink(i: int, part: torch.Tensor) -> None:
        nonlocal quad
        if not quad_too and target is not None:
            target[i].addcmul_(part, vs[i], value=scale)
            return
        part.mul_(vs[i])
        quad += float(part.sum(dtype=torch.float64))
        if target is not None:
            target[i].add_(part, alpha=scale)

    apply(vs, sink)
    return quad if quad_too or target is None else float("nan")


@returning_freed_memory()  # a fresh scope per call (lean allocator only, allocator.py)
def _run(
    op: HessianOperator,
    num_probes: int,
    seed: int,
    on_group: GroupHook | None,
    keep_diagonal: bool,
    entry_stderr: bool,
    progress: Progress,
    want_trace: bool = True,
) -> tuple[torch.Tensor | None, list[torch.Tensor] | None, np.ndarray, int]:
    """The probe loop. Returns (Σ samples, flat; Σ group sums²/s or None; per-probe vᵀHv;
    groups).

    State: the probe buffer (n; products are consumed one parameter at a time as autograd
    produces them), the running diagonal (n, if kept), and only when per-entry standard
    errors or a group hook need them a group accumulator and a sum of squares (n each); a
    block's probes are kept packed (K·n/8 bytes). ``want_trace=False`` (the diagonal's
    callers) skips the per-probe ``vᵀHv`` on the streamed path, one fused pass per part.
    """
    _check_probes(num_probes)
    zeros = lambda: [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in op.params]  # noqa: E731
    # the running diagonal is one flat buffer (per-parameter views), so the estimate is
    # that buffer divided in place, not an n-float copy beside it at the end
    flat = torch.zeros(op.n, dtype=op.dtype, device=op.device) if keep_diagonal else None
    total = op.unflatten(flat) if keep_diagonal else None
    total_sq = zeros() if keep_diagonal and entry_stderr else None
    quad = np.zeros(num_probes, dtype=np.float64)
    per_probe_groups = len(op.batches) == 1
    need_group = total_sq is not None or on_group is not None
    group = zeros() if need_group and not per_probe_groups else None
    vs = zeros()  # the probe, unpacked in place for every (micro-batch, probe)
    num_groups = 0
    scale = 1.0 / op.num_tokens

    def close(acc: list[torch.Tensor], size: int) -> None:
        nonlocal num_groups
        num_groups += 1
        if on_group is not None:
            on_group(acc, size)
        if total is not None:
            for t, a in zip(total, acc, strict=True):
                t.add_(a)
        if total_sq is not None:
            for q, a in zip(total_sq, acc, strict=True):
                q.addcmul_(a, a, value=1.0 / size)

    # a probe's product is consumed part by part as autograd produces it (saves n floats),
    # except when every probe is its own group and the hook must see a whole sample
    streamed = not (need_group and group is None)
    products = op.micro_batch_sinks if streamed else op.micro_batch_products
    blocks = _blocks(num_probes, op.probes_per_graph)
    for b, block in enumerate(blocks):
        packed = [packed_probe(op.numels, seed, k) for k in block]
        if group is not None:
            for g in group:
                g.zero_()
        for m, apply in enumerate(products()):
            for k, bits in zip(block, packed, strict=True):
                unpack_into(bits, vs)
                if streamed:
                    acc = group if group is not None else total
                    quad[k] += scale * _stream(apply, vs, acc, scale, want_trace)
                    continue
                hv = apply(vs)
                for h, v in zip(hv, vs, strict=True):
                    h.mul_(v)  # in place: h is now this micro-batch's unnormalised v ⊙ H_b v
                quad[k] += scale * float(sum(float(h.sum(dtype=torch.float64)) for h in hv))
                for h in hv:
                    h.mul_(scale)
                close(hv, 1)
                del hv
            del apply  # this micro-batch's graph goes now, not after the next one is built
            if len(op.batches) > 1:
                _emit(
                    progress,
                    f"hutchinson block {b + 1}/{len(blocks)} micro-batch {m + 1}/{len(op.batches)}",
                )
        if group is not None:
            close(group, len(block))
        elif not need_group:
            num_groups += len(block) if per_probe_groups else 1
        _emit(
            progress,
            f"hutchinson block {b + 1}/{len(blocks)}: probes {block.start}-"
            f"{block.stop - 1} of {num_probes} done",
        )
    op.num_matvecs += num_probes
    return flat, total_sq, quad, num_groups


def hutchinson_diagonal(
    op: HessianOperator,
    num_probes: int,
    seed: int,
    *,
    on_group: GroupHook | None = None,
    entry_stderr: bool = True,
    progress: Progress = None,
) -> DiagonalEstimate:
    """Hutchinson diagonal of ``op`` with per-entry standard errors (see module docstring).

    ``on_group(acc, size)`` sees each group's summed samples (per-parameter tensors, the sum
    of ``size`` probes' ``v ⊙ Hv``) before they are folded in, so callers can build exact
    standard errors of *linear* reductions (per-unit sums) at no extra memory.
    ``entry_stderr=False`` skips per-entry standard errors (returned as NaN) and saves one
    to two length-n accumulators — the loop then holds the probe and the diagonal (2n floats),
    plus autograd's own buffers inside each product (the graph's gradient values are freed,
    operator.py).
    """
    flat, total_sq, _, groups = _run(
        op, num_probes, seed, on_group, True, entry_stderr, progress, want_trace=False
    )
    k = float(num_probes)
    if total_sq is None:
        est = flat.div_(k)  # in place: no second length-n vector
        se = torch.full((), float("nan"), dtype=op.dtype).expand(op.n)  # no storage either
    else:
        est = flat.div(k)
        se = torch.empty(op.n, dtype=op.dtype)
        offset = 0
        for i, numel in enumerate(op.numels):
            t, q = flat[offset : offset + numel], total_sq[i].reshape(-1)
            if groups > 1:
                var = (q - t * (t / k)).clamp_(min=0.0) / (groups - 1)  # per-probe variance
                se[offset : offset + numel] = (var / k).sqrt_()
            else:
                se[offset : offset + numel] = float("nan")
            offset += numel
            total_sq[i] = None
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
    _, _, quad, _ = _run(op, num_probes, seed, None, False, False, progress)
    se = float(quad.std(ddof=1) / np.sqrt(num_probes)) if num_probes > 1 else float("nan")
    return TraceEstimate(float(quad.mean()), se, num_probes, seed, quad)
