"""Registration QA table: one row per patient, flagged by documented thresholds (never dropped).

A patient is flagged when any of these holds (the reasons are listed in ``flag_reason``):

- Dice of the propagated MR contour vs the CT GTV after the final step < ``min_dice`` (0.80);
- mean landmark TRE after the final step > ``max_tre_mm`` (3 mm);
- minimum Jacobian determinant of the deformation, where the MR has data, < ``min_jacobian``
  (0.1; <= 0 is folding);
- largest B-spline displacement > ``max_displacement_mm`` (20 mm: implausible for a limb);
- the deformable step lowered the Dice by more than ``max_dice_drop`` (0.05) against rigid;
- mutual information after registration lower than before it (scanner positions);
- less than ``min_gtv_in_mr_fov`` (99%) of the CT GTV inside the registered MR field of view, or
  inside the field of view of any other declared image (``gtv_in_fov_min``, ``fov_image``);
- an image in the CT's frame (``same_frame_as_ct``, not registered) whose own contour
  (``gtv_<image>.nii.gz``), placed by geometry alone, has a Dice < ``min_dice`` against the CT's
  GTV (``dice_scanner``, ``dice_scanner_image``): it may not be in the CT's frame after all;
- such an MR image whose bone (a signal void on T1w/T2w) lies better on the CT's cortex when
  moved a few mm than at its scanner position (``bone_off_images``; the bone check of
  ``measures.bone_check``, where the crop around the GTV holds enough bone);
- the GTV touches the edge of the CT volume (the tumour may be cut off);
- the MR did not overlap the CT in scanner coordinates (the image centres were aligned instead);
- the rigid step did not improve its metric on its start (the start was kept).

A step that does not improve on its start by the metric it optimises (evaluated as optimised:
same mask, same sample points) is not kept, nor a deformable result that folds or displaces a
point beyond ``bspline_max_displacement_mm``: ``rejected_steps`` says which and why, with the
metric at the start and the end of each step (``rigid_metric_*``, ``deformable_metric_*``) and
the start metrics of the initial candidates (``start_metric_scanner``, ``start_metric_geometry``,
``start_distance_mm`` between them).
- the deformable step failed (the rigid result is kept);
- an image that shares the CT's frame of reference but is registered anyway (cohort.toml's
  ``registered_in_ct_frame``) moved the GTV voxels by more than ``max_ct_frame_shift_mm`` (2 mm)
  on average: such an image should need nearly no registration.

``gtv_shift_mm`` says for every patient how far (mean, mm) the final transform moves the CT's
GTV voxels from their scanner positions in the reference MR. A patient with nothing to register
(every image in the CT's frame) has empty registration columns; ``registration_note`` says why.
The per-image checks are in ``registration/qa_images.csv`` (IMAGE_QA_COLUMNS).

Measures that cannot be computed (no reference contour, no landmarks) are empty and flag nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from stsnb.curation.cohort_config import CohortConfig

#: The columns every reader relies on (DESIGN.md section 4), in this order.
QA_COLUMNS = ("patient_id", "dice_rigid", "dice_deformable", "tre_rigid_mm", "tre_deformable_mm",
              "min_jacobian", "seconds", "flagged")
#: Further columns, after those.
EXTRA_COLUMNS = ("flag_reason", "mi_before", "mi_rigid", "mi_deformable", "tre_max_rigid_mm",
                 "tre_max_deformable_mm", "n_landmarks", "max_displacement_mm", "gtv_in_mr_fov",
                 "gtv_touches_edge", "gtv_shift_mm", "ct_frame_shift_mm", "ct_frame_image",
                 "initialization", "scanner_overlap", "deformable",
                 "deformable_error", "mr_reference", "reference_contour", "seconds_rigid",
                 "seconds_deformable", "seconds_registration", "dice_scanner",
                 "dice_scanner_image", "gtv_in_fov_min", "fov_image", "registration_note",
                 "rejected_steps", "rigid_metric_start", "rigid_metric_end",
                 "deformable_metric_start", "deformable_metric_end", "start_metric_scanner",
                 "start_metric_geometry", "start_distance_mm", "bone_off_images")
#: Text columns (empty, never NaN, when not filled).
TEXT_COLUMNS = ("flag_reason", "reference_contour", "initialization", "deformable_error",
                "ct_frame_image", "mr_reference", "dice_scanner_image", "fov_image",
                "registration_note", "rejected_steps", "bone_off_images")


@dataclass(frozen=True)
class QAThresholds:
    """Limits beyond which a patient is flagged for review (see the module docstring)."""

    min_dice: float = 0.80
    max_tre_mm: float = 3.0
    min_jacobian: float = 0.1
    max_displacement_mm: float = 20.0
    max_dice_drop: float = 0.05
    min_gtv_in_mr_fov: float = 0.99
    max_ct_frame_shift_mm: float = 2.0

    def as_table(self) -> pd.DataFrame:
        """(threshold, value) rows for the chapter."""
        return pd.DataFrame(list(asdict(self).items()), columns=["threshold", "value"])


def _final(row: pd.Series, rigid: str, deformable: str) -> float:
    """The final step's value of a measure (deformable when that step ran, else rigid)."""
    return row.get(deformable if row.get("deformable", False) else rigid, math.nan)


