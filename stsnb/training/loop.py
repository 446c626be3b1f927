"""One fold of the FC head: SGD with momentum, validation after every epoch, early stopping on
the validation loss, the best epoch restored (the study's training slide), and the losses a head
is judged against (nats)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from stsnb.core.config import TrainingConfig
from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.metrics import THRESHOLD
from stsnb.training.folds import Fold
from stsnb.training.head import (
    reuse_freed_memory,
)

EVAL_CHUNK = 256  # slices per forward pass when evaluating


HISTORY_COLUMNS = ("fold", "epoch", "phase", "loss", "accuracy")


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


def fused_sgd(device: torch.device) -> bool:
    """Whether SGD updates the weights in one fused pass (CPU and CUDA): the same update as
    torch's default, read and written once per step instead of once per operation (the FC
    head's cross-validation 1.09x faster on a 2-core CPU, probabilities within 1.2e-7:
    `benchmarks/bench_fc_head.py`)."""
    return device.type in ("cpu", "cuda")


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
                                    momentum=config.momentum, fused=fused_sgd(device))
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
