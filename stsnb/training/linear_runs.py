"""The linear head on disk: ``work_dir/runs/<split>/combo<NN>/linear/``, beside the FC head's run.

The same cached features and the same folds as the FC head of chapter 04 (`stsnb.training.folds`), a
different head: the last convolution's maps pooled to 512 numbers per slice (averaged inside the
GTV, or over the whole slice), averaged per patient for the grouped splits (one row per patient)
or kept per slice for the study's slice split, then L2 logistic regression whose penalty is chosen
by an inner cross-validation over the training rows only (`stsnb.training.linear`). Files (a
contract): ``predictions.csv`` (one row per test slice; a patient-level model writes its patient's
probability on each of its slices), ``history.csv`` (per fold, the chosen C and its inner AUC),
``fold_metrics.csv``, ``run.json`` and ``pooled.npy`` (the pooled slice features, float32
(n_slices, 512) in slice-index order, which the permutation test reads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsnb.core.combinations import Combination, resolve_combo
from stsnb.core.config import Profile, TrainingConfig, resolve_profile
from stsnb.core.errors import ConfigError, checked_name
from stsnb.core.manifest import software_key
from stsnb.core.metrics import PREDICTION_COLUMNS, rank_auc, study_metrics
from stsnb.core.runs import GROUPED_SPLITS, RUN_RECORD, CrossValidationRun, run_dir
from stsnb.core.store import (
    Record,
    atomic_path,
    hash_config,
    read_json,
    record_timing,
    remove_stale_temporaries,
    write_csv_atomic,
)
from stsnb.training.features import (
    SliceSource,
    cached_features,
    read_feature_cache,
    resolve_device,
    resolve_precision,
)
from stsnb.training.folds import FoldPlan, check_split, make_folds
from stsnb.training.linear import POOLINGS, patient_matrix, pool_features
from stsnb.training.logistic import DEFAULT_CS, nested_cv_probs
from stsnb.training.stage import TrainingRun

STAGE = "linear"
LINEAR_DIR = "linear"
POOLED_FILE = "pooled.npy"
#: Bumped when the meaning of a linear run's outputs changes (part of its key).
LINEAR_FORMAT = 1
HEADS = ("both", "fc", "linear")
LINEAR_HISTORY_COLUMNS = ("fold", "n_train", "chosen_c", "inner_auc")
LINEAR_METRIC_COLUMNS = ("fold", "n_train", "n_test", "n_test_patients", "accuracy",
                         "sensitivity", "specificity", "precision", "f1", "auc", "chosen_c",
                         "inner_auc")


def check_head(head: str) -> str:
    """The head name, lower case; ConfigError for an unknown one."""
    return checked_name(head, HEADS, "head")


def linear_dir(work_dir: str | Path, split: str, number: int) -> Path:
    """``work_dir/runs/<split>/combo<NN>/linear``."""
    return run_dir(work_dir, split, number) / LINEAR_DIR


def linear_key(source: SliceSource, combination: Combination, split: str, seed: int,
               config: TrainingConfig, features_key_hash: str) -> dict[str, Any]:
    """Everything a linear run's outputs depend on."""
    return {"stage": STAGE, "format": LINEAR_FORMAT, "store": source.key_hash,
            "channels": list(combination.channels), "split": split, "seed": int(seed),
            "folds": int(config.folds), "validation_fraction": config.validation_fraction,
            "pooling": config.linear_pooling, "inner_folds": int(config.linear_inner_folds),
            "Cs": [float(c) for c in DEFAULT_CS], "features": features_key_hash,
            "class_weighting": config.class_weighting,
            "software": software_key(STAGE),
            "model": "L2 logistic regression on standardised pooled features, C by inner CV"}


@dataclass
class LinearRun(CrossValidationRun):
    """One combination's cross-validation by the linear head (same tables as the FC run)."""


def pool_slices(source: SliceSource, values: np.ndarray, pooling: str) -> np.ndarray:
    """float32 (n_slices, 512): `values` (index order) pooled globally or inside the GTV."""
    if pooling not in POOLINGS:
        raise ConfigError(f"Unknown pooling {pooling!r}: expected one of {', '.join(POOLINGS)}.")
    masks = None
    if pooling == "gtv":
        if not hasattr(source, "gtv_masks"):
            raise ConfigError("Pooling inside the GTV needs the slice store's GTV masks; this "
                              "slice source has none. Fix: linear_pooling='global'.")
        masks = source.gtv_masks(source.index["row"].to_numpy(np.int64))
    return pool_features(values, masks, pooling).astype(np.float32)


