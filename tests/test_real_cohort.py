"""The appendix's real cohort: the TCIA sample imported from DICOM agrees with its independently
converted NIfTI masks, registering its T1w (already in the CT's frame) stays near the identity,
and the stages of chapters 01-03 run on it quickly."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from stsnb.appendix.figures import cortex_figure
from stsnb.appendix.real_cohort import (
    DICE_MIN,
    IDENTITY_MAX_MM,
    MIN_CORTEX_VOXELS,
    SAMPLE_REGISTRATION,
    cortex_check,
    focus_sensitivity,
    identity_displacement,
    import_sample,
    mask_agreement,
    placements,
)
from stsnb.core.config import QUICK, SMOKE
from stsnb.core.errors import CohortError, StsnbError
from stsnb.curation.cohort_config import CohortConfig, read_cohort_config
from stsnb.curation.stage import run_curation
from stsnb.registration import decide_patients, registration_settings, run_registration
from stsnb.registration.errors import RegistrationError
from stsnb.registration.rigid import focus_mask
from stsnb.registration.stage import _settings_key
from stsnb.slices import run_preprocessing

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tcia-sts-sample"
#: The appendix chapter must stay quick: import, curation, registration and preprocessing (s).
MAX_SECONDS = 120.0


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The sample imported and taken through curation, registration and preprocessing."""
    out = tmp_path_factory.mktemp("real-cohort")
    started = time.perf_counter()
    imported = import_sample(SAMPLE, out, register_t1w=True)
    work = out / "work"
    run_curation(imported.cohort_dir, work, SMOKE, progress=False)
    run = run_registration(imported.cohort_dir, work, SMOKE, progress=False)
    decide_patients(work)
    store = run_preprocessing(imported.cohort_dir, work, SMOKE, progress=False)
    return {"out": out, "cohort": imported.cohort_dir, "work": work, "run": run,
            "store": store, "seconds": time.perf_counter() - started}


def test_imported_masks_and_grids_match_the_shipped_nifti(real_run):
    table = mask_agreement(real_run["cohort"], SAMPLE, real_run["out"] / "ids.csv")
    assert list(table["source"].unique()) == ["STS_002", "STS_003", "STS_012"]
    assert len(table) == 9 and set(table["image"]) == {"ct", "t1w", "pet"}
    assert table["same_size"].all()
    assert (table["spacing_diff_mm"] <= 0.1).all() and (table["origin_diff_mm"] <= 0.1).all()
    assert (table["dice"] >= DICE_MIN).all(), table[["patient_id", "image", "dice"]]
    assert (table["voxels"] > 100).all() and table["agrees"].all()


def test_mask_agreement_sees_a_shifted_mask(real_run, tmp_path):
    """A mask moved by 4 voxels, and one on a grid moved by 0.5 mm, both fail the check."""
    cohort = tmp_path / "cohort"
    shutil.copytree(real_run["cohort"], cohort)
    path = cohort / "P002" / "gtv.nii.gz"
    mask = sitk.ReadImage(str(path))
    shifted = sitk.GetImageFromArray(np.roll(sitk.GetArrayFromImage(mask), 4, axis=2))
    shifted.CopyInformation(mask)
    sitk.WriteImage(shifted, str(path))
    pet = cohort / "P003" / "gtv_pet.nii.gz"
    moved = sitk.ReadImage(str(pet))
    moved.SetOrigin(tuple(np.add(moved.GetOrigin(), (0.5, 0.0, 0.0))))
    sitk.WriteImage(moved, str(pet))
    table = mask_agreement(cohort, SAMPLE, real_run["out"] / "ids.csv").set_index(
        ["patient_id", "image"])
    assert table.loc[("P002", "ct"), "dice"] < DICE_MIN
    assert table.loc[("P003", "pet"), "origin_diff_mm"] == pytest.approx(0.5, abs=1e-3)
    assert list(table.index[~table["agrees"]]) == [("P002", "ct"), ("P003", "pet")]


def test_the_cohort_declares_the_t1w_registered_with_its_own_settings(real_run):
    config = read_cohort_config(real_run["cohort"])
    assert config.modalities == ("ct", "t1w", "pet")
    assert config.registered == ("t1w",) and config.same_frame_as_ct == ("pet",)
    assert config.registered_in_ct_frame == ("t1w",)  # shares the CT's frame, registered anyway
    for profile in (SMOKE, QUICK):  # the cohort's settings win over the profile's
        settings = registration_settings(profile, config, cohort_dir=real_run["cohort"])
        for key, value in SAMPLE_REGISTRATION.items():
            got = getattr(settings, key)
            assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert (real_run["run"].qa["initialization"] == "scanner").all()
    assert not real_run["run"].qa["deformable"].any()


