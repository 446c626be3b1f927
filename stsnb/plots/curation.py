"""Figures of chapter 01: inclusion flow, availability, geometry, labels, example patients."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import SimpleITK as sitk
from matplotlib.figure import Figure

from stsnb.core.imageio import read_image
from stsnb.core.modalities import DISPLAY_NAMES
from stsnb.plots.images import on_ct_grid, show_axial


def inclusion_flow_diagram(flow: pd.DataFrame, cohort: pd.DataFrame | None = None) -> Figure:
    """Boxes and arrows: screened -> excluded (count per reason) -> included.

    `flow` is `stsnb.curation.cohort.inclusion_flow`'s table; with `cohort`, the excluded total
    counts patients (one patient may have several reasons).
    """
    screened = int(flow.loc[flow["step"] == "screened", "n_patients"].sum())
    included = int(flow.loc[flow["step"] == "included", "n_patients"].sum())
    reasons = flow[flow["step"] == "excluded"]
    excluded = (
        int((~cohort["included"].astype(bool)).sum()) if cohort is not None
        else screened - included
    )
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.set_axis_off()
    box = {"boxstyle": "round,pad=0.5", "fc": "#e8f0fe", "ec": "#1a4480"}
    ax.text(0.25, 0.85, f"Screened\nn = {screened}", ha="center", va="center", bbox=box,
            fontsize=11)
    ax.text(0.25, 0.15, f"Included\nn = {included}", ha="center", va="center", bbox=box,
            fontsize=11)
    ax.annotate("", xy=(0.25, 0.25), xytext=(0.25, 0.75),
                arrowprops={"arrowstyle": "->", "lw": 1.5})
    lines = [f"{row.reason}: {int(row.n_patients)}" for row in reasons.itertuples()] or ["none"]
    ax.text(0.72, 0.5, f"Excluded n = {excluded}\n" + "\n".join(lines), ha="center",
            va="center", bbox={**box, "fc": "#fdecea", "ec": "#8b1a1a"}, fontsize=10)
    ax.annotate("", xy=(0.56, 0.5), xytext=(0.25, 0.5),
                arrowprops={"arrowstyle": "->", "lw": 1.5})
    ax.set_title("Inclusion flow (the study's criteria)")
    return fig


def availability_matrix(cohort: pd.DataFrame, modalities: tuple[str, ...]) -> Figure:
    """Heat map: one row per screened patient, one column per image (present / absent)."""
    columns = [f"has_{m}" for m in modalities] + ["has_gtv"]
    labels = [DISPLAY_NAMES.get(m, m) for m in modalities] + ["GTV"]
    present = cohort.set_index("patient_id")[columns].astype(float)
    present.columns = labels
    height = max(3.0, 0.12 * len(present) + 1.5)
    fig, ax = plt.subplots(figsize=(6, height))
    sns.heatmap(present, cmap=["#d9534f", "#5cb85c"], vmin=0, vmax=1, cbar=False,
                linewidths=0.3, linecolor="white", ax=ax)
    ax.set_title("Image availability per screened patient (green = present)")
    ax.set_xlabel("image")
    ax.set_ylabel("patient")
    ax.tick_params(axis="y", labelsize=6)
    return fig


def geometry_figure(geometry: pd.DataFrame) -> Figure:
    """Voxel sizes (mm) and fields of view (mm) per modality, one dot per patient."""
    long = geometry.melt(
        id_vars=["patient_id", "modality"],
        value_vars=["spacing_x_mm", "spacing_y_mm", "spacing_z_mm"],
        var_name="axis", value_name="mm",
    )
    long["axis"] = long["axis"].str.extract(r"spacing_(\w)_mm", expand=False)
    fov = geometry.melt(
        id_vars=["patient_id", "modality"],
        value_vars=["fov_x_mm", "fov_y_mm", "fov_z_mm"],
        var_name="axis", value_name="mm",
    )
    fov["axis"] = fov["axis"].str.extract(r"fov_(\w)_mm", expand=False)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    sns.stripplot(data=long, x="modality", y="mm", hue="axis", dodge=True, size=3, ax=axes[0])
    axes[0].set_title("Voxel size per image")
    axes[0].set_ylabel("voxel size (mm)")
    sns.boxplot(data=fov, x="modality", y="mm", hue="axis", ax=axes[1], fliersize=2)
    axes[1].set_title("Field of view per image")
    axes[1].set_ylabel("field of view (mm)")
    for ax in axes:
        ax.set_xlabel("image")
    fig.tight_layout()
    return fig


def label_balance_figure(cohort: pd.DataFrame) -> Figure:
    """Counts of included patients by outcome (distant metastasis yes / no)."""
    included = cohort[cohort["included"]]
    counts = (
        included["label"].map({1: "DM+", 0: "DM-"}).value_counts().reindex(["DM-", "DM+"])
        .fillna(0)
    )
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    bars = ax.bar(counts.index, counts.values, color=["#4c72b0", "#dd8452"])
    ax.bar_label(bars, labels=[f"{int(v)} ({v / max(counts.sum(), 1):.0%})" for v in counts])
    ax.set_title("Outcome of the included patients")
    ax.set_xlabel("distant metastasis")
    ax.set_ylabel("patients")
    return fig


def patient_images_figure(cohort_dir: str | Path, patient_id: str,
                          modalities: tuple[str, ...]) -> Figure:
    """Every image of one patient on the CT grid at the tumour's central slice, GTV in yellow.

    Images are placed where their scanner coordinates put them (no registration yet): the MR
    visibly misses the CT contour, which is what chapter 02 corrects.
    """
    folder = Path(cohort_dir) / patient_id
    ct = read_image(folder / "ct.nii.gz", patient_id, "ct")
    gtv = sitk.GetArrayFromImage(read_image(folder / "gtv.nii.gz", patient_id, "gtv")) > 0
    z_index = int(np.round(np.argwhere(gtv)[:, 0].mean())) if gtv.any() else gtv.shape[0] // 2
    spacing = ct.GetSpacing()[:2]
    fig, axes = plt.subplots(1, len(modalities), figsize=(3.6 * len(modalities), 3.6))
    for ax, modality in zip(np.atleast_1d(axes), modalities, strict=True):
        path = folder / f"{modality}.nii.gz"
        image = ct if modality == "ct" else read_image(path, patient_id, modality)
        values = on_ct_grid(image, ct)[z_index]
        show_axial(ax, values, spacing, modality, gtv[z_index])
    fig.suptitle(f"Patient {patient_id}: axial slice {z_index} of the CT, before registration")
    fig.tight_layout()
    return fig
