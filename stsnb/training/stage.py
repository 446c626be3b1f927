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
``head.pt``), so that an interrupted run resumes at the first unfinished fold.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from stsnb.config import NOT_FC_KEY, Profile, TrainingConfig, resolve_profile
from stsnb.core.combinations import Combination, resolve_combo
from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.manifest import read_manifest, software_key, update_manifest
from stsnb.core.metrics import PREDICTION_COLUMNS, THRESHOLD, study_metrics
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
    Features,
    SliceSource,
    cached_features,
    resolve_device,
    resolve_precision,
)
from stsnb.training.folds import Fold, FoldPlan, check_split, make_folds
from stsnb.training.head import (
    DUAL_TRAINED,
    DualHead,
    DualTables,
    InputScaling,
    PrimalHead,
    dense_classifier_state,
    reuse_freed_memory,
)
from stsnb.training.model import (
    ModelBundle,
    WeightsInfo,
    backbone_forward,
    build_model,
    describe_weights,
    imagenet_url,
    prepare_backbone,
)

STAGE = "training"
FOLD_RECORD = "fold.json"
HEAD_FILE = "head.pt"
#: Bumped when the meaning of a run's outputs changes (part of every run key).
RUN_FORMAT = 2
EVAL_CHUNK = 256  # slices per forward pass when evaluating
HISTORY_COLUMNS = ("fold", "epoch", "phase", "loss", "accuracy")
HEAD_FORMS = ("dual", "primal", "naive")


# -- one fold --------------------------------------------------------------------------------

class EarlyStopping:
    """Stop when the validation loss has not improved for `patience` epochs; keep the best."""

    def __init__(self, patience: int) -> None:
        self.patience = int(patience)
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.waited = 0

    def update(self, epoch: int, loss: float,
               state: Callable[[], dict[str, torch.Tensor]]) -> bool:
        """Record one epoch's validation loss; True when training should stop."""
        if loss < self.best_loss:  # NaN never improves
            self.best_loss, self.best_epoch, self.waited = float(loss), int(epoch), 0
            self.best_state = state()
        else:
            self.waited += 1
        return self.waited >= self.patience


@dataclass
class FoldOutcome:
    """One trained fold: its curves, test probabilities and the restored (best) head state."""

    number: int
    history: pd.DataFrame
    test_prob: np.ndarray
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    best_val_loss: float
    state: dict[str, torch.Tensor]
    seconds: float
    #: cross-entropy (nats) of the restored head on its training slices, eval mode (no dropout)
    restored_train_loss: float = math.nan
    #: the same loss of the best constant prediction (nats): what a head that learnt nothing
    #: scores (`constant_loss`)
    constant_loss: float = math.nan


def check_training_config(config: TrainingConfig) -> None:
    """ConfigError for settings no training can run with."""
    problems = []
    if config.batch_size < 1 or config.max_epochs < 1 or config.patience < 1:
        problems.append("batch_size, max_epochs and patience must be >= 1")
    if not config.learning_rate > 0 or not 0 <= config.momentum < 1:
        problems.append("learning_rate must be > 0 and momentum in [0, 1)")
    if config.class_weighting not in CLASS_WEIGHTINGS:
        problems.append(f"class_weighting {config.class_weighting!r} is not one of "
                        f"{', '.join(CLASS_WEIGHTINGS)}")
    if config.optimizer != "sgd":
        problems.append(f"optimizer {config.optimizer!r} is not 'sgd' (the study's SGDM)")
    if problems:
        raise ConfigError(f"Training settings out of range: {'; '.join(problems)}.")


#: cross-entropy class weightings (TrainingConfig.class_weighting).
CLASS_WEIGHTINGS = ("balanced", "none")


def binary_entropy(prior: float) -> float:
    """Entropy (nats) of a two-class prior P(class 1) = `prior`; 0 for a single class."""
    if not 0 < prior < 1:
        return 0.0
    return -(prior * math.log(prior) + (1 - prior) * math.log(1 - prior))


def class_weights(train_labels: np.ndarray, weighting: str) -> np.ndarray | None:
    """Per-class cross-entropy weights (class 0, class 1) from a fold's training labels:
    n / (2 n_class) when "balanced" (so that the weights of the training slices sum to n),
    None for "none" or a single-class fold."""
    labels = np.asarray(train_labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=2)[:2]
    if weighting == "none" or (counts == 0).any():
        return None
    return len(labels) / (2.0 * counts)


