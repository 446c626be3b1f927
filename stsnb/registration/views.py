"""What the QA figures show for one patient: axial slices through the tumour, on the CT grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from stsnb.core.errors import StsnbError
from stsnb.core.imageio import read_image
from stsnb.core.modalities import MR_MODALITIES
from stsnb.core.store import read_json
from stsnb.curation.cohort_config import read_cohort_config
from stsnb.registration.geometry import box_corners_mm, crop, index_box, mask_box
from stsnb.registration.inputs import patient_inputs
from stsnb.registration.stage import patient_dir


@dataclass(frozen=True)
class PatientViews:
    """One axial CT slice through the GTV centroid with everything the QA figures draw.

    Arrays are (y, x); intensities as stored (CT in HU, MR in a.u.); masks 0/1; the Jacobian
    determinant is NaN outside the deformable region.
    """

    patient_id: str
    reference: str  # the MR sequence shown (registered, or the first image in the CT's frame)
    z_index: int  # axial index of the slice on the CT grid
    z_mm: float  # its physical z (mm)
    spacing_xy_mm: tuple[float, float]
    ct: np.ndarray
    mr_before: np.ndarray  # MR placed by scanner coordinates only
    mr_rigid: np.ndarray | None  # MR after the rigid step
    mr_after: np.ndarray  # MR after the final step (as saved)
    gtv: np.ndarray  # CT GTV
    gtv_from_mr_rigid: np.ndarray | None  # MR-frame contour mapped by the rigid transform
    gtv_from_mr: np.ndarray | None  # MR-frame contour mapped by the final transform
    jacobian: np.ndarray | None
    history: pd.DataFrame
    qa: dict
    registered: bool = True  # False: nothing registered, the image placed by geometry alone


def _slice(image: sitk.Image, z: int) -> np.ndarray:
    return sitk.GetArrayFromImage(image[:, :, z])


def _optional(path: Path, z: int) -> np.ndarray | None:
    return _slice(sitk.ReadImage(str(path)), z) if path.exists() else None


def central_slice(gtv: sitk.Image) -> int:
    """Axial index of the GTV centroid (the middle slice when the mask is empty)."""
    array = sitk.GetArrayViewFromImage(gtv)
    z = np.nonzero(array)[0]
    return int(round(z.mean())) if z.size else gtv.GetSize()[2] // 2


def load_views(cohort_dir: str | Path, work_dir: str | Path, patient_id: str,
               z_index: int | None = None) -> PatientViews:
    """Read one registered patient's slice views (from the cohort and the stage's outputs)."""
    folder = patient_dir(work_dir, patient_id)
    qa = read_json(folder / "qa.json", fix=f"rerun chapter 02 for patient {patient_id}.")
    inputs = patient_inputs(cohort_dir, patient_id, read_cohort_config(cohort_dir))
    ref = inputs.reference or shown_image(inputs.same_frame)
    ct = read_image(inputs.ct, patient_id, "ct")
    gtv = sitk.ReadImage(str(folder / "gtv.nii.gz"))
    z = central_slice(gtv) if z_index is None else int(z_index)
    plane = ct[:, :, z:z + 1]
    path = inputs.registered.get(ref) or inputs.same_frame[ref]
    mr = read_image(path, patient_id, ref)
    before = sitk.Resample(mr, plane, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    rigid = None
    if inputs.registered:
        rigid_tfm = sitk.ReadTransform(str(folder / f"transform_{ref}_rigid.tfm"))
        rigid = sitk.GetArrayFromImage(sitk.Resample(mr, plane, rigid_tfm, sitk.sitkLinear, 0.0,
                                                     sitk.sitkFloat32))[0]
        rigid_contour = folder / "gtv_from_mr_rigid.nii.gz"
        contour = folder / "gtv_from_mr.nii.gz"
    else:  # the image's own contour placed by geometry, shown as the "rigid" one
        rigid_contour = contour = folder / f"gtv_from_{ref}.nii.gz"
        checks = pd.read_csv(folder / "qa_images.csv").set_index("image")
        qa = {**qa, "dice_shown": float(checks.loc[ref, "dice_scanner"])
              if ref in checks.index else float("nan")}
    jacobian = None
    if (folder / "jacobian.nii.gz").exists():
        jac = sitk.Resample(sitk.ReadImage(str(folder / "jacobian.nii.gz")), plane,
                            sitk.Transform(), sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
        jacobian = sitk.GetArrayFromImage(jac)[0]
    return PatientViews(
        patient_id=str(patient_id), reference=ref, z_index=z,
        z_mm=float(ct.TransformIndexToPhysicalPoint([0, 0, z])[2]),
        spacing_xy_mm=(float(ct.GetSpacing()[0]), float(ct.GetSpacing()[1])),
        ct=_slice(ct, z).astype(np.float32),
        mr_before=sitk.GetArrayFromImage(before)[0],
        mr_rigid=rigid,
        mr_after=_slice(sitk.ReadImage(str(folder / f"{ref}.nii.gz")), z).astype(np.float32),
        gtv=_slice(gtv, z),
        gtv_from_mr_rigid=_optional(rigid_contour, z),
        gtv_from_mr=_optional(contour, z),
        jacobian=jacobian,
        history=pd.read_csv(folder / "metric_history.csv"),
        qa=qa, registered=bool(inputs.registered),
    )


def shown_image(images: dict[str, Path]) -> str:
    """The image the figures show when nothing is registered: the first MR sequence in the
    CT's frame, else the first image."""
    mr = [m for m in images if m in MR_MODALITIES]
    if not mr and not images:
        raise StsnbError("The cohort declares no image besides the CT: nothing to show.")
    return (mr or list(images))[0]


