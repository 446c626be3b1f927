"""Statistics of one run's predictions (``predictions.csv``), slice and patient level.

Slice level (the study's unit): metrics per test fold, then mean +- std over folds. Patient level
(what a clinic needs): the slice probabilities of a patient averaged into one probability per
patient, metrics over patients with bootstrap 95% confidence intervals (resampling patients);
the chance band of an AUC; calibration; the baselines on the same folds."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    brier_score_loss,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stsnb.core.errors import StsnbError
from stsnb.core.metrics import (
    METRICS,
    PREDICTION_COLUMNS,
    binary_metrics,
    patient_predictions,
    rank_auc,
)
from stsnb.core.metrics import metric as metric_function


def fold_metrics(predictions: pd.DataFrame) -> pd.DataFrame:
    """Slice-level metrics of each test fold (the study's unit)."""
    rows = [
        {"fold": fold, **binary_metrics(group["label"], group["prob"])}
        for fold, group in predictions.groupby("fold", sort=True)
    ]
    return pd.DataFrame(rows)


def mean_std(per_fold: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> dict[str, tuple]:
    """(mean, std) over folds of each metric (std with ddof=1, NaN folds ignored)."""
    return {m: (float(per_fold[m].mean()), float(per_fold[m].std(ddof=1))) for m in metrics}


def bootstrap_ci(
    label: np.ndarray,
    prob: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap over the units (patients), seeded.

    Resamples in which the statistic is undefined (NaN, e.g. one class only) are dropped.
    """
    label, prob = np.asarray(label), np.asarray(prob)
    rng = np.random.default_rng(seed)
    estimate = float(statistic(label, prob))
    draws = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(label), len(label))
        value = statistic(label[pick], prob[pick])
        if np.isfinite(value):
            draws.append(value)
    if not draws:
        return estimate, float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return estimate, float(low), float(high)


def patient_metrics_ci(predictions: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                       metrics: tuple[str, ...] = ("auc", "balanced_accuracy", "accuracy",
                                                   "sensitivity", "specificity")) -> pd.DataFrame:
    """Patient-level metrics with bootstrap 95% CIs over patients."""
    patients = patient_predictions(predictions)
    rows = []
    for name in metrics:
        est, low, high = bootstrap_ci(patients["label"].to_numpy(), patients["prob"].to_numpy(),
                                      metric_function(name), n_boot=n_boot, seed=seed)
        rows.append({"metric": name, "estimate": est, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def paired_auc_difference(
    reference: pd.DataFrame, other: pd.DataFrame, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Patient-level AUC(other) - AUC(reference) with a paired bootstrap over shared patients.

    `p_not_worse` is the share of resamples in which `other` is at least as good.
    """
    a = patient_predictions(reference).set_index("patient_id")
    b = patient_predictions(other).set_index("patient_id")
    shared = a.index.intersection(b.index)
    if len(shared) < 4:
        raise StsnbError("Too few shared patients to compare two combinations.")
    label = a.loc[shared, "label"].to_numpy()
    pa, pb = a.loc[shared, "prob"].to_numpy(), b.loc[shared, "prob"].to_numpy()
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(shared), len(shared))
        if len(np.unique(label[pick])) < 2:
            continue
        diffs.append(rank_auc(label[pick], pb[pick]) - rank_auc(label[pick], pa[pick]))
    diffs_arr = np.asarray(diffs)
    return {
        "auc_difference": float(roc_auc_score(label, pb) - roc_auc_score(label, pa)),
        "ci_low": float(np.quantile(diffs_arr, 0.025)),
        "ci_high": float(np.quantile(diffs_arr, 0.975)),
        "p_not_worse": float(np.mean(diffs_arr >= 0)),
        "n_patients": int(len(shared)),
    }


def roc_points(predictions: pd.DataFrame, level: str = "patient") -> pd.DataFrame:
    """False- and true-positive rates of the ROC curve, per slice or per patient."""
    table = patient_predictions(predictions) if level == "patient" else predictions
    fpr, tpr, thresholds = roc_curve(table["label"], table["prob"])
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})


def calibration(predictions: pd.DataFrame, n_bins: int = 5) -> tuple[pd.DataFrame, float]:
    """Reliability curve (patient level, quantile bins) and the Brier score."""
    patients = patient_predictions(predictions)
    observed, predicted = calibration_curve(patients["label"], patients["prob"], n_bins=n_bins,
                                            strategy="quantile")
    curve = pd.DataFrame({"predicted": predicted, "observed": observed})
    return curve, float(brier_score_loss(patients["label"], patients["prob"]))


def baseline_predictions(
    patients: pd.DataFrame, folds: Mapping[str, int], features: list[str], seed: int = 0
) -> pd.DataFrame:
    """Logistic regression on patient-level `features`, on the same patient folds as the network.

    `patients` has patient_id, label and the feature columns; `folds` maps patient -> test fold.
    Returns one row per patient (patient_id, slice_index = -1, fold, label, prob), the shape of
    predictions.csv, so every metric above applies to it.
    """
    table = patients[patients["patient_id"].isin(folds)].copy()
    table["fold"] = table["patient_id"].map(folds)
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise StsnbError(f"Baseline features {missing} are not in the cohort table.")
    x = pd.get_dummies(table[features], drop_first=True, dummy_na=False).astype(float)
    x = x.fillna(x.median(numeric_only=True))
    rows = []
    for fold in sorted(table["fold"].unique()):
        test = (table["fold"] == fold).to_numpy()
        train_labels = table.loc[~test, "label"]
        if train_labels.nunique() < 2:
            prob = np.full(test.sum(), float(train_labels.mean()))
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000,
                                                                       random_state=seed))
            model.fit(x[~test], train_labels)
            prob = model.predict_proba(x[test])[:, 1]
        part = table.loc[test, ["patient_id", "fold", "label"]].assign(slice_index=-1, prob=prob)
        rows.append(part)
    return pd.concat(rows, ignore_index=True)[list(PREDICTION_COLUMNS)]


def format_mean_std(mean: float, std: float) -> str:
    """`0.90 ± 0.03`, the study's layout."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if np.isfinite(std) else f"{mean:.2f}"


def chance_band(n_positive: int, n_negative: int, level: float = 0.95) -> tuple[float, float]:
    """Where the AUC of an uninformative classifier falls with probability `level`.

    Under the null the AUC is the Mann-Whitney statistic over n_positive x n_negative pairs,
    with mean 0.5 and variance (n_positive + n_negative + 1) / (12 n_positive n_negative)
    (no ties); the band is 0.5 +- z sd (normal approximation, clipped to [0, 1]).
    """
    if n_positive < 1 or n_negative < 1:
        raise StsnbError(f"A chance band needs patients of both classes; got {n_positive} "
                         f"positive and {n_negative} negative.")
    from scipy.stats import norm

    sd = np.sqrt((n_positive + n_negative + 1) / (12.0 * n_positive * n_negative))
    z = float(norm.ppf(0.5 + level / 2.0))
    return max(0.0, 0.5 - z * sd), min(1.0, 0.5 + z * sd)
