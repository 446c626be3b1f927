"""One patient: rigid (+ deformable) registration of the MR session, resampling onto the CT grid,
contour propagation and the QA measures."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..config import RegistrationConfig
from ..imageio import read_image
from .deformable import (
    DeformableResult,
    DeformationSummary,
    compose,
    deformable_region,
    register_deformable,
    summarize_deformation,
)
from .errors import RegistrationError
from .geometry import coverage_on_grid, crop, mask_box, touches_edge
from .inputs import PatientInputs
from .measures import (
    dice,
    landmark_errors,
    mutual_information,
    propagate_contour,
    read_landmarks,
    tumour_shift_mm,
)
from .rigid import (
    RigidResult,
    check_not_constant,
    refine_sequence,
    register_rigid,
    working_image,
)

#: Integer pixel types kept for resampled images (rounded); anything else becomes float32.
_INTEGER_TYPES = {sitk.sitkInt16: (-32768, 32767), sitk.sitkUInt16: (0, 65535),
                  sitk.sitkUInt8: (0, 255), sitk.sitkInt8: (-128, 127)}


@dataclass
class PatientRegistration:
    """Everything one patient's registration produced (in memory; see stage.save_patient)."""

    patient_id: str
    reference: str
    rigid: RigidResult
    deformable: DeformableResult | None
    deformation: DeformationSummary | None
    rigid_transforms: dict[str, sitk.Transform]  # CT -> image, rigid only
    transforms: dict[str, sitk.Transform]  # CT -> image, final (rigid after B-spline)
    images: dict[str, sitk.Image]  # on the CT grid
    history: pd.DataFrame
    qa: dict[str, Any]


