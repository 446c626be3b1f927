"""Cross-validations of the FC head in memory: the head's three exact forms over a fold plan
(dual: the runs; primal and naive: the references tests and benchmarks compare it with), and the
whole cross-validation retrained under other labels (controls, permutation tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from stsnb.core.combinations import Combination, resolve_combo
from stsnb.core.config import Profile, TrainingConfig
from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.runs import RUN_RECORD, run_dir
from stsnb.core.store import (
    read_json,
    record_timing,
    write_csv_atomic,
)
from stsnb.training.features import (
    SliceSource,
    resolve_device,
)
from stsnb.training.folds import Fold, FoldPlan, make_folds
from stsnb.training.head import (
    DUAL_TRAINED,
    DualHead,
    DualTables,
    InputScaling,
    PrimalHead,
)
from stsnb.training.loop import FoldOutcome, fit_fold
from stsnb.training.model import ModelBundle, backbone_forward, build_model, prepare_backbone
from stsnb.training.weights import WeightsInfo

HEAD_FORMS = ("dual", "primal", "naive")


def naive_inputs(bundle: ModelBundle, source: SliceSource, channels: tuple[str, str, str],
                 device: torch.device, precision: str,
                 dtype: torch.dtype = torch.float32) -> Callable[[np.ndarray], torch.Tensor]:
    """Head inputs by a full forward pass of the frozen part at every call (the naive loop)."""
    rows = source.index["row"].to_numpy(np.int64)

    def inputs(positions: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(source.images(rows[positions], channels)).to(device)
        return backbone_forward(bundle, images, precision).to(dtype)

    return inputs


def feature_scaling(weights: WeightsInfo) -> str:
    """'none' for the study's ImageNet VGG-19 (its settings untouched), else 'rms'.

    Measured on the quick profile's slice store: the features of other sources differ from
    ImageNet VGG's by orders of magnitude (random VGG-19: mean 0.07, norm 19 per slice; HED
    VGG-16 on Caffe input: mean 5.5, norm 2891), and the study's learning rate and the head's
    initialisation (N(0, 0.01)) do not train on either. Divided by the RMS of the fold's
    training features, every source reaches the head on one scale (norm sqrt(25088) = 158 per
    slice) with the features' relative sizes kept; on the positive control (combination 10,
    benchmarks/bench_fc_steps.py) this found the label (patient AUC 0.63-0.65) where per-feature
    standardisation did not (0.50-0.53).
    """
    return "none" if weights.is_study_network else "rms"


def head_training(config: TrainingConfig, weights: WeightsInfo) -> TrainingConfig:
    """The settings the FC head trains with: the study's for the study's weights; on rescaled
    features (other sources) the learning rate is `rescaled_learning_rate` when set."""
    if weights.is_study_network or config.rescaled_learning_rate is None:
        return config
    return replace(config, learning_rate=config.rescaled_learning_rate)


class FoldTables:
    """The dual tables of each fold, with the scaling fitted on the fold's training slices.

    The products over 25088 features (W0 x, X X^T) are made once per feature matrix: with no
    scaling every fold shares them; the 'rms' scaling multiplies them by its factor (and its
    square); only 'standardize' (a shift per feature) needs new products per fold.
    """

    def __init__(self, values: torch.Tensor, bundle: ModelBundle, mode: str) -> None:
        self.values, self.bundle, self.mode = values, bundle, mode
        self._unscaled: DualTables | None = None

    def unscaled(self) -> DualTables:
        if self._unscaled is None:
            self._unscaled = DualTables(self.values,
                                        _initial_first_weight(self.bundle, self.values))
        return self._unscaled

    def __call__(self, fold: Fold) -> tuple[DualTables, InputScaling]:
        values = self.values
        scaling = InputScaling.fit(values[torch.from_numpy(fold.train).to(values.device)],
                                   self.mode)
        if scaling.identity:
            return self.unscaled(), scaling
        if scaling.factor is not None:
            return self.unscaled().scaled(scaling.factor), scaling
        scaled = scaling.apply(values)
        return DualTables(scaled, _initial_first_weight(self.bundle, scaled)), scaling


def _initial_first_weight(bundle: ModelBundle, like: torch.Tensor) -> torch.Tensor:
    """W0: the first layer's weight before any training, on `like`'s device and dtype."""
    return bundle.initial_head["0.weight"].to(device=like.device, dtype=like.dtype)


def make_head(form: str, bundle: ModelBundle, fold: Fold, *,
              features: torch.Tensor | None = None, tables: DualTables | None = None,
              inputs: Callable[[np.ndarray], torch.Tensor] | None = None) -> Any:
    """A fresh (untrained) head for one fold: 'dual' (tables), 'primal' (features), 'naive'."""
    classifier = bundle.model.classifier
    if form == "dual":  # the first weight stays W0 in this form: only the rest is reset
        bundle.reset_head(DUAL_TRAINED)
        return DualHead(classifier, tables, fold.train)
    bundle.reset_head()
    if form == "primal":
        return PrimalHead(classifier, lambda positions: features[
            torch.from_numpy(np.asarray(positions)).to(features.device)])
    if form == "naive":
        return PrimalHead(classifier, inputs)
    raise ConfigError(f"Unknown head form {form!r}: expected one of {', '.join(HEAD_FORMS)}.")


def cross_validate(source: SliceSource, combination: Combination, plan: FoldPlan,
                   bundle: ModelBundle, config: TrainingConfig, seed: int,
                   device: torch.device, precision: str, form: str = "dual",
                   features: np.ndarray | None = None, progress: bool = False,
                   dtype: torch.dtype = torch.float32,
                   scaling: str | None = None,
                   tables: FoldTables | None = None) -> list[FoldOutcome]:
    """Train every fold in memory (no files): the cached forms need `features` (index order).

    `dtype` is the head's arithmetic (float32 in every run; float64 lets a test compare the
    forms without float rounding). `scaling`: the features' scaling (default: `feature_scaling`
    of the weights), fitted on each fold's training slices. `tables`: the dual form's tables
    of these `features` kept from an earlier call (several label sets, one feature matrix).
    """
    prepare_backbone(bundle, device, precision)
    bundle.model.classifier.to(dtype)
    labels = torch.from_numpy(plan.labels).to(device)
    extra: dict[str, Any] = {}
    if form == "naive":
        extra["inputs"] = naive_inputs(bundle, source, combination.channels, device, precision,
                                       dtype)
    else:
        if features is None:
            raise ConfigError(f"The {form} head trains on cached features: pass `features`.")
        values = torch.from_numpy(features).to(device=device, dtype=dtype)
    mode = feature_scaling(bundle.weights) if scaling is None else scaling
    config = head_training(config, bundle.weights)
    if form == "dual" and (tables is None or tables.mode != mode
                           or tables.values.dtype != dtype or tables.values.device != device):
        tables = FoldTables(values, bundle, mode)
    outcomes = []
    try:
        for fold in plan.folds:
            if form == "dual":
                extra["tables"], _ = tables(fold)
            elif form == "primal":
                fitted = InputScaling.fit(values[torch.from_numpy(fold.train).to(values.device)],
                                          mode)
                extra["features"] = fitted.apply(values)
            elif mode != "none":
                raise ConfigError("The naive head runs on raw features: scaling='none'.")
            outcomes.append(fit_fold(make_head(form, bundle, fold, **extra), labels, fold,
                                     config, seed, progress))
        return outcomes
    finally:
        bundle.model.classifier.float()


@dataclass
class LabelRun:
    """The FC head's whole CV under one set of patient labels (in memory, nothing written)."""

    patient_auc: float
    patient_prob: pd.Series  # mean test probability per patient
    train_loss: float  # mean over folds of the restored head's training loss (eval mode)
    constant_loss: float  # the best constant prediction's loss (nats), mean over folds


