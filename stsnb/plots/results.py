"""Figures of chapters 05 and 05b: the study's comparison, ROC curves, ranking, leakage,
calibration and decision curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from stsnb.results.stats import roc_points
from stsnb.results.tables import STUDY_TABLE


def accuracy_by_set_figure(summary: pd.DataFrame) -> Figure:
    """The study's first results figure: mean accuracy on train, validation and test sets."""
    long = summary.melt(id_vars=["combo"], value_vars=["train_accuracy", "val_accuracy",
                                                      "test_accuracy"],
                        var_name="set", value_name="accuracy")
    long["set"] = long["set"].str.replace("_accuracy", "")
    fig, ax = plt.subplots(figsize=(10, 4))
    sns.barplot(data=long, x="combo", y="accuracy", hue="set", ax=ax)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_title("Slice-level accuracy per combination (mean over folds)")
    ax.set_xlabel("combination")
    ax.set_ylabel("accuracy")
    return fig


def study_comparison_figure(summary: pd.DataFrame) -> Figure:
    """Our slice-level test accuracy (mean ± std over folds) beside the study's, per combination
    (matched by images and channel order; ours alone for combinations not in the study)."""
    study = STUDY_TABLE.set_index("name")
    shared = summary["name"].isin(study.index).to_numpy()
    rows = pd.concat([summary[shared], summary[~shared]])
    x = np.arange(len(rows))
    n_shared = int(shared.sum())
    fig, ax = plt.subplots(figsize=(10, 4))
    if n_shared:
        names = rows["name"].iloc[:n_shared]
        ax.bar(x[:n_shared] - 0.2, study.loc[names, "accuracy_mean"], 0.4,
               yerr=study.loc[names, "accuracy_std"], label="study (slice-level split)")
    offset = np.where(np.arange(len(rows)) < n_shared, 0.2, 0.0)
    ax.bar(x + offset, rows["slice_accuracy_mean"], 0.4, yerr=rows["slice_accuracy_std"],
           label="this build")
    ax.set_xticks(x, [f"{c}" if i < n_shared else f"{c}\n{n}" for i, (c, n)
                      in enumerate(zip(rows["combo"], rows["name"], strict=True))])
    ax.set_ylim(0, 1)
    title = "Test accuracy per combination: the study and this build"
    if n_shared < len(rows):
        title += (" (none of them in the study's table)" if not n_shared
                  else " (the last ones are not in the study's table)")
    ax.set_title(title)
    ax.set_xlabel("combination")
    ax.set_ylabel("accuracy (mean ± std over folds)")
    ax.legend(loc="lower right")
    return fig


def roc_figure(predictions: dict[int, pd.DataFrame], names: dict[int, str]) -> Figure:
    """Patient-level ROC curve of each combination, AUC in the legend."""
    from stsnb.core.metrics import binary_metrics, patient_predictions

    fig, ax = plt.subplots(figsize=(6, 6))
    for combo, preds in sorted(predictions.items()):
        points = roc_points(preds, level="patient")
        patients = patient_predictions(preds)
        auc = binary_metrics(patients["label"], patients["prob"])["auc"]
        ax.plot(points["fpr"], points["tpr"], label=f"{combo} {names.get(combo, '')} "
                f"(AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set_title("ROC per combination (patient level)")
    ax.set_xlabel("false-positive rate (1 - specificity)")
    ax.set_ylabel("true-positive rate (sensitivity)")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def ranking_figure(ranked: pd.DataFrame) -> Figure:
    """AUC difference to the best combination with its paired-bootstrap 95% CI."""
    fig, ax = plt.subplots(figsize=(8, 4))
    y = np.arange(len(ranked))
    diff = ranked["auc_minus_best"].to_numpy(dtype=float)
    low, high = ranked["ci_low"].to_numpy(dtype=float), ranked["ci_high"].to_numpy(dtype=float)
    ax.errorbar(diff, y, xerr=np.vstack([diff - low, high - diff]), fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(y, [f"#{r.rank}: combination {r.combo}" for r in ranked.itertuples()])
    ax.invert_yaxis()
    ax.set_title("Ranking: patient-level AUC minus the best combination's")
    ax.set_xlabel("AUC difference (95% paired bootstrap CI)")
    ax.set_ylabel("combination")
    return fig


def leakage_figure(by_split: pd.DataFrame) -> Figure:
    """Slice-level test accuracy and patient-level AUC per split (patient, slice, random)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    sns.barplot(data=by_split, x="combo", y="slice_accuracy_mean", hue="split", ax=axes[0])
    axes[0].set_title("Slice-level test accuracy by split")
    axes[0].set_ylabel("accuracy (mean over folds)")
    sns.barplot(data=by_split, x="combo", y="patient_auc", hue="split", ax=axes[1])
    axes[1].set_title("Patient-level AUC by split")
    axes[1].set_ylabel("AUC")
    for ax in axes:
        ax.set_ylim(0, 1)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("combination")
    fig.tight_layout()
    return fig


def chance_figure(verdicts: pd.DataFrame) -> Figure:
    """Patient-level AUC of every run (dots, by split) over the 95% chance band (grey)."""
    table = verdicts.assign(run=[f"{c}" for c in verdicts["combo"]])
    order = sorted(table["run"].unique(), key=int)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    low, high = table["band_low"].min(), table["band_high"].max()
    ax.axhspan(low, high, color="0.85", zorder=0, label="95% chance band")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", zorder=1)
    sns.stripplot(data=table, x="run", y="patient_auc", hue="split", order=order, size=8,
                  dodge=True, jitter=False, ax=ax, zorder=2)
    ax.set_ylim(0, 1)
    ax.set_xlabel("combination")
    ax.set_ylabel("patient-level AUC")
    ax.set_title("Patient-level AUC against chance")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def calibration_figure(curve: pd.DataFrame, brier: float, title: str) -> Figure:
    """Reliability plot: observed frequency of metastasis against predicted probability."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect calibration")
    ax.plot(curve["predicted"], curve["observed"], "o-", label=f"model (Brier {brier:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.set_xlabel("predicted probability of distant metastasis")
    ax.set_ylabel("observed frequency")
    ax.legend(loc="upper left")
    return fig


def histories_figure(history: pd.DataFrame, title: str) -> Figure:
    """Loss and accuracy per epoch (train and validation), one line per fold."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, value in zip(axes, ("loss", "accuracy"), strict=True):
        sns.lineplot(data=history, x="epoch", y=value, hue="phase", units="fold",
                     estimator=None, alpha=0.6, ax=ax)
        ax.set_title(f"{value.capitalize()} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy loss" if value == "loss" else "accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def decision_curve_figure(curve: pd.DataFrame, title: str) -> Figure:
    """Net benefit against the threshold probability: the model, treat all, treat none."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(100 * curve["threshold"], curve["model"], label="model")
    ax.plot(100 * curve["threshold"], curve["treat_all"], color="grey", ls="--",
            label="treat all")
    ax.plot(100 * curve["threshold"], curve["treat_none"], color="black", lw=0.8,
            label="treat none")
    low = min(0.0, float(curve["model"].min()))
    high = max(float(curve[["model", "treat_all"]].max().max()), 0.05)
    ax.set_ylim(low - 0.05, high + 0.05)
    ax.set_xlabel("threshold probability of distant metastasis (%)")
    ax.set_ylabel("net benefit")
    ax.set_title(title)
    ax.legend(loc="upper right")
    return fig
