"""The linear head (stsnb.training.linear) and the permutation test of its cross-validation
(stsnb.results.significance): exactness against sklearn, the folds, pooling, no leakage,
p-values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stsnb.core.errors import ConfigError
from stsnb.core.metrics import roc_auc
from stsnb.results.significance import (
    PermutationResult,
    cv_auc,
    null_quantile,
    p_values,
    permutation_null,
)
from stsnb.training.folds import make_folds
from stsnb.training.linear import mask_fractions, patient_matrix, pool_features
from stsnb.training.logistic import DEFAULT_CS, fit_predict_logistic, nested_cv_probs, patient_folds


def reference_probs(x_train, y_train, x_test, cs, class_weight=None) -> np.ndarray:
    """sklearn's pipeline, solved tightly, for each C."""
    return np.array([
        make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=10000, tol=1e-10,
                                                           class_weight=class_weight))
        .fit(x_train, y_train).predict_proba(x_test)[:, 1] for c in cs])


def labels(p: int, positives: int, seed: int) -> np.ndarray:
    y = np.zeros(p, dtype=np.int64)
    y[np.random.default_rng(seed).choice(p, positives, replace=False)] = 1
    return y


def signal_matrix(y: np.ndarray, d: int, seed: int, strength: float = 1.5,
                  carriers: int = 16) -> np.ndarray:
    """Noise features, the first `carriers` shifted by `strength` standard deviations in
    positives. (One carrier is not enough for an L2 model at p = 60, d = 512: each of the 511
    noise features correlates ~1/sqrt(p) with the labels by chance, and together they drown a
    single feature, patient AUC ~0.68 even at a 3-sd shift.)"""
    x = np.random.default_rng(seed).normal(size=(len(y), d))
    x[:, :carriers] += strength * y[:, None]
    return x


# ------------------------------------------------------------------------------ the fast fit


@pytest.mark.parametrize(("n", "d"), [(36, 150), (28, 512), (90, 12), (40, 40)])
def test_fast_fit_matches_sklearn_pipeline(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    # uneven scales and offsets, so that the standardisation matters
    x = rng.normal(size=(n + 15, d)) * rng.uniform(0.2, 5.0, d) + rng.normal(0, 3, d)
    y = (x[:n, 0] / x[:, 0].std() + rng.normal(size=n) > 0).astype(int)
    cs = np.logspace(-4, 1, 6)
    ours = fit_predict_logistic(x[:n], y, x[n:], cs)
    assert ours.shape == (6, 15)
    np.testing.assert_allclose(ours, reference_probs(x[:n], y, x[n:], cs), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("n", "d"), [(36, 150), (90, 12)])
def test_balanced_fit_matches_sklearn_balanced_class_weight(n: int, d: int) -> None:
    rng = np.random.default_rng(n * d)
    x = rng.normal(size=(n + 15, d)) * rng.uniform(0.2, 5.0, d)
    y = (x[:n, 0] / x[:, 0].std() + rng.normal(size=n) > 0.8).astype(int)  # about 25 % ones
    assert 0.1 < y.mean() < 0.4
    cs = np.logspace(-4, 1, 4)
    ours = fit_predict_logistic(x[:n], y, x[n:], cs, balanced=True)
    np.testing.assert_allclose(ours, reference_probs(x[:n], y, x[n:], cs, "balanced"),
                               atol=1e-5, rtol=0)
    # the weights move the probabilities towards the rare class: not the unweighted fit
    plain = fit_predict_logistic(x[:n], y, x[n:], cs)
    assert (ours[0] > plain[0]).all()


def test_fast_fit_does_not_touch_its_inputs_and_handles_repeated_rows() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 64))
    x = np.concatenate([x, x[:6]])  # repeated patients: a singular kernel
    y = np.r_[np.arange(20) % 2, np.arange(6) % 2]
    test = rng.normal(size=(7, 64))
    x_copy, test_copy = x.copy(), test.copy()
    ours = fit_predict_logistic(x, y, test, [0.01, 1.0])
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(test, test_copy)
    np.testing.assert_allclose(ours, reference_probs(x, y, test, [0.01, 1.0]), atol=1e-5)


def test_fast_fit_rejects_bad_input() -> None:
    x = np.zeros((6, 3))
    with pytest.raises(ConfigError, match="both classes"):
        fit_predict_logistic(x, np.zeros(6, int), x)
    with pytest.raises(ConfigError, match="positive"):
        fit_predict_logistic(x, np.arange(6) % 2, x, [0.0, 1.0])
    with pytest.raises(ConfigError, match="same"):
        fit_predict_logistic(x, np.arange(6) % 2, np.zeros((2, 4)))


