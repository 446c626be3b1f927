"""Figures of chapter 04: learning curves per fold, fold metrics, time on features and head."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from stsnb.core.combinations import Combination
from stsnb.core.modalities import DISPLAY_NAMES

PHASE_STYLE = {"train": {"color": "#4c72b0", "ls": "-"}, "val": {"color": "#dd8452", "ls": "--"}}
METRIC_LABELS = {"loss": "cross-entropy loss", "accuracy": "accuracy (fraction of slices)"}


def combination_label(combination: Combination) -> str:
    """'9 Dose-T2w-CE-T1w' (display names, R-G-B order)."""
    names = [DISPLAY_NAMES.get(c, c) for c in combination.channels]
    text = names[0] if combination.is_single else "-".join(names)
    return f"{combination.number} {text}"


def learning_curves(history: pd.DataFrame, fold_metrics: pd.DataFrame, metric: str,
                    title: str, columns: int = 5) -> Figure:
    """One panel per fold: train (solid) and validation (dashed) `metric` against epoch.

    The early-stopping epoch (best validation loss, whose weights were restored) is marked by a
    vertical line and a dot on the validation curve.
    """
    folds = sorted(history["fold"].unique())
    columns = min(columns, len(folds))
    rows = int(np.ceil(len(folds) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.5 * rows + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    best = fold_metrics.set_index("fold")["best_epoch"]
    for ax, fold in zip(axes.flat, folds, strict=False):
        part = history[history["fold"] == fold]
        for phase, style in PHASE_STYLE.items():
            curve = part[part["phase"] == phase]
            ax.plot(curve["epoch"], curve[metric], label=phase, marker=".", **style)
        stop = int(best.get(fold, 0))
        ax.axvline(stop, color="0.4", lw=1, ls=":", label="early-stopping epoch")
        val = part[(part["phase"] == "val") & (part["epoch"] == stop)]
        ax.plot(val["epoch"], val[metric], "o", color=PHASE_STYLE["val"]["color"], ms=7)
        ax.set_title(f"fold {fold}", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(folds):]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fold_metrics_figure(fold_metrics: pd.DataFrame, title: str) -> Figure:
    """Test metrics of each fold (dots) and their mean (bar), slice level, threshold 0.5."""
    names = ["accuracy", "sensitivity", "specificity", "precision", "f1", "auc"]
    long = fold_metrics.melt(id_vars="fold", value_vars=names, var_name="metric")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    means = long.groupby("metric", sort=False)["value"].mean().reindex(names)
    ax.bar(range(len(names)), means.to_numpy(), color="#c6dbef", label="mean over folds")
    for i, name in enumerate(names):
        values = long.loc[long["metric"] == name, "value"].to_numpy(float)
        jitter = np.linspace(-0.2, 0.2, len(values)) if len(values) > 1 else np.zeros(1)
        ax.plot(i + jitter, values, "o", color="#08519c", ms=4,
                label="one fold" if i == 0 else None)
    ax.axhline(0.5, color="0.5", ls=":", lw=1, label="chance (AUC)")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("test-set metric (slice level)")
    ax.set_ylabel("value (fraction)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def timing_figure(timings: pd.DataFrame, title: str) -> Figure:
    """Horizontal bars: seconds on the frozen features and on the head's training."""
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(timings)))
    bars = ax.barh(timings["part"], timings["seconds"], color=["#8da0cb", "#fc8d62"])
    ax.bar_label(bars, labels=[f"{s:.1f} s" for s in timings["seconds"]], padding=3)
    ax.set_xlabel("wall time (s)")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.set_xlim(0, max(float(timings["seconds"].max()), 1e-3) * 1.25)
    fig.tight_layout()
    return fig
