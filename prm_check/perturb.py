"""Gaussian noise on a group's weights only, with bit-exact restoration.

θ_u ← θ_u + α·s·ε on the entries of the group's units, where s is the *reference*
model's spread (per tensor, or per output row), so a layer whose spread grew during
fine-tuning does not get more noise. The injected noise norm is returned so groups can
be compared at equal energy as well as equal α. Restoration copies the original entries
back (no subtraction, hence bit-exact) and is verified by hashing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from prm_check.errors import CurvatureError, DataError

SCALES = ("tensor", "row")


def entry_masks(
    named_params: Mapping[str, torch.Tensor],
    slices: Iterable[Mapping[str, tuple[object, ...]]],
) -> dict[str, torch.Tensor]:
    """Boolean masks per parameter covering the union of the given units' slices.

    ``slices`` holds one mapping per unit (``curvature.Unit.slices``): parameter name ->
    a tuple of index blocks, each usable as ``tensor[block]``.
    """
    masks: dict[str, torch.Tensor] = {}
    for unit_slices in slices:
        for name, blocks in unit_slices.items():
            if name not in named_params:
                raise CurvatureError(f"unit refers to unknown parameter {name!r}")
            if name not in masks:
                masks[name] = torch.zeros_like(named_params[name], dtype=torch.bool)
            for block in blocks:
                masks[name][block] = True
    return masks


def reference_scales(
    reference_params: Mapping[str, torch.Tensor], names: Iterable[str], scale: str = "tensor"
) -> dict[str, torch.Tensor]:
    """Noise scale per parameter from the reference model: its std per tensor or per row."""
    if scale not in SCALES:
        raise DataError(f"scale must be one of {SCALES}, got {scale!r}")
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name not in reference_params:
            raise DataError(f"reference model has no parameter {name!r}; is it the same model?")
        ref = reference_params[name].detach().float()
        if scale == "row" and ref.ndim >= 2:
            out[name] = ref.std(dim=tuple(range(1, ref.ndim)), keepdim=True)
        else:
            out[name] = ref.std() if ref.numel() > 1 else ref.abs().reshape(())
    return out


def cell_seed(*parts: object) -> int:
    """Stable 63-bit seed from (group, level, draw, base seed): independent of dict order."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def state_digest(params: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the parameters' raw bytes, in name order: the bit-exact restoration check."""
    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class Injection:
    """What one perturbation did: α, seed, entries touched and the injected noise norm."""

    alpha: float
    seed: int
    num_entries: int
    noise_norm: float


@contextmanager
def perturbed(
    model: torch.nn.Module,
    masks: Mapping[str, torch.Tensor],
    scales: Mapping[str, torch.Tensor],
    alpha: float,
    seed: int,
) -> Iterator[Injection]:
    """Add α·s·ε (ε ~ N(0,1), seeded) to the masked entries; restore them exactly on exit."""
    if alpha < 0:
        raise DataError(f"noise level alpha must be >= 0, got {alpha}")
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    saved: dict[str, torch.Tensor] = {}
    sq_norm, count = 0.0, 0
    try:
        with torch.no_grad():
            for name in sorted(masks):
                mask = masks[name]
                p = params[name]
                saved[name] = p.detach()[mask].clone()
                eps = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
                noise = alpha * scales[name].to(p.dtype) * eps
                noise = torch.where(mask, noise, torch.zeros((), dtype=p.dtype))
                p.add_(noise)
                sq_norm += float(noise.double().pow(2).sum())
                count += int(mask.sum())
        yield Injection(alpha=alpha, seed=seed, num_entries=count, noise_norm=sq_norm**0.5)
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].data[masks[name]] = original