def resample_to_ct(image: sitk.Image, ct: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """`image` on the CT grid through `transform` (CT -> image), linear, 0 outside its FOV.

    Integer images stay in their type (rounded); others become float32.
    """
    pixel = image.GetPixelID()
    if pixel in _INTEGER_TYPES:
        low, high = _INTEGER_TYPES[pixel]
        out = sitk.Resample(image, ct, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out = sitk.Clamp(sitk.Round(out), sitk.sitkFloat32, low, high)
        return sitk.Cast(out, pixel)
    return sitk.Resample(image, ct, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _read(inputs: PatientInputs, path, what: str) -> sitk.Image:
    return read_image(path, inputs.patient_id, what)


def _guard(inputs: PatientInputs, path, step):
    """Run `step()`; give a RegistrationError the patient and the file."""
    try:
        return step()
    except RegistrationError as exc:
        raise exc.with_context(inputs.patient_id, path) from exc


def _tre(transform: sitk.Transform | None, landmarks: pd.DataFrame | None) -> tuple[float, float]:
    if transform is None or landmarks is None or landmarks.empty:
        return math.nan, math.nan
    errors = landmark_errors(transform, landmarks)
    return float(errors.mean()), float(errors.max())


def _gtv_coverage(mr: sitk.Image, gtv: sitk.Image, transform: sitk.Transform) -> float:
    """Fraction of the CT GTV voxels whose mapped point lies inside the MR field of view."""
    box = mask_box(gtv)
    if box is None:
        return math.nan
    region = crop(gtv, box)
    covered = sitk.GetArrayViewFromImage(coverage_on_grid(mr, region, transform)) > 0
    inside = sitk.GetArrayViewFromImage(region) > 0
    return float(np.logical_and(covered, inside).sum() / inside.sum())


def register_patient(inputs: PatientInputs, config: RegistrationConfig,
                     seed: int = 0) -> PatientRegistration:
    """Register the patient's MR session to the CT and measure how well it worked."""
    started = time.perf_counter()
    pid, ref = inputs.patient_id, inputs.reference
    ct = _read(inputs, inputs.ct, "ct")
    gtv = _read(inputs, inputs.gtv, "tumour mask")
    mr = {m: _read(inputs, path, m) for m, path in inputs.registered.items()}
    for m, image in mr.items():
        _guard(inputs, inputs.registered[m], lambda image=image, m=m: check_not_constant(image, m))
    rigid = _guard(inputs, inputs.registered[ref],
                   lambda: register_rigid(ct, mr[ref], config, seed=seed, what=ref, gtv=gtv))
    deformable, deformation = None, None
    exact: list[sitk.Transform] = [rigid.transform]  # CT -> reference MR, as saved
    fast: list[sitk.Transform] = [rigid.transform]  # the same with the B-spline as a field
    deformable_error = ""
    if config.deformable:
        try:
            deformable = register_deformable(ct, mr[ref], gtv, rigid.transform, config, seed)
        except RegistrationError as exc:  # keep the rigid result, flagged for review
            deformable_error = exc.problem
    if deformable is not None:
        deformation = summarize_deformation(deformable.bspline, deformable.region,
                                            mr[ref], rigid.transform)
        exact.append(deformable.bspline)
        fast.append(deformation.field)
    histories = [rigid.history] + ([deformable.history] if deformable else [])
    motion: dict[str, list[sitk.Transform]] = {m: [] for m in inputs.registered}
    if config.refine_sequences:
        for m in inputs.registered:
            if m != ref:
                refined, history = _guard(inputs, inputs.registered[m], lambda m=m: (
                    refine_sequence(mr[ref], mr[m], config, seed=seed, what=m)))
                motion[m] = [refined]
                histories.append(history)
    rigid_transforms = {m: compose(*motion[m], rigid.transform) for m in inputs.registered}
    transforms = {m: compose(*motion[m], *exact) for m in inputs.registered}
    resampling = {m: compose(*motion[m], *fast) for m in inputs.registered}
    seconds_registration = time.perf_counter() - started

    images = {m: resample_to_ct(mr[m], ct, resampling[m]) for m in inputs.registered}
    for m, path in inputs.same_frame.items():
        images[m] = resample_to_ct(_read(inputs, path, m), ct, sitk.Transform())
    images["gtv"] = gtv
    qa = _measure(inputs, ct, gtv, mr, rigid, deformable, deformation, rigid_transforms,
                  transforms, resampling, images, config, seed)
    qa.update({
        "deformable_error": deformable_error,
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_rigid": round(rigid.seconds, 2),
        "seconds_deformable": round(deformable.seconds, 2) if deformable else math.nan,
        "seconds_registration": round(seconds_registration, 2),
    })
    return PatientRegistration(
        patient_id=pid, reference=ref, rigid=rigid, deformable=deformable,
        deformation=deformation, rigid_transforms=rigid_transforms, transforms=transforms,
        images=images, history=pd.concat(histories, ignore_index=True), qa=qa,
    )


def _measure(inputs, ct, gtv, mr, rigid, deformable, deformation, rigid_transforms, transforms,
             resampling, images, config, seed) -> dict[str, Any]:
    """The QA row of one patient (without flags: qa.qa_table adds them)."""
    ref = inputs.reference
    qa: dict[str, Any] = {"patient_id": inputs.patient_id}
    if inputs.contour is not None:
        contour = _read(inputs, inputs.contour, "reference contour")
        m = inputs.contour_modality
        on_ct_rigid = propagate_contour(contour, ct, rigid_transforms[m])
        on_ct = propagate_contour(contour, ct, resampling[m]) if deformable else on_ct_rigid
        qa["dice_rigid"] = dice(on_ct_rigid, gtv)
        qa["dice_deformable"] = dice(on_ct, gtv) if deformable else math.nan
        images["gtv_from_mr_rigid"] = on_ct_rigid
        images["gtv_from_mr"] = on_ct
    else:
        qa["dice_rigid"] = qa["dice_deformable"] = math.nan
    landmarks = None
    if inputs.landmarks is not None:
        landmarks = _guard(inputs, inputs.landmarks,
                           lambda: read_landmarks(inputs.landmarks, inputs.patient_id))
    qa["tre_rigid_mm"], qa["tre_max_rigid_mm"] = _tre(rigid.transform, landmarks)
    qa["tre_deformable_mm"], qa["tre_max_deformable_mm"] = _tre(
        transforms[ref] if deformable else None, landmarks)
    qa["n_landmarks"] = 0 if landmarks is None else len(landmarks)
    qa["min_jacobian"] = deformation.min_jacobian if deformation else math.nan
    qa["max_displacement_mm"] = deformation.max_displacement_mm if deformation else math.nan
    region = deformable.region if deformable else deformable_region(
        ct, mr[ref], gtv, rigid.transform, config.roi_margin_mm)
    mi = {"mi_before": sitk.Euler3DTransform() if rigid.scanner_overlap else None,
          "mi_rigid": rigid.transform,
          "mi_deformable": resampling[ref] if deformable else None}
    fixed = working_image(region, config.working_spacing_mm)
    moving = working_image(mr[ref], config.working_spacing_mm)
    for name, transform in mi.items():
        qa[name] = math.nan if transform is None else mutual_information(
            fixed, moving, transform, config.mi_histogram_bins, 0.2, seed)
    qa["gtv_shift_mm"] = tumour_shift_mm(transforms[ref], gtv)
    shifts = {m: tumour_shift_mm(transforms[m], gtv) for m in inputs.in_ct_frame}
    moved = max(shifts, key=shifts.__getitem__) if shifts else ""
    qa["ct_frame_shift_mm"] = shifts[moved] if moved else math.nan
    qa["ct_frame_image"] = moved
    qa["gtv_in_mr_fov"] = _gtv_coverage(mr[ref], gtv, resampling[ref])
    qa["gtv_touches_edge"] = touches_edge(gtv)
    qa["initialization"] = rigid.initialization
    qa["scanner_overlap"] = rigid.scanner_overlap
    qa["reference_contour"] = (
        "" if inputs.contour is None else inputs.contour.relative_to(inputs.folder).as_posix())
    qa["mr_reference"] = ref
    qa["deformable"] = deformable is not None
    return qa


