"""Rigid MR-to-CT registration: Mattes MI, multi-resolution regular-step descent, Euler 3-D.

The CT is fixed and the MR moving, so the transform maps CT points (mm) to MR points (mm) and
resamples the MR onto the CT grid directly. Initialisation (``initialization``):

- ``scanner``: the images' own physical positions (identity), rotations about the MR centre;
- ``geometry``: the centres of the two fields of view aligned (SimpleITK GEOMETRY initialiser);
- ``auto``: both candidates; ``scanner`` only competes when the MR overlaps the CT in scanner
  coordinates, and then it is kept unless a candidate more than ``initialization_far_mm`` away
  improves the start metric by at least ``initialization_min_gain`` (relative): images that
  overlap where the scanner put them are usually close to aligned already.

A step is kept only when it improves on its start by the metric it optimises, evaluated as
optimised (the last level's image, the same mask and the same fixed sample points for the start
and the end); otherwise the start is kept and the result says why (``rejected``).

The CT is cropped to the region the MR can reach (its FOV + 25 mm), both images are binned to
about ``working_spacing_mm``, and the coarse-to-fine descent restarts rotated about, then
shifted along, the CT z axis (``rigid_z_rotations_deg``, ``rigid_z_starts_mm``): a limb
looks much alike along its axis, and a single descent often stops in a local optimum there
(measured on the synthetic cohort). Regular-step gradient descent is the optimizer: plain gradient
descent with an estimated learning rate stopped early on this metric.

With ``rigid_focus_mm`` > 0 the metric samples only CT points within that distance (mm) of the
GTV, like ``bspline_focus_mm`` of the deformable step: the tumour's neighbourhood decides the
alignment, not the rest of a large field of view (0, the default, = the whole overlap).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import SimpleITK as sitk

from stsnb.core.config import RegistrationConfig
from stsnb.registration.errors import RegistrationError
from stsnb.registration.geometry import centre_mm, corners_mm, crop, index_box, near_mask
from stsnb.registration.history import HISTORY_COLUMNS, MetricRecorder, metric_value, sampling_seed

#: Margin (mm) around the MR FOV, mapped into the CT, kept when cropping the fixed image.
FIXED_CROP_MARGIN_MM = 25.0
#: Fewest fixed voxels in the cropped region for a candidate to be evaluated.
MIN_OVERLAP_VOXELS = 1000
#: Regular-step gradient descent: first and smallest step (mm of physical shift); the step
#: halves whenever the gradient turns (it converges where plain gradient descent stalls early).
RSGD_FIRST_STEP_MM = 2.0
RSGD_MIN_STEP_MM = 0.01
#: Candidates (after the restarts) taken through the last level; the best by the metric over
#: every voxel of that level wins (near-equal optima along the limb axis are common).
FINALISTS = 3


@dataclass(frozen=True)
class RigidResult:
    """A rigid CT->MR transform with how it was found."""

    transform: sitk.Euler3DTransform
    history: pd.DataFrame  # step, level, iteration, metric (Mattes MI, negative = better)
    initialization: str  # scanner | geometry
    scanner_overlap: bool  # the MR overlapped the CT in scanner coordinates
    metric: float  # metric of the optimised transform (kept, or rejected for the start)
    stop_condition: str
    seconds: float
    start_metric: float = float("nan")  # the metric of the start, evaluated as `metric`
    rejected: str = ""  # why the optimised transform was not kept (the start was), or ""
    start_metrics: dict[str, float] | None = None  # initial candidates' start metrics, by name
    start_distance_mm: float = float("nan")  # scanner start to the best-metric start (mm)


def accept_step(start: sitk.Transform, start_metric: float, end: sitk.Transform,
                end_metric: float, what: str) -> tuple[sitk.Transform, str]:
    """The end of a step when its metric (lower = better) improved on the start's, else the
    start with the reason (a start whose metric cannot be computed never wins)."""
    if not np.isfinite(start_metric) or end_metric < start_metric:
        return end, ""
    return start, (f"{what}: metric {end_metric:.4f} not better than at its start "
                   f"{start_metric:.4f}, start kept")


def choose_start(scored: list[tuple[float, str, sitk.Transform, sitk.Image]],
                 scanner_overlap: bool, fixed: sitk.Image,
                 config: RegistrationConfig) -> tuple[tuple, float]:
    """The initial candidate to optimise from, and its distance (mm, at the CT centre) from
    the scanner positions: the best by the start metric, except that overlapping scanner
    positions are kept unless a candidate farther than `initialization_far_mm` improves the
    metric by at least `initialization_min_gain` of its magnitude."""
    best = min(scored, key=lambda s: s[0])
    scanner = next((s for s in scored if s[1] == "scanner"), None)
    if scanner is None or best is scanner:
        return best, 0.0 if best is scanner else float("nan")
    centre = centre_mm(fixed).tolist()
    distance = float(np.linalg.norm(np.subtract(best[2].TransformPoint(centre),
                                                scanner[2].TransformPoint(centre))))
    gain = (scanner[0] - best[0]) / max(abs(scanner[0]), 1e-12)
    if (scanner_overlap and distance > config.initialization_far_mm
            and gain < config.initialization_min_gain):
        return scanner, distance
    return best, distance


def as_float(image: sitk.Image) -> sitk.Image:
    """The image as float32 (what the metric and the resampler work on)."""
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def working_image(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """`image` (float32) binned (voxel averages) along each axis finer than `spacing_mm`.

    Registration runs on these: less noise, and the multi-resolution pyramid costs less.
    """
    image = as_float(image)
    if spacing_mm <= 0:
        return image
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def check_not_constant(image: sitk.Image, what: str) -> None:
    """Raise RegistrationError when every voxel of `image` has the same value."""
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    if stats.GetMaximum() == stats.GetMinimum():
        raise RegistrationError(
            f"the {what} image has a constant intensity ({stats.GetMinimum():g} everywhere): "
            "there is no structure to register.",
            fix="re-export the image (a constant volume is a failed or blank export), or "
            "remove it so that curation excludes the patient.",
        )


def fixed_region(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                 margin_mm: float = FIXED_CROP_MARGIN_MM) -> sitk.Image | None:
    """`fixed` cropped to where `transform` can map points into `moving`'s FOV; None if empty."""
    inverse = transform.GetInverse()
    mapped = np.asarray([inverse.TransformPoint(p.tolist()) for p in corners_mm(moving)])
    box = index_box(fixed, mapped, margin_mm)
    if box is None:
        return None
    region = crop(fixed, box)
    return region if np.prod(region.GetSize()) >= MIN_OVERLAP_VOXELS else None


