"""Registration QA figures: distributions, overlays before/after, contours, Jacobian, metric.

Every figure is titled and its axes carry units (mm, nats, unitless determinants).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stsnb.core.modalities import DISPLAY_NAMES
from stsnb.plots.images import CT_WINDOW_HU
from stsnb.registration.views import PatientViews

#: Side of a checkerboard square (mm).
CHECKER_MM = 20.0
STEP_COLOURS = {"rigid": "tab:blue", "deformable": "tab:orange", "before": "tab:gray"}


def normalise(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map `window` (low, high) to [0, 1], clipped."""
    low, high = window
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)


def mr_window(*slices: np.ndarray) -> tuple[float, float]:
    """Display window of MR slices: 0 to the 99.5th percentile of their positive voxels."""
    values = np.concatenate([s[s > 0].ravel() for s in slices if s is not None])
    return (0.0, float(np.percentile(values, 99.5))) if values.size else (0.0, 1.0)


def checkerboard(a: np.ndarray, b: np.ndarray, spacing_xy_mm: tuple[float, float],
                 square_mm: float = CHECKER_MM) -> np.ndarray:
    """`a` on the dark squares, `b` on the light ones (squares of `square_mm`)."""
    ny, nx = a.shape
    yy = (np.arange(ny) * spacing_xy_mm[1] // square_mm).astype(int)
    xx = (np.arange(nx) * spacing_xy_mm[0] // square_mm).astype(int)
    light = (yy[:, None] + xx[None, :]) % 2 == 1
    return np.where(light, b, a)


def magenta_green(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """RGB composite: fixed in magenta, moving in green (aligned structures look grey)."""
    return np.stack([fixed, moving, fixed], axis=-1)


def _extent(views: PatientViews, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    ny, nx = shape
    return (0.0, nx * views.spacing_xy_mm[0], ny * views.spacing_xy_mm[1], 0.0)


def axes_in_mm(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")


def qa_distributions(qa: pd.DataFrame) -> Figure:
    """Dice, mean landmark TRE (mm) and MI (nats) before / after each step, a dot per patient."""
    panels = [
        ("Dice of the propagated GTV", "Dice (unitless)",
         {"rigid": "dice_rigid", "deformable": "dice_deformable"}),
        ("Target registration error", "mean TRE over landmarks (mm)",
         {"rigid": "tre_rigid_mm", "deformable": "tre_deformable_mm"}),
        ("Mutual information (tumour region)", "Mattes MI (nats)",
         {"before": "mi_before", "rigid": "mi_rigid", "deformable": "mi_deformable"}),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
    for ax, (title, ylabel, columns) in zip(axes, panels, strict=True):
        long = pd.concat([pd.DataFrame({"step": step, "value": pd.to_numeric(qa[c],
                                                                             errors="coerce"),
                                        "flagged": qa["flagged"]})
                          for step, c in columns.items()], ignore_index=True).dropna()
        if long.empty:
            ax.text(0.5, 0.5, "not measured\n(no reference)", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            order = [s for s in columns if s in set(long["step"])]
            sns.boxplot(data=long, x="step", y="value", order=order, ax=ax, color="white",
                        showfliers=False, width=0.5)
            sns.stripplot(data=long, x="step", y="value", order=order, ax=ax, hue="flagged",
                          palette={False: "tab:blue", True: "tab:red"}, size=4, alpha=0.7,
                          jitter=0.15, legend=ax is axes[0])
        ax.set_title(title)
        ax.set_xlabel("registration step")
        ax.set_ylabel(ylabel)
    fig.suptitle(f"Registration QA over {len(qa)} patients (red: flagged)")
    return fig


def overlays(views: PatientViews, square_mm: float = CHECKER_MM) -> Figure:
    """Checkerboard, alpha blend and magenta-green composite, before (scanner positions) and
    after registration, on the CT slice through the tumour."""
    ct = normalise(views.ct, CT_WINDOW_HU)
    window = mr_window(views.mr_before, views.mr_after)
    rows = [("before", normalise(views.mr_before, window)),
            ("after", normalise(views.mr_after, window))]
    if not views.registered:  # nothing registered: one row, the image at scanner positions
        rows = [("as placed", normalise(views.mr_after, window))]
    extent = _extent(views, views.ct.shape)
    fig, axes = plt.subplots(len(rows), 3, figsize=(13, 4.3 * len(rows)), layout="constrained",
                             squeeze=False)
    name = DISPLAY_NAMES.get(views.reference, views.reference)
    for (label, mr), row in zip(rows, axes, strict=True):
        panels = [
            (checkerboard(ct, mr, views.spacing_xy_mm, square_mm), "gray",
             f"checkerboard ({square_mm:g} mm squares)"),
            (0.5 * ct + 0.5 * mr, "gray", "alpha blend (50% CT, 50% MR)"),
            (magenta_green(ct, mr), None, "CT magenta, MR green"),
        ]
        for ax, (image, cmap, title) in zip(row, panels, strict=True):
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1, extent=extent, interpolation="nearest")
            axes_in_mm(ax, f"{label}: {title}")
    placed = "" if views.registered else " (not registered: in the CT's frame)"
    fig.suptitle(f"{views.patient_id}: CT vs {name}{placed}, axial slice z = {views.z_mm:.0f} mm")
    return fig


def outline_mask(ax: Axes, mask: np.ndarray | None, extent, colour: str, style: str) -> None:
    if mask is None or not np.any(mask):
        return
    ny, nx = mask.shape
    ax.contour(np.linspace(extent[0], extent[1], nx), np.linspace(extent[3], extent[2], ny),
               mask, levels=[0.5], colors=colour, linewidths=1.4, linestyles=style)


def contours(views: PatientViews) -> Figure:
    """The CT GTV and the MR-frame contour mapped onto the CT grid (rigid, final), on CT and MR."""
    extent = _extent(views, views.ct.shape)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), layout="constrained")
    name = DISPLAY_NAMES.get(views.reference, views.reference)
    backgrounds = [(normalise(views.ct, CT_WINDOW_HU), "CT"),
                   (normalise(views.mr_after, mr_window(views.mr_after)),
                    f"{name} registered" if views.registered else f"{name} (CT frame)")]
    handles = [Line2D([], [], color="yellow", label="GTV drawn on CT")]
    if views.gtv_from_mr_rigid is not None:
        handles.append(Line2D([], [], color="cyan", ls="--", label=(
            "MR contour, rigid" if views.registered else
            f"{name} contour, placed by geometry")))
    if views.gtv_from_mr is not None and views.qa.get("deformable"):
        handles.append(Line2D([], [], color="magenta", label="MR contour, deformable"))
    for ax, (image, name) in zip(axes, backgrounds, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
        outline_mask(ax, views.gtv, extent, "yellow", "solid")
        outline_mask(ax, views.gtv_from_mr_rigid, extent, "cyan", "dashed")
        if views.qa.get("deformable"):
            outline_mask(ax, views.gtv_from_mr, extent, "magenta", "solid")
        axes_in_mm(ax, f"{name} with the tumour contours")
    axes[1].legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.8)
    if views.gtv_from_mr_rigid is None:
        fig.text(0.5, 0.01, "no MR-frame reference contour for this patient", ha="center")
    dice = views.qa.get("dice_deformable") if views.qa.get("deformable") else views.qa.get(
        "dice_rigid" if views.registered else "dice_shown")
    dice_text = f", Dice {dice:.3f}" if dice is not None and np.isfinite(dice) else ""
    fig.suptitle(f"{views.patient_id}: GTV from both frames, z = {views.z_mm:.0f} mm{dice_text}")
    return fig


def jacobian_map(views: PatientViews) -> Figure:
    """Jacobian determinant of the deformation on the slice (1 = volume kept, <= 0 = folding)."""
    fig, ax = plt.subplots(figsize=(6.4, 5.4), layout="constrained")
    extent = _extent(views, views.ct.shape)
    ax.imshow(normalise(views.ct, CT_WINDOW_HU), cmap="gray", extent=extent, vmin=0, vmax=1)
    if views.jacobian is None:
        ax.text(0.5, 0.5, "rigid only: no deformation", ha="center", va="center",
                transform=ax.transAxes, color="white")
    else:
        spread = max(0.1, float(np.nanmax(np.abs(views.jacobian - 1.0))))
        handle = ax.imshow(np.ma.masked_invalid(views.jacobian), cmap="coolwarm",
                           vmin=1 - spread, vmax=1 + spread, alpha=0.75, extent=extent,
                           interpolation="bilinear")
        bar = fig.colorbar(handle, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label("Jacobian determinant (unitless)")
    outline_mask(ax, views.gtv, extent, "yellow", "solid")
    axes_in_mm(ax, f"{views.patient_id}: Jacobian determinant, z = {views.z_mm:.0f} mm "
             f"(min over region {views.qa.get('min_jacobian', float('nan')):.2f})")
    return fig


def metric_history(views: PatientViews) -> Figure:
    """Mattes MI metric per optimizer iteration (lower = better), one curve per step and level."""
    history = views.history
    steps = list(dict.fromkeys(history["step"]))
    fig, axes = plt.subplots(1, max(1, len(steps)), figsize=(5.2 * max(1, len(steps)), 3.8),
                             layout="constrained", squeeze=False)
    for ax, step in zip(axes[0], steps, strict=False):
        part = history[history["step"] == step].reset_index(drop=True)
        for level, rows in part.groupby("level"):
            ax.plot(rows.index, rows["metric"], marker=".", ms=3, lw=1,
                    label=f"level {level + 1}")
        ax.set_title(f"{step}")
        ax.set_xlabel("optimizer iteration (all levels in order)")
        ax.set_ylabel("Mattes MI metric (nats, lower = better)")
        ax.legend(fontsize=8, title="resolution", title_fontsize=8)
    if not steps:
        axes[0][0].text(0.5, 0.5, "no iterations recorded", ha="center", va="center")
    fig.suptitle(f"{views.patient_id}: metric per iteration")
    return fig
