"""clinical.csv: one row per screened patient, validated once; and the book's clinical table."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from stsnb.core.errors import CohortError
from stsnb.curation.cohort_config import cohort_path

__all__ = [
    "BOOK_CLINICAL_COLUMNS",
    "CLINICAL_CSV",
    "REQUIRED_COLUMNS",
    "clinical_summary",
    "read_clinical",
]

CLINICAL_CSV = "clinical.csv"
REQUIRED_COLUMNS = ("patient_id", "distant_metastasis", "followup_months")
#: The only clinical columns the book may show (non-identifying); matched case-insensitively.
BOOK_CLINICAL_COLUMNS = ("age", "sex", "histology", "grade", "site")
#: Spellings of "unknown" accepted in distant_metastasis and followup_months (besides empty).
_MISSING = frozenset({"", "na", "nan", "n/a", "none", "null"})
_BAD_ID = re.compile(r"[/\\]|^\.{1,2}$")
_ZERO_PADDED = re.compile(r"[+-]?0\d")
_MAX_LISTED = 10


def _fail(path: Path, problem: str, fix: str, patient_id: str | None = None) -> CohortError:
    return CohortError(f"{CLINICAL_CSV}: {problem}", patient_id=patient_id, path=path, fix=fix)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _read_cells(path: Path) -> pd.DataFrame:
    """All cells as stripped strings, the first row being the header (BOM tolerated)."""
    try:
        cells = pd.read_csv(
            path,
            header=None,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
            skip_blank_lines=True,
        )
    except pd.errors.EmptyDataError as exc:
        raise _fail(
            path,
            "the file is empty.",
            "write a header row (patient_id,distant_metastasis,followup_months,...) and one row "
            "per screened patient.",
        ) from exc
    except pd.errors.ParserError as exc:
        raise _fail(
            path,
            f"not a valid comma-separated table ({str(exc).strip()}).",
            "give every row as many comma-separated cells as the header; quote cells that "
            "contain commas.",
        ) from exc
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text ({exc.reason}).", "save the file as CSV UTF-8.") from exc
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc}).", "check the file's permissions.") from exc
    return cells.apply(lambda column: column.str.strip())


def _parse_label(value: str) -> int | None:
    if value.lower() in _MISSING:
        return None
    try:
        number = float(value)
    except ValueError:
        return -1
    return int(number) if number in (0.0, 1.0) else -1


def _parse_months(value: str) -> float | None:
    """Months as float; NaN when missing; None when not a finite number >= 0."""
    if value.lower() in _MISSING:
        return math.nan
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _further_column(values: pd.Series) -> pd.Series:
    """A further clinical column: numbers when every filled cell is one (zero-padded codes such
    as an MRN '00123' stay text), else text; empty cells are missing."""
    filled = values[values != ""]
    if len(filled) and not filled.str.fullmatch(_ZERO_PADDED.pattern + r".*").any():
        numbers = pd.to_numeric(filled, errors="coerce")
        if numbers.notna().all():
            return pd.to_numeric(values.replace("", np.nan))
    return values.replace("", np.nan)


def read_clinical(cohort_dir: str | Path) -> pd.DataFrame:
    """Read and validate ``<cohort_dir>/clinical.csv``.

    Returns one row per patient in file order: ``patient_id`` (str), ``distant_metastasis``
    (Int64: 1, 0 or NA), ``followup_months`` (float, NaN = none), then every further column
    (numbers when all filled cells are numbers, else text). Tolerates header whitespace, a BOM
    and labels written 1.0/0.0.
    """
    path = cohort_path(cohort_dir) / CLINICAL_CSV
    if not path.is_file():
        raise CohortError(
            f"{CLINICAL_CSV} is missing from the cohort folder.",
            path=path,
            fix="add clinical.csv with the columns patient_id, distant_metastasis (1/0, empty = "
            "unknown) and followup_months (empty = none), one row per screened patient.",
        )
    cells = _read_cells(path)
    header = list(cells.iloc[0])
    body = cells.iloc[1:].reset_index(drop=True)
    # Trailing empty columns (spreadsheet exports) are dropped; a named column is required.
    keep = [i for i, name in enumerate(header) if name or (body.iloc[:, i] != "").any()]
    header, body = [header[i] for i in keep], body.iloc[:, keep]
    if "" in header:
        raise _fail(
            path,
            f"column {header.index('') + 1} has cells but no name in the header.",
            "name every column in the header row.",
        )
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise _fail(
            path,
            f"column(s) {', '.join(repeated)} appear more than once in the header.",
            "give every column a distinct name.",
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise _fail(
            path,
            f"required column(s) {', '.join(missing)} missing; the header has: "
            f"{', '.join(header)}.",
            "name the columns exactly patient_id, distant_metastasis, followup_months (lower "
            "case).",
        )
    body.columns = header
    lines = body.index + 2  # file line of each row, header = line 1 (blank lines aside)

    ids = body["patient_id"]
    empty = [str(n) for n in lines[(ids == "").to_numpy()]]
    if empty:
        raise _fail(
            path,
            f"empty patient_id on row(s) at line {_listing(empty)}.",
            "give every row its patient's folder name as patient_id.",
        )
    bad_ids = [p for p in ids if _BAD_ID.search(p)]
    if bad_ids:
        raise _fail(
            path,
            f"patient_id {bad_ids[0]!r} is not a folder name.",
            "use the patient's folder name (no '/' or '\\').",
            patient_id=bad_ids[0],
        )
    duplicated = ids[ids.duplicated(keep=False)]
    if len(duplicated):
        names = sorted(set(duplicated))
        detail = "; ".join(
            f"{p} (lines {', '.join(str(n) for n in lines[(ids == p).to_numpy()])})"
            for p in names[:_MAX_LISTED]
        )
        raise _fail(
            path,
            f"duplicate patient_id: {detail}"
            + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
            + ".",
            "keep one row per patient.",
            patient_id=names[0],
        )

    labels = [_parse_label(v) for v in body["distant_metastasis"]]
    bad = [i for i, v in enumerate(labels) if v == -1]
    if bad:
        listed = [f"{ids[i]} (line {lines[i]}): {body['distant_metastasis'][i]!r}" for i in bad]
        raise _fail(
            path,
            f"distant_metastasis must be 1, 0 or empty (unknown); found {_listing(listed)}.",
            "write 1 for distant metastasis, 0 for none, and leave the cell empty when unknown.",
            patient_id=ids[bad[0]],
        )
    months = [_parse_months(v) for v in body["followup_months"]]
    bad = [i for i, v in enumerate(months) if v is None]
    if bad:
        listed = [f"{ids[i]} (line {lines[i]}): {body['followup_months'][i]!r}" for i in bad]
        raise _fail(
            path,
            "followup_months must be a number of months >= 0 or empty (no follow-up); found "
            f"{_listing(listed)}.",
            "write the post-RT follow-up in months (e.g. 18.5); leave it empty when there is none.",
            patient_id=ids[bad[0]],
        )

    table = pd.DataFrame(
        {
            "patient_id": ids.astype(str),
            "distant_metastasis": pd.array(labels, dtype="Int64"),
            "followup_months": np.asarray(months, dtype=float),
        }
    )
    for name in header:
        if name not in REQUIRED_COLUMNS:
            table[name] = _further_column(body[name])
    return table


# --------------------------------------------------------------------------- book's table


def _book_columns(table: pd.DataFrame) -> dict[str, str]:
    """Allowlisted name -> column of ``table`` (case-insensitive match)."""
    by_lower = {str(c).strip().lower(): c for c in table.columns}
    return {name: by_lower[name] for name in BOOK_CLINICAL_COLUMNS if name in by_lower}


def _median_iqr(values: pd.Series) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "-"
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return f"{q2:.1f} [{q1:.1f}-{q3:.1f}]"


def _as_category(values: pd.Series) -> pd.Series:
    """Category labels as text; whole numbers without a decimal point (grade 2, not 2.0)."""

    def label(value):
        if pd.isna(value):
            return pd.NA
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        return str(value)

    return values.map(label).astype("string")


def _count(values: pd.Series, category, n: int) -> str:
    k = int(values.isna().sum()) if category is None else int((values == category).sum())
    return f"{k} ({100 * k / n:.0f}%)" if n else "0"


def clinical_summary(cohort_table: pd.DataFrame) -> pd.DataFrame:
    """Characteristics of the included patients by outcome: DM+ (label 1), DM- (label 0), all.

    Rows: n, age median [IQR] (years), counts n (%) per sex, histology, grade and site, and
    follow-up median [IQR] (months). Only the allowlisted columns (BOOK_CLINICAL_COLUMNS) are
    ever read, so identifying columns cannot reach the book.
    """
    included = cohort_table[cohort_table["included"].astype(bool)]
    labels = pd.to_numeric(included["label"], errors="coerce")
    groups = {
        "DM+": included[labels == 1],
        "DM-": included[labels == 0],
        "All": included,
    }
    rows: list[tuple[str, dict[str, str]]] = [
        ("Patients, n", {g: str(len(t)) for g, t in groups.items()})
    ]
    columns = _book_columns(cohort_table)
    if "age" in columns:
        rows.append(
            (
                "Age, years, median [IQR]",
                {g: _median_iqr(t[columns["age"]]) for g, t in groups.items()},
            )
        )
    for name in ("sex", "histology", "grade", "site"):
        if name not in columns:
            continue
        values = _as_category(included[columns[name]])
        categories: list = sorted(values.dropna().unique(), key=str)
        if values.isna().any():
            categories.append(None)
        for category in categories:
            label = "missing" if category is None else category
            rows.append(
                (
                    f"{name.capitalize()}: {label}, n (%)",
                    {
                        g: _count(_as_category(t[columns[name]]), category, len(t))
                        for g, t in groups.items()
                    },
                )
            )
    rows.append(
        (
            "Follow-up, months, median [IQR]",
            {g: _median_iqr(t["followup_months"]) for g, t in groups.items()},
        )
    )
    summary = pd.DataFrame([values for _, values in rows], index=[name for name, _ in rows])
    summary.index.name = "characteristic"
    return summary.rename(columns={g: f"{g} (n={len(t)})" for g, t in groups.items()})
