"""Stage 04: VGG transfer learning (VGG-19, the study's, or VGG-16), k-fold CV, resumable.

Per fold (the study's training slide): SGD with momentum 0.9, mini-batch 64, learning rate 0.01,
at most 50 epochs, validation after every epoch, early stopping when the validation loss has not
improved for 8 epochs, the best-validation weights restored; cross-entropy on two classes; no
augmentation. The convolutions are frozen, so their features come from the feature cache
(`stsnb.training.features`) and only the classifier trains (`stsnb.training.head`, exact dual form).

Outputs in ``work_dir/runs/<split>/combo<NN>/``: ``predictions.csv`` (patient_id, slice_index,
fold, label, prob: one row per test slice, folds from 1, prob = predicted probability of distant
metastasis), ``history.csv`` (fold, epoch, phase = train | val, loss, accuracy),
``fold_metrics.csv`` (one row per fold), ``run.json`` (the key that made them, weights, device,
precision, seconds), and ``folds/fold<NN>/`` (each fold's outputs, and its trained head as
``head.pt``), so that an interrupted run resumes at the first unfinished fold."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from stsnb.core.combinations import Combination, resolve_combo
from stsnb.core.config import NOT_FC_KEY, Profile, TrainingConfig, resolve_profile
from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.manifest import read_manifest, software_key, update_manifest
from stsnb.core.metrics import PREDICTION_COLUMNS, study_metrics
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
from stsnb.training.cv import FoldTables, feature_scaling, head_training, make_head
from stsnb.training.features import (
    Features,
    SliceSource,
    cached_features,
    resolve_device,
    resolve_precision,
)
from stsnb.training.folds import Fold, FoldPlan, check_split, make_folds
from stsnb.training.head import (
    InputScaling,
    dense_classifier_state,
)
from stsnb.training.loop import HISTORY_COLUMNS, FoldOutcome, check_training_config, fit_fold
from stsnb.training.model import ModelBundle, build_model, prepare_backbone
from stsnb.training.weights import WeightsInfo, describe_weights

STAGE = "training"


FOLD_RECORD = "fold.json"


HEAD_FILE = "head.pt"


#: Bumped when the meaning of a run's outputs changes (part of every run key).
RUN_FORMAT = 2


def run_key(source: SliceSource, combination: Combination, split: str, seed: int,
            config: TrainingConfig, weights: WeightsInfo, precision: str) -> dict[str, Any]:
    """Everything a run's outputs depend on (the device is recorded, not keyed)."""
    training = {k: v for k, v in asdict(config).items() if k not in NOT_FC_KEY}
    return {"stage": STAGE, "format": RUN_FORMAT, "store": source.key_hash,
            "channels": list(combination.channels), "split": split, "seed": int(seed),
            "training": training, "weights": weights.identity(), "precision": precision,
            "feature_scaling": feature_scaling(weights),
            "software": software_key(STAGE),
            "model": f"{weights.backbone}, classifier trained, 2 classes, cross-entropy"}


def run_is_current(out: Path, key_hash: str) -> bool:
    """True when ``out/run.json`` was made with `key_hash` and its outputs exist, whole."""
    return Record(out / RUN_RECORD).is_current(key_hash)


def is_done(source: SliceSource, work_dir: str | Path, profile: Profile | str,
            combo: int | str, split: str = "patient", seed: int = 0, device: str = "auto",
            weights: str | Path = "auto", precision: str = "auto",
            backbone: str = "auto") -> bool:
    """True when this run exists with the same key (checked without building the network).

    False also when only a download attempt could tell which weights a run would use.
    """
    profile = resolve_profile(profile)
    combination = resolve_combo(combo, tuple(source.modalities))
    split = check_split(split)
    precision = resolve_precision(precision, resolve_device(device))
    described = describe_weights(weights, seed, backbone)
    if described is None:
        return False
    key = run_key(source, combination, split, seed, profile.training, described, precision)
    return run_is_current(run_dir(work_dir, split, combination.number), hash_config(key))