def test_identity_displacement_measures_a_known_shift(real_run, tmp_path):
    """Transforms with a known translation (3, 4, 0) mm give 5 mm at every GTV voxel."""
    folder = tmp_path / "registration" / "P001"
    folder.mkdir(parents=True)
    shift = sitk.TranslationTransform(3, (3.0, 4.0, 0.0))
    sitk.WriteTransform(sitk.Euler3DTransform(), str(folder / "transform_t1w_rigid.tfm"))
    sitk.WriteTransform(shift, str(folder / "transform_t1w.h5"))
    table = identity_displacement(real_run["cohort"], tmp_path, "t1w")
    row = table.iloc[0]
    assert row["patient_id"] == "P001" and row["gtv_voxels"] > 10000
    assert row["mean_rigid_mm"] == pytest.approx(0.0) and row["max_rigid_mm"] == pytest.approx(0)
    assert row["mean_final_mm"] == pytest.approx(5.0) and row["max_final_mm"] == pytest.approx(5)
    assert not row["near_identity"]


@pytest.mark.xfail(strict=True, reason=(
    "measured: Mattes MI between the sample's CT and T1w crops has its optimum millimetres "
    "from the identity (mean GTV displacement 2.4, 3.2 and 10.2 mm with the tumour-focused "
    "metric; 1.8, 9.8 and 8.2 mm over the whole overlap); gradient correlation and normalised "
    "gradient fields move 3-11 mm too, while the CT's bone lies on the T1w's at the identity "
    "(cortex_check)"))
def test_registering_the_t1w_anyway_stays_near_the_identity(real_run):
    table = identity_displacement(real_run["cohort"], real_run["work"], "t1w")
    assert list(table["patient_id"]) == ["P001", "P002", "P003"]
    assert (table["mean_final_mm"] < IDENTITY_MAX_MM).all(), table.round(2).to_dict("records")


def test_registration_qa_and_slices_of_the_real_cohort(real_run):
    qa = real_run["run"].qa
    assert list(qa.sort_values("patient_id")["patient_id"]) == ["P001", "P002", "P003"]
    assert qa["dice_rigid"].notna().all()  # gtv_t1w.nii.gz mapped onto the CT grid
    assert (qa["gtv_in_mr_fov"] > 0.99).all()
    store = real_run["store"]
    assert store.modalities == ("ct", "t1w", "pet")
    assert sorted(store.index["patient_id"].unique()) == ["P001", "P002", "P003"]
    labels = store.index.groupby("patient_id")["label"].first()
    assert labels.to_dict() == {"P001": 0, "P002": 0, "P003": 1}  # STS_012: bone metastases
    patients = pd.read_csv(real_run["work"] / "registration" / "patients.csv")
    assert patients["kept"].all()


def test_the_real_cohort_stages_are_quick(real_run):
    assert real_run["seconds"] < MAX_SECONDS, real_run["seconds"]


def test_rigid_focus_setting_is_validated_and_neutral_at_zero(tmp_path):
    default = registration_settings(SMOKE, CohortConfig())
    assert default.rigid_focus_mm == 0.0
    assert "rigid_focus_mm" not in _settings_key(default)  # earlier outputs stay reusable
    focused = dataclasses.replace(default, rigid_focus_mm=20.0)
    assert _settings_key(focused)["rigid_focus_mm"] == 20.0
    with pytest.raises(CohortError, match="rigid_focus_mm"):
        registration_settings(SMOKE, CohortConfig(registration={"rigid_focus_mm": 2.0}))
    ct = sitk.Image(20, 20, 10, sitk.sitkFloat32)
    assert focus_mask(ct, None, default) is None
    empty = sitk.Image(20, 20, 10, sitk.sitkUInt8)
    with pytest.raises(RegistrationError, match="tumour mask is empty"):
        focus_mask(ct, empty, focused)
    gtv = sitk.Image(20, 20, 10, sitk.sitkUInt8)
    gtv[10, 10, 5] = 1
    mask = sitk.GetArrayFromImage(focus_mask(ct, gtv, dataclasses.replace(default,
                                                                           rigid_focus_mm=5.0)))
    assert mask[5, 10, 10] == 1 and mask[5, 10, 15] == 1 and mask[5, 10, 16] == 0
    assert mask.sum() < mask.size


