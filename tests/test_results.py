"""Results metrics: known answers, bootstrap behaviour, baselines and the study's table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stsnb.core.errors import StsnbError
from stsnb.core.metrics import binary_metrics, patient_predictions
from stsnb.core.runs import load_predictions
from stsnb.results.stats import (
    baseline_predictions,
    bootstrap_ci,
    calibration,
    fold_metrics,
    mean_std,
    paired_auc_difference,
    patient_metrics_ci,
)
from stsnb.results.tables import STUDY_TABLE, study_comparison


def _predictions(n_patients: int = 40, slices: int = 5, signal: float = 2.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        label = int(i % 3 == 0)
        centre = rng.normal(signal * (label - 0.5), 1.0)
        for s in range(slices):
            prob = 1 / (1 + np.exp(-(centre + rng.normal(0, 0.5))))
            rows.append((f"P{i:03d}", 10 + s, i % 4 + 1, label, prob))
    return pd.DataFrame(rows, columns=["patient_id", "slice_index", "fold", "label", "prob"])


def test_binary_metrics_known_answer():
    m = binary_metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.2, 0.6]))
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1",
                "balanced_accuracy"):
        assert m[key] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(0.75)
    single = binary_metrics(np.array([1, 1]), np.array([0.2, 0.3]))
    assert np.isnan(single["auc"]) and np.isnan(single["precision"])
    assert single["sensitivity"] == 0.0


def test_fold_metrics_and_mean_std():
    preds = _predictions()
    per_fold = fold_metrics(preds)
    assert list(per_fold["fold"]) == [1, 2, 3, 4]
    assert per_fold["n"].sum() == len(preds)
    mean, std = mean_std(per_fold)["accuracy"]
    assert mean == pytest.approx(per_fold["accuracy"].mean())
    assert std == pytest.approx(per_fold["accuracy"].std(ddof=1))


def test_patient_aggregation_is_the_mean_probability():
    preds = _predictions(n_patients=6, slices=3)
    patients = patient_predictions(preds)
    assert len(patients) == 6 and (patients["n_slices"] == 3).all()
    first = preds[preds["patient_id"] == "P000"]["prob"].mean()
    assert patients.set_index("patient_id").loc["P000", "prob"] == pytest.approx(first)
    broken = preds.copy()
    broken.loc[0, "label"] = 1 - broken.loc[0, "label"]
    with pytest.raises(StsnbError, match="both labels"):
        patient_predictions(broken)


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_more_patients():
    auc = lambda y, p: binary_metrics(y, p)["auc"]  # noqa: E731
    small = patient_predictions(_predictions(n_patients=30, seed=1))
    large = patient_predictions(_predictions(n_patients=300, seed=1))
    est, low, high = bootstrap_ci(small["label"].to_numpy(), small["prob"].to_numpy(), auc,
                                  n_boot=500, seed=0)
    assert low <= est <= high
    assert bootstrap_ci(small["label"].to_numpy(), small["prob"].to_numpy(), auc, n_boot=500,
                        seed=0) == (est, low, high)
    _, low_l, high_l = bootstrap_ci(large["label"].to_numpy(), large["prob"].to_numpy(), auc,
                                    n_boot=500, seed=0)
    assert high_l - low_l < high - low
    table = patient_metrics_ci(_predictions(), n_boot=200)
    assert set(table["metric"]) >= {"auc", "balanced_accuracy"}


def test_paired_difference_of_a_model_with_itself_is_zero_and_chance_is_worse():
    preds = _predictions(n_patients=60)
    same = paired_auc_difference(preds, preds, n_boot=300)
    assert same["auc_difference"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    chance = preds.assign(prob=np.random.default_rng(5).random(len(preds)))
    worse = paired_auc_difference(preds, chance, n_boot=300)
    assert worse["auc_difference"] < 0 and worse["ci_high"] < 0 and worse["p_not_worse"] < 0.05


def test_baseline_uses_the_same_folds_and_finds_a_separating_feature():
    rng = np.random.default_rng(0)
    patients = pd.DataFrame({"patient_id": [f"P{i}" for i in range(40)],
                             "label": [i % 2 for i in range(40)]})
    patients["gtv_volume_cc"] = patients["label"] * 300 + rng.normal(200, 30, 40)
    folds = {pid: i % 4 + 1 for i, pid in enumerate(patients["patient_id"])}
    preds = baseline_predictions(patients, folds, ["gtv_volume_cc"])
    assert dict(zip(preds["patient_id"], preds["fold"], strict=True)) == folds
    assert binary_metrics(preds["label"], preds["prob"])["auc"] > 0.95
    with pytest.raises(StsnbError, match="not in the cohort table"):
        baseline_predictions(patients, folds, ["grade"])


def test_calibration_and_brier():
    preds = _predictions(n_patients=80)
    curve, brier = calibration(preds, n_bins=4)
    assert 0 <= brier <= 1 and len(curve) <= 4
    assert curve["observed"].between(0, 1).all()


def test_study_table_and_comparison_layout():
    row9 = STUDY_TABLE.set_index("number").loc[9]
    assert (row9["accuracy_mean"], row9["sensitivity_mean"], row9["f1_mean"]) == (0.9, 0.85, 0.81)
    table = study_comparison({9: fold_metrics(_predictions())})
    assert len(table) == 10
    assert table.loc[8, "accuracy (study)"] == "0.90 ± 0.03"
    assert "±" in table.loc[8, "accuracy (ours)"] and table.loc[0, "accuracy (ours)"] == "not run"


def test_load_predictions_validates(tmp_path):
    path = tmp_path / "predictions.csv"
    with pytest.raises(StsnbError, match="not found"):
        load_predictions(path)
    pd.DataFrame({"patient_id": ["a"], "prob": [0.3]}).to_csv(path, index=False)
    with pytest.raises(StsnbError, match="lacks the columns"):
        load_predictions(path)
    _predictions(4, 2).assign(prob=1.5).to_csv(path, index=False)
    with pytest.raises(StsnbError, match=r"prob must lie in \[0, 1\]"):
        load_predictions(path)


def test_auc_order_best_first_ties_by_number_nan_last():
    from stsnb.results.tables import auc_order

    assert auc_order({3: 0.6, 1: 0.7, 2: 0.6, 4: float("nan"), 5: 0.4}) == [1, 2, 3, 5, 4]


def test_chance_band_matches_permutation_distribution():
    """The band holds ~95% of the AUCs of random scores for 18 DM and 43 other patients."""
    from sklearn.metrics import roc_auc_score

    from stsnb.results.stats import chance_band

    low, high = chance_band(18, 43)
    assert 0.33 < low < 0.35 and 0.65 < high < 0.67
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(18), np.zeros(43)]
    aucs = np.array([roc_auc_score(labels, rng.random(61)) for _ in range(4000)])
    inside = np.mean((aucs >= low) & (aucs <= high))
    assert 0.93 < inside < 0.97
    with pytest.raises(StsnbError, match="both classes"):
        chance_band(0, 10)


def test_metrics_equal_sklearn():
    """The one metrics module (and its per-metric functions for bootstrap loops) gives
    sklearn's values, ties and NaN rules (zero_division=nan, one class) included."""
    from sklearn import metrics as sk

    from stsnb.core.metrics import METRICS, STUDY_METRICS, metric, study_metrics

    nan = float("nan")
    rng = np.random.default_rng(1)
    for trial in range(30):
        n = int(rng.integers(3, 40))
        label = rng.integers(0, 2, n)
        prob = np.round(rng.random(n), 1)  # ties on purpose
        if trial == 0:
            label[:] = 1  # one class: AUC and balanced accuracy undefined
        if trial == 1:
            prob[:] = 0.1  # no positive call: precision undefined
        called = (prob >= 0.5).astype(int)
        both = len(np.unique(label)) == 2
        expected = {
            "accuracy": sk.accuracy_score(label, called),
            "sensitivity": sk.recall_score(label, called, zero_division=nan),
            "specificity": sk.recall_score(label, called, pos_label=0, zero_division=nan),
            "precision": sk.precision_score(label, called, zero_division=nan),
            "f1": sk.f1_score(label, called, zero_division=nan),
            "balanced_accuracy": sk.balanced_accuracy_score(label, called) if both else nan,
            "auc": sk.roc_auc_score(label, prob) if both else nan,
        }
        got = {**binary_metrics(label, prob), **{f"fast {m}": metric(m)(label, prob)
                                                 for m in METRICS}}
        for name in METRICS:
            for value in (got[name], got[f"fast {name}"]):
                assert (np.isnan(value) and np.isnan(expected[name])) or value == pytest.approx(
                    expected[name], abs=1e-12), (trial, name)
        assert list(study_metrics(label, prob)) == list(STUDY_METRICS)