class FoldHeads:
    """Everything the FC head needs to retrain on one combination's cached features."""

    def __init__(self, source: SliceSource, work_dir: str | Path, profile: Profile,
                 combo: int | str, seed: int) -> None:
        from stsnb.training.features import read_feature_cache

        combination = resolve_combo(combo, tuple(source.modalities))
        out = run_dir(work_dir, "patient", combination.number)
        record = read_json(out / RUN_RECORD)
        if not record:
            raise StsnbError(f"No finished FC run in {out}: run chapter 04 for combination "
                             f"{combination.number} first.")
        self.source, self.profile, self.seed, self.combination = source, profile, seed, \
            combination
        self.bundle = build_model(record["weights_request"], record["key"]["seed"],
                                  backbone=record.get("backbone_request", "auto"))
        self.values = read_feature_cache(work_dir, record["features_dir"], source,
                                         record["features_key_hash"])
        self.device = resolve_device("cpu")
        self.tables = FoldTables(torch.from_numpy(self.values), self.bundle,
                                 feature_scaling(self.bundle.weights))

    def run(self, slice_labels: np.ndarray) -> LabelRun:
        """Folds drawn under `slice_labels` (one label per patient), the FC head retrained."""
        config = self.profile.training
        plan = make_folds(self.source.index, "patient", config.folds, self.seed,
                          config.validation_fraction, labels=slice_labels)
        outcomes = cross_validate(self.source, self.combination, plan, self.bundle, config,
                                  self.seed, self.device, "fp32", features=self.values,
                                  tables=self.tables)
        prob = np.empty(len(plan.labels))
        losses, constants = [], []
        for fold, outcome in zip(plan.folds, outcomes, strict=True):
            prob[fold.test] = outcome.test_prob
            losses.append(outcome.restored_train_loss)
            constants.append(outcome.constant_loss)
        patients = pd.DataFrame({"pid": plan.patient_ids, "label": plan.labels, "prob": prob})
        per_patient = patients.groupby("pid").agg(label=("label", "first"), prob=("prob", "mean"))
        return LabelRun(float(roc_auc_score(per_patient["label"], per_patient["prob"])),
                        per_patient["prob"], float(np.mean(losses)), float(np.mean(constants)))


