"""The appendix's real cohort: the public TCIA sample (examples/tcia-sts-sample) imported from
DICOM as the importer proposes (every image in the CT's frame, nothing registered), checked
against its independently converted NIfTI masks; and, as a separate analysis, the near-identity
check of registering an MR that already shares the CT's frame anyway.

Lengths are in mm. The sample's NIfTI masks (``<patient>/nifti/<CT|MR_T1|PET>_mask.nii.gz``)
were converted from the same RTSTRUCTs by another tool (MIRP), so they test the importer's
rasterisation and grids independently.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from stsnb.core.config import Profile
from stsnb.core.errors import StsnbError
from stsnb.core.store import write_text_atomic
from stsnb.curation.cohort import image_path
from stsnb.curation.cohort_config import COHORT_TOML, read_cohort_config
from stsnb.dicom import ImportResult, import_dicom_cohort
from stsnb.registration.measures import (
    CORTEX_MIN_HU,
    CORTEX_TIE,
    MIN_CORTEX_VOXELS,
    SOFT_TISSUE_HU,
    cortex_ratio,
    displacements_mm,
    mask_points_mm,
)
from stsnb.registration.qa import read_qa
from stsnb.registration.rigid import register_rigid
from stsnb.registration.settings import registration_settings

__all__ = [
    "DICE_MIN",
    "GRID_TOLERANCE_MM",
    "CORTEX_MIN_HU",
    "FOCUS_VARIANTS_MM",
    "IDENTITY_MAX_MM",
    "MIN_CORTEX_VOXELS",
    "NIFTI_NAMES",
    "SAMPLE_REGISTRATION",
    "Placements",
    "cortex_check",
    "cortex_ratios",
    "focus_sensitivity",
    "identity_displacement",
    "import_sample",
    "mask_agreement",
    "placements",
    "registration_toml",
]

#: The cohort image stem -> the sample's NIfTI name.
NIFTI_NAMES = {"ct": "CT", "t1w": "MR_T1", "pet": "PET"}
#: Agreement required between the importer's masks and the sample's NIfTI masks.
DICE_MIN = 0.95
GRID_TOLERANCE_MM = 0.1
#: An MR already in the CT's frame, registered anyway, must move the tumour less than this (mm).
IDENTITY_MAX_MM = 2.0

#: The MR's edge (mm) left out of the cortex check: the crops' borders are darkened by resampling.
MR_EDGE_MM = 5.0

#: The rigid metric regions compared by focus_sensitivity (rigid_focus_mm, mm; 0 = whole overlap).
FOCUS_VARIANTS_MM = (0.0, 20.0, 40.0)

#: The [registration] table written into the sample's cohort.toml (on top of any profile, so
#: the result does not depend on the profile the book runs with). The series share one frame of
#: reference, so the scanner position is the only start; the images are cropped 5 cm around the
#: tumour, so the metric is restricted to the tumour's neighbourhood (rigid_focus_mm). Measured
#: mean displacement of the CT GTV voxels (mm, P001/P002/P003; focus_sensitivity): whole
#: overlap 1.8/9.8/8.2, within 20 mm of the GTV 2.4/3.2/10.2, within 40 mm 2.3/6.2/8.1 -- Mattes
#: MI between these CT and MR crops has its optimum millimetres away from the identity,
#: whichever region it is measured on (so do normalised gradient fields and gradient-magnitude
#: correlation: 3-11 mm), while the bone (cortex_check) says the identity is right for P001 and
#: P003.
SAMPLE_REGISTRATION: Mapping[str, Any] = {
    "initialization": "scanner",
    "rigid_z_starts_mm": [0.0],
    "rigid_z_rotations_deg": [0.0],
    "rigid_iterations": 100,
    "rigid_focus_mm": 20.0,
    "mi_sampling_fraction": 0.5,
    "working_spacing_mm": 2.0,
    "deformable": False,
}


def registration_toml(settings: Mapping[str, Any]) -> str:
    """A cohort.toml [registration] table holding `settings` (numbers, booleans, strings,
    lists)."""
    lines = ["", "# Registration settings for this cohort (override the profile's; README,",
             "# 'Cohort layout').", "[registration]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def import_sample(sample_dir: str | Path, out_dir: str | Path, register_t1w: bool = False,
                  registration: Mapping[str, Any] = SAMPLE_REGISTRATION,
                  progress: bool = False) -> ImportResult:
    """Import the TCIA sample (ids P001..., the link in ``out_dir/ids.csv``).

    As the importer proposes (the default): into ``out_dir/cohort``, every image in the CT's
    frame of reference declared ``same_frame_as_ct`` (nothing is registered). With
    `register_t1w`: into ``out_dir/cohort_t1w_registered``, the T1w registered anyway, with
    `registration` added to its cohort.toml. An earlier import there is replaced (the import
    writes the same files again, so the stages that follow reuse their outputs).
    """
    sample_dir, out_dir = Path(sample_dir), Path(out_dir)
    result = import_dicom_cohort(
        sample_dir, out_dir / ("cohort_t1w_registered" if register_t1w else "cohort"),
        clinical=sample_dir / "clinical_tcia.csv",
        clinical_map=sample_dir / "clinical_map.toml", id_map=out_dir / "ids.csv",
        register=("t1w",) if register_t1w else (), overwrite=True, progress=progress,
    )
    if register_t1w:
        toml = result.cohort_dir / COHORT_TOML
        write_text_atomic(toml, toml.read_text(encoding="utf-8")
                          + registration_toml(registration))
    return result


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 2.0 * np.count_nonzero(a & b) / total if total else float("nan")


def _max_difference(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return float(np.max(np.abs(np.subtract(a, b))))


def mask_agreement(cohort_dir: str | Path, sample_dir: str | Path,
                   id_map: str | Path) -> pd.DataFrame:
    """One row per patient and image: Dice of the importer's GTV mask with the sample's NIfTI
    mask, and how far their grids differ (size, spacing and origin in mm, direction)."""
    cohort_dir, sample_dir = Path(cohort_dir), Path(sample_dir)
    ids = pd.read_csv(id_map, dtype=str)
    rows = []
    for patient_id, source in zip(ids["patient_id"], ids["source_folder"], strict=True):
        for stem, name in NIFTI_NAMES.items():
            mask_file = "gtv.nii.gz" if stem == "ct" else f"gtv_{stem}.nii.gz"
            ours = sitk.ReadImage(str(cohort_dir / patient_id / mask_file))
            theirs = sitk.ReadImage(str(sample_dir / source / "nifti" / f"{name}_mask.nii.gz"))
            same_size = ours.GetSize() == theirs.GetSize()
            rows.append({
                "patient_id": patient_id, "source": source, "image": stem,
                "size": " x ".join(str(n) for n in ours.GetSize()),
                "same_size": same_size,
                "spacing_diff_mm": _max_difference(ours.GetSpacing(), theirs.GetSpacing()),
                "origin_diff_mm": _max_difference(ours.GetOrigin(), theirs.GetOrigin()),
                "direction_diff": _max_difference(ours.GetDirection(), theirs.GetDirection()),
                "voxels": int(np.count_nonzero(sitk.GetArrayViewFromImage(ours))),
                "dice": _dice(sitk.GetArrayViewFromImage(ours),
                              sitk.GetArrayViewFromImage(theirs)) if same_size else 0.0,
            })
    table = pd.DataFrame(rows)
    table["agrees"] = (table["same_size"] & (table["spacing_diff_mm"] <= GRID_TOLERANCE_MM)
                       & (table["origin_diff_mm"] <= GRID_TOLERANCE_MM)
                       & (table["direction_diff"] <= 1e-4) & (table["dice"] >= DICE_MIN))
    return table


def identity_displacement(cohort_dir: str | Path, work_dir: str | Path,
                          modality: str = "t1w") -> pd.DataFrame:
    """Per patient: how far the saved CT -> `modality` transforms (rigid and final) move the
    CT GTV voxels (mean and max, mm). For an image already in the CT's frame both should be
    near 0."""
    cohort_dir, work_dir = Path(cohort_dir), Path(work_dir)
    rows = []
    for folder in sorted(p for p in (work_dir / "registration").iterdir() if p.is_dir()):
        final = folder / f"transform_{modality}.h5"
        if not final.is_file():
            continue
        points = mask_points_mm(sitk.ReadImage(str(cohort_dir / folder.name / "gtv.nii.gz")))
        row: dict[str, Any] = {"patient_id": folder.name, "gtv_voxels": len(points)}
        for label, path in (("rigid", folder / f"transform_{modality}_rigid.tfm"),
                            ("final", final)):
            distances = displacements_mm(sitk.ReadTransform(str(path)), points)
            row[f"mean_{label}_mm"] = float(distances.mean())
            row[f"max_{label}_mm"] = float(distances.max())
        rows.append(row)
    if not rows:
        raise StsnbError(f"No transform_{modality}.h5 under {work_dir / 'registration'}: run "
                         "the registration stage first.")
    table = pd.DataFrame(rows)
    table["near_identity"] = table["mean_final_mm"] < IDENTITY_MAX_MM
    return table


def _mr_on_ct(mr: sitk.Image, inside: sitk.Image, ct: sitk.Image,
              transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """The MR (linear) and its field of view (nearest) on the CT grid through `transform`."""
    values = sitk.Resample(mr, ct, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    fov = sitk.Resample(inside, ct, transform, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(values), sitk.GetArrayViewFromImage(fov) > 0


@dataclass(frozen=True)
class Placements:
    """A patient's CT (HU) and MR on the CT grid, placed by scanner position (identity) and by
    the saved final registration; arrays are (z, y, x), spacing (x, y, z) in mm."""

    patient_id: str
    hu: np.ndarray
    mr: dict[str, np.ndarray]  # identity | final -> MR intensities on the CT grid
    common: np.ndarray  # inside the MR field of view (less MR_EDGE_MM) under both placements
    spacing_mm: tuple[float, float, float]

    @property
    def cortex(self) -> np.ndarray:
        """CT cortical bone (>= CORTEX_MIN_HU) where both placements have MR data."""
        return self.common & (self.hu >= CORTEX_MIN_HU)

    @property
    def tissue(self) -> np.ndarray:
        """CT soft tissue (SOFT_TISSUE_HU) where both placements have MR data."""
        low, high = SOFT_TISSUE_HU
        return self.common & (self.hu >= low) & (self.hu <= high)


def _placements(ct: sitk.Image, mr: sitk.Image, patient_id: str,
                transform: sitk.Transform) -> Placements:
    """`mr` on `ct`'s grid at scanner positions and through `transform` (CT -> MR points)."""
    edge = [max(1, int(round(MR_EDGE_MM / s))) for s in mr.GetSpacing()]
    inside = sitk.BinaryErode(sitk.Cast(mr > 0, sitk.sitkUInt8), edge)
    placed = {"identity": _mr_on_ct(mr, inside, ct, sitk.Euler3DTransform()),
              "final": _mr_on_ct(mr, inside, ct, transform)}
    return Placements(patient_id=patient_id, hu=sitk.GetArrayFromImage(ct),
                      mr={label: values for label, (values, _) in placed.items()},
                      common=placed["identity"][1] & placed["final"][1],
                      spacing_mm=tuple(float(s) for s in ct.GetSpacing()))


