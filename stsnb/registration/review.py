"""After looking: the review file, `exclude_flagged`, and the patients the later stages use.

``work_dir/registration/review.csv`` (written by the user; columns patient_id, decision, note)
records a decision per patient: ``accept`` keeps a flagged patient even with
``exclude_flagged=True``; ``exclude`` drops a patient whatever its flag; an empty decision is no
decision. :func:`decide_patients` writes ``registration/patients.csv``; downstream stages read
it with :func:`final_patients`, so changing a decision reruns only the stages after this one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stsnb.core.errors import StsnbError
from stsnb.core.store import write_csv_atomic
from stsnb.registration.errors import RegistrationError
from stsnb.registration.qa import read_qa

REVIEW_FILE = "review.csv"
REVIEW_TEMPLATE = "review_template.csv"
PATIENTS_FILE = "patients.csv"
REVIEW_COLUMNS = ("patient_id", "decision", "note")
DECISIONS = ("accept", "exclude")


def registration_dir(work_dir: str | Path) -> Path:
    """``work_dir/registration``."""
    return Path(work_dir) / "registration"


def read_review(work_dir: str | Path, known: list[str] | None = None) -> pd.DataFrame:
    """The review file's rows with a decision (empty table when there is no file).

    Raises RegistrationError naming the file and the line for a missing column, a decision other
    than accept/exclude, a patient listed twice or (when `known` is given) an unknown patient.
    """
    path = registration_dir(work_dir) / REVIEW_FILE
    if not path.exists():
        return pd.DataFrame(columns=list(REVIEW_COLUMNS))
    fix = ("one row per reviewed patient: patient_id, decision (accept or exclude), note; see "
           f"{REVIEW_TEMPLATE} beside it.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise RegistrationError(f"{REVIEW_FILE} cannot be read ({exc}).", path=path,
                                fix=fix) from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("patient_id", "decision") if c not in table.columns]
    if missing:
        raise RegistrationError(f"{REVIEW_FILE} lacks column(s) {', '.join(missing)}.",
                                path=path, fix=fix)
    if "note" not in table.columns:
        table["note"] = ""
    table = table[list(REVIEW_COLUMNS)].apply(lambda c: c.str.strip())
    table["decision"] = table["decision"].str.lower()
    for index, row in table.iterrows():
        line = index + 2
        if row["decision"] not in DECISIONS + ("",):
            raise RegistrationError(
                f"{REVIEW_FILE} line {line}: decision {row['decision']!r} for patient "
                f"{row['patient_id']} is not accept or exclude.",
                patient_id=row["patient_id"], path=path, fix=fix)
        if known is not None and row["patient_id"] not in known:
            raise RegistrationError(
                f"{REVIEW_FILE} line {line}: patient {row['patient_id']!r} was not registered "
                "(not in registration/qa.csv).",
                patient_id=row["patient_id"], path=path,
                fix="use the patient_id of qa.csv (the patient's folder name).")
    repeated = table["patient_id"][table["patient_id"].duplicated()]
    if len(repeated):
        raise RegistrationError(f"{REVIEW_FILE}: patient {repeated.iloc[0]} is listed twice.",
                                patient_id=repeated.iloc[0], path=path, fix=fix)
    return table[table["decision"] != ""].reset_index(drop=True)


def write_review_template(work_dir: str | Path, qa: pd.DataFrame) -> Path:
    """``registration/review_template.csv``: the flagged patients with an empty decision."""
    flagged = qa[qa["flagged"]]
    template = pd.DataFrame({"patient_id": flagged["patient_id"], "decision": "",
                             "note": flagged["flag_reason"]})
    return write_csv_atomic(template, registration_dir(work_dir) / REVIEW_TEMPLATE)


def decide_patients(work_dir: str | Path, exclude_flagged: bool = False) -> pd.DataFrame:
    """Who goes on to the later stages; writes and returns ``registration/patients.csv``.

    Columns: patient_id, flagged, flag_reason, decision, note, kept, why.
    """
    qa_path = registration_dir(work_dir) / "qa.csv"
    if not qa_path.exists():
        raise StsnbError(f"{qa_path} does not exist: the registration stage has not run. "
                         "Fix: run chapter 02 (or stsnb.registration.run_registration).")
    qa = read_qa(qa_path)
    review = read_review(work_dir, known=qa["patient_id"].tolist())
    table = qa[["patient_id", "flagged", "flag_reason"]].merge(review, on="patient_id",
                                                               how="left")
    table[["decision", "note"]] = table[["decision", "note"]].fillna("")
    kept, why = [], []
    for _, row in table.iterrows():
        if row["decision"] == "exclude":
            kept.append(False)
            why.append("excluded on review")
        elif row["decision"] == "accept":
            kept.append(True)
            why.append("accepted on review" if row["flagged"] else "")
        elif row["flagged"] and exclude_flagged:
            kept.append(False)
            why.append("flagged (exclude_flagged)")
        else:
            kept.append(True)
            why.append("flagged, kept (not reviewed)" if row["flagged"] else "")
    table["kept"] = kept
    table["why"] = why
    write_csv_atomic(table, registration_dir(work_dir) / PATIENTS_FILE)
    return table


def final_patients(work_dir: str | Path) -> list[str]:
    """The patients the later stages use (``registration/patients.csv``, kept ones, in order)."""
    path = registration_dir(work_dir) / PATIENTS_FILE
    if not path.exists():
        raise StsnbError(f"{path} does not exist. Fix: run chapter 02 (registration QA), which "
                         "decides the patients after registration.")
    table = pd.read_csv(path, dtype={"patient_id": str})
    return table.loc[table["kept"].astype(bool), "patient_id"].tolist()
