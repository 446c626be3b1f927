"""Figures of chapter 06: Grad-CAM overlays with the GTV contour, shares against chance."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from stsnb.core.modalities import DISPLAY_NAMES
from stsnb.gradcam.maps import GradCamResult, overlay

OUTCOMES = ("TP", "FN", "FP", "TN")


def overlays_figure(result: GradCamResult, channels: tuple[str, str, str],
                    per_outcome: int = 2) -> Figure:
    """True/false positives/negatives side by side: input RGB, then map over it, GTV in white."""
    table = result.table
    picks = [(o, i) for o in OUTCOMES for i in table.index[table["outcome"] == o][:per_outcome]]
    if not picks:
        fig, ax = plt.subplots()
        ax.set_axis_off()
        ax.set_title("No test slices to show")
        return fig
    fig, axes = plt.subplots(2, len(picks), figsize=(2.6 * len(picks), 5.6), squeeze=False)
    rgb_name = " / ".join(DISPLAY_NAMES.get(c, c) for c in channels)
    for col, (outcome, i) in enumerate(picks):
        row = table.loc[i]
        rgb = np.clip(np.moveaxis(result.images[i], 0, -1), 0, 1)
        axes[0, col].imshow(rgb)
        axes[1, col].imshow(overlay(result.images[i], result.maps[i]))
        for ax in axes[:, col]:
            ax.contour(result.gtv[i], levels=[0.5], colors="white", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(f"{outcome}: {row['patient_id']} z{int(row['slice_index'])}\n"
                               f"p = {row['prob']:.2f}", fontsize=8)
        axes[1, col].set_xlabel(f"GTV share {row['share_gtv']:.2f}\n"
                                f"(chance {row['chance_gtv']:.2f})", fontsize=8)
    axes[0, 0].set_ylabel(f"input (R/G/B = {rgb_name})", fontsize=8)
    axes[1, 0].set_ylabel("Grad-CAM (jet) over input", fontsize=8)
    fig.suptitle("Grad-CAM for 'distant metastasis' by outcome class (GTV contour in white)")
    fig.tight_layout()
    return fig


def shares_figure(table: pd.DataFrame) -> Figure:
    """Share of map mass inside the GTV and in the 10 mm ring, against chance, per class."""
    long = pd.concat([
        table.assign(region="GTV", share=table["share_gtv"], chance=table["chance_gtv"]),
        table.assign(region="ring (10 mm)", share=table["share_ring"],
                     chance=table["chance_ring"]),
    ], ignore_index=True)
    long["outcome (label)"] = long["label"].map({1: "DM+", 0: "DM-"})
    long = long[np.isfinite(long["share"])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if long.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "every Grad-CAM map was empty:\nno share to show", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_axis_off()
        fig.suptitle("Share of Grad-CAM mass per region")
        return fig
    sns.boxplot(data=long, x="region", y="share", hue="outcome (label)", ax=axes[0])
    axes[0].set_title("Share of Grad-CAM mass per region")
    axes[0].set_ylabel("share of map mass")
    sns.scatterplot(data=long, x="chance", y="share", hue="region", style="outcome (label)",
                    ax=axes[1])
    limit = float(max(long["share"].max(), long["chance"].max(), 0.05))
    axes[1].plot([0, limit], [0, limit], color="grey", ls="--", lw=0.8, label="chance")
    axes[1].set_title("Share against chance (area / body area)")
    axes[1].set_xlabel("chance share (region area / body area)")
    axes[1].set_ylabel("share of map mass")
    fig.tight_layout()
    return fig


def failures_figure(store, worst: pd.DataFrame, rows: list[int]) -> Figure:
    """The patients the model gets most wrong (one row each): every stored image of the slice
    with the largest GTV area, normalized as the network saw it, GTV contour in white."""
    modalities = store.modalities
    if worst.empty:
        fig, ax = plt.subplots()
        ax.set_axis_off()
        ax.set_title("No misclassified patient to show")
        return fig
    fig, axes = plt.subplots(len(worst), len(modalities), squeeze=False,
                             figsize=(2.1 * len(modalities), 2.3 * len(worst)))
    for i, (patient, row) in enumerate(zip(worst.itertuples(), rows, strict=True)):
        gtv = store.gtv_masks([row])[0]
        for j, name in enumerate(modalities):
            ax = axes[i, j]
            ax.imshow(store.modality([row], name)[0], cmap="gray", vmin=0, vmax=1)
            ax.contour(gtv, levels=[0.5], colors="white", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(DISPLAY_NAMES.get(name, name), fontsize=9)
        axes[i, 0].set_ylabel(f"{patient.patient_id} ({patient.outcome})\nlabel {patient.label}, "
                              f"p = {patient.prob:.2f}\nfold {patient.fold}", fontsize=8)
    fig.suptitle("Failure analysis: the misclassified patients with the largest error, at "
                 "their largest GTV slice (GTV in white; intensities in [0, 1] as stored)")
    fig.tight_layout()
    return fig
