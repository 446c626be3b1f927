"""What the reporting page reads from a build (RunFacts) and where the book shows each answer
(Where: a page and a section heading)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stsnb.core.config import Profile
from stsnb.core.errors import StsnbError
from stsnb.core.manifest import read_manifest
from stsnb.curation.stage import read_cohort_table
from stsnb.results.tables import auc_order, combination_names, patient_aucs, split_predictions

TRIPOD = "TRIPOD+AI"


CLAIM = "CLAIM 2024"


CITATIONS = {
    TRIPOD: "Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement: updated guidance for "
            "reporting clinical prediction models that use regression or machine learning "
            "methods. BMJ 2024;385:e078378.",
    CLAIM: "Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in "
           "Medical Imaging (CLAIM): 2024 Update. Radiol Artif Intell 2024;6(4):e240300.",
}


def section_id(heading: str) -> str:
    """The HTML id Sphinx gives a section heading (docutils' ``make_id``: lower case, runs of
    other characters turned into one hyphen, no leading digits or hyphens).

    >>> section_id("Against chance: permutation tests of the whole cross-validation")
    'against-chance-permutation-tests-of-the-whole-cross-validation'
    >>> section_id("05 Cross-validation results")
    'cross-validation-results'
    """
    text = re.sub(r"[^a-z0-9]+", "-", heading.lower())
    return re.sub(r"^[^a-z]+", "", text).strip("-")


@dataclass(frozen=True)
class Where:
    """A place in the book: a page (path from the book's root, without .html) and a heading."""

    page: str
    heading: str
    title: str

    def href(self, from_page: str = "book/generated/09_reporting") -> str:
        """Relative link from `from_page` to this page's section."""
        target = posixpath.relpath(f"{self.page}.html", posixpath.dirname(from_page))
        return f"{target}#{section_id(self.heading)}"


def _chapter(stem: str, heading: str, title: str) -> Where:
    return Where(f"book/generated/{stem}", heading, title)


CURATION = _chapter("01_data_curation", "Inclusion criteria", "01 Data curation")


CLINICAL = _chapter("01_data_curation", "Clinical profile by outcome", "01 Data curation")


REGISTRATION = _chapter("02_registration_qa", "QA table", "02 Registration QA")


PREPROCESSING = _chapter("03_preprocessing", "Building the slice store", "03 Preprocessing")


INTENSITIES = _chapter("03_preprocessing", "Intensities before and after normalization",
                       "03 Preprocessing")


TRAINING = Where("book/training", "04 Training: transfer learning per combination, two heads",
                 "04 Training")


STUDY_TABLE = _chapter("05_cv_results", "The study's table, recomputed", "05 Results")


AUC = _chapter("05_cv_results", "AUC, ROC and patient-level results", "05 Results")


RANKING = _chapter("05_cv_results", "Ranking of the combinations", "05 Results")


LEAKAGE = _chapter("05_cv_results", "Leakage control: slice-level against patient-grouped folds",
                   "05 Results")


CHANCE = _chapter("05_cv_results", "Against chance: permutation tests of the whole "
                  "cross-validation", "05 Results")


BASELINES = _chapter("05_cv_results", "Baselines on the same patient folds", "05 Results")


CALIBRATION = _chapter("05b_radiomics", "Calibration and decision curve", "05b Radiomics")


RADIOMICS = _chapter("05b_radiomics", "Patient AUC beside the networks and the baselines",
                     "05b Radiomics")


DELONG = _chapter("05b_radiomics", "Declared comparisons (DeLong)", "05b Radiomics")


CONTROLS = _chapter("08_controls", "Linear head: both controls, every combination", "Controls")


GRADCAM = _chapter("06_gradcam", "How much of the map lies in the tumour", "06 Grad-CAM")


FAILURES = _chapter("06_gradcam", "Failure analysis", "06 Grad-CAM")


MANIFEST = Where("book/intro", "How to read this book", "Introduction (manifest)")


SYNTHETIC = Where("book/synthetic_cohort", "The synthetic cohort", "The synthetic cohort")


REAL = _chapter("07_real_cohort", "Bringing your own cohort", "Appendix: a real cohort")


@dataclass
class RunFacts:
    """What the answers are computed from (read once from the work dir)."""

    work_dir: Path
    cohort_dir: Path
    profile: Profile
    cohort: pd.DataFrame
    manifest: dict
    best_combo: int
    best_name: str
    best: pd.DataFrame  # the FC head's predictions of its best combination (patient split)
    significance: pd.DataFrame
    radiomics_significance: pd.DataFrame
    slice_split: dict[int, pd.DataFrame]
    n_boot: int
    seed: int

    @property
    def included(self) -> pd.DataFrame:
        return self.cohort[self.cohort["included"]]

    def read(self, *parts: str) -> pd.DataFrame | None:
        path = self.work_dir.joinpath(*parts)
        return pd.read_csv(path) if path.exists() else None


def read_facts(cohort_dir: str | Path, work_dir: str | Path, profile: Profile,
               n_boot: int = 1000, seed: int = 0) -> RunFacts:
    """Everything the checklist answers need, from a work dir where chapters 01-06 ran."""
    work_dir = Path(work_dir)
    fc = split_predictions(work_dir, "patient")
    if not fc:
        raise StsnbError(f"No FC run of the patient split in {work_dir}: the reporting page "
                         "needs chapters 01-06 (make book).")
    best = auc_order(patient_aucs(fc))[0]
    names = combination_names(work_dir)
    sig_path = work_dir / "significance.csv"
    radiomics_sig = work_dir / "radiomics" / "significance.csv"
    return RunFacts(
        work_dir=work_dir, cohort_dir=Path(cohort_dir), profile=profile,
        cohort=read_cohort_table(work_dir),
        manifest=read_manifest(work_dir), best_combo=int(best),
        best_name=str(names.get(best, best)), best=fc[best],
        significance=pd.read_csv(sig_path) if sig_path.exists() else pd.DataFrame(),
        radiomics_significance=(pd.read_csv(radiomics_sig) if radiomics_sig.exists()
                                else pd.DataFrame()),
        slice_split=split_predictions(work_dir, "slice"), n_boot=n_boot, seed=seed)
