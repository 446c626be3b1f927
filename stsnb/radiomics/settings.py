"""The radiomics settings: one row per image type (discretisation and why), and the common ones.

Every feature is computed by MIRP (the IBSI reference implementation) in 3D (``by_slice=False``)
after resampling to isotropic 2 mm voxels, as in IBSI configuration C. Calibrated intensities
(CT in HU, dose in Gy, PET in SUV) are discretised with a fixed bin width from a stated lower
bound, so that a grey level means the same intensity for every patient; MR intensities
(arbitrary units, differing between scans) with a fixed number of bins over each GTV's range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from stsnb.core.config import RadiomicsConfig
from stsnb.core.modalities import DISPLAY_NAMES

#: MIRP's feature families (its tags): shape, first-order statistics, GLCM, GLRLM, GLSZM.
SHAPE = "morphology"
INTENSITY_AND_TEXTURE = ("statistics", "glcm", "glrlm", "glszm")
#: Moran's I and Geary's C (MIRP's names): the shape family's two spatial-autocorrelation
#: features, left out where the profile's ``radiomics.spatial_autocorrelation`` is False.
SPATIAL_AUTOCORRELATION = ("morph_moran_i", "morph_geary_c")


@dataclass(frozen=True)
class ImageSettings:
    """How one image type is discretised (units of the image) and which families it gives."""

    mirp_modality: str  # MIRP's image_modality
    unit: str
    method: str  # "fixed_bin_size" or "fixed_bin_number"
    bin_width: float | None = None  # fixed_bin_size: bin width (unit)
    n_bins: int | None = None  # fixed_bin_number: number of bins
    lower_bound: float | None = None  # fixed_bin_size: lower edge of the first bin (unit)
    shape: bool = False  # compute the shape (morphological) features with this image
    reason: str = ""


_MR = ImageSettings(
    mirp_modality="mr", unit="a.u.", method="fixed_bin_number", n_bins=32,
    reason="arbitrary units that differ between scanners and sessions: 32 bins over each GTV's "
    "own intensity range (IBSI: fixed bin number for uncalibrated intensities)")

#: The settings table, by image (file stem). An image declared in cohort.toml without a row here
#: stops the stage with an error that names it.
RADIOMICS_SETTINGS: dict[str, ImageSettings] = {
    "ct": ImageSettings(
        mirp_modality="ct", unit="HU", method="fixed_bin_size", bin_width=25.0,
        lower_bound=-1000.0, shape=True,
        reason="calibrated (HU): 25 HU bins from -1000 HU, as IBSI configuration C; the "
        "synthetic GTVs span about -65 to 255 HU (6-13 levels). The shape features (from the "
        "mask) come with the CT"),
    "dose": ImageSettings(
        mirp_modality="rtdose", unit="Gy", method="fixed_bin_size", bin_width=0.25,
        lower_bound=0.0,
        reason="calibrated (Gy): the GTV receives 100-107 % of the prescription (50.0-53.0 "
        "Gy in the synthetic cohort), so 0.25 Gy bins give up to 12 levels where 1 Gy bins "
        "would give 3"),
    "pet": ImageSettings(
        mirp_modality="pet", unit="SUV", method="fixed_bin_size", bin_width=0.5,
        lower_bound=0.0,
        reason="calibrated (SUV): 0.5 SUV bins from 0 SUV, the usual PET choice; 10-30 levels "
        "for an SUVmax of 5-15"),
    "t1w": _MR,
    "t2w": _MR,
    "ce_t1w": _MR,
}

#: Settings common to every image (MIRP keyword arguments), IBSI-compliant options only.
COMMON_SETTINGS: dict[str, Any] = {
    "by_slice": False,  # 3D features
    "ibsi_compliant": True,  # only features with an IBSI reference value
    "new_spacing": 2.0,  # mm, isotropic (IBSI configuration C)
    "spline_order": 1,  # image interpolation: trilinear
    "anti_aliasing": True,  # Gaussian anti-aliasing before down-sampling (MIRP's default beta)
    "smoothing_beta": 0.98,
    "roi_spline_order": 1,  # mask interpolation: trilinear, then partial-volume threshold
    "roi_interpolation_mask_inclusion_threshold": 0.5,
    "glcm_distance": 1.0,  # voxels (Chebyshev)
    "glcm_spatial_method": "3d_volume_merge",  # one matrix merged over the 13 directions
    "glrlm_spatial_method": "3d_volume_merge",
    "glszm_spatial_method": "3d",
    "texture_feature_pooling_method": "average",
}


def image_settings(image: str) -> ImageSettings | None:
    """The settings row of `image` (a file stem), or None when the table has none."""
    return RADIOMICS_SETTINGS.get(image)


def mirp_arguments(image: str) -> dict[str, Any]:
    """MIRP ``extract_features`` keyword arguments for `image` (JSON-serialisable).

    The resegmentation range sets the lower bound of the first bin for a fixed bin width; its
    upper bound is open (``None``; the worker passes NaN, MIRP's open bound).
    """
    row = RADIOMICS_SETTINGS[image]
    families = ([SHAPE] if row.shape else []) + list(INTENSITY_AND_TEXTURE)
    args: dict[str, Any] = {**COMMON_SETTINGS, "image_modality": row.mirp_modality,
                            "base_feature_families": families,
                            "base_discretisation_method": row.method}
    if row.method == "fixed_bin_size":
        args["base_discretisation_bin_width"] = float(row.bin_width)
        args["resegmentation_intensity_range"] = [float(row.lower_bound), None]
    else:
        args["base_discretisation_n_bins"] = int(row.n_bins)
    return args


def left_out_features(config: RadiomicsConfig) -> tuple[str, ...]:
    """MIRP's names of the features the profile does not compute (none in the paper profile)."""
    return () if config.spatial_autocorrelation else SPATIAL_AUTOCORRELATION


def settings_table(images: tuple[str, ...] | list[str] | None = None) -> pd.DataFrame:
    """The settings table for display: image, unit, discretisation, bin, lower bound, families,
    reason (the rows of `images`, default all)."""
    rows = []
    for image in images if images is not None else RADIOMICS_SETTINGS:
        row = RADIOMICS_SETTINGS[image]
        if row.method == "fixed_bin_size":
            discretisation, size = "fixed bin width", f"{row.bin_width:g} {row.unit}"
            lower = f"{row.lower_bound:g} {row.unit}"
        else:
            discretisation, size, lower = "fixed bin number", f"{row.n_bins} bins", "GTV minimum"
        rows.append({
            "image": DISPLAY_NAMES.get(image, image), "unit": row.unit,
            "discretisation": discretisation, "bin": size, "lower bound": lower,
            "families": ", ".join(([SHAPE] if row.shape else []) + list(INTENSITY_AND_TEXTURE)),
            "reason": row.reason,
        })
    return pd.DataFrame(rows)
