"""Chapter 04's words and tables: the weights banner, the fold metrics as shown, the summary
and whether the head learnt at all."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsnb.training.loop import constant_loss
from stsnb.training.stage import TrainingRun
from stsnb.training.weights import imagenet_url


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
