"""DeLong's test: two correlated ROC AUCs on the same patients compared without resampling.

DeLong, DeLong & Clarke-Pearson (1988, Biometrics 44:837-845) write the AUC of a score as the
Mann-Whitney statistic, the mean over (positive i, negative j) pairs of psi(X_i, Y_j) (1 if the
positive scores higher, 1/2 for a tie, 0 otherwise), and estimate the covariance of several
AUCs on the same patients from their structural components: per positive the share of negatives
it outscores, V10(X_i), per negative the share of positives that outscore it, V01(Y_j), so that
Cov = S10 / m + S01 / n (S10, S01: sample covariance matrices of the components over the m
positives and the n negatives). Sun & Xu (2014, IEEE Signal Processing Letters 21:1389-1393)
compute the components from mid-ranks in O(N log N) instead of the m x n pairs:
V10 = (Tz - Tx) / n over the positives and V01 = 1 - (Tz - Ty) / m over the negatives, with
Tz the mid-ranks among all patients and Tx, Ty among the positives or negatives alone.

The paired test of AUC_b - AUC_a uses z = difference / SE with SE^2 = Var_a + Var_b - 2 Cov_ab
and a two-sided normal p-value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from stsnb.core.errors import StsnbError


@dataclass(frozen=True)
class DeLongResult:
    """The paired comparison of AUC_b with AUC_a (difference = b - a) on the same patients."""

    auc_a: float
    auc_b: float
    difference: float
    se: float  # standard error of the difference
    z: float
    p_value: float  # two-sided
    ci_low: float  # normal confidence interval of the difference
    ci_high: float
    n_positive: int
    n_negative: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for a table row)."""
        return asdict(self)


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        values = sorted(set(np.unique(labels).tolist()))[:5]
        raise StsnbError("DeLong's test needs one 0/1 label per patient; got labels of shape "
                         f"{labels.shape} with values {values}.")
    if scores.shape[1] != len(labels):
        raise StsnbError(f"DeLong's test needs one score per label: {scores.shape[1]} scores for "
                         f"{len(labels)} labels.")
    if not np.isfinite(scores).all():
        raise StsnbError("DeLong's test needs finite scores; some are NaN or infinite.")
    positive = labels == 1
    if positive.sum() < 2 or (~positive).sum() < 2:
        raise StsnbError(f"DeLong's test needs at least 2 patients of each class; got "
                         f"{int(positive.sum())} positive and {int((~positive).sum())} negative.")
    return positive, scores


def structural_components(labels: np.ndarray,
                          scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUCs (k,), V10 (k, m), V01 (k, n)) of k score vectors (k, N) by Sun & Xu's mid-ranks.

    V10: for each positive, the share of negatives it outscores (ties 1/2); V01: for each
    negative, the share of positives that outscore it. The AUC is the mean of either.
    """
    positive, scores = _check(labels, scores)
    x, y = scores[:, positive], scores[:, ~positive]
    m, n = x.shape[1], y.shape[1]
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)  # mid-ranks (ties: the average)
    tx, ty = rankdata(x, axis=1), rankdata(y, axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    return aucs, v10, v01


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (k,), their covariance matrix (k, k)) of k score vectors (k, N) on the same
    patients: S10 / m + S01 / n (DeLong et al. 1988)."""
    aucs, v10, v01 = structural_components(labels, scores)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / v10.shape[1] + s01 / v01.shape[1]


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                level: float = 0.95) -> DeLongResult:
    """DeLong's paired test of AUC(scores_b) - AUC(scores_a) on the same patients.

    Scores that rank the patients alike (identical scores, say) give a difference of 0 with SE
    0: z = 0 and p = 1. A nonzero difference with SE 0 (both sets of components constant) gives
    z = +-inf and p = 0.
    """
    if not 0.0 < level < 1.0:
        raise StsnbError(f"The confidence level must lie in (0, 1); got {level}.")
    labels = np.asarray(labels)
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != labels.shape or b.shape != labels.shape:
        raise StsnbError(f"DeLong's test needs one score per label: {a.shape} and {b.shape} "
                         f"scores for {labels.shape} labels.")
    aucs, cov = delong_covariance(labels, np.vstack([a, b]))
    difference = float(aucs[1] - aucs[0])
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    # Rounding can leave a few ulps of (positive or negative) variance where there is none.
    scale = float(cov[0, 0] + cov[1, 1])
    se = float(np.sqrt(variance)) if variance > 1e-14 * max(scale, 1e-300) else 0.0
    if se > 0.0:
        z = difference / se
    elif abs(difference) <= 1e-15:
        z = 0.0
    else:
        z = float(np.copysign(np.inf, difference))
    p_value = float(min(1.0, 2.0 * norm.sf(abs(z))))
    half = float(norm.ppf(0.5 + level / 2.0)) * se
    return DeLongResult(auc_a=float(aucs[0]), auc_b=float(aucs[1]), difference=difference,
                        se=se, z=float(z), p_value=p_value, ci_low=difference - half,
                        ci_high=difference + half, n_positive=int((labels == 1).sum()),
                        n_negative=int((labels == 0).sum()))


def paired_delong(reference: pd.DataFrame, other: pd.DataFrame,
                  level: float = 0.95) -> DeLongResult:
    """DeLong's test of the patient-level AUC of `other` against `reference` (predictions.csv
    tables; a patient's probability is the mean over its slices) on the patients both hold."""
    from stsnb.core.metrics import patient_predictions

    a = patient_predictions(reference).set_index("patient_id")
    b = patient_predictions(other).set_index("patient_id")
    shared = a.index.intersection(b.index).sort_values()
    if not (a.loc[shared, "label"].to_numpy() == b.loc[shared, "label"].to_numpy()).all():
        raise StsnbError("The two runs give some shared patients different labels: compare runs "
                         "of the same split (a random-label control has permuted labels).")
    return delong_test(a.loc[shared, "label"].to_numpy(), a.loc[shared, "prob"].to_numpy(),
                       b.loc[shared, "prob"].to_numpy(), level)
