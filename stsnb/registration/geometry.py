"""Image geometry helpers (physical mm, SimpleITK index order x, y, z): boxes, crops, coverage."""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk


def corners_mm(image: sitk.Image) -> np.ndarray:
    """Physical positions (mm) of the 8 outer corners of the image's field of view, (8, 3)."""
    size = image.GetSize()
    points = []
    for corner in itertools.product(*((-0.5, n - 0.5) for n in size)):
        points.append(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]))
    return np.asarray(points)


def centre_mm(image: sitk.Image) -> np.ndarray:
    """Physical position (mm) of the centre of the image's field of view."""
    size = image.GetSize()
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))


def index_box(reference: sitk.Image, points_mm: np.ndarray,
              margin_mm: float | tuple[float, float, float] = 0.0
              ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Index range [lo, hi) of `reference` holding `points_mm` (+ margin), clipped; None when
    empty."""
    margin = np.broadcast_to(np.asarray(margin_mm, dtype=float), (3,))
    spacing = np.asarray(reference.GetSpacing())
    index = np.asarray([reference.TransformPhysicalPointToContinuousIndex(p.tolist())
                        for p in np.asarray(points_mm, dtype=float)])
    pad = margin / spacing
    lo = np.floor(index.min(axis=0) - pad + 0.5).astype(int)
    hi = np.ceil(index.max(axis=0) + pad + 0.5).astype(int)
    size = np.asarray(reference.GetSize())
    lo, hi = np.maximum(lo, 0), np.minimum(hi, size)
    if np.any(hi - lo < 1):
        return None
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def crop(image: sitk.Image, box: tuple[tuple[int, ...], tuple[int, ...]]) -> sitk.Image:
    """The sub-image of index range [lo, hi) (keeps its physical position)."""
    (x0, y0, z0), (x1, y1, z1) = box
    return image[x0:x1, y0:y1, z0:z1]


def mask_box(mask: sitk.Image) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Index range [lo, hi) of the non-zero voxels of a mask; None when it is empty."""
    array = sitk.GetArrayViewFromImage(mask)
    nonzero = np.nonzero(array)
    if nonzero[0].size == 0:
        return None
    lo = tuple(int(a.min()) for a in nonzero[::-1])
    hi = tuple(int(a.max()) + 1 for a in nonzero[::-1])
    return lo, hi


def box_corners_mm(image: sitk.Image, box: tuple[tuple[int, ...], tuple[int, ...]]) -> np.ndarray:
    """Physical corners (mm) of the voxel centres bounding an index box, (8, 3)."""
    lo, hi = box
    return np.asarray([
        image.TransformIndexToPhysicalPoint([int(c) for c in corner])
        for corner in itertools.product(*((a, b - 1) for a, b in zip(lo, hi, strict=True)))
    ])


def touches_edge(mask: sitk.Image) -> bool:
    """True when a non-zero voxel lies on a face of the volume."""
    box = mask_box(mask)
    if box is None:
        return False
    lo, hi = box
    return any(a == 0 for a in lo) or any(b == n for b, n in zip(hi, mask.GetSize(), strict=True))


def coverage_on_grid(moving: sitk.Image, reference: sitk.Image,
                     transform: sitk.Transform) -> sitk.Image:
    """Mask (uint8) of the reference voxels whose mapped point falls inside `moving`'s FOV."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8)
    ones.CopyInformation(moving)
    ones = ones + 1
    return sitk.Resample(ones, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def near_mask(work: sitk.Image, gtv: sitk.Image, distance_mm: float) -> sitk.Image:
    """Voxels of `work` within `distance_mm` (mm) of the tumour mask `gtv` (on any grid)."""
    mask = sitk.Resample(sitk.Cast(gtv > 0, sitk.sitkUInt8), work, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    distance = sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return sitk.Cast(distance <= distance_mm, sitk.sitkUInt8)
