"""Permutation test of the radiomics ``lr`` models: the whole nested CV refitted under permuted
patient labels, every feature set at once.

The semantics of sklearn's `permutation_test_score` with the folds redrawn: permutation k
permutes the patients' labels (`stsnb.training.folds.permutation_draw`, the linear head's
permutations), the outer folds are drawn again under them by the networks' splitter
(`stsnb.training.logistic.patient_folds`: chapter 04's patient split), and in every outer training
set the imputation, scaling, selection of k features, the inner choice of k and C and the final fit
are all made again. The same permuted labels and folds serve every feature set, so the largest AUC
over the sets in each permutation gives the null of the best set (max-statistic correction for
the choice among sets).

`nested_cv_batch` is the ``lr`` pipeline of `stsnb.radiomics.models` computed fast: the same
sklearn imputer, scaler and F-test on the same rows, the same choice of the k best columns and the
same grid order and tie rule, with the logistic regressions of every set, split and C solved at
once by the linear head's batched Newton solver (`stsnb.training.logistic.fit_predict_batch`); its
probabilities agree with the Pipeline's to solver precision (tests/test_radiomics_models.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsnb.core.config import Profile, RadiomicsConfig, resolve_profile
from stsnb.core.errors import ConfigError
from stsnb.core.metrics import roc_auc
from stsnb.core.runs import radiomics_head
from stsnb.radiomics.models import (
    FALLBACK_C,
    feature_matrix,
    feature_sets,
    fold_plan,
    inner_splitter,
    k_choices,
)
from stsnb.radiomics.stage import read_features
from stsnb.results.significance import PermutationResult, p_values, permuted_runs
from stsnb.training.logistic import fit_predict_batch, patient_folds

#: The rows of `significance_rows`: significance.csv's first seven columns.
SIGNIFICANCE_COLUMNS = ("split", "head", "combo", "patient_auc", "p_value", "p_best_corrected",
                        "n_permutations")


@dataclass(frozen=True)
class NestedLR:
    """Nested CV of several feature sets on one label vector: out-of-fold probabilities
    (m, p), and per set and outer fold the chosen k, C and mean inner AUC (m, n_folds)."""

    prob: np.ndarray
    chosen_k: np.ndarray
    chosen_c: np.ndarray
    inner_auc: np.ndarray


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns SelectKBest keeps: NaN scores lowest, a stable sort, the last k (ascending)."""
    clean = np.where(np.isnan(scores), np.finfo(np.float64).min, scores)
    return np.sort(np.argsort(clean, kind="mergesort")[-k:])


