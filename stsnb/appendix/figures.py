"""The appendix's figures: the CT's bone on the MR, and how the forced rigid registration moves
with its metric region (mm)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stsnb.appendix.real_cohort import CORTEX_MIN_HU, Placements
from stsnb.plots.registration import axes_in_mm, mr_window, normalise, outline_mask


def cortex_figure(placed: Placements) -> Figure:
    """The MR at scanner positions and as registered, with the CT's cortical bone outlined, on
    the axial slice with the most cortex (cortex is dark on T1w/T2w: aligned bone = a dark
    ring inside the outline)."""
    counts = placed.cortex.sum(axis=(1, 2))
    z = int(np.argmax(counts))
    spacing = placed.spacing_mm
    shape = placed.hu.shape[1:]
    extent = (0.0, shape[1] * spacing[0], shape[0] * spacing[1], 0.0)
    window = mr_window(*(values[z] for values in placed.mr.values()))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), layout="constrained")
    titles = {"identity": "scanner positions (identity)", "final": "registered"}
    for ax, (label, values) in zip(axes, placed.mr.items(), strict=True):
        ax.imshow(normalise(values[z], window), cmap="gray", vmin=0, vmax=1, extent=extent,
                  interpolation="nearest")
        outline_mask(ax, placed.hu[z] >= CORTEX_MIN_HU, extent, "red", "solid")
        axes_in_mm(ax, f"MR, {titles[label]}")
    axes[1].legend(handles=[Line2D([], [], color="red", label=f"CT >= {CORTEX_MIN_HU:g} HU")],
                   loc="lower right", fontsize=8, framealpha=0.8)
    fig.suptitle(f"{placed.patient_id}: the CT's bone on the MR, axial slice {z} "
                 f"({int(counts[z])} cortex voxels)")
    return fig


def focus_sensitivity_figure(table: pd.DataFrame, limit_mm: float = 2.0) -> Figure:
    """Mean GTV displacement (mm) of the forced rigid registration per patient and metric
    region (rigid_focus_mm; 0 = the whole overlap), with the near-identity limit."""
    shown = table.assign(region=[f"{f:g} mm" if f > 0 else "whole overlap"
                                 for f in table["rigid_focus_mm"]])
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    sns.barplot(data=shown, x="patient_id", y="mean_displacement_mm", hue="region", ax=ax)
    ax.axhline(limit_mm, color="black", ls="--", lw=1, label=f"{limit_mm:g} mm limit")
    ax.set_xlabel("patient")
    ax.set_ylabel("mean displacement of the GTV voxels (mm)")
    ax.legend(title="metric region (distance to the GTV)", fontsize=8, title_fontsize=8)
    ax.set_title("Forced rigid registration of an MR already in the CT's frame")
    return fig