def constant_loss(prior: float, weighting: str) -> float:
    """Cross-entropy (nats) of the best constant prediction on training slices with class-1
    share `prior`: what a head that learnt nothing scores. The prior's entropy when unweighted,
    ln 2 when balanced (the constant prediction is then P = 0.5)."""
    if not 0 < prior < 1:
        return 0.0
    return math.log(2.0) if weighting == "balanced" else binary_entropy(prior)


def fold_seed(seed: int, fold: int) -> int:
    """The seed of one fold's batch order and dropout."""
    return int(seed) * 1009 + int(fold)


def _as(weight: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """The class weights in the logits' dtype (heads train in float32 or float64)."""
    return None if weight is None else weight.to(logits.dtype)


def evaluate(head: Any, positions: np.ndarray, labels: torch.Tensor,
             weight: torch.Tensor | None = None) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy (weighted by the per-class `weight`, as torch's mean reduction),
    accuracy and P(class 1) over `positions` (eval mode, no grad)."""
    head.train(False)
    losses, weights, probs = [], [], []
    with torch.no_grad():
        for start in range(0, len(positions), EVAL_CHUNK):
            chunk = positions[start:start + EVAL_CHUNK]
            logits = head(chunk)
            target = labels[torch.from_numpy(chunk).to(labels.device)]
            losses.append(F.cross_entropy(logits, target, weight=_as(weight, logits),
                                          reduction="sum").item())
            weights.append(float(len(chunk)) if weight is None
                           else weight[target].sum().item())
            probs.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
    prob = np.concatenate(probs) if probs else np.empty(0, dtype=np.float32)
    truth = labels[torch.from_numpy(positions).to(labels.device)].cpu().numpy()
    accuracy = float(np.mean((prob >= THRESHOLD) == (truth == 1))) if len(truth) else math.nan
    return sum(losses) / max(sum(weights), 1e-12) if losses else 0.0, accuracy, prob


def fit_fold(head: Any, labels: torch.Tensor, fold: Fold, config: TrainingConfig, seed: int,
             progress: bool = False) -> FoldOutcome:
    """Train `head` on one fold with SGD + momentum and early stopping; restore the best epoch.

    The batch order and dropout draw from generators seeded by (seed, fold); torch's global
    generators are restored afterwards.
    """
    started = time.perf_counter()
    reuse_freed_memory()
    device = labels.device
    devices = [device.index or 0] if device.type == "cuda" else []
    rows = []
    train_labels = labels[torch.from_numpy(fold.train).to(device)].cpu().numpy()
    per_class = class_weights(train_labels, config.class_weighting)
    weight = (None if per_class is None
              else torch.as_tensor(per_class, dtype=torch.float32, device=device))
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(fold_seed(seed, fold.number))
        order = torch.Generator().manual_seed(fold_seed(seed, fold.number))
        optimizer = torch.optim.SGD(list(head.parameters()), lr=config.learning_rate,
                                    momentum=config.momentum)
        stopper = EarlyStopping(config.patience)
        epochs = tqdm(range(1, config.max_epochs + 1), desc=f"fold {fold.number} epochs",
                      unit="epoch", leave=False, disable=not progress)
        epoch = 0
        for epoch in epochs:
            head.train(True)
            total = torch.zeros((), dtype=torch.float64, device=device)
            weight_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            permutation = torch.randperm(len(fold.train), generator=order).numpy()
            shuffled = torch.from_numpy(fold.train[permutation]).to(device)  # one copy an epoch
            for start in range(0, len(shuffled), config.batch_size):
                batch = shuffled[start:start + config.batch_size]
                target = labels[batch]
                logits = head(batch)
                loss = F.cross_entropy(logits, target, weight=_as(weight, logits))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                batch_weight = (len(batch) if weight is None else weight[target].sum())
                total += loss.detach() * batch_weight  # summed on the device: no sync per step
                weight_sum += batch_weight
                correct += (logits.detach().argmax(1) == target).sum()
            val_loss, val_accuracy, _ = evaluate(head, fold.val, labels, weight)
            rows += [(fold.number, epoch, "train", total.item() / weight_sum.item(),
                      correct.item() / len(fold.train)),
                     (fold.number, epoch, "val", val_loss, val_accuracy)]
            epochs.set_postfix(val_loss=f"{val_loss:.3f}")
            if stopper.update(epoch, val_loss, head.state):
                break
        epochs.close()
        if stopper.best_state is None:  # validation loss NaN from the first epoch
            raise StsnbError(f"Fold {fold.number}: the validation loss was never finite "
                             "(training diverged). Fix: lower the learning rate.")
        head.load(stopper.best_state)
        restored_train_loss, _, _ = evaluate(head, fold.train, labels, weight)
        _, _, test_prob = evaluate(head, fold.test, labels)
    return FoldOutcome(
        number=fold.number,
        history=pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)),
        test_prob=test_prob,
        best_epoch=stopper.best_epoch,
        epochs_run=epoch,
        stopped_early=epoch < config.max_epochs,
        best_val_loss=stopper.best_loss,
        restored_train_loss=restored_train_loss,
        constant_loss=constant_loss(float(train_labels.mean()) if len(train_labels) else 0.0,
                                    config.class_weighting),
        state={k: v.detach().cpu() for k, v in stopper.best_state.items()},
        seconds=time.perf_counter() - started,
    )


# -- heads over a fold plan ------------------------------------------------------------------

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


# -- one combination, on disk ----------------------------------------------------------------

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


def _write_fold(out: Path, outcome: FoldOutcome, fold: Fold, source: SliceSource,
                plan: FoldPlan, key_hash: str, head_form: str, features: Features | None,
                with_head: bool, pretrained: bool,
                scaling: InputScaling | None = None) -> dict[str, Any]:
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
    records, extra_seconds = _train_folds(out, plan, features, bundle, config, seed, source,
                                          torch_device, key_hash, with_head, progress,
                                          f"{name} {split}")
    return _finish_run(out, key, key_hash, combination, split, records, plan, source, features,
                       bundle, weights, torch_device, precision, with_head, extra_seconds,
                       work_dir, backbone)


def _train_folds(out: Path, plan: FoldPlan, features: Features, bundle: ModelBundle,
                 config: TrainingConfig, seed: int, source: SliceSource, device: torch.device,
                 key_hash: str, with_head: bool, progress: bool,
                 label: str) -> tuple[list[dict[str, Any]], float]:
    """Each fold's record, training those not done yet; plus seconds spent on the tables."""
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
            records[i] = _write_fold(out, outcome, fold, source, plan, key_hash, "dual",
                                     features, with_head, bundle.weights.pretrained, scaling)
    bar.close()
    return [r for r in records if r is not None], table_seconds


def _finish_run(out: Path, key: dict[str, Any], key_hash: str, combination: Combination,
                split: str, records: list[dict[str, Any]], plan: FoldPlan,
                source: SliceSource, features: Features, bundle: ModelBundle,
                weights: str | Path, device: torch.device, precision: str, with_head: bool,
                extra_seconds: float, work_dir: str | Path,
                backbone: str = "auto") -> TrainingRun:
    """Gather the folds into the run's tables, write them and the run record."""
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
        key_hash, list(outputs), key=key,
        combination={"number": combination.number, "name": combination.name,
                     "channels": list(combination.channels)},
        split=split, labels="permuted among patients (seeded)" if split == "random"
        else "as recorded", grouped_by_patient=split in GROUPED_SPLITS,
        weights=bundle.weights.manifest(), weights_request=str(weights),
        backbone_request=str(backbone), backbone=bundle.weights.backbone,
        device=str(device), precision=precision, head_form="dual",
        features_key_hash=features.key_hash, features_dir=features.dir.name,
        feature_seconds=round(features.total_seconds, 3), head_seconds=head_seconds,
        heads_saved=with_head, n_folds=len(plan.folds))
    record_timing(work_dir, f"training {split} combo{combination.number:02d}", head_seconds)
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


def weights_warning(weights: dict[str, Any]) -> str | None:
    """One sentence when the network (a manifest's or run's `weights` entry) did not start from
    pretrained weights; None when it did."""
    if weights.get("pretrained"):
        return None
    backbone = weights.get("backbone", "vgg19")
    return (f"Not transfer learning: this {backbone} started from random weights, so its "
            f"results do not reproduce the study; give torchvision's "
            f"{Path(imagenet_url(backbone)).name} through TORCH_HOME or WEIGHTS=, or use the "
            "offline filters (WEIGHTS=auto).")


def weights_banner(weights: dict[str, Any] | None) -> str:
    """HTML for the top of a chapter: the network's weights in one line, or the warning of
    `weights_warning` in a red box (the one banner of every chapter)."""
    if weights is None:
        return "<p><b>Network weights:</b> no training run recorded yet.</p>"
    text = weights_warning(weights)
    if text is None:
        return f"<p><b>Network weights:</b> {html.escape(weights.get('summary', 'ImageNet'))}</p>"
    return ('<div style="border:3px solid #b00020;background:#fdecea;padding:10px;'
            f'font-weight:bold;color:#5f0010">WARNING: {html.escape(text)}</div>')


def fold_metrics_view(metrics: pd.DataFrame) -> pd.DataFrame:
    """The fold metrics as the chapter shows them, with a mean +- SD row (3 decimals)."""
    columns = ["fold", "n_test", "n_test_patients", "accuracy", "sensitivity", "specificity",
               "precision", "f1", "auc", "best_epoch", "epochs_run", "seconds"]
    view = metrics[columns].copy()
    numeric = ["accuracy", "sensitivity", "specificity", "precision", "f1", "auc"]
    summary = {c: f"{view[c].mean():.3f} +- {view[c].std(ddof=1):.3f}" for c in numeric}
    summary.update(fold="mean +- SD", n_test=int(view["n_test"].sum()),
                   n_test_patients=int(view["n_test_patients"].sum()),
                   best_epoch=f"{view['best_epoch'].mean():.1f}",
                   epochs_run=f"{view['epochs_run'].mean():.1f}",
                   seconds=f"{view['seconds'].sum():.1f}")
    view[numeric] = view[numeric].round(3)
    view["seconds"] = view["seconds"].round(1)
    return pd.concat([view.astype(object), pd.DataFrame([summary])], ignore_index=True)


def weights_warning_html(run: TrainingRun) -> str | None:
    """A red box for the chapter (JupyterLab and the book) when the weights are not pretrained."""
    return None if run.pretrained else weights_banner(run.weights)


def training_summary(run: TrainingRun) -> str:
    """A few sentences with the figures that matter, for the chapter's summary."""
    metrics = run.fold_metrics
    record = run.record
    split_text = {"patient": "patient-grouped folds", "slice": "slice-level folds (the "
                  "study's split; slices of one patient in train and test)",
                  "random": "patient-grouped folds with permuted labels (control: chance "
                  "expected)"}[run.split]
    auc = metrics["auc"].dropna()
    auc_text = f"{auc.mean():.3f}" if len(auc) else "undefined (single-class test folds)"
    max_epochs = record["key"]["training"]["max_epochs"]
    return (
        f"Combination {run.combination.number} ({run.combination.name}), {split_text}: "
        f"{len(metrics)} folds, {int(metrics['n_test'].sum())} test slices. Mean test accuracy "
        f"{metrics['accuracy'].mean():.3f}, sensitivity {metrics['sensitivity'].mean():.3f}, "
        f"specificity {metrics['specificity'].mean():.3f}, AUC {auc_text} (slice level). "
        f"Early stopping at epoch {metrics['best_epoch'].mean():.1f} on average (of at most "
        f"{max_epochs}). Time: {record['feature_seconds']:.1f} s on features, "
        f"{record['head_seconds']:.1f} s on the head ({record['device']}, "
        f"{record['precision']} features). Weights: {run.weights.get('summary')}."
    )


# -- the FC head under other labels (permutation tests, controls) ----------------------------

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


def learning_check(run: TrainingRun) -> pd.DataFrame:
    """Per fold: does the FC head learn? Training loss of the restored head (its training slices
    in eval mode) against the loss of the best constant prediction (nats; a head that learnt
    nothing sits at it: ln 2 with balanced class weights, the prior's entropy without), and the
    spread of its test probabilities (interquartile range; 0 = constant predictions)."""
    preds = run.predictions
    total_pos, total = int(preds["label"].sum()), len(preds)
    weighting = run.record.get("key", {}).get("training", {}).get("class_weighting", "none")
    rows = []
    for fold in run.fold_metrics.itertuples():
        test = preds[preds["fold"] == fold.fold]
        reference = float(getattr(fold, "constant_loss", math.nan))
        if math.isnan(reference):  # a run recorded before the reference was kept
            prior = (total_pos - int(test["label"].sum())) / max(1, total - len(test))
            reference = constant_loss(prior, weighting)
        history = run.history[(run.history["fold"] == fold.fold)
                              & (run.history["phase"] == "train")]
        loss = float(getattr(fold, "restored_train_loss", math.nan))
        if math.isnan(loss):  # a run recorded before the restored head's loss was kept
            at_best = history[history["epoch"] == fold.best_epoch]["loss"]
            loss = float(at_best.iloc[0]) if len(at_best) else math.nan
        q75, q25 = np.percentile(test["prob"], [75, 25])
        rows.append({"fold": fold.fold, "constant_loss": reference,
                     "train_loss_restored": loss,
                     "loss_over_constant": loss / reference if reference else math.nan,
                     "first_epoch_loss": float(history["loss"].iloc[0]) if len(history)
                     else math.nan, "test_prob_iqr": float(q75 - q25),
                     "test_prob_min": float(test["prob"].min()),
                     "test_prob_max": float(test["prob"].max())})
    return pd.DataFrame(rows)
