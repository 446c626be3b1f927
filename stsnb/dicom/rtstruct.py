"""RTSTRUCT: which image a structure set was drawn on, which ROI is the tumour, and its
rasterisation onto that image's grid.

Rasterisation: each CLOSED_PLANAR contour (points in mm, patient coordinates) is mapped to
continuous voxel indices of the image; the contour must lie in one slice plane (its index
along the slice axis varies by less than ``PLANE_TOLERANCE`` voxels); a voxel belongs to the
contour when its centre lies inside the polygon (``matplotlib.path.Path.contains_points``).
Contours on one slice combine by even-odd (exclusive or), so a contour inside another is a
hole, as DICOM RT planning systems write them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset

from stsnb.core.errors import CohortError

__all__ = ["RoiChoice", "choose_roi", "rasterise_contours", "referenced_series", "roi_contours"]

#: A contour's points may spread this much along the slice axis (voxels) and still be planar.
PLANE_TOLERANCE = 0.3


@dataclass(frozen=True)
class RoiChoice:
    """The tumour ROI chosen in one structure set; ``names`` = every ROI the set holds."""

    number: int | None
    name: str | None
    names: tuple[str, ...]
    matching: tuple[str, ...]


def referenced_series(ds: Dataset) -> tuple[set[str], set[str]]:
    """(SeriesInstanceUIDs, referenced image SOPInstanceUIDs) named by a structure set, from
    ReferencedFrameOfReferenceSequence and every ContourImageSequence."""
    series: set[str] = set()
    images: set[str] = set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for item in study.get("RTReferencedSeriesSequence", []):
                if item.get("SeriesInstanceUID"):
                    series.add(str(item.SeriesInstanceUID))
                for image in item.get("ContourImageSequence", []):
                    images.add(str(image.get("ReferencedSOPInstanceUID", "")))
    for roi in ds.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            for image in contour.get("ContourImageSequence", []):
                images.add(str(image.get("ReferencedSOPInstanceUID", "")))
    images.discard("")
    return series, images


def _has_closed_contours(ds: Dataset, number: int) -> bool:
    for roi in ds.get("ROIContourSequence", []):
        if int(roi.get("ReferencedROINumber", -1)) == number:
            return any(str(c.get("ContourGeometricType", "")).upper() == "CLOSED_PLANAR"
                       for c in roi.get("ContourSequence", []))
    return False


def choose_roi(ds: Dataset, pattern: str) -> RoiChoice:
    """The ROI whose name matches ``pattern`` (regex, case-insensitive) and has closed contours.

    ``number`` is None when no ROI or several match (``matching`` lists them).
    """
    regex = re.compile(pattern, re.IGNORECASE)
    rois = [(int(r.ROINumber), str(r.get("ROIName", "")).strip())
            for r in ds.get("StructureSetROISequence", [])]
    matching = [(n, name) for n, name in rois if regex.search(name) and _has_closed_contours(ds, n)]
    names = tuple(name for _n, name in rois)
    if len(matching) == 1:
        return RoiChoice(matching[0][0], matching[0][1], names, (matching[0][1],))
    return RoiChoice(None, None, names, tuple(name for _n, name in matching))


def roi_contours(ds: Dataset, number: int) -> list[np.ndarray]:
    """The CLOSED_PLANAR contours of ROI ``number``: one (N, 3) array of points (mm) each."""
    out = []
    for roi in ds.get("ROIContourSequence", []):
        if int(roi.get("ReferencedROINumber", -1)) != number:
            continue
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
                continue
            data = np.asarray([float(v) for v in contour.get("ContourData", [])], dtype=float)
            if data.size >= 9 and data.size % 3 == 0:
                out.append(data.reshape(-1, 3))
    return out


def _fill_polygon(polygon: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Boolean (y, x) mask of the voxel centres inside a polygon given in (x, y) indices."""
    mask = np.zeros(shape_yx, dtype=bool)
    lo = np.maximum(np.floor(polygon.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(polygon.max(axis=0)).astype(int), np.array(shape_yx[::-1]) - 1)
    if np.any(hi < lo):
        return mask
    xs, ys = np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1)
    grid_x, grid_y = np.meshgrid(xs, ys)
    centres = np.column_stack([grid_x.ravel(), grid_y.ravel()])
    inside = PolygonPath(polygon, closed=False).contains_points(centres)
    mask[lo[1]: hi[1] + 1, lo[0]: hi[0] + 1] = inside.reshape(grid_x.shape)
    return mask


def rasterise_contours(contours: list[np.ndarray], reference: sitk.Image, patient: str,
                       path: Path) -> tuple[sitk.Image, int]:
    """A uint8 0/1 mask on ``reference``'s grid from planar contours (mm); also returns how
    many contours fell outside the image. CohortError when a contour does not lie in a slice
    plane of the image or every contour falls outside it."""
    origin = np.asarray(reference.GetOrigin())
    matrix = np.asarray(reference.GetDirection()).reshape(3, 3) @ np.diag(reference.GetSpacing())
    to_index = np.linalg.inv(matrix)
    nx, ny, nz = reference.GetSize()
    mask = np.zeros((nz, ny, nx), dtype=bool)
    outside = 0
    for points in contours:
        index = (points - origin) @ to_index.T  # continuous (x, y, z) indices
        k = index[:, 2]
        if k.max() - k.min() > PLANE_TOLERANCE:
            raise CohortError(
                f"a contour spans {k.max() - k.min():.2f} slices of the image it is drawn on; "
                "it does not lie in one slice plane (contours oblique to the image slices are "
                "not supported).", patient_id=patient, path=path,
                fix="draw the structure on the image series it references (axial contours).")
        slice_index = int(round(float(k.mean())))
        if not 0 <= slice_index < nz:
            outside += 1
            continue
        mask[slice_index] ^= _fill_polygon(index[:, :2], (ny, nx))
    if contours and outside == len(contours):
        raise CohortError(
            f"all {outside} contours lie outside the image they reference (slices 0 to "
            f"{nz - 1}).", patient_id=patient, path=path,
            fix="check that the structure set belongs to this image series.")
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image, outside
