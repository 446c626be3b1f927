"""Read one image series into a SimpleITK volume: slice order along the plane normal, checked
geometry (one orientation, one pixel grid, regular slice spacing, no missing slice), voxel
values as the scanner stored them (rescale slope/intercept applied), PET in SUV when the tags
allow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from stsnb.core.errors import CohortError
from stsnb.dicom.scan import SeriesGroup, slice_normal

__all__ = ["Geometry", "SeriesImage", "pet_suv_factor", "read_series", "series_geometry"]

#: Two slices closer than this along the normal are at the same position (mm).
DUPLICATE_MM = 0.01
#: A step between slices larger than this many times the usual step is a gap.
GAP_FACTOR = 1.5
#: Largest accepted deviation of one step from the usual step (relative), e.g. rounding.
STEP_TOLERANCE = 0.05
ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Geometry:
    """Grid of a volume (mm): origin, spacing (x, y, z), direction (row-major 3x3)."""

    size: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]


@dataclass(frozen=True)
class SeriesImage:
    """A series read into a volume, with what the report says about it."""

    image: sitk.Image
    geometry: Geometry
    sop_uids: tuple[str, ...]  # in slice order
    note: str  # e.g. how PET values were obtained


def _fail(series: SeriesGroup, patient: str, problem: str, fix: str, path=None) -> CohortError:
    label = series.description or f"number {series.series_number}"
    return CohortError(f"{series.modality} series {label!r}: {problem}", patient_id=patient,
                       path=path or series.slices[0].path.parent, fix=fix)


def series_geometry(series: SeriesGroup, patient: str) -> tuple[Geometry, list[int]]:
    """The volume grid of a series and the slice order (indices into ``series.slices``).

    Raises CohortError for a multi-frame or single-slice series, mixed orientations or pixel
    grids, two slices at one position, a gap in the slice positions (missing slices) or an
    irregular slice spacing.
    """
    slices = series.slices
    fix_export = "re-export the complete series from the scanner or PACS."
    if any(s.n_frames > 1 for s in slices):
        raise _fail(series, patient, "multi-frame (enhanced) images are not supported.",
                    "export the series as one file per slice (classic storage).")
    if len(slices) < 2:
        raise _fail(series, patient, f"it holds {len(slices)} slice; a volume needs at least 2.",
                    fix_export)
    if any(s.position is None or s.orientation is None or s.pixel_spacing is None
           for s in slices):
        raise _fail(series, patient, "some files lack ImagePositionPatient, "
                    "ImageOrientationPatient or PixelSpacing.", fix_export)
    orientation = np.asarray(slices[0].orientation, dtype=float)
    for s in slices:
        if np.abs(np.asarray(s.orientation) - orientation).max() > ORIENTATION_TOLERANCE:
            raise _fail(series, patient, f"{s.path.name} has another slice orientation than "
                        f"{slices[0].path.name}.", "export each orientation as its own series.",
                        s.path)
        if (s.rows, s.columns, s.pixel_spacing) != (
                slices[0].rows, slices[0].columns, slices[0].pixel_spacing):
            raise _fail(series, patient, f"{s.path.name} has another pixel grid (rows, columns "
                        f"or spacing) than {slices[0].path.name}.", fix_export, s.path)
    normal = slice_normal(tuple(orientation))
    along = np.array([float(np.dot(s.position, normal)) for s in slices])
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    same = np.flatnonzero(steps < DUPLICATE_MM)
    if same.size:
        a, b = slices[order[same[0]]], slices[order[same[0] + 1]]
        raise _fail(series, patient, f"{a.path.name} and {b.path.name} lie at the same position "
                    f"({along[order[same[0]]]:.2f} mm along the slice normal); the series holds "
                    "several images per position (echoes, phases or a repeated acquisition).",
                    "export one image per position (or split the series).", b.path)
    step = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * step)
    if gaps.size:
        i = gaps[0]
        a, b = slices[order[i]], slices[order[i + 1]]
        missing = round(steps[i] / step) - 1
        raise _fail(series, patient,
                    f"missing slices: a gap of {steps[i]:.2f} mm between {a.path.name} "
                    f"({along[order[i]]:.2f} mm) and {b.path.name} ({along[order[i + 1]]:.2f} mm)"
                    f" where the slices are {step:.2f} mm apart (about {missing} slice(s) "
                    f"missing; {gaps.size} gap(s) in all).",
                    "copy the complete series (every slice file) from the scanner or PACS.",
                    b.path)
    deviation = np.abs(steps - step).max()
    if deviation > STEP_TOLERANCE * step:
        raise _fail(series, patient, f"irregular slice spacing: steps from {steps.min():.3f} to "
                    f"{steps.max():.3f} mm.", "resample the series to a regular spacing.")
    first = slices[order[0]]
    row_spacing, col_spacing = first.pixel_spacing  # type: ignore[misc]
    direction = np.column_stack([orientation[:3], orientation[3:6], normal])
    geometry = Geometry(
        size=(first.columns, first.rows, len(slices)),
        origin=tuple(float(v) for v in first.position),  # type: ignore[arg-type,union-attr]
        spacing=(float(col_spacing), float(row_spacing), step),
        direction=tuple(float(v) for v in direction.ravel()),
    )
    return geometry, [int(i) for i in order]


def _seconds(time_text: str) -> float | None:
    """DICOM TM 'HHMMSS.frac' -> seconds since midnight."""
    text = str(time_text).strip()
    if len(text) < 6:
        return None
    try:
        return int(text[:2]) * 3600 + int(text[2:4]) * 60 + float(text[4:])
    except ValueError:
        return None


def _datetime_seconds(value: str) -> float | None:
    text = str(value).strip().split("+")[0].split("-")[0]
    for fmt in ("%Y%m%d%H%M%S.%f", "%Y%m%d%H%M%S"):
        try:
            return datetime.strptime(text, fmt).timestamp()
        except ValueError:
            continue
    return None


def pet_suv_factor(header: Dataset) -> tuple[float | None, str]:
    """(factor turning the stored PET values into body-weight SUV, explanation).

    Units GML: already SUV (factor 1). Units BQML: SUVbw = value * weight (g) / injected
    activity (Bq) decayed to the scan start (DecayCorrection START) or not decayed (ADMIN).
    None when the tags do not allow it (the values are then kept as given).
    """
    units = str(header.get("Units", "")).strip().upper()
    if units == "GML":
        return 1.0, "SUV as stored (Units GML)"
    if units != "BQML":
        return None, f"kept as given: Units {units or '(none)'} is not Bq/ml, no SUV computed"
    weight = header.get("PatientWeight")
    info = header.get("RadiopharmaceuticalInformationSequence")
    if not weight or not info:
        return None, ("kept as given (Bq/ml): PatientWeight or "
                      "RadiopharmaceuticalInformationSequence missing, no SUV computed")
    item = info[0]
    activity = item.get("RadionuclideTotalDose")
    half_life = item.get("RadionuclideHalfLife")
    if not activity or not half_life:
        return None, ("kept as given (Bq/ml): RadionuclideTotalDose or RadionuclideHalfLife "
                      "missing, no SUV computed")
    correction = str(header.get("DecayCorrection", "")).strip().upper()
    if correction == "ADMIN":
        decay = 1.0
    elif correction == "START":
        start = item.get("RadiopharmaceuticalStartDateTime")
        scan = f"{header.get('SeriesDate', '')}{header.get('SeriesTime', '')}"
        injected, scanned = (_datetime_seconds(start) if start else None), _datetime_seconds(scan)
        if injected is None or scanned is None:
            injected = _seconds(item.get("RadiopharmaceuticalStartTime", ""))
            scanned = _seconds(header.get("SeriesTime", ""))
        if injected is None or scanned is None:
            return None, "kept as given (Bq/ml): injection or scan time missing, no SUV computed"
        elapsed = (scanned - injected) % 86400 if scanned < injected else scanned - injected
        decay = math.pow(2.0, -elapsed / float(half_life))
    else:
        return None, (f"kept as given (Bq/ml): DecayCorrection {correction or '(none)'} is "
                      "neither START nor ADMIN, no SUV computed")
    factor = float(weight) * 1000.0 / (float(activity) * decay)
    return factor, f"SUVbw computed from Bq/ml (weight, injected activity, decay {correction})"


def read_series(series: SeriesGroup, stem: str, patient: str) -> SeriesImage:
    """Read a checked series into a float32 (CT: int16 when integral) volume on its own grid."""
    geometry, order = series_geometry(series, patient)
    files = [str(series.slices[i].path) for i in order]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _fail(series, patient, f"SimpleITK cannot read the series ({str(exc).strip()})",
                    "re-export the series (uncompressed or a standard transfer syntax).") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1 or tuple(
            image.GetSize()) != geometry.size:
        raise _fail(series, patient, f"read as {image.GetSize()} with "
                    f"{image.GetNumberOfComponentsPerPixel()} component(s); expected "
                    f"{geometry.size} scalar voxels.", "export a greyscale volume series.")
    values = sitk.GetArrayFromImage(image)  # fresh image below: no DICOM metadata carried
    note = ""
    if stem == "pet":
        factor, note = pet_suv_factor(series.header)
        values = values.astype(np.float64) * (factor if factor is not None else 1.0)
    if stem == "ct" and np.all(np.mod(values, 1) == 0) and values.min() >= -32768 \
            and values.max() <= 32767:
        values = values.astype(np.int16)
    else:
        values = values.astype(np.float32)
    out = sitk.GetImageFromArray(values)
    out.SetOrigin(geometry.origin)
    out.SetSpacing(geometry.spacing)
    out.SetDirection(geometry.direction)
    sop = tuple(series.slices[i].sop_uid for i in order)
    return SeriesImage(image=out, geometry=geometry, sop_uids=sop, note=note)