@dataclass
class TrainingRun(CrossValidationRun):
    """One combination's cross-validation by the FC head."""

    @property
    def weights(self) -> dict[str, Any]:
        return self.record["weights"]

    @property
    def pretrained(self) -> bool:
        return bool(self.weights.get("pretrained"))

    def timings(self) -> pd.DataFrame:
        """Seconds on the frozen features (once per combination) and on the head (all folds)."""
        return pd.DataFrame({
            "part": [f"features (frozen {self.weights.get('backbone', 'vgg19')}, once per "
                     "combination)",
                     f"head training ({len(self.fold_metrics)} folds)"],
            "seconds": [self.record["feature_seconds"], self.record["head_seconds"]],
        })


def _members_hash(fold: Fold) -> str:
    return hash_config({"train": fold.train.tolist(), "val": fold.val.tolist(),
                        "test": fold.test.tolist()})


def _fold_files(out: Path, number: int, with_head: bool) -> list[Path]:
    folder = out / "folds" / f"fold{number:02d}"
    names = ["predictions.csv", "history.csv"] + ([HEAD_FILE] if with_head else [])
    return [folder / name for name in names] + [folder / FOLD_RECORD]


def _fold_done(out: Path, fold: Fold, key_hash: str, with_head: bool) -> dict[str, Any] | None:
    files = _fold_files(out, fold.number, with_head)
    return Record(files[-1]).current(key_hash, members=_members_hash(fold))


@dataclass(frozen=True)
class RunJob:
    """What one combination's run needs once its key is known (`train_combination` makes it).

    Args:
        out: the run folder, ``work_dir/runs/<split>/combo<NN>/``.
        key, key_hash: the run key (store, channels, split, seed, settings, weights, precision).
        combination, split, plan: what is cross-validated, and the folds (slice positions).
        source: the slice store (index order of `features`).
        features: the combination's cached frozen features (n_slices, 25088).
        bundle: the network (its classifier is the head that trains).
        request: how the weights and the backbone were asked for (``weights``, ``backbone``).
        device, precision: where and how the features were computed (recorded).
        with_head: keep each fold's trained head (``head.pt``, about 70 MB).
        work_dir: where timings are recorded.
    """

    out: Path
    key: dict[str, Any]
    key_hash: str
    combination: Combination
    split: str
    plan: FoldPlan
    source: SliceSource
    features: Features
    bundle: ModelBundle
    request: dict[str, str]
    device: torch.device
    precision: str
    with_head: bool
    work_dir: Path


def _write_fold(job: RunJob, outcome: FoldOutcome, fold: Fold,
                scaling: InputScaling | None = None) -> dict[str, Any]:
    """Write one fold's predictions, history, head (when kept) and, last, its record."""
    out, source, plan, key_hash = job.out, job.source, job.plan, job.key_hash
    features, with_head, head_form = job.features, job.with_head, "dual"
    pretrained = job.bundle.weights.pretrained
    files = _fold_files(out, fold.number, with_head)
    files[-1].unlink(missing_ok=True)  # no record vouches for files being rewritten
    test = source.index.iloc[fold.test]
    labels = plan.labels[fold.test]
    predictions = pd.DataFrame({"patient_id": test["patient_id"].astype(str).to_numpy(),
                                "slice_index": test["slice_index"].to_numpy(),
                                "fold": fold.number, "label": labels,
                                "prob": outcome.test_prob})
    write_csv_atomic(predictions, files[0])
    write_csv_atomic(outcome.history, files[1])
    if with_head:
        rows = source.index["row"].to_numpy(np.int64)
        with atomic_path(files[2]) as tmp:
            torch.save({"form": head_form, "state": outcome.state,
                        "train_rows": torch.from_numpy(rows[fold.train]),
                        "scaling": (scaling or InputScaling()).to_dict(),
                        "features_key_hash": features.key_hash if features else None,
                        "run_key_hash": key_hash}, tmp)
    train_pids = set(plan.patient_ids[np.concatenate([fold.train, fold.val])])
    test_pids = set(plan.patient_ids[fold.test])
    return Record(files[-1]).finish(
        key_hash, [f.name for f in files[:-1]], members=_members_hash(fold), fold=fold.number,
        n_train=len(fold.train), n_val=len(fold.val), n_test=len(fold.test),
        n_test_patients=len(test_pids), test_patients_in_training=len(test_pids & train_pids),
        **study_metrics(labels, outcome.test_prob),
        best_epoch=outcome.best_epoch, epochs_run=outcome.epochs_run,
        stopped_early=outcome.stopped_early, best_val_loss=outcome.best_val_loss,
        restored_train_loss=outcome.restored_train_loss, constant_loss=outcome.constant_loss,
        seconds=round(outcome.seconds, 3), weights_pretrained=pretrained)


