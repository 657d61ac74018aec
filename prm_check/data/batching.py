"""Tokenise texts and pack them into padded micro-batches bounded by a token budget.

Why a token budget: memory of a forward/backward pass grows with batch × length, so
micro-batches are cut by padded tokens, not by example count. Every consumer (perplexity,
membership scores, curvature) uses the same batches and the same next-token mask, so a
"valid token" means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prm_check.errors import DataError


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids ``[B, T]`` and their attention mask (1 = real token)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def num_valid_targets(self) -> int:
        """Next-token targets that count in the loss: real tokens after the first."""
        return int(self.attention_mask[:, 1:].sum())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length``; empty texts are rejected."""
    if max_length < 2:
        raise DataError(f"max_length must be >= 2 to have a next-token target, got {max_length}")
    out: list[list[int]] = []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        if len(ids) < 2:
            raise DataError(
                f"text #{i} has {len(ids)} token(s); each text needs >= 2 tokens: {text[:40]!r}"
            )
        out.append(list(ids))
    return out


def chunk_token_stream(ids: Sequence[int], seq_len: int) -> list[list[int]]:
    """Cut one long token stream into consecutive windows of ``seq_len`` (last may be shorter)."""
    if seq_len < 2:
        raise DataError(f"seq_len must be >= 2, got {seq_len}")
    chunks = [list(ids[i : i + seq_len]) for i in range(0, len(ids), seq_len)]
    return [c for c in chunks if len(c) >= 2]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Right-pad ``sequences`` into one :class:`Batch`."""
    if not sequences:
        raise DataError("cannot build a batch from zero sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return Batch(ids, mask)


def make_batches(
    sequences: Sequence[Sequence[int]], max_tokens: int, pad_id: int, sort: bool = False
) -> list[Batch]:
    """Greedy micro-batches of at most ``max_tokens`` padded tokens each, in order.

    ``sort=True`` groups similar lengths to cut padding; order of examples then changes,
    which is fine for sums (loss, curvature) but not for per-example scores.
    """
    if max_tokens < 2:
        raise DataError(f"max_tokens must be >= 2, got {max_tokens}")
    if not sequences:
        raise DataError("no sequences to batch")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i])) if sort else None
    seqs = [sequences[i] for i in order] if order else list(sequences)
    batches: list[Batch] = []
    current: list[Sequence[int]] = []
    width = 0
    for seq in seqs:
        if len(seq) > max_tokens:
            seq = seq[:max_tokens]
        new_width = max(width, len(seq))
        if current and new_width * (len(current) + 1) > max_tokens:
            batches.append(pad_batch(current, pad_id))
            current, new_width = [], len(seq)
        current.append(seq)
        width = new_width
    if current:
        batches.append(pad_batch(current, pad_id))
    return batches