def flag_reasons(row: pd.Series, limits: QAThresholds) -> list[str]:
    """The reasons (possibly none) to flag one patient's registration."""
    reasons = []
    dice = _final(row, "dice_rigid", "dice_deformable")
    if pd.notna(dice) and dice < limits.min_dice:
        reasons.append(f"Dice {dice:.2f} < {limits.min_dice:.2f}")
    tre = _final(row, "tre_rigid_mm", "tre_deformable_mm")
    if pd.notna(tre) and tre > limits.max_tre_mm:
        reasons.append(f"TRE {tre:.1f} mm > {limits.max_tre_mm:g} mm")
    jac = row.get("min_jacobian", math.nan)
    if pd.notna(jac) and jac < limits.min_jacobian:
        reasons.append(f"min Jacobian {jac:.2f} < {limits.min_jacobian:g}"
                       + (" (folding)" if jac <= 0 else ""))
    disp = row.get("max_displacement_mm", math.nan)
    if pd.notna(disp) and disp > limits.max_displacement_mm:
        reasons.append(f"deformation {disp:.0f} mm > {limits.max_displacement_mm:g} mm")
    drop = row.get("dice_rigid", math.nan) - row.get("dice_deformable", math.nan)
    if pd.notna(drop) and drop > limits.max_dice_drop:
        reasons.append(f"deformable step lowered Dice by {drop:.2f}")
    after = _final(row, "mi_rigid", "mi_deformable")
    before = row.get("mi_before", math.nan)
    if pd.notna(before) and pd.notna(after) and after < before:
        reasons.append("mutual information lower than before registration")
    cover = row.get("gtv_in_mr_fov", math.nan)
    if pd.notna(cover) and cover < limits.min_gtv_in_mr_fov:
        reasons.append(f"only {cover:.0%} of the GTV inside the MR field of view")
    lowest, image = row.get("gtv_in_fov_min", math.nan), row.get("fov_image", "")
    if (pd.notna(lowest) and lowest < limits.min_gtv_in_mr_fov
            and not (image == row.get("mr_reference") and pd.notna(cover))):
        reasons.append(f"only {lowest:.0%} of the GTV inside the {image} field of view")
    placed = row.get("dice_scanner", math.nan)
    if pd.notna(placed) and placed < limits.min_dice:
        reasons.append(f"Dice {placed:.2f} < {limits.min_dice:.2f} of the "
                       f"{row.get('dice_scanner_image', '')} contour placed by geometry (declared "
                       "in the CT's frame)")
    if bool(row.get("gtv_touches_edge", False)):
        reasons.append("GTV touches the edge of the CT volume")
    failed = row.get("deformable_error", "")
    if isinstance(failed, str) and failed:
        reasons.append(f"deformable step failed, rigid result kept ({failed[:120]})")
    shift = row.get("ct_frame_shift_mm", math.nan)
    if pd.notna(shift) and shift > limits.max_ct_frame_shift_mm:
        reasons.append(f"{row.get('ct_frame_image', '')} shares the CT's frame but was moved "
                       f"{shift:.1f} mm > {limits.max_ct_frame_shift_mm:g} mm")
    off = row.get("bone_off_images", "")
    if isinstance(off, str) and off:
        reasons.append(f"bone check: the bone of {off} lies better a few mm off the scanner "
                       "position (declared in the CT's frame)")
    steps = row.get("rejected_steps", "")
    if isinstance(steps, str) and "rigid:" in steps:
        reasons.append("the rigid step did not improve its metric (its start kept)")
    if not bool(row.get("scanner_overlap", True)):
        reasons.append("MR did not overlap the CT in scanner coordinates (centres aligned)")
    return reasons