def _read_pair(cohort_dir: str | Path, patient_id: str,
               modality: str) -> tuple[sitk.Image, sitk.Image]:
    return (sitk.ReadImage(str(image_path(cohort_dir, patient_id, "ct")), sitk.sitkFloat32),
            sitk.ReadImage(str(image_path(cohort_dir, patient_id, modality)), sitk.sitkFloat32))


def placements(cohort_dir: str | Path, work_dir: str | Path, patient_id: str,
               modality: str = "t1w") -> Placements:
    """The MR of `patient_id` on the CT grid at scanner positions and as registered."""
    final = Path(work_dir) / "registration" / patient_id / f"transform_{modality}.h5"
    if not final.is_file():
        raise StsnbError(f"Patient {patient_id}: no {final} -- run the registration stage first.")
    ct, mr = _read_pair(cohort_dir, patient_id, modality)
    return _placements(ct, mr, patient_id, sitk.ReadTransform(str(final)))


def cortex_ratios(placed: Placements) -> dict[str, float]:
    """Per placement (identity, final): the MR's mean over the CT's cortex / its median over the
    CT's soft tissue (NaN without cortex or soft tissue in the common field of view)."""
    return {label: cortex_ratio(placed.hu, values, placed.common)[0]
            for label, values in placed.mr.items()}


