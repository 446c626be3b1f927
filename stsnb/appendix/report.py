"""The appendix's findings in words, computed from its tables (so the prose cannot drift from
the numbers). Lengths in mm; Dice unitless."""

from __future__ import annotations

import pandas as pd

from stsnb.appendix.real_cohort import DICE_MIN, GRID_TOLERANCE_MM, IDENTITY_MAX_MM
from stsnb.dicom import ImportResult


def _listed(items: list[str]) -> str:
    return ", ".join(items) or "none"


def import_summary(imported: ImportResult) -> str:
    """How many patients were imported, with which images, and which share the CT's frame."""
    report = imported.report
    n_patients = report.loc[report["patient_id"] != "", "patient_id"].nunique()
    return (f"Imported {n_patients} patients with images {', '.join(imported.modalities)}; not "
            f"registered (same frame as the CT): {_listed(list(imported.same_frame_as_ct))}.")


def agreement_summary(agreement: pd.DataFrame) -> str:
    """How many imported masks agree with the independent conversion, and the worst case."""
    grid = agreement[["spacing_diff_mm", "origin_diff_mm"]].max().max()
    return (f"{int(agreement['agrees'].sum())} of {len(agreement)} masks agree (lowest Dice "
            f"{agreement['dice'].min():.4f}; largest grid difference {grid:.4f} mm).")


def displacement_summary(displacement: pd.DataFrame) -> str:
    """Whether registering an MR already in the CT's frame stays near the identity."""
    far = displacement.loc[~displacement["near_identity"], "patient_id"].tolist()
    if not far:
        return (f"All {len(displacement)} patients stay within {IDENTITY_MAX_MM:g} mm of the "
                "identity.")
    return (f"**{len(far)} of {len(displacement)} patients move more than {IDENTITY_MAX_MM:g} "
            f"mm** ({', '.join(far)}): the mutual-information optimum between these CT and MR "
            "crops lies millimetres away from the identity. The registered T1w of these "
            "patients is shifted against the CT by that much; for images known to share the "
            "CT's frame, leave them in `same_frame_as_ct` (the importer's default) instead of "
            "registering them.")


def cortex_summary(bone: pd.DataFrame) -> str:
    """Where the CT's bone says the MR belongs, against where the metric put it."""
    judged = bone[bone["bone_prefers"] != "no bone in the crop"]
    verdicts = ", ".join(judged["patient_id"] + ": " + judged["bone_prefers"])
    at_identity = int((judged["bone_prefers"] == "identity").sum())
    return (
        f"Bone prefers the scanner positions for {at_identity} of {len(judged)} patients with "
        f"bone in the crop ({verdicts}); the mutual information "
        "over the whole overlap prefers the registered pose for "
        f"{int((bone['metric_prefers'] == 'registered').sum())} of {len(bone)} (the registration "
        "optimised it within rigid_focus_mm of the tumour, where the registered pose wins by "
        "construction). Where bone and metric disagree, the metric's optimum on these crops is "
        "not the anatomical alignment: the reason the importer keeps images that share the CT's "
        "frame of reference out of the registration unless asked.")


def focus_summary(sensitivity: pd.DataFrame) -> str:
    """How far the forced registration moves under each metric region, and what bone says."""
    near = sensitivity[sensitivity["near_identity"]]
    moved = sensitivity["mean_displacement_mm"]
    return (f"{len(near)} of {len(sensitivity)} registrations stay within {IDENTITY_MAX_MM:g} mm "
            f"of the identity; displacements range from {moved.min():.1f} to {moved.max():.1f} "
            "mm with the region alone, and bone prefers the scanner positions in "
            f"{int((sensitivity['bone_prefers'] == 'identity').sum())} of them. On these crops "
            "the rigid optimum of the metric is not a stable estimate of the alignment.")


def appendix_conclusion(agreement: pd.DataFrame, images: pd.DataFrame, n_slices: int,
                        n_store_patients: int, displacement: pd.DataFrame,
                        bone: pd.DataFrame) -> str:
    """The appendix's conclusion: the import, its checks, the slice store and the near-identity
    analysis (`images`: the registration's per-image table with ``dice_scanner``)."""
    scanner = ", ".join(f"{r.patient_id} {r.image} {r.dice_scanner:.3f}"
                        for r in images.itertuples())
    moved = ", ".join(f"{r.patient_id} {r.mean_final_mm:.1f} mm"
                      for r in displacement.itertuples())
    at_identity = bone.loc[bone["bone_prefers"] == "identity", "patient_id"].tolist()
    return (f"Imported {len(displacement)} real patients from DICOM; "
            f"{int(agreement['agrees'].sum())} of {len(agreement)} imported masks agree with "
            f"the independent conversion (Dice >= {DICE_MIN:g}, grids within "
            f"{GRID_TOLERANCE_MM:g} mm). As imported, nothing was registered: each image's own "
            f"contour placed on the CT by geometry alone has a Dice of {scanner}; {n_slices} "
            f"slices of {n_store_patients} patients are in the slice store. Registering the T1w "
            f"that already shares the CT's frame moved the GTV voxels by {moved} on average "
            f"(check: < {IDENTITY_MAX_MM:g} mm); the CT's bone sits on the T1w's at the scanner "
            f"positions for {_listed(at_identity)}.")
