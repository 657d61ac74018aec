"""Byte-level BPE tokenizer for the built-in assets, trained locally on the corpus.

Why train our own: nothing may be downloaded at run time, and a 2k vocabulary keeps the
embedding (the most expensive block for curvature) small. Byte-level means every string,
including names and digits in records, round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

from prm_check.errors import DataError

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
PAD_ID = 0
EOS_ID = 1


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Train a byte-level BPE on ``texts``; returns a transformers fast tokenizer.

    Special tokens: ``<pad>`` = id 0, ``</s>`` = id 1 (also BOS/UNK, never added by
    default). BPE training is deterministic for a given text order.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if not texts or not any(t.strip() for t in texts):
        raise DataError("tokenizer training got no text; pass a non-empty corpus")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 2:
        raise DataError(
            f"vocab_size {vocab_size} is below the byte alphabet + specials "
            f"({len(alphabet) + 2}); use >= {len(alphabet) + 2}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        show_progress=False,
        initial_alphabet=alphabet,
    )
    tok.train_from_iterator(texts, trainer)
    if tok.token_to_id(PAD_TOKEN) != PAD_ID or tok.token_to_id(EOS_TOKEN) != EOS_ID:
        raise DataError("tokenizer special tokens did not get ids 0/1; this is a bug")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )
