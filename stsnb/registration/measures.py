"""QA measures of a registration: Dice of a propagated contour, landmark TRE, mutual information,
how far it moves the tumour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from stsnb.registration.errors import RegistrationError
from stsnb.registration.history import metric_value, sampling_seed

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
        value = metric_value(method, sitk.Cast(fixed, sitk.sitkFloat32),
                             sitk.Cast(moving, sitk.sitkFloat32))
    except RuntimeError:
        return float("nan")
    return float(-value)


#: CT voxels at least this dense (HU) count as cortical bone (or calcification), a signal void
#: (dark) on T1w and T2w MR.
CORTEX_MIN_HU = 500.0
#: CT soft tissue (HU) over which the MR's reference intensity (median) is taken.
SOFT_TISSUE_HU = (-200.0, 200.0)
#: Fewest cortex voxels, inside the MR field of view, for a verdict on the bone.
MIN_CORTEX_VOXELS = 200
#: Ratios closer than this (relative) are a tie: the placements are alike around the bone.
CORTEX_TIE = 0.02
#: The bone check without registration: the MR placed at its scanner position against the same
#: MR moved by this much (mm) along each axis, within this margin (mm) around the GTV.
BONE_SHIFT_MM = 5.0
BONE_MARGIN_MM = 40.0
#: The MR's edge (mm) left out of the bone check (resampled crops have darkened borders).
BONE_EDGE_MM = 5.0
#: A shift must lower the cortex ratio by more than this (relative) to say the bone lies off
#: its scanner position, and the crop must hold at least BONE_MIN_VOXELS cortex voxels. Measured
#: on the registration tests' phantom (about 2 100 cortex voxels): an MR 6 mm off in-plane
#: lowers it by 40 %, 3 mm by 12 %, 8 mm along the limb by 10 %; in place, no shift lowers it.
#: On the TCIA sample (T1w in the CT's frame): 3 % and 6 % (5 200-7 900 voxels) and 34 % for
#: the patient with only 407 cortex voxels in the crop -- a coarse check of gross misplacement.
BONE_GAIN = 0.15
BONE_MIN_VOXELS = 1000


def cortex_ratio(hu: np.ndarray, mr: np.ndarray, inside: np.ndarray) -> tuple[float, int]:
    """The MR's mean over the CT's cortex divided by its median over the CT's soft tissue, over
    the voxels `inside` (CT grid arrays; HU, MR a.u.), and the number of cortex voxels (NaN
    ratio without cortex or soft tissue). Lower = the MR's signal void lies on the CT's bone."""
    cortex = inside & (hu >= CORTEX_MIN_HU)
    tissue = inside & (hu >= SOFT_TISSUE_HU[0]) & (hu <= SOFT_TISSUE_HU[1])
    n = int(np.count_nonzero(cortex))
    if not n or not np.count_nonzero(tissue):
        return float("nan"), n
    reference = float(np.median(mr[tissue]))
    return (float(mr[cortex].mean() / reference) if reference > 0 else float("nan")), n


def bone_check(ct: sitk.Image, image: sitk.Image, gtv: sitk.Image,
               shift_mm: float = BONE_SHIFT_MM, margin_mm: float = BONE_MARGIN_MM
               ) -> dict[str, float | bool | int]:
    """Does an MR placed by geometry alone put its bone where the CT's is? (No registration.)

    Around the GTV (+ `margin_mm`), the cortex ratio (`cortex_ratio`) of the MR at its scanner
    position against the MR moved by +-`shift_mm` along x, y and z, over CT voxels inside the
    MR's field of view in every placement: at the right place the ratio is lowest. Returns
    ``bone_ratio_scanner``, ``bone_ratio_best_shift``, ``cortex_voxels`` and
    ``bone_prefers_scanner`` (True unless a shift lowers the ratio by more than BONE_GAIN;
    NaN with fewer than BONE_MIN_VOXELS cortex voxels).
    """
    from stsnb.registration.geometry import box_corners_mm, crop, index_box, mask_box

    box = mask_box(gtv)
    unknown = {"bone_ratio_scanner": float("nan"), "bone_ratio_best_shift": float("nan"),
               "cortex_voxels": 0, "bone_prefers_scanner": float("nan")}
    if box is None:
        return unknown
    region = index_box(ct, box_corners_mm(gtv, box), margin_mm)
    ct_crop = crop(sitk.Cast(ct, sitk.sitkFloat32), region) if region else ct
    hu = sitk.GetArrayFromImage(ct_crop)
    edge = [max(1, int(round(BONE_EDGE_MM / sp))) for sp in image.GetSpacing()]
    ones = sitk.BinaryErode(sitk.Cast(image > 0, sitk.sitkUInt8), edge)  # no dark borders
    shifts = [(0.0, 0.0, 0.0)] + [tuple(sign * shift_mm * (axis == k) for k in range(3))
                                  for axis in range(3) for sign in (-1.0, 1.0)]
    placed, inside = [], np.ones(hu.shape, dtype=bool)
    for shift in shifts:
        move = sitk.TranslationTransform(3, shift)
        placed.append(sitk.GetArrayFromImage(sitk.Resample(
            image, ct_crop, move, sitk.sitkLinear, 0.0, sitk.sitkFloat32)))
        inside &= sitk.GetArrayFromImage(sitk.Resample(  # a copy: never view a temporary
            ones, ct_crop, move, sitk.sitkNearestNeighbor, 0)) > 0
    ratios = [cortex_ratio(hu, values, inside) for values in placed]
    scanner, n = ratios[0]
    best = min((r for r, _ in ratios[1:] if np.isfinite(r)), default=float("nan"))
    if n < BONE_MIN_VOXELS or not np.isfinite(scanner):
        return {**unknown, "cortex_voxels": n}
    return {"bone_ratio_scanner": scanner, "bone_ratio_best_shift": best, "cortex_voxels": n,
            "bone_prefers_scanner": bool(not best < scanner * (1 - BONE_GAIN))}
