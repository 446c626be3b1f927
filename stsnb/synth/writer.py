"""Render planned patients and write the cohort layout (DESIGN.md section 4) atomically.

Patients are rendered in parallel worker processes; each has its own random generators (seeded
with the cohort seed and its index), so the files do not depend on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from stsnb.core.errors import ConfigError
from stsnb.core.modalities import KNOWN_MODALITIES, MR_MODALITIES, STUDY_MODALITIES
from stsnb.core.workers import single_blas_thread, worker_count
from stsnb.synth import anatomy
from stsnb.synth.outcome import FACTORS, INTERCEPT, NOISE_SD
from stsnb.synth.plan import CT_FRAME_KINDS, check_mr_frame, plan_patients
from stsnb.synth.render import landmark_table, render_patient
from stsnb.synth.spec import PatientPlan

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


def check_modalities(modalities: Iterable[str] | str | None) -> tuple[str, ...]:
    """The images to generate, in channel order (file stems; a comma-separated string is split).

    None gives the study's five. ConfigError unless they are known stems, listed once, include
    the CT (the reference frame) and number at least three (a combination has three channels).
    """
    if modalities is None:
        return STUDY_MODALITIES
    if isinstance(modalities, str):
        modalities = modalities.split(",")
    mods = tuple(str(m).strip().lower() for m in modalities if str(m).strip())
    unknown = [m for m in mods if m not in KNOWN_MODALITIES]
    if unknown:
        raise ConfigError(f"Unknown modality {', '.join(map(repr, unknown))}: the generator "
                          f"makes {', '.join(KNOWN_MODALITIES)}.")
    if len(set(mods)) != len(mods):
        raise ConfigError(f"A modality is listed twice in {list(mods)}.")
    if "ct" not in mods:
        raise ConfigError(f"Modalities {list(mods)} lack 'ct', every patient's reference frame.")
    if len(mods) < 3:
        raise ConfigError(f"Modalities {list(mods)}: a combination needs three images; "
                          "give at least three.")
    return mods


def _and_list(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def truth_readme(plan: PatientPlan, modalities: tuple[str, ...] = STUDY_MODALITIES) -> str:
    """README.txt of truth/: frames, how to compose the transform, label legend."""
    legend = "\n".join(f"  {k:2d}  {v}" for k, v in anatomy.LEGEND.items())
    in_ct = [f"{m}.nii.gz" for m in CT_FRAME_KINDS if m in modalities] + ["gtv.nii.gz"]
    pet = ""
    if "pet" in modalities:
        pet = ("\npet.json: the PET's uptake model (SUV per tissue label, rim, heterogeneity, "
               "noise, FWHM in mm).")
    if not any(m in modalities for m in MR_MODALITIES):
        return f"""Ground truth of synthetic patient {plan.patient_id} (QA only; never used by the
pipeline).

Frames: the CT's physical frame (mm, as SimpleITK reads ct.nii.gz) is the body frame;
{_and_list(in_ct)} are in it. No MR sequence was generated: no MR truth is written.

tissue_labels.nii.gz: tissue class per CT voxel:
{legend}
risk.json: the latent risk factors, the model's weights and the outcome drawn.{pet}
"""
    if plan.mr.frame == "ct":
        return _truth_readme_ct_frame(plan, in_ct, legend, pet)
    moved = [s for s, m in plan.mr.motion.items()
             if s in modalities and any(m.angles_deg + m.translation_mm)]
    frames = f"{_and_list(in_ct)} are in it"
    if len(in_ct) == 2:  # keeps the study cohort's line break
        frames = f"{in_ct[0]}\nand {in_ct[1]} are in it"
    return f"""Ground truth of synthetic patient {plan.patient_id} (QA only; never used by the
pipeline).