def _verdict(identity: pd.Series, final: pd.Series, voxels: pd.Series) -> np.ndarray:
    """identity | registered | either (within CORTEX_TIE) | no bone in the crop."""
    verdict = np.where(np.isclose(identity, final, rtol=CORTEX_TIE), "either",
                       np.where(identity < final, "identity", "registered"))
    return np.where(voxels >= MIN_CORTEX_VOXELS, verdict, "no bone in the crop")


def cortex_check(cohort_dir: str | Path, work_dir: str | Path,
                 modality: str = "t1w") -> pd.DataFrame:
    """Which placement of the MR puts its bone on the CT's bone: scanner positions (identity) or
    the saved final registration (``transform_<modality>.h5``)?

    Cortical bone (CT >= CORTEX_MIN_HU) is a signal void on T1w/T2w. Per patient and placement:
    the MR's mean over the CT's cortex divided by its median over the CT's soft tissue
    (SOFT_TISSUE_HU), over CT voxels inside the MR field of view (less MR_EDGE_MM) under both
    placements; the lower ratio is the better bone alignment (within CORTEX_TIE: either). An
    anatomical check independent of the mutual information that judged the registration
    (qa.csv's MI over the whole overlap, in nats, higher = better, shown beside it). With fewer
    than MIN_CORTEX_VOXELS cortex voxels there is no verdict (no bone in the crop).
    """
    cohort_dir, work_dir = Path(cohort_dir), Path(work_dir)
    qa_path = work_dir / "registration" / "qa.csv"
    qa = read_qa(qa_path).set_index("patient_id") if qa_path.is_file() else pd.DataFrame()
    rows = []
    for folder in sorted(p for p in (work_dir / "registration").iterdir() if p.is_dir()):
        if not (folder / f"transform_{modality}.h5").is_file():
            continue
        placed = placements(cohort_dir, work_dir, folder.name, modality)
        ratios = cortex_ratios(placed)
        row: dict[str, Any] = {"patient_id": folder.name,
                               "cortex_voxels": int(np.count_nonzero(placed.cortex)),
                               "cortex_ratio_identity": ratios["identity"],
                               "cortex_ratio_final": ratios["final"]}
        for label, column in (("identity", "mi_before"), ("final", "mi_rigid")):
            row[f"mi_{label}"] = (float(qa.loc[folder.name, column])
                                  if folder.name in qa.index else float("nan"))
        rows.append(row)
    if not rows:
        raise StsnbError(f"No transform_{modality}.h5 under {work_dir / 'registration'}: run "
                         "the registration stage first.")
    table = pd.DataFrame(rows)
    table["bone_prefers"] = _verdict(table["cortex_ratio_identity"], table["cortex_ratio_final"],
                                     table["cortex_voxels"])
    known = table["mi_final"].notna() & table["mi_identity"].notna()
    table["metric_prefers"] = np.where(
        known, np.where(table["mi_final"] > table["mi_identity"], "registered", "identity"),
        "no qa.csv")
    return table


