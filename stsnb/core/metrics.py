"""Classification metrics of predicted probabilities, at the one decision threshold.

Every table of the suite (fold metrics of both heads and of radiomics, the results chapter's
slice- and patient-level tables, the bootstrap intervals, Grad-CAM's outcome classes) takes its
threshold metrics from :func:`threshold_metrics` and its AUC from :func:`rank_auc`, so a number
means the same in every chapter.

>>> m = binary_metrics([1, 1, 0, 0], [0.9, 0.4, 0.2, 0.6])
>>> m["accuracy"], m["sensitivity"], m["precision"], m["auc"]
(0.5, 0.5, 0.5, 0.75)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from stsnb.core.errors import ConfigError, StsnbError

#: Decision threshold on the predicted probability of distant metastasis: a slice (or patient)
#: is called positive when prob >= THRESHOLD. Fixed beforehand, never tuned.
THRESHOLD = 0.5
#: The columns of every ``predictions.csv`` (one row per test slice, or per patient).
PREDICTION_COLUMNS = ("patient_id", "slice_index", "fold", "label", "prob")
#: The metrics that need the threshold, in the order of the tables.
THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1",
                     "balanced_accuracy")
#: Every metric of the results tables.
METRICS = (*THRESHOLD_METRICS, "auc")
#: The metrics of the study's table (and of every fold_metrics.csv), in its order.
STUDY_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")

Values = Sequence[float] | np.ndarray


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def threshold_metrics(label: Values, prob: Values,
                      threshold: float = THRESHOLD) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, precision, F1 and balanced accuracy at `threshold`.

    A ratio with an empty denominator (e.g. precision with no positive call) is NaN; balanced
    accuracy is NaN unless both classes are present.
    """
    truth = np.asarray(label) == 1
    called = np.asarray(prob) >= threshold
    tp, fn = float(np.sum(truth & called)), float(np.sum(truth & ~called))
    fp, tn = float(np.sum(~truth & called)), float(np.sum(~truth & ~called))
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    both = tp + fn > 0 and tn + fp > 0
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sensitivity + specificity) / 2.0 if both else float("nan"),
    }


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks (1..n) along the last axis, ties sharing their average rank."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[-1]
    order = np.argsort(scores, axis=-1, kind="stable")
    ordered = np.take_along_axis(scores, order, axis=-1)
    index = np.broadcast_to(np.arange(n), ordered.shape)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = np.ones(ordered.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, index, n - 1), -1), axis=-1), -1)
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=-1)
    return ranks


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray | float:
    """ROC AUC of `scores` (..., n) against 0/1 labels (n,) or (..., n), ties counting half.

    Both classes must be present (in every row, for 2-d labels).
    """
    y = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if y.shape[-1] != scores.shape[-1]:
        raise ConfigError(f"roc_auc needs one score per label; got {scores.shape} scores for "
                          f"{y.shape} labels.")
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    if np.any(n_pos == 0) or np.any(n_neg == 0):
        raise ConfigError("ROC AUC needs both classes among the labels.")
    rank_sum = (average_ranks(scores) * y).sum(axis=-1)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float(auc) if np.ndim(auc) == 0 else auc


def rank_auc(label: Values, prob: Values) -> float:
    """AUC as the Mann-Whitney statistic (average ranks for ties); NaN with one class only.

    Equal to sklearn's roc_auc_score, without its input checks: fast enough for bootstrap loops.
    """
    positive = np.asarray(label) == 1
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc(positive, prob))


def binary_metrics(label: Values, prob: Values, threshold: float = THRESHOLD) -> dict:
    """The threshold metrics, the AUC and the number of units `n`."""
    return {**threshold_metrics(label, prob, threshold), "auc": rank_auc(label, prob),
            "n": int(len(np.asarray(label)))}


def study_metrics(label: Values, prob: Values) -> dict[str, float]:
    """The study's metrics (:data:`STUDY_METRICS`) of one test fold."""
    values = binary_metrics(label, prob)
    return {name: values[name] for name in STUDY_METRICS}


def metric(name: str) -> Callable[[Values, Values], float]:
    """The function computing one of :data:`METRICS` from (label, prob) (bootstrap loops)."""
    if name == "auc":
        return rank_auc
    if name in THRESHOLD_METRICS:
        return lambda label, prob: threshold_metrics(label, prob)[name]
    raise ValueError(f"Unknown metric {name!r}: expected one of {', '.join(METRICS)}.")


def patient_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: the mean of its slice probabilities, its label, fold and slices."""
    grouped = predictions.groupby("patient_id", sort=True)
    table = grouped.agg(label=("label", "first"), prob=("prob", "mean"), fold=("fold", "first"),
                        n_slices=("prob", "size"), label_unique=("label", "nunique"))
    if (table["label_unique"] > 1).any():
        bad = list(table.index[table["label_unique"] > 1])
        raise StsnbError(f"Patients with slices of both labels in predictions: {bad}.")
    return table.drop(columns="label_unique").reset_index()


def outcome_class(label: int, prob: float, threshold: float = THRESHOLD) -> str:
    """TP, TN, FP or FN of one prediction at `threshold`."""
    called = prob >= threshold
    return ("T" if called == bool(label) else "F") + ("P" if called else "N")