def _method(config: RegistrationConfig, seed: int, shrink: tuple[int, ...],
            sigmas: tuple[float, ...], iterations: int,
            mask: sitk.Image | None = None) -> sitk.ImageRegistrationMethod:
    """The rigid registration method; `mask` (CT points, any grid) restricts the metric."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.mi_histogram_bins)
    if mask is not None:
        method.SetMetricFixedMask(mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(config.mi_sampling_fraction, sampling_seed(seed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=RSGD_FIRST_STEP_MM, minStep=RSGD_MIN_STEP_MM, numberOfIterations=iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _evaluate(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
              config: RegistrationConfig, seed: int, mask: sitk.Image | None = None) -> float:
    """Metric of `transform` at the coarsest level's smoothing (inf when it cannot be computed)."""
    method = _method(config, seed, (1,), (0.0,), 1, mask)
    method.SetInitialTransform(transform, inPlace=False)
    shrink = config.rigid_shrink_factors[0]
    sigma = config.rigid_smoothing_sigmas_mm[0]
    small_fixed = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, sigma) if sigma > 0
                              else fixed, [shrink] * 3)
    try:
        return metric_value(method, small_fixed, moving)
    except RuntimeError:
        return float("inf")


def initial_candidates(fixed: sitk.Image, moving: sitk.Image,
                       initialization: str) -> dict[str, sitk.Euler3DTransform]:
    """The initial transforms to try, by name (scanner, geometry)."""
    candidates = {}
    if initialization in ("auto", "scanner"):
        scanner = sitk.Euler3DTransform()
        scanner.SetCenter(centre_mm(moving).tolist())
        candidates["scanner"] = scanner
    if initialization in ("auto", "geometry"):
        geometry = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.GEOMETRY,
        )
        candidates["geometry"] = sitk.Euler3DTransform(geometry)
    return candidates


def focus_mask(fixed: sitk.Image, gtv: sitk.Image | None,
               config: RegistrationConfig) -> sitk.Image | None:
    """CT voxels within `rigid_focus_mm` (mm) of the GTV, or None (0 = the whole overlap).

    Raises RegistrationError when a focus is asked for without a non-empty tumour mask.
    """
    if config.rigid_focus_mm <= 0:
        return None
    mask = near_mask(fixed, gtv, config.rigid_focus_mm) if gtv is not None else None
    if mask is None or not sitk.GetArrayViewFromImage(mask).any():
        raise RegistrationError(
            f"rigid_focus_mm = {config.rigid_focus_mm:g} restricts the rigid metric to the "
            "tumour's neighbourhood, but the tumour mask is empty.",
            fix="check gtv.nii.gz; or set rigid_focus_mm = 0 in the [registration] table of "
            "cohort.toml.",
        )
    return mask


