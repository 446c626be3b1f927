"""Figures of chapter 03: slices per patient, tumour slabs, intensities, the ten composites."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from stsnb.core.combinations import Combination
from stsnb.core.modalities import DISPLAY_NAMES, UNITS
from stsnb.slices import SliceStore

#: The study's number of 2D slices (image-processing slide: "2395 images in total").
STUDY_SLICES = 2395
LABEL_COLOURS = {0: "#4c72b0", 1: "#dd8452"}


def _label_legend(ax) -> None:
    ax.legend(handles=[Patch(color=LABEL_COLOURS[0], label="DM-"),
                       Patch(color=LABEL_COLOURS[1], label="DM+")], title="outcome")


def slices_per_patient_figure(patients: pd.DataFrame) -> Figure:
    """Bars per patient: slices in the tumour slab (what `paper` stores) and slices stored."""
    table = patients.sort_values("slab_slices", ascending=False).reset_index(drop=True)
    colours = table["label"].map(LABEL_COLOURS)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.14 * len(table) + 2), 3.8))
    x = np.arange(len(table))
    ax.bar(x, table["slab_slices"], color=colours, alpha=0.35, label="tumour slab")
    ax.bar(x, table["stored_slices"], color=colours, label="stored")
    ax.axhline(table["slab_slices"].mean(), color="black", lw=0.8, ls="--")
    ax.set_xticks(x, table["patient_id"], rotation=90, fontsize=6)
    ax.set_xlabel("patient")
    ax.set_ylabel("axial slices")
    ax.set_title(f"Slices per patient: {int(table['slab_slices'].sum())} in the tumour slabs, "
                 f"{int(table['stored_slices'].sum())} stored (study: {STUDY_SLICES})")
    _label_legend(ax)
    fig.tight_layout()
    return fig


def tumour_slab_figure(patients: pd.DataFrame, margin_mm: float) -> Figure:
    """Per patient, the GTV z-extent and the kept slab, relative to the tumour's centre (mm)."""
    table = patients.assign(
        centre=(patients["gtv_z_min_mm"] + patients["gtv_z_max_mm"]) / 2,
        extent=patients["gtv_z_max_mm"] - patients["gtv_z_min_mm"],
    ).sort_values("extent")
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.11 * len(table) + 1.2)))
    y = np.arange(len(table))
    slab = (table["slab_z_min_mm"] - table["centre"], table["slab_z_max_mm"] - table["centre"])
    gtv = (table["gtv_z_min_mm"] - table["centre"], table["gtv_z_max_mm"] - table["centre"])
    clipped = table["margin_clipped"].astype(str) != ""
    ax.hlines(y, *slab, color=np.where(clipped, "#c0392b", "#9db4d6"), lw=4,
              label="kept slab (slice centres)")
    ax.hlines(y, *gtv, color="#1a4480", lw=2, label="GTV z-extent")
    ax.set_yticks(y, table["patient_id"], fontsize=6)
    ax.set_xlabel("z relative to the tumour's centre (mm, superior > 0)")
    ax.set_ylabel("patient")
    n_clipped = int(clipped.sum())
    ax.set_title(f"Tumour slabs: GTV +- {margin_mm:g} mm "
                 f"({n_clipped} patient{'s' if n_clipped != 1 else ''} clipped by the volume's "
                 "end, red)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _gtv_stats(row: pd.Series) -> dict:
    return {"whislo": row["gtv_p05"], "q1": row["gtv_p25"], "med": row["gtv_p50"],
            "q3": row["gtv_p75"], "whishi": row["gtv_p95"], "fliers": [],
            "label": row["patient_id"]}


def _normalized_values(store: SliceStore, rows: np.ndarray,
                       modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Stored values inside each slice's placed region (padding left out), and inside the GTV."""
    values = store.modality(rows, modality)
    masks = store.gtv_masks(rows)
    region, tumour = [], []
    for value, mask, pid in zip(values, masks, store.index["patient_id"].to_numpy()[rows],
                                strict=True):
        r0, r1, c0, c1 = store.content_box(pid)
        region.append(value[r0:r1, c0:c1].ravel())
        tumour.append(value[mask])
    return np.concatenate(region), np.concatenate(tumour)


def intensity_figure(store: SliceStore, max_rows: int = 300, seed: int = 0) -> Figure:
    """Top: raw values per patient in the image's unit: the slab's min-max (the normalization
    range, grey) and the GTV's 5-25-50-75-95th percentiles (box). Bottom: the stored values after
    normalization on a sample of slices, padding left out, and those inside the GTV.
    """
    modalities = store.modalities
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(store), size=min(max_rows, len(store)), replace=False))
    fig, axes = plt.subplots(2, len(modalities), figsize=(3.4 * len(modalities), 6.6),
                             squeeze=False)
    for k, modality in enumerate(modalities):
        name = DISPLAY_NAMES.get(modality, modality)
        raw = store.intensities[store.intensities["modality"] == modality]
        raw = raw.sort_values("gtv_p50").reset_index(drop=True)
        ax = axes[0, k]
        positions = np.arange(1, len(raw) + 1)
        ax.vlines(positions, raw["min"], raw["max"], color="#bbbbbb", lw=1.0)
        ax.bxp([_gtv_stats(r) for _, r in raw.iterrows()], positions=positions,
               showfliers=False, widths=0.7, patch_artist=True,
               boxprops={"facecolor": "#dd8452", "linewidth": 0.5},
               medianprops={"color": "black"}, whiskerprops={"linewidth": 0.5},
               capprops={"linewidth": 0.5})
        ax.set_xticks([])
        ax.set_xlabel(f"patients (n = {len(raw)}), by GTV median")
        ax.set_ylabel(f"{name} ({UNITS.get(modality, 'a.u.')})")
        ax.set_title(f"{name}: before")
        region, tumour = _normalized_values(store, rows, modality)
        ax = axes[1, k]
        ax.hist(region, bins=50, range=(0.0, 1.0), color="#9db4d6", density=True,
                label="slice")
        ax.hist(tumour, bins=50, range=(0.0, 1.0), color="#dd8452", density=True,
                histtype="step", lw=1.5, label="GTV")
        ax.set_yscale("log")
        ax.set_xlabel(f"{name}, normalized (0-1)")
        ax.set_ylabel("density (log)")
        ax.set_title(f"{name}: after ({len(rows)} slices)")
        ax.legend(fontsize=7)
    fig.suptitle("Intensities before (grey: the slab's min-max, box: GTV) and after min-max "
                 f"normalization ({store.normalization})")
    fig.tight_layout()
    return fig


