"""The reporting page's pieces on known inputs: section ids as Sphinx makes them, links, the
item list, and the failure analysis of chapter 06."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stsnb.core.errors import StsnbError
from stsnb.reporting import facts, failures
from stsnb.reporting import page as reporting


@pytest.mark.parametrize(("heading", "expected"), [
    ("Against chance: permutation tests of the whole cross-validation",
     "against-chance-permutation-tests-of-the-whole-cross-validation"),
    ("05 Cross-validation results", "cross-validation-results"),
    ("The study's table, recomputed", "the-study-s-table-recomputed"),
    ("Declared comparisons (DeLong)", "declared-comparisons-delong"),
    ("AUC, ROC and patient-level results", "auc-roc-and-patient-level-results"),
])
def test_section_id_is_docutils_make_id(heading, expected):
    assert facts.section_id(heading) == expected


def test_links_are_relative_to_the_reporting_page():
    assert facts.AUC.href() == "05_cv_results.html#auc-roc-and-patient-level-results"
    assert facts.MANIFEST.href() == "../intro.html#how-to-read-this-book"
    assert facts.SYNTHETIC.href() == "../synthetic_cohort.html#the-synthetic-cohort"


def test_items_are_unique_and_cover_what_a_reviewer_asks():
    keys = [(i.checklist, i.number) for i in reporting.ITEMS]
    assert len(keys) == len(set(keys))
    claim = {i.number for i in reporting.ITEMS if i.checklist == facts.CLAIM}
    tripod = {i.number for i in reporting.ITEMS if i.checklist == facts.TRIPOD}
    # partitions and their level, metrics, uncertainty, explainability, failure analysis
    assert {"19", "20", "28", "29", "31", "39", "43"} <= claim
    # partitioning, model building, measures, events per analysis, performance with CIs, code
    assert {"12a", "12c", "12e", "21", "23a", "18f"} <= tripod
    assert set(facts.CITATIONS) == {facts.CLAIM, facts.TRIPOD}


def _predictions() -> pd.DataFrame:
    rows = [("A", 1, 1, 0.10), ("A", 2, 1, 0.30),   # positive called negative: error 0.8
            ("B", 1, 0, 0.90),                       # negative called positive: error 0.9
            ("C", 1, 0, 0.20),                       # right
            ("D", 1, 1, 0.70), ("D", 2, 1, 0.90),    # right
            ("E", 1, 0, 0.60)]                       # wrong, error 0.6
    table = pd.DataFrame(rows, columns=["patient_id", "slice_index", "label", "prob"])
    table["fold"] = table["patient_id"].map({"A": 1, "B": 2, "C": 1, "D": 2, "E": 1})
    return table


def test_worst_patients_are_the_misclassified_by_error():
    cohort = pd.DataFrame({"patient_id": list("ABCDE"), "gtv_volume_cc": [10.0, 200.0, 50, 60,
                                                                          70]})
    worst = failures.worst_patients(_predictions(), n=2, cohort=cohort)
    assert list(worst["patient_id"]) == ["B", "A"]
    assert list(worst["outcome"]) == ["FP", "FN"]
    assert np.allclose(worst["error"], [0.9, 0.8])
    assert list(worst["n_slices"]) == [1, 2]
    assert list(worst["gtv_volume_cc"]) == [200.0, 10.0]
    everyone = failures.worst_patients(_predictions(), n=10)
    assert list(everyone["patient_id"]) == ["B", "A", "E"]  # the right ones never appear
    text = failures.failure_summary(worst, 5)
    assert "2 patients of 5" in text and "1 FP" in text and "10 to 200 cm³" in text


def test_no_failure_and_bad_n_are_said_plainly():
    right = _predictions()
    right["prob"] = right["label"].astype(float)
    worst = failures.worst_patients(right)
    assert worst.empty
    assert "nothing to analyse" in failures.failure_summary(worst, 5)
    with pytest.raises(StsnbError, match="n >= 1"):
        failures.worst_patients(right, n=0)


def test_every_cross_validated_chapter_has_a_too_small_page(tmp_path):
    from stsnb.run.book import write_too_small_page
    from stsnb.run.pages import CHAPTERS, CV_CHAPTERS

    assert "09_reporting" in CV_CHAPTERS and CHAPTERS[-1] == "09_reporting"
    for chapter in CV_CHAPTERS:
        page = write_too_small_page(tmp_path, chapter, "3 patients.", "smoke").read_text()
        assert "too small" in page and "3 patients" in page