def patient_level(plan: FoldPlan, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray, list[np.ndarray]]:
    """(patient ids, (p, 512) patient means, labels (p,), test rows per fold) of a grouped plan."""
    pids, matrix = patient_matrix(pooled.astype(np.float64), plan.patient_ids)
    labels = pd.Series(plan.labels).groupby(plan.patient_ids).first().reindex(pids).to_numpy()
    tests = [np.nonzero(np.isin(pids, np.unique(plan.patient_ids[f.test])))[0]
             for f in plan.folds]
    return pids, matrix, labels.astype(np.int64), tests


def _check_partition(tests: list[np.ndarray], n_rows: int, unit: str) -> None:
    """Every row in exactly one test fold (so a row is never in its own training set)."""
    counts = np.bincount(np.concatenate(tests), minlength=n_rows)
    if not (counts == 1).all():
        raise AssertionError(f"The linear head's test folds do not partition the {unit}s: "
                             f"{int((counts != 1).sum())} {unit}s in zero or several test folds.")


def fit_linear(plan: FoldPlan, pooled: np.ndarray, index: pd.DataFrame, seed: int,
               config: TrainingConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(predictions, history, fold metrics) of the nested CV of `plan` on pooled features."""
    grouped = plan.split in GROUPED_SPLITS
    if grouped:
        pids, matrix, labels, tests = patient_level(plan, pooled)
    else:
        pids, matrix, labels = None, pooled.astype(np.float64), plan.labels
        tests = [f.test for f in plan.folds]
    _check_partition(tests, len(labels), "patient" if grouped else "slice")
    result = nested_cv_probs(matrix, labels, tests, DEFAULT_CS, config.linear_inner_folds, seed,
                             balanced=config.class_weighting == "balanced")
    if grouped:
        slice_prob = pd.Series(result.prob, index=pids).reindex(plan.patient_ids).to_numpy()
    else:
        slice_prob = np.asarray(result.prob)
    fold_of = np.zeros(len(index), dtype=np.int64)
    for fold in plan.folds:
        fold_of[fold.test] = fold.number
    predictions = pd.DataFrame({"patient_id": plan.patient_ids,
                                "slice_index": index["slice_index"].to_numpy(),
                                "fold": fold_of, "label": plan.labels, "prob": slice_prob})
    predictions = predictions.sort_values(["fold", "patient_id", "slice_index"],
                                          kind="stable").reset_index(drop=True)
    history, metrics = [], []
    for i, fold in enumerate(plan.folds):
        n_train = len(labels) - len(tests[i])
        entry = {"fold": fold.number, "n_train": n_train,
                 "chosen_c": float(result.chosen_c[i]), "inner_auc": float(result.inner_auc[i])}
        history.append(entry)
        test = predictions[predictions["fold"] == fold.number]
        metrics.append({**entry, "n_test": len(test),
                        "n_test_patients": int(test["patient_id"].nunique()),
                        **study_metrics(test["label"].to_numpy(),
                                                 test["prob"].to_numpy())})
    return (predictions[list(PREDICTION_COLUMNS)],
            pd.DataFrame(history, columns=list(LINEAR_HISTORY_COLUMNS)),
            pd.DataFrame(metrics)[list(LINEAR_METRIC_COLUMNS)])


def read_linear_run(out: Path, combination: Combination, split: str,
                    reused: bool) -> LinearRun:
    """A linear run's tables and record from disk."""
    return LinearRun(
        combination=combination, split=split, run_dir=out,
        predictions=pd.read_csv(out / "predictions.csv", dtype={"patient_id": str}),
        history=pd.read_csv(out / "history.csv"),
        fold_metrics=pd.read_csv(out / "fold_metrics.csv"),
        record=read_json(out / RUN_RECORD), reused=reused)


def linear_is_current(out: Path, key_hash: str) -> bool:
    """True when ``out/run.json`` holds `key_hash` and its outputs exist, whole."""
    return Record(out / RUN_RECORD).is_current(key_hash)


def run_linear(source: SliceSource, work_dir: str | Path, profile: Profile | str,
               combo: int | str, split: str, seed: int, features: np.ndarray,
               features_key_hash: str, weights: dict[str, Any] | None = None) -> LinearRun:
    """Cross-validate the linear head of one combination and split on its cached features.

    `features`: float32 (n_slices, 25088) in slice-index order, from the cache whose key hash is
    `features_key_hash`. Reused when ``linear/run.json`` holds the same key.
    """
    profile = resolve_profile(profile)
    config = profile.training
    combination = resolve_combo(combo, tuple(source.modalities))
    split = check_split(split)
    if features.shape[0] != len(source.index):
        raise ConfigError(f"{features.shape[0]} feature rows for {len(source.index)} slices.")
    out = linear_dir(work_dir, split, combination.number)
    key = linear_key(source, combination, split, seed, config, features_key_hash)
    key_hash = hash_config(key)
    if linear_is_current(out, key_hash):
        return read_linear_run(out, combination, split, reused=True)
    started = time.perf_counter()
    remove_stale_temporaries(out)
    plan = make_folds(source.index, split, config.folds, seed, config.validation_fraction)
    pooled = pool_slices(source, features, config.linear_pooling)
    predictions, history, metrics = fit_linear(plan, pooled, source.index, seed, config)
    seconds = time.perf_counter() - started
    run_record = Record(out / RUN_RECORD)
    run_record.invalidate()  # no record vouches for files being rewritten
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / POOLED_FILE) as tmp:
        np.save(tmp, pooled)
    tables = {"predictions.csv": predictions, "history.csv": history,
              "fold_metrics.csv": metrics}
    for filename, table in tables.items():
        write_csv_atomic(table, out / filename)
    run_record.finish(
        key_hash, [*tables, POOLED_FILE], key=key, head="linear",
        combination={"number": combination.number, "name": combination.name,
                     "channels": list(combination.channels)},
        split=split, grouped_by_patient=split in GROUPED_SPLITS,
        rows="patients (mean of pooled slice features)" if split in GROUPED_SPLITS
        else "slices", pooling=config.linear_pooling, weights=weights or {},
        seconds=round(seconds, 3), n_folds=len(plan.folds))
    record_timing(work_dir, f"linear head {split} combo{combination.number:02d}", seconds)
    return read_linear_run(out, combination, split, reused=False)


