"""Stage 02 (registration): known-transform recovery, bad input, saving/reuse, review, viewers.

The phantom is a small analytic limb (skin, fat, muscle, bone, septum, vessel, tumour) defined in
the CT frame. Its MR is rendered in an oblique MR frame through a known CT->MR map
T(p) = A(p + d(p)) (A rigid, d a smooth Gaussian displacement), so every error is measurable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from stsnb.core.config import QUICK, SMOKE, Profile, RegistrationConfig
from stsnb.core.errors import CohortError
from stsnb.curation.cohort_config import CohortConfig
from stsnb.registration import (
    QA_COLUMNS,
    RegistrationError,
    decide_patients,
    final_patients,
    load_views,
    read_review,
    registered_volumes,
    registration_settings,
    run_registration,
)
from stsnb.registration.inputs import patient_inputs
from stsnb.registration.measures import (
    displacements_mm,
    landmark_errors,
    mask_points_mm,
    read_landmarks,
)
from stsnb.registration.patient import register_patient
from stsnb.registration.qa import qa_table

# --------------------------------------------------------------------------- the phantom

CT_SIZE, CT_SPACING = (72, 64, 30), (2.0, 2.0, 4.0)  # x, y, z voxels; mm
MR_SIZE, MR_SPACING = (72, 72, 26), (1.6, 1.6, 4.0)
TUMOUR_CENTRE = np.array([18.0, -12.0, 0.0])
TUMOUR_AXES = np.array([20.0, 16.0, 28.0])


def rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    """Rz @ Ry @ Rx (degrees)."""
    a, b, c = np.deg2rad([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclasses.dataclass(frozen=True)
class KnownMap:
    """T(p) = R (p + d(p)) + t: a rigid offset after a smooth displacement d (mm)."""

    rotation: np.ndarray
    translation: np.ndarray
    centres: np.ndarray = dataclasses.field(
        default_factory=lambda: np.array([[15.0, -10.0, 0.0], [-25.0, 20.0, 20.0]]))
    sigmas: np.ndarray = dataclasses.field(default_factory=lambda: np.array([35.0, 45.0]))
    amplitudes: np.ndarray = dataclasses.field(
        default_factory=lambda: np.array([[2.5, -2.0, 1.5], [-1.5, 2.0, -1.0]]))

    def displacement(self, p: np.ndarray) -> np.ndarray:
        out = np.zeros_like(p)
        for c, s, a in zip(self.centres, self.sigmas, self.amplitudes, strict=True):
            g = np.exp(-np.sum((p - c) ** 2, axis=-1) / (2 * s * s))
            out += g[..., None] * a
        return out

    def forward(self, p: np.ndarray) -> np.ndarray:
        return (p + self.displacement(p)) @ self.rotation.T + self.translation

    def inverse(self, q: np.ndarray) -> np.ndarray:
        y = (q - self.translation) @ self.rotation  # R^-1 (q - t)
        p = y.copy()
        for _ in range(12):
            p = y - self.displacement(p)
        return p


IDENTITY_MAP = KnownMap(np.eye(3), np.zeros(3), amplitudes=np.zeros((2, 3)))
TRUE_MAP = KnownMap(rotation(2.5, -2.0, 5.0), np.array([6.0, -4.0, 5.0]))


def tissue(p: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of each tissue at body points p (..., 3) in mm.

    The limb is asymmetric and changes along z (drift, lobed outline, bone radius, twisting
    septa, a fat lobule), so that, as in a real limb, the anatomy tells position and rotation.
    """
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    cx, cy = 0.15 * z, -0.10 * z
    theta = np.arctan2(y - cy, x - cx)
    lobes = 1.0 + 0.07 * np.cos(3 * theta + z / 40.0) + 0.05 * np.cos(2 * theta - 0.7)
    a, b = (58.0 + 8.0 * np.sin(z / 25.0)) * lobes, (48.0 - 4.0 * np.cos(z / 30.0)) * lobes
    r = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    body = r < 1.0
    skin = body & (r > 0.96)
    fat = body & (r > 0.80) & ~skin
    bx, by = cx - 16.0, cy + 6.0
    rb = np.hypot(x - bx, y - by)
    radius = 12.0 + 3.0 * np.sin(z / 20.0)
    rb2 = np.hypot(x - (cx + 24.0), y - (cy + 22.0))
    cortex = body & (((rb < radius) & (rb >= radius - 4.0)) | ((rb2 < 6.0) & (rb2 >= 3.0)))
    marrow = body & ((rb < radius - 4.0) | (rb2 < 3.0))
    septum = np.zeros_like(body)
    for start in (35.0, 150.0, 265.0):
        angle = np.deg2rad(start + 0.8 * z)
        along = (x - bx) * np.cos(angle) + (y - by) * np.sin(angle)
        across = np.abs((x - bx) * np.sin(angle) - (y - by) * np.cos(angle))
        septum |= (across < 1.5) & (along > radius)
    septum &= body & ~fat & ~skin
    lobule = np.sum(((p - [-28.0, -18.0, 24.0]) / [10.0, 8.0, 12.0]) ** 2, axis=-1) < 1.0
    vessel = body & ((np.hypot(x - (bx + 4.0 + 0.1 * z), y - (by - 22.0)) < 3.5)
                     | (np.hypot(x - (cx - 30.0), y - (cy + 18.0 - 0.1 * z)) < 2.5))
    tumour = np.sum(((p - TUMOUR_CENTRE) / TUMOUR_AXES) ** 2, axis=-1) < 1.0
    return {"body": body, "skin": skin, "fat": fat | septum | (lobule & body),
            "cortex": cortex, "marrow": marrow, "vessel": vessel,
            "tumour": tumour & body & ~fat & ~skin}


