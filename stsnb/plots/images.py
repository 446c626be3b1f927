"""Axial views of images on the CT grid, with the tumour contour."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from matplotlib.axes import Axes

from stsnb.core.modalities import DISPLAY_NAMES, UNITS

#: Display windows: CT soft-tissue window in HU; dose 0 to 110% of 50 Gy.
CT_WINDOW_HU = (-160.0, 240.0)
DOSE_WINDOW_GY = (0.0, 55.0)
#: Images shown in colour (dose in Gy, PET in SUV); anatomical images are grey.
FUNCTIONAL = ("dose", "pet")
#: Lowest upper limit of the PET window (SUV): a scan without avid uptake is not stretched.
PET_WINDOW_MIN_SUV = 2.5


def on_ct_grid(image: sitk.Image, ct: sitk.Image, transform: sitk.Transform | None = None,
               label: bool = False) -> np.ndarray:
    """Resample `image` onto the CT grid (z, y, x array); no transform = scanner coordinates."""
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    resampled = sitk.Resample(
        image, ct, transform or sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32
    )
    return sitk.GetArrayFromImage(resampled)


def window_for(modality: str, values: np.ndarray) -> tuple[float, float]:
    """Display window for a modality: fixed for CT (HU) and dose (Gy), 0 to the 99.5th
    percentile (at least 2.5 SUV) for PET, 0 to the 99.5th percentile of the positive values for
    MR (a.u.)."""
    if modality == "ct":
        return CT_WINDOW_HU
    if modality == "dose":
        return DOSE_WINDOW_GY
    if modality == "pet":
        top = float(np.percentile(values, 99.5)) if values.size else 0.0
        return (0.0, max(top, PET_WINDOW_MIN_SUV))
    positive = values[values > 0]
    if positive.size == 0:
        return (0.0, 1.0)
    return (0.0, float(np.percentile(positive, 99.5)))


def show_axial(ax: Axes, slice_yx: np.ndarray, spacing_xy_mm: tuple[float, float], modality: str,
               gtv_yx: np.ndarray | None = None, title: str | None = None) -> None:
    """Draw one axial slice in physical proportions (mm axes) with the GTV contour in yellow."""
    ny, nx = slice_yx.shape
    extent = (0.0, nx * spacing_xy_mm[0], ny * spacing_xy_mm[1], 0.0)
    vmin, vmax = window_for(modality, slice_yx)
    cmap = "inferno" if modality in FUNCTIONAL else "gray"
    handle = ax.imshow(slice_yx, cmap=cmap, vmin=vmin, vmax=vmax, extent=extent,
                       interpolation="nearest")
    if gtv_yx is not None and gtv_yx.any():
        ax.contour(np.linspace(0, extent[1], nx), np.linspace(0, extent[2], ny), gtv_yx,
                   levels=[0.5], colors="yellow", linewidths=1.0)
    ax.set_title(title or DISPLAY_NAMES.get(modality, modality))
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    bar = ax.figure.colorbar(handle, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(UNITS.get(modality, "a.u."))
