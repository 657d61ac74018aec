"""Built-in data: corpus chunks and splits, tokenizer, records, canaries, DataSplits."""

from __future__ import annotations

import json

import pytest

from prm_check.data.corpus import (
    chunk_documents,
    corpus_documents,
    corpus_sha256,
    split_chunks,
)
from prm_check.data.records import (
    CANARY_PREFIX,
    canary_insertions,
    generate_canaries,
    generate_records,
)
from prm_check.data.splits import DataSplits, build_splits
from prm_check.data.tokenizer import EOS_ID, PAD_ID, train_bpe_tokenizer
from prm_check.errors import DataError


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(corpus_documents(), 2048)


@pytest.fixture(scope="module")
def chunks(bpe):
    return chunk_documents(corpus_documents(), bpe, 128)


def _splits(seed: int, n_public: int = 40, n_members: int = 30) -> DataSplits:
    corpus = split_chunks([f"chunk {i}" for i in range(50)], seed)
    return build_splits(
        corpus, seed, n_public=n_public, n_members=n_members, canaries_per_rep=3,
        n_canary_references=25,
    )  # fmt: skip


def test_corpus_is_real_text_and_hash_is_stable():
    docs = corpus_documents()
    assert len(docs) > 50 and sum(map(len, docs)) > 100_000
    assert corpus_sha256() == corpus_sha256(docs)
    assert corpus_sha256(docs[:-1]) != corpus_sha256(docs)


def test_tokenizer_round_trip_and_special_ids(bpe, tmp_path):
    from transformers import AutoTokenizer

    text = "Name: Zoë Kim. Born: 1990-01-02. Phone: 555-010-2030.\n  def f(x): return x ** 2"
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == text
    assert (bpe.pad_token_id, bpe.eos_token_id, len(bpe)) == (PAD_ID, EOS_ID, 2048)
    bpe.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.pad_token_id == PAD_ID


def test_tokenizer_rejects_empty_and_tiny_vocab():
    with pytest.raises(DataError, match="no text"):
        train_bpe_tokenizer([" ", ""])
    with pytest.raises(DataError, match="vocab_size"):
        train_bpe_tokenizer(["abc"], vocab_size=10)


def test_corpus_chunks_are_bounded_and_cover_the_text(bpe, chunks):
    lengths = [len(bpe(c, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(lengths) <= 128 and min(lengths) >= 2
    assert sum(lengths) > 100_000  # nearly all of ~128k corpus tokens survive chunking
    assert sum(n >= 100 for n in lengths) > 0.9 * len(lengths)


def test_corpus_split_is_disjoint_deterministic_and_seeded(chunks):
    a, b, c = split_chunks(chunks, 0), split_chunks(chunks, 0), split_chunks(chunks, 1)
    assert a == b and a != c
    train, score, ev = set(a.train), set(a.score), set(a.eval)
    assert not (train & score or train & ev or score & ev)
    assert len(train) + len(score) + len(ev) == len(set(chunks))
    assert abs(len(score) - 0.1 * len(set(chunks))) <= 1 and len(score) == len(ev)
    with pytest.raises(DataError, match="fractions"):
        split_chunks(chunks, 0, score_fraction=0.6, eval_fraction=0.5)
    with pytest.raises(DataError, match="too few"):
        split_chunks(["a", "b"], 0)


def test_records_deterministic_distinct_and_seed_dependent():
    r0 = generate_records(300, 0)
    assert r0 == generate_records(300, 0)
    assert len(set(r0)) == 300
    names = {r.split(".")[0] for r in r0}
    assert len(names) == 300  # distinct full names
    assert set(r0).isdisjoint(generate_records(300, 1))
    for field in ("Name: ", "Born: ", "Phone: 555-", "Address: ", "Account: "):
        assert all(field in r for r in r0)
    with pytest.raises(DataError, match="records"):
        generate_records(0, 0)


def test_canaries_counts_references_and_insertions():
    canaries, refs = generate_canaries(0, (1, 4, 16), per_rep=20, n_references=1000)
    assert len(canaries) == 60 and len(refs) == 1000
    assert {r: sum(c.repetitions == r for c in canaries) for r in (1, 4, 16)} == {
        1: 20,
        4: 20,
        16: 20,
    }
    secrets = [c.secret for c in canaries]
    assert len(set(secrets)) == 60 and all(len(s) == 6 and s.isdigit() for s in secrets)
    assert all(c.text == f"{CANARY_PREFIX}{c.secret}." for c in canaries)
    assert all(r.startswith(CANARY_PREFIX) for r in refs) and len(set(refs)) == 1000
    assert set(refs).isdisjoint(c.text for c in canaries)
    inserted = canary_insertions(canaries)
    assert len(inserted) == 20 * (1 + 4 + 16)
    assert all(inserted.count(c.text) == c.repetitions for c in canaries)
    assert generate_canaries(1)[0] != canaries
    with pytest.raises(DataError, match="canaries"):
        generate_canaries(0, per_rep=0)


def test_splits_disjoint_equal_sizes_and_seeded():
    s = _splits(0)
    sets = [s.public, s.members_score, s.members_eval, s.nonmembers_score, s.nonmembers_eval]
    assert [len(x) for x in sets] == [40, 15, 15, 15, 15]
    flat = [t for x in sets for t in x]
    assert len(set(flat)) == len(flat)
    assert s.members == s.members_score + s.members_eval
    assert _splits(0) == s
    assert set(_splits(1).members).isdisjoint(s.members)
    with pytest.raises(DataError, match="even"):
        _splits(0, n_members=31)


def test_splits_dict_round_trip_through_json():
    s = _splits(3)
    again = DataSplits.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s
    d = s.to_dict()
    del d["members_eval"]
    with pytest.raises(DataError, match="members_eval"):
        DataSplits.from_dict(d)
    d = s.to_dict()
    d["canaries"] = [{"text": "x"}]
    with pytest.raises(DataError, match="malformed"):
        DataSplits.from_dict(d)