CT_HU = {"body": 55.0, "skin": 30.0, "fat": -100.0, "cortex": 1200.0, "marrow": 40.0,
         "vessel": 45.0, "tumour": 20.0}
MR_T1 = {"body": 380.0, "skin": 300.0, "fat": 950.0, "cortex": 40.0, "marrow": 850.0,
         "vessel": 90.0, "tumour": 260.0}


def render(p: np.ndarray, values: dict[str, float], background: float,
           spacing: tuple[float, ...]) -> np.ndarray:
    """Intensity at body points p (later tissues overwrite earlier ones), with a smooth texture
    in the soft tissue and a 1.5 mm blur (partial volume), as scanners see anatomy."""
    masks = tissue(p)
    out = np.full(p.shape[:-1], background, dtype=np.float32)
    for name in ("body", "skin", "fat", "vessel", "tumour", "cortex", "marrow"):
        out[masks[name]] = values[name]
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    texture = np.sin(x / 9.0 + 0.5 * np.sin(z / 13.0)) * np.cos(y / 11.0 - z / 17.0)
    soft = masks["body"] & ~masks["cortex"] & ~masks["marrow"] & ~masks["fat"]
    out[soft] += 0.12 * abs(values["body"] - values["fat"]) * texture[soft]
    sigma = [1.5 / s for s in spacing[::-1]]
    return ndimage.gaussian_filter(out, sigma).astype(np.float32)


def grid_points(size, spacing, origin, direction=None) -> np.ndarray:
    """Physical points (z, y, x, 3) of a grid's voxel centres."""
    direction = np.eye(3) if direction is None else direction
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")[::-1],
                   axis=-1).astype(float)
    return idx * np.asarray(spacing) @ np.asarray(direction).T + np.asarray(origin)


def as_image(array, spacing, origin, direction=None, pixel=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return sitk.Cast(image, pixel) if pixel is not None else image


def write_phantom_patient(folder: Path, true_map: KnownMap = TRUE_MAP, *, seed: int = 0,
                          mr_offset_mm=(0.0, 0.0, 0.0), constant_mr: bool = False,
                          gtv_at_edge: bool = False) -> None:
    """One patient in the cohort layout, with truth/gtv_mr.nii.gz and truth/landmarks_mm.csv."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    ct_origin = -0.5 * (np.asarray(CT_SIZE) - 1) * np.asarray(CT_SPACING)
    ct_points = grid_points(CT_SIZE, CT_SPACING, ct_origin)
    hu = render(ct_points, CT_HU, -1000.0, CT_SPACING) + rng.normal(0, 12, CT_SIZE[::-1])
    sitk.WriteImage(as_image(hu, CT_SPACING, ct_origin, pixel=sitk.sitkInt16),
                    str(folder / "ct.nii.gz"))
    gtv = tissue(ct_points)["tumour"].astype(np.uint8)
    if gtv_at_edge:
        gtv[:3] = 0
        gtv[:3, 20:40, 40:60] = 1  # the mask reaches the first slices of the volume
    sitk.WriteImage(as_image(gtv, CT_SPACING, ct_origin), str(folder / "gtv.nii.gz"))
    dose = np.full((14, 15, 17), 50.0, dtype=np.float32)  # z, y, x: covers the CT
    sitk.WriteImage(as_image(dose, (10.0, 10.0, 10.0), ct_origin - 5.0),
                    str(folder / "dose.nii.gz"))
    direction = rotation(9.0, -6.0, 14.0)  # oblique MR frame
    mr_centre = true_map.forward(np.array([5.0, -5.0, 0.0]))
    mr_origin = (mr_centre - direction @ (0.5 * (np.asarray(MR_SIZE) - 1) * np.asarray(MR_SPACING))
                 + np.asarray(mr_offset_mm))
    mr_points = grid_points(MR_SIZE, MR_SPACING, mr_origin, direction)
    body = true_map.inverse(mr_points - np.asarray(mr_offset_mm))
    bias = 1.0 + 0.08 * (body[..., 0] / 60.0)
    for sequence, scale in (("t1w", 1.0), ("t2w", 0.7), ("ce_t1w", 1.2)):
        values = (render(body, MR_T1, 0.0, MR_SPACING) * bias * scale
                  + rng.normal(0, 15, body.shape[:-1]))
        if constant_mr:
            values = np.full_like(values, 400.0)
        sitk.WriteImage(as_image(np.clip(values, 0, None), MR_SPACING, mr_origin, direction,
                                 sitk.sitkInt16), str(folder / f"{sequence}.nii.gz"))
    gtv_mr = tissue(body)["tumour"].astype(np.uint8)
    sitk.WriteImage(as_image(gtv_mr, MR_SPACING, mr_origin, direction),
                    str(folder / "truth" / "gtv_mr.nii.gz"))
    names = ["bone_inf", "bone_mid", "bone_sup", "vessel_mid", "tumour_centre", "tumour_lateral"]
    ct_marks = np.array([[0.15 * -30 - 16, -0.10 * -30 + 6, -30.0], [-16.0, 6.0, 0.0],
                         [0.15 * 30 - 16, -0.10 * 30 + 6, 30.0], [-12.0, -16.0, 0.0],
                         TUMOUR_CENTRE, TUMOUR_CENTRE + [12.0, 0.0, 0.0]])
    mr_marks = true_map.forward(ct_marks) + np.asarray(mr_offset_mm)
    table = pd.DataFrame({"name": names, **{f"ct_{a}": ct_marks[:, i] for i, a in enumerate("xyz")},
                          **{f"mr_{a}": mr_marks[:, i] for i, a in enumerate("xyz")}})
    table.to_csv(folder / "truth" / "landmarks_mm.csv", index=False)


def true_errors(transform: sitk.Transform, true_map: KnownMap = TRUE_MAP,
                step: int = 3) -> np.ndarray:
    """|T_est(p) - T(p)| (mm) at CT points in the tumour +- 10 mm (every `step`-th voxel)."""
    ct_origin = -0.5 * (np.asarray(CT_SIZE) - 1) * np.asarray(CT_SPACING)
    points = grid_points(CT_SIZE, CT_SPACING, ct_origin)[::1, ::step, ::step].reshape(-1, 3)
    near = np.sum(((points - TUMOUR_CENTRE) / (TUMOUR_AXES + 10.0)) ** 2, axis=-1) < 1.0
    points = points[near & tissue(points)["body"]]
    estimated = np.array([transform.TransformPoint(p.tolist()) for p in points])
    return np.linalg.norm(estimated - true_map.forward(points), axis=1)


#: Settings for the phantom (about 2 mm voxels): the quick profile's, on the phantom's grid.
TEST_CONFIG = dataclasses.replace(QUICK.registration, bspline_mesh_mm=45.0)
TEST_PROFILE = Profile(name="test", description="phantom tests", registration=TEST_CONFIG)


def write_cohort(root: Path, patients: dict[str, dict]) -> Path:
    """A cohort folder (clinical.csv + one phantom per patient)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (pid, options) in enumerate(patients.items()):
        write_phantom_patient(root / pid, seed=index, **options)
        rows.append({"patient_id": pid, "distant_metastasis": index % 2, "followup_months": 24})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    return root


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("reg") / "cohort",
                        {"PH01": {}, "PH02": {"gtv_at_edge": True}})