def test_auc_matches_roc_auc_score_with_ties() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 40)
    scores = rng.integers(0, 6, size=(5, 40)).astype(float)  # many ties
    ours = roc_auc(y, scores)
    assert ours.shape == (5,)
    np.testing.assert_allclose(ours, [roc_auc_score(y, s) for s in scores], rtol=0, atol=1e-12)
    continuous = rng.normal(size=40)
    assert roc_auc(y, continuous) == pytest.approx(roc_auc_score(y, continuous), abs=1e-12)
    with pytest.raises(ConfigError, match="both classes"):
        roc_auc(np.ones(4), np.arange(4.0))


# ---------------------------------------------------------------------------------- folds


@pytest.mark.parametrize(("n_folds", "seed"), [(3, 0), (5, 7)])
def test_patient_folds_equal_make_folds(n_folds: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = [f"P{i:02d}" for i in rng.permutation(23)]  # index rows not sorted by patient
    label = {name: int(i % 3 == 0) for i, name in enumerate(names)}
    rows = [(name, s, label[name]) for name in names for s in range(int(rng.integers(1, 5)))]
    index = pd.DataFrame(rows, columns=["patient_id", "slice_index", "label"])
    plan = make_folds(index, "patient", n_folds, seed)
    patients = np.array(sorted(label))
    ours = patient_folds(np.array([label[p] for p in patients]), n_folds, seed)
    assert len(ours) == len(plan.folds)
    for fold, test in zip(plan.folds, ours, strict=True):
        assert set(plan.patient_ids[fold.test]) == set(patients[test])


def test_patient_folds_need_enough_of_each_class() -> None:
    with pytest.raises(ConfigError, match="at least 5 patients of each class"):
        patient_folds(np.r_[np.zeros(10, int), np.ones(4, int)], 5, 0)
    with pytest.raises(ConfigError, match="0 and 1"):
        patient_folds(np.arange(10), 2, 0)


# -------------------------------------------------------------------------------- pooling


def test_global_pooling_is_the_mean_over_cells() -> None:
    values = np.random.default_rng(0).random((3, 512 * 49), dtype=np.float32)
    pooled = pool_features(values)
    assert pooled.shape == (3, 512) and pooled.dtype == np.float64
    np.testing.assert_allclose(pooled, values.reshape(3, 512, 7, 7).mean(axis=(2, 3)),
                               rtol=1e-6)
    np.testing.assert_array_equal(pool_features(values.reshape(3, 512, 7, 7)), pooled)


def test_gtv_pooling_weights_cells_by_their_share_of_the_gtv() -> None:
    values = np.random.default_rng(1).normal(size=(3, 512, 7, 7)).astype(np.float32)
    masks = np.zeros((3, 224, 224), dtype=bool)
    masks[0, 64:96, 96:128] = True  # exactly cell (2, 3) at 32 px per cell
    masks[1, 64:96, 96:112] = True  # half of cell (2, 3) ...
    masks[1, 0:32, 0:32] = True  # ... and all of cell (0, 0): weights 1/3 and 2/3
    pooled = pool_features(values, masks, "gtv")
    cells = values.astype(np.float64)
    np.testing.assert_allclose(pooled[0], cells[0, :, 2, 3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(pooled[1], (cells[1, :, 2, 3] + 2 * cells[1, :, 0, 0]) / 3,
                               rtol=0, atol=1e-12)
    # an empty mask falls back to the global mean
    np.testing.assert_allclose(pooled[2], cells[2].mean(axis=(1, 2)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 64), (50, 61)])
def test_mask_fractions_equal_adaptive_average_pooling(shape: tuple[int, int]) -> None:
    masks = np.random.default_rng(3).random((4, *shape)) < 0.3
    expected = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(masks.astype(np.float64)), (7, 7)).numpy()
    np.testing.assert_allclose(mask_fractions(masks), expected, rtol=0, atol=1e-12)


def test_pooling_validates_its_input() -> None:
    values = np.zeros((2, 512 * 49), dtype=np.float32)
    with pytest.raises(ConfigError, match="25088"):
        pool_features(np.zeros((2, 1000)))
    with pytest.raises(ConfigError, match="Unknown pooling"):
        pool_features(values, pooling="max")
    with pytest.raises(ConfigError, match="needs the slices' GTV masks"):
        pool_features(values, pooling="gtv")
    with pytest.raises(ConfigError, match="one mask"):
        pool_features(values, np.zeros((3, 64, 64), bool), "gtv")


def test_patient_matrix_averages_each_patients_slices() -> None:
    pooled = np.arange(12.0).reshape(6, 2)
    ids, matrix = patient_matrix(pooled, np.array(["b", "a", "b", "c", "a", "a"]))
    assert ids.tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(matrix, [[(2 + 8 + 10) / 3, (3 + 9 + 11) / 3], [2, 3], [6, 7]])


# ------------------------------------------------------------------------------ nested CV


def test_nested_cv_finds_strong_features() -> None:
    y = labels(60, 20, seed=0)
    x = signal_matrix(y, 512, seed=1)
    assert cv_auc(x, y, n_folds=5, seed=0) > 0.85


def test_nested_cv_matches_sklearn_grid_search() -> None:
    y = labels(40, 14, seed=4)
    x = signal_matrix(y, 20, seed=6, strength=1.0, carriers=4)
    folds = patient_folds(y, 4, 3)
    ours = nested_cv_probs(x, y, folds, DEFAULT_CS, inner_folds=3, seed=3)
    for number, test in enumerate(folds):
        train = np.setdiff1d(np.arange(len(y)), test)
        search = GridSearchCV(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=10000, tol=1e-10)),
            {"logisticregression__C": DEFAULT_CS},
            cv=StratifiedKFold(3, shuffle=True, random_state=3), scoring="roc_auc",
        ).fit(x[train], y[train])
        assert ours.chosen_c[number] == search.best_params_["logisticregression__C"]
        assert ours.inner_auc[number] == pytest.approx(search.best_score_, abs=1e-9)
        np.testing.assert_allclose(ours.prob[test], search.predict_proba(x[test])[:, 1],
                                   atol=1e-5)


