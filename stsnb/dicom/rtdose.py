"""RTDOSE: one dose grid in Gy (DoseGridScaling applied, kept on its own grid), the rule that
combines several RTDOSE files, and the prescription read from an RTPLAN."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from stsnb.core.errors import CohortError
from stsnb.dicom.scan import read_dataset, slice_normal

__all__ = ["DoseGrid", "Prescription", "combine_doses", "read_prescription", "read_rtdose"]

_UNIT_TO_GY = {"GY": 1.0, "CGY": 0.01}
_STEP_TOLERANCE = 1e-3  # relative


@dataclass(frozen=True)
class DoseGrid:
    """One RTDOSE file as a float32 volume in Gy on its own grid."""

    image: sitk.Image
    summation: str  # DoseSummationType: PLAN, BEAM, FRACTION, ...
    frame_uid: str
    path: Path
    plan_uid: str  # ReferencedRTPlanSequence's SOPInstanceUID ('' when absent)


@dataclass(frozen=True)
class Prescription:
    """What an RTPLAN says about the prescription (Gy, fractions); None when not stated."""

    dose_gy: float | None
    fractions: int | None
    path: Path


def _fail(patient: str | None, path: Path, problem: str, fix: str) -> CohortError:
    return CohortError(f"RTDOSE {path.name}: {problem}", patient_id=patient, path=path, fix=fix)


def read_rtdose(path: str | Path, patient: str | None = None,
                ds: Dataset | None = None) -> DoseGrid:
    """Read an RTDOSE file: values * DoseGridScaling in Gy (cGy converted) on the grid given by
    ImagePositionPatient, ImageOrientationPatient, PixelSpacing and GridFrameOffsetVector (mm).

    Raises CohortError for relative dose (DoseUnits RELATIVE), a missing grid tag or an
    irregular frame spacing.
    """
    path = Path(path)
    ds = ds if ds is not None else read_dataset(path, patient, pixels=True)
    if ds is None or str(ds.get("Modality", "")).upper() != "RTDOSE":
        raise _fail(patient, path, "not an RTDOSE file.", "pass an RT Dose file.")
    units = str(ds.get("DoseUnits", "")).strip().upper()
    if units not in _UNIT_TO_GY:
        raise _fail(patient, path, f"DoseUnits is {units or '(none)'}; only absolute dose (GY or "
                    "CGY) can become dose.nii.gz in Gy.",
                    "export the absolute physical dose (DoseUnits GY) from the planning system.")
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                           "DoseGridScaling", "PixelData") if k not in ds]
    if missing:
        raise _fail(patient, path, f"lacks {', '.join(missing)}.",
                    "export the dose grid again from the planning system.")
    try:
        frames = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for bad pixel data
        raise _fail(patient, path, f"its pixel data cannot be decoded ({exc}).",
                    "export the dose uncompressed.") from exc
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    n = frames.shape[0]
    offsets = np.asarray([float(v) for v in ds.get("GridFrameOffsetVector", [0.0])] or [0.0])
    if offsets.size != n:
        raise _fail(patient, path, f"GridFrameOffsetVector has {offsets.size} values for {n} "
                    "frames.", "export the dose grid again from the planning system.")
    orientation = tuple(float(v) for v in ds.ImageOrientationPatient)
    normal = slice_normal(orientation)
    position = np.asarray([float(v) for v in ds.ImagePositionPatient])
    if offsets[0] != 0.0:  # absolute positions along the normal (allowed by the standard)
        offsets = offsets - float(np.dot(position, normal))
    if n > 1:
        order = np.argsort(offsets)
        frames, offsets = frames[order], offsets[order]
        steps = np.diff(offsets)
        step = float(np.median(steps))
        if step <= 0 or np.abs(steps - step).max() > _STEP_TOLERANCE * step + 1e-4:
            raise _fail(patient, path, f"irregular frame spacing (steps {steps.min():.3f} to "
                        f"{steps.max():.3f} mm).", "export the dose on a regular grid.")
    else:
        step = float(ds.get("SliceThickness") or 1.0)
    values = frames * float(ds.DoseGridScaling) * _UNIT_TO_GY[units]
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetOrigin(tuple(float(v) for v in position + offsets[0] * normal))
    image.SetSpacing((col_spacing, row_spacing, step))
    direction = np.column_stack([orientation[:3], orientation[3:6], normal])
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    plans = ds.get("ReferencedRTPlanSequence", [])
    return DoseGrid(
        image=image,
        summation=str(ds.get("DoseSummationType", "")).strip().upper(),
        frame_uid=str(ds.get("FrameOfReferenceUID", "")),
        path=path,
        plan_uid=str(plans[0].get("ReferencedSOPInstanceUID", "")) if plans else "",
    )


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def combine_doses(doses: list[DoseGrid], patient: str,
                  prescription: Prescription | None = None) -> tuple[sitk.Image, str]:
    """(the patient's dose in Gy, the rule used, for the report).

    One file: used as it is (a FRACTION dose times the planned fractions of the RTPLAN).
    Several: the single PLAN dose when there is one; else the BEAM doses summed (resampled
    linearly onto the first beam's grid when the grids differ). Anything else is ambiguous
    and raises CohortError listing the files.
    """
    listing = ", ".join(f"{d.path.name} ({d.summation or 'no DoseSummationType'})"
                        for d in doses)
    if len(doses) == 1:
        dose = doses[0]
        if dose.summation == "FRACTION":
            if prescription is None or not prescription.fractions:
                raise _fail(patient, dose.path, "a FRACTION dose (one fraction) and no RTPLAN "
                            "with NumberOfFractionsPlanned.",
                            "add the RTPLAN, or export the PLAN dose.")
            image = sitk.Cast(dose.image * float(prescription.fractions), sitk.sitkFloat32)
            return image, (f"one FRACTION dose x {prescription.fractions} planned fractions "
                           "(RTPLAN)")
        return dose.image, f"one RTDOSE (DoseSummationType {dose.summation or 'not given'})"
    plans = [d for d in doses if d.summation == "PLAN"]
    if len(plans) == 1:
        return plans[0].image, (f"the PLAN dose of {len(doses)} RTDOSE files "
                                "(DoseSummationType PLAN; the others not used)")
    if len(plans) > 1:
        raise _fail(patient, plans[0].path, f"{len(plans)} PLAN doses among {listing}; which "
                    "one is the treatment is ambiguous.",
                    "keep one PLAN dose in the patient's source folder.")
    if all(d.summation == "BEAM" for d in doses):
        reference = doses[0].image
        total = sitk.GetArrayFromImage(reference).astype(np.float64)
        resampled = 0
        for other in doses[1:]:
            image = other.image
            if not _same_grid(image, reference):
                image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
                resampled += 1
            total += sitk.GetArrayFromImage(image)
        out = sitk.GetImageFromArray(total.astype(np.float32))
        out.CopyInformation(reference)
        extra = f"; {resampled} resampled onto the first grid (linear)" if resampled else ""
        return out, f"sum of {len(doses)} BEAM doses (no PLAN dose){extra}"
    raise _fail(patient, doses[0].path, f"{len(doses)} RTDOSE files ({listing}) with neither "
                "one PLAN dose nor only BEAM doses; how to combine them is ambiguous.",
                "keep the PLAN dose (or only the beam doses) in the patient's source folder.")


def read_prescription(path: Path, patient: str | None = None) -> Prescription:
    """Prescribed dose (Gy: the largest TargetPrescriptionDose of DoseReferenceSequence) and
    planned fractions of an RTPLAN; fields it does not state are None."""
    ds = read_dataset(path, patient)
    if ds is None:
        raise CohortError(f"RTPLAN {path.name} cannot be read.", patient_id=patient, path=path,
                          fix="re-export the plan, or move it out of the source folder.")
    doses = [float(item.TargetPrescriptionDose) for item in ds.get("DoseReferenceSequence", [])
             if item.get("TargetPrescriptionDose") not in (None, "")]
    groups = ds.get("FractionGroupSequence", [])
    fractions = groups[0].get("NumberOfFractionsPlanned") if groups else None
    return Prescription(dose_gy=max(doses) if doses else None,
                        fractions=int(fractions) if fractions not in (None, "") else None,
                        path=path)
