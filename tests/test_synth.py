"""The synthetic cohort generator: screening, physics per modality, geometry, truth, outcome."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from stsnb.core.errors import ConfigError
from stsnb.core.modalities import MR_MODALITIES, STUDY_MODALITIES
from stsnb.curation.cohort_config import read_cohort_config
from stsnb.synth import anatomy as A
from stsnb.synth import make_synthetic_cohort, plan_cohort
from stsnb.synth.pet import psf_sigma_mm, render_pet
from stsnb.synth.plan import assign_missing, n_incomplete, patient_rng, plan_patients
from stsnb.synth.writer import check_modalities, cohort_toml

N_PATIENTS, SEED = 8, 3
PET_MODALITIES = ("ct", "pet", "t1w")  # the images of conftest.py's pet_cohort


@pytest.fixture(scope="module")
def cohort(smoke_cohort: Path) -> Path:
    """The session's small cohort (8 screened patients, one incomplete; conftest.py)."""
    return smoke_cohort


@pytest.fixture(scope="module")
def plan() -> pd.DataFrame:
    return plan_cohort(N_PATIENTS, SEED)


@pytest.fixture(scope="module")
def default_plan() -> pd.DataFrame:
    return plan_cohort()


def read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def complete_ids(plan: pd.DataFrame) -> list[str]:
    return plan.loc[plan.complete, "patient_id"].tolist()


def truth_transform(pdir: Path) -> sitk.Transform:
    rigid = sitk.ReadTransform(str(pdir / "truth" / "ct_to_mr_rigid.tfm"))
    field = sitk.ReadImage(str(pdir / "truth" / "ct_to_mr_displacement.nii.gz"),
                           sitk.sitkVectorFloat64)
    return sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(field)])


# ---------------------------------------------------------------- screening and scale (plan only)

def test_default_plan_is_screened_like_the_study(default_plan: pd.DataFrame):
    p = default_plan
    assert len(p) == 72 and p.patient_id.is_unique and int(p.complete.sum()) == 61
    kinds = set(p.loc[~p.complete, "missing"])
    assert {"dose", "gtv", "followup"} <= kinds and kinds & set(MR_MODALITIES)
    known = p.distant_metastasis.dropna()
    assert 0.25 <= known.mean() <= 0.42
    slices = int(p.loc[p.complete, "n_slices"].sum())
    assert 2200 <= slices <= 2600, slices
    # n_slices = CT slices (3 mm) within the tumour z-extent +-10 mm
    approx = (p.tumour_z_extent_mm + 20) / 3
    assert np.all(np.abs(p.n_slices - approx) <= 1.5)
    assert p.tumour_size_cm.between(3, 15).all()
    assert p.necrosis_fraction.between(0, 0.6).all() and p.necrosis_fraction.max() > 0.3
    assert set(p.grade) == {1, 2, 3} and p.haemorrhage.any() and (p.oedema_mm > 0).any()


def test_incomplete_count_scales_and_patients_are_independent(default_plan: pd.DataFrame):
    assert [n_incomplete(n) for n in (8, 36, 72, 144)] == [1, 6, 11, 22]
    small = plan_cohort(5, 0)
    cols = ["patient_id", "tumour_size_cm", "necrosis_fraction", "risk_score", "n_slices"]
    pd.testing.assert_frame_equal(small[cols], default_plan[cols].iloc[:5])
    other = plan_cohort(5, 1)
    assert not np.allclose(other.tumour_size_cm, small.tumour_size_cm)


def test_outcome_follows_the_latent_risk(default_plan: pd.DataFrame):
    p = default_plan
    assert p.risk.between(0, 1).all()
    hi = p.metastasis_latent[p.risk_score > p.risk_score.median()].mean()
    lo = p.metastasis_latent[p.risk_score <= p.risk_score.median()].mean()
    assert hi > lo + 0.3
    followup_missing = p.missing == "followup"
    assert p.distant_metastasis[followup_missing].isna().all()
    assert p.followup_months[followup_missing].isna().all()
    assert p.distant_metastasis[~followup_missing].notna().all()


# ---------------------------------------------------------------- layout and clinical table

def test_layout_and_clinical_table(cohort: Path, plan: pd.DataFrame):
    clin = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str})
    assert clin.patient_id.tolist() == plan.patient_id.tolist()
    for col in ("patient_id", "distant_metastasis", "followup_months", "age", "sex",
                "histology", "grade", "site", "prescription_gy"):
        assert col in clin.columns
    toml = tomllib.loads((cohort / "cohort.toml").read_text())
    assert toml["modalities"] == list(STUDY_MODALITIES)
    assert toml["mr_reference"] == "t1w" and toml["same_frame_as_ct"] == ["dose"]
    assert "synthetic" in (cohort / "cohort.toml").read_text().lower()
    assert clin.age.between(18, 90).all() and set(clin.sex) <= {"M", "F"}
    assert clin.grade.isin([1, 2, 3]).all() and (clin.prescription_gy == 50).all()
    assert set(clin.site) <= {"thigh", "upper_arm", "lower_leg"}
    known = clin.distant_metastasis.notna()
    neg = known & (clin.distant_metastasis == 0)
    pos = known & (clin.distant_metastasis == 1)
    assert (clin.followup_months[neg] >= 24).all()
    assert (clin.time_to_metastasis_months[pos] <= clin.followup_months[pos]).all()
    leftovers = [p for p in cohort.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []


def test_incomplete_patients_lack_exactly_what_the_plan_says(cohort: Path, plan: pd.DataFrame):
    clin = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert (plan.missing != "").sum() == n_incomplete(N_PATIENTS)
    for row in plan.itertuples():
        pdir = cohort / row.patient_id
        for stem in (*STUDY_MODALITIES, "gtv"):
            assert (pdir / f"{stem}.nii.gz").exists() == (stem != row.missing), (row, stem)
        no_followup = pd.isna(clin.loc[row.patient_id, "followup_months"])
        assert no_followup == (row.missing == "followup")
        assert pd.isna(clin.loc[row.patient_id, "distant_metastasis"]) == no_followup
        for name in ("gtv_mr.nii.gz", "landmarks_mm.csv", "ct_to_mr_rigid.tfm",
                     "ct_to_mr_displacement.nii.gz", "tissue_labels.nii.gz", "risk.json",
                     "README.txt"):
            assert (pdir / "truth" / name).exists()


def test_plan_is_what_was_rendered(cohort: Path, plan: pd.DataFrame):
    for row in plan.itertuples():
        img, lab = read(cohort / row.patient_id / "truth" / "tissue_labels.nii.gz")
        ks = np.nonzero(np.isin(lab, A.GTV_LABELS).any(axis=(1, 2)))[0]
        z = img.GetOrigin()[2] + img.GetSpacing()[2] * ks
        assert abs(z.min() - row.tumour_z_min_mm) < 3.5 and abs(z.max() - row.tumour_z_max_mm) < 3.5
        zk = img.GetOrigin()[2] + 3.0 * np.arange(lab.shape[0])
        lo, hi = row.tumour_z_min_mm - 10, row.tumour_z_max_mm + 10
        assert int(np.sum((zk >= lo) & (zk <= hi))) == row.n_slices


# ---------------------------------------------------------------- physics per modality

HU_RANGES = {A.FAT: (-130, -70), A.MUSCLE: (30, 60), A.CORTEX: (700, 2000), A.MARROW: (-100, 50),
             A.TUMOUR: (25, 55), A.NECROSIS: (0, 30), A.AIR: (-1024, -900)}


def test_ct_hounsfield_units_per_tissue(cohort: Path, plan: pd.DataFrame):
    for pid in plan.patient_id[:4]:
        ct_img, ct = read(cohort / pid / "ct.nii.gz")
        _, lab = read(cohort / pid / "truth" / "tissue_labels.nii.gz")
        assert ct.dtype == np.int16
        sx, sy, sz = ct_img.GetSpacing()
        assert 0.9 <= sx <= 1.1 and sy == sx and sz == 3.0
        assert 200 <= ct_img.GetSize()[0] * sx <= 300
        for label, (lo, hi) in HU_RANGES.items():
            if (lab == label).sum() > 50:
                med = np.median(ct[lab == label])
                assert lo <= med <= hi, (pid, A.LEGEND[label], med)


def test_dose_grid_maximum_and_gtv_coverage(cohort: Path, plan: pd.DataFrame):
    for pid in complete_ids(plan)[:4]:
        ct_img, _ = read(cohort / pid / "ct.nii.gz")
        dose_img, dose = read(cohort / pid / "dose.nii.gz")
        assert dose.dtype == np.float32
        assert dose_img.GetSpacing() != ct_img.GetSpacing()
        assert dose_img.GetOrigin() != ct_img.GetOrigin()
        assert dose_img.GetDirection() == ct_img.GetDirection()
        assert 50.0 <= dose.max() <= 55.0
        on_ct = sitk.GetArrayFromImage(
            sitk.Resample(dose_img, ct_img, sitk.Transform(), sitk.sitkLinear, 0.0))
        gtv = read(cohort / pid / "gtv.nii.gz")[1].astype(bool)
        d98 = np.percentile(on_ct[gtv], 2)
        assert d98 >= 0.95 * 50.0, (pid, d98)
        _, lab = read(cohort / pid / "truth" / "tissue_labels.nii.gz")
        assert np.median(on_ct[lab == A.AIR]) == 0.0
        assert np.median(on_ct[(lab != A.AIR) & ~gtv]) < 40.0


def test_mr_session_has_its_own_frame(cohort: Path, plan: pd.DataFrame):
    for pid in complete_ids(plan)[:4]:
        ct_img, _ = read(cohort / pid / "ct.nii.gz")
        imgs = [read(cohort / pid / f"{s}.nii.gz")[0] for s in MR_MODALITIES]
        ref = imgs[0]
        for img in imgs[1:]:
            assert img.GetSize() == ref.GetSize() and img.GetSpacing() == ref.GetSpacing()
            assert img.GetOrigin() == ref.GetOrigin() and img.GetDirection() == ref.GetDirection()
        assert not np.allclose(ref.GetDirection(), np.eye(3).ravel(), atol=1e-3)
        assert ref.GetSpacing()[2] >= 4.0 and ref.GetSpacing()[0] < ct_img.GetSpacing()[0]
        fov_mr = ref.GetSize()[0] * ref.GetSpacing()[0]
        assert fov_mr < ct_img.GetSize()[0] * ct_img.GetSpacing()[0]
        # the MR covers the tumour's extent along its slice axis +-10 mm
        _, gtv_mr = read(cohort / pid / "truth" / "gtv_mr.nii.gz")
        ks = np.nonzero(gtv_mr.any(axis=(1, 2)))[0]
        sz = ref.GetSpacing()[2]
        assert ks.min() * sz >= 10 and (gtv_mr.shape[0] - 1 - ks.max()) * sz >= 10


def test_truth_transform_lines_up_mr_and_ct(cohort: Path, plan: pd.DataFrame):
    for pid in plan.patient_id:
        pdir = cohort / pid
        tfm = truth_transform(pdir)
        lm = pd.read_csv(pdir / "truth" / "landmarks_mm.csv")
        assert len(lm) >= 8 and lm.ct_z.nunique() >= 3
        ct_pts = lm[["ct_x", "ct_y", "ct_z"]].to_numpy()
        mr_pts = lm[["mr_x", "mr_y", "mr_z"]].to_numpy()
        mapped = np.array([tfm.TransformPoint(p.tolist()) for p in ct_pts])
        assert np.abs(mapped - mr_pts).max() < 0.5
        # a real offset: several mm rigidly, plus a non-rigid part
        assert np.median(np.linalg.norm(mr_pts - ct_pts, axis=1)) > 3.0
        rigid = sitk.ReadTransform(str(pdir / "truth" / "ct_to_mr_rigid.tfm"))
        rigid_only = np.array([rigid.TransformPoint(p.tolist()) for p in ct_pts])
        assert np.linalg.norm(rigid_only - mr_pts, axis=1).max() > 0.5
        # the GTV drawn on the MR, mapped onto the CT grid, matches gtv.nii.gz
        if (pdir / "gtv.nii.gz").exists():
            ct_img, _ = read(pdir / "ct.nii.gz")
            gtv_mr = sitk.Cast(sitk.ReadImage(str(pdir / "truth" / "gtv_mr.nii.gz")),
                               sitk.sitkFloat32)
            mapped_gtv = sitk.GetArrayFromImage(
                sitk.Resample(gtv_mr, ct_img, tfm, sitk.sitkLinear, 0.0)) >= 0.5
            gtv = read(pdir / "gtv.nii.gz")[1].astype(bool)
            dice = 2 * (mapped_gtv & gtv).sum() / (mapped_gtv.sum() + gtv.sum())
            assert dice > 0.85, (pid, dice)


def _interior(lab: np.ndarray, label: int) -> np.ndarray:
    return ndimage.binary_erosion(lab == label, structure=np.ones((1, 5, 5), bool))


def test_mr_tissue_contrasts(cohort: Path, plan: pd.DataFrame):
    checked = 0
    for pid in complete_ids(plan)[:4]:
        pdir = cohort / pid
        ct_img, _ = read(pdir / "ct.nii.gz")
        _, lab = read(pdir / "truth" / "tissue_labels.nii.gz")
        tfm = truth_transform(pdir)
        mr = {s: sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(pdir / f"{s}.nii.gz")),
                                                      ct_img, tfm, sitk.sitkLinear, -1.0))
              for s in MR_MODALITIES}
        fov = np.all([m >= 0 for m in mr.values()], axis=0)

        def med(seq: str, label: int, lab=lab, fov=fov, mr=mr) -> float:
            mask = _interior(lab, label) & fov
            return float(np.median(mr[seq][mask])) if mask.sum() > 30 else np.nan

        assert med("t1w", A.FAT) > 1.8 * med("t1w", A.MUSCLE)
        assert med("t2w", A.FAT) > 2.0 * med("t2w", A.MUSCLE)
        assert med("ce_t1w", A.FAT) < med("ce_t1w", A.MUSCLE)  # fat-suppressed
        assert med("t2w", A.TUMOUR) > med("t2w", A.MUSCLE)
        if not np.isnan(med("t2w", A.NECROSIS)):
            checked += 1
            assert med("t2w", A.NECROSIS) > 2.5 * med("t2w", A.MUSCLE)
            assert med("ce_t1w", A.TUMOUR) > 2.0 * med("ce_t1w", A.NECROSIS)
            assert med("t1w", A.NECROSIS) < med("t1w", A.MUSCLE)
        if not np.isnan(med("t1w", A.HAEMORRHAGE)):
            assert med("t1w", A.HAEMORRHAGE) > 1.8 * med("t1w", A.TUMOUR)
        if not np.isnan(med("t2w", A.OEDEMA)):
            assert med("t2w", A.OEDEMA) > 1.5 * med("t2w", A.MUSCLE)
    assert checked >= 1