def _prepared(x: np.ndarray, y: np.ndarray, train: np.ndarray,
              test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training rows, test rows, F scores) after the Pipeline's median imputation and scaling,
    both fitted on `train`: SimpleImputer(median, keep_empty_features) (a column with no value
    in training: 0), StandardScaler (population SD; constant columns unscaled), f_classif,
    here in plain numpy (equal to sklearn's to rounding; tested)."""
    x_train, x_test = x[train], x[test]
    missing = np.isnan(x_train).any(axis=0) | np.isnan(x_test).any(axis=0)
    if missing.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            fill = np.nan_to_num(np.nanmedian(x_train[:, missing], axis=0), nan=0.0)
        x_train, x_test = x_train.copy(), x_test.copy()
        for part in (x_train, x_test):
            block = part[:, missing]
            part[:, missing] = np.where(np.isnan(block), fill, block)
    n = len(train)
    mean = x_train.mean(axis=0)
    var = ((x_train - mean) ** 2).mean(axis=0)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var))
    z_train = (x_train - mean) / scale
    z_test = (x_test - mean) / scale
    labels = y[train] == 1
    groups = (z_train[~labels], z_train[labels])
    sums = [g.sum(axis=0) for g in groups]
    counts = [len(g) for g in groups]
    square_of_sums = (sums[0] + sums[1]) ** 2
    total = (z_train**2).sum(axis=0) - square_of_sums / n
    between = sums[0] ** 2 / counts[0] + sums[1] ** 2 / counts[1] - square_of_sums / n
    within = (total - between) / (n - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = between / within
    return z_train, z_test, scores


@dataclass
class _Problem:
    """One training set of one feature set, for each of its k (the columns kept)."""

    set_index: int
    fold: int
    split: int  # inner split number, -1 for the outer refit
    train: np.ndarray
    test: np.ndarray
    z_train: np.ndarray
    z_test: np.ndarray
    scores: np.ndarray


def _fit(problems: list[_Problem], ks: list[int], y: np.ndarray,
         cs: np.ndarray) -> np.ndarray:
    """Test probabilities (len(problems), len(cs), longest test) of problem i on its k ks[i]."""
    longest = max(len(p.test) for p in problems)
    out = np.full((len(problems), len(cs), longest), np.nan)
    by_width: dict[int, list[int]] = {}
    for i, k in enumerate(ks):
        by_width.setdefault(int(k), []).append(i)
    for width, members in by_width.items():
        a = max(len(problems[i].train) for i in members)
        t = max(len(problems[i].test) for i in members)
        x_train = np.zeros((len(members), a, width))
        x_test = np.zeros((len(members), t, width))
        y_train = np.zeros((len(members), a))
        for j, i in enumerate(members):
            p = problems[i]
            columns = _top_k(p.scores, width)
            x_train[j, :len(p.train)] = p.z_train[:, columns]
            x_test[j, :len(p.test)] = p.z_test[:, columns]
            y_train[j, :len(p.train)] = y[p.train]
        prob = fit_predict_batch(
            x_train, y_train, np.array([len(problems[i].train) for i in members]), x_test,
            np.array([len(problems[i].test) for i in members]),
            np.broadcast_to(cs, (len(members), len(cs))), balanced=True)
        out[members, :, :t] = prob
    return out


def nested_cv_batch(matrices: list[np.ndarray], y: np.ndarray, tests: list[np.ndarray],
                    config: RadiomicsConfig, seed: int) -> NestedLR:
    """The ``lr`` model's nested CV of each (p, d_s) matrix on labels y and outer `tests`.

    k and C are chosen per outer fold on its training patients: stratified inner folds
    (`models.inner_splitter`), mean inner ROC AUC over them, ties to the first candidate in
    GridSearchCV's order (the smaller C, then the smaller k); a fold too small for inner
    folds takes the smallest k and FALLBACK_C.
    """
    y = np.asarray(y, dtype=np.int64)
    cs = np.array([float(c) for c in config.lr_cs])
    tests = [np.sort(np.asarray(t, dtype=np.int64)) for t in tests]
    trains = [np.setdiff1d(np.arange(len(y)), t) for t in tests]
    m, n_folds = len(matrices), len(tests)
    k_lists = [k_choices(config, x.shape[1]) for x in matrices]
    splits = []
    for o, train in enumerate(trains):
        splitter = inner_splitter(y[train], config, seed)
        if splitter is not None:
            splits += [(o, s, train[a], train[b]) for s, (a, b) in
                       enumerate(splitter.split(np.zeros(len(train)), y[train]))]
    inner = [_Problem(si, o, s, tr, te, *_prepared(x, y, tr, te))
             for si, x in enumerate(matrices) for o, s, tr, te in splits]
    outer = [_Problem(si, o, -1, tr, te, *_prepared(x, y, tr, te))
             for si, x in enumerate(matrices) for o, (tr, te) in
             enumerate(zip(trains, tests, strict=True))]
    # Phase 1: every inner split, every k of its set and every C.
    n_k = max(len(ks) for ks in k_lists)
    auc = np.full((m, n_folds, len(cs), n_k), np.nan)
    if inner:
        problems = [p for p in inner for _ in k_lists[p.set_index]]
        ks = [k for p in inner for k in k_lists[p.set_index]]
        prob = _fit(problems, ks, y, cs)
        per_split: dict[tuple[int, int], list[np.ndarray]] = {}
        row = 0
        for p in inner:
            n = len(k_lists[p.set_index])
            block = prob[row:row + n, :, :len(p.test)]  # (k, C, t)
            per_split.setdefault((p.set_index, p.fold), []).append(
                np.asarray(roc_auc(y[p.test], block)).T)  # (C, k)
            row += n
        for (si, o), values in per_split.items():
            auc[si, o, :, :len(k_lists[si])] = np.mean(np.stack(values), axis=0)
    chosen_k = np.zeros((m, n_folds), dtype=np.int64)
    chosen_c = np.zeros((m, n_folds))
    best = np.full((m, n_folds), np.nan)
    for si in range(m):
        n = len(k_lists[si])
        for o in range(n_folds):
            grid = auc[si, o, :, :n]
            if np.isnan(grid).all():
                chosen_k[si, o], chosen_c[si, o] = k_lists[si][0], FALLBACK_C
                continue
            flat = int(np.argmax(grid.ravel()))  # the first maximum: C outer, k inner
            chosen_c[si, o], chosen_k[si, o] = cs[flat // n], k_lists[si][flat % n]
            best[si, o] = grid.ravel()[flat]
    # Phase 2: each outer training set refitted with its chosen k and C.
    probs = np.full((m, len(y)), np.nan)
    by_c: dict[float, list[_Problem]] = {}
    for p in outer:
        by_c.setdefault(float(chosen_c[p.set_index, p.fold]), []).append(p)
    for c, group in by_c.items():
        out = _fit(group, [int(chosen_k[p.set_index, p.fold]) for p in group], y, np.array([c]))
        for i, p in enumerate(group):
            probs[p.set_index, p.test] = out[i, 0, :len(p.test)]
    return NestedLR(prob=probs, chosen_k=chosen_k, chosen_c=chosen_c, inner_auc=best)


def permutation_null(matrices: Mapping[str, np.ndarray], y: np.ndarray, n_folds: int,
                     seed: int, n_permutations: int,
                     config: RadiomicsConfig) -> PermutationResult:
    """Observed and permutation-null patient AUCs of the ``lr`` nested CV of each set.

    `matrices`: set name -> (p, d) patient matrix, rows in the order of `y` (patients sorted
    by id, as chapter 04's folds number them). `combos` of the result are the set names.
    """
    if not matrices:
        raise ConfigError("The permutation test needs at least one feature set.")
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise ConfigError(f"n_permutations must be a positive integer; got {n_permutations}.")
    names = tuple(matrices)
    values = [np.asarray(matrices[n], dtype=np.float64) for n in names]
    y = np.asarray(y, dtype=np.int64)
    for name, x in zip(names, values, strict=True):
        if x.ndim != 2 or len(x) != len(y):
            raise ConfigError(f"Feature set {name}: the matrix must be (p, d) with one row per "
                              f"label ({len(y)}); got shape {x.shape}.")

    def run(labels: np.ndarray) -> np.ndarray:
        folds = patient_folds(labels, n_folds, seed)
        result = nested_cv_batch(values, labels, folds, config, seed)
        return np.atleast_1d(roc_auc(labels, result.prob))

    return permuted_runs(run, y, seed, n_permutations, names)


def significance_rows(result: PermutationResult, split: str = "patient") -> pd.DataFrame:
    """Rows shaped like significance.csv: split, head (radiomics-lr), combo (the set),
    patient_auc, p_value (against the set's own null), p_best_corrected (against the largest
    AUC over the sets in each permutation), n_permutations.

    p = (1 + #(null >= observed)) / (1 + n): the observed run counts as one permutation.
    """
    return p_values(result).assign(split=split, head=radiomics_head("lr"))[
        list(SIGNIFICANCE_COLUMNS)]


def radiomics_significance(work_dir: str | Path, profile: Profile | str = "auto", seed: int = 0,
                           store: Any = None, n_permutations: int | None = None,
                           sets: list[str] | None = None) -> tuple[pd.DataFrame,
                                                                   PermutationResult]:
    """The ``lr`` models' permutation test on chapter 04's patient split: (rows shaped like
    significance.csv, the null). Reads ``radiomics/features.csv`` and the slice store's patients
    and labels (`store`: anything with the slice `index`); `n_permutations` defaults to the
    profile's ``radiomics.lr_permutations``.
    """
    from stsnb.training.stage import open_slices

    profile = resolve_profile(profile)
    source = store if store is not None else open_slices(work_dir, profile)
    folds = fold_plan(source.index, profile, "patient", seed)
    features = read_features(work_dir)
    columns = feature_sets(features)
    names = list(columns) if sets is None else list(sets)
    matrices = {name: feature_matrix(features, folds.patient_ids, columns[name])
                for name in names}
    redrawn = patient_folds(folds.labels, profile.training.folds, seed)
    if [sorted(t.tolist()) for t in redrawn] != [sorted(t.tolist()) for t in folds.tests]:
        raise AssertionError("The permutation test's folds under the recorded labels are not "
                             "chapter 04's: the observed AUC would not be the runs'.")
    n = profile.radiomics.lr_permutations if n_permutations is None else int(n_permutations)
    result = permutation_null(matrices, folds.labels, profile.training.folds, seed, n,
                              profile.radiomics)
    return significance_rows(result), result


def control_significance(cohort_dir: str | Path, work_dir: str | Path,
                         profile: Profile | str = "auto", seed: int = 0,
                         store: Any = None, n_permutations: int | None = None) -> pd.DataFrame:
    """The ``lr`` models' permutation test on the suite's controls (`stsnb.results.controls`): the
    positive control's labels (top third by necrosis fraction, which texture and intensity in
    T2w and CE-T1w should find) and the negative control's random labels (which must stay at
    chance), on chapter 04's patients; rows of `significance_rows` with a ``kind`` column.
    Written to ``work_dir/controls/radiomics.csv``."""
    from stsnb.core.store import write_csv_atomic
    from stsnb.results.controls import CONTROLS_DIR, KINDS, control_labels
    from stsnb.training.stage import open_slices

    profile = resolve_profile(profile)
    source = store if store is not None else open_slices(work_dir, profile)
    folds = fold_plan(source.index, profile, "patient", seed)
    features = read_features(work_dir)
    columns = feature_sets(features)
    matrices = {name: feature_matrix(features, folds.patient_ids, columns[name])
                for name in columns}
    n = profile.radiomics.lr_permutations if n_permutations is None else int(n_permutations)
    tables = []
    for kind in KINDS:
        labels = control_labels(cohort_dir, folds.patient_ids, kind, seed)
        result = permutation_null(matrices, labels, profile.training.folds, seed, n,
                                  profile.radiomics)
        tables.append(significance_rows(result).assign(kind=kind))
    table = pd.concat(tables, ignore_index=True)
    write_csv_atomic(table, Path(work_dir) / CONTROLS_DIR / "radiomics.csv")
    return table
