"""DeLong's test against its definition, a hand-worked example, a published AUC, the paired
bootstrap, and the degenerate cases; calibration and decision curves on known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import brier_score_loss, roc_auc_score

from stsnb.core.errors import StsnbError
from stsnb.core.metrics import rank_auc
from stsnb.results.calibration import (
    THRESHOLDS,
    brier_score,
    calibration_intercept,
    calibration_slope,
    calibration_summary,
    decision_curve,
    net_benefit,
    patient_calibration,
    treat_all_benefit,
)
from stsnb.results.delong import (
    delong_covariance,
    delong_test,
    paired_delong,
    structural_components,
)


def direct_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V10, V01 of DeLong et al. (1988) from every (positive, negative) pair: psi = 1 if the
    positive scores higher, 1/2 for a tie."""
    x, y = scores[:, labels == 1], scores[:, labels == 0]
    psi = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])
    return psi.mean(axis=2), psi.mean(axis=1)


def correlated_scores(n: int, n_positive: int, seed: int) -> tuple[np.ndarray, ...]:
    """Labels and two scores sharing a patient effect (correlated AUCs about 0.78 and 0.70)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    labels[:n_positive] = 1
    shared = rng.standard_normal(n)
    a = 1.1 * labels + shared + 0.7 * rng.standard_normal(n)
    b = 0.8 * labels + shared + 0.7 * rng.standard_normal(n)
    return labels, a, b


def test_mid_rank_components_equal_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = (rng.random(60) < 0.4).astype(int)
    scores = np.round(rng.standard_normal((3, 60)) + labels, 1)  # rounded: many ties
    aucs, v10, v01 = structural_components(labels, scores)
    d10, d01 = direct_components(labels, scores)
    np.testing.assert_allclose(v10, d10, atol=1e-12)
    np.testing.assert_allclose(v01, d01, atol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(labels, s) for s in scores], atol=1e-12)
    _, cov = delong_covariance(labels, scores)
    m, n = int(labels.sum()), int((1 - labels).sum())
    np.testing.assert_allclose(cov, np.cov(d10) / m + np.cov(d01) / n, atol=1e-14)


def test_hand_worked_example():
    # Two positives, two negatives. Score a: positives 0.9, 0.6; negatives 0.7, 0.2. Pairs
    # (0.9 > 0.7, 0.9 > 0.2, 0.6 < 0.7, 0.6 > 0.2): AUC 3/4, V10 = (1, 1/2), V01 = (1/2, 1),
    # S10 = S01 = var(1, 1/2) = 1/8, Var = 1/8 / 2 + 1/8 / 2 = 1/8. Score b separates the
    # classes: AUC 1, constant components, variance and covariance 0. So the difference 1/4
    # has SE sqrt(1/8), z = 1/sqrt(2), p = 2 (1 - Phi(0.7071)) = 0.4795.
    labels = np.array([1, 1, 0, 0])
    a = np.array([0.9, 0.6, 0.7, 0.2])
    b = np.array([0.8, 0.9, 0.1, 0.3])
    aucs, cov = delong_covariance(labels, np.vstack([a, b]))
    np.testing.assert_allclose(aucs, [0.75, 1.0])
    np.testing.assert_allclose(cov, [[0.125, 0.0], [0.0, 0.0]], atol=1e-15)
    result = delong_test(labels, a, b)
    assert result.difference == pytest.approx(0.25)
    assert result.se == pytest.approx(np.sqrt(0.125))
    assert result.z == pytest.approx(1 / np.sqrt(2))
    assert result.p_value == pytest.approx(2 * norm.sf(1 / np.sqrt(2)))
    assert result.p_value == pytest.approx(0.4795, abs=1e-4)


def test_auc_of_hanley_and_mcneils_ct_ratings():
    # Hanley & McNeil (1982), Radiology 143:29-36, table 1: 109 CT images rated 1-5 (definitely
    # normal ... definitely abnormal); 58 normal: 33, 6, 6, 11, 2; 51 abnormal: 3, 2, 2, 11, 33.
    # Published area 0.893 (their SE 0.032, from their exponential approximation).
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    ratings = np.repeat(np.tile(np.arange(1, 6), 2), normal + abnormal).astype(float)
    labels = np.repeat([0, 1], [sum(normal), sum(abnormal)])
    aucs, cov = delong_covariance(labels, ratings)
    assert aucs[0] == pytest.approx(0.893, abs=5e-4)
    se = float(np.sqrt(cov[0, 0]))
    print("DeLong SE", se)
    assert se == pytest.approx(0.032, rel=0.15)


def test_difference_and_se_agree_with_the_paired_bootstrap():
    labels, a, b = correlated_scores(400, 150, seed=3)
    result = delong_test(labels, a, b)
    rng = np.random.default_rng(7)
    diffs = []
    for _ in range(2000):
        pick = rng.integers(0, len(labels), len(labels))
        diffs.append(rank_auc(labels[pick], b[pick]) - rank_auc(labels[pick], a[pick]))
    boot_se = float(np.std(diffs, ddof=1))
    print(f"difference {result.difference:.4f} (bootstrap mean {np.mean(diffs):.4f}); SE DeLong "
          f"{result.se:.4f}, bootstrap {boot_se:.4f}; p {result.p_value:.4f}")
    assert result.difference == pytest.approx(roc_auc_score(labels, b) - roc_auc_score(labels, a))
    assert result.difference < 0 and result.p_value < 0.05
    assert result.se == pytest.approx(boot_se, rel=0.10)
    assert abs(np.mean(diffs) - result.difference) < 0.1 * abs(result.difference)
    # the pairing matters: the unpaired SE (covariance ignored) is far larger
    aucs, cov = delong_covariance(labels, np.vstack([a, b]))
    assert np.sqrt(cov[0, 0] + cov[1, 1]) > 1.5 * result.se


def test_identical_scores_give_p_1_and_se_0():
    labels, a, _ = correlated_scores(50, 20, seed=1)
    result = delong_test(labels, a, a.copy())
    assert (result.difference, result.se, result.z, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    same_order = delong_test(labels, a, 3.0 * a + 1.0)  # the same ranking
    assert same_order.p_value == 1.0 and same_order.se == 0.0


def test_bad_input_is_named():
    with pytest.raises(StsnbError, match="2 patients of each class"):
        delong_test(np.array([1, 0, 0, 0]), np.arange(4.0), np.arange(4.0))
    with pytest.raises(StsnbError, match="one score per label"):
        delong_test(np.array([1, 1, 0, 0]), np.arange(3.0), np.arange(4.0))
    with pytest.raises(StsnbError, match="finite"):
        delong_test(np.array([1, 1, 0, 0]), np.array([0.1, np.nan, 0.2, 0.3]), np.arange(4.0))


def test_paired_delong_on_predictions_tables():
    labels, a, b = correlated_scores(40, 14, seed=2)
    prob_a, prob_b = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    pids = [f"P{i:02d}" for i in range(40)]
    slices = pd.DataFrame({"patient_id": np.repeat(pids, 2), "slice_index": np.tile([0, 1], 40),
                           "fold": 1, "label": np.repeat(labels, 2),
                           "prob": np.repeat(prob_a, 2) + np.tile([-0.01, 0.01], 40)})
    per_patient = pd.DataFrame({"patient_id": pids, "slice_index": np.nan, "fold": 1,
                                "label": labels, "prob": prob_b})
    result = paired_delong(slices, per_patient.iloc[::-1])
    direct = delong_test(labels, prob_a, prob_b)
    assert result.as_dict() == pytest.approx(direct.as_dict())
    with pytest.raises(StsnbError, match="different labels"):
        paired_delong(slices, per_patient.assign(label=1 - labels))


# ------------------------------------------------------------------------------ calibration


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0.02, 0.98, n)
    return (rng.random(n) < prob).astype(np.int64), prob


def test_perfectly_calibrated_predictions_have_slope_1_and_intercept_0():
    labels, prob = calibrated(20000, 0)
    slope, joint = calibration_slope(labels, prob)
    summary = calibration_summary(labels, prob)
    print(summary)
    assert slope == pytest.approx(1.0, abs=0.05)
    assert abs(joint) < 0.05 and abs(summary["intercept"]) < 0.05
    assert summary["brier"] == pytest.approx(np.mean(prob * (1 - prob)), abs=0.005)


def test_recalibration_recovers_known_distortions():
    labels, prob = calibrated(20000, 1)
    z = np.log(prob / (1 - prob))
    too_extreme = 1 / (1 + np.exp(-2.0 * z))  # overfitted: true logit = logit / 2
    too_high = 1 / (1 + np.exp(-(z + 1.0)))  # risks overestimated: true logit = logit - 1
    assert calibration_slope(labels, too_extreme)[0] == pytest.approx(0.5, abs=0.03)
    assert calibration_intercept(labels, too_high) == pytest.approx(-1.0, abs=0.05)
    assert calibration_slope(labels, too_high)[0] == pytest.approx(1.0, abs=0.05)


def test_brier_score_known_answers():
    labels, prob = calibrated(500, 2)
    assert brier_score(labels, prob) == pytest.approx(brier_score_loss(labels, prob))
    assert brier_score(labels, np.full(len(labels), 0.5)) == pytest.approx(0.25)
    assert brier_score(labels, labels.astype(float)) == 0.0


def test_decision_curve_known_answers():
    labels, prob = calibrated(1000, 3)
    prevalence = labels.mean()
    assert THRESHOLDS[0] == 0.10 and THRESHOLDS[-1] == 0.60 and len(THRESHOLDS) == 51
    curve = decision_curve(labels, prob)
    t = curve["threshold"].to_numpy()
    np.testing.assert_allclose(curve["treat_all"], prevalence - (1 - prevalence) * t / (1 - t))
    assert (curve["treat_none"] == 0).all()
    # treating everyone is what a model does that calls every risk 100 %
    np.testing.assert_allclose(net_benefit(labels, np.ones(len(labels))), curve["treat_all"])
    # a perfect model treats exactly the events: net benefit = prevalence at every threshold
    np.testing.assert_allclose(net_benefit(labels, labels.astype(float)), prevalence)
    assert (net_benefit(labels, np.zeros(len(labels))) == 0).all()
    # calibrated risks beat both defaults at every threshold
    assert (curve["model"] >= np.maximum(curve["treat_all"], 0) - 1e-12).all()
    # by hand: 4 patients, 2 events, threshold 0.5: treated = the 3 with p >= 0.5, 2 TP 1 FP
    assert net_benefit(np.array([1, 1, 0, 0]), np.array([0.9, 0.5, 0.6, 0.1]),
                       np.array([0.5]))[0] == pytest.approx(2 / 4 - 1 / 4)
    assert treat_all_benefit(0.3, np.array([0.25]))[0] == pytest.approx(0.3 - 0.7 / 3)


def test_patient_calibration_of_a_predictions_table():
    labels, prob = calibrated(400, 4)
    table = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(400)], "slice_index": 0,
                          "fold": 1, "label": labels, "prob": prob})
    summary, curve = patient_calibration(table)
    assert summary["n"] == 400 and summary["brier"] == pytest.approx(brier_score(labels, prob))
    assert list(curve.columns) == ["threshold", "model", "treat_all", "treat_none"]
    with pytest.raises(StsnbError, match="both classes"):
        calibration_slope(np.zeros(5, dtype=int), np.full(5, 0.2))