# ---------------------------------------------------------------- determinism

def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in sorted(folder.rglob("*.nii.gz"))}


def test_same_seed_same_cohort_other_seed_differs(tmp_path: Path):
    runs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for out, seed, n in zip(runs, (SEED, SEED, SEED + 1), (2, 2, 1), strict=True):
        make_synthetic_cohort(out, n_patients=n, seed=seed, progress=False)
    first, second = _arrays(runs[0]), _arrays(runs[1])
    assert first.keys() == second.keys() and len(first) == 2 * 9
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    assert (runs[0] / "clinical.csv").read_bytes() == (runs[1] / "clinical.csv").read_bytes()
    other = _arrays(runs[2])
    a, b = first["SYN001/ct.nii.gz"], other["SYN001/ct.nii.gz"]
    assert a.shape != b.shape or not np.array_equal(a, b)


#: sha256 (first 16 hex digits) of every file of make_synthetic_cohort(n_patients=2, seed=0) for
#: the study's five images, recorded before the generator could make PET or run in parallel: the
#: default cohort must stay byte for byte what it was.
DEFAULT_COHORT_SHA256 = {
    "SYN001/ce_t1w.nii.gz": "f392597dbbad62a0",
    "SYN001/ct.nii.gz": "45719187021a494d",
    "SYN001/dose.nii.gz": "69e13b39889bb0cd",
    "SYN001/gtv.nii.gz": "7bc261303157f134",
    "SYN001/t1w.nii.gz": "fa99107aee1125a9",
    "SYN001/t2w.nii.gz": "279bfaa08ad9dbc3",
    "SYN001/truth/README.txt": "7e262c9bba2a1aa4",
    "SYN001/truth/ct_to_mr_displacement.nii.gz": "83a473deb59e5cfa",
    "SYN001/truth/ct_to_mr_rigid.tfm": "eb976f2d19d5eac3",
    "SYN001/truth/gtv_mr.nii.gz": "319e7724aa9153ec",
    "SYN001/truth/landmarks_mm.csv": "3f5e0f5150e9e200",
    "SYN001/truth/mr_motion_ce_t1w.tfm": "23a96c8576562388",
    "SYN001/truth/mr_motion_t2w.tfm": "0fc6755ef7a9f114",
    "SYN001/truth/risk.json": "7c485403741df834",
    "SYN001/truth/tissue_labels.nii.gz": "b578e7571aadc643",
    "SYN002/ce_t1w.nii.gz": "caf277594ea63560",
    "SYN002/ct.nii.gz": "513679737134c3b0",
    "SYN002/dose.nii.gz": "1d2d8bcfd78a7a89",
    "SYN002/gtv.nii.gz": "7174586979994f1d",
    "SYN002/t1w.nii.gz": "97cc38801aa0f748",
    "SYN002/t2w.nii.gz": "e379bda44137a8e6",
    "SYN002/truth/README.txt": "01edbb30bce9d87e",
    "SYN002/truth/ct_to_mr_displacement.nii.gz": "89d9b3318a611b87",
    "SYN002/truth/ct_to_mr_rigid.tfm": "06be3556a4df6a9e",
    "SYN002/truth/gtv_mr.nii.gz": "7eaf4a510b60712e",
    "SYN002/truth/landmarks_mm.csv": "e035951654b06472",
    "SYN002/truth/mr_motion_ce_t1w.tfm": "23a96c8576562388",
    "SYN002/truth/mr_motion_t2w.tfm": "23a96c8576562388",
    "SYN002/truth/risk.json": "a87851640f9bf7b7",
    "SYN002/truth/tissue_labels.nii.gz": "cf0228da52e1c68b",
    "clinical.csv": "44bb1d40f7ccc169",
    "cohort.toml": "7c0479ad50616194",
}


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_default_cohort_is_byte_identical_to_the_recorded_one(tmp_path: Path):
    make_synthetic_cohort(tmp_path, n_patients=2, seed=0, progress=False, workers=1)
    digests = {name: hashlib.sha256(data).hexdigest()[:16]
               for name, data in _file_bytes(tmp_path).items()}
    assert digests == DEFAULT_COHORT_SHA256


