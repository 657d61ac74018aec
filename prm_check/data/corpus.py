"""The functional corpus: CPython's own ``pydoc_data.topics``, cut into token-bounded chunks.

Why this text: it is real English prose (the language reference), ships with every
CPython, so nothing is downloaded, and ~465k characters is enough for a ~1M-parameter LM.
Its content varies slightly between Python versions, so the built-in cache key includes
:func:`corpus_sha256`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from prm_check.errors import DataError


def corpus_documents() -> list[str]:
    """The topic texts in a fixed (sorted-key) order."""
    from pydoc_data.topics import topics

    docs = [topics[k].strip() for k in sorted(topics)]
    docs = [d for d in docs if d]
    if not docs:
        raise DataError("pydoc_data.topics is empty in this Python; the built-in corpus needs it")
    return docs


def corpus_sha256(docs: Sequence[str] | None = None) -> str:
    """Hash of the corpus text, so a different Python's corpus gives a different cache key."""
    h = hashlib.sha256()
    for d in corpus_documents() if docs is None else docs:
        h.update(d.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _n_tokens(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def chunk_documents(docs: Sequence[str], tokenizer, max_tokens: int = 128) -> list[str]:
    """Cut every document into consecutive text chunks of at most ``max_tokens`` tokens.

    Cuts fall on token boundaries (via offsets). Re-tokenising a chunk can differ at a cut
    inside a word, so a chunk that comes out longer is shortened token by token.
    Whitespace-only pieces are dropped.
    """
    if max_tokens < 8:
        raise DataError(f"max_tokens must be >= 8 for useful chunks, got {max_tokens}")
    encs = tokenizer(list(docs), add_special_tokens=False, return_offsets_mapping=True)
    chunks: list[str] = []
    for doc, offsets in zip(docs, encs["offset_mapping"], strict=True):
        spans = [
            (offsets[i][0], offsets[min(i + max_tokens, len(offsets)) - 1][1])
            for i in range(0, len(offsets), max_tokens)
        ]
        texts = [doc[a:b] for a, b in spans]
        for (a, b), text, n in zip(spans, texts, _n_tokens(tokenizer, texts), strict=True):
            if n > max_tokens:  # rare: shrink until it fits; the cut-off tail is dropped
                ends = [e for _, e in offsets if a < e < b]
                while ends and n > max_tokens:
                    text = doc[a : ends.pop()]
                    n = _n_tokens(tokenizer, [text])[0]
            if text.strip() and n >= 2:
                chunks.append(text)
    if not chunks:
        raise DataError("corpus produced no chunks with >= 2 tokens")
    return chunks


@dataclass(frozen=True)
class CorpusSplit:
    """Disjoint train / score / eval chunk lists."""

    train: list[str]
    score: list[str]
    eval: list[str]


def split_chunks(
    chunks: Sequence[str], seed: int, score_fraction: float = 0.1, eval_fraction: float = 0.1
) -> CorpusSplit:
    """Random, seed-determined split of chunk *positions* (duplicate texts stay on one side)."""
    fractions_ok = score_fraction > 0 and eval_fraction > 0 and score_fraction + eval_fraction < 1
    if not fractions_ok:
        raise DataError(
            f"corpus fractions score={score_fraction}, eval={eval_fraction} must be in (0, 1) "
            "and sum to < 1"
        )
    unique = list(dict.fromkeys(chunks))  # drop exact duplicates, keep first-seen order
    order = list(range(len(unique)))
    random.Random(f"corpus-split:{seed}").shuffle(order)
    n_score = max(1, round(len(unique) * score_fraction))
    n_eval = max(1, round(len(unique) * eval_fraction))
    if n_score + n_eval >= len(unique):
        raise DataError(f"only {len(unique)} corpus chunks: too few to split three ways")
    score_idx = sorted(order[:n_score])
    eval_idx = sorted(order[n_score : n_score + n_eval])
    train_idx = sorted(order[n_score + n_eval :])
    return CorpusSplit(
        train=[unique[i] for i in train_idx],
        score=[unique[i] for i in score_idx],
        eval=[unique[i] for i in eval_idx],
    )
