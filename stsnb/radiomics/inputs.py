"""Which files one patient's features come from, and the checks made before computing them.

The images on the CT grid: the CT itself from the cohort folder, every other declared image as
chapter 02 resampled it (``work_dir/registration/<patient_id>/<image>.nii.gz``), and the tumour
mask ``registration/<patient_id>/gtv.nii.gz`` (0/1, CT grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from stsnb.core.errors import CohortError
from stsnb.core.imageio import check_binary_mask, check_same_grid, read_header, read_image
from stsnb.curation.cohort import GTV_FILE, image_path
from stsnb.radiomics.errors import RadiomicsError
from stsnb.registration.review import registration_dir

#: Largest share of the GTV's voxels that may be 0 in a resampled image (0 is the value the
#: resampling gives outside the image's field of view); more means the image does not cover the
#: tumour. The CT is exempt: it defines the grid, and 0 HU is a tissue value.
MAX_OUTSIDE_FRACTION = 0.001

_EXCLUDE = "or exclude the patient in registration/review.csv (decision exclude)."


@dataclass(frozen=True)
class RadiomicsInputs:
    """The files of one patient that the radiomics stage reads."""

    patient_id: str
    mask: Path
    images: dict[str, Path]  # image (file stem) -> file on the CT grid, declared order

    def files(self) -> dict[str, Path]:
        """Every file read, by name (``gtv`` for the mask); their hashes key the record."""
        return {"gtv": self.mask, **self.images}


def radiomics_inputs(cohort_dir: str | Path, work_dir: str | Path, patient_id: str,
                     images: tuple[str, ...] | list[str]) -> RadiomicsInputs:
    """The files of `patient_id`; RadiomicsError naming the image when one is missing."""
    folder = registration_dir(work_dir) / str(patient_id)
    paths = {m: image_path(cohort_dir, patient_id, "ct") if m == "ct" else folder / f"{m}.nii.gz"
             for m in images}
    mask = folder / GTV_FILE
    for name, path in {"gtv": mask, **paths}.items():
        if path.is_file():
            continue
        if name == "ct":
            fix = "the cohort folder lacks the planning CT: pass the cohort chapter 02 ran on."
        else:
            fix = f"run chapter 02 (registration) for this patient, {_EXCLUDE}"
        what = "the tumour mask" if name == "gtv" else f"the {name} image"
        raise RadiomicsError(f"{what} ({path.name}) is missing.", patient_id=patient_id,
                             path=path, fix=fix)
    return RadiomicsInputs(patient_id=str(patient_id), mask=mask, images=paths)


def _located(exc: CohortError, fix: str) -> RadiomicsError:
    return RadiomicsError(exc.problem, patient_id=exc.patient_id, path=exc.path, fix=fix)


def check_inputs(inputs: RadiomicsInputs) -> dict[str, float]:
    """Raise RadiomicsError unless the GTV is a non-empty 0/1 mask and every image is on its
    grid, finite inside it and covers it; return the GTV's voxel count and volume (mm^3)."""
    pid = inputs.patient_id
    try:
        mask_image = read_image(inputs.mask, pid, "tumour mask")
        n_voxels = check_binary_mask(mask_image, inputs.mask, pid)
        mask_header = read_header(inputs.mask, pid, "tumour mask")
    except CohortError as exc:
        raise _located(exc, f"rerun chapter 02 (registration), {_EXCLUDE}") from exc
    if n_voxels == 0:
        raise RadiomicsError(
            "the GTV is empty (no voxel of gtv.nii.gz is 1): there is no tumour to compute "
            "features from.", patient_id=pid, path=inputs.mask,
            fix=f"check the patient's GTV contour in the cohort folder and rerun chapters 01-02, "
            f"{_EXCLUDE}")
    inside = sitk.GetArrayViewFromImage(mask_image) == 1
    for name, path in inputs.images.items():
        try:
            header = read_header(path, pid, name)
            check_same_grid(header, mask_header, pid, what=name, reference_what="GTV")
            image = read_image(path, pid, name)
        except CohortError as exc:
            raise _located(exc, f"rerun chapter 02 (registration), {_EXCLUDE}") from exc
        values = sitk.GetArrayViewFromImage(image)[inside]
        n_bad = int(np.count_nonzero(~np.isfinite(values)))
        if n_bad:
            raise RadiomicsError(
                f"the {name} image has {n_bad} NaN or infinite voxels inside the GTV.",
                patient_id=pid, path=path, fix=f"rerun chapter 02 (registration), {_EXCLUDE}")
        if name == "ct":
            continue
        n_outside = int(np.count_nonzero(values == 0))
        if n_outside > MAX_OUTSIDE_FRACTION * n_voxels:
            raise RadiomicsError(
                f"the GTV is not inside the {name} image's field of view: {n_outside} of its "
                f"{n_voxels} voxels ({100.0 * n_outside / n_voxels:.1f} %) are 0 in "
                f"{path.name}, the value the resampling onto the CT grid gives outside the "
                f"image (at most {100 * MAX_OUTSIDE_FRACTION:g} % may be).", patient_id=pid,
                path=path,
                fix=f"check in chapter 02 that the {name} scan covers the whole tumour, "
                f"{_EXCLUDE}")
    voxel_mm3 = float(np.prod(mask_header.spacing))
    return {"gtv_voxels": float(n_voxels), "gtv_volume_mm3": n_voxels * voxel_mm3}
