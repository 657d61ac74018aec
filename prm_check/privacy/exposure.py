"""Canary exposure (Carlini et al. 2019, "The Secret Sharer").

exposure = log2(|R| + 1) − log2(rank): how many bits better than chance the model ranks
an inserted secret among never-inserted reference secrets of the same format. The rank
form is capped at log2(|R|+1); the skew-normal form extrapolates past that cap by fitting
the references' loss distribution and taking −log2 P[reference loss ≤ canary loss].

The loss of a canary (and of each reference) is the **sum** of its token losses over the
whole text — its log-perplexity, the paper's quantity. Canary and references share the
prefix, whose token losses are identical under a causal LM, so the ranking is decided by
the secret's tokens without having to locate them in the tokenisation; a sum (not a mean)
does not reward secrets that happen to tokenise into more pieces.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import skewnorm

from prm_check.errors import DataError
from prm_check.privacy.losses import sequence_token_losses


@dataclass(frozen=True)
class ExposureResult:
    """Exposure of one canary; rank 1 = lower loss than every reference."""

    rank: int
    rank_exposure: float
    skewnorm_exposure: float
    n_references: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExposureSummary:
    """Exposure over the canaries inserted ``repetitions`` times."""

    repetitions: int
    n_canaries: int
    mean_rank_exposure: float
    min_rank_exposure: float
    max_rank_exposure: float
    mean_skewnorm_exposure: float
    min_skewnorm_exposure: float
    max_skewnorm_exposure: float
    max_possible_rank_exposure: float
    n_references: int

    def as_dict(self) -> dict:
        return asdict(self)


def _finite_1d(x, what: str, min_size: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size < min_size:
        raise DataError(f"{what} has {arr.size} value(s); need ≥ {min_size}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what} has non-finite values (nan/inf); fix the losses first")
    return arr


def _fit_skewnorm(ref: np.ndarray) -> tuple[float, float, float]:
    if float(np.ptp(ref)) == 0.0:
        raise DataError(
            "reference losses are all equal, so no distribution can be fitted; use more "
            "varied reference secrets"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a, loc, scale = skewnorm.fit(ref)
    return float(a), float(loc), float(scale)


def exposures(canary_losses, reference_losses) -> list[ExposureResult]:
    """Exposure of each canary against one set of references (one skew-normal fit for all).

    Ties with a reference count against the canary (pessimistic rank), so exposure is
    never overstated.
    """
    can = _finite_1d(canary_losses, "canary losses", 1)
    ref = _finite_1d(reference_losses, "reference losses", 2)
    a, loc, scale = _fit_skewnorm(ref)
    ref_sorted = np.sort(ref)
    ranks = 1 + np.searchsorted(ref_sorted, can, side="right")
    top = math.log2(ref.size + 1)
    log_cdf = skewnorm.logcdf(can, a, loc, scale)
    return [
        ExposureResult(int(r), top - math.log2(int(r)), float(-lc / math.log(2)), int(ref.size))
        for r, lc in zip(ranks, log_cdf, strict=True)
    ]


def exposure(canary_loss: float, reference_losses) -> ExposureResult:
    """Exposure of one canary: rank-based and skew-normal extrapolated (see module doc)."""
    return exposures([canary_loss], reference_losses)[0]


def _canary_fields(canaries: Sequence) -> tuple[list[str], list[int]]:
    texts, reps = [], []
    if not canaries:
        raise DataError("no canaries given; pass objects with .text, .secret, .repetitions")
    for i, c in enumerate(canaries):
        text, r = getattr(c, "text", None), getattr(c, "repetitions", None)
        if not isinstance(text, str) or not isinstance(r, int) or isinstance(r, bool):
            raise DataError(
                f"canary #{i} ({type(c).__name__}) needs .text: str and .repetitions: int"
            )
        secret = getattr(c, "secret", None)
        if secret is not None and str(secret) not in text:
            raise DataError(f"canary #{i}: secret {secret!r} does not occur in its text {text!r}")
        texts.append(text)
        reps.append(r)
    return texts, reps


def summarise_exposures(
    canary_losses, repetitions: Sequence[int], reference_losses
) -> dict[int, ExposureSummary]:
    """Exposure per repetition count r: mean / min / max over the canaries inserted r times."""
    results = exposures(canary_losses, reference_losses)
    if len(results) != len(repetitions):
        raise DataError(f"{len(results)} canary losses for {len(repetitions)} repetition counts")
    out: dict[int, ExposureSummary] = {}
    for r in sorted(set(repetitions)):
        rows = [e for e, rr in zip(results, repetitions, strict=True) if rr == r]
        rank_e = np.array([e.rank_exposure for e in rows])
        skew_e = np.array([e.skewnorm_exposure for e in rows])
        out[r] = ExposureSummary(
            r, len(rows),
            float(rank_e.mean()), float(rank_e.min()), float(rank_e.max()),
            float(skew_e.mean()), float(skew_e.min()), float(skew_e.max()),
            math.log2(rows[0].n_references + 1), rows[0].n_references,
        )  # fmt: skip
    return out


def canary_exposures(
    model: torch.nn.Module,
    tokenizer,
    canaries: Sequence,
    reference_texts: Sequence[str],
    *,
    max_length: int = 128,
    max_tokens: int = 4096,
) -> dict[int, ExposureSummary]:
    """Exposure per repetition count of ``canaries`` (duck-typed .text/.secret/.repetitions)."""
    texts, reps = _canary_fields(canaries)
    if isinstance(reference_texts, str) or len(reference_texts) < 2:
        raise DataError("reference_texts must be a list of ≥ 2 never-inserted reference canaries")
    losses = sequence_token_losses(
        model, tokenizer, [*texts, *reference_texts], max_length=max_length, max_tokens=max_tokens
    )
    sums = np.array([float(np.sum(x)) for x in losses])
    return summarise_exposures(sums[: len(texts)], reps, sums[len(texts) :])
