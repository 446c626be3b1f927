"""A clinical sheet (CSV, or XLSX when openpyxl is installed) mapped into the cohort's
clinical.csv by a column map (TOML)::

    patient_id = "Patient ID"        # sheet column matched with the source folder name
                                     # (or the DICOM PatientID)
    [distant_metastasis]
    column = "Outcome"
    positive = "mets"                # regex (case-insensitive): matching cells -> 1
    negative = "^none$"              # optional regex -> 0; default: other filled cells -> 0
    # values = { "yes" = 1, "no" = 0 }   instead of positive/negative
    [followup_months]
    column = "Follow-up (days)"
    unit = "days"                    # days (30.4375 per month) | weeks | months | years
    [columns]                        # further columns: clinical.csv name = sheet column
    age = "Age"

``distant_metastasis = "DM"`` and ``followup_months = "FU"`` (plain strings) take the column
as it is (1/0 and months). Only the columns named in the map reach clinical.csv; names that
look identifying (name, birth, address, ...) are refused.
"""

from __future__ import annotations

import importlib.util
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stsnb.core.errors import CohortError

__all__ = ["DAYS_PER_MONTH", "ClinicalMap", "map_clinical", "read_clinical_map", "read_sheet"]

DAYS_PER_MONTH = 30.4375
_MONTHS_PER_UNIT = {"days": 1 / DAYS_PER_MONTH, "weeks": 7 / DAYS_PER_MONTH, "months": 1.0,
                    "years": 12.0}
_MISSING = frozenset({"", "na", "n/a", "nan", "none", "null", "-", "--", "?", "unknown"})
_IDENTIFYING = re.compile(r"name|birth|dob|address|phone|e-?mail|mrn|ssn|social|insurance|"
                          r"accession|zip|postal", re.IGNORECASE)


@dataclass(frozen=True)
class ClinicalMap:
    """How the sheet's columns become clinical.csv's (see module docstring)."""

    patient_id: str
    label_column: str
    positive: str | None
    negative: str | None
    values: dict[str, int] | None
    followup_column: str
    months_per_unit: float
    unit: str
    columns: dict[str, str]
    path: Path


def _fail(path: Path, problem: str, fix: str, patient: str | None = None) -> CohortError:
    return CohortError(problem, patient_id=patient, path=path, fix=fix)


def _column_entry(path: Path, data: dict, key: str) -> dict:
    entry = data.get(key)
    if isinstance(entry, str):
        return {"column": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("column"), str):
        raise _fail(path, f"clinical map: '{key}' must name a sheet column (a string, or a "
                    "table with column = ...).", f'write e.g. {key} = "Column name".')
    return entry


def read_clinical_map(path: str | Path) -> ClinicalMap:
    """Read and check a clinical column map (TOML)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _fail(path, "the clinical map does not exist.", "pass an existing TOML file.") \
            from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise _fail(path, f"the clinical map cannot be read as TOML ({exc}).",
                    "correct the syntax (strings in double quotes).") from exc
    allowed = {"patient_id", "distant_metastasis", "followup_months", "columns"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(path, f"clinical map: unknown key(s) {', '.join(unknown)}.",
                    f"allowed: {', '.join(sorted(allowed))}.")
    if not isinstance(data.get("patient_id"), str):
        raise _fail(path, "clinical map: patient_id must name the sheet's patient column.",
                    'write e.g. patient_id = "Patient ID".')
    label = _column_entry(path, data, "distant_metastasis")
    followup = _column_entry(path, data, "followup_months")
    unit = str(followup.get("unit", "months")).lower()
    if unit not in _MONTHS_PER_UNIT:
        raise _fail(path, f"clinical map: followup_months unit {unit!r} is not one of "
                    f"{', '.join(_MONTHS_PER_UNIT)}.", 'write e.g. unit = "days".')
    values = label.get("values")
    if values is not None and (not isinstance(values, dict)
                               or any(v not in (0, 1) for v in values.values())):
        raise _fail(path, "clinical map: distant_metastasis values must map cells to 1 or 0.",
                    'write e.g. values = { "yes" = 1, "no" = 0 }.')
    for key in ("positive", "negative"):
        if key in label:
            try:
                re.compile(str(label[key]))
            except re.error as exc:
                raise _fail(path, f"clinical map: {key} {label[key]!r} is not a valid regular "
                            f"expression ({exc}).", "escape special characters.") from exc
    columns = data.get("columns", {})
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise _fail(path, "clinical map: [columns] must map clinical.csv names to sheet columns.",
                    'write e.g. age = "Age" under [columns].')
    risky = [f"{k} = {v!r}" for k, v in columns.items()
             if _IDENTIFYING.search(k) or _IDENTIFYING.search(v)]
    if risky:
        raise _fail(path, f"clinical map: column(s) {', '.join(risky)} look identifying and "
                    "may not reach the cohort folder.", "remove them from [columns].")
    clash = [k for k in columns if k in allowed]
    if clash:
        raise _fail(path, f"clinical map: [columns] redefines {', '.join(clash)}.",
                    "map those with their own keys.")
    return ClinicalMap(
        patient_id=data["patient_id"], label_column=label["column"],
        positive=label.get("positive"), negative=label.get("negative"),
        values={str(k).strip().lower(): int(v) for k, v in values.items()} if values else None,
        followup_column=followup["column"], months_per_unit=_MONTHS_PER_UNIT[unit], unit=unit,
        columns=dict(columns), path=path)


def read_sheet(path: str | Path) -> pd.DataFrame:
    """All cells of a CSV (UTF-8) or XLSX sheet as stripped strings."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "the clinical sheet does not exist.", "pass an existing CSV file.")
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        if importlib.util.find_spec("openpyxl") is None:
            raise _fail(path, "reading an .xlsx sheet needs openpyxl, which is not installed.",
                        "save the sheet as CSV (UTF-8) and pass that file.")
        table = pd.read_excel(path, dtype=str, keep_default_na=False)
    else:
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _fail(path, f"the clinical sheet is not UTF-8 text ({exc.reason}).",
                        "save it as CSV UTF-8.") from exc
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise _fail(path, f"the clinical sheet is not a valid CSV table ({exc}).",
                        "save it as comma-separated values with a header row.") from exc
    table.columns = [str(c).strip() for c in table.columns]
    return table.apply(lambda column: column.astype(str).str.strip())


