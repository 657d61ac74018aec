"""Bag-of-words member/non-member classifier: the distribution-shift sanity check.

If a text-only classifier can tell members from non-members, an attack's AUC may measure
a difference between the two sets rather than memorisation (Duan et al. 2024; Das et al.
2024). With members and non-members drawn from one distribution it must sit near 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline

from prm_check.errors import DataError
from prm_check.privacy.losses import _check_texts
from prm_check.privacy.metrics import AucResult, auc_with_ci


def bag_of_words_auc(
    member_texts: Sequence[str],
    nonmember_texts: Sequence[str],
    *,
    seed: int = 0,
    folds: int = 5,
    n_boot: int = 1000,
    level: float = 0.95,
) -> AucResult:
    """AUC (bootstrap CI) of out-of-fold member probabilities from TF-IDF + logistic regression.

    Words include single characters and digits (records are mostly numbers). Folds are
    stratified and shuffled with ``seed``, so the result is deterministic.
    """
    members = _check_texts(member_texts, "member_texts")
    nonmembers = _check_texts(nonmember_texts, "nonmember_texts")
    if not (isinstance(folds, int) and folds >= 2):
        raise DataError(f"folds must be an integer ≥ 2, got {folds!r}")
    if min(len(members), len(nonmembers)) < folds:
        raise DataError(
            f"{folds}-fold cross-validation needs ≥ {folds} texts per class, have "
            f"{len(members)} members and {len(nonmembers)} non-members; lower folds"
        )
    texts = members + nonmembers
    y = np.r_[np.ones(len(members), dtype=int), np.zeros(len(nonmembers), dtype=int)]
    clf = make_pipeline(
        TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", sublinear_tf=True),
        LogisticRegression(max_iter=1000),
    )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        proba = cross_val_predict(clf, texts, y, cv=cv, method="predict_proba")[:, 1]
    except ValueError as exc:  # e.g. every text is only punctuation: empty vocabulary
        raise DataError(f"bag-of-words classifier could not be fitted: {exc}") from exc
    return auc_with_ci(proba[y == 1], proba[y == 0], n_boot=n_boot, seed=seed, level=level)
