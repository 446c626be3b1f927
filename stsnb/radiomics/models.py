"""Radiomics models on chapter 04's patient folds: ``runs/<split>/radiomics-<set>-<model>/``.

The folds are the networks' (`stsnb.training.folds.make_folds` on the slice store, the profile's
folds, seed and validation fraction), turned into patient-level test sets: every patient in exactly
one test fold, trained on every other patient (the networks' training and validation patients
together; these models need no early stopping). Feature sets: each declared image alone (its
``<image>__*`` columns of ``radiomics/features.csv``; the shape features are the CT's, as the
stage writes them) and ``all``. Models, each an sklearn Pipeline fitted on the training patients
of a fold only:

- ``lr``: median imputation, standardisation, ``SelectKBest(f_classif, k)``, L2 logistic
  regression, balanced class weights; k and C chosen by ``GridSearchCV`` (ROC AUC) over
  stratified inner folds of the training patients (nested CV);
- ``rf``: median imputation, ``SelectKBest(f_classif, k)``, a random forest with balanced class
  weights; k and the minimum leaf size chosen the same way.

Files (the networks' contract): ``predictions.csv`` (patient_id, slice_index (empty: one row per
patient), fold, label, prob), ``fold_metrics.csv`` (per fold: sizes, the metrics at 0.5, the
chosen settings and their mean inner AUC) and ``run.json`` (its key: the feature set's values,
the folds, the labels and the settings; the run is reused while the key holds).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from stsnb.core.config import Profile, RadiomicsConfig, resolve_profile
from stsnb.core.errors import ConfigError, StsnbError, checked_name
from stsnb.core.manifest import software_key
from stsnb.core.metrics import PREDICTION_COLUMNS, STUDY_METRICS, binary_metrics, rank_auc
from stsnb.core.runs import (
    GROUPED_SPLITS,
    RADIOMICS_MODELS,
    RADIOMICS_PREFIX,
    RUN_RECORD,
    radiomics_head,
    radiomics_run_name,
    run_dir,
)
from stsnb.core.store import (
    Record,
    hash_config,
    read_json,
    record_timing,
    remove_stale_temporaries,
    write_csv_atomic,
)
from stsnb.radiomics.stage import SEPARATOR, read_features
from stsnb.training.folds import FoldPlan, assert_no_leakage, check_split, make_folds
from stsnb.training.logistic import one_blas_thread

STAGE = "radiomics_models"
#: Bumped when the meaning of a run's outputs changes (part of its key).
MODELS_FORMAT = 1
ALL = "all"
#: Run folders are ``<RADIOMICS_PREFIX>-<set>-<model>``; heads ``<RADIOMICS_PREFIX>-<model>``.
#: C of a fold too small for an inner split (fewer than 2 training patients of a class);
#: k is then the smallest choice. Only tiny cohorts (the smoke tests) reach it.
FALLBACK_C = 1.0
FALLBACK_MIN_LEAF = 1
#: Logistic regression solved tightly by Newton's method (sklearn's newton-cholesky: a few
#: iterations for these small problems, where lbfgs needs 10-40), so that the fit is the optimum.
LR_SOLVER = "newton-cholesky"
LR_TOL = 1e-8
LR_MAX_ITER = 1000
#: Each model's searched parameters: (pipeline parameter, fold_metrics column).
SEARCHED = {"lr": (("select__k", "chosen_k"), ("model__C", "chosen_c")),
            "rf": (("select__k", "chosen_k"), ("model__min_samples_leaf", "chosen_min_leaf"))}
METRIC_COLUMNS = ("fold", "n_train", "n_test", *STUDY_METRICS)
#: The inner folds' score: ROC AUC as the Mann-Whitney statistic of the predicted probabilities
#: (sklearn's "roc_auc" mathematically; computed from ranks, candidates with equal AUCs tie
#: exactly, so the first in the grid wins here and in the permutation test alike).
AUC_SCORER = make_scorer(rank_auc, response_method="predict_proba")


def check_model(model: str) -> str:
    """The model name, lower case; ConfigError for an unknown one."""
    return checked_name(model, RADIOMICS_MODELS, "radiomics model")


def radiomics_run_dir(work_dir: str | Path, split: str, feature_set: str, model: str) -> Path:
    """``work_dir/runs/<split>/radiomics-<set>-<model>``."""
    return run_dir(work_dir, check_split(split), radiomics_run_name(feature_set, model))


# ---------------------------------------------------------------------------- sets and folds


def feature_sets(features: pd.DataFrame) -> dict[str, list[str]]:
    """Set name -> its columns: each image (in the table's order) alone, then ``all``."""
    columns = [c for c in features.columns if c != "patient_id"]
    sets: dict[str, list[str]] = {}
    for column in columns:
        image, sep, _ = column.partition(SEPARATOR)
        if not sep:
            raise StsnbError(f"The radiomics column {column!r} is not <image>{SEPARATOR}<feature>."
                             " Fix: rerun the radiomics stage.")
        sets.setdefault(image, []).append(column)
    if not sets:
        raise StsnbError("The radiomics table has no features. Fix: rerun the radiomics stage.")
    if ALL in sets:
        raise StsnbError(f"The radiomics table has an image named {ALL!r}, the name of the set "
                         "of every feature. Fix: rename that image in cohort.toml.")
    sets[ALL] = columns
    return sets


@dataclass(frozen=True)
class PatientFolds:
    """A grouped fold plan per patient: patients sorted by id, their labels, the test folds."""

    split: str
    patient_ids: np.ndarray  # str (p,), sorted
    labels: np.ndarray  # int64 (p,): the plan's (permuted patient labels for 'random')
    tests: tuple[np.ndarray, ...]  # positions into patient_ids, one array per fold
    numbers: tuple[int, ...]  # the folds' numbers (from 1)

    def trains(self) -> list[np.ndarray]:
        """Training positions of each fold: every patient not in its test fold."""
        every = np.arange(len(self.patient_ids))
        return [np.setdiff1d(every, test) for test in self.tests]

    def fold_of(self) -> np.ndarray:
        """Test fold number of each patient (p,)."""
        out = np.zeros(len(self.patient_ids), dtype=np.int64)
        for number, test in zip(self.numbers, self.tests, strict=True):
            out[test] = number
        return out


def check_patient_partition(folds: PatientFolds) -> None:
    """AssertionError unless every patient is in exactly one test fold and no test patient is
    in its fold's training set."""
    counts = np.bincount(np.concatenate(folds.tests), minlength=len(folds.patient_ids))
    if not (counts == 1).all():
        bad = folds.patient_ids[counts != 1].tolist()
        raise AssertionError(f"The radiomics test folds do not partition the patients: {bad[:5]} "
                             "are in zero or several test folds.")
    for number, test, train in zip(folds.numbers, folds.tests, folds.trains(), strict=True):
        shared = np.intersect1d(folds.patient_ids[test], folds.patient_ids[train])
        if shared.size:
            raise AssertionError(f"Fold {number}: test patients {shared.tolist()} are in its "
                                 "training set.")


def patient_folds(plan: FoldPlan) -> PatientFolds:
    """The patient-level test sets of a grouped plan (checked: no leakage, a partition)."""
    if plan.split not in GROUPED_SPLITS:
        raise ConfigError(f"The radiomics models are patient-level: the {plan.split!r} split puts "
                          "one patient's slices in several test folds. Fix: use one of "
                          f"{', '.join(GROUPED_SPLITS)}.")
    per_patient = pd.Series(plan.labels).groupby(plan.patient_ids).first()
    pids = per_patient.index.to_numpy(dtype=str)
    tests = []
    for fold in plan.folds:
        assert_no_leakage(fold, plan.patient_ids, grouped=True)
        test = np.unique(plan.patient_ids[fold.test])
        trained = np.unique(plan.patient_ids[np.concatenate([fold.train, fold.val])])
        if np.intersect1d(test, trained).size or len(test) + len(trained) != len(pids):
            raise AssertionError(f"Fold {fold.number}: its train, validation and test patients "
                                 "do not split the cohort.")
        tests.append(np.searchsorted(pids, test))
    folds = PatientFolds(split=plan.split, patient_ids=pids,
                         labels=per_patient.to_numpy(np.int64), tests=tuple(tests),
                         numbers=tuple(f.number for f in plan.folds))
    check_patient_partition(folds)
    return folds


def fold_plan(index: pd.DataFrame, profile: Profile, split: str, seed: int) -> PatientFolds:
    """Chapter 04's folds of `split` over the slice index, per patient."""
    config = profile.training
    plan = make_folds(index, split, config.folds, seed, config.validation_fraction)
    return patient_folds(plan)


def feature_matrix(features: pd.DataFrame, patient_ids: np.ndarray,
                   columns: list[str]) -> np.ndarray:
    """float64 (p, d): `columns` of `features` for `patient_ids`, in that order (inf -> NaN).

    StsnbError naming the patients without features.
    """
    table = features.assign(patient_id=features["patient_id"].astype(str)).set_index("patient_id")
    missing = [p for p in patient_ids if p not in table.index]
    if missing:
        raise StsnbError(f"No radiomics features for {len(missing)} of the slice store's patients "
                         f"({', '.join(missing[:5])}). Fix: run the radiomics stage on the "
                         "patients of chapter 03.")
    values = table.loc[list(patient_ids), columns].to_numpy(dtype=np.float64)
    values[~np.isfinite(values)] = np.nan
    return values


def features_hash(matrix: np.ndarray, patient_ids: np.ndarray, columns: list[str]) -> str:
    """SHA-256 of a feature set's values, rows and columns."""
    return hash_config({"patients": [str(p) for p in patient_ids], "columns": list(columns),
                        "values": [[None if np.isnan(v) else float(v).hex() for v in row]
                                   for row in matrix]})


# ------------------------------------------------------------------------------- the models


def k_choices(config: RadiomicsConfig, n_features: int) -> list[int]:
    """The searched k, capped at the set's number of features (duplicates dropped)."""
    return sorted({min(int(k), int(n_features)) for k in config.select_k})


def model_pipeline(model: str, config: RadiomicsConfig, seed: int) -> Pipeline:
    """The unfitted Pipeline of `model` (its searched parameters at their first choice)."""
    model = check_model(model)
    impute = SimpleImputer(strategy="median", keep_empty_features=True)
    if model == "lr":
        return Pipeline([
            ("impute", impute), ("scale", StandardScaler()),
            ("select", SelectKBest(f_classif, k=min(config.select_k))),
            ("model", LogisticRegression(C=FALLBACK_C, class_weight="balanced", solver=LR_SOLVER,
                                         tol=LR_TOL, max_iter=LR_MAX_ITER))])
    return Pipeline([
        ("impute", impute), ("select", SelectKBest(f_classif, k=min(config.select_k))),
        ("model", RandomForestClassifier(n_estimators=config.forest_trees, max_features="sqrt",
                                         min_samples_leaf=FALLBACK_MIN_LEAF,
                                         class_weight="balanced", random_state=seed, n_jobs=1))])


def param_grid(model: str, config: RadiomicsConfig, n_features: int) -> dict[str, list]:
    """GridSearchCV's grid of `model` for a set of `n_features` features."""
    grid: dict[str, list] = {"select__k": k_choices(config, n_features)}
    if check_model(model) == "lr":
        grid["model__C"] = [float(c) for c in config.lr_cs]
    else:
        grid["model__min_samples_leaf"] = [int(n) for n in config.forest_min_leaf]
    return grid


def inner_splitter(y_train: np.ndarray, config: RadiomicsConfig,
                   seed: int) -> StratifiedKFold | None:
    """Stratified inner folds over the training patients (min(inner_folds, smallest class)), or
    None when a class has fewer than 2 training patients (no choice possible)."""
    counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=2)
    if counts.min() < 1:
        raise ConfigError(f"An outer training fold has a single class ({int(counts[0])} "
                          f"negatives, {int(counts[1])} positives). Fix: fewer outer folds.")
    n_splits = int(min(config.inner_folds, counts.min()))
    if n_splits < 2:
        return None
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def fit_fold(model: str, x_train: np.ndarray, y_train: np.ndarray, config: RadiomicsConfig,
             seed: int) -> tuple[Pipeline, dict[str, Any], float]:
    """(fitted pipeline, chosen parameters, their mean inner AUC) of one outer training set.

    GridSearchCV's ties go to the first candidate in its order (sorted parameter names, the
    last varying fastest): for ``lr`` the smaller C, then the smaller k.
    """
    pipeline = model_pipeline(model, config, seed)
    grid = param_grid(model, config, x_train.shape[1])
    splitter = inner_splitter(y_train, config, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # f_classif on constant columns
        warnings.simplefilter("ignore", UserWarning)  # their NaN scores, ranked last
        if splitter is None:
            chosen = {"select__k": grid["select__k"][0],
                      **({"model__C": FALLBACK_C} if "model__C" in grid
                         else {"model__min_samples_leaf": FALLBACK_MIN_LEAF})}
            fitted = pipeline.set_params(**chosen).fit(x_train, y_train)
            return fitted, chosen, float("nan")
        search = GridSearchCV(pipeline, grid, scoring=AUC_SCORER, cv=splitter, refit=True,
                              n_jobs=1, error_score="raise").fit(x_train, y_train)
    return search.best_estimator_, dict(search.best_params_), float(search.best_score_)


def nested_cv(model: str, x: np.ndarray, folds: PatientFolds, config: RadiomicsConfig,
              seed: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Out-of-fold probability of every patient (p,) and, per fold, the chosen parameters."""
    prob = np.full(len(folds.patient_ids), np.nan)
    chosen = []
    with one_blas_thread():
        for number, test, train in zip(folds.numbers, folds.tests, folds.trains(), strict=True):
            fitted, params, inner = fit_fold(model, x[train], folds.labels[train], config, seed)
            prob[test] = fitted.predict_proba(x[test])[:, 1]
            chosen.append({"fold": number, "n_train": len(train), "params": params,
                           "inner_auc": inner})
    return prob, chosen


def fold_metrics_table(model: str, predictions: pd.DataFrame,
                       chosen: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per fold: sizes, metrics at 0.5, the chosen parameters and their inner AUC."""
    rows = []
    for entry in chosen:
        test = predictions[predictions["fold"] == entry["fold"]]
        metrics = binary_metrics(test["label"].to_numpy(), test["prob"].to_numpy())
        row = {"fold": entry["fold"], "n_train": entry["n_train"], "n_test": len(test),
               **{name: metrics[name] for name in STUDY_METRICS}}
        for name, column in SEARCHED[model]:
            row[column] = entry["params"][name]
        row["inner_auc"] = entry["inner_auc"]
        rows.append(row)
    columns = [*METRIC_COLUMNS, *(c for _, c in SEARCHED[model]), "inner_auc"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------- on disk


@dataclass
class RadiomicsModelRun:
    """One feature set's cross-validation by one model (the networks' tables)."""

    feature_set: str
    model: str
    split: str
    run_dir: Path
    predictions: pd.DataFrame
    fold_metrics: pd.DataFrame
    record: dict[str, Any]
    reused: bool


def model_settings(model: str, config: RadiomicsConfig) -> dict[str, Any]:
    """The settings that make a model's outputs (part of its key)."""
    settings: dict[str, Any] = {"model": check_model(model), "inner_folds": config.inner_folds,
                                "select_k": list(config.select_k), "class_weight": "balanced",
                                "imputation": "median", "selection": "SelectKBest(f_classif)"}
    if model == "lr":
        settings.update(Cs=[float(c) for c in config.lr_cs], solver=LR_SOLVER, tol=LR_TOL,
                        scaling="standard", fallback_c=FALLBACK_C)
    else:
        settings.update(trees=config.forest_trees, min_leaf=list(config.forest_min_leaf),
                        max_features="sqrt", fallback_min_leaf=FALLBACK_MIN_LEAF)
    return settings


def model_key(model: str, feature_set: str, folds: PatientFolds, matrix_hash: str,
              config: RadiomicsConfig, seed: int) -> dict[str, Any]:
    """Everything a radiomics run's outputs depend on."""
    return {"stage": STAGE, "format": MODELS_FORMAT, "split": folds.split, "seed": int(seed),
            "feature_set": feature_set, "features": matrix_hash,
            "patients": folds.patient_ids.tolist(), "labels": folds.labels.tolist(),
            "folds": [folds.patient_ids[t].tolist() for t in folds.tests],
            "settings": model_settings(model, config), "software": software_key(STAGE)}


def read_model_run(out: Path, feature_set: str, model: str, split: str,
                   reused: bool) -> RadiomicsModelRun:
    """A radiomics run's tables and record from disk."""
    return RadiomicsModelRun(
        feature_set=feature_set, model=model, split=split, run_dir=out,
        predictions=pd.read_csv(out / "predictions.csv", dtype={"patient_id": str}),
        fold_metrics=pd.read_csv(out / "fold_metrics.csv"), record=read_json(out / RUN_RECORD),
        reused=reused)


def run_is_current(out: Path, key_hash: str) -> bool:
    """True when ``out/run.json`` holds `key_hash` and its outputs exist, whole."""
    return Record(out / RUN_RECORD).is_current(key_hash)


def run_model(work_dir: str | Path, features: pd.DataFrame, folds: PatientFolds,
              feature_set: str, model: str, profile: Profile | str, seed: int = 0
              ) -> RadiomicsModelRun:
    """Cross-validate `model` on `feature_set` of `features` over `folds` (reused if current)."""
    profile = resolve_profile(profile)
    config = profile.radiomics
    model = check_model(model)
    sets = feature_sets(features)
    if feature_set not in sets:
        raise ConfigError(f"Unknown radiomics feature set {feature_set!r}: the table has "
                          f"{', '.join(sets)}.")
    columns = sets[feature_set]
    x = feature_matrix(features, folds.patient_ids, columns)
    key = model_key(model, feature_set, folds, features_hash(x, folds.patient_ids, columns),
                    config, seed)
    key_hash = hash_config(key)
    out = radiomics_run_dir(work_dir, folds.split, feature_set, model)
    if run_is_current(out, key_hash):
        return read_model_run(out, feature_set, model, folds.split, reused=True)
    started = time.perf_counter()
    remove_stale_temporaries(out)
    prob, chosen = nested_cv(model, x, folds, config, seed)
    predictions = pd.DataFrame({"patient_id": folds.patient_ids,
                                "slice_index": np.full(len(prob), np.nan),
                                "fold": folds.fold_of(), "label": folds.labels, "prob": prob})
    predictions = predictions.sort_values(["fold", "patient_id"], kind="stable")
    predictions = predictions.reset_index(drop=True)[list(PREDICTION_COLUMNS)]
    metrics = fold_metrics_table(model, predictions, chosen)
    seconds = time.perf_counter() - started
    run_record = Record(out / RUN_RECORD)
    run_record.invalidate()  # no record vouches for files being rewritten
    out.mkdir(parents=True, exist_ok=True)
    tables = {"predictions.csv": predictions, "fold_metrics.csv": metrics}
    for filename, table in tables.items():
        write_csv_atomic(table, out / filename)
    run_record.finish(key_hash, list(tables), key=key, head=radiomics_head(model),
                      kind="radiomics", feature_set=feature_set, model=model,
                      n_features=len(columns), split=folds.split, grouped_by_patient=True,
                      rows="patients", seconds=round(seconds, 3), n_folds=len(folds.tests))
    record_timing(work_dir, f"radiomics {radiomics_run_name(feature_set, model)} {folds.split}",
                  seconds)
    return read_model_run(out, feature_set, model, folds.split, reused=False)


def run_radiomics_models(work_dir: str | Path, profile: Profile | str = "auto", seed: int = 0,
                         split: str = "patient", store: Any = None,
                         sets: list[str] | None = None,
                         models: tuple[str, ...] = RADIOMICS_MODELS) -> list[RadiomicsModelRun]:
    """Every feature set (or `sets`) by every model on chapter 04's folds of `split`.

    Reads ``radiomics/features.csv`` and the slice store of ``work_dir`` (or `store`: anything
    with the slice `index`), whose patients must all have features.
    """
    from stsnb.training.stage import open_slices

    profile = resolve_profile(profile)
    source = store if store is not None else open_slices(work_dir, profile)
    folds = fold_plan(source.index, profile, split, seed)
    features = read_features(work_dir)
    names = list(feature_sets(features)) if sets is None else list(sets)
    return [run_model(work_dir, features, folds, name, model, profile, seed)
            for name in names for model in models]


def models_table(runs: list[RadiomicsModelRun]) -> pd.DataFrame:
    """One row per run: split, set, model, head, patient AUC, patients, features, seconds."""
    rows = []
    for run in runs:
        preds = run.predictions
        rows.append({"split": run.split, "feature_set": run.feature_set, "model": run.model,
                     "head": radiomics_head(run.model),
                     "patient_auc": rank_auc(preds["label"].to_numpy(), preds["prob"].to_numpy()),
                     "n_patients": len(preds), "n_features": run.record.get("n_features"),
                     "seconds": run.record.get("seconds"), "reused": run.reused})
    return pd.DataFrame(rows)


def split_runs(work_dir: str | Path, split: str = "patient",
               model: str | None = None) -> dict[tuple[str, str], pd.DataFrame]:
    """(set, model) -> predictions.csv of every finished radiomics run of `split` (of `model`)."""
    from stsnb.core.runs import discover_runs, load_predictions

    runs = discover_runs(work_dir, "radiomics")
    runs = runs[runs["split"] == check_split(split)]
    if model is not None:
        runs = runs[runs["head"] == radiomics_head(model)]
    return {(str(r.combo), r.head[len(RADIOMICS_PREFIX) + 1:]):
            load_predictions(r.dir / "predictions.csv") for r in runs.itertuples()}