Frames: the CT's physical frame (mm, as SimpleITK reads ct.nii.gz) is the body frame; {frames}.\
 The MR sequences share one grid in the MR scanner's frame.

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
risk.json: the latent risk factors, the model's weights and the outcome drawn.{pet}
"""


def _truth_readme_ct_frame(plan: PatientPlan, in_ct: list[str], legend: str, pet: str) -> str:
    """README.txt of truth/ for MR sequences written in the CT's frame (mr_frame "ct")."""
    verb = "is" if len(in_ct) == 1 else "are"
    return f"""Ground truth of synthetic patient {plan.patient_id} (QA only; never used by the
pipeline).

Frames: the CT's physical frame (mm, as SimpleITK reads ct.nii.gz) is the body frame;
{_and_list(in_ct)} {verb} in it, and so are the MR sequences (written co-registered,
mr_frame "ct"): they share one grid of their own (voxel size and field of view of the MR, identity
direction), with no displacement, rotation or deformation between CT and MR anatomy.

True CT->MR map: the identity. It is written as for a cohort with the MR in its own frame, so the
same QA code composes it:
  ct_to_mr_rigid.tfm                (Euler3DTransform, identity)
  ct_to_mr_displacement.nii.gz      (vector image on the CT grid, all zero)
  mr_motion_<seq>.tfm               (identity: no inter-sequence motion)
In SimpleITK an MR sequence goes onto the CT grid by geometry alone:
  mr_on_ct = sitk.Resample(mr, ct, sitk.Transform(), sitk.sitkLinear, 0.0)

gtv_mr.nii.gz: the GTV on the MR grid (shared by every sequence), in the CT's frame.
landmarks_mm.csv: name, ct_x, ct_y, ct_z (CT frame), mr_x, mr_y, mr_z (the same points, mm).
tissue_labels.nii.gz: tissue class per CT voxel:
{legend}
risk.json: the latent risk factors, the model's weights and the outcome drawn.{pet}
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


def pet_json(plan: PatientPlan) -> str:
    """pet.json: the PET's uptake model (ground truth; SUV, mm)."""
    pet = plan.pet
    doc = {
        "patient_id": plan.patient_id,
        "suv_per_tissue": {anatomy.LEGEND[k]: round(v, 4) for k, v in pet.suv.items()},
        "viable_tumour_suv": round(pet.suv[anatomy.TUMOUR], 4),
        "rim_gain": round(pet.rim_gain, 4), "rim_depth_mm": round(pet.rim_depth_mm, 3),
        "heterogeneity": round(pet.heterogeneity, 4), "noise_sd_at_1_suv": round(pet.noise, 4),
        "fwhm_mm": round(pet.fwhm_mm, 3), "spacing_mm": list(pet.grid.spacing),
    }
    return json.dumps(doc, indent=2) + "\n"


def write_patient(plan: PatientPlan, out_dir: Path,
                  modalities: tuple[str, ...] = STUDY_MODALITIES) -> str:
    """Render and write one patient's folder with the images in ``modalities`` (the CT always);
    image files it lacks by design, or of modalities not generated, are removed. Returns the
    patient id."""
    pdir = Path(out_dir) / plan.patient_id
    tdir = pdir / "truth"
    tdir.mkdir(parents=True, exist_ok=True)
    imgs = render_patient(plan, modalities)
    for name in (*KNOWN_MODALITIES, "gtv"):
        path = pdir / f"{name}.nii.gz"
        if name == plan.missing or name not in imgs:
            path.unlink(missing_ok=True)
        else:
            write_image(imgs[name], path)
    write_image(imgs["tissue_labels"], tdir / "tissue_labels.nii.gz")
    for seq in MR_MODALITIES:  # in the CT's frame: each sequence's own contour, as imported
        path = pdir / f"gtv_{seq}.nii.gz"
        if plan.mr.frame == "ct" and "gtv_mr" in imgs and seq in imgs and seq != plan.missing:
            write_image(imgs["gtv_mr"], path)
        else:
            path.unlink(missing_ok=True)
    if "gtv_mr" in imgs:
        write_image(imgs["gtv_mr"], tdir / "gtv_mr.nii.gz")
        write_image(imgs["displacement"], tdir / "ct_to_mr_displacement.nii.gz")
        write_transform(plan.mr.ct_to_mr.rigid.sitk(), tdir / "ct_to_mr_rigid.tfm")
        for seq, motion in plan.mr.motion.items():
            if seq in modalities:
                write_transform(motion.sitk(), tdir / f"mr_motion_{seq}.tfm")
        write_text(landmark_table(plan).to_csv(index=False, float_format="%.4f"),
                   tdir / "landmarks_mm.csv")
    if "pet" in imgs:
        write_text(pet_json(plan), tdir / "pet.json")
    write_text(risk_json(plan), tdir / "risk.json")
    write_text(truth_readme(plan, modalities), tdir / "README.txt")
    return plan.patient_id