def focus_sensitivity(cohort_dir: str | Path, profile: Profile, modality: str = "t1w",
                      focus_mm: tuple[float, ...] = FOCUS_VARIANTS_MM,
                      seed: int = 0) -> pd.DataFrame:
    """The forced rigid registration of `modality` redone with its metric on different regions
    (``rigid_focus_mm`` = each of `focus_mm`; 0 = the whole overlap), the cohort's other
    settings kept: per patient and region, the mean displacement of the CT's GTV voxels (mm)
    and the bone check of the result. Nothing is written; the work folder is not touched."""
    cohort_dir = Path(cohort_dir)
    config = registration_settings(profile, read_cohort_config(cohort_dir), rigid_only=True,
                                   cohort_dir=cohort_dir)
    patients = sorted(p.name for p in cohort_dir.iterdir()
                      if image_path(cohort_dir, p.name, modality).is_file())
    rows = []
    for patient_id in patients:
        ct, mr = _read_pair(cohort_dir, patient_id, modality)
        gtv = sitk.ReadImage(str(image_path(cohort_dir, patient_id, "gtv")))
        points = mask_points_mm(gtv)
        for focus in focus_mm:
            started = time.perf_counter()
            rigid = register_rigid(ct, mr, dataclasses.replace(config, rigid_focus_mm=focus),
                                   seed=seed, what=modality, gtv=gtv)
            placed = _placements(ct, mr, patient_id, rigid.transform)
            ratios = cortex_ratios(placed)
            rows.append({"patient_id": patient_id, "rigid_focus_mm": focus,
                         "mean_displacement_mm": float(
                             displacements_mm(rigid.transform, points).mean()),
                         "cortex_voxels": int(np.count_nonzero(placed.cortex)),
                         "cortex_ratio_identity": ratios["identity"],
                         "cortex_ratio_final": ratios["final"],
                         "seconds": time.perf_counter() - started})
    if not rows:
        raise StsnbError(f"No patient with {modality}.nii.gz in {cohort_dir}.")
    table = pd.DataFrame(rows)
    table["near_identity"] = table["mean_displacement_mm"] < IDENTITY_MAX_MM
    table["bone_prefers"] = _verdict(table["cortex_ratio_identity"], table["cortex_ratio_final"],
                                     table["cortex_voxels"])
    return table