FOLD_METRIC_COLUMNS = ("fold", "n_train", "n_val", "n_test", "n_test_patients",
                       "test_patients_in_training", "accuracy", "sensitivity", "specificity",
                       "precision", "f1", "auc", "best_epoch", "epochs_run", "stopped_early",
                       "best_val_loss", "restored_train_loss", "constant_loss", "seconds",
                       "weights_pretrained")


def read_run(out: Path, combination: Combination, split: str, reused: bool) -> TrainingRun:
    """The run's tables and record from disk."""
    return TrainingRun(
        combination=combination, split=split, run_dir=out,
        predictions=pd.read_csv(out / "predictions.csv", dtype={"patient_id": str}),
        history=pd.read_csv(out / "history.csv"),
        fold_metrics=pd.read_csv(out / "fold_metrics.csv"),
        record=read_json(out / RUN_RECORD), reused=reused)


def train_combination(source: SliceSource, work_dir: str | Path, profile: Profile | str,
                      combo: int | str = 9, split: str = "patient", seed: int = 0,
                      device: str = "auto", weights: str | Path = "auto",
                      precision: str = "auto", save_heads: bool | None = None,
                      bundle: ModelBundle | None = None, progress: bool = True,
                      backbone: str = "auto") -> TrainingRun:
    """Cross-validate one combination into ``work_dir/runs/<split>/combo<NN>/``; resume.

    Skipped when the run exists with the same key (store, channels, split, seed, training
    settings, weights, precision); otherwise each finished fold is kept and the others train.
    `save_heads` (default: for the patient split only) keeps each fold's head (about 70 MB).
    """
    profile = resolve_profile(profile)
    config = profile.training
    check_training_config(config)
    combination = resolve_combo(combo, tuple(source.modalities))
    split = check_split(split)
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    with_head = split == "patient" if save_heads is None else bool(save_heads)
    plan = make_folds(source.index, split, config.folds, seed, config.validation_fraction)
    out = run_dir(work_dir, split, combination.number)
    described = (bundle.weights if bundle is not None
                 else describe_weights(weights, seed, backbone))
    if described is not None:
        key = run_key(source, combination, split, seed, config, described, precision)
        if run_is_current(out, hash_config(key)):
            return read_run(out, combination, split, reused=True)
    bundle = bundle or build_model(weights, seed, backbone=backbone)
    key = run_key(source, combination, split, seed, config, bundle.weights, precision)
    key_hash = hash_config(key)
    if run_is_current(out, key_hash):
        return read_run(out, combination, split, reused=True)
    name = f"combo{combination.number:02d}"
    remove_stale_temporaries(out)  # files cut off by a killed run
    features = cached_features(source, work_dir, combination.channels, bundle, torch_device,
                               precision, progress=progress)
    if features.computed_patients:
        record_timing(work_dir, f"features {name}", features.total_seconds)
    job = RunJob(out, key, key_hash, combination, split, plan, source, features, bundle,
                 {"weights": str(weights), "backbone": str(backbone)}, torch_device, precision,
                 with_head, Path(work_dir))
    records, extra_seconds = _train_folds(job, config, seed, progress)
    return _finish_run(job, records, extra_seconds)