@pytest.fixture(scope="module")
def run(cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("reg") / "work"
    return run_registration(cohort, work, TEST_PROFILE, seed=0, patients=["PH01", "PH02"],
                            progress=False, workers=2)


# --------------------------------------------------------------------------- accuracy


def test_known_rigid_offset_and_deformation_recovered_within_2_mm(cohort: Path, run) -> None:
    """The phantom's MR is oblique, offset by ~9 mm and 6 degrees, and deformed by up to ~3 mm;
    the final transform must reproduce the known map within 2 mm around the tumour."""
    folder = run.work_dir / "registration" / "PH01"
    final = sitk.ReadTransform(str(folder / "transform_t1w.h5"))
    rigid = sitk.ReadTransform(str(folder / "transform_t1w_rigid.tfm"))
    before = true_errors(sitk.Euler3DTransform())
    after_rigid, after = true_errors(rigid), true_errors(final)
    assert before.mean() > 8.0  # the offset to recover is real
    assert after.mean() < 2.0 and np.percentile(after, 95) < 3.0
    assert after.mean() < after_rigid.mean()  # the deformable step adds to the rigid one
    qa = run.qa.set_index("patient_id").loc["PH01"]
    assert qa["tre_deformable_mm"] < 2.0
    assert qa["dice_deformable"] > 0.85 and qa["dice_deformable"] >= qa["dice_rigid"] - 0.01
    assert qa["min_jacobian"] > 0.0
    assert qa["mi_deformable"] > qa["mi_rigid"] > qa["mi_before"]
    # the tumour shift is the known offset over the GTV (the final map moves it that far)
    gtv = sitk.ReadImage(str(cohort / "PH01" / "gtv.nii.gz"))
    known = displacements_mm(final, mask_points_mm(gtv)).mean()
    assert qa["gtv_shift_mm"] == pytest.approx(known, abs=0.1) and qa["gtv_shift_mm"] > 8.0
    assert math.isnan(qa["ct_frame_shift_mm"]) and qa["ct_frame_image"] == ""
    mr = sitk.ReadImage(str(cohort / "PH01" / "t1w.nii.gz"))
    assert not np.allclose(mr.GetDirection(), np.eye(3).ravel(), atol=0.05)  # oblique input


def test_landmark_tre_is_the_distance_from_the_mapped_ct_point(cohort: Path) -> None:
    """TRE = |T(ct landmark) - mr landmark|: 3 mm for pairs 3 mm apart under the identity,
    0 for the map that relates them."""
    marks = read_landmarks(cohort / "PH01" / "truth" / "landmarks_mm.csv")
    offset = marks.copy()
    offset[["mr_x", "mr_y", "mr_z"]] = offset[["ct_x", "ct_y", "ct_z"]].to_numpy() + [1, 2, 2]
    assert np.allclose(landmark_errors(sitk.Euler3DTransform(), offset), 3.0)
    assert np.allclose(landmark_errors(sitk.TranslationTransform(3, (1, 2, 2)), offset), 0.0)


# --------------------------------------------------------------------------- outputs, reuse


def test_stage_writes_qa_and_per_patient_outputs(run) -> None:
    qa_csv = pd.read_csv(run.work_dir / "registration" / "qa.csv")
    assert tuple(qa_csv.columns[: len(QA_COLUMNS)]) == QA_COLUMNS
    folder = run.work_dir / "registration" / "PH01"
    ct = sitk.ReadImage(str(folder / "gtv.nii.gz"))
    for name in ("t1w", "t2w", "ce_t1w", "dose", "gtv", "gtv_from_mr", "gtv_from_mr_rigid",
                 "jacobian"):
        assert (folder / f"{name}.nii.gz").exists(), name
    for name in ("t1w", "t2w", "ce_t1w", "dose"):
        image = sitk.ReadImage(str(folder / f"{name}.nii.gz"))
        assert image.GetSize() == ct.GetSize() and image.GetOrigin() == ct.GetOrigin()
    dose = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "dose.nii.gz")))
    assert np.allclose(dose, 50.0)  # identity: the dose is in the CT frame already
    history = pd.read_csv(folder / "metric_history.csv")
    assert {"rigid", "deformable"} <= set(history["step"]) and len(history) > 10
    assert not list(folder.glob(".*.tmp*"))  # atomic writes leave no temporary file
    assert json.loads((run.work_dir / "registration" / "stage.json").read_text())["outputs"]