def permutation_run_aucs(source: SliceSource, work_dir: str | Path, profile: Profile,
                         combo: int | str, seed: int, patient_ids: pd.Series,
                         labels: np.ndarray, n_permutations: int, path: Path) -> np.ndarray:
    """The FC head's patient AUC under permutations 1..n of `labels` (per patient, in the order
    of `patient_ids`), kept in `path` (csv: permutation, patient_auc) and extended on reruns."""
    from stsnb.training.folds import permutation_draw

    done = pd.read_csv(path) if path.exists() else pd.DataFrame(
        columns=["permutation", "patient_auc"])
    have = dict(zip(done["permutation"].astype(int), done["patient_auc"], strict=True))
    todo = [k for k in range(1, n_permutations + 1) if k not in have]
    if todo:
        heads = FoldHeads(source, work_dir, profile, combo, seed)
        pids = source.index["patient_id"].astype(str)
        started = time.perf_counter()
        for k in todo:
            permuted = permutation_draw(np.asarray(labels), seed, k)
            mapping = dict(zip(patient_ids.astype(str), permuted, strict=True))
            have[k] = heads.run(pids.map(mapping).to_numpy(np.int64)).patient_auc
            write_csv_atomic(pd.DataFrame({"permutation": list(have),
                                           "patient_auc": list(have.values())}), path)
        record_timing(work_dir, f"FC permutations combo{int(heads.combination.number):02d}",
                      time.perf_counter() - started)
    return np.array([have[k] for k in range(1, n_permutations + 1)])
