"""Shared fixtures: one small synthetic cohort and one smoke run of the book per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SMOKE_PATIENTS = 8
SMOKE_SEED = 3


@pytest.fixture(scope="session")
def smoke_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic cohort (8 screened patients, one of them incomplete)."""
    from stsnb.synth import make_synthetic_cohort

    out = tmp_path_factory.mktemp("cohort") / "synthetic"
    make_synthetic_cohort(out, n_patients=SMOKE_PATIENTS, seed=SMOKE_SEED, progress=False)
    return out


@pytest.fixture(scope="session")
def smoke_book(smoke_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every chapter executed by papermill on the smoke cohort, then the HTML book built."""
    from stsnb.book import CHAPTERS, build_book, run_chapters

    work_dir = tmp_path_factory.mktemp("work") / "smoke-work"
    executed = run_chapters(smoke_cohort, work_dir, profile="smoke", seed=SMOKE_SEED,
                            chapters=CHAPTERS)
    index = build_book(work_dir)
    return {"work_dir": work_dir, "index": index, "html": index.parent,
            "executed": executed[0].parent, "cohort_dir": smoke_cohort}
