"""Rademacher probes that are regenerated, never stored.

Why regenerate: with graph reuse over micro-batches each probe is needed once per
micro-batch; keeping a block of K probes would be an n×K matrix. Probe k of seed s is a
pure function of (s, k), drawn tensor by tensor from its own generator, so it is
bit-identical every time it is drawn and independent of the other probes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def probe_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for probe ``index`` of run ``seed`` (SeedSequence mixing)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def rademacher(
    shapes: Sequence[torch.Size], dtype: torch.dtype, seed: int, index: int
) -> list[torch.Tensor]:
    """Probe ``index``: one ±1 tensor per shape (entries independent, mean 0, variance 1)."""
    gen = torch.Generator().manual_seed(probe_seed(seed, index))
    return [
        torch.randint(0, 2, tuple(s), generator=gen, dtype=dtype).mul_(2).sub_(1) for s in shapes
    ]
