"""Measurement instruments: perplexity, membership scores, attack metrics, canary exposure.

Convention everywhere: a HIGHER membership score means MORE member-like. Token losses are
computed once per model (:func:`sequence_token_losses`) and every score derives from them.
"""

from prm_check.privacy.bow import bag_of_words_auc
from prm_check.privacy.exposure import (
    ExposureResult,
    ExposureSummary,
    canary_exposures,
    exposure,
    exposures,
    summarise_exposures,
)
from prm_check.privacy.losses import (
    perplexity,
    perplexity_from_losses,
    sequence_token_losses,
)
from prm_check.privacy.metrics import (
    AucResult,
    TprResult,
    auc_with_ci,
    clopper_pearson,
    roc_auc,
    tpr_at_fpr,
)
from prm_check.privacy.report import (
    FPR_TARGETS,
    AttackResult,
    PrivacyReport,
    attack_result,
    evaluate_privacy,
)
from prm_check.privacy.scores import (
    ATTACKS,
    membership_scores,
    min_k_score,
    mope_scores,
    scores_from_losses,
    zlib_bytes,
)

__all__ = [
    "ATTACKS",
    "FPR_TARGETS",
    "AttackResult",
    "AucResult",
    "ExposureResult",
    "ExposureSummary",
    "PrivacyReport",
    "TprResult",
    "attack_result",
    "auc_with_ci",
    "bag_of_words_auc",
    "canary_exposures",
    "clopper_pearson",
    "evaluate_privacy",
    "exposure",
    "exposures",
    "membership_scores",
    "min_k_score",
    "mope_scores",
    "perplexity",
    "perplexity_from_losses",
    "roc_auc",
    "scores_from_losses",
    "sequence_token_losses",
    "summarise_exposures",
    "tpr_at_fpr",
    "zlib_bytes",
]