def _train_folds(job: RunJob, config: TrainingConfig, seed: int,
                 progress: bool) -> tuple[list[dict[str, Any]], float]:
    """Each fold's record, training those not done yet; plus seconds spent on the tables."""
    out, plan, features, bundle = job.out, job.plan, job.features, job.bundle
    device, key_hash, with_head = job.device, job.key_hash, job.with_head
    label = f"combo{job.combination.number:02d} {job.split}"
    records: list[dict[str, Any] | None] = [_fold_done(out, f, key_hash, with_head)
                                            for f in plan.folds]
    todo = [f for f, r in zip(plan.folds, records, strict=True) if r is None]
    table_seconds = 0.0
    labels = fold_tables = None
    config = head_training(config, bundle.weights)
    if todo:
        prepare_backbone(bundle, device, "fp32")
        values = torch.from_numpy(features.values).to(device)
        labels = torch.from_numpy(plan.labels).to(device)
        fold_tables = FoldTables(values, bundle, feature_scaling(bundle.weights))
    bar = tqdm(plan.folds, desc=f"{label} folds", unit="fold", disable=not progress)
    for i, fold in enumerate(bar):
        if records[i] is None:
            started = time.perf_counter()
            tables, scaling = fold_tables(fold)
            table_seconds += time.perf_counter() - started
            head = make_head("dual", bundle, fold, tables=tables)
            outcome = fit_fold(head, labels, fold, config, seed, progress)
            del tables
            records[i] = _write_fold(job, outcome, fold, scaling)
    bar.close()
    return [r for r in records if r is not None], table_seconds


def _finish_run(job: RunJob, records: list[dict[str, Any]],
                extra_seconds: float) -> TrainingRun:
    """Gather the folds into the run's tables, write them and the run record (`extra_seconds`:
    head time outside the folds, e.g. the dual tables)."""
    out, plan, features, bundle = job.out, job.plan, job.features, job.bundle
    combination, split, with_head = job.combination, job.split, job.with_head
    for stale in (out / "folds").glob("fold*"):
        if stale.is_dir() and int(stale.name[4:] or 0) > len(plan.folds):
            for path in stale.iterdir():
                path.unlink()
            stale.rmdir()
    folders = [_fold_files(out, f.number, with_head)[0].parent for f in plan.folds]
    predictions = pd.concat([pd.read_csv(f / "predictions.csv", dtype={"patient_id": str})
                             for f in folders], ignore_index=True)
    history = pd.concat([pd.read_csv(f / "history.csv") for f in folders], ignore_index=True)
    metrics = pd.DataFrame(records).reindex(columns=list(FOLD_METRIC_COLUMNS))
    outputs = {"predictions.csv": predictions[list(PREDICTION_COLUMNS)],
               "history.csv": history[list(HISTORY_COLUMNS)], "fold_metrics.csv": metrics}
    run_record = Record(out / RUN_RECORD)
    run_record.invalidate()  # no record vouches for files being rewritten
    for filename, table in outputs.items():
        write_csv_atomic(table, out / filename)
    head_seconds = round(float(metrics["seconds"].sum()) + extra_seconds, 3)
    run_record.finish(
        job.key_hash, list(outputs), key=job.key,
        combination={"number": combination.number, "name": combination.name,
                     "channels": list(combination.channels)},
        split=split, labels="permuted among patients (seeded)" if split == "random"
        else "as recorded", grouped_by_patient=split in GROUPED_SPLITS,
        weights=bundle.weights.manifest(), weights_request=job.request["weights"],
        backbone_request=job.request["backbone"], backbone=bundle.weights.backbone,
        device=str(job.device), precision=job.precision, head_form="dual",
        features_key_hash=features.key_hash, features_dir=features.dir.name,
        feature_seconds=round(features.total_seconds, 3), head_seconds=head_seconds,
        heads_saved=with_head, n_folds=len(plan.folds))
    record_timing(job.work_dir, f"training {split} combo{combination.number:02d}", head_seconds)
    return read_run(out, combination, split, reused=False)


def open_slices(work_dir: str | Path, profile: Profile) -> SliceSource:
    """The slice store of chapter 03, checked against the profile's input size."""
    from stsnb.slices import SliceStore

    store = SliceStore.open(work_dir)
    if store.input_px != profile.preprocessing.input_px:
        raise ConfigError(
            f"The slice store holds {store.input_px} px slices but profile {profile.name!r} "
            f"trains on {profile.preprocessing.input_px} px. Fix: run chapter 03 with the same "
            "profile first."
        )
    return store