def clinical_table(plans: list[PatientPlan]) -> pd.DataFrame:
    """clinical.csv as a DataFrame (one row per screened patient)."""
    df = pd.DataFrame([{"patient_id": p.patient_id, **p.clinical} for p in plans])
    df = df[list(CLINICAL_COLUMNS)]
    df["distant_metastasis"] = df["distant_metastasis"].astype("Int64")
    df["followup_months"] = df["followup_months"].astype(float)
    df["time_to_metastasis_months"] = df["time_to_metastasis_months"].astype(float)
    return df


def cohort_toml(n_patients: int, seed: int,
                modalities: tuple[str, ...] = STUDY_MODALITIES, mr_frame: str = "own") -> str:
    """cohort.toml of a synthetic cohort: the generated images in channel order, the MR
    reference (T1w when generated) and the images in the CT's frame (dose, PET; with
    ``mr_frame`` "ct" the MR sequences too, and then no MR reference: nothing is registered)."""
    mods = ", ".join(f'"{m}"' for m in modalities)
    in_ct = CT_FRAME_KINDS + (MR_MODALITIES if check_mr_frame(mr_frame) == "ct" else ())
    mr = [m for m in modalities if m in MR_MODALITIES and m not in in_ct]
    reference = MR_MODALITIES[0] if MR_MODALITIES[0] in mr else (mr[0] if mr else "")
    same = ", ".join(f'"{m}"' for m in modalities if m in in_ct)
    frame = "" if mr_frame == "own" else f", mr_frame={mr_frame}"
    return (f"# Synthetic multimodal STS cohort generated by stsnb.synth "
            f"(n_patients={n_patients}, seed={seed}{frame}).\n"
            "# No real patient data: every image, outcome and clinical value is simulated.\n"
            "# <patient>/truth/ holds ground truth for QA only.\n"
            f"modalities = [{mods}]\n"
            + (f'mr_reference = "{reference}"\n' if reference else "")
            + f"same_frame_as_ct = [{same}]\n")


def _write_all(plans: list[PatientPlan], out: Path, modalities: tuple[str, ...], workers: int,
               progress: bool) -> None:
    """Write every patient, in ``workers`` processes (spawned: safe from any parent)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(plans), desc="synthetic patients", unit="patient", disable=not progress)
    with bar:
        if workers == 1 or len(plans) == 1:
            for plan in plans:
                write_patient(plan, out, modalities)
                bar.update()
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(plans)), mp_context=context,
                                 initializer=single_blas_thread) as pool:
            futures = [pool.submit(write_patient, plan, out, modalities) for plan in plans]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def make_synthetic_cohort(out_dir: str | Path, n_patients: int = 72, seed: int = 0,
                          progress: bool = True,
                          modalities: Iterable[str] | str | None = None,
                          workers: int | None = None, mr_frame: str = "own") -> pd.DataFrame:
    """Generate and write a synthetic cohort; return the clinical table written (clinical.csv).

    Renders exactly ``plan_cohort(n_patients, seed, modalities)`` (CT in HU, dose in Gy, MR in
    a.u., PET in SUV; see book/synthetic_cohort.md). ``modalities``: the images to generate, in
    channel order (default the study's five; e.g. ``("ct", "pet", "t1w")`` or ``"ct,pet,t1w"``;
    the CT is required). ``workers``: processes rendering patients in parallel (default
    ``os.cpu_count()``); the files are identical for any number. Each file is written
    atomically, clinical.csv and cohort.toml last. Same seed -> identical arrays. Over an
    existing cohort, image files a patient lacks (by design, or not generated) are removed;
    folders of patients beyond ``n_patients`` are left alone.

    ``mr_frame``: "own" (default) writes the MR session in the MR scanner's frame (displaced,
    rotated and deformed from the CT's: registration matters); "ct" writes it in the CT's frame,
    co-registered, on the MR's own grid (its voxel size and a smaller field of view, identity
    direction), and cohort.toml lists the MR sequences in ``same_frame_as_ct`` (nothing to
    register). Every other file, clinical.csv included, is the same for both.
    """
    mods = check_modalities(modalities)
    n_workers = worker_count(workers)
    check_mr_frame(mr_frame)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_patients(n_patients, seed, mods, mr_frame)
    _write_all(plans, out, mods, n_workers, progress)
    table = clinical_table(plans)
    write_text(table.to_csv(index=False), out / "clinical.csv")
    write_text(cohort_toml(n_patients, seed, mods, mr_frame), out / "cohort.toml")
    return table