def register_rigid(fixed: sitk.Image, moving: sitk.Image, config: RegistrationConfig,
                   seed: int = 0, what: str = "MR", gtv: sitk.Image | None = None) -> RigidResult:
    """Register `moving` (MR) to `fixed` (CT) rigidly; the transform maps CT points to MR points.

    `gtv` (the tumour mask on the CT grid) is needed when `config.rigid_focus_mm` > 0: the
    metric then samples only CT points within that distance (mm) of it. Raises
    RegistrationError for a constant image or when no initialisation overlaps the CT.
    """
    started = time.perf_counter()
    fixed, moving = as_float(fixed), as_float(moving)
    check_not_constant(fixed, "CT")
    check_not_constant(moving, what)
    mask = focus_mask(fixed, gtv, config)
    scanner_overlap = fixed_region(fixed, moving, sitk.Euler3DTransform(), 0.0) is not None
    scored = []
    for name, candidate in initial_candidates(fixed, moving, config.initialization).items():
        region = fixed_region(fixed, moving, candidate)
        if region is None:
            continue
        scored.append((_evaluate(region, moving, candidate, config, seed, mask), name,
                       candidate, region))
    scored = [s for s in scored if np.isfinite(s[0])]
    if not scored:
        raise RegistrationError(
            f"the {what} image does not overlap the CT with the '{config.initialization}' "
            "initialisation (its field of view maps outside the CT volume).",
            fix="check the image's origin and direction cosines; or set initialization = "
            '"geometry" in the [registration] table of cohort.toml to align the centres of the '
            "two fields of view instead of their scanner positions.",
        )
    (_, name, transform, region), distance = choose_start(scored, scanner_overlap, fixed,
                                                           config)
    start = sitk.Euler3DTransform(transform)  # the optimisers update `transform` in place
    region = working_image(region, config.working_spacing_mm)
    moving = working_image(moving, config.working_spacing_mm)
    levels = list(zip(config.rigid_shrink_factors, config.rigid_smoothing_sigmas_mm, strict=True))
    try:
        transform, history, metric, stop = _multi_start(region, moving, transform, levels,
                                                        config, seed, mask)
    except RuntimeError as exc:
        raise RegistrationError(
            f"the rigid registration of the {what} image failed: {str(exc).strip()[-300:]}",
            fix="check that the MR and the CT show the same anatomy.",
        ) from exc
    start_metric = _score(_level_image(region, levels[-1]), moving, start, config, seed, mask)
    kept, rejected = accept_step(start, start_metric, transform, metric, "rigid")
    return RigidResult(
        transform=kept,
        history=history,
        initialization=name,
        scanner_overlap=scanner_overlap,
        metric=metric,
        stop_condition=stop,
        seconds=time.perf_counter() - started,
        start_metric=start_metric,
        rejected=rejected,
        start_metrics={s[1]: float(s[0]) for s in scored},
        start_distance_mm=distance,
    )


def _optimise(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Euler3DTransform,
              levels: list[tuple[int, float]], first_level: int, config: RegistrationConfig,
              seed: int, mask: sitk.Image | None = None) -> tuple[float, MetricRecorder, str]:
    """Run the levels from `transform` (updated in place): (final metric, history, stop)."""
    method = _method(config, seed, tuple(f for f, _ in levels), tuple(s for _, s in levels),
                     config.rigid_iterations, mask)
    method.SetInitialTransform(transform, inPlace=True)
    recorder = MetricRecorder("rigid", level_offset=first_level)
    recorder.attach(method)
    method.Execute(fixed, moving)
    return float(method.GetMetricValue()), recorder, method.GetOptimizerStopConditionDescription()


def start_offsets(config: RegistrationConfig) -> list[list[tuple[float, float]]]:
    """Rounds of restarts, (shift along the CT z axis in mm, rotation about it in degrees):
    rotations first, then shifts from the best rotation (empty rounds left out)."""
    rounds = [[(0.0, rz) for rz in config.rigid_z_rotations_deg],
              [(dz, 0.0) for dz in config.rigid_z_starts_mm]]
    return [r for r in rounds if r]


def _level_image(image: sitk.Image, level: tuple[int, float]) -> sitk.Image:
    """`image` as a registration level sees it: smoothed (sigma, mm), then shrunk."""
    shrink, sigma = level
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma) if sigma > 0 else image
    return sitk.Shrink(smoothed, [shrink] * image.GetDimension()) if shrink > 1 else smoothed


