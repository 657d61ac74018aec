"""One call that measures a model's privacy leakage and utility, as a JSON-ready report.

Each model's token losses are computed once (members + non-members in one pass, canaries
+ references in one pass) and every attack, metric and exposure is derived from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prm_check.errors import DataError
from prm_check.privacy.bow import bag_of_words_auc
from prm_check.privacy.exposure import ExposureSummary, canary_exposures
from prm_check.privacy.losses import _check_texts, perplexity_from_losses, sequence_token_losses
from prm_check.privacy.metrics import AucResult, TprResult, auc_with_ci, tpr_at_fpr
from prm_check.privacy.scores import mope_scores, scores_from_losses

FPR_TARGETS = (0.01, 0.001)


@dataclass(frozen=True)
class AttackResult:
    """One attack's AUC (with CI) and TPR at each target FPR."""

    attack: str
    auc: AucResult
    tpr: tuple[TprResult, ...]

    def as_dict(self) -> dict:
        return {
            "attack": self.attack,
            "auc": self.auc.as_dict(),
            "tpr": [t.as_dict() for t in self.tpr],
        }


@dataclass(frozen=True)
class PrivacyReport:
    """Utility (perplexity) and leakage (attacks, exposure, distribution-shift check)."""

    n_members: int
    n_nonmembers: int
    perplexity: float | None
    reference_perplexity: float | None
    attacks: dict[str, AttackResult]
    exposure: dict[int, ExposureSummary] | None
    bag_of_words: AucResult

    def as_dict(self) -> dict:
        return {
            "data": "real",
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "perplexity": self.perplexity,
            "reference_perplexity": self.reference_perplexity,
            "attacks": {k: v.as_dict() for k, v in self.attacks.items()},
            "exposure": None
            if self.exposure is None
            else {str(r): e.as_dict() for r, e in self.exposure.items()},
            "bag_of_words": self.bag_of_words.as_dict(),
        }


def attack_result(
    name: str,
    member,
    nonmember,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    fprs: Sequence[float] = FPR_TARGETS,
) -> AttackResult:
    """AUC with bootstrap CI and TPR at each of ``fprs`` for one attack's scores."""
    return AttackResult(
        name,
        auc_with_ci(member, nonmember, n_boot=n_boot, seed=seed),
        tuple(tpr_at_fpr(member, nonmember, f) for f in fprs),
    )


def evaluate_privacy(
    model: torch.nn.Module,
    tokenizer,
    *,
    members: Sequence[str],
    nonmembers: Sequence[str],
    reference_model: torch.nn.Module | None = None,
    canaries: Sequence | None = None,
    canary_references: Sequence[str] | None = None,
    ppl_texts: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    k: float = 0.2,
    mope_sigma: float | None = None,
    mope_draws: int = 3,
    max_length: int = 128,
    max_tokens: int = 4096,
) -> PrivacyReport:
    """Perplexity, every attack's AUC/TPR, canary exposure per r and the bag-of-words AUC.

    ``mope_sigma`` adds the MoPe attack (``mope_draws`` noise draws, seeded by ``seed``).
    """
    members = _check_texts(members, "members")
    nonmembers = _check_texts(nonmembers, "nonmembers")
    if (canaries is None) != (canary_references is None):
        raise DataError("pass canaries and canary_references together, or neither")
    kw = {"max_length": max_length, "max_tokens": max_tokens}
    texts = members + nonmembers
    n_m = len(members)
    target = sequence_token_losses(model, tokenizer, texts, **kw)
    reference = None
    if reference_model is not None:
        reference = sequence_token_losses(reference_model, tokenizer, texts, **kw)
    scores = scores_from_losses(target, texts, reference_losses=reference, k=k)
    if mope_sigma is not None:
        scores["mope"] = mope_scores(
            model, tokenizer, texts, sigma=mope_sigma, n_draws=mope_draws, seed=seed,
            clean_losses=target, **kw,
        )  # fmt: skip
    attacks = {
        name: attack_result(name, s[:n_m], s[n_m:], n_boot=n_boot, seed=seed)
        for name, s in scores.items()
    }
    ppl = ref_ppl = None
    if ppl_texts is not None:
        ppl = perplexity_from_losses(sequence_token_losses(model, tokenizer, ppl_texts, **kw))
        if reference_model is not None:
            ref_ppl = perplexity_from_losses(
                sequence_token_losses(reference_model, tokenizer, ppl_texts, **kw)
            )
    exposure = None
    if canaries is not None:
        exposure = canary_exposures(model, tokenizer, canaries, canary_references, **kw)
    bow = bag_of_words_auc(members, nonmembers, seed=seed, n_boot=n_boot)
    return PrivacyReport(n_m, len(nonmembers), ppl, ref_ppl, attacks, exposure, bow)
