"""The radiomics stage: IBSI features of the GTV in every image, per patient, saved and reused.

Per patient, ``work_dir/radiomics/<patient_id>/`` holds ``features.csv`` (columns patient_id,
image, feature, value; MIRP's feature names) and ``record.json`` (written last, atomically: the
hashes of the input files, the settings and the library versions, the seconds it took and the
library's warnings). A patient is reused only when its record matches and its features file is
whole. ``work_dir/radiomics/features.csv`` is the table of all patients: one row per patient,
columns patient_id and ``<image>__<feature>``.

The features are computed by the worker (``worker.py``) in ``.venv-radiomics`` by subprocess:
one run for all the patients to compute, which writes one file per patient as it goes, so a
failure keeps the patients finished before it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from stsnb.core.config import Profile, resolve_profile
from stsnb.core.errors import StsnbError
from stsnb.core.manifest import update_manifest
from stsnb.core.store import (
    Record,
    Stage,
    ensure_writable_dir,
    hash_config,
    hash_file,
    write_csv_atomic,
)
from stsnb.core.workers import worker_count
from stsnb.curation.cohort_config import read_cohort_config
from stsnb.radiomics.environment import WORKER, library_versions, radiomics_python
from stsnb.radiomics.errors import RadiomicsError
from stsnb.radiomics.inputs import RadiomicsInputs, check_inputs, radiomics_inputs
from stsnb.radiomics.settings import (
    image_settings,
    left_out_features,
    mirp_arguments,
    settings_table,
)
from stsnb.radiomics.worker import COLUMNS, DONE, START
from stsnb.registration.review import final_patients

STAGE = "radiomics"
#: Bumped whenever the stage changes what it computes or writes (invalidates every record).
RADIOMICS_VERSION = 1
RECORD = "record.json"
FEATURES = "features.csv"
#: Separator of image and feature in the all-patient table's column names.
SEPARATOR = "__"
#: Lines of the worker's stderr shown when it fails.
STDERR_TAIL_LINES = 25


@dataclass(frozen=True)
class RadiomicsRun:
    """The feature table of all patients and how it was made."""

    features: pd.DataFrame  # one row per patient: patient_id, <image>__<feature>
    settings: pd.DataFrame  # the settings table of the images used
    images: tuple[str, ...]
    library: dict[str, str]  # versions of MIRP and what it computes with
    reused: tuple[str, ...]  # patients whose saved features were reused
    computed: tuple[str, ...]
    seconds: dict[str, float]  # worker seconds per computed patient
    left_out: tuple[str, ...]  # MIRP's names of the features not computed (profile's choice)
    work_dir: Path
    cohort_dir: Path


def radiomics_dir(work_dir: str | Path) -> Path:
    """``work_dir/radiomics``."""
    return Path(work_dir) / STAGE


def patient_dir(work_dir: str | Path, patient_id: str) -> Path:
    """``work_dir/radiomics/<patient_id>``."""
    return radiomics_dir(work_dir) / str(patient_id)


def radiomics_images(cohort_dir: str | Path) -> tuple[str, ...]:
    """The declared images (cohort.toml order); RadiomicsError for one without settings."""
    cohort_dir = Path(cohort_dir)
    images = read_cohort_config(cohort_dir).modalities
    missing = [m for m in images if image_settings(m) is None]
    if missing:
        raise RadiomicsError(
            f"no radiomics settings for the image(s) {', '.join(missing)} declared in "
            "cohort.toml: a discretisation must be chosen for each image's unit.",
            path=cohort_dir / "cohort.toml",
            fix="add a row for each to stsnb.radiomics.settings.RADIOMICS_SETTINGS, or leave "
            "them out of modalities.")
    return images


def patient_key(inputs: RadiomicsInputs, library: dict[str, str],
                leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """What makes one patient's features: input file hashes, settings, the features left out
    (MIRP's names), library versions."""
    key = {
        "stage": STAGE,
        "version": RADIOMICS_VERSION,
        "patient_id": inputs.patient_id,
        "inputs": {name: hash_file(path) for name, path in inputs.files().items()},
        "settings": {image: mirp_arguments(image) for image in inputs.images},
        "library": dict(sorted(library.items())),
    }
    if leave_out:  # absent when nothing is left out: the keys saved before the option hold
        key["leave_out"] = sorted(leave_out)
    return key


def read_patient_features(path: str | Path) -> pd.DataFrame:
    """A per-patient ``features.csv`` (patient_id, image, feature, value)."""
    return pd.read_csv(path, dtype={"patient_id": str, "image": str, "feature": str,
                                    "value": float})


def saved_features(folder: Path, key: dict[str, Any]) -> pd.DataFrame | None:
    """The saved features when the record matches `key` and the file is whole, else None."""
    if not Record(folder / RECORD).is_current(hash_config(key)):
        return None
    try:
        return read_patient_features(folder / FEATURES)
    except (OSError, ValueError):
        return None


def _save_patient(folder: Path, features: pd.DataFrame, key: dict[str, Any],
                  done: dict[str, Any], checks: dict[str, float]) -> Path:
    """Write one patient's features and, last, its record; return the record's path."""
    record = Record(folder / RECORD)
    record.invalidate()  # no record vouches for a file being rewritten
    write_csv_atomic(features, folder / FEATURES)
    record.finish(hash_config(key), [FEATURES], key=key, seconds=done.get("seconds"),
                  image_seconds=done.get("image_seconds", {}),
                  warnings=done.get("warnings", []), **checks)
    return record.path


def worker_request(inputs: list[RadiomicsInputs],
                   leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The worker's request: per patient and image, the files and the MIRP settings; the
    features not to compute (MIRP's names)."""
    return {"leave_out": sorted(leave_out), "patients": [{
        "patient_id": item.patient_id,
        "images": [{"image": image, "image_path": str(path.resolve()),
                    "mask_path": str(item.mask.resolve()), "settings": mirp_arguments(image)}
                   for image, path in item.images.items()],
    } for item in inputs]}


def _tail(path: Path, n_lines: int = STDERR_TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=n_lines)).strip()
    except OSError:
        return ""


def run_worker(request: dict[str, Any], scratch: Path,
               on_done: Callable[[dict[str, Any], pd.DataFrame], None],
               python: Path | None = None) -> None:
    """Run the worker on `request` in folder `scratch`; call `on_done(line, features)` as each
    patient finishes. StsnbError with the worker's stderr tail, naming the patient, if it fails.
    """
    python = python or radiomics_python()
    request_path = scratch / "request.json"
    request_path.write_text(json.dumps(request), encoding="utf-8")
    out_dir = scratch / "out"
    stderr_path = scratch / "stderr.txt"
    current: str | None = None
    with open(stderr_path, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [str(python), "-I", str(WORKER), str(request_path), str(out_dir)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        try:
            for line in process.stdout:
                if line.startswith(START):
                    current = json.loads(line[len(START):])["patient_id"]
                elif line.startswith(DONE):
                    done = json.loads(line[len(DONE):])
                    on_done(done, read_patient_features(out_dir / f"{done['patient_id']}.csv"))
                    current = None
            returncode = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if returncode != 0:
        tail = _tail(stderr_path)
        raise RadiomicsError(
            f"the radiomics worker ({WORKER.name}, MIRP) failed with exit status {returncode}"
            + (f" while computing patient {current}" if current else "")
            + f". Its last output:\n{tail}\n", patient_id=current,
            fix="read the library's message above (it names the image and the file); a "
            "missing package means the environment is incomplete: delete .venv-radiomics and "
            "run `make env`.")


def worker_chunks(patients: list[str], workers: int | None = None) -> list[list[str]]:
    """`patients` dealt round-robin to at most `workers` workers (default one per core).

    >>> worker_chunks(["a", "b", "c", "d", "e"], 2)
    [['a', 'c', 'e'], ['b', 'd']]
    """
    n = worker_count(workers, len(patients))
    return [patients[i::n] for i in range(n)] if patients else []


def run_workers(requests: list[dict[str, Any]], parent: Path,
                on_done: Callable[[dict[str, Any], pd.DataFrame], None],
                python: Path | None = None) -> None:
    """One worker process per request, at once, each in its own scratch folder under `parent`;
    `on_done` is called under a lock as each patient finishes (its files saved at once, so a
    failure keeps every patient done). The first worker's error is raised after the others
    have finished."""
    parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def locked(done: dict[str, Any], table: pd.DataFrame) -> None:
        with lock:
            on_done(done, table)

    def one(request: dict[str, Any]) -> None:
        scratch = Path(tempfile.mkdtemp(prefix=".worker-", dir=parent))
        try:
            run_worker(request, scratch, locked, python)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    with ThreadPoolExecutor(max_workers=max(1, len(requests))) as pool:
        futures = [pool.submit(one, request) for request in requests]
    for future in futures:
        future.result()


def _check_features(features: pd.DataFrame, inputs: RadiomicsInputs) -> None:
    missing = [m for m in inputs.images if m not in set(features["image"])]
    if list(features.columns) != list(COLUMNS) or missing:
        raise StsnbError(f"[patient {inputs.patient_id}] the radiomics worker returned no "
                         f"features for {', '.join(missing) or 'some images'}. Fix: report "
                         "this; the worker's output format and the stage disagree.")


def wide_table(per_patient: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per patient (in the given order): patient_id, then ``<image>__<feature>``."""
    rows = []
    for pid, table in per_patient.items():
        names = table["image"] + SEPARATOR + table["feature"]
        rows.append(pd.Series(table["value"].to_numpy(), index=names.to_numpy(), name=pid))
    if not rows:
        return pd.DataFrame(columns=["patient_id"])
    wide = pd.DataFrame(rows)
    wide.index.name = "patient_id"
    return wide.reset_index()


def has_features(work_dir: str | Path) -> bool:
    """Whether the radiomics stage has written ``work_dir/radiomics/features.csv``."""
    return (radiomics_dir(work_dir) / FEATURES).exists()


def read_features(work_dir: str | Path) -> pd.DataFrame:
    """The all-patient table ``work_dir/radiomics/features.csv``."""
    path = radiomics_dir(work_dir) / FEATURES
    if not path.exists():
        raise StsnbError(f"{path} does not exist. Fix: run the radiomics stage "
                         "(stsnb.radiomics.run_radiomics) first.")
    return pd.read_csv(path, dtype={"patient_id": str})


def run_radiomics(
    cohort_dir: str | Path,
    work_dir: str | Path,
    profile: str | Profile,
    seed: int = 0,
    progress: bool = True,
    patients: list[str] | None = None,
    workers: int | None = None,
) -> RadiomicsRun:
    """Compute (or reuse) the GTV's features in every declared image for the final patients
    (``registration/patients.csv``, or `patients`) and write ``radiomics/features.csv``.

    Of `profile` only ``radiomics.spatial_autocorrelation`` changes the features (quick and smoke
    leave out Moran's I and Geary's C, see RadiomicsConfig); `seed` does not. Bad
    input raises RadiomicsError naming the patient, the image and the file; it is checked for
    every patient to compute before the worker starts. `workers`: worker processes computing
    patients at once (default: one per core; each patient's features do not depend on it).
    """
    cohort_dir = Path(cohort_dir)
    work_dir = ensure_writable_dir(work_dir)
    profile = resolve_profile(profile)
    images = radiomics_images(cohort_dir)
    ids = [str(p) for p in (patients if patients is not None else final_patients(work_dir))]
    python = radiomics_python()
    library = library_versions(python)
    inputs = {pid: radiomics_inputs(cohort_dir, work_dir, pid, images) for pid in ids}
    leave_out = left_out_features(profile.radiomics)
    keys = {pid: patient_key(inputs[pid], library, leave_out) for pid in ids}
    stage = Stage(work_dir, STAGE, {"stage": STAGE, "version": RADIOMICS_VERSION,
                                    "patients": {p: hash_config(k) for p, k in keys.items()}})
    stage.start()
    saved = {pid: saved_features(patient_dir(work_dir, pid), keys[pid]) for pid in ids}
    todo = [pid for pid in ids if saved[pid] is None]
    checks = {pid: check_inputs(inputs[pid])
              for pid in tqdm(todo, desc="radiomics checks", unit="patient",
                              disable=not progress or not todo)}
    features = {pid: table for pid, table in saved.items() if table is not None}
    seconds: dict[str, float] = {}
    bar = tqdm(total=len(ids), desc="radiomics", unit="patient", disable=not progress)
    bar.update(len(features))

    def on_done(done: dict[str, Any], table: pd.DataFrame) -> None:
        pid = str(done["patient_id"])
        _check_features(table, inputs[pid])
        _save_patient(patient_dir(work_dir, pid), table, keys[pid], done, checks[pid])
        features[pid] = table
        seconds[pid] = float(done["seconds"])
        bar.set_postfix_str(pid)
        bar.update(1)

    try:
        if todo:
            run_workers([worker_request([inputs[p] for p in chunk], leave_out)
                         for chunk in worker_chunks(todo, workers)],
                        radiomics_dir(work_dir), on_done, python)
    finally:
        bar.close()
    unfinished = [pid for pid in todo if pid not in features]
    if unfinished:
        raise StsnbError(f"[patient {unfinished[0]}] the radiomics worker ended without the "
                         f"features of {len(unfinished)} patient(s). Fix: run the stage again.")
    table = wide_table({pid: features[pid] for pid in ids})
    table_path = write_csv_atomic(table, radiomics_dir(work_dir) / FEATURES)
    if todo or not stage.is_current():
        stage.finish([table_path, *(patient_dir(work_dir, p) / RECORD for p in ids)])
    update_manifest(work_dir, profile=profile, cohort_dir=cohort_dir, seed=seed, stage=STAGE)
    return RadiomicsRun(
        features=read_features(work_dir), settings=settings_table(images), images=images,
        library=library, reused=tuple(p for p in ids if p not in todo), computed=tuple(todo),
        seconds=seconds, left_out=leave_out, work_dir=work_dir, cohort_dir=cohort_dir)