def _score(image: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
           config: RegistrationConfig, seed: int, mask: sitk.Image | None = None) -> float:
    """Metric of `transform` over every voxel of `image` (a level's image; lower = better, inf
    when it cannot be computed)."""
    method = _method(config, seed, (1,), (0.0,), 1, mask)
    method.SetInitialTransform(transform, inPlace=False)
    try:
        return metric_value(method, image, moving)
    except RuntimeError:
        return float("inf")


def _shifted(transform: sitk.Euler3DTransform, dz: float, rz: float) -> sitk.Euler3DTransform:
    """`transform` rotated by `rz` degrees about the CT z axis and shifted `dz` mm along it."""
    start = sitk.Euler3DTransform(transform)
    params = list(start.GetParameters())
    params[2] += np.deg2rad(rz)
    params[5] += dz
    start.SetParameters(params)
    return start


def _multi_start(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Euler3DTransform,
                 levels: list[tuple[int, float]], config: RegistrationConfig, seed: int,
                 mask: sitk.Image | None = None):
    """Coarse levels from `transform`; then restarts rotated about, then shifted along, the CT z
    axis (a limb looks alike along its axis, so the metric has local optima there), each taken
    through the next-to-last level from the best so far. Candidates are ranked by the metric
    over every voxel of the last level; the FINALISTS best go through the last level, and the
    best of them by that metric wins."""
    search = max(0, len(levels) - 2)
    image = _level_image(fixed, levels[-1])
    metric, recorder, stop = _optimise(fixed, moving, transform, levels[: search + 1], 0,
                                       config, seed, mask)
    coarse_rows = [r for r in recorder.rows if r["level"] < search]
    candidates = [(_score(image, moving, transform, config, seed, mask), transform,
                   recorder.rows, stop)]
    for offsets in start_offsets(config):
        origin = min(candidates, key=lambda c: c[0])[1]
        for dz, rz in offsets:
            start = _shifted(origin, dz, rz)
            try:
                _, restart, stop = _optimise(fixed, moving, start, levels[search:search + 1],
                                             search, config, seed, mask)
            except RuntimeError:
                continue  # this start maps the MR out of the CT: skip it
            candidates.append((_score(image, moving, start, config, seed, mask), start,
                               coarse_rows + restart.rows, stop))
    candidates.sort(key=lambda c: c[0])
    if len(levels) == 1:
        value, transform, rows, stop = candidates[0]
        return transform, pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)), value, stop
    finalists = []
    for _, start, rows, _ in candidates[:FINALISTS]:
        _, final, stop = _optimise(fixed, moving, start, levels[-1:], len(levels) - 1, config,
                                   seed, mask)
        finalists.append((_score(image, moving, start, config, seed, mask), start,
                          rows + final.rows, stop))
    value, transform, rows, stop = min(finalists, key=lambda c: c[0])
    return transform, pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)), value, stop


def refine_sequence(reference: sitk.Image, sequence: sitk.Image, config: RegistrationConfig,
                    seed: int = 0, what: str = "MR"
                    ) -> tuple[sitk.Transform, pd.DataFrame, str]:
    """Rigid MR-to-MR refinement within the session (inter-sequence motion).

    Returns the transform mapping reference-MR points to `sequence` points (identity start;
    kept when the refinement does not improve its metric), its metric history and why the
    refinement was rejected ("" when kept).
    """
    reference = working_image(reference, config.working_spacing_mm)
    sequence = working_image(sequence, config.working_spacing_mm)
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre_mm(reference).tolist())
    method = _method(config, seed, (2, 1), (1.0, 0.0), config.refine_iterations)
    method.SetInitialTransform(transform, inPlace=True)
    recorder = MetricRecorder(f"refine {what}")
    recorder.attach(method)
    try:
        method.Execute(reference, sequence)
    except RuntimeError as exc:
        raise RegistrationError(
            f"the rigid refinement of {what} to the reference MR failed: "
            f"{str(exc).strip()[-300:]}",
            fix="check that the sequences of the session overlap; or set refine_sequences = "
            "false in the [registration] table of cohort.toml.",
        ) from exc
    identity = sitk.Euler3DTransform()
    identity.SetCenter(centre_mm(reference).tolist())
    kept, rejected = accept_step(
        identity, _score(reference, sequence, identity, config, seed),
        transform, _score(reference, sequence, transform, config, seed), f"refine {what}")
    return kept, recorder.table(), rejected