def test_parallel_workers_write_the_same_files_as_one(tmp_path: Path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    make_synthetic_cohort(serial, n_patients=4, seed=0, progress=False, workers=1)
    make_synthetic_cohort(parallel, n_patients=4, seed=0, progress=False, workers=2)
    one, two = _file_bytes(serial), _file_bytes(parallel)
    assert one.keys() == two.keys() and len(one) > 4 * 10
    assert (plan_cohort(4, 0).missing != "").sum() == 1  # a file removed by design, too
    assert [name for name in one if one[name] != two[name]] == []


def test_modalities_and_workers_are_checked(tmp_path: Path):
    assert check_modalities(None) == STUDY_MODALITIES
    assert check_modalities(" CT, pet,t1w ") == PET_MODALITIES
    for bad, message in (("ct,xray,t1w", "Unknown modality 'xray'"),
                         (("pet", "t1w", "t2w"), "lack 'ct'"),
                         (("ct", "t1w", "t1w"), "listed twice"),
                         (("ct", "pet"), "at least three")):
        with pytest.raises(ConfigError, match=message):
            make_synthetic_cohort(tmp_path / "x", n_patients=1, modalities=bad, progress=False)
    for workers in (0, 1.5, True):
        with pytest.raises(ConfigError, match="workers"):
            make_synthetic_cohort(tmp_path / "x", n_patients=1, workers=workers, progress=False)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- PET/CT + T1w cohort

def test_pet_cohort_declares_and_holds_only_its_images(pet_cohort: Path):
    toml = tomllib.loads((pet_cohort / "cohort.toml").read_text())
    assert toml == {"modalities": list(PET_MODALITIES), "mr_reference": "t1w",
                    "same_frame_as_ct": ["pet"]}
    config = read_cohort_config(pet_cohort)
    assert config.registered == ("t1w",) and config.same_frame_as_ct == ("pet",)
    plan = plan_cohort(N_PATIENTS, SEED, PET_MODALITIES)
    assert (plan.missing != "").sum() == 1
    assert set(plan.missing) <= {"", "t1w", "pet", "gtv", "followup"}
    for row in plan.itertuples():
        pdir = pet_cohort / row.patient_id
        images = {p.name for p in pdir.glob("*.nii.gz")}
        expected = {f"{m}.nii.gz" for m in (*PET_MODALITIES, "gtv") if m != row.missing}
        assert images == expected, row.patient_id
        truth = {p.name for p in (pdir / "truth").iterdir()}
        assert {"pet.json", "gtv_mr.nii.gz", "landmarks_mm.csv"} <= truth
        assert not any(n.startswith("mr_motion_") and "t1w" not in n for n in truth)


def test_incomplete_patients_lack_only_generated_images():
    study = assign_missing(72, 0)
    assert assign_missing(72, 0, STUDY_MODALITIES) == study
    pet = assign_missing(72, 0, PET_MODALITIES)
    assert [m == "" for m in pet] == [m == "" for m in study]  # the same patients
    assert set(pet) == {"", "t1w", "followup", "pet", "gtv"}
    assert [m for m in pet if m] == [{"dose": "pet"}.get(m, "t1w" if m in MR_MODALITIES else m)
                                     for m in study if m]
    no_mr = assign_missing(72, 0, ("ct", "dose", "pet"))
    assert set(no_mr) - {"", "followup", "gtv"} <= {"dose", "pet"} and "dose" in no_mr


def test_pet_shares_the_ct_frame_on_a_coarser_grid(pet_cohort: Path):
    for pdir in sorted(p for p in pet_cohort.iterdir() if (p / "pet.nii.gz").exists())[:4]:
        ct_img, _ = read(pdir / "ct.nii.gz")
        pet_img, pet = read(pdir / "pet.nii.gz")
        assert pet.dtype == np.float32 and pet.min() >= 0 and pet.max() > 2.0
        sx, sy, sz = pet_img.GetSpacing()
        assert 3.6 <= sx <= 4.1 and sy == sx and 3.2 <= sz <= 4.0
        assert pet_img.GetDirection() == ct_img.GetDirection()
        ct_lo, pet_lo = np.array(ct_img.GetOrigin()), np.array(pet_img.GetOrigin())
        ct_hi = ct_lo + (np.array(ct_img.GetSize()) - 1) * np.array(ct_img.GetSpacing())
        pet_hi = pet_lo + (np.array(pet_img.GetSize()) - 1) * np.array(pet_img.GetSpacing())
        assert np.all(pet_lo <= ct_lo) and np.all(pet_hi >= ct_hi)


def _far_inside(lab: np.ndarray, labels: tuple[int, ...], spacing, mm: float) -> np.ndarray:
    """Voxels of ``labels`` farther than ``mm`` from any other tissue (3D, CT grid)."""
    mask = np.isin(lab, labels)
    return ndimage.distance_transform_edt(mask, sampling=spacing[::-1]) > mm


def test_pet_uptake_per_tissue_in_suv(pet_cohort: Path):
    necrosis_seen = 0
    for pdir in sorted(p for p in pet_cohort.iterdir() if (p / "pet.nii.gz").exists())[:4]:
        ct_img, _ = read(pdir / "ct.nii.gz")
        _, lab = read(pdir / "truth" / "tissue_labels.nii.gz")
        pet = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(pdir / "pet.nii.gz")),
                                                  ct_img, sitk.Transform(), sitk.sitkLinear,
                                                  0.0, sitk.sitkFloat32))
        truth = json.loads((pdir / "truth" / "pet.json").read_text())["suv_per_tissue"]
        sp = ct_img.GetSpacing()
        muscle = np.median(pet[_far_inside(lab, (A.MUSCLE,), sp, 9.0)])
        assert muscle == pytest.approx(truth[A.LEGEND[A.MUSCLE]], rel=0.15), pdir.name
        assert np.median(pet[lab == A.AIR]) == 0.0
        viable = pet[_far_inside(lab, (A.TUMOUR,), sp, 6.0)]
        assert np.median(viable) > 2.0 * muscle
        core = _far_inside(lab, (A.NECROSIS,), sp, 7.0)
        if core.sum() > 30:
            necrosis_seen += 1
            assert np.median(pet[core]) < 0.5 * np.median(viable)
    assert necrosis_seen >= 1


