"""Cohort curation: read a cohort folder, check the study's inclusion criteria, record why.

The study included patients with the planning CT, RT dose, tumour structure, the three MR
sequences and post-RT follow-up (61 of 72 screened). Here a missing input is a documented
exclusion (EXCLUSION_REASONS, recorded per patient); a broken input (unreadable or truncated
file, mask off the CT grid or not binary, NaN voxels, bad clinical.csv, a folder without a row)
is a CohortError that names the patient, the file and the fix.
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from stsnb.core.errors import CohortError, ConfigError
from stsnb.core.imageio import (
    ImageHeader,
    check_binary_mask,
    check_finite_file,
    check_same_grid,
    read_header,
    read_image,
)
from stsnb.curation.clinical import (
    BOOK_CLINICAL_COLUMNS,
    CLINICAL_CSV,
    REQUIRED_COLUMNS,
    clinical_summary,
    read_clinical,
)
from stsnb.curation.cohort_config import CohortConfig, cohort_path, read_cohort_config

__all__ = [
    "BOOK_CLINICAL_COLUMNS",
    "EXCLUSION_REASONS",
    "GTV_FILE",
    "CohortConfig",
    "clinical_summary",
    "curate_cohort",
    "describe_reason",
    "image_geometry",
    "image_path",
    "inclusion_flow",
    "read_clinical",
    "read_cohort_config",
    "read_image",
]

GTV_FILE = "gtv.nii.gz"
_SUFFIX = ".nii.gz"
#: Other spellings that mean the user meant an image but the layout will not find it.
_NEAR_MISS_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")

#: Exclusion vocabulary: the reason as written in ``exclusion_reason`` -> what it means.
#: ``<modality>`` and ``<months>`` stand for the image stem and the follow-up threshold.
EXCLUSION_REASONS: dict[str, str] = {
    "no image folder": "no <patient_id>/ folder in the cohort folder",
    "missing <modality>": "the declared image <modality>.nii.gz is absent",
    "missing tumour structure": "the tumour mask gtv.nii.gz is absent",
    "empty tumour structure": "the tumour mask gtv.nii.gz holds no tumour voxel (all 0)",
    "unknown outcome": "distant_metastasis is empty in clinical.csv",
    "no follow-up": "followup_months is empty in clinical.csv (no post-RT follow-up)",
    "follow-up < <months> months": "no distant metastasis (label 0) after less than "
    "<months> months of follow-up (min_followup_months): the negative label is not yet reliable",
}


def _reason_pattern(key: str) -> re.Pattern[str]:
    """'missing <modality>' -> regex with a named group per placeholder."""
    parts = re.split(r"<(\w+)>", key)
    return re.compile(
        "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+?)" for i, p in enumerate(parts))
    )


_REASON_PATTERNS = [(key, _reason_pattern(key)) for key in EXCLUSION_REASONS]


def describe_reason(reason: str) -> str:
    """What an exclusion reason means, e.g. 'missing t2w' -> 'the declared image t2w.nii.gz ...'."""
    for key, pattern in _REASON_PATTERNS:
        match = pattern.fullmatch(reason)
        if match:
            text = EXCLUSION_REASONS[key]
            for name, value in match.groupdict().items():
                text = text.replace(f"<{name}>", value)
            return text
    return reason


def _reason_rank(reason: str, modalities: list[str]) -> tuple[int, int]:
    for rank, (_key, pattern) in enumerate(_REASON_PATTERNS):
        match = pattern.fullmatch(reason)
        if match:
            modality = match.groupdict().get("modality")
            sub = modalities.index(modality) if modality in modalities else len(modalities)
            return rank, sub
    return len(_REASON_PATTERNS), 0


def image_path(cohort_dir: str | Path, patient_id: str, modality: str) -> Path:
    """``<cohort_dir>/<patient_id>/<modality>.nii.gz`` (``modality='gtv'`` for the tumour mask)."""
    return Path(cohort_dir) / str(patient_id) / f"{modality}{_SUFFIX}"


# --------------------------------------------------------------------------- per patient


@dataclass
class _PatientImages:
    has: dict[str, bool]
    n_gtv_voxels: int | None = None
    gtv_volume_cc: float | None = None
    reasons: list[str] = field(default_factory=list)


def _near_miss(folder: Path, names: list[str], stem: str) -> str | None:
    """A file in the folder that is evidently ``<stem>.nii.gz`` misspelt (case, format)."""
    wanted = {f"{stem}{suffix}" for suffix in _NEAR_MISS_SUFFIXES}
    for name in names:
        if name.lower() in wanted and name != f"{stem}{_SUFFIX}":
            return name
    return None


def _present(folder: Path, names: list[str], stem: str, patient_id: str) -> bool:
    if f"{stem}{_SUFFIX}" in names:
        return True
    other = _near_miss(folder, names, stem)
    if other is not None:
        raise CohortError(
            f"found {other} but the cohort layout reads {stem}{_SUFFIX} (NIfTI, gzipped, "
            "lower-case stem).",
            patient_id=patient_id,
            path=folder / other,
            fix=f"convert or rename it to {stem}{_SUFFIX} (e.g. SimpleITK.WriteImage(image, "
            f"'{stem}{_SUFFIX}')).",
        )
    return False


def _header(path: Path, patient_id: str, what: str) -> ImageHeader:
    header = read_header(path, patient_id, what)
    if header.dimension != 3 or header.n_components != 1:
        raise CohortError(
            f"the {what} image {path.name} is {header.dimension}-D with {header.n_components} "
            "component(s) per voxel; the layout expects one 3-D scalar volume.",
            patient_id=patient_id,
            path=path,
            fix="export a single 3-D volume (one series, one time point, no colour).",
        )
    return header


def _check_patient(cohort: Path, patient_id: str, config: CohortConfig) -> _PatientImages:
    folder = cohort / patient_id
    stems = [*config.modalities, "gtv"]
    if not folder.is_dir():
        return _PatientImages(has=dict.fromkeys(stems, False), reasons=["no image folder"])
    names = sorted(p.name for p in folder.iterdir())
    has = {stem: _present(folder, names, stem, patient_id) for stem in stems}
    result = _PatientImages(has=has)
    headers: dict[str, ImageHeader] = {}
    for modality in config.modalities:
        if not has[modality]:
            result.reasons.append(f"missing {modality}")
            continue
        path = folder / f"{modality}{_SUFFIX}"
        headers[modality] = _header(path, patient_id, modality)
        if headers[modality].is_float:  # integer voxels cannot be NaN: no need to read them
            check_finite_file(path, patient_id, modality)
    if not has["gtv"]:
        result.reasons.append("missing tumour structure")
        return result
    path = folder / GTV_FILE
    gtv = _header(path, patient_id, "tumour mask")
    if gtv.is_float:
        check_finite_file(path, patient_id, "tumour mask")
    if "ct" in headers:
        check_same_grid(gtv, headers["ct"], patient_id, what="tumour mask", reference_what="CT")
    n = check_binary_mask(read_image(path, patient_id, "tumour mask"), path, patient_id)
    result.n_gtv_voxels = n
    result.gtv_volume_cc = n * math.prod(gtv.spacing) / 1000.0
    if n == 0:
        result.reasons.append("empty tumour structure")
    return result


def _check_patient_guarded(cohort: Path, patient_id: str, config: CohortConfig) -> _PatientImages:
    try:
        return _check_patient(cohort, patient_id, config)
    except CohortError:
        raise
    except (OSError, RuntimeError, ValueError, MemoryError) as exc:
        raise CohortError(
            f"the patient's images could not be checked: {type(exc).__name__}: {exc}",
            patient_id=patient_id,
            path=cohort / patient_id,
            fix="check the folder's files and permissions.",
        ) from exc


# --------------------------------------------------------------------------- cohort


def _patient_folders(cohort: Path) -> list[Path]:
    """Sub-folders that hold images (any .nii/.nii.gz); hidden and '_' folders are skipped."""
    folders = []
    for path in sorted(cohort.iterdir()):
        if not path.is_dir() or path.name.startswith((".", "_")):
            continue
        if any(p.name.lower().endswith((".nii", ".nii.gz")) for p in path.iterdir()):
            folders.append(path)
    return folders


def _check_orphans(cohort: Path, ids: pd.Series) -> None:
    known = set(ids)
    orphans = [p for p in _patient_folders(cohort) if p.name not in known]
    if not orphans:
        return
    by_lower = {p.lower(): p for p in known}
    hint = ""
    if orphans[0].name.lower() in by_lower:
        hint = f" (clinical.csv has {by_lower[orphans[0].name.lower()]!r}: the case differs)"
    names = ", ".join(p.name for p in orphans[:10]) + (
        f" and {len(orphans) - 10} more" if len(orphans) > 10 else ""
    )
    raise CohortError(
        f"image folder(s) with no row in {CLINICAL_CSV}: {names}{hint}.",
        patient_id=orphans[0].name,
        path=orphans[0],
        fix=f"add a row per patient to {CLINICAL_CSV} (leave distant_metastasis empty when "
        "unknown: the patient is then excluded with that reason), or move the folder out of "
        "the cohort folder.",
    )


def _curation_columns(config: CohortConfig) -> list[str]:
    return [
        "patient_id",
        "included",
        "exclusion_reason",
        "label",
        "followup_months",
        *(f"has_{m}" for m in config.modalities),
        "has_gtv",
        "n_gtv_voxels",
        "gtv_volume_cc",
    ]


def _check_collisions(cohort: Path, clinical: pd.DataFrame, config: CohortConfig) -> None:
    reserved = set(_curation_columns(config))
    clash = [c for c in clinical.columns if c not in REQUIRED_COLUMNS and c in reserved]
    if clash:
        raise CohortError(
            f"{CLINICAL_CSV}: column(s) {', '.join(clash)} clash with the columns curation adds.",
            path=cohort / CLINICAL_CSV,
            fix="rename those columns in clinical.csv.",
        )


def _min_followup(value: float) -> float:
    try:
        months = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"min_followup_months must be a number, got {value!r}.") from exc
    if not math.isfinite(months) or months < 0:
        raise ConfigError(f"min_followup_months must be a finite number >= 0, got {value!r}.")
    return months


def curate_cohort(
    cohort_dir: str | Path, min_followup_months: float = 0.0, progress: bool = True
) -> pd.DataFrame:
    """Check every screened patient against the inclusion criteria.

    Returns one row per row of clinical.csv (same order): patient_id, included, exclusion_reason
    ('' when included; several joined by '; ', see EXCLUSION_REASONS), label (Int64 1/0/NA),
    followup_months, has_<modality> per declared modality, has_gtv, n_gtv_voxels, gtv_volume_cc
    (cc), then the further clinical columns unchanged. Negatives (label 0) followed for less
    than ``min_followup_months`` (months) are excluded; positives are not. Raises CohortError on
    broken input (see module docstring).
    """
    cohort = cohort_path(cohort_dir)
    months = _min_followup(min_followup_months)
    config = read_cohort_config(cohort)
    clinical = read_clinical(cohort)
    _check_collisions(cohort, clinical, config)
    _check_orphans(cohort, clinical["patient_id"])

    ids = list(clinical["patient_id"])
    workers = max(1, min(4, os.cpu_count() or 1, len(ids)))
    images: list[_PatientImages] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_check_patient_guarded, cohort, pid, config) for pid in ids]
        try:
            for future in tqdm(
                futures, desc="Curating cohort", unit="patient", disable=not progress
            ):
                images.append(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    rows = []
    for record, found in zip(clinical.itertuples(index=False), images, strict=True):
        label = record.distant_metastasis
        followup = record.followup_months
        reasons = list(found.reasons)
        if pd.isna(label):
            reasons.append("unknown outcome")
        if math.isnan(followup):
            reasons.append("no follow-up")
        elif not pd.isna(label) and label == 0 and followup < months:
            reasons.append(f"follow-up < {months:g} months")
        rows.append(
            {
                "patient_id": record.patient_id,
                "included": not reasons,
                "exclusion_reason": "; ".join(reasons),
                "label": None,  # set below as Int64
                "followup_months": followup,
                **{f"has_{m}": found.has[m] for m in config.modalities},
                "has_gtv": found.has["gtv"],
                "n_gtv_voxels": found.n_gtv_voxels,
                "gtv_volume_cc": found.gtv_volume_cc,
            }
        )
    table = pd.DataFrame(rows, columns=_curation_columns(config))
    table["included"] = table["included"].astype(bool)
    table["exclusion_reason"] = table["exclusion_reason"].astype(str)
    table["label"] = pd.array(list(clinical["distant_metastasis"]), dtype="Int64")
    table["followup_months"] = table["followup_months"].astype(float)
    table["n_gtv_voxels"] = pd.array([r.n_gtv_voxels for r in images], dtype="Int64")
    table["gtv_volume_cc"] = pd.to_numeric(table["gtv_volume_cc"], errors="coerce").astype(float)
    for column in clinical.columns:
        if column not in REQUIRED_COLUMNS:
            table[column] = clinical[column].to_numpy()
    table.attrs["min_followup_months"] = months
    return table


def _declared_modalities(cohort_table: pd.DataFrame) -> list[str]:
    """The has_<modality> columns curation wrote: those before has_gtv (a clinical column
    such as has_chemo comes after it)."""
    columns = [str(c) for c in cohort_table.columns]
    end = columns.index("has_gtv") if "has_gtv" in columns else len(columns)
    return [c.removeprefix("has_") for c in columns[:end] if c.startswith("has_")]


def image_geometry(cohort_dir: str | Path, cohort_table: pd.DataFrame) -> pd.DataFrame:
    """One row per (patient_id, modality) present, from the image headers only.

    Columns: patient_id, modality, size_x/y/z (voxels), spacing_x/y/z_mm, fov_x/y/z_mm
    (size * spacing), origin_x/y/z_mm, direction_is_identity, pixel_type.
    """
    cohort = cohort_path(cohort_dir)
    modalities = _declared_modalities(cohort_table)
    rows = []
    for record in cohort_table.to_dict("records"):
        pid = str(record["patient_id"])
        for modality in modalities:
            if not bool(record[f"has_{modality}"]):
                continue
            header = _header(image_path(cohort, pid, modality), pid, modality)
            row = {"patient_id": pid, "modality": modality}
            for i, axis in enumerate("xyz"):
                row[f"size_{axis}"] = header.size[i]
            for i, axis in enumerate("xyz"):
                row[f"spacing_{axis}_mm"] = header.spacing[i]
            for i, axis in enumerate("xyz"):
                row[f"fov_{axis}_mm"] = header.fov_mm[i]
            for i, axis in enumerate("xyz"):
                row[f"origin_{axis}_mm"] = header.origin[i]
            row["direction_is_identity"] = header.direction_is_identity
            row["pixel_type"] = header.pixel_type
            rows.append(row)
    columns = [
        "patient_id",
        "modality",
        *(f"size_{a}" for a in "xyz"),
        *(f"spacing_{a}_mm" for a in "xyz"),
        *(f"fov_{a}_mm" for a in "xyz"),
        *(f"origin_{a}_mm" for a in "xyz"),
        "direction_is_identity",
        "pixel_type",
    ]
    return pd.DataFrame(rows, columns=columns)


def inclusion_flow(cohort_table: pd.DataFrame) -> pd.DataFrame:
    """Counts for the inclusion table and flow diagram.

    Rows: screened, one per exclusion reason present (vocabulary order), included. Columns:
    step (screened | excluded | included), reason, n_patients, description. A patient with
    several reasons counts under each, so the reasons may add up to more than
    screened - included.
    """
    modalities = _declared_modalities(cohort_table)
    counts: dict[str, int] = {}
    for text in cohort_table["exclusion_reason"].fillna("").astype(str):
        for reason in filter(None, (r.strip() for r in text.split(";"))):
            counts[reason] = counts.get(reason, 0) + 1
    rows = [
        {
            "step": "screened",
            "reason": "",
            "n_patients": len(cohort_table),
            "description": f"patients listed in {CLINICAL_CSV}",
        }
    ]
    for reason in sorted(counts, key=lambda r: _reason_rank(r, modalities)):
        rows.append(
            {
                "step": "excluded",
                "reason": reason,
                "n_patients": counts[reason],
                "description": describe_reason(reason),
            }
        )
    rows.append(
        {
            "step": "included",
            "reason": "",
            "n_patients": int(cohort_table["included"].astype(bool).sum()),
            "description": "patients meeting every inclusion criterion",
        }
    )
    return pd.DataFrame(rows, columns=["step", "reason", "n_patients", "description"])