def run_training(cohort_dir: str | Path, work_dir: str | Path, profile: Profile | str = "auto",
                 seed: int = 0, combo: int | str = 9, split: str = "patient",
                 device: str = "auto", weights: str | Path = "auto", precision: str = "auto",
                 save_heads: bool | None = None, store: SliceSource | None = None,
                 progress: bool = True, backbone: str = "auto") -> TrainingRun:
    """Chapter 04's stage: one combination's cross-validation (reused when current).

    Reads the slice store of ``work_dir`` (or `store`), writes ``work_dir/runs/...`` and the
    run manifest's training entry and weights.
    """
    profile = resolve_profile(profile)
    source = store if store is not None else open_slices(work_dir, profile)
    run = train_combination(source, work_dir, profile, combo, split, seed, device, weights,
                            precision, save_heads=save_heads, progress=progress,
                            backbone=backbone)
    update_manifest(work_dir, profile=profile, cohort_dir=cohort_dir, seed=seed, stage=STAGE,
                    device=run.record["device"], precision=run.record["precision"],
                    weights=run.weights,
                    cohort_sha256=read_manifest(work_dir).get("cohort_sha256"),
                    runs={f"{run.split}/{run.run_dir.name}": run_entry(run)},
                    precision_measurement=_precision_measurement(device, precision))
    return run


def _precision_measurement(device: str, precision: str) -> dict[str, Any] | None:
    """The CPU's cached precision measurement when the run chose by it (auto on a CPU)."""
    if str(precision).lower() != "auto" or resolve_device(device).type != "cpu":
        return None
    from stsnb.training.precision import cpu_precision

    return cpu_precision().as_dict()


def run_entry(run: TrainingRun) -> dict[str, Any]:
    """The manifest's entry of one run: what made its outputs (the key decides their reuse)."""
    key = run.record["key"]
    return {"key_hash": run.record["key_hash"], "seed": key["seed"], "weights": key["weights"],
            "weights_pretrained": run.pretrained, "device": run.record["device"],
            "precision": run.record["precision"], "finished": run.record["finished"],
            "seconds": round(run.record["feature_seconds"] + run.record["head_seconds"], 3)}


def fold_model(work_dir: str | Path, split: str, combo: int | str, fold: int,
               source: SliceSource, device: str = "cpu") -> ModelBundle:
    """The full network of one trained fold (for Grad-CAM): the run's backbone and fold head.

    The first layer's weight is rebuilt from the stored dual form (W0 + A X_train) with the
    cached features; the network predicts that fold's test slices as ``predictions.csv`` says.
    """
    combination = resolve_combo(combo, tuple(source.modalities))
    out = run_dir(work_dir, check_split(split), combination.number)
    record = read_json(out / RUN_RECORD)
    path = out / "folds" / f"fold{int(fold):02d}" / HEAD_FILE
    if not record or not path.exists():
        raise StsnbError(f"No trained head for fold {fold} in {out} (run chapter 04 with "
                         "save_heads for this split, or the run is unfinished).")
    key = record["key"]
    bundle = build_model(record["weights_request"], key["seed"],
                         backbone=record.get("backbone_request", "auto"))
    if bundle.weights.identity() != key["weights"]:
        raise StsnbError(f"The weights {record['weights_request']!r} are not those the run in "
                         f"{out} trained from. Fix: restore them, or rerun chapter 04.")
    torch_device = resolve_device(device)
    features = cached_features(source, work_dir, combination.channels, bundle, torch_device,
                               key["precision"], progress=False)
    stored = torch.load(path, map_location="cpu", weights_only=True)
    positions = pd.Index(source.index["row"]).get_indexer(stored["train_rows"].numpy())
    scaling = InputScaling.from_dict(stored.get("scaling"))
    train = scaling.apply(torch.from_numpy(features.values[positions]))
    state = scaling.fold_into(dense_classifier_state(stored["state"],
                                                     bundle.initial_head["0.weight"], train))
    bundle.model.classifier.load_state_dict(state)
    prepare_backbone(bundle, torch_device, key["precision"])
    return bundle