def test_pet_resolution_noise_and_grade(pet_cohort: Path):
    # the blur before averaging into voxels gives the stated FWHM once the voxel is counted
    for fwhm, spacing in ((6.0, 4.0), (5.5, 3.27)):
        step = 0.01
        x = np.arange(-20, 20, step)
        sigma = psf_sigma_mm(fwhm, spacing)
        profile = np.convolve(np.exp(-x**2 / (2 * sigma**2)), np.abs(x) <= spacing / 2, "same")
        above = x[profile >= profile.max() / 2]
        assert above[-1] - above[0] == pytest.approx(fwhm, rel=0.015)
    plans = plan_patients(N_PATIENTS, SEED, PET_MODALITIES)
    plan = next(p for p in plans if p.missing != "pet")
    image = sitk.ReadImage(str(pet_cohort / plan.patient_id / "pet.nii.gz"))
    written = sitk.GetArrayFromImage(image)
    assert np.array_equal(written, render_pet(plan, patient_rng(SEED, plan.index, 5)))
    clean_plan = dataclasses.replace(plan, pet=dataclasses.replace(plan.pet, noise=0.0))
    clean = render_pet(clean_plan, patient_rng(SEED, plan.index, 5))
    # spill-out beyond the skin: a few mm (PSF), nothing beyond ~3 sigma
    labels = A.tissue_maps(plan.limb, plan.tumour, *plan.pet.grid.points()).labels
    outside = ndimage.distance_transform_edt(labels == A.AIR,
                                             sampling=plan.pet.grid.spacing[::-1])
    assert clean[(outside > 0) & (outside <= 4.5)].mean() > 0.05
    assert clean[outside > 12].max() < 1e-3
    # noise: sd grows with sqrt(SUV), as planned
    body = clean > 0.3
    residual = (written[body] - clean[body]) / np.sqrt(clean[body])
    assert np.std(residual) == pytest.approx(plan.pet.noise, rel=0.1)
    # FDG uptake of the viable tumour rises with grade (72 planned patients, no rendering)
    suv = pd.DataFrame([{"grade": p.clinical["grade"], "suv": p.pet.suv[A.TUMOUR]}
                        for p in plan_patients(72, 0)])
    medians = suv.groupby("grade")["suv"].median()
    assert medians.is_monotonic_increasing and medians[3] > 2 * medians[1]


