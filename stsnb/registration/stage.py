"""Stage 02: register every included patient, save per patient, write ``registration/qa.csv``.

Per patient, ``work_dir/registration/<patient_id>/`` holds the images on the CT grid
(``<modality>.nii.gz``, ``gtv.nii.gz``, ``gtv_from_mr[_rigid].nii.gz``), the transforms
(``transform_<modality>_rigid.tfm``, ``transform_<modality>.h5``: CT points -> image points),
``jacobian.nii.gz``, ``metric_history.csv``, ``qa.json``, ``qa_images.csv`` (the per-image checks)
and ``record.json``; ``registration/qa_images.csv`` gathers the per-image checks of every
patient. With nothing to register (every image in the CT's frame) the images are resampled onto
the CT grid by geometry alone and written where registered ones would be. The record (written
last, atomically, like every file) holds the hashes of the input files and the settings; a
patient is reused only when they match and every output exists.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import SimpleITK as sitk
from tqdm.auto import tqdm

from stsnb.core.config import Profile, RegistrationConfig
from stsnb.core.diskspace import check_registration_space
from stsnb.core.errors import StsnbError
from stsnb.core.manifest import update_manifest
from stsnb.core.store import (
    Record,
    Stage,
    atomic_path,
    ensure_writable_dir,
    hash_config,
    hash_file,
    read_json,
    write_csv_atomic,
    write_json_atomic,
)
from stsnb.core.workers import single_blas_thread, worker_count
from stsnb.curation.cohort_config import CohortConfig, read_cohort_config
from stsnb.curation.stage import curated_checksum, read_cohort_table
from stsnb.registration.inputs import PatientInputs, patient_inputs
from stsnb.registration.patient import IMAGE_QA_COLUMNS, PatientRegistration, register_patient
from stsnb.registration.qa import QAThresholds, qa_table, read_qa
from stsnb.registration.review import registration_dir, write_review_template
from stsnb.registration.settings import registration_settings

STAGE = "registration"
#: Bumped whenever the algorithm changes what it writes (invalidates every record).
REGISTRATION_VERSION = 4  # 3: per-image checks (qa_images.csv); nothing to register is a case
#                            4: one SimpleITK thread per patient (results independent of cores)
#: SimpleITK threads registering one patient, wherever it runs: its metric sums per thread, so
#: another count changes the result in the last digits (up to 0.08 mm of TRE measured); the
#: cores are used by registering patients in parallel instead (`workers`).
THREADS_PER_PATIENT = 1
IMAGE_QA_FILE = "qa_images.csv"
RECORD = "record.json"


@dataclass(frozen=True)
class RegistrationRun:
    """What chapter 02 shows: the QA table and how it was made."""

    qa: pd.DataFrame
    images: pd.DataFrame  # the per-image checks (IMAGE_QA_COLUMNS)
    config: RegistrationConfig
    cohort: CohortConfig
    thresholds: QAThresholds
    reused: tuple[str, ...]  # patients whose saved outputs were reused
    work_dir: Path
    cohort_dir: Path


def read_image_qa(path: str | Path) -> pd.DataFrame:
    """``registration/qa_images.csv`` with its types (patient_id, image, note str)."""
    table = pd.read_csv(path, dtype={"patient_id": str, "image": str, "note": str})
    table["registered"] = table["registered"].astype(bool)
    table["note"] = table["note"].fillna("")
    return table


def patient_dir(work_dir: str | Path, patient_id: str) -> Path:
    """``work_dir/registration/<patient_id>``."""
    return registration_dir(work_dir) / str(patient_id)


def _settings_key(config: RegistrationConfig) -> dict[str, Any]:
    """The settings as hashed: a setting added later is left out at its neutral default, so
    outputs made before it existed (and unchanged by it) are still reused."""
    settings = asdict(config)
    if settings["rigid_focus_mm"] == 0:
        del settings["rigid_focus_mm"]
    return settings


def patient_key(inputs: PatientInputs, config: RegistrationConfig, seed: int) -> dict[str, Any]:
    """What makes one patient's outputs: input file hashes, settings, seed, code version."""
    return {
        "stage": STAGE,
        "version": REGISTRATION_VERSION,
        "patient_id": inputs.patient_id,
        "inputs": {p.relative_to(inputs.folder).as_posix(): hash_file(p) for p in inputs.files()},
        "settings": _settings_key(config),
        "mr_reference": inputs.reference,
        "registered": list(inputs.registered),
        "same_frame": list(inputs.same_frame),
        "in_ct_frame": list(inputs.in_ct_frame),
        "seed": int(seed),
    }


