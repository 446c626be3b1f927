"""Shared fixtures: small synthetic cohorts (the study's five images; CT, PET and T1w) and smoke
runs of the chapters on them, each made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SMOKE_PATIENTS = 8
SMOKE_SEED = 3
#: A PET/CT cohort with one MR sequence: no dose, no T2w, no CE-T1w (channel order as listed).
PET_MODALITIES = ("ct", "pet", "t1w")


@pytest.fixture(scope="session")
def smoke_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic cohort (8 screened patients, one of them incomplete)."""
    from stsnb.synth import make_synthetic_cohort

    out = tmp_path_factory.mktemp("cohort") / "synthetic"
    make_synthetic_cohort(out, n_patients=SMOKE_PATIENTS, seed=SMOKE_SEED, progress=False)
    return out


@pytest.fixture(scope="session")
def identified_cohort(smoke_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke cohort with a name, a birth date and a record number per patient in
    clinical.csv, as a hospital export might have them."""
    import shutil

    import pandas as pd
    from cohort_fixtures import identifying_values

    out = tmp_path_factory.mktemp("cohort-ids") / "identified"
    shutil.copytree(smoke_cohort, out)
    clinical = pd.read_csv(out / "clinical.csv", dtype=str, keep_default_na=False)
    extra = pd.DataFrame([identifying_values(p) for p in clinical["patient_id"]])
    pd.concat([clinical, extra], axis=1).to_csv(out / "clinical.csv", index=False)
    return out


@pytest.fixture(scope="session")
def smoke_book(identified_cohort: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every chapter executed by papermill on the smoke cohort (with identifying clinical
    columns) as `make book` runs them on a CPU: chapter 04's pages two at a time, the appendix
    and the radiomics chapter beside the others; then the HTML book built."""
    from stsnb.run.book import build_book, run_chapters
    from stsnb.run.jobs import ExecutorChoice
    from stsnb.run.pages import CHAPTERS

    work_dir = tmp_path_factory.mktemp("work") / "smoke-work"
    executed = run_chapters(identified_cohort, work_dir, profile="smoke", seed=SMOKE_SEED,
                            chapters=CHAPTERS, executor=ExecutorChoice("processes", jobs=2))
    index = build_book(work_dir)
    return {"work_dir": work_dir, "index": index, "html": index.parent,
            "executed": executed[0].parent, "cohort_dir": identified_cohort}


@pytest.fixture(scope="session")
def pet_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic PET/CT + T1w cohort (8 screened patients, one incomplete), rendered by
    two worker processes."""
    from stsnb.synth import make_synthetic_cohort

    out = tmp_path_factory.mktemp("pet-cohort") / "synthetic-pet"
    make_synthetic_cohort(out, n_patients=SMOKE_PATIENTS, seed=SMOKE_SEED, progress=False,
                          modalities=PET_MODALITIES, workers=2)
    return out


@pytest.fixture(scope="session")
def pet_run(pet_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every chapter executed by papermill on the PET/CT + T1w cohort (smoke profile)."""
    from stsnb.run.book import run_chapters
    from stsnb.run.pages import CHAPTERS

    work_dir = tmp_path_factory.mktemp("pet-work") / "smoke-pet-work"
    executed = run_chapters(pet_cohort, work_dir, profile="smoke", seed=SMOKE_SEED,
                            chapters=CHAPTERS)
    return {"work_dir": work_dir, "executed": executed[0].parent, "cohort_dir": pet_cohort,
            "notebooks": executed}


@pytest.fixture(scope="session")
def ct_frame_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The PET/CT + T1w cohort with its T1w written in the CT's frame (`synth --mr-frame ct`:
    nothing to register), every chapter but the appendix executed by papermill (smoke)."""
    from stsnb.run.book import run_chapters
    from stsnb.run.pages import CHAPTERS
    from stsnb.synth import make_synthetic_cohort

    cohort = tmp_path_factory.mktemp("ct-frame-cohort") / "synthetic-ct-frame"
    make_synthetic_cohort(cohort, n_patients=SMOKE_PATIENTS, seed=SMOKE_SEED, progress=False,
                          modalities=PET_MODALITIES, workers=2, mr_frame="ct")
    work_dir = tmp_path_factory.mktemp("ct-frame-work") / "smoke-ct-frame-work"
    chapters = tuple(c for c in CHAPTERS if c != "07_real_cohort")
    executed = run_chapters(cohort, work_dir, profile="smoke", seed=SMOKE_SEED,
                            chapters=chapters)
    return {"work_dir": work_dir, "cohort_dir": cohort, "notebooks": executed,
            "chapters": chapters}
