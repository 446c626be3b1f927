"""The import report: one row per series, structure set, dose and note of every patient,
written beside the cohort (import_report.csv and import_report.json) for a notebook to show.

It holds pseudonymous ids only: series descriptions have the patient's DICOM id, name and
source folder name replaced by the pseudonym, and frames of reference are labels ('ct',
'frame 2', ...), never UIDs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from stsnb.core.errors import CohortError
from stsnb.curation.cohort_config import cohort_path

__all__ = ["REPORT_COLUMNS", "REPORT_CSV", "REPORT_JSON", "Reporter", "read_import_report",
           "scrub"]

REPORT_CSV = "import_report.csv"
REPORT_JSON = "import_report.json"
REPORT_COLUMNS = (
    "patient_id",  # pseudonym
    "kind",  # series | structure | dose | plan | pet | note
    "stem",  # cohort modality (or the RT kind when unmapped)
    "output",  # file written in the patient folder ('' when none)
    "status",  # written | ignored | unmapped | ambiguous | warning | info
    "dicom_modality",
    "description",  # SeriesDescription / ROI names, scrubbed of identifiers
    "n_files",
    "size",  # voxels x, y, z
    "spacing_mm",
    "origin_mm",
    "frame",  # 'ct' = the planning CT's frame of reference; 'frame N' = another one
    "detail",  # rule, reason, ROI chosen, dose rule, SUV ...
)


def scrub(text: str, identifiers: Iterable[str], pseudonym: str) -> str:
    """``text`` with every identifier (3+ characters, case-insensitive) replaced by the
    pseudonym."""
    for identifier in sorted({i for i in identifiers if i and len(i) >= 3}, key=len, reverse=True):
        text = re.sub(re.escape(identifier), pseudonym, text, flags=re.IGNORECASE)
    return text


def _number(value: float, digits: int) -> str:
    text = f"{float(value):.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _fmt(values: Iterable[float], digits: int = 3) -> str:
    return " x ".join(_number(v, digits) for v in values)


class Reporter:
    """Collects the report rows of one patient."""

    def __init__(self, patient_id: str, identifiers: Iterable[str]) -> None:
        self.patient_id = patient_id
        self.identifiers = tuple(identifiers)
        self.rows: list[dict[str, object]] = []

    def add(self, kind: str, stem: str, status: str, *, output: str = "",
            dicom_modality: str = "", description: str = "", n_files: int | str = "",
            image=None, frame: str = "", detail: str = "") -> None:
        """One report row; ``image`` (SimpleITK) fills size, spacing and origin."""
        size = spacing = origin = ""
        if image is not None:
            size = _fmt(image.GetSize(), 0)
            spacing = _fmt(image.GetSpacing(), 4)
            origin = _fmt(image.GetOrigin(), 2)
        self.rows.append({
            "patient_id": self.patient_id, "kind": kind, "stem": stem, "output": output,
            "status": status, "dicom_modality": dicom_modality,
            "description": scrub(description, self.identifiers, self.patient_id),
            "n_files": n_files, "size": size, "spacing_mm": spacing, "origin_mm": origin,
            "frame": frame, "detail": scrub(detail, self.identifiers, self.patient_id),
        })

    def note(self, text: str, status: str = "warning") -> None:
        self.add("note", "", status, detail=text)


def read_import_report(cohort_dir: str | Path) -> pd.DataFrame:
    """The import report of a cohort made by ``python -m stsnb import-dicom`` (one row per
    series, structure set, dose and note)."""
    path = cohort_path(cohort_dir) / REPORT_CSV
    if not path.is_file():
        raise CohortError(f"{REPORT_CSV} is missing: the cohort was not made by import-dicom.",
                          path=path, fix="run python -m stsnb import-dicom SRC --out COHORT_DIR.")
    return pd.read_csv(path, dtype=str, keep_default_na=False)