def qa_table(rows: list[dict], limits: QAThresholds | None = None) -> pd.DataFrame:
    """The QA table (QA_COLUMNS, then EXTRA_COLUMNS) with `flagged` and `flag_reason` filled."""
    limits = limits or QAThresholds()
    table = pd.DataFrame(rows)
    for column in QA_COLUMNS + EXTRA_COLUMNS:
        if column not in table.columns:
            table[column] = math.nan
    reasons = [flag_reasons(row, limits) for _, row in table.iterrows()]
    table["flag_reason"] = ["; ".join(r) for r in reasons]
    table["flagged"] = [bool(r) for r in reasons]
    table["patient_id"] = table["patient_id"].astype(str)
    return table[list(QA_COLUMNS + EXTRA_COLUMNS)]


def read_qa(path) -> pd.DataFrame:
    """Read qa.csv with its types (patient_id str, flagged bool, flag_reason str)."""
    table = pd.read_csv(path, dtype={"patient_id": str} | {c: str for c in TEXT_COLUMNS})
    for column in QA_COLUMNS + EXTRA_COLUMNS:  # written before a column existed
        if column not in table.columns:
            table[column] = "" if column in TEXT_COLUMNS else math.nan
    for column in TEXT_COLUMNS:
        table[column] = table[column].fillna("").astype(str)
    for column in ("flagged", "gtv_touches_edge", "scanner_overlap", "deformable"):
        table[column] = table[column].astype(bool)
    return table


def flagged_first(table: pd.DataFrame) -> pd.DataFrame:
    """The QA table with flagged patients on top (then by patient id)."""
    return table.sort_values(["flagged", "patient_id"], ascending=[False, True]).reset_index(
        drop=True)


def qa_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Median [min-max] of Dice, TRE and MI per step, and the number of patients flagged."""
    rows = []
    measures = [("Dice", "dice_rigid", "dice_deformable", "{:.3f}"),
                ("TRE mean (mm)", "tre_rigid_mm", "tre_deformable_mm", "{:.2f}"),
                ("TRE max (mm)", "tre_max_rigid_mm", "tre_max_deformable_mm", "{:.2f}"),
                ("MI (nats)", "mi_rigid", "mi_deformable", "{:.3f}")]
    for name, rigid, deformable, fmt in measures:
        row = {"measure": name}
        for step, column in (("rigid", rigid), ("deformable", deformable)):
            values = pd.to_numeric(table[column], errors="coerce").dropna()
            row[step] = (f"{fmt.format(values.median())} [{fmt.format(values.min())}-"
                         f"{fmt.format(values.max())}]" if len(values) else "-")
        rows.append(row)
    mi_before = pd.to_numeric(table["mi_before"], errors="coerce").dropna()
    rows.append({"measure": "MI before registration (nats)",
                 "rigid": f"{mi_before.median():.3f}" if len(mi_before) else "-",
                 "deformable": ""})
    jac = pd.to_numeric(table["min_jacobian"], errors="coerce").dropna()
    rows.append({"measure": "min Jacobian determinant", "rigid": "",
                 "deformable": f"{jac.min():.2f} (lowest)" if len(jac) else "-"})
    rows.append({"measure": "patients flagged", "rigid": "",
                 "deformable": f"{int(table['flagged'].sum())} of {len(table)}"})
    return pd.DataFrame(rows)


#: The QA table as the chapter shows it.
DISPLAY_COLUMNS = ("patient_id", "flagged", "flag_reason", "dice_rigid", "dice_deformable",
                   "tre_rigid_mm", "tre_deformable_mm", "tre_max_deformable_mm", "mi_before",
                   "mi_rigid", "mi_deformable", "min_jacobian", "max_displacement_mm",
                   "gtv_in_mr_fov", "gtv_shift_mm", "dice_scanner", "gtv_in_fov_min",
                   "initialization", "seconds")


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Flagged patients first, the columns a reader needs, numbers rounded."""
    shown = flagged_first(table)[list(DISPLAY_COLUMNS)]
    return shown.round({c: 3 for c in DISPLAY_COLUMNS if c.startswith(("dice", "mi", "gtv"))}
                       | {c: 2 for c in DISPLAY_COLUMNS if c.endswith(("_mm", "jacobian"))}
                       | {"seconds": 1})


