"""The synthetic cohort generator: screening, physics per modality, geometry, truth, outcome."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from stsnb.modalities import MR_MODALITIES, STUDY_MODALITIES
from stsnb.synth import anatomy as A
from stsnb.synth import make_synthetic_cohort, plan_cohort
from stsnb.synth.plan import n_incomplete

N_PATIENTS, SEED = 8, 3


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
