"""Render a planned patient and write the cohort layout (DESIGN.md section 4) atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from ..modalities import MR_MODALITIES, STUDY_MODALITIES
from . import anatomy
from .outcome import FACTORS, INTERCEPT, NOISE_SD
from .plan import plan_patients
from .render import landmark_table, render_patient
from .spec import PatientPlan

#: Columns of clinical.csv, in order.
CLINICAL_COLUMNS = ("patient_id", "distant_metastasis", "followup_months",
                    "time_to_metastasis_months", "age", "sex", "histology", "grade", "site",
                    "prescription_gy", "fractions")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` to a temporary name in the same folder, then rename."""
    name = path.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{name}.tmp{os.getpid()}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_image(img: sitk.Image, path: Path) -> None:
    """Write a compressed NIfTI atomically."""
    _atomic(path, lambda t: sitk.WriteImage(img, str(t), True))


def write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    _atomic(path, lambda t: t.write_text(text, encoding="utf-8"))


def write_transform(tfm: sitk.Transform, path: Path) -> None:
    """Write a SimpleITK transform file atomically."""
    _atomic(path, lambda t: sitk.WriteTransform(tfm, str(t)))


def truth_readme(plan: PatientPlan) -> str:
    """README.txt of truth/: frames, how to compose the transform, label legend."""
    legend = "\n".join(f"  {k:2d}  {v}" for k, v in anatomy.LEGEND.items())
    moved = [s for s, m in plan.mr.motion.items() if any(m.angles_deg + m.translation_mm)]
    return f"""Ground truth of synthetic patient {plan.patient_id} (QA only; never used by the
pipeline).

Frames: the CT's physical frame (mm, as SimpleITK reads ct.nii.gz) is the body frame; dose.nii.gz
and gtv.nii.gz are in it. The MR sequences share one grid in the MR scanner's frame.

True CT->MR map (a CT physical point p to the MR physical point of the same anatomy, for the
reference sequence {MR_MODALITIES[0]}):  T(p) = R(p + d(p)), with
  d = ct_to_mr_displacement.nii.gz  (vector image on the CT grid, mm, physical axes; applied first)
  R = ct_to_mr_rigid.tfm            (Euler3DTransform; applied second)
In SimpleITK:
  rigid = sitk.ReadTransform("ct_to_mr_rigid.tfm")
  field = sitk.ReadImage("ct_to_mr_displacement.nii.gz", sitk.sitkVectorFloat64)
  T = sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(field)])
  mr_on_ct = sitk.Resample(mr, ct, T, sitk.sitkLinear, 0.0)
(CompositeTransform applies its last transform first.) Outside the CT grid d is taken as 0.

Inter-sequence motion: mr_motion_<seq>.tfm maps a point of the {MR_MODALITIES[0]} session to the
point where the same anatomy lies in <seq>; CT->that sequence is
  sitk.CompositeTransform([motion, rigid, DisplacementFieldTransform(field)]).
Sequences with non-zero motion here: {", ".join(moved) or "none"}.

gtv_mr.nii.gz: the GTV on the MR grid ({MR_MODALITIES[0]}).
landmarks_mm.csv: name, ct_x, ct_y, ct_z (CT frame), mr_x, mr_y, mr_z (= T(ct point), mm).
tissue_labels.nii.gz: tissue class per CT voxel:
{legend}
risk.json: the latent risk factors, the model's weights and the outcome drawn.
"""


def risk_json(plan: PatientPlan) -> str:
    """risk.json: latent factors, model, risk and outcome (ground truth)."""
    r = plan.risk
    doc = {
        "patient_id": plan.patient_id,
        "factors": plan.factors,
        "model": {"factors": {k: {"mean": m, "sd": s, "weight": w}
                              for k, (m, s, w) in FACTORS.items()},
                  "intercept": INTERCEPT, "noise_sd": NOISE_SD},
        "risk_score": r["risk_score"], "risk": r["risk"], "noise": r["risk_noise"],
        "metastasis_latent": r["metastasis"],
        "tumour": {"z_min_mm": r["z_min"], "z_max_mm": r["z_max"],
                   "volume_cc": r["volume_cc"], "haemorrhage": r["haemorrhage"],
                   "necrosis_fraction": plan.factors["necrosis_fraction"]},
        "missing": plan.missing,
    }
    return json.dumps(doc, indent=2) + "\n"