def test_results_do_not_depend_on_the_number_of_workers(cohort: Path, run,
                                                        tmp_path: Path) -> None:
    """Both patients in this process (one worker) give exactly what two worker processes
    gave: each patient is registered on one SimpleITK thread wherever it runs."""
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    alone = run_registration(cohort, tmp_path / "work", TEST_PROFILE, seed=0,
                             patients=["PH01", "PH02"], progress=False, workers=1)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads  # restored
    columns = ["patient_id", "tre_rigid_mm", "tre_deformable_mm", "dice_rigid",
               "dice_deformable", "min_jacobian"]
    pd.testing.assert_frame_equal(alone.qa[columns], run.qa[columns], check_exact=True)


def test_rerun_reuses_outputs_and_settings_change_redoes_them(cohort: Path, run) -> None:
    again = run_registration(cohort, run.work_dir, TEST_PROFILE, seed=0,
                             patients=["PH01", "PH02"], progress=False)
    assert again.reused == ("PH01", "PH02")
    pd.testing.assert_frame_equal(again.qa, run.qa)
    rigid = run_registration(cohort, run.work_dir / "rigid", TEST_PROFILE, seed=0,
                             rigid_only=True, patients=["PH01"], progress=False)
    row = rigid.qa.iloc[0]
    assert rigid.reused == () and not row["deformable"]
    assert math.isnan(row["dice_deformable"]) and math.isnan(row["min_jacobian"])
    assert not (rigid.work_dir / "registration" / "PH01" / "jacobian.nii.gz").exists()


# --------------------------------------------------------------------------- bad input


def test_gtv_touching_the_volume_edge_is_flagged_not_dropped(run) -> None:
    qa = run.qa.set_index("patient_id")
    assert list(run.qa["patient_id"]) == ["PH01", "PH02"]
    assert qa.loc["PH02", "flagged"] and "edge of the CT volume" in qa.loc["PH02", "flag_reason"]
    assert not qa.loc["PH01", "flagged"], qa.loc["PH01", "flag_reason"]


def test_constant_mr_is_a_clear_error(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "c", {"FLAT": {"constant_mr": True}})
    inputs = patient_inputs(root, "FLAT", CohortConfig())
    with pytest.raises(RegistrationError) as info:
        register_patient(inputs, SMOKE.registration)
    message = str(info.value)
    assert "patient FLAT" in message and "t1w.nii.gz" in message and "constant" in message


def test_mr_without_overlap_is_flagged_or_an_error(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "c", {"FAR": {"mr_offset_mm": (0.0, 0.0, 900.0)}})
    inputs = patient_inputs(root, "FAR", CohortConfig())
    scanner = dataclasses.replace(SMOKE.registration, initialization="scanner")
    with pytest.raises(RegistrationError) as info:
        register_patient(inputs, scanner)
    assert "patient FAR" in str(info.value) and "does not overlap" in str(info.value)
    result = register_patient(inputs, dataclasses.replace(SMOKE.registration, deformable=False))
    row = qa_table([result.qa]).iloc[0]
    assert row["initialization"] == "geometry" and row["flagged"]
    assert "did not overlap" in row["flag_reason"]


def test_registration_settings_from_cohort_toml(tmp_path: Path) -> None:
    cohort = CohortConfig(registration={"bspline_iterations": 7, "refine_sequences": True})
    config = registration_settings(SMOKE, cohort, rigid_only=True)
    assert config.bspline_iterations == 7 and config.refine_sequences and not config.deformable
    with pytest.raises(CohortError, match="unknown setting"):
        registration_settings(SMOKE, CohortConfig(registration={"bspline_mesh": 30}))
    with pytest.raises(CohortError, match="roi_margin_mm"):
        registration_settings(SMOKE, CohortConfig(registration={"roi_margin_mm": 5}))
    with pytest.raises(CohortError, match="whole number"):
        registration_settings(SMOKE, CohortConfig(registration={"rigid_iterations": "many"}))


def test_sequence_refinement_runs_per_sequence(cohort: Path) -> None:
    inputs = patient_inputs(cohort, "PH01", CohortConfig())
    config = dataclasses.replace(SMOKE.registration, refine_sequences=True, deformable=False)
    result = register_patient(inputs, config)
    assert {"refine t2w", "refine ce_t1w"} <= set(result.history["step"])
    assert result.transforms["t2w"].GetNumberOfTransforms() == 2  # motion after CT->t1w


# --------------------------------------------------------------------------- review


def test_review_file_and_exclude_flagged_decide_the_patients(run) -> None:
    work = run.work_dir
    review = work / "registration" / "review.csv"
    assert (work / "registration" / "review_template.csv").exists()
    decided = decide_patients(work, exclude_flagged=False)
    assert decided["kept"].all() and final_patients(work) == ["PH01", "PH02"]
    decide_patients(work, exclude_flagged=True)
    assert final_patients(work) == ["PH01"]
    review.write_text("patient_id,decision,note\nPH02,accept,edge is air\n")
    decide_patients(work, exclude_flagged=True)
    assert final_patients(work) == ["PH01", "PH02"]
    review.write_text("patient_id,decision,note\nPH01,exclude,motion\n")
    assert final_patients(work) == ["PH01", "PH02"]  # unchanged until decided again
    decide_patients(work, exclude_flagged=False)
    assert final_patients(work) == ["PH02"]
    review.write_text("patient_id,decision,note\nPH01,maybe,\n")
    with pytest.raises(RegistrationError, match="line 2.*maybe"):
        read_review(work)
    review.write_text("patient_id,decision,note\nPH99,exclude,\n")
    with pytest.raises(RegistrationError, match="PH99"):
        decide_patients(work)
    review.unlink()


