"""Deformable B-spline refinement (Mattes MI) on top of the rigid CT->MR transform.

The B-spline lives on a region of the CT: the MR's field of view (after the rigid step) in the
axial plane and the tumour z-extent +- ``roi_margin_mm`` along z (never less than the +- 10 mm
slab that preprocessing keeps). Outside that region the rigid transform alone applies. The
full map is ``T(p) = R(p + b(p))``: the B-spline displacement first, then the rigid transform.

The metric samples CT points at least FOV_INSET_MM inside the MR field of view and within
``bspline_focus_mm`` of the GTV (the tumour neighbourhood, where the contours and the slices
that later stages use lie), on images binned to ``working_spacing_mm``, unsmoothed. These
choices, the coarse mesh (``bspline_mesh_mm``) and the damped z steps were measured against the
synthetic cohort's ground truth: smoothing, finer meshes, a quasi-Newton optimizer, points
everywhere and free z steps each made the result worse than the rigid one for some patients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import SimpleITK as sitk

from stsnb.core.config import RegistrationConfig
from stsnb.registration.errors import RegistrationError
from stsnb.registration.geometry import (
    box_corners_mm,
    corners_mm,
    coverage_on_grid,
    crop,
    index_box,
    mask_box,
    near_mask,
)
from stsnb.registration.history import MetricRecorder, metric_value, sampling_seed
from stsnb.registration.rigid import as_float, working_image

#: The deformable metric samples only CT points mapping at least this far inside the MR FOV (mm).
FOV_INSET_MM = 10.0
#: First step of the B-spline optimizer (mm, norm over all coefficients).
BSPLINE_FIRST_STEP_MM = 2.0


@dataclass(frozen=True)
class DeformableResult:
    """The composite CT->MR transform (rigid after B-spline) and its B-spline part."""

    transform: sitk.CompositeTransform
    bspline: sitk.BSplineTransform
    region: sitk.Image  # the CT region the B-spline covers (for the Jacobian map)
    history: pd.DataFrame
    metric: float
    stop_condition: str
    seconds: float
    #: the metric of the start (the rigid transform, a zero B-spline) and of the end, both
    #: evaluated as optimised: the last level's image, the same mask and the same sample points
    start_metric: float = float("nan")
    end_metric: float = float("nan")


def deformable_region(fixed: sitk.Image, moving: sitk.Image, gtv: sitk.Image,
                      rigid: sitk.Transform, margin_mm: float) -> sitk.Image:
    """The CT region of the deformable step: MR FOV in-plane, tumour z-extent +- margin in z."""
    inverse = rigid.GetInverse()
    mr_in_ct = np.asarray([inverse.TransformPoint(p.tolist()) for p in corners_mm(moving)])
    box = index_box(fixed, mr_in_ct, 0.0)
    tumour = mask_box(gtv)
    if box is None or tumour is None:
        raise RegistrationError(
            "the MR field of view (after rigid registration) or the tumour mask is empty on "
            "the CT grid: there is no region to refine deformably.",
            fix="check the tumour mask gtv.nii.gz and the MR's geometry.",
        )
    tumour_box = index_box(fixed, box_corners_mm(gtv, tumour), (0.0, 0.0, margin_mm))
    lo = (box[0][0], box[0][1], tumour_box[0][2])
    hi = (box[1][0], box[1][1], tumour_box[1][2])
    return crop(fixed, (lo, hi))


def _sampling_fractions(image: sitk.Image, samples: int, shrink: tuple[int, ...],
                        kept: float = 1.0) -> list[float]:
    """Per-level sampling fractions giving about `samples` random points at every level when a
    fraction `kept` of the voxels lies inside the metric mask."""
    return [min(1.0, samples / max(kept, 1e-3)
                / float(np.prod([max(1, n // f) for n in image.GetSize()]))) for f in shrink]


def sampling_mask(work: sitk.Image, moving: sitk.Image, rigid: sitk.Transform,
                  inset_mm: float = FOV_INSET_MM) -> sitk.Image:
    """Voxels of `work` (CT) that map at least `inset_mm` inside the MR field of view.

    Without it, mutual information can improve by pushing awkward CT points out of the MR
    field of view, where they no longer count; points near its edge are left out instead.
    """
    inside = coverage_on_grid(moving, work, rigid)
    radius = [max(1, int(round(inset_mm / s))) for s in work.GetSpacing()]
    padded = sitk.ConstantPad(inside, radius, radius, 0)
    eroded = sitk.BinaryErode(padded, radius, sitk.sitkBox, 0, 1)
    return sitk.Crop(eroded, radius, radius)


def set_optimizer(method: sitk.ImageRegistrationMethod, config: RegistrationConfig,
                  n_parameters: int) -> None:
    """Regular-step gradient descent on the B-spline coefficients (mm), the z components damped.

    The step starts at BSPLINE_FIRST_STEP_MM (norm over all coefficients) and halves whenever
    the gradient turns, so no step throws the MR away (a quasi-Newton line search did, measured
    on the synthetic cohort). The z (limb-axis) components get `bspline_z_damping` times
    smaller steps: thick MR slices and a limb that looks alike along its axis give the metric
    little z information, and undamped z coefficients drifted away from the truth while the
    metric still rose.
    """
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=BSPLINE_FIRST_STEP_MM, minStep=0.01,
        numberOfIterations=config.bspline_iterations, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    per_axis = n_parameters // 3
    method.SetOptimizerScales([1.0] * (2 * per_axis) + [config.bspline_z_damping] * per_axis)


def register_deformable(fixed: sitk.Image, moving: sitk.Image, gtv: sitk.Image,
                        rigid: sitk.Transform, config: RegistrationConfig,
                        seed: int = 0) -> DeformableResult:
    """Refine `rigid` (CT->MR) with a B-spline over the tumour region of the CT (`gtv` on it)."""
    started = time.perf_counter()
    region = deformable_region(as_float(fixed), moving, gtv, rigid, config.roi_margin_mm)
    work = working_image(region, config.working_spacing_mm)
    moving = working_image(moving, config.working_spacing_mm)
    extent = np.asarray(region.GetSize()) * np.asarray(region.GetSpacing())
    mesh = [max(1, int(round(e / config.bspline_mesh_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(region, mesh, order=3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.mi_histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    mask = sampling_mask(work, moving, rigid)
    if config.bspline_focus_mm > 0:
        mask = sitk.And(mask, near_mask(work, gtv, config.bspline_focus_mm))
    kept = float(sitk.GetArrayViewFromImage(mask).mean())
    if kept == 0.0:
        raise RegistrationError(
            f"the MR field of view (after rigid registration) leaves no CT voxel at least "
            f"{FOV_INSET_MM:g} mm inside it in the tumour region.",
            fix="check that the MR covers the tumour; or run rigid only (rigid_only=True).")
    method.SetMetricFixedMask(mask)
    method.SetMetricSamplingPercentagePerLevel(
        _sampling_fractions(work, config.bspline_samples, config.bspline_shrink_factors, kept),
        sampling_seed(seed))
    method.SetInterpolator(sitk.sitkLinear)
    set_optimizer(method, config, bspline.GetNumberOfParameters())
    method.SetShrinkFactorsPerLevel(list(config.bspline_shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(config.bspline_smoothing_sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetMovingInitialTransform(rigid)
    fractions = _sampling_fractions(work, config.bspline_samples, config.bspline_shrink_factors,
                                    kept)
    last = (config.bspline_shrink_factors[-1], config.bspline_smoothing_sigmas_mm[-1])

    def evaluate(transform: sitk.BSplineTransform) -> float:
        return _metric_as_optimised(work, moving, rigid, transform, mask, last, fractions[-1],
                                    config, seed)

    start_metric = evaluate(sitk.BSplineTransform(bspline))  # zero coefficients
    method.SetInitialTransform(bspline, inPlace=True)
    recorder = MetricRecorder("deformable")
    recorder.attach(method)
    try:
        method.Execute(work, moving)
    except RuntimeError as exc:
        raise RegistrationError(
            f"the deformable registration failed: {str(exc).strip()[-300:]}",
            fix="check the MR covers the tumour; or run rigid only (rigid_only=True).",
        ) from exc
    return DeformableResult(
        transform=compose(rigid, bspline),
        bspline=bspline,
        region=region,
        history=recorder.table(),
        metric=float(method.GetMetricValue()),
        stop_condition=method.GetOptimizerStopConditionDescription(),
        seconds=time.perf_counter() - started,
        start_metric=start_metric,
        end_metric=evaluate(bspline),
    )


def _metric_as_optimised(work: sitk.Image, moving: sitk.Image, rigid: sitk.Transform,
                         bspline: sitk.BSplineTransform, mask: sitk.Image,
                         level: tuple[int, float], fraction: float,
                         config: RegistrationConfig, seed: int) -> float:
    """Mattes MI (lower = better) of rigid after `bspline` on the last level's image, with the
    deformable step's mask, sampling fraction and seed (the same points for any transform);
    inf when it cannot be computed."""
    shrink, sigma = level
    image = sitk.SmoothingRecursiveGaussian(work, sigma) if sigma > 0 else work
    image = sitk.Shrink(image, [shrink] * 3) if shrink > 1 else image
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.mi_histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(fraction, sampling_seed(seed))
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetMovingInitialTransform(rigid)
    method.SetInitialTransform(bspline, inPlace=False)
    try:
        return metric_value(method, image, moving)
    except RuntimeError:
        return float("inf")


def deformable_rejection(result: DeformableResult, summary: DeformationSummary,
                         config: RegistrationConfig) -> str:
    """Why the deformable result must not be kept (the rigid one is), or "": it does not
    improve its metric over the rigid start, it folds, or it displaces a point too far."""
    reasons = []
    if np.isfinite(result.start_metric) and not result.end_metric < result.start_metric:
        reasons.append(f"metric {result.end_metric:.4f} not better than at the rigid start "
                       f"{result.start_metric:.4f}")
    if summary.min_jacobian <= 0:
        reasons.append(f"it folds (min Jacobian {summary.min_jacobian:.2f} <= 0)")
    if summary.max_displacement_mm > config.bspline_max_displacement_mm:
        reasons.append(f"it displaces a point {summary.max_displacement_mm:.0f} mm > "
                       f"{config.bspline_max_displacement_mm:g} mm")
    return f"deformable: {'; '.join(reasons)}, rigid kept" if reasons else ""


def compose(*transforms: sitk.Transform) -> sitk.Transform:
    """T = t1(t2(...(tn(p)))): the last transform is applied first (SimpleITK's order); a
    single transform is returned as it is."""
    return transforms[0] if len(transforms) == 1 else sitk.CompositeTransform(list(transforms))


@dataclass(frozen=True)
class DeformationSummary:
    """The B-spline sampled on a grid over its region: Jacobian map, displacement, field."""

    jacobian: sitk.Image  # det of the Jacobian of p -> p + b(p) (unitless; <= 0 = folding)
    min_jacobian: float
    max_displacement_mm: float
    field: sitk.DisplacementFieldTransform  # b on that grid (identity outside the region)


def summarize_deformation(bspline: sitk.Transform, region: sitk.Image,
                          moving: sitk.Image | None = None, rigid: sitk.Transform | None = None,
                          step_mm: float = 2.0) -> DeformationSummary:
    """Sample `bspline` over `region` every ~`step_mm` (never finer than the region's voxels).

    The sampled field resamples images much faster than the B-spline itself and differs from
    it by far less than 0.01 mm (a cubic B-spline with knots >= 20 mm apart, linearly
    interpolated); the rigid part does not change the Jacobian (det R = 1). Given the MR
    (`moving`) and the `rigid` transform, the minimum Jacobian and the largest displacement
    are taken where the MR has data (elsewhere the deformed MR is zero whatever the field).
    """
    size = np.asarray(region.GetSize(), dtype=float)
    spacing = np.asarray(region.GetSpacing())
    new_spacing = np.maximum(spacing, step_mm)
    new_size = [max(2, int(np.ceil(n * s / t))) for n, s, t in zip(size, spacing, new_spacing,
                                                                    strict=True)]
    origin = region.TransformContinuousIndexToPhysicalPoint(
        [-0.5 + 0.5 * t / s for s, t in zip(spacing, new_spacing, strict=True)]
    )
    field = sitk.TransformToDisplacementField(
        bspline, sitk.sitkVectorFloat64, new_size, origin, new_spacing.tolist(),
        region.GetDirection(),
    )
    jacobian = sitk.Cast(sitk.DisplacementFieldJacobianDeterminant(field), sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(jacobian)
    norms = np.linalg.norm(sitk.GetArrayViewFromImage(field), axis=-1)
    inside = np.ones(values.shape, dtype=bool)
    if moving is not None and rigid is not None:
        inside = sitk.GetArrayFromImage(coverage_on_grid(moving, jacobian, rigid)) > 0
        inside = inside if inside.any() else np.ones(values.shape, dtype=bool)
    summary = {"min_jacobian": float(values[inside].min()),
               "max_displacement_mm": float(norms[inside].max())}
    return DeformationSummary(jacobian=jacobian, field=sitk.DisplacementFieldTransform(field),
                              **summary)