def _write_transforms(work: Path, transform: sitk.Transform) -> None:
    for patient_id in ("P001", "P002", "P003"):
        folder = work / "registration" / patient_id
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteTransform(transform, str(folder / "transform_t1w.h5"))


def test_cortex_check_sees_a_known_shift_and_ties_at_the_identity(real_run, tmp_path):
    """The T1w moved 6 mm off its scanner position takes its dark cortex off the CT's bone in
    every patient; the identity itself is a tie."""
    _write_transforms(tmp_path / "shifted", sitk.TranslationTransform(3, (6.0, 0.0, 0.0)))
    shifted = cortex_check(real_run["cohort"], tmp_path / "shifted", "t1w")
    assert list(shifted["patient_id"]) == ["P001", "P002", "P003"]
    assert (shifted["cortex_voxels"] >= MIN_CORTEX_VOXELS).all()
    assert (shifted["cortex_ratio_final"] > 1.15 * shifted["cortex_ratio_identity"]).all()
    assert (shifted["bone_prefers"] == "identity").all()
    assert (shifted["metric_prefers"] == "no qa.csv").all()  # no registration QA there
    _write_transforms(tmp_path / "same", sitk.Euler3DTransform())
    same = cortex_check(real_run["cohort"], tmp_path / "same", "t1w")
    assert np.allclose(same["cortex_ratio_final"], same["cortex_ratio_identity"])
    assert (same["bone_prefers"] == "either").all()


def test_bone_and_metric_on_the_forced_registration(real_run):
    """The measured finding of the appendix: the femur of P003 (STS_012) says its T1w was right
    at its scanner position, 10 mm from where the tumour-focused registration put it; the figure
    draws for every patient."""
    table = cortex_check(real_run["cohort"], real_run["work"], "t1w").set_index("patient_id")
    assert table.loc["P003", "bone_prefers"] == "identity"
    p003 = table.loc["P003"]
    assert p003["cortex_ratio_final"] > 1.3 * p003["cortex_ratio_identity"]
    assert table["mi_identity"].notna().all() and table["mi_final"].notna().all()
    for patient_id in table.index:
        figure = cortex_figure(placements(real_run["cohort"], real_run["work"], patient_id))
        assert len(figure.axes) == 2 and figure.axes[0].images
        plt.close(figure)


def test_placements_name_the_patient_without_a_transform(real_run, tmp_path):
    with pytest.raises(StsnbError, match="Patient P002: no .*transform_t1w.h5"):
        placements(real_run["cohort"], tmp_path, "P002")


def test_focus_sensitivity_reproduces_the_stage_and_leaves_the_work_alone(real_run):
    """Redone with the cohort's own region (20 mm), the forced registration gives the stage's
    displacements; the saved transforms are not touched."""
    saved = real_run["work"] / "registration" / "P003" / "transform_t1w.h5"
    before = saved.stat().st_mtime_ns
    table = focus_sensitivity(real_run["cohort"], SMOKE, "t1w", focus_mm=(20.0,))
    stage = identity_displacement(real_run["cohort"], real_run["work"], "t1w")
    assert list(table["patient_id"]) == ["P001", "P002", "P003"]
    assert np.allclose(table["mean_displacement_mm"], stage["mean_final_mm"], atol=1e-3)
    assert list(table["near_identity"]) == list(stage["near_identity"])
    assert saved.stat().st_mtime_ns == before
    assert set(table["bone_prefers"]) <= {"identity", "registered", "either"}


def test_the_qa_flags_the_t1w_moved_off_the_ct_frame(real_run):
    """The T1w shares the CT's frame (registered_in_ct_frame): the QA measures how far the
    registration moved the tumour and flags every patient moved more than 2 mm."""
    qa = real_run["run"].qa.set_index("patient_id")
    stage = identity_displacement(real_run["cohort"], real_run["work"], "t1w").set_index(
        "patient_id")
    assert np.allclose(qa["ct_frame_shift_mm"], stage["mean_final_mm"], atol=0.1)
    assert np.allclose(qa["gtv_shift_mm"], qa["ct_frame_shift_mm"])  # the t1w is the reference
    assert (qa["ct_frame_image"] == "t1w").all()
    moved = stage["mean_final_mm"] > IDENTITY_MAX_MM
    for patient_id, far in moved.items():
        reason = qa.loc[patient_id, "flag_reason"]
        assert ("t1w shares the CT's frame but was moved" in reason) is bool(far), reason
        assert qa.loc[patient_id, "flagged"] or not far