# --------------------------------------------------------------------------- figures, viewers


def test_qa_figures_have_titles_and_units(cohort: Path, run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stsnb.plots import registration as plots

    views = load_views(cohort, run.work_dir, "PH01")
    assert views.gtv.any() and views.gtv_from_mr is not None and views.jacobian is not None
    figures = [plots.qa_distributions(run.qa), plots.overlays(views), plots.contours(views),
               plots.jacobian_map(views), plots.metric_history(views)]
    for fig in figures:
        assert fig._suptitle is not None or any(ax.get_title() for ax in fig.axes)
        labels = " ".join(ax.get_xlabel() + ax.get_ylabel() for ax in fig.axes)
        assert "mm" in labels or "nats" in labels
        plt.close(fig)


class _StandIn:
    """Records what itkwidgets.view receives."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def view(self, **kwargs):
        self.calls.append(kwargs)
        return "viewer"


def test_live_session_viewer_hands_fixed_moving_contour_to_itkwidgets(cohort, run, monkeypatch):
    from types import SimpleNamespace

    import IPython

    from stsnb.run import viewers

    stand_in = _StandIn()
    monkeypatch.setitem(sys.modules, "itkwidgets", stand_in)
    monkeypatch.delenv(viewers.PAPERMILL_ENV, raising=False)
    kernel = SimpleNamespace(get_parent=lambda channel=None: {"content": {"allow_stdin": True}})
    monkeypatch.setattr(IPython, "get_ipython", lambda: SimpleNamespace(kernel=kernel))
    monkeypatch.setattr(viewers, "itk_frontend", lambda timeout_s: (True, ""))  # it would load
    volumes = registered_volumes(cohort, run.work_dir, "PH01")
    assert viewers.live_frontend() == (True, "")
    assert viewers.itk_viewer(volumes["fixed"], volumes["moving"], volumes["contour"]) == "viewer"
    (call,) = stand_in.calls
    np.testing.assert_array_equal(np.asarray(call["fixed_image"].data),
                                  sitk.GetArrayFromImage(volumes["fixed"]))
    np.testing.assert_array_equal(np.asarray(call["image"].data),
                                  sitk.GetArrayFromImage(volumes["moving"]))
    np.testing.assert_array_equal(np.asarray(call["label_image"].data),
                                  sitk.GetArrayFromImage(volumes["contour"]) > 0)
    assert call["fixed_image"].scale["z"] == pytest.approx(CT_SPACING[2])
    # the same helper refuses without a live front end (no kernel, or a batch request)
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert viewers.itk_viewer(volumes["fixed"], volumes["moving"], volumes["contour"]) is None
    kernel.get_parent = lambda channel=None: {"content": {"allow_stdin": False}}
    monkeypatch.setattr(IPython, "get_ipython", lambda: SimpleNamespace(kernel=kernel))
    assert viewers.itk_viewer(volumes["fixed"], volumes["moving"], volumes["contour"]) is None
    assert len(stand_in.calls) == 1


def test_no_itkwidgets_viewer_under_papermill(tmp_path: Path, monkeypatch) -> None:
    """Executed by papermill (no front end), a notebook asking for the viewer gets none; a
    stand-in itkwidgets on the kernel's path would record any call in a file."""
    import nbformat
    import papermill

    from stsnb.run import viewers

    monkeypatch.delenv(viewers.PAPERMILL_ENV, raising=False)  # detected without the variable
    fake = tmp_path / "fake"
    fake.mkdir()
    marker = tmp_path / "viewer_created"
    (fake / "itkwidgets.py").write_text(
        f"def view(**kwargs):\n    open({str(marker)!r}, 'w').write('created')\n")
    monkeypatch.setenv("PYTHONPATH", f"{fake}:{Path(__file__).resolve().parent.parent}")
    source = tmp_path / "viewer.ipynb"
    code = ("import SimpleITK as sitk\nfrom stsnb.run.viewers import itk_viewer, live_frontend\n"
            "image = sitk.Image([4, 4, 4], sitk.sitkFloat32)\n"
            "print(live_frontend())\nviewer = itk_viewer(image, image, image, interactive=True)\n"
            "print('viewer is', viewer)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbformat.write(nb, source)
    papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, execution_timeout=120)
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    text = "".join(o.get("text", "") for o in out.cells[0].outputs)
    assert "viewer is None" in text and "not created" in text
    assert not marker.exists()


def test_offline_slice_viewer_draws_every_mode(cohort: Path, run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stsnb.run.viewers import slice_view, slice_viewer

    volumes = registered_volumes(cohort, run.work_dir, "PH01")
    widget = slice_viewer(volumes["fixed"], volumes["moving"], volumes["contour"])
    slider = widget.children[0].children[0]
    assert slider.max == volumes["fixed"].GetSize()[2] - 1
    a = sitk.GetArrayFromImage(volumes["fixed"]).astype(float)
    b = sitk.GetArrayFromImage(volumes["moving"]).astype(float)
    for mode in ("blend", "checkerboard", "magenta-green", "fixed", "moving"):
        fig = slice_view(a, b, None, 2, mode, 0.5, volumes["fixed"].GetSpacing())
        assert fig.axes[0].get_xlabel() == "x (mm)"
        plt.close(fig)


def test_registration_config_profiles_are_valid() -> None:
    for profile in (SMOKE, QUICK):
        registration_settings(profile)
    assert isinstance(SMOKE.registration, RegistrationConfig)


@pytest.mark.parametrize(("shift", "flagged"), [(2.6, True), (1.5, False), (math.nan, False)])
def test_an_image_in_the_ct_frame_moved_far_is_flagged(shift, flagged):
    row = {"patient_id": "P001", "dice_rigid": 0.95, "tre_rigid_mm": 1.0, "mi_before": 0.5,
           "mi_rigid": 0.6, "gtv_in_mr_fov": 1.0, "gtv_touches_edge": False,
           "scanner_overlap": True, "deformable": False,
           "gtv_shift_mm": shift, "ct_frame_shift_mm": shift,
           "ct_frame_image": "t1w" if shift == shift else ""}
    table = qa_table([row])
    assert bool(table.loc[0, "flagged"]) is flagged
    if flagged:
        reason = "t1w shares the CT's frame but was moved 2.6 mm > 2 mm"
        assert table.loc[0, "flag_reason"] == reason


# --------------------------------------------------------------------------- nothing to register

SAME_FRAME_TOML = ('modalities = ["ct", "dose", "t1w", "t2w", "ce_t1w"]\n'
                   'same_frame_as_ct = ["dose", "t1w", "t2w", "ce_t1w"]\n')


def write_same_frame_cohort(root: Path, patients: dict[str, dict]) -> Path:
    """Phantoms whose MR is in the CT's frame (own oblique grid, no motion), declared so in
    cohort.toml, each MR sequence with its own contour ``gtv_<sequence>.nii.gz``."""
    write_cohort(root, {pid: {"true_map": IDENTITY_MAP, **o} for pid, o in patients.items()})
    (root / "cohort.toml").write_text(SAME_FRAME_TOML, encoding="utf-8")
    for pid in patients:
        contour = sitk.ReadImage(str(root / pid / "truth" / "gtv_mr.nii.gz"))
        for sequence in ("t1w", "t2w", "ce_t1w"):
            sitk.WriteImage(contour, str(root / pid / f"gtv_{sequence}.nii.gz"))
        (root / pid / "truth" / "gtv_mr.nii.gz").unlink()
        (root / pid / "truth" / "landmarks_mm.csv").unlink()
    return root


@pytest.fixture(scope="module")
def same_frame_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("same") / "cohort"
    cohort = write_same_frame_cohort(root, {"SF01": {}, "SF02": {"mr_offset_mm": (0, 0, 300)},
                                            "SF03": {"mr_offset_mm": (6, 0, 0)}})
    work = tmp_path_factory.mktemp("same") / "work"
    return run_registration(cohort, work, TEST_PROFILE, seed=0,
                            patients=["SF01", "SF02", "SF03"], progress=False)


def test_nothing_to_register_resamples_by_geometry_and_checks_each_image(same_frame_run):
    run = same_frame_run
    qa = run.qa.set_index("patient_id")
    row = qa.loc["SF01"]
    assert "not registered" in row["registration_note"] and row["mr_reference"] == ""
    assert math.isnan(row["dice_rigid"]) and math.isnan(row["tre_rigid_mm"])
    assert row["dice_scanner"] >= 0.9 and not row["flagged"], row["flag_reason"]
    images = run.images[run.images["patient_id"] == "SF01"].set_index("image")
    assert list(images.index) == ["dose", "t1w", "t2w", "ce_t1w"]
    assert not images["registered"].any() and (images["shift_mm"] == 0).all()
    assert (images.loc[["t1w", "t2w", "ce_t1w"], "dice_scanner"] >= 0.9).all()
    assert images["dice_registered"].isna().all() and (images["gtv_in_fov"] > 0.99).all()
    folder = run.work_dir / "registration" / "SF01"
    assert not list(folder.glob("transform_*"))  # nothing registered, nothing to save
    ct = sitk.ReadImage(str(run.cohort_dir / "SF01" / "ct.nii.gz"))
    source = sitk.ReadImage(str(run.cohort_dir / "SF01" / "t2w.nii.gz"))
    saved = sitk.ReadImage(str(folder / "t2w.nii.gz"))
    assert saved.GetSize() == ct.GetSize() and saved.GetOrigin() == ct.GetOrigin()
    by_geometry = sitk.Resample(source, ct, sitk.Transform(), sitk.sitkLinear, 0.0,
                                source.GetPixelID())
    assert np.abs(sitk.GetArrayFromImage(saved).astype(float)
                  - sitk.GetArrayFromImage(by_geometry)).max() <= 1.0  # rounding only
    table = pd.read_csv(run.work_dir / "registration" / "qa_images.csv")
    assert len(table) == 12 and set(table["patient_id"]) == {"SF01", "SF02", "SF03"}
    decided = decide_patients(run.work_dir, exclude_flagged=True)
    assert decided.set_index("patient_id")["kept"].to_dict() == {"SF01": True, "SF02": False,
                                                                 "SF03": False}
    mr = images.loc[["t1w", "t2w", "ce_t1w"]]  # the bone check: right where it is
    assert mr["bone_prefers_scanner"].astype(bool).all() and mr["bone_ratio_scanner"].lt(1).all()
    assert np.isnan(images.loc["dose", "bone_ratio_scanner"])  # applies to MR only


def test_an_image_declared_in_the_ct_frame_that_misses_the_gtv_is_flagged(same_frame_run):
    row = same_frame_run.qa.set_index("patient_id").loc["SF02"]
    assert row["flagged"]
    assert "only 0% of the GTV inside the t1w field of view" in row["flag_reason"]
    assert "contour placed by geometry" in row["flag_reason"]  # its own contour is off too
    images = same_frame_run.images.set_index(["patient_id", "image"])
    assert images.loc[("SF02", "t2w"), "gtv_in_fov"] == 0.0
    assert images.loc[("SF02", "dose"), "gtv_in_fov"] > 0.99  # the dose still covers it


def test_the_bone_check_sees_an_image_6_mm_off_the_ct_frame(same_frame_run):
    """Declared in the CT's frame but 6 mm off: its bone lies better on the CT's when moved."""
    row = same_frame_run.qa.set_index("patient_id").loc["SF03"]
    assert row["flagged"] and "bone check" in row["flag_reason"], row["flag_reason"]
    assert "t1w" in row["bone_off_images"]
    images = same_frame_run.images.set_index(["patient_id", "image"])
    t1w = images.loc[("SF03", "t1w")]
    assert t1w["bone_ratio_best_shift"] < t1w["bone_ratio_scanner"]


def test_nothing_to_register_figures_show_the_image_in_the_ct_frame(same_frame_run):
    from stsnb.plots import registration as plots

    views = load_views(same_frame_run.cohort_dir, same_frame_run.work_dir, "SF01")
    assert not views.registered and views.reference == "t1w" and views.mr_rigid is None
    assert views.gtv_from_mr is not None and views.gtv_from_mr.any()
    overlay = plots.overlays(views)
    assert len(overlay.axes) == 3 and "not registered" in overlay._suptitle.get_text()
    figure = plots.contours(views)
    shown = same_frame_run.images.set_index(["patient_id", "image"]).loc[("SF01", "t1w")]
    assert f"Dice {shown['dice_scanner']:.3f}" in figure._suptitle.get_text()
    volumes = registered_volumes(same_frame_run.cohort_dir, same_frame_run.work_dir, "SF01")
    assert volumes["moving"].GetSize() == volumes["fixed"].GetSize()


def test_mixed_cohort_lists_registered_and_same_frame_images(run) -> None:
    images = run.images[run.images["patient_id"] == "PH01"].set_index("image")
    assert images.loc["t1w", "registered"] and not images.loc["dose", "registered"]
    assert images.loc["dose", "shift_mm"] == 0 and images.loc["dose", "gtv_in_fov"] > 0.99
    t1w = images.loc["t1w"]
    assert t1w["dice_registered"] > 0.85 and t1w["dice_registered"] > t1w["dice_scanner"] + 0.05
    assert t1w["shift_mm"] > 3.0  # the known offset is about 9 mm


def test_ct_frame_synthetic_cohort_runs_every_stage_without_registration(tmp_path: Path):
    """`synth --mr-frame ct`: the MR written in the CT's frame on its own grid. Nothing is
    registered; the per-sequence contours placed by geometry agree with the GTV (Dice >= 0.95);
    the slice store and a training run follow unchanged."""
    from stsnb.core.modalities import MR_MODALITIES
    from stsnb.curation.stage import run_curation
    from stsnb.slices import run_preprocessing
    from stsnb.synth import make_synthetic_cohort
    from stsnb.training.stage import train_combination

    cohort, work = tmp_path / "cohort", tmp_path / "work"
    make_synthetic_cohort(cohort, n_patients=8, seed=3, progress=False, workers=1,
                          mr_frame="ct")
    run_curation(cohort, work, SMOKE, progress=False)
    run = run_registration(cohort, work, SMOKE, progress=False)
    assert run.qa["registration_note"].str.startswith("not registered").all()
    mr = run.images[run.images["image"].isin(MR_MODALITIES)]
    assert len(mr) >= 2 * len(run.qa) and not mr["registered"].any()
    assert (mr["dice_scanner"] >= 0.95).all(), mr[["patient_id", "image", "dice_scanner"]]
    assert not run.qa["flagged"].any(), run.qa["flag_reason"].tolist()
    kept = decide_patients(work)
    store = run_preprocessing(cohort, work, SMOKE, progress=False)
    assert sorted(store.index["patient_id"].unique()) == sorted(
        kept.loc[kept["kept"], "patient_id"])
    trained = train_combination(store, work, SMOKE, combo=9, device="cpu", weights="none",
                                precision="fp32", progress=False)
    assert len(trained.predictions) == len(store.index)
    assert trained.predictions["prob"].between(0, 1).all()


# --------------------------------------------------------------------------- never worse


def test_accept_step_and_the_initial_start_rule() -> None:
    from stsnb.registration.rigid import accept_step, choose_start

    start, end = sitk.Euler3DTransform(), sitk.TranslationTransform(3, (1.0, 0.0, 0.0))
    assert accept_step(start, -0.50, end, -0.60, "rigid") == (end, "")
    kept, why = accept_step(start, -0.50, end, -0.40, "rigid")
    assert kept is start and why.startswith("rigid: metric -0.4000 not better")
    assert accept_step(start, math.inf, end, -0.1, "rigid")[0] is end
    ct = sitk.Image([20, 20, 10], sitk.sitkFloat32)

    def scored(geometry_metric: float, shift_mm: float):
        far = sitk.Euler3DTransform()
        far.SetTranslation((shift_mm, 0.0, 0.0))
        return [(-1.0, "scanner", sitk.Euler3DTransform(), ct),
                (geometry_metric, "geometry", far, ct)]

    config = TEST_CONFIG  # 10 mm, 5 %
    (_, name, _, _), distance = choose_start(scored(-1.04, 15.0), True, ct, config)
    assert name == "scanner" and distance == pytest.approx(15.0)  # far, gains only 4 %
    assert choose_start(scored(-1.10, 15.0), True, ct, config)[0][1] == "geometry"  # 10 %
    assert choose_start(scored(-1.04, 5.0), True, ct, config)[0][1] == "geometry"  # near
    assert choose_start(scored(-1.04, 15.0), False, ct, config)[0][1] == "geometry"


def test_a_rigid_optimum_worse_than_its_start_keeps_the_start(cohort: Path, monkeypatch) -> None:
    """An optimiser made to end 15 mm off (and worse by the metric) is not kept."""
    from stsnb.registration import rigid

    honest = rigid._multi_start

    def astray(fixed, moving, transform, levels, config, seed, mask=None):
        transform, history, _, stop = honest(fixed, moving, transform, levels, config, seed,
                                             mask)
        off = sitk.Euler3DTransform(transform)
        off.SetTranslation(tuple(np.add(off.GetTranslation(), (15.0, 0.0, 0.0))))
        image = rigid._level_image(fixed, levels[-1])
        return off, history, rigid._score(image, moving, off, config, seed, mask), stop

    monkeypatch.setattr(rigid, "_multi_start", astray)
    inputs = patient_inputs(cohort, "PH01", CohortConfig())
    ct, mr = sitk.ReadImage(str(inputs.ct)), sitk.ReadImage(str(inputs.registered["t1w"]))
    result = rigid.register_rigid(ct, mr, TEST_CONFIG, seed=0)
    assert result.rejected.startswith("rigid: metric") and result.metric > result.start_metric
    assert result.initialization == "scanner"
    np.testing.assert_allclose(result.transform.GetParameters(), (0, 0, 0, 0, 0, 0))


def test_a_folding_bspline_falls_back_to_rigid(cohort: Path, monkeypatch) -> None:
    """A B-spline made to fold (large alternating coefficients) is rejected: the rigid result
    is kept and qa.csv says why."""
    from stsnb.registration import patient as patient_module

    honest = patient_module.register_deformable

    def folding(*args, **kwargs):
        result = honest(*args, **kwargs)
        n = result.bspline.GetNumberOfParameters()
        result.bspline.SetParameters([150.0 * (-1) ** i for i in range(n)])
        return result

    monkeypatch.setattr(patient_module, "register_deformable", folding)
    inputs = patient_inputs(cohort, "PH01", CohortConfig())
    result = register_patient(inputs, TEST_CONFIG, seed=0)
    assert not result.qa["deformable"] and result.deformable is None
    assert "deformable:" in result.qa["rejected_steps"] and "folds" in result.qa["rejected_steps"]
    assert "rigid kept" in result.qa["rejected_steps"]
    point = [10.0, -5.0, 3.0]
    np.testing.assert_allclose(result.transforms["t1w"].TransformPoint(point),
                               result.rigid_transforms["t1w"].TransformPoint(point))
    table = qa_table([result.qa])
    assert not table.loc[0, "flagged"] or "rigid step" not in table.loc[0, "flag_reason"]
    assert table.loc[0, "rigid_metric_end"] < table.loc[0, "rigid_metric_start"]


def test_every_chapter_runs_on_a_pet_ct_cohort_with_its_mr_in_the_ct_frame(ct_frame_run):
    """The commonest real case (a PET/CT with the MR already aligned to it): nothing is
    registered, the T1w's own contour placed by geometry agrees with the GTV, and every
    chapter runs (smoke profile)."""
    import nbformat

    names = {p.stem for p in ct_frame_run["notebooks"]}
    for chapter in ct_frame_run["chapters"]:
        assert chapter in names or any(n.startswith(chapter) for n in names), chapter
    for path in ct_frame_run["notebooks"]:
        nb = nbformat.read(path, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert errors == [], path.name
    work = ct_frame_run["work_dir"]
    qa = pd.read_csv(work / "registration" / "qa.csv")
    assert qa["registration_note"].str.startswith("not registered").all()
    images = pd.read_csv(work / "registration" / "qa_images.csv")
    t1w = images[images["image"] == "t1w"]
    assert len(t1w) == len(qa) and not images["registered"].any()
    assert (t1w["dice_scanner"] >= 0.95).all(), t1w[["patient_id", "dice_scanner"]]
    assert (work / "runs" / "patient" / "combo01" / "predictions.csv").exists()


def test_a_metric_value_without_gradient_images_is_the_same_value():
    from stsnb.registration.history import metric_value, sampling_seed

    rng = np.random.default_rng(3)
    volume = ndimage.gaussian_filter(rng.random((40, 48, 44)), 3).astype(np.float32)
    fixed = sitk.GetImageFromArray(volume)
    moving = sitk.GetImageFromArray(np.roll(volume, 2, axis=2) ** 2)
    moving.SetSpacing((1.1, 1.0, 1.2))
    transform = sitk.Euler3DTransform()
    transform.SetParameters((0.02, -0.01, 0.05, 1.5, -0.5, 0.8))

    def method() -> sitk.ImageRegistrationMethod:
        m = sitk.ImageRegistrationMethod()
        m.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        m.SetMetricSamplingStrategy(m.RANDOM)
        m.SetMetricSamplingPercentage(0.2, sampling_seed(0))
        m.SetInterpolator(sitk.sitkLinear)
        m.SetInitialTransform(transform, inPlace=False)
        return m

    with_gradients = method().MetricEvaluate(fixed, moving)
    assert metric_value(method(), fixed, moving) == with_gradients < 0