def write_patient(plan: PatientPlan, out_dir: Path) -> None:
    """Render and write one patient's folder (files it lacks by design are removed)."""
    pdir = out_dir / plan.patient_id
    tdir = pdir / "truth"
    tdir.mkdir(parents=True, exist_ok=True)
    imgs = render_patient(plan)
    for name in (*STUDY_MODALITIES, "gtv"):
        path = pdir / f"{name}.nii.gz"
        if name == plan.missing:
            path.unlink(missing_ok=True)
        else:
            write_image(imgs[name], path)
    write_image(imgs["gtv_mr"], tdir / "gtv_mr.nii.gz")
    write_image(imgs["tissue_labels"], tdir / "tissue_labels.nii.gz")
    write_image(imgs["displacement"], tdir / "ct_to_mr_displacement.nii.gz")
    write_transform(plan.mr.ct_to_mr.rigid.sitk(), tdir / "ct_to_mr_rigid.tfm")
    for seq, motion in plan.mr.motion.items():
        write_transform(motion.sitk(), tdir / f"mr_motion_{seq}.tfm")
    write_text(landmark_table(plan).to_csv(index=False, float_format="%.4f"),
               tdir / "landmarks_mm.csv")
    write_text(risk_json(plan), tdir / "risk.json")
    write_text(truth_readme(plan), tdir / "README.txt")


def clinical_table(plans: list[PatientPlan]) -> pd.DataFrame:
    """clinical.csv as a DataFrame (one row per screened patient)."""
    df = pd.DataFrame([{"patient_id": p.patient_id, **p.clinical} for p in plans])
    df = df[list(CLINICAL_COLUMNS)]
    df["distant_metastasis"] = df["distant_metastasis"].astype("Int64")
    df["followup_months"] = df["followup_months"].astype(float)
    df["time_to_metastasis_months"] = df["time_to_metastasis_months"].astype(float)
    return df


def cohort_toml(n_patients: int, seed: int) -> str:
    """cohort.toml of a synthetic cohort."""
    mods = ", ".join(f'"{m}"' for m in STUDY_MODALITIES)
    return (f"# Synthetic multimodal STS cohort generated by stsnb.synth "
            f"(n_patients={n_patients}, seed={seed}).\n"
            "# No real patient data: every image, outcome and clinical value is simulated.\n"
            "# <patient>/truth/ holds ground truth for QA only.\n"
            f"modalities = [{mods}]\n"
            f'mr_reference = "{MR_MODALITIES[0]}"\n'
            'same_frame_as_ct = ["dose"]\n')


def make_synthetic_cohort(out_dir: str | Path, n_patients: int = 72, seed: int = 0,
                          progress: bool = True) -> pd.DataFrame:
    """Generate and write a synthetic cohort; return the clinical table written (clinical.csv).

    Renders exactly ``plan_cohort(n_patients, seed)`` (CT in HU, dose in Gy, MR in a.u.; see
    book/synthetic_cohort.md); each file is written atomically, clinical.csv and cohort.toml
    last. Same seed -> identical arrays. Over an existing cohort, files a patient lacks by design
    are removed; folders of patients beyond ``n_patients`` are left alone.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_patients(n_patients, seed)
    for plan in tqdm(plans, desc="synthetic patients", unit="patient", disable=not progress):
        write_patient(plan, out)
    table = clinical_table(plans)
    write_text(table.to_csv(index=False), out / "clinical.csv")
    write_text(cohort_toml(n_patients, seed), out / "cohort.toml")
    return table