def sample_patients(qa: pd.DataFrame, n_others: int, seed: int = 0) -> list[str]:
    """Every flagged patient, then `n_others` unflagged ones (seeded choice)."""
    flagged = qa.loc[qa["flagged"], "patient_id"].tolist()
    others = qa.loc[~qa["flagged"], "patient_id"]
    chosen = others.sample(n=min(n_others, len(others)), random_state=seed).tolist()
    return flagged + sorted(chosen)


def registered_volumes(cohort_dir: str | Path, work_dir: str | Path, patient_id: str,
                       margin_mm: float = 40.0) -> dict[str, sitk.Image]:
    """CT-grid volumes around the tumour (GTV box + `margin_mm`) for the interactive viewers:
    ``fixed`` (CT, HU), ``moving`` (the registered reference MR), ``contour`` (the MR-frame
    contour propagated onto the CT grid, or the CT GTV when there is none) and ``gtv``."""
    folder = patient_dir(work_dir, patient_id)
    inputs = patient_inputs(cohort_dir, patient_id, read_cohort_config(cohort_dir))
    gtv = sitk.ReadImage(str(folder / "gtv.nii.gz"))
    box = mask_box(gtv)
    region = index_box(gtv, box_corners_mm(gtv, box), margin_mm) if box else None
    region = region or ((0, 0, 0), tuple(gtv.GetSize()))
    shown = inputs.reference or shown_image(inputs.same_frame)
    contour_path = folder / ("gtv_from_mr.nii.gz" if inputs.reference
                             else f"gtv_from_{shown}.nii.gz")
    volumes = {
        "fixed": read_image(inputs.ct, patient_id, "ct"),
        "moving": sitk.ReadImage(str(folder / f"{shown}.nii.gz")),
        "contour": sitk.ReadImage(str(contour_path)) if contour_path.exists() else gtv,
        "gtv": gtv,
    }
    return {name: crop(image, region) for name, image in volumes.items()}


__all__ = ["PatientViews", "central_slice", "load_views", "registered_volumes", "sample_patients"]