def test_a_subset_of_images_leaves_the_others_unchanged(pet_cohort: Path, cohort: Path):
    """CT, GTV and T1w of a patient are the same files whichever images are generated."""
    compared = 0
    for pdir in sorted(p for p in pet_cohort.iterdir() if p.is_dir()):
        for name in ("ct.nii.gz", "gtv.nii.gz", "t1w.nii.gz", "truth/tissue_labels.nii.gz"):
            ours, full = pdir / name, cohort / pdir.name / name
            if ours.exists() and full.exists():
                assert ours.read_bytes() == full.read_bytes(), (pdir.name, name)
                compared += 1
    assert compared >= 4 * (N_PATIENTS - 2)


# ---------------------------------------------------------------- MR written in the CT's frame

CT_FRAME_PATIENTS = 4  # seed 0: SYN002 lacks its T2w


@pytest.fixture(scope="module")
def ct_frame_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study's five images of 4 patients (seed 0), the MR sequences in the CT's frame."""
    out = tmp_path_factory.mktemp("ct-frame") / "synthetic-ct-frame"
    make_synthetic_cohort(out, n_patients=CT_FRAME_PATIENTS, seed=0, progress=False, workers=1,
                          mr_frame="ct")
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_ct_frame_cohort_declares_nothing_to_register(ct_frame_cohort: Path):
    toml = tomllib.loads((ct_frame_cohort / "cohort.toml").read_text())
    assert toml == {"modalities": list(STUDY_MODALITIES),
                    "same_frame_as_ct": ["dose", *MR_MODALITIES]}
    config = read_cohort_config(ct_frame_cohort)
    assert set(MR_MODALITIES) <= set(config.same_frame_as_ct)
    assert config.registered == () and config.mr_reference == ""
    assert "mr_frame=ct" in (ct_frame_cohort / "cohort.toml").read_text()
    pet = tomllib.loads(cohort_toml(N_PATIENTS, SEED, PET_MODALITIES, "ct"))
    assert pet == {"modalities": list(PET_MODALITIES), "same_frame_as_ct": ["pet", "t1w"]}
    assert cohort_toml(2, 0) == cohort_toml(2, 0, STUDY_MODALITIES, "own")


def test_ct_frame_mr_is_on_its_own_grid_in_the_ct_frame(ct_frame_cohort: Path):
    dices = []
    for pdir in sorted(p for p in ct_frame_cohort.iterdir() if p.is_dir()):
        ct_img, _ = read(pdir / "ct.nii.gz")
        contour = sitk.ReadImage(str(pdir / "truth" / "gtv_mr.nii.gz"))
        seqs = [s for s in MR_MODALITIES if (pdir / f"{s}.nii.gz").exists()]
        assert len(seqs) >= 2, pdir.name
        for seq in seqs:
            img = sitk.ReadImage(str(pdir / f"{seq}.nii.gz"))
            # its own grid: MR voxels (finer in-plane, thicker slices), another FOV and origin
            assert img.GetSpacing()[0] < ct_img.GetSpacing()[0] and img.GetSpacing()[2] >= 4.0
            assert img.GetSize() != ct_img.GetSize()
            assert np.max(np.abs(np.subtract(img.GetOrigin(), ct_img.GetOrigin()))) > 1.0
            assert (img.GetSize()[0] * img.GetSpacing()[0]
                    < ct_img.GetSize()[0] * ct_img.GetSpacing()[0])
            assert img.GetDirection() == ct_img.GetDirection()  # identity
            # the contour is drawn on that grid
            assert (contour.GetSize(), contour.GetSpacing(), contour.GetOrigin(),
                    contour.GetDirection()) == (img.GetSize(), img.GetSpacing(),
                                                img.GetOrigin(), img.GetDirection())
        # ... and covers the tumour with margin along the slices and in-plane
        gtv_mr = sitk.GetArrayFromImage(contour).astype(bool)
        sz, sx = contour.GetSpacing()[2], contour.GetSpacing()[0]
        ks, js, iis = (np.nonzero(gtv_mr.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1)))
        assert ks.min() * sz >= 10 and (gtv_mr.shape[0] - 1 - ks.max()) * sz >= 10
        for idx, n in ((js, gtv_mr.shape[1]), (iis, gtv_mr.shape[2])):
            assert idx.min() * sx >= 10 and (n - 1 - idx.max()) * sx >= 10
        # landmarks: the identity
        lm = pd.read_csv(pdir / "truth" / "landmarks_mm.csv")
        assert len(lm) >= 8
        assert np.array_equal(lm[["ct_x", "ct_y", "ct_z"]].to_numpy(),
                              lm[["mr_x", "mr_y", "mr_z"]].to_numpy())
        # the truth transform is the identity too
        tfm = truth_transform(pdir)
        pts = lm[["ct_x", "ct_y", "ct_z"]].to_numpy()
        mapped = np.array([tfm.TransformPoint(p.tolist()) for p in pts])
        assert np.abs(mapped - pts).max() < 1e-6
        if not (pdir / "gtv.nii.gz").exists():
            continue
        # by geometry alone the MR contour lands on the CT's GTV
        on_ct = sitk.GetArrayFromImage(
            sitk.Resample(contour, ct_img, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
        gtv = read(pdir / "gtv.nii.gz")[1].astype(bool)
        dices.append(_dice(on_ct, gtv))
        # and so does the anatomy of the images (tissue contrasts against the CT's labels)
        _, lab = read(pdir / "truth" / "tissue_labels.nii.gz")
        t1 = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(pdir / "t1w.nii.gz")),
                                                  ct_img, sitk.Transform(), sitk.sitkLinear,
                                                  -1.0))
        fat, muscle = (_interior(lab, label) & (t1 >= 0) for label in (A.FAT, A.MUSCLE))
        assert np.median(t1[fat]) > 1.8 * np.median(t1[muscle]), pdir.name
        inside = gtv & (t1 >= 0)
        assert inside.sum() > 0.99 * gtv.sum()  # the MR's FOV holds the whole tumour
    assert len(dices) >= CT_FRAME_PATIENTS - 1
    assert min(dices) >= 0.95, dices


def test_ct_frame_changes_only_the_mr_files(ct_frame_cohort: Path):
    """CT, dose, GTV and tissue labels are the default cohort's files (same seed, recorded
    hashes); the MR sequences and their truth are not."""
    digests = {name: hashlib.sha256(data).hexdigest()[:16]
               for name, data in _file_bytes(ct_frame_cohort).items()}
    for pid in ("SYN001", "SYN002"):  # complete in the recorded 2-patient cohort
        for name in ("ct.nii.gz", "dose.nii.gz", "gtv.nii.gz", "truth/tissue_labels.nii.gz"):
            key = f"{pid}/{name}"
            assert digests[key] == DEFAULT_COHORT_SHA256[key], key
    assert digests["SYN001/truth/risk.json"] == DEFAULT_COHORT_SHA256["SYN001/truth/risk.json"]
    for name in ("t1w.nii.gz", "ce_t1w.nii.gz", "truth/gtv_mr.nii.gz", "truth/README.txt",
                 "truth/landmarks_mm.csv", "truth/ct_to_mr_rigid.tfm"):
        assert digests[f"SYN001/{name}"] != DEFAULT_COHORT_SHA256[f"SYN001/{name}"], name
    # the same patients and outcomes
    plan_own = plan_patients(2, 0)
    plan_ct = plan_patients(2, 0, mr_frame="ct")
    for own, ct in zip(plan_own, plan_ct, strict=True):
        assert own.clinical == ct.clinical and own.factors == ct.factors
        assert own.mr.grid.spacing == ct.mr.grid.spacing and own.mr.grid != ct.mr.grid


def test_explicit_own_mr_frame_is_the_recorded_default_cohort(tmp_path: Path):
    make_synthetic_cohort(tmp_path / "own", n_patients=2, seed=0, progress=False, workers=1,
                          mr_frame="own")
    digests = {name: hashlib.sha256(data).hexdigest()[:16]
               for name, data in _file_bytes(tmp_path / "own").items()}
    assert digests == DEFAULT_COHORT_SHA256
    with pytest.raises(ConfigError, match="mr_frame"):
        make_synthetic_cohort(tmp_path / "x", n_patients=1, progress=False, mr_frame="scanner")
    assert not (tmp_path / "x").exists()


def test_synth_stamp_tells_the_mr_frames_apart(tmp_path: Path, capsys: pytest.CaptureFixture):
    from stsnb.run.cli import SYNTH_STAMP, main

    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    assert "--mr-frame {own,ct}" in capsys.readouterr().out
    out = tmp_path / "cohort"
    args = ["synth", "--out", str(out), "--patients", "1", "--seed", "5", "--quiet",
            "--workers", "1", "--modalities", "ct,t1w,t2w"]
    with pytest.raises(SystemExit):
        main([*args, "--mr-frame", "scanner"])
    assert "invalid choice" in capsys.readouterr().err and not out.exists()

    def synth(*extra: str) -> tuple[str, dict]:
        assert main([*args, *extra]) == 0
        return capsys.readouterr().out, json.loads((out / SYNTH_STAMP).read_text())

    printed, stamp = synth()
    assert "kept" not in printed and "mr_frame" not in stamp  # default stamps are unchanged
    printed, stamp = synth("--mr-frame", "ct")
    assert "kept" not in printed and stamp["mr_frame"] == "ct"
    assert read_cohort_config(out).registered == ()
    assert "kept" in synth("--mr-frame", "ct")[0]
    printed, _ = synth("--mr-frame", "own")
    assert "kept" not in printed and read_cohort_config(out).registered == ("t1w", "t2w")
