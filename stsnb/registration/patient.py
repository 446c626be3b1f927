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

from stsnb.core.config import RegistrationConfig
from stsnb.core.imageio import read_image
from stsnb.core.modalities import MR_MODALITIES
from stsnb.registration.deformable import (
    DeformableResult,
    DeformationSummary,
    compose,
    deformable_region,
    deformable_rejection,
    register_deformable,
    summarize_deformation,
)
from stsnb.registration.errors import RegistrationError
from stsnb.registration.geometry import coverage_on_grid, crop, mask_box, touches_edge
from stsnb.registration.inputs import PatientInputs
from stsnb.registration.measures import (
    bone_check,
    dice,
    landmark_errors,
    mutual_information,
    propagate_contour,
    read_landmarks,
    tumour_shift_mm,
)
from stsnb.registration.rigid import (
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
    rigid: RigidResult | None  # None when nothing was registered
    deformable: DeformableResult | None
    deformation: DeformationSummary | None
    rigid_transforms: dict[str, sitk.Transform]  # CT -> image, rigid only
    transforms: dict[str, sitk.Transform]  # CT -> image, final (rigid after B-spline)
    images: dict[str, sitk.Image]  # on the CT grid
    history: pd.DataFrame
    qa: dict[str, Any]
    #: one row per declared image but the CT (IMAGE_QA_COLUMNS): registered or not, Dice of its
    #: own contour at scanner positions and registered, tumour shift, GTV inside its FOV
    image_qa: pd.DataFrame | None = None


#: Columns of the per-image QA table (``registration/qa_images.csv``).
IMAGE_QA_COLUMNS = ("patient_id", "image", "registered", "dice_scanner", "dice_registered",
                    "shift_mm", "gtv_in_fov", "bone_ratio_scanner", "bone_ratio_best_shift",
                    "bone_prefers_scanner", "bone_cortex_voxels", "note")
#: Why the registration columns of a patient's QA row are empty when nothing was registered.
NOTHING_REGISTERED = ("not registered: every image shares the CT's frame of reference "
                      "(same_frame_as_ct), resampled onto the CT grid by geometry alone")


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
    # a copy: a view of a temporary image would read freed memory once it is collected
    covered = sitk.GetArrayFromImage(coverage_on_grid(mr, region, transform)) > 0
    inside = sitk.GetArrayViewFromImage(region) > 0
    return float(np.logical_and(covered, inside).sum() / inside.sum())


def image_checks(inputs: PatientInputs, ct: sitk.Image, gtv: sitk.Image,
                 images: dict[str, sitk.Image], transforms: dict[str, sitk.Transform],
                 resampling: dict[str, sitk.Transform]) -> pd.DataFrame:
    """Per declared image (the CT aside): what can be checked with and without registering.

    ``dice_scanner``: the image's own contour (``gtv_<image>.nii.gz``; the reference contour for
    the reference MR) on the CT grid by geometry alone, against the CT's GTV;
    ``dice_registered``: the same through the final transform (registered images only);
    ``shift_mm``: mean distance the final transform moves the GTV voxels (0 when not
    registered); ``gtv_in_fov``: fraction of the GTV voxels inside the image's field of view;
    ``bone_*``: for an MR image not registered, whether its bone (a signal void) lies on the
    CT's at the scanner position rather than a few mm off (`measures.bone_check`; empty for
    other images and where the crop holds too little bone).
    """
    rows = []
    for m in [*inputs.registered, *inputs.same_frame]:
        registered = m in inputs.registered
        contour_path = inputs.contours.get(m)
        if registered and m == inputs.contour_modality and inputs.contour is not None:
            contour_path = inputs.contour
        contour = _read(inputs, contour_path, f"{m} contour") if contour_path else None
        identity = sitk.Transform()
        bone = (bone_check(ct, images[m], gtv) if not registered and m in MR_MODALITIES
                else {})
        rows.append({
            "patient_id": inputs.patient_id, "image": m, "registered": registered,
            "dice_scanner": dice(propagate_contour(contour, ct, identity), gtv)
            if contour is not None else math.nan,
            "dice_registered": dice(propagate_contour(contour, ct, resampling[m]), gtv)
            if contour is not None and registered else math.nan,
            "shift_mm": tumour_shift_mm(transforms[m], gtv) if registered else 0.0,
            "gtv_in_fov": _gtv_coverage(images[m], gtv, resampling[m] if registered
                                        else identity),
            "bone_ratio_scanner": bone.get("bone_ratio_scanner", math.nan),
            "bone_ratio_best_shift": bone.get("bone_ratio_best_shift", math.nan),
            "bone_prefers_scanner": bone.get("bone_prefers_scanner", math.nan),
            "bone_cortex_voxels": bone.get("cortex_voxels", math.nan),
            "note": "registered" if registered else
            "shares the CT's frame (same_frame_as_ct): resampled by geometry alone",
        })
    return pd.DataFrame(rows, columns=list(IMAGE_QA_COLUMNS))


def _image_summary(checks: pd.DataFrame) -> dict[str, Any]:
    """For the patient's QA row: the lowest Dice at scanner positions over the images not
    registered (same_frame_as_ct) with a contour, and the lowest share of the GTV inside an
    image's field of view, with the images."""
    summary: dict[str, Any] = {}
    for column, value, image in (("dice_scanner", "dice_scanner", "dice_scanner_image"),
                                 ("gtv_in_fov", "gtv_in_fov_min", "fov_image")):
        known = checks.dropna(subset=[column])
        if column == "dice_scanner":  # a registered image is expected to be off at scanner
            known = known[~known["registered"].astype(bool)]
        worst = known.loc[known[column].idxmin()] if len(known) else None
        summary[value] = float(worst[column]) if worst is not None else math.nan
        summary[image] = str(worst["image"]) if worst is not None else ""
    off = checks[checks["bone_prefers_scanner"].astype(object).eq(False)]
    summary["bone_off_images"] = ", ".join(off["image"])
    return summary


def _place_without_registering(inputs: PatientInputs, config: RegistrationConfig,
                               started: float) -> PatientRegistration:
    """Nothing to register: every image onto the CT grid by geometry alone, and the checks
    that need no registration (contours at scanner positions, GTV inside each field of view)."""
    ct = _read(inputs, inputs.ct, "ct")
    gtv = _read(inputs, inputs.gtv, "tumour mask")
    source = {m: _read(inputs, path, m) for m, path in inputs.same_frame.items()}
    images = {m: resample_to_ct(image, ct, sitk.Transform()) for m, image in source.items()}
    checks = image_checks(inputs, ct, gtv, source, {}, {})
    for m, path in inputs.contours.items():
        if m in source:
            images[f"gtv_from_{m}"] = propagate_contour(_read(inputs, path, f"{m} contour"), ct,
                                                        sitk.Transform())
    images["gtv"] = gtv
    qa: dict[str, Any] = {
        "patient_id": inputs.patient_id,
        "dice_rigid": math.nan, "dice_deformable": math.nan, **_image_summary(checks),
        "n_landmarks": 0, "gtv_in_mr_fov": math.nan,
        "gtv_touches_edge": touches_edge(gtv),
        "initialization": "", "scanner_overlap": True, "reference_contour": "",
        "mr_reference": "", "deformable": False, "deformable_error": "",
        "registration_note": NOTHING_REGISTERED,
        "seconds_registration": 0.0,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return PatientRegistration(
        patient_id=inputs.patient_id, reference="", rigid=None, deformable=None,
        deformation=None, rigid_transforms={}, transforms={}, images=images,
        history=pd.DataFrame(columns=["step", "level", "iteration", "metric"]), qa=qa,
        image_qa=checks)


def register_patient(inputs: PatientInputs, config: RegistrationConfig,
                     seed: int = 0) -> PatientRegistration:
    """Register the patient's MR session to the CT and measure how well it worked; with
    nothing to register (every image in the CT's frame), resample by geometry and check."""
    started = time.perf_counter()
    if inputs.nothing_to_register:
        return _place_without_registering(inputs, config, started)
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
    rejected = [rigid.rejected] if rigid.rejected else []
    metrics = {"rigid_metric_start": rigid.start_metric, "rigid_metric_end": rigid.metric,
               "deformable_metric_start": math.nan, "deformable_metric_end": math.nan}
    histories = [rigid.history]
    if config.deformable:
        try:
            deformable = register_deformable(ct, mr[ref], gtv, rigid.transform, config, seed)
        except RegistrationError as exc:  # keep the rigid result, flagged for review
            deformable_error = exc.problem
    if deformable is not None:
        deformation = summarize_deformation(deformable.bspline, deformable.region,
                                            mr[ref], rigid.transform)
        histories.append(deformable.history)
        metrics.update(deformable_metric_start=deformable.start_metric,
                       deformable_metric_end=deformable.end_metric)
        reason = deformable_rejection(deformable, deformation, config)
        if reason:  # the rigid result stands
            rejected.append(reason)
            deformable, deformation = None, None
    if deformable is not None:
        exact.append(deformable.bspline)
        fast.append(deformation.field)
    motion: dict[str, list[sitk.Transform]] = {m: [] for m in inputs.registered}
    if config.refine_sequences:
        for m in inputs.registered:
            if m != ref:
                refined, history, why = _guard(inputs, inputs.registered[m], lambda m=m: (
                    refine_sequence(mr[ref], mr[m], config, seed=seed, what=m)))
                motion[m] = [refined]
                histories.append(history)
                rejected += [why] if why else []
    rigid_transforms = {m: compose(*motion[m], rigid.transform) for m in inputs.registered}
    transforms = {m: compose(*motion[m], *exact) for m in inputs.registered}
    resampling = {m: compose(*motion[m], *fast) for m in inputs.registered}
    seconds_registration = time.perf_counter() - started

    images = {m: resample_to_ct(mr[m], ct, resampling[m]) for m in inputs.registered}
    same_frame = {m: _read(inputs, path, m) for m, path in inputs.same_frame.items()}
    for m, image in same_frame.items():
        images[m] = resample_to_ct(image, ct, sitk.Transform())
    images["gtv"] = gtv
    qa = _measure(inputs, ct, gtv, mr, rigid, deformable, deformation, rigid_transforms,
                  transforms, resampling, images, config, seed)
    checks = image_checks(inputs, ct, gtv, {**mr, **same_frame}, transforms, resampling)
    starts = rigid.start_metrics or {}
    qa.update({
        **_image_summary(checks), **metrics,
        "rejected_steps": "; ".join(rejected),
        "start_metric_scanner": starts.get("scanner", math.nan),
        "start_metric_geometry": starts.get("geometry", math.nan),
        "start_distance_mm": rigid.start_distance_mm,
        "registration_note": "",
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
        image_qa=checks,
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