def _title(combo: Combination) -> str:
    names = [DISPLAY_NAMES.get(c, c) for c in combo.channels]
    label = names[0] if combo.is_single else "-".join(names)
    return f"{combo.number}. {label}"


def combinations_figure(store: SliceStore, row: int, combinations: Sequence[Combination],
                        columns: int = 5) -> Figure:
    """One stored slice as every combination's RGB input (R, G, B as listed), GTV in white."""
    combos = list(combinations)
    n_rows = int(np.ceil(len(combos) / columns))
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.0 * columns, 3.15 * n_rows),
                             squeeze=False)
    size_mm = store.input_px * float(store.pixel_mm([row])[0])
    mask = store.gtv_masks([row])[0]
    grid = (np.arange(store.input_px) + 0.5) * size_mm / store.input_px  # pixel centres
    for ax, combo in zip(axes.flat, combos, strict=False):
        rgb = store.images([row], combo.channels)[0].transpose(1, 2, 0)
        ax.imshow(rgb, extent=(0.0, size_mm, size_mm, 0.0), interpolation="nearest")
        if mask.any():
            ax.contour(grid, grid, mask, levels=[0.5], colors="white", linewidths=0.6)
        ax.set_title(_title(combo), fontsize=9)
        ax.set_xlabel("x (mm)", fontsize=8)
        ax.set_ylabel("y (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(combos):]:
        ax.set_axis_off()
    entry = store.index.iloc[row]
    fig.suptitle(f"Patient {entry['patient_id']}, CT slice {entry['slice_index']} "
                 f"(z = {entry['z_mm']:.1f} mm): the network inputs (R, G, B), GTV in white")
    fig.tight_layout()
    return fig
