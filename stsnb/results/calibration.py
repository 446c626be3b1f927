"""Calibration and clinical usefulness of predicted probabilities (patient level).

- Logistic recalibration (Cox 1958; Steyerberg, Clinical Prediction Models, ch. 15): the
  outcome regressed on the logit of the predicted probability. The calibration slope is b of
  logit P(y = 1) = a + b logit(p) (1: ideal; < 1: predictions too extreme, as from overfitting);
  the calibration intercept ("calibration-in-the-large") is a of logit P(y = 1) = a + logit(p),
  the slope fixed at 1 (0: ideal; < 0: risks overestimated on average). Both are plain maximum
  likelihood: sklearn's LogisticRegression without penalty for the slope, a one-dimensional
  root (scipy) for the intercept.
- Brier score: the mean of (p - y)^2 (0 perfect; p(1 - p) on average for calibrated, useless
  p).
- Decision curve (Vickers & Elkin 2006): the net benefit of treating the patients whose risk is
  at least a threshold t, TP / N - FP / N * t / (1 - t), beside treating everyone,
  prevalence - (1 - prevalence) t / (1 - t), and no one, 0; over thresholds of 10-60 %.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from sklearn.linear_model import LogisticRegression

from stsnb.core.errors import StsnbError

#: Probabilities are clipped to [EPS, 1 - EPS] before their logit (a 0 or 1 has none).
EPS = 1e-6
#: Decision-curve thresholds: 10 % to 60 % in steps of 1 %.
THRESHOLDS = np.round(np.arange(0.10, 0.6001, 0.01), 2)


def _check(labels: np.ndarray, prob: np.ndarray,
           both_classes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    prob = np.asarray(prob, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != prob.shape:
        raise StsnbError(f"One probability per label is needed; got {prob.shape} probabilities "
                         f"for {labels.shape} labels.")
    if not np.isin(labels, (0, 1)).all():
        raise StsnbError("Labels must be 0 or 1.")
    if not (np.isfinite(prob).all() and ((prob >= 0) & (prob <= 1)).all()):
        raise StsnbError("Probabilities must lie in [0, 1].")
    if both_classes and len(np.unique(labels)) < 2:
        raise StsnbError("Calibration needs patients of both classes; the labels have one.")
    return labels.astype(np.int64), prob


def logit(prob: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), p clipped to [EPS, 1 - EPS]."""
    p = np.clip(np.asarray(prob, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def calibration_slope(labels: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """(slope b, intercept a) of logit P(y = 1) = a + b logit(p), by maximum likelihood."""
    labels, prob = _check(labels, prob)
    model = LogisticRegression(penalty=None, solver="newton-cholesky", tol=1e-10,
                               max_iter=1000)
    model.fit(logit(prob)[:, None], labels)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def calibration_intercept(labels: np.ndarray, prob: np.ndarray) -> float:
    """a of logit P(y = 1) = a + logit(p) (slope fixed at 1): the a whose recalibrated risks
    sum to the number of events."""
    labels, prob = _check(labels, prob)
    offset = logit(prob)
    events = float(labels.sum())

    def excess(a: float) -> float:
        return float((1.0 / (1.0 + np.exp(-(a + offset)))).sum()) - events

    low, high = -1.0, 1.0
    while excess(low) > 0:
        low *= 2.0
    while excess(high) < 0:
        high *= 2.0
    return float(brentq(excess, low, high, xtol=1e-12))


def brier_score(labels: np.ndarray, prob: np.ndarray) -> float:
    """Mean squared difference between probability and outcome."""
    labels, prob = _check(labels, prob, both_classes=False)
    return float(np.mean((prob - labels) ** 2))


def calibration_summary(labels: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """slope, intercept (slope fixed at 1), intercept_with_slope (the joint fit's), brier,
    n, prevalence, mean_prob."""
    slope, joint = calibration_slope(labels, prob)
    labels, prob = _check(labels, prob)
    return {"slope": slope, "intercept": calibration_intercept(labels, prob),
            "intercept_with_slope": joint, "brier": brier_score(labels, prob),
            "n": int(len(labels)), "prevalence": float(labels.mean()),
            "mean_prob": float(prob.mean())}


def net_benefit(labels: np.ndarray, prob: np.ndarray,
                thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Net benefit of treating the patients with prob >= t, at each threshold t (0 < t < 1)."""
    labels, prob = _check(labels, prob, both_classes=False)
    t = _thresholds(thresholds)
    treated = prob[None, :] >= t[:, None]
    n = len(labels)
    tp = (treated & (labels == 1)[None, :]).sum(axis=1) / n
    fp = (treated & (labels == 0)[None, :]).sum(axis=1) / n
    return tp - fp * t / (1.0 - t)


def treat_all_benefit(prevalence: float, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Net benefit of treating everyone: prevalence - (1 - prevalence) t / (1 - t)."""
    t = _thresholds(thresholds)
    return prevalence - (1.0 - prevalence) * t / (1.0 - t)


def decision_curve(labels: np.ndarray, prob: np.ndarray,
                   thresholds: np.ndarray = THRESHOLDS) -> pd.DataFrame:
    """threshold, model, treat_all, treat_none (net benefits), one row per threshold."""
    labels, prob = _check(labels, prob, both_classes=False)
    t = _thresholds(thresholds)
    return pd.DataFrame({"threshold": t, "model": net_benefit(labels, prob, t),
                         "treat_all": treat_all_benefit(float(labels.mean()), t),
                         "treat_none": np.zeros(len(t))})


def patient_calibration(predictions: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """(calibration_summary, decision_curve) of a predictions.csv table at patient level (a
    patient's probability: the mean over its slices)."""
    from stsnb.core.metrics import patient_predictions

    patients = patient_predictions(predictions)
    labels, prob = patients["label"].to_numpy(), patients["prob"].to_numpy()
    return calibration_summary(labels, prob), decision_curve(labels, prob)


def _thresholds(thresholds: np.ndarray) -> np.ndarray:
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if t.ndim != 1 or not ((t > 0) & (t < 1)).all():
        raise StsnbError(f"Decision thresholds must lie strictly between 0 and 1; got {t}.")
    return t
