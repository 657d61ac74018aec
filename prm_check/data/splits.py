"""All data splits of the built-in experiment in one serialisable record.

Why one record: every stage (curvature on *score* halves, metrics on *eval* halves) must
see exactly the same texts, and ``data.json`` in the cache is the single source of them.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields

from prm_check.data.corpus import CorpusSplit
from prm_check.data.records import Canary, generate_canaries, generate_records
from prm_check.errors import DataError

_TEXT_LISTS = (
    "corpus_train",
    "corpus_score",
    "corpus_eval",
    "public",
    "members_score",
    "members_eval",
    "nonmembers_score",
    "nonmembers_eval",
    "canary_references",
)


@dataclass(frozen=True)
class DataSplits:
    """Corpus chunks, record sets (public / members / non-members, score and eval halves)
    and canaries with their never-inserted references."""

    corpus_train: list[str]
    corpus_score: list[str]
    corpus_eval: list[str]
    public: list[str]
    members_score: list[str]
    members_eval: list[str]
    nonmembers_score: list[str]
    nonmembers_eval: list[str]
    canaries: list[Canary]
    canary_references: list[str]

    @property
    def members(self) -> list[str]:
        """Every member record (both halves): what the member fine-tune trains on."""
        return self.members_score + self.members_eval

    @property
    def nonmembers(self) -> list[str]:
        return self.nonmembers_score + self.nonmembers_eval

    def to_dict(self) -> dict:
        d = asdict(self)
        d["canaries"] = [asdict(c) for c in self.canaries]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataSplits:
        expected = {f.name for f in fields(cls)}
        missing = expected - set(d)
        if missing:
            raise DataError(f"data splits lack {sorted(missing)}; rebuild the assets (force=True)")
        try:
            kwargs = {k: [str(t) for t in d[k]] for k in _TEXT_LISTS}
            kwargs["canaries"] = [
                Canary(str(c["text"]), str(c["secret"]), int(c["repetitions"]))
                for c in d["canaries"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"data splits are malformed ({exc}); rebuild the assets") from exc
        return cls(**kwargs)


def _halves(items: list[str]) -> tuple[list[str], list[str]]:
    mid = len(items) // 2
    return items[:mid], items[mid:]


def build_splits(
    corpus: CorpusSplit,
    seed: int,
    n_public: int = 1000,
    n_members: int = 500,
    canary_repetitions: tuple[int, ...] = (1, 4, 16),
    canaries_per_rep: int = 20,
    n_canary_references: int = 1000,
) -> DataSplits:
    """Draw ``n_public + 2 * n_members`` records, shuffle, cut into the disjoint sets.

    Members and non-members have equal size; each is halved into score and eval.
    """
    if n_members < 2 or n_members % 2:
        raise DataError(f"n_members must be even and >= 2 (score/eval halves), got {n_members}")
    if n_public < 1:
        raise DataError(f"n_public must be >= 1, got {n_public}")
    records = generate_records(n_public + 2 * n_members, seed)
    random.Random(f"record-split:{seed}").shuffle(records)
    public = records[:n_public]
    members = records[n_public : n_public + n_members]
    nonmembers = records[n_public + n_members :]
    m_score, m_eval = _halves(members)
    n_score, n_eval = _halves(nonmembers)
    canaries, refs = generate_canaries(
        seed, tuple(canary_repetitions), canaries_per_rep, n_canary_references
    )
    return DataSplits(
        corpus_train=list(corpus.train),
        corpus_score=list(corpus.score),
        corpus_eval=list(corpus.eval),
        public=public,
        members_score=m_score,
        members_eval=m_eval,
        nonmembers_score=n_score,
        nonmembers_eval=n_eval,
        canaries=canaries,
        canary_references=refs,
    )