def _label(cell: str, cmap: ClinicalMap, sheet: Path, patient: str) -> str:
    text = cell.strip()
    if cmap.values is not None:
        if text.lower() in cmap.values:
            return str(cmap.values[text.lower()])
        if text.lower() in _MISSING:
            return ""
        raise _fail(sheet, f"distant_metastasis cell {text!r} is not among the mapped values "
                    f"{sorted(cmap.values)}.", "add it to values in the clinical map.", patient)
    if cmap.positive is None and cmap.negative is None:
        return "" if text.lower() in _MISSING and text not in ("0",) else text
    if not text:
        return ""
    if cmap.positive is not None and re.search(cmap.positive, text, re.IGNORECASE):
        return "1"
    if cmap.negative is None or re.search(cmap.negative, text, re.IGNORECASE):
        return "0"
    return ""


def _months(cell: str, cmap: ClinicalMap, sheet: Path, patient: str) -> str:
    text = cell.strip()
    if text.lower() in _MISSING:
        return ""
    try:
        value = float(text)
    except ValueError as exc:
        raise _fail(sheet, f"follow-up cell {text!r} in column {cmap.followup_column!r} is not "
                    "a number.", "write a number, or leave the cell empty.", patient) from exc
    if not math.isfinite(value) or value < 0:
        raise _fail(sheet, f"follow-up cell {text!r} is not a duration >= 0.",
                    "write a number >= 0, or leave the cell empty.", patient)
    return f"{value * cmap.months_per_unit:.4g}"


def map_clinical(sheet_path: str | Path, cmap: ClinicalMap,
                 pseudonyms: dict[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """(clinical.csv table for the imported patients, sheet ids that matched no patient).

    ``pseudonyms`` maps every source key (folder name, DICOM PatientID) to the cohort id.
    Patients without a sheet row get a row with empty outcome and follow-up (curation then
    excludes them as 'unknown outcome').
    """
    sheet_path = Path(sheet_path)
    sheet = read_sheet(sheet_path)
    wanted = [cmap.patient_id, cmap.label_column, cmap.followup_column, *cmap.columns.values()]
    missing = [c for c in dict.fromkeys(wanted) if c not in sheet.columns]
    if missing:
        raise _fail(sheet_path, f"column(s) {', '.join(repr(c) for c in missing)} named in the "
                    f"clinical map are not in the sheet (it has {', '.join(sheet.columns)}).",
                    "correct the column names in the clinical map.")
    rows: dict[str, dict[str, str]] = {}
    unmatched: list[str] = []
    for record in sheet.to_dict("records"):
        key = record[cmap.patient_id]
        if not key:
            continue
        pid = pseudonyms.get(key)
        if pid is None:
            unmatched.append(key)
            continue
        if pid in rows:
            raise _fail(sheet_path, "two sheet rows belong to the same imported patient.",
                        "keep one row per patient.", pid)
        rows[pid] = {
            "patient_id": pid,
            "distant_metastasis": _label(record[cmap.label_column], cmap, sheet_path, pid),
            "followup_months": _months(record[cmap.followup_column], cmap, sheet_path, pid),
            **{name: record[column] for name, column in cmap.columns.items()},
        }
    ids = sorted(set(pseudonyms.values()))
    empty = {"distant_metastasis": "", "followup_months": "", **dict.fromkeys(cmap.columns, "")}
    table = pd.DataFrame([rows.get(pid, {"patient_id": pid, **empty}) for pid in ids],
                         columns=["patient_id", "distant_metastasis", "followup_months",
                                  *cmap.columns])
    return table, unmatched