def run_linear_training(work_dir: str | Path, profile: Profile | str = "auto", seed: int = 0,
                        combo: int | str = 9, split: str = "patient", device: str = "auto",
                        weights: str | Path = "auto", precision: str = "auto",
                        backbone: str = "auto", store: SliceSource | None = None,
                        fc_run: TrainingRun | None = None) -> LinearRun:
    """Chapter 04's linear head: on the FC run's feature cache, or on features made here."""
    from stsnb.training.stage import open_slices

    profile = resolve_profile(profile)
    source = store if store is not None else open_slices(work_dir, profile)
    if fc_run is not None:
        values = read_feature_cache(work_dir, fc_run.record["features_dir"], source,
                                    fc_run.record["features_key_hash"])
        return run_linear(source, work_dir, profile, fc_run.combination.number, split, seed,
                          values, fc_run.record["features_key_hash"], fc_run.weights)
    from stsnb.training.model import build_model

    combination = resolve_combo(combo, tuple(source.modalities))
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    bundle = build_model(weights, seed, backbone=backbone)
    features = cached_features(source, work_dir, combination.channels, bundle, torch_device,
                               precision, progress=False)
    return run_linear(source, work_dir, profile, combination.number, split, seed,
                      features.values, features.key_hash, bundle.weights.manifest())


def linear_summary(run: LinearRun) -> str:
    """A few sentences on the linear run, for chapter 04."""
    metrics = run.fold_metrics
    from stsnb.core.metrics import patient_predictions

    patients = patient_predictions(run.predictions)
    auc = rank_auc(patients["label"].to_numpy(), patients["prob"].to_numpy())
    cs = ", ".join(f"{c:g}" for c in metrics["chosen_c"])
    return (f"Linear head, combination {run.combination.number} ({run.combination.name}), "
            f"{run.split} split: {run.record['rows']}, features pooled "
            f"{'inside the GTV' if run.record['pooling'] == 'gtv' else 'over the whole slice'}; "
            f"patient-level AUC {auc:.3f}; C chosen per fold by the inner cross-validation: "
            f"{cs}; {run.record['seconds']:.1f} s.")


def linear_done(source: SliceSource, work_dir: str | Path, profile: Profile | str,
                combo: int | str, split: str = "patient", seed: int = 0) -> bool:
    """True when the linear run beside the FC run of (combo, split) is current."""
    profile = resolve_profile(profile)
    combination = resolve_combo(combo, tuple(source.modalities))
    split = check_split(split)
    fc_record = read_json(run_dir(work_dir, split, combination.number) / RUN_RECORD)
    if "features_key_hash" not in fc_record:
        return False
    key = linear_key(source, combination, split, seed, profile.training,
                     fc_record["features_key_hash"])
    return linear_is_current(linear_dir(work_dir, split, combination.number), hash_config(key))
