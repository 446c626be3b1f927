"""Which files one patient's registration reads: images, tumour mask, QA references (truth)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stsnb.core.errors import CohortError
from stsnb.curation.cohort import GTV_FILE, image_path
from stsnb.curation.cohort_config import CohortConfig

#: Synthetic ground truth (QA only): the GTV on the reference MR grid, and landmark pairs.
TRUTH_CONTOUR = Path("truth") / "gtv_mr.nii.gz"
TRUTH_LANDMARKS = Path("truth") / "landmarks_mm.csv"


@dataclass(frozen=True)
class PatientInputs:
    """The files of one patient that the registration stage reads."""

    patient_id: str
    folder: Path
    ct: Path
    gtv: Path
    reference: str  # the MR registered first (mr_reference); "" when nothing is registered
    registered: dict[str, Path]  # image -> file, reference first (empty: nothing to register)
    same_frame: dict[str, Path]  # images already in the CT's frame (resampled, not registered)
    contour: Path | None  # a tumour contour in a registered image's frame (QA only)
    contour_modality: str | None  # which image's frame that contour is drawn in
    landmarks: Path | None  # landmark pairs CT <-> reference MR (QA only)
    in_ct_frame: tuple[str, ...] = ()  # registered images whose series share the CT's frame
    #: per-image tumour contours drawn in that image's frame (``gtv_<image>.nii.gz``; QA only)
    contours: dict[str, Path] = field(default_factory=dict)

    @property
    def nothing_to_register(self) -> bool:
        """True when every declared image is the CT or shares its frame."""
        return not self.registered

    def files(self) -> list[Path]:
        """Every file read (their content hashes key the stage's record)."""
        files = [self.ct, self.gtv, *self.registered.values(), *self.same_frame.values()]
        files += [p for p in (self.contour, self.landmarks) if p is not None]
        return files + [p for p in self.contours.values() if p not in files]


def patient_inputs(cohort_dir: str | Path, patient_id: str,
                   config: CohortConfig) -> PatientInputs:
    """The files of `patient_id`; CohortError when a declared image or the GTV is missing.

    A cohort whose every image is the CT or in ``same_frame_as_ct`` has nothing to register:
    `registered` is empty and `reference` is "" (the images are resampled by geometry alone).
    """
    folder = Path(cohort_dir) / str(patient_id)
    order = ([config.mr_reference] if config.mr_reference else []) + [
        m for m in config.registered if m != config.mr_reference]
    registered = {m: image_path(cohort_dir, patient_id, m) for m in order}
    same_frame = {m: image_path(cohort_dir, patient_id, m) for m in config.same_frame_as_ct}
    ct, gtv = image_path(cohort_dir, patient_id, "ct"), folder / GTV_FILE
    for path in [ct, gtv, *registered.values(), *same_frame.values()]:
        if not path.is_file():
            raise CohortError(
                f"{path.name} is missing, but the patient is included in the curated cohort.",
                patient_id=patient_id, path=path,
                fix="rerun chapter 01 (curation) so that cohort.csv reflects the cohort folder.")
    contours = {m: folder / f"gtv_{m}.nii.gz" for m in [*order, *config.same_frame_as_ct]
                if (folder / f"gtv_{m}.nii.gz").is_file()}
    contour, contour_modality = None, None
    if order and (folder / TRUTH_CONTOUR).is_file():
        contour, contour_modality = folder / TRUTH_CONTOUR, config.mr_reference
    else:
        for modality in order:
            if modality in contours:
                contour, contour_modality = contours[modality], modality
                break
    landmarks = folder / TRUTH_LANDMARKS
    return PatientInputs(
        patient_id=str(patient_id), folder=folder, ct=ct, gtv=gtv,
        reference=config.mr_reference if order else "", registered=registered,
        same_frame=same_frame, contours=contours,
        contour=contour, contour_modality=contour_modality,
        landmarks=landmarks if landmarks.is_file() else None,
        in_ct_frame=tuple(m for m in config.registered_in_ct_frame if m in registered),
    )
