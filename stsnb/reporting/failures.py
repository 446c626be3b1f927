"""Failure analysis of the explained model (CLAIM 2024's failure analysis of incorrectly
classified cases): the patients whose cross-validated prediction lies furthest from their
outcome, with what the cohort table says of them.

A patient's probability is the mean of its test slices' probabilities (chapter 05's patient
level); its *error* is |label - probability| (1 = confidently wrong, 0 = confidently right).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stsnb.core.errors import StsnbError
from stsnb.core.metrics import THRESHOLD, outcome_class, patient_predictions
from stsnb.core.store import write_csv_atomic
from stsnb.gradcam.maps import GRADCAM_DIR

FAILURES_FILE = "failures.csv"

#: Columns of the cohort table shown beside each failure when present.
COHORT_COLUMNS = ("gtv_volume_cc", "histology", "grade", "site", "flagged")


def worst_patients(predictions: pd.DataFrame, n: int = 4,
                   cohort: pd.DataFrame | None = None) -> pd.DataFrame:
    """The `n` patients with the largest error |label - probability| that are misclassified at
    the chapter's threshold, worst first (ties: patient id), with their fold, number of test
    slices and, when `cohort` (``cohort.csv``) is given, its columns of :data:`COHORT_COLUMNS`.

    >>> preds = pd.DataFrame({"patient_id": ["A", "A", "B", "C"], "slice_index": [1, 2, 1, 1],
    ...                       "fold": [1, 1, 2, 2], "label": [1, 1, 0, 0],
    ...                       "prob": [0.1, 0.3, 0.9, 0.2]})
    >>> list(worst_patients(preds)["patient_id"])
    ['B', 'A']
    """
    if n < 1:
        raise StsnbError(f"The failure analysis needs n >= 1 patients; got {n}.")
    table = patient_predictions(predictions)
    table["error"] = (table["label"] - table["prob"]).abs()
    table["outcome"] = [outcome_class(int(y), float(p), THRESHOLD)
                        for y, p in zip(table["label"], table["prob"], strict=True)]
    wrong = table[table["outcome"].isin(["FP", "FN"])]
    wrong = wrong.sort_values(["error", "patient_id"], ascending=[False, True]).head(n)
    if cohort is not None:
        extra = [c for c in COHORT_COLUMNS if c in cohort.columns]
        wrong = wrong.merge(cohort[["patient_id", *extra]], on="patient_id", how="left")
    columns = ["patient_id", "fold", "label", "prob", "error", "outcome", "n_slices"]
    return wrong[columns + [c for c in wrong.columns if c not in columns]].reset_index(drop=True)


def failure_summary(worst: pd.DataFrame, n_patients: int) -> str:
    """One sentence on the failures shown (computed from the table)."""
    if worst.empty:
        return (f"No patient of {n_patients} is misclassified at the {THRESHOLD:.1f} threshold: "
                "there is nothing to analyse.")
    kinds = worst["outcome"].value_counts()
    parts = ", ".join(f"{int(count)} {kind}" for kind, count in kinds.items())
    text = (f"The {len(worst)} patients of {n_patients} that the model gets most wrong ({parts}) "
            f"have errors |label - probability| of {worst['error'].min():.2f} to "
            f"{worst['error'].max():.2f}")
    if "gtv_volume_cc" in worst and worst["gtv_volume_cc"].notna().any():
        text += (f"; their GTV volumes are {worst['gtv_volume_cc'].min():.0f} to "
                 f"{worst['gtv_volume_cc'].max():.0f} cm³")
    return text + "."


def central_slice_rows(store, patient_id: str) -> int:
    """The store row of the patient's slice with the largest GTV area (its tumour centre)."""
    rows = store.patient_rows(patient_id)
    if len(rows) == 0:
        raise StsnbError(f"Patient {patient_id} has no slice in the slice store at "
                         f"{store.root}: run chapter 03 again.")
    areas = store.gtv_masks(rows).sum(axis=(1, 2))
    return int(rows[int(np.argmax(areas))])


def write_failures(work_dir: str | Path, worst: pd.DataFrame) -> Path:
    """``work_dir/gradcam/failures.csv``: the failure table of chapter 06."""
    return write_csv_atomic(worst, Path(work_dir) / GRADCAM_DIR / FAILURES_FILE)
