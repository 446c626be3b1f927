"""Stage 01: curate the cohort (inclusion criteria) and record it under the work dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stsnb.core.config import Profile
from stsnb.core.manifest import update_manifest
from stsnb.core.store import (
    STAGE_RECORD,
    Stage,
    cohort_checksum,
    ensure_writable_dir,
    read_json,
    write_csv_atomic,
)
from stsnb.curation.cohort import (
    BOOK_CLINICAL_COLUMNS,
    CohortConfig,
    curate_cohort,
    image_geometry,
    inclusion_flow,
    read_cohort_config,
)

STAGE = "curation"
#: Bumped when what cohort.csv holds changes (part of the stage key).
CURATION_FORMAT = 2


def curated_checksum(work_dir: str | Path) -> str | None:
    """The cohort checksum chapter 01 recorded (later stages need not hash the cohort again);
    None when chapter 01 has not run."""
    key = read_json(Path(work_dir) / STAGE / STAGE_RECORD).get("key")
    return key.get("cohort_sha256") if isinstance(key, dict) else None


@dataclass(frozen=True)
class CurationResult:
    """What chapter 01 shows: the cohort table, the image geometry and the inclusion flow."""

    cohort: pd.DataFrame
    geometry: pd.DataFrame
    flow: pd.DataFrame
    config: CohortConfig
    reused: bool


def run_curation(
    cohort_dir: str | Path,
    work_dir: str | Path,
    profile: Profile,
    seed: int = 0,
    min_followup_months: float = 0.0,
    progress: bool = True,
) -> CurationResult:
    """Curate `cohort_dir` into `work_dir/cohort.csv`; reuse it when inputs and settings match.

    Writes `cohort.csv` (one row per screened patient with `included` and `exclusion_reason`),
    `curation/geometry.csv` (voxel sizes in mm and fields of view per image) and
    `curation/flow.csv` (the inclusion flow).
    """
    cohort_dir = Path(cohort_dir)
    work_dir = ensure_writable_dir(work_dir)
    config = read_cohort_config(cohort_dir)
    checksum = cohort_checksum(cohort_dir)
    key = {
        "stage": STAGE,
        "cohort_sha256": checksum,
        "min_followup_months": float(min_followup_months),
        "modalities": list(config.modalities),
        "format": CURATION_FORMAT,
        "clinical_columns": list(BOOK_CLINICAL_COLUMNS),
    }
    stage = Stage(work_dir, STAGE, key)
    paths = {
        "cohort": work_dir / "cohort.csv",
        "geometry": stage.dir / "geometry.csv",
        "flow": stage.dir / "flow.csv",
    }
    reused = stage.is_current()
    if not reused:
        stage.start()
        table = work_view(curate_cohort(
            cohort_dir, min_followup_months=min_followup_months, progress=progress
        ))
        geometry = image_geometry(cohort_dir, table)
        flow = inclusion_flow(table)
        stage.invalidate()
        write_csv_atomic(geometry, paths["geometry"])
        write_csv_atomic(flow, paths["flow"])
        write_csv_atomic(table, paths["cohort"])
        stage.finish(paths.values())
    update_manifest(
        work_dir,
        profile=profile,
        cohort_dir=cohort_dir,
        seed=seed,
        stage=STAGE,
        cohort_sha256=checksum,
    )
    return CurationResult(
        cohort=read_cohort_table(work_dir),
        geometry=pd.read_csv(paths["geometry"]),
        flow=pd.read_csv(paths["flow"], keep_default_na=False),
        config=config,
        reused=reused,
    )


def read_cohort_table(work_dir: str | Path) -> pd.DataFrame:
    """Read `work_dir/cohort.csv` with its types (patient_id str, label Int64, included bool)."""
    table = pd.read_csv(
        Path(work_dir) / "cohort.csv",
        dtype={"patient_id": str, "exclusion_reason": str},
        keep_default_na=True,
    )
    table["exclusion_reason"] = table["exclusion_reason"].fillna("")
    table["label"] = table["label"].astype("Int64")
    table["included"] = table["included"].astype(bool)
    return table


def work_view(cohort: pd.DataFrame) -> pd.DataFrame:
    """The curation table as the work dir keeps it: curation columns and the allowlisted
    clinical columns (BOOK_CLINICAL_COLUMNS, any case) only, so that identifying columns of
    clinical.csv (names, birth dates, record numbers, ...) never leave the cohort folder."""
    allowed = {c.lower() for c in BOOK_CLINICAL_COLUMNS}
    end = list(cohort.columns).index("gtv_volume_cc") + 1
    curation = list(cohort.columns[:end])
    clinical = [c for c in cohort.columns[end:] if str(c).strip().lower() in allowed]
    return cohort[curation + clinical]


def book_view(cohort: pd.DataFrame, allowed: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The curation table as the book may show it: pseudonymous id and allowlisted columns only."""
    from stsnb.curation.cohort import BOOK_CLINICAL_COLUMNS

    allowed = BOOK_CLINICAL_COLUMNS if allowed is None else allowed
    base = ["patient_id", "included", "exclusion_reason", "label", "followup_months"]
    columns = base + [c for c in allowed if c in cohort.columns]
    return cohort[columns]


def example_patients(cohort: pd.DataFrame, n: int, seed: int = 0) -> list[str]:
    """Up to `n` included patients to show, alternating outcome classes (seeded choice)."""
    included = cohort[cohort["included"]]
    groups = [
        included[included["label"] == label].sample(frac=1.0, random_state=seed)["patient_id"]
        .tolist()
        for label in (1, 0)
    ]
    chosen: list[str] = []
    while len(chosen) < n and any(groups):
        for group in groups:
            if group and len(chosen) < n:
                chosen.append(group.pop(0))
    return chosen


def curation_summary(result: CurationResult) -> str:
    """A few sentences with the numbers that matter, for the chapter's summary."""
    cohort = result.cohort
    included = cohort[cohort["included"]]
    positives = int((included["label"] == 1).sum())
    excluded = cohort[~cohort["included"]]
    reasons = excluded["exclusion_reason"].str.split("; ").explode().value_counts()
    reason_text = ", ".join(f"{reason} ({count})" for reason, count in reasons.items()) or "none"
    return (
        f"{len(cohort)} patients screened, {len(included)} included and {len(excluded)} "
        f"excluded: {reason_text}. Among the included, {positives} developed distant metastasis "
        f"({positives / max(len(included), 1):.0%}). Modalities: "
        f"{', '.join(result.config.modalities)}."
    )
