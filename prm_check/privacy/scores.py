"""Membership-inference scores for causal LMs. Convention: HIGHER score = MORE member-like.

Every score is a pure function of per-text token losses (see :mod:`.losses`), so a sweep
that evaluates many perturbed models runs one forward pass per model and derives all
attacks from it with :func:`scores_from_losses`.

- ``loss``: −mean token loss (Yeom et al. 2018).
- ``zlib``: −mean token loss / zlib-compressed length of the UTF-8 text in **bytes**,
  i.e. −(log-perplexity / zlib entropy) exactly as in the reference code of Carlini et al.
  2021 ("Extracting Training Data from LLMs"); bits would be a constant ×8, same ranking.
- ``min_k``: mean of the lowest-k fraction of token log-probabilities (Shi et al. 2023,
  "Min-K% Prob"); the count is max(1, floor(k·n)) — the reference code's ``int(k·n)``,
  but never empty for short texts.
- ``ref``: −(target loss − reference-model loss), the reference-calibrated loss
  difference (Carlini et al. 2021; Mireshghallah et al. 2022).
- ``mope``: see :func:`mope_scores`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from prm_check.errors import DataError
from prm_check.privacy.losses import _check_texts, sequence_token_losses

ATTACKS = ("loss", "zlib", "min_k", "ref")


def _check_k(k: float) -> float:
    if not (isinstance(k, (int, float)) and 0.0 < float(k) <= 1.0):
        raise DataError(f"min-k fraction k must be in (0, 1], got {k!r}; the paper uses 0.2")
    return float(k)


def _check_losses(losses: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    out = []
    for i, x in enumerate(losses):
        arr = np.asarray(x, dtype=np.float64).ravel()
        if arr.size == 0:
            raise DataError(f"{what}[{i}] has no token losses; each text needs ≥ 2 tokens")
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{what}[{i}] has non-finite token losses (inf/nan logits?)")
        out.append(arr)
    if not out:
        raise DataError(f"{what} is empty; pass losses of at least one text")
    return out


def mean_losses(losses: Sequence[np.ndarray]) -> np.ndarray:
    """Mean token loss of each text."""
    return np.array([float(np.mean(x)) for x in _check_losses(losses, "losses")])


def zlib_bytes(text: str) -> int:
    """zlib-compressed length (default level) of the UTF-8 text, in bytes."""
    return len(zlib.compress(text.encode("utf-8")))


def min_k_score(losses: np.ndarray, k: float = 0.2) -> float:
    """Mean log-prob of the max(1, floor(k·n)) least likely tokens (= −mean of largest losses)."""
    k = _check_k(k)
    x = _check_losses([losses], "losses")[0]
    m = max(1, math.floor(k * x.size + 1e-9))
    worst = np.partition(x, x.size - m)[x.size - m :]
    return -float(np.mean(worst))


def scores_from_losses(
    target_losses: Sequence[np.ndarray],
    texts: Sequence[str],
    *,
    reference_losses: Sequence[np.ndarray] | None = None,
    k: float = 0.2,
) -> dict[str, np.ndarray]:
    """All black-box attack scores from precomputed per-text token losses.

    ``reference_losses`` (same texts, a reference model) adds the ``ref`` attack.
    """
    k = _check_k(k)
    texts = _check_texts(texts)
    target = _check_losses(target_losses, "target_losses")
    if len(target) != len(texts):
        raise DataError(f"got {len(target)} loss arrays for {len(texts)} texts; pass one per text")
    mean_t = np.array([float(np.mean(x)) for x in target])
    scores = {
        "loss": -mean_t,
        "zlib": -mean_t / np.array([zlib_bytes(t) for t in texts], dtype=np.float64),
        "min_k": np.array([min_k_score(x, k) for x in target]),
    }
    if reference_losses is not None:
        ref = _check_losses(reference_losses, "reference_losses")
        if len(ref) != len(target):
            raise DataError(
                f"got {len(ref)} reference loss arrays for {len(target)} target ones; "
                "compute both on the same texts"
            )
        scores["ref"] = -(mean_t - np.array([float(np.mean(x)) for x in ref]))
    return scores


def membership_scores(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    reference_model: torch.nn.Module | None = None,
    k: float = 0.2,
    max_length: int = 128,
    max_tokens: int = 4096,
) -> dict[str, np.ndarray]:
    """Scores of every attack (see module doc) for ``texts``; one forward pass per model."""
    _check_k(k)
    kw = {"max_length": max_length, "max_tokens": max_tokens}
    target = sequence_token_losses(model, tokenizer, texts, **kw)
    reference = (
        None
        if reference_model is None
        else sequence_token_losses(reference_model, tokenizer, texts, **kw)
    )
    return scores_from_losses(target, texts, reference_losses=reference, k=k)


ParamFilter = Callable[[str, torch.nn.Parameter], bool]


def mope_scores(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    sigma: float,
    n_draws: int,
    seed: int,
    param_filter: ParamFilter | None = None,
    max_length: int = 128,
    max_tokens: int = 4096,
    clean_losses: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """MoPe (Li et al. 2023): mean loss increase per text under Gaussian weight noise.

    Each draw adds N(0, sigma²) to every parameter ``param_filter(name, p)`` selects (all
    by default, seeded), and the score is mean over draws of (perturbed − clean) mean token
    loss. The sign is +: the increase ≈ ½σ²·tr(H_x), members sit in sharper minima and lose
    more, so a larger increase is more member-like. Weights are restored bit-exactly from
    copies after every draw, also on error. ``clean_losses`` skips the clean pass.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise DataError(f"MoPe sigma must be a finite number > 0, got {sigma!r}")
    if not (isinstance(n_draws, int) and n_draws >= 1):
        raise DataError(f"MoPe n_draws must be an integer ≥ 1, got {n_draws!r}")
    texts = _check_texts(texts)
    params = [
        (n, p) for n, p in model.named_parameters() if param_filter is None or param_filter(n, p)
    ]
    if not params:
        raise DataError("MoPe param_filter selected no parameters; check the name pattern")
    kw = {"max_length": max_length, "max_tokens": max_tokens}
    if clean_losses is None:
        clean_losses = sequence_token_losses(model, tokenizer, texts, **kw)
    clean = mean_losses(clean_losses)
    if clean.size != len(texts):
        raise DataError(f"got {clean.size} clean loss arrays for {len(texts)} texts")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    increase = np.zeros(len(texts))
    saved = [p.detach().clone() for _, p in params]
    try:
        for _ in range(n_draws):
            with torch.no_grad():
                for _, p in params:
                    noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
                    p.add_(noise.to(device=p.device, dtype=p.dtype), alpha=float(sigma))
            perturbed = mean_losses(sequence_token_losses(model, tokenizer, texts, **kw))
            increase += perturbed - clean
            with torch.no_grad():
                for (_, p), orig in zip(params, saved, strict=True):
                    p.copy_(orig)
    finally:
        with torch.no_grad():
            for (_, p), orig in zip(params, saved, strict=True):
                p.copy_(orig)
    return increase / n_draws