def test_choosing_c_never_sees_the_test_patients() -> None:
    y = labels(40, 14, seed=6)
    x = np.random.default_rng(7).normal(size=(40, 200))
    folds = patient_folds(y, 4, 0)
    before = nested_cv_probs(x, y, folds, seed=0)
    changed = x.copy()
    changed[folds[0]] = np.random.default_rng(8).normal(5.0, 10.0, size=(len(folds[0]), 200))
    after = nested_cv_probs(changed, y, folds, seed=0)
    assert after.chosen_c[0] == before.chosen_c[0]
    assert after.inner_auc[0] == before.inner_auc[0]
    # the change did reach the model: the test patients' own predictions moved
    assert np.abs(after.prob[folds[0]] - before.prob[folds[0]]).max() > 1e-3


def test_nested_cv_rejects_folds_that_do_not_split_the_patients() -> None:
    y = labels(20, 8, seed=0)
    x = np.zeros((20, 5))
    with pytest.raises(ConfigError, match="exactly one"):
        nested_cv_probs(x, y, [np.arange(10), np.arange(5, 20)])


# ----------------------------------------------------------------------------- permutations


def test_permutation_p_values_of_noise_and_of_signal() -> None:
    y = labels(60, 20, seed=10)
    noise = {1: np.random.default_rng(11).normal(size=(60, 128)),
             2: np.random.default_rng(12).normal(size=(60, 128))}
    result = permutation_null(noise, y, n_folds=5, seed=0, n_permutations=50)
    table = p_values(result).set_index("combo")
    assert result.null.shape == (50, 2) and result.combos == (1, 2)
    assert (table["p_value"] > 0.05).all()
    assert (table["p_best_corrected"] >= table["p_value"]).all()

    signal = {3: signal_matrix(y, 128, seed=13), 1: noise[1], 2: noise[2]}
    result = permutation_null(signal, y, n_folds=5, seed=0, n_permutations=50)
    table = p_values(result).set_index("combo")
    assert table.loc[3, "patient_auc"] > 0.85
    assert table.loc[3, "p_value"] == pytest.approx(1 / 51)
    assert table.loc[3, "p_best_corrected"] <= 0.05
    assert (table["p_best_corrected"] >= table["p_value"]).all()
    assert (table["n_permutations"] == 50).all()
    # permutation k: the same permuted labels (and folds) for every combination
    k = 7
    y_k = np.random.default_rng([0, k, 0xC0FFEE]).permutation(y)
    for column, combo in enumerate(result.combos):
        assert result.null[k - 1, column] == pytest.approx(
            cv_auc(signal[combo], y_k, n_folds=5, seed=0), abs=1e-12)
    assert result.observed[3] == pytest.approx(cv_auc(signal[3], y, 5, 0), abs=1e-12)
    assert null_quantile(result, 1, 0.9) == pytest.approx(np.quantile(result.null[:, 1], 0.9))


def test_p_values_count_by_hand() -> None:
    result = PermutationResult(observed={1: 0.8, 2: 0.6},
                               null=np.array([[0.5, 0.7], [0.85, 0.4], [0.6, 0.6]]),
                               combos=(1, 2), seconds=0.0)
    table = p_values(result)
    assert table.columns.tolist() == ["combo", "patient_auc", "p_value", "p_best_corrected",
                                      "n_permutations"]
    np.testing.assert_allclose(table["p_value"], [2 / 4, 3 / 4])
    np.testing.assert_allclose(table["p_best_corrected"], [2 / 4, 4 / 4])
    with pytest.raises(ConfigError, match="not in the permutation test"):
        null_quantile(result, 5)
