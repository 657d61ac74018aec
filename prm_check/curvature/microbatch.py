"""Split padded batches into micro-batches bounded by padded tokens.

Why: the memory of a second-order pass grows with the tokens in its graph, while the
curvature of a token-weighted mean loss is exactly the valid-token-weighted sum of the
micro-batch curvatures, so splitting rows never changes the answer, only the peak.
Rows are never cut: a sequence's attention context is part of its loss.
"""

from __future__ import annotations

from collections.abc import Sequence

from prm_check.data.batching import Batch
from prm_check.errors import DataError


def _trimmed(batch: Batch, rows: slice) -> Batch:
    """Rows of ``batch`` with the all-padding columns on the right removed."""
    ids = batch.input_ids[rows]
    mask = batch.attention_mask[rows]
    width = int(mask.sum(dim=1).max()) if mask.numel() else 0
    width = max(width, 1)
    return Batch(ids[:, :width].contiguous(), mask[:, :width].contiguous())


def split_batches(batches: Sequence[Batch], max_tokens: int | None) -> list[Batch]:
    """Micro-batches of at most ``max_tokens`` padded tokens (a longer row stays alone).

    ``None`` keeps the batches as they are. Batches without a valid target are dropped:
    they contribute nothing to the loss or its derivatives.
    """
    if max_tokens is not None and max_tokens < 2:
        raise DataError(f"max_tokens must be >= 2, got {max_tokens}")
    out: list[Batch] = []
    for batch in batches:
        if not isinstance(batch, Batch):
            raise DataError(f"expected prm_check Batch objects, got {type(batch).__name__}")
        if max_tokens is None:
            if batch.num_valid_targets > 0:
                out.append(batch)
            continue
        lengths = batch.attention_mask.sum(dim=1).tolist()
        start = 0
        while start < len(lengths):
            stop, width = start, 0
            while stop < len(lengths):
                new_width = max(width, int(lengths[stop]))
                if stop > start and new_width * (stop - start + 1) > max_tokens:
                    break
                width, stop = new_width, stop + 1
            part = _trimmed(batch, slice(start, stop))
            if part.num_valid_targets > 0:
                out.append(part)
            start = stop
    return out