def registration_summary(table: pd.DataFrame, kept: int | None = None) -> str:
    """A few sentences with the numbers that matter, for the chapter's summary."""

    def median(column: str) -> float:
        return float(pd.to_numeric(table[column], errors="coerce").median())

    deformable = bool(table["deformable"].any())
    steps = "rigid + deformable" if deformable else "rigid only"
    unregistered = table["registration_note"].astype(str) != ""
    parts = []
    if unregistered.any():
        parts.append(f"{int(unregistered.sum())} of {len(table)} patients not registered: every "
                     "image shares the CT's frame, placed on the CT grid by geometry alone.")
        scanner = pd.to_numeric(table["dice_scanner"], errors="coerce").dropna()
        if len(scanner):
            parts.append(f"Dice of the per-image contours placed by geometry: median "
                         f"{scanner.median():.3f} (lowest {scanner.min():.3f}).")
    if (~unregistered).any():
        parts.append(f"{int((~unregistered).sum())} patients registered ({steps}, "
                     f"{median('seconds'):.1f} s per patient, median).")
    if table["tre_rigid_mm"].notna().any():
        text = f"Median landmark TRE: rigid {median('tre_rigid_mm'):.2f} mm"
        if deformable:
            text += f", deformable {median('tre_deformable_mm'):.2f} mm"
        parts.append(text + ".")
    if table["dice_rigid"].notna().any():
        text = f"Median Dice of the propagated GTV: rigid {median('dice_rigid'):.3f}"
        if deformable:
            text += f", deformable {median('dice_deformable'):.3f}"
        parts.append(text + ".")
    if deformable:
        jac = pd.to_numeric(table["min_jacobian"], errors="coerce")
        parts.append(f"Lowest Jacobian determinant {jac.min():.2f} "
                     f"({'no folding' if jac.min() > 0 else 'folding in some patient'}).")
    flagged = table[table["flagged"]]
    parts.append(f"{len(flagged)} patient(s) flagged for review"
                 + (f": {', '.join(flagged['patient_id'])}." if len(flagged) else "."))
    if kept is not None:
        parts.append(f"{kept} of {len(table)} patients go on to the later stages.")
    return " ".join(parts)


def frame_statement(cohort: CohortConfig, qa: pd.DataFrame, reused: int = 0) -> str:
    """Which images were registered and which share the CT's frame (and so were not), in words."""
    same = [m for m in cohort.same_frame_as_ct if m in cohort.modalities]
    parts = [f"{len(qa)} patients, {reused} of them reused from the work folder."]
    if cohort.registered:
        parts.append(f"Registered to the CT: {', '.join(cohort.registered)} (reference sequence "
                     f"`{cohort.mr_reference}`).")
    else:
        parts.append("Nothing to register: every declared image shares the CT's frame of "
                     "reference, so no image was registered; each was resampled onto the CT grid "
                     "by geometry alone and checked below (its own contour placed on the CT, the "
                     "GTV inside its field of view).")
    if same:
        parts.append(f"In the CT's frame (`same_frame_as_ct`, not registered): {', '.join(same)}.")
    return " ".join(parts)
