"""QA measures of a registration: Dice of a propagated contour, landmark TRE, mutual information,
how far it moves the tumour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .errors import RegistrationError
from .history import sampling_seed

LANDMARK_COLUMNS = ("name", "ct_x", "ct_y", "ct_z", "mr_x", "mr_y", "mr_z")


def propagate_contour(mask: sitk.Image, reference: sitk.Image,
                      transform: sitk.Transform) -> sitk.Image:
    """A 0/1 mask drawn on the moving (MR) grid, mapped onto `reference` (CT grid), uint8.

    Linear interpolation of the mask then a 0.5 threshold: no inverse transform is needed,
    and the thick MR slices do not leave staircase artefacts.
    """
    soft = sitk.Resample(sitk.Cast(mask > 0, sitk.sitkFloat32), reference, transform,
                         sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(soft >= 0.5, sitk.sitkUInt8)


def mask_points_mm(mask: sitk.Image, max_points: int | None = None) -> np.ndarray:
    """Physical positions (mm, x y z) of the mask's non-zero voxels, (n, 3); with `max_points`,
    an even subsample of at most that many (every k-th voxel in array order)."""
    index = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(float)
    if max_points is not None and len(index) > max_points:
        index = index[:: int(np.ceil(len(index) / max_points))]
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    return np.asarray(mask.GetOrigin()) + (index * np.asarray(mask.GetSpacing())) @ direction.T


def displacements_mm(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """|T(p) - p| (mm) for each physical point p (rows)."""
    mapped = np.asarray([transform.TransformPoint(p) for p in points.tolist()])
    return np.linalg.norm(mapped - points, axis=1) if len(points) else np.zeros(0)


#: GTV voxels sampled for the tumour shift in the QA table.
SHIFT_POINTS = 2000


def tumour_shift_mm(transform: sitk.Transform, gtv: sitk.Image) -> float:
    """Mean distance (mm) the transform moves the CT's GTV voxels from their scanner positions
    (up to SHIFT_POINTS of them, evenly sampled); NaN for an empty mask."""
    distances = displacements_mm(transform, mask_points_mm(gtv, SHIFT_POINTS))
    return float(distances.mean()) if distances.size else float("nan")


def dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice overlap 2|A and B| / (|A| + |B|) of two masks on one grid (NaN when both empty)."""
    x = sitk.GetArrayViewFromImage(a) > 0
    y = sitk.GetArrayViewFromImage(b) > 0
    total = int(x.sum()) + int(y.sum())
    return float(2 * np.logical_and(x, y).sum() / total) if total else float("nan")


def read_landmarks(path: str | Path, patient_id: str | None = None) -> pd.DataFrame:
    """Landmark pairs (mm): name, ct_x, ct_y, ct_z (CT frame), mr_x, mr_y, mr_z (MR frame)."""
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise RegistrationError(f"the landmark file {path.name} cannot be read ({exc}).",
                                patient_id=patient_id, path=path,
                                fix="write it as CSV with columns " + ", ".join(LANDMARK_COLUMNS)
                                ) from exc
    missing = [c for c in LANDMARK_COLUMNS if c not in table.columns]
    coords = table[[c for c in LANDMARK_COLUMNS[1:] if c in table.columns]]
    if missing or coords.apply(pd.to_numeric, errors="coerce").isna().any().any():
        raise RegistrationError(
            f"the landmark file {path.name} lacks column(s) {', '.join(missing)} or holds "
            "non-numeric coordinates." if missing else
            f"the landmark file {path.name} holds empty or non-numeric coordinates.",
            patient_id=patient_id, path=path,
            fix="give every row a name and six coordinates in mm: " + ", ".join(LANDMARK_COLUMNS),
        )
    return table


def landmark_errors(transform: sitk.Transform, landmarks: pd.DataFrame) -> np.ndarray:
    """Distance (mm) between each CT landmark mapped by `transform` and its MR partner."""
    ct = landmarks[["ct_x", "ct_y", "ct_z"]].to_numpy(dtype=float)
    mr = landmarks[["mr_x", "mr_y", "mr_z"]].to_numpy(dtype=float)
    mapped = np.asarray([transform.TransformPoint(p.tolist()) for p in ct])
    return np.linalg.norm(mapped - mr, axis=1)


def mutual_information(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                       bins: int = 50, fraction: float = 0.2, seed: int = 0) -> float:
    """Mattes mutual information (nats, higher = better) of fixed vs moving mapped by `transform`.

    Evaluated on a fixed random sample of `fixed` (same seed = same points); NaN when too few
    points map inside the moving image.
    """
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(fraction, sampling_seed(seed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetMovingInitialTransform(transform)
    method.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
    try:
        value = method.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat32),
                                      sitk.Cast(moving, sitk.sitkFloat32))
    except RuntimeError:
        return float("nan")
    return float(-value)