def _write_image(image: sitk.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def _write_transform(transform: sitk.Transform, path: Path) -> Path:
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def save_patient(result: PatientRegistration, folder: Path, key: dict[str, Any]) -> list[Path]:
    """Write one patient's outputs atomically, the record last; return the output paths."""
    Record(folder / RECORD).invalidate()  # no record vouches for files being rewritten
    outputs = [_write_image(image, folder / f"{name}.nii.gz")
               for name, image in result.images.items()]
    for modality in result.transforms:
        outputs.append(_write_transform(result.rigid_transforms[modality],
                                        folder / f"transform_{modality}_rigid.tfm"))
        outputs.append(_write_transform(result.transforms[modality],
                                        folder / f"transform_{modality}.h5"))
    if result.deformation is not None:
        outputs.append(_write_image(result.deformation.jacobian, folder / "jacobian.nii.gz"))
    outputs.append(write_csv_atomic(result.history, folder / "metric_history.csv"))
    outputs.append(write_json_atomic(folder / "qa.json", result.qa))
    if result.image_qa is not None:
        outputs.append(write_csv_atomic(result.image_qa, folder / IMAGE_QA_FILE))
    Record(folder / RECORD).finish(hash_config(key), [p.name for p in outputs], key=key)
    return outputs


def saved_qa(folder: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved QA row when the record matches `key` and every output exists, else None."""
    if not Record(folder / RECORD).is_current(hash_config(key)):
        return None
    return read_json(folder / "qa.json") or None


def registered_patients(work_dir: str | Path) -> list[str]:
    """The included patients of the curated cohort (``work_dir/cohort.csv``)."""
    if not (Path(work_dir) / "cohort.csv").exists():
        raise StsnbError(f"{Path(work_dir) / 'cohort.csv'} does not exist. Fix: run chapter 01 "
                         "(data curation) first, or `python -m stsnb curate`.")
    cohort = read_cohort_table(work_dir)
    return cohort.loc[cohort["included"], "patient_id"].tolist()


def run_registration(
    cohort_dir: str | Path,
    work_dir: str | Path,
    profile: Profile,
    seed: int = 0,
    rigid_only: bool = False,
    patients: list[str] | None = None,
    thresholds: QAThresholds | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> RegistrationRun:
    """Register the included patients (or `patients`) and write ``registration/qa.csv``.

    Each patient is reused when its inputs and settings are unchanged. A patient that cannot
    be registered raises an error naming it and the file; the patients done so far are kept.
    `workers`: patients registered at once, each in its own process (default: one per core;
    1 = in this process). Each patient is registered on THREADS_PER_PATIENT SimpleITK threads,
    so the results do not depend on the machine or on `workers`.
    """
    cohort_dir = Path(cohort_dir)
    work_dir = ensure_writable_dir(work_dir)
    cohort = read_cohort_config(cohort_dir)
    config = registration_settings(profile, cohort, rigid_only=rigid_only, cohort_dir=cohort_dir)
    thresholds = thresholds or QAThresholds()
    ids = list(patients) if patients is not None else registered_patients(work_dir)
    keys = {pid: patient_key(patient_inputs(cohort_dir, pid, cohort), config, seed)
            for pid in ids}
    stage = Stage(work_dir, STAGE, {"stage": STAGE, "version": REGISTRATION_VERSION,
                                    "patients": {p: hash_config(k) for p, k in keys.items()},
                                    "thresholds": asdict(thresholds)})
    stage.start()
    check_registration_space(registration_dir(work_dir), [
        patient_inputs(cohort_dir, p, cohort) for p in ids
        if saved_qa(patient_dir(work_dir, p), keys[p]) is None])
    saved = {pid: saved_qa(patient_dir(work_dir, pid), keys[pid]) for pid in ids}
    reused = [pid for pid in ids if saved[pid] is not None]
    todo = [pid for pid in ids if saved[pid] is None]
    computed = dict(_register_all(todo, cohort_dir, cohort, config, seed, work_dir, keys,
                                  worker_count(workers, len(todo)), progress))
    rows, image_rows, outputs = [], [], []
    for pid in ids:
        folder = patient_dir(work_dir, pid)
        rows.append(saved[pid] if saved[pid] is not None else computed[pid])
        image_rows.append(pd.read_csv(folder / IMAGE_QA_FILE, dtype={"patient_id": str}))
        outputs.append(folder / RECORD)
    table = qa_table(rows, thresholds)
    qa_path = write_csv_atomic(table, registration_dir(work_dir) / "qa.csv")
    images_path = write_csv_atomic(
        pd.concat(image_rows, ignore_index=True) if image_rows
        else pd.DataFrame(columns=list(IMAGE_QA_COLUMNS)),
        registration_dir(work_dir) / IMAGE_QA_FILE)
    write_review_template(work_dir, table)
    if len(reused) < len(ids) or not stage.is_current():
        stage.finish([qa_path, images_path, *outputs])
    update_manifest(work_dir, profile=profile, cohort_dir=cohort_dir, seed=seed, stage=STAGE,
                    cohort_sha256=curated_checksum(work_dir))
    return RegistrationRun(qa=read_qa(qa_path), images=read_image_qa(images_path),
                           config=config, cohort=cohort,
                           thresholds=thresholds, reused=tuple(reused), work_dir=work_dir,
                           cohort_dir=cohort_dir)


def _register_and_save(cohort_dir: Path, patient_id: str, cohort: CohortConfig | None,
                       config: RegistrationConfig, seed: int, folder: Path,
                       key: dict[str, Any]) -> dict[str, Any]:
    """Register one patient and save its outputs (record last); return its QA row. A worker
    process gets `cohort` None and reads cohort.toml itself (the parsed form does not pickle);
    the patient's key, checked by the parent, holds the hashes of every input."""
    cohort = cohort if cohort is not None else read_cohort_config(cohort_dir)
    result = register_patient(patient_inputs(cohort_dir, patient_id, cohort), config, seed)
    save_patient(result, folder, key)
    return result.qa


def _worker_threads(threads: int) -> None:
    """Worker start-up: SimpleITK on `threads` threads, one BLAS thread."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    single_blas_thread()


def _register_all(todo: list[str], cohort_dir: Path, cohort: CohortConfig,
                  config: RegistrationConfig, seed: int, work_dir: Path,
                  keys: dict[str, dict[str, Any]], workers: int,
                  progress: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """(patient, QA row) of each patient of `todo`, registered and saved, `workers` at a time.

    Each patient is saved by the process that registered it, so a failure or an interruption
    keeps every patient finished before it; the first failure cancels the patients not
    started and is raised as it is (it names the patient and the file)."""
    bar = tqdm(total=len(todo), desc="registration", unit="patient", disable=not progress)
    with bar:
        if workers <= 1:
            before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(THREADS_PER_PATIENT)
            try:
                for pid in todo:
                    bar.set_postfix_str(pid)
                    yield pid, _register_and_save(cohort_dir, pid, cohort, config, seed,
                                                  patient_dir(work_dir, pid), keys[pid])
                    bar.update()
            finally:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=_worker_threads,
                                 initargs=(THREADS_PER_PATIENT,)) as pool:
            futures = {pool.submit(_register_and_save, cohort_dir, pid, None, config, seed,
                                   patient_dir(work_dir, pid), keys[pid]): pid for pid in todo}
            try:
                for future in as_completed(futures):
                    pid = futures[future]
                    bar.set_postfix_str(pid)
                    yield pid, future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
