"""Stage 03 runner: the slice store of the patients that chapter 02 kept, and combinations.csv.

Inputs per patient: the planning CT and the GTV from the cohort folder (both on the CT grid), and
every other declared image from chapter 02's output, ``work_dir/registration/<pid>/<m>.nii.gz``
(the MR sequences registered and resampled onto the CT grid, the dose resampled onto it). A
patient's shard is rebuilt only when one of these files (content hash) or a setting changes.
"""

from __future__ import annotations

import json
from pathlib import Path

from stsnb.core.combinations import write_combinations
from stsnb.core.config import Profile, resolve_profile
from stsnb.core.errors import CohortError, StsnbError
from stsnb.core.imageio import read_image
from stsnb.core.manifest import update_manifest
from stsnb.core.store import ensure_writable_dir, hash_file
from stsnb.curation.cohort import GTV_FILE, image_path
from stsnb.curation.cohort_config import read_cohort_config
from stsnb.curation.stage import curated_checksum, read_cohort_table
from stsnb.slices.build import STAGE, PatientSource, PatientVolumes, build_slice_store
from stsnb.slices.slice_store import SliceStore


def registered_image_path(work_dir: str | Path, patient_id: str, modality: str) -> Path:
    """Chapter 02's output for one image: ``work_dir/registration/<pid>/<modality>.nii.gz``."""
    return Path(work_dir) / "registration" / str(patient_id) / f"{modality}.nii.gz"


def patient_files(cohort_dir: str | Path, work_dir: str | Path, patient_id: str,
                  modalities: tuple[str, ...]) -> dict[str, Path]:
    """The file of each image on the CT grid (key "gtv" for the mask), checked to exist."""
    files = {m: image_path(cohort_dir, patient_id, "ct") if m == "ct"
             else registered_image_path(work_dir, patient_id, m) for m in modalities}
    files["gtv"] = Path(cohort_dir) / str(patient_id) / GTV_FILE
    for name, path in files.items():
        if not path.is_file():
            chapter = "01 (curation)" if path.is_relative_to(Path(cohort_dir)) \
                else "02 (registration)"
            raise CohortError(
                f"the {name} image on the CT grid, {path.name}, does not exist.",
                patient_id=patient_id, path=path,
                fix=f"rerun chapter {chapter}; the slice store reads every image on the CT grid.")
    return files


def patient_source(cohort_dir: str | Path, work_dir: str | Path, patient_id: str, label: int,
                   modalities: tuple[str, ...]) -> PatientSource:
    """A patient whose images are read only if its shard must be (re)built."""
    files = patient_files(cohort_dir, work_dir, patient_id, modalities)
    input_key = json.dumps({name: hash_file(path) for name, path in files.items()},
                           sort_keys=True)

    def load() -> PatientVolumes:
        images = {m: read_image(files[m], patient_id, m) for m in modalities}
        gtv = read_image(files["gtv"], patient_id, "tumour mask")
        return PatientVolumes(patient_id, label, images, gtv, paths=files, input_key=input_key)

    return PatientSource(patient_id, label, input_key, load)


def preprocessing_patients(work_dir: str | Path) -> list[tuple[str, int]]:
    """(patient_id, label) of the included patients that chapter 02 kept, in its order."""
    from stsnb.registration.review import final_patients

    cohort = read_cohort_table(work_dir)
    labels = cohort.loc[cohort["included"]].set_index("patient_id")["label"]
    kept = final_patients(work_dir)
    unknown = [p for p in kept if p not in labels.index]
    if unknown:
        raise StsnbError(
            f"Patients {unknown} were registered but are not included in {work_dir}/cohort.csv. "
            "Fix: rerun chapter 02 after chapter 01 so both use the same cohort."
        )
    return [(pid, int(labels[pid])) for pid in kept]


def run_preprocessing(cohort_dir: str | Path, work_dir: str | Path, profile: Profile | str,
                      seed: int = 0, progress: bool = True) -> SliceStore:
    """Build (or reuse) the slice store of chapter 03 and write ``work_dir/combinations.csv``.

    Patients: the included ones of ``cohort.csv`` that chapter 02 kept (not excluded on review
    or by ``exclude_flagged``). Nothing here is random: `seed` is only recorded in the manifest.
    """
    profile = resolve_profile(profile)
    work_dir = ensure_writable_dir(work_dir)
    modalities = read_cohort_config(cohort_dir).modalities
    patients = preprocessing_patients(work_dir)
    sources = [patient_source(cohort_dir, work_dir, pid, label, modalities)
               for pid, label in patients]
    store = build_slice_store(work_dir, sources, profile, progress=progress,
                              modalities=modalities)
    write_combinations(work_dir, modalities)
    update_manifest(work_dir, profile=profile, cohort_dir=cohort_dir, seed=seed, stage=STAGE,
                    cohort_sha256=curated_checksum(work_dir))
    return store
