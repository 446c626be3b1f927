"""The reporting page: TRIPOD+AI and CLAIM 2024 items that a computational study can answer,
each answered from this build's work dir and linked to where the book shows it.

Checklists (item numbers and topics as published; wording paraphrased):

- TRIPOD+AI: Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement: updated guidance for
  reporting clinical prediction models that use regression or machine learning methods.
  BMJ 2024;385:e078378.
- CLAIM 2024: Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in
  Medical Imaging (CLAIM): 2024 Update. Radiol Artif Intell 2024;6(4):e240300.

Every answer is computed from the work dir (cohort table, profile, manifest, predictions,
significance tables, Grad-CAM and failure tables); an item that this kind of study cannot answer
says "not applicable" and why. Each link names a page of the book and a section heading on it;
``tests/test_book.py`` checks that every link resolves in the built book.
"""

from __future__ import annotations

import html
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stsnb.config import Profile
from stsnb.core.errors import StsnbError
from stsnb.core.manifest import read_manifest
from stsnb.core.metrics import THRESHOLD, patient_predictions, rank_auc
from stsnb.core.runs import run_dir
from stsnb.curation.stage import read_cohort_table
from stsnb.gradcam.maps import GRADCAM_DIR, SHARES_FILE, gtv_share_test
from stsnb.reporting.failures import FAILURES_FILE
from stsnb.results.stats import (
    auc_order,
    combination_names,
    patient_aucs,
    patient_metrics_ci,
    split_predictions,
)

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


# -- the answers ------------------------------------------------------------------------------
def _events(table: pd.DataFrame) -> str:
    n, e = len(table), int(table["label"].astype(int).sum())
    return f"{n} patients, {e} with distant metastasis ({100 * e / max(n, 1):.0f} %)"


def _auc_ci(facts: RunFacts, preds: pd.DataFrame) -> str:
    ci = patient_metrics_ci(preds, n_boot=facts.n_boot, seed=facts.seed, metrics=("auc",))
    return (f"{ci.loc[0, 'estimate']:.2f} (95 % CI {ci.loc[0, 'ci_low']:.2f}-"
            f"{ci.loc[0, 'ci_high']:.2f})")


def data_sources(f: RunFacts) -> str:
    synthetic = any(f.cohort_dir.glob("*/truth"))
    kind = ("a synthetic cohort generated by this suite (its latent-risk model is documented on "
            "the page The synthetic cohort); results on it say nothing about real patients"
            if synthetic else "the cohort folder named in the manifest")
    return (f"One cohort, {f.manifest.get('cohort_dir', '?')} (SHA-256 "
            f"{str(f.manifest.get('cohort_sha256', '?'))[:12]}...): {kind}. "
            f"{len(f.cohort)} patients screened.")


def eligibility(f: RunFacts) -> str:
    reasons = f.cohort.loc[~f.cohort["included"], "exclusion_reason"].value_counts()
    excluded = ", ".join(f"{r} ({n})" for r, n in reasons.items()) or "none"
    return (f"The study's criteria (the CT, every declared image, the GTV, a known outcome and "
            f"follow-up): {int(f.cohort['included'].sum())} of {len(f.cohort)} screened patients "
            f"included. Excluded: {excluded}.")


def preprocessing(f: RunFacts) -> str:
    p = f.profile.preprocessing
    qa = f.read("registration", "qa.csv")
    flagged = (f"{int(qa['flagged'].astype(bool).sum())} of {len(qa)} patients flagged by "
               "registration QA (kept and marked)" if qa is not None and "flagged" in qa
               else "registration QA table absent")
    slices = ("every tumour slice" if p.max_slices_per_patient is None
              else f"at most {p.max_slices_per_patient} slices per patient")
    return (f"MR registered to the CT (rigid, then B-spline) and resampled onto its grid; "
            f"{flagged}. Tumour z-extent +-{p.z_margin_mm:g} mm, {slices}, zero-padded to "
            f"{p.canvas_px} px, min-max to [0, 1] per {p.normalization}, resized to "
            f"{p.input_px} px.")


def outcome(f: RunFacts) -> str:
    return ("Distant metastasis after pre-operative radiotherapy, 1/0 from clinical.csv "
            f"(empty = unknown, excluded); included: {_events(f.included)}.")


def sample_size(f: RunFacts) -> str:
    inc = f.included
    events = int(inc["label"].astype(int).sum())
    return (f"No sample-size calculation: every eligible patient was used ({_events(inc)}); "
            f"{events} events over {f.profile.training.folds} test folds is small, which the "
            "permutation tests and the confidence intervals make visible.")


def missing_data(f: RunFacts) -> str:
    unknown = int(f.cohort["exclusion_reason"].str.contains("outcome|label", case=False).sum())
    clinical = [c for c in ("age", "sex", "grade") if c in f.cohort]
    missing = {c: int(f.included[c].isna().sum()) for c in clinical}
    text = ", ".join(f"{c} {n}" for c, n in missing.items()) or "no clinical columns"
    return (f"Patients with an unknown outcome or a missing image are excluded ({unknown} for "
            f"the outcome). Missing clinical values among the included: {text}; the clinical "
            "baseline imputes the training patients' median (one-hot for categories).")


def _fold_counts(f: RunFacts) -> pd.DataFrame:
    """Test patients and events per fold of the explained run."""
    per_patient = patient_predictions(f.best)
    return per_patient.groupby("fold").agg(patients=("patient_id", "size"),
                                           events=("label", "sum"))


def partitioning(f: RunFacts) -> str:
    folds = _fold_counts(f)
    return (f"{f.profile.training.folds}-fold cross-validation with patient-grouped, "
            "outcome-stratified folds (scikit-learn StratifiedGroupKFold); every patient is "
            "tested exactly once; early stopping on "
            f"{100 * f.profile.training.validation_fraction:.0f} % of the training patients; "
            f"test patients per fold {folds['patients'].min()}-{folds['patients'].max()}, "
            f"events per fold {int(folds['events'].min())}-{int(folds['events'].max())}. "
            "No resampling of the classes; the FC head's loss weighs classes "
            f"'{f.profile.training.class_weighting}'.")


def disjoint_level(f: RunFacts) -> str:
    text = ("Patient: the folds are disjoint in patients, checked by an assertion in the code "
            "(a patient tested in two folds stops the run).")
    if f.slice_split:
        gaps = [rank_auc(*_patient_arrays(preds)) for preds in f.slice_split.values()]
        text += (f" The study's slice-level split is kept as a control on {len(gaps)} "
                 f"combination(s): patient AUC {min(gaps):.2f}-{max(gaps):.2f} there, against "
                 f"the patient split's best {rank_auc(*_patient_arrays(f.best)):.2f}.")
    return text


def _patient_arrays(preds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    table = patient_predictions(preds)
    return table["label"].to_numpy(int), table["prob"].to_numpy(float)


def model(f: RunFacts) -> str:
    weights = f.manifest.get("weights", {}) or {}
    return (f"Frozen convolutions of {weights.get('summary', 'the backbone named in the manifest')}"
            "; the study's fully connected block (FC head) fine-tuned, and a linear head "
            "(L2 logistic regression on GTV-pooled features); ten three-channel combinations "
            "and five single images.")


def software(f: RunFacts) -> str:
    packages = f.manifest.get("packages", {})
    shown = ", ".join(f"{k} {v}" for k, v in list(packages.items())[:12])
    return (f"Python {f.manifest.get('python', '?')}; {shown}; every version in the manifest, "
            "pinned in pyproject.toml (radiomics: radiomics-requirements.txt).")


def initialisation(f: RunFacts) -> str:
    weights = f.manifest.get("weights", {}) or {}
    return (f"Convolutions: {weights.get('summary', 'see the manifest')} (hash in the "
            "manifest); heads initialised from the run's seed "
            f"{f.manifest.get('seed', '?')}.")


def training(f: RunFacts) -> str:
    t = f.profile.training
    r = f.profile.radiomics
    return (f"FC head: SGD, momentum {t.momentum:g}, batch {t.batch_size}, learning rate "
            f"{t.learning_rate:g}, at most {t.max_epochs} epochs, early stopping patience "
            f"{t.patience} on validation loss. Linear head: C chosen by {t.linear_inner_folds} "
            f"inner folds of the training patients. Radiomics: k best features "
            f"({', '.join(map(str, r.select_k))}) and C ({', '.join(map(str, r.lr_cs))}) by "
            f"{r.inner_folds} inner folds. No tuning ever sees a test patient (nested).")


def final_model(f: RunFacts) -> str:
    row = _best_significance(f)
    test = (f"; the linear head's permutation test on the same combination: p = "
            f"{row.p_value:.3f} ({int(row.n_permutations)} permutations)"
            if row is not None else "")
    return (f"The combination with the highest patient-level AUC by the FC head (the study's "
            f"head), fixed before the later chapters: {f.best_combo} ({f.best_name}){test}; "
            "the best of the ten is corrected for being chosen in chapter 05's table.")


def _best_significance(f: RunFacts):
    sig = f.significance
    if sig.empty:
        return None
    rows = sig[(sig["split"] == "patient") & (sig["head"] == "linear")
               & (sig["combo"] == f.best_combo)]
    return rows.iloc[0] if len(rows) else None


def metrics(f: RunFacts) -> str:
    return (f"Patient-level AUC (a patient's probability = mean over its slices) with bootstrap "
            f"95 % CIs ({f.n_boot} resamples of patients); the study's slice-level accuracy, "
            "sensitivity, specificity, precision and F1 at threshold "
            f"{THRESHOLD:g}; calibration slope, intercept and Brier score; net benefit over "
            "10-60 % threshold probability.")


def significance(f: RunFacts) -> str:
    sig = f.significance
    parts = ["Bootstrap CIs over patients; DeLong's test for the declared paired comparisons"]
    if not sig.empty:
        linear = sig[(sig["split"] == "patient") & (sig["head"] == "linear")]
        if len(linear):
            parts.append(f"permutation test of the whole cross-validation "
                         f"({int(linear['n_permutations'].max())} permutations, linear head, "
                         f"{len(linear)} combinations; min p {linear['p_value'].min():.3f}, "
                         f"best corrected p {linear['p_best_corrected'].min():.3f})")
    if not f.radiomics_significance.empty:
        rs = f.radiomics_significance
        parts.append(f"radiomics lr models: min p {rs['p_value'].min():.3f} over {len(rs)} "
                     "sets")
    return "; ".join(parts) + "."


def class_imbalance(f: RunFacts) -> str:
    prevalence = f.included["label"].astype(int).mean()
    return (f"Prevalence {100 * prevalence:.0f} %. No over- or under-sampling; folds stratified "
            f"by outcome; the FC head's cross-entropy weighs classes "
            f"'{f.profile.training.class_weighting}'; calibration reported as is (no "
            "recalibration).")


def fairness(f: RunFacts) -> str:
    if "sex" not in f.cohort:
        return "Not assessed: the cohort table has no sex column."
    table = patient_predictions(f.best).merge(f.cohort[["patient_id", "sex"]], on="patient_id")
    parts = []
    for sex, group in table.groupby("sex"):
        auc = (rank_auc(group["label"].to_numpy(int), group["prob"].to_numpy(float))
               if group["label"].nunique() == 2 else float("nan"))
        parts.append(f"{sex}: AUC {auc:.2f} ({len(group)} patients, "
                     f"{int(group['label'].sum())} events)")
    return ("No fairness method applied; the best combination's patient AUC by sex, "
            "descriptive only (too few patients for a test): " + "; ".join(parts) + ".")


def model_output(f: RunFacts) -> str:
    return (f"A probability of distant metastasis per slice; per patient the mean over its "
            f"slices. Classes (for the study's table) at {THRESHOLD:g}, fixed beforehand, not "
            "tuned.")


def external(f: RunFacts) -> str:
    return ("Not applicable: internal cross-validation only. The appendix runs chapters 01-03 "
            "on three public TCIA patients to show the import, not to validate a model.")


def flow(f: RunFacts) -> str:
    return eligibility(f)


def characteristics(f: RunFacts) -> str:
    inc = f.included
    parts = [_events(inc)]
    if "age" in inc:
        parts.append(f"median age {inc['age'].median():.0f} years")
    if "gtv_volume_cc" in inc:
        by = inc.groupby(inc["label"].astype(int))["gtv_volume_cc"].median()
        parts.append("median GTV " + ", ".join(
            f"{'DM+' if k == 1 else 'DM-'} {v:.0f} cm³" for k, v in by.items()))
    return "; ".join(parts) + ". By fold: every patient is in exactly one test fold."


def events_per_analysis(f: RunFacts) -> str:
    folds = _fold_counts(f)
    n, events = int(folds["patients"].sum()), int(folds["events"].sum())
    parts = "; ".join(f"fold {k}: {int(r.patients)} test patients ({int(r.events)} events), "
                      f"trained on {n - int(r.patients)} ({events - int(r.events)} events)"
                      for k, r in folds.iterrows())
    return (f"Patient split, {len(folds)} folds of {n} patients with {events} events: {parts}. "
            "Each training set gives up a share of its patients for early stopping (FC head) "
            "or inner folds (linear head, radiomics).")


def performance(f: RunFacts) -> str:
    text = (f"FC head, combination {f.best_combo} ({f.best_name}): patient AUC "
            f"{_auc_ci(f, f.best)}")
    linear = split_predictions(f.work_dir, "patient", combos=[f.best_combo], head="linear")
    if f.best_combo in linear:
        text += f"; linear head, same combination: {_auc_ci(f, linear[f.best_combo])}"
    radiomics = run_dir(f.work_dir, "patient", "radiomics-all-lr") / "predictions.csv"
    if radiomics.exists():
        text += f"; radiomics-all-lr: {_auc_ci(f, pd.read_csv(radiomics))}"
    return text + "."


def robustness(f: RunFacts) -> str:
    text = ("Slice-level against patient-grouped split (leakage control); random-label runs; "
            "permutation tests of the whole cross-validation")
    for name, table in (("linear head", f.read("controls", "linear.csv")),
                        ("radiomics lr", f.read("controls", "radiomics.csv"))):
        if table is None or not {"kind", "combo", "p_value"} <= set(table.columns):
            continue
        table = table.drop_duplicates(["kind", "combo"])
        parts = [f"{kind} control: {int((group['p_value'] < 0.05).sum())} of {len(group)} "
                 f"at p < 0.05, best corrected p {group['p_best_corrected'].min():.3f}"
                 for kind, group in table.groupby("kind")]
        text += f"; {name}: " + ", ".join(parts)
    return text + "."


def explainability(f: RunFacts) -> str:
    shares = f.read(GRADCAM_DIR, SHARES_FILE)
    if shares is None:
        return "Grad-CAM (chapter 06) has not written its table in this work dir."
    kept = shares[np.isfinite(shares["share_gtv"])]
    test = gtv_share_test(kept)
    return (f"Grad-CAM on the last convolution of each fold's network; checked by the share of "
            f"map mass inside the GTV against chance over {int(test['n'])} test slices: mean "
            f"{kept['share_gtv'].mean():.2f} against {kept['chance_gtv'].mean():.2f} "
            f"(one-sided Wilcoxon p = {test['p_value']:.3g}).")


def failure_analysis(f: RunFacts) -> str:
    worst = f.read(GRADCAM_DIR, FAILURES_FILE)
    if worst is None:
        return "Chapter 06 has not written its failure table in this work dir."
    if worst.empty:
        return "No patient is misclassified at the threshold."
    listed = ", ".join(f"{r.patient_id} ({r.outcome}, p = {r.prob:.2f})"
                       for r in worst.itertuples())
    return f"The misclassified patients with the largest error, with their images: {listed}."


def limitations(f: RunFacts) -> str:
    inc = f.included
    return (f"{_events(inc)}: one small cohort, no external validation; the default cohort is "
            "synthetic; the FC head's permutation test is limited by its cost on a CPU.")


def data_sharing(f: RunFacts) -> str:
    return ("The synthetic cohort is regenerated by `make data` (seed "
            f"{f.manifest.get('seed', '?')}); the three TCIA patients of the appendix are "
            "shipped under CC BY 3.0; every output of this build is in the work dir.")


def code_sharing(f: RunFacts) -> str:
    return (f"This repository at {f.manifest.get('code_version', '?')}; `make book` rebuilds "
            "this book from a clean clone with the pinned environment.")


def protocol(f: RunFacts) -> str:
    return (f"The profile '{f.profile.name}' (stsnb/config.py; every number with its source), "
            "printed in full on the first page; no separate protocol document.")


def registration(f: RunFacts) -> str:
    return "Not applicable: a methodological study, not registered."


@dataclass(frozen=True)
class Item:
    """One checklist item: its number and topic, what it asks (paraphrased), where the book
    answers it and how the answer is computed."""

    checklist: str
    number: str
    topic: str
    asks: str
    where: Where
    answer: Callable[[RunFacts], str]


ITEMS: tuple[Item, ...] = (
    Item(TRIPOD, "5a", "Data sources", "sources of the data and their representativeness",
         SYNTHETIC, data_sources),
    Item(CLAIM, "7", "Data sources", "data sources, public or synthetic", SYNTHETIC,
         data_sources),
    Item(TRIPOD, "6b", "Eligibility", "eligibility criteria", CURATION, eligibility),
    Item(CLAIM, "8", "Eligibility", "inclusion and exclusion criteria", CURATION, eligibility),
    Item(TRIPOD, "7", "Data preparation", "pre-processing and quality checking", PREPROCESSING,
         preprocessing),
    Item(CLAIM, "9", "Data pre-processing", "pre-processing steps in reproducible detail",
         INTENSITIES, preprocessing),
    Item(TRIPOD, "8a", "Outcome", "definition of the predicted outcome", CLINICAL, outcome),
    Item(CLAIM, "14", "Reference standard", "definition of the reference standard", CLINICAL,
         outcome),
    Item(TRIPOD, "10", "Sample size", "how the study size was arrived at", CURATION,
         sample_size),
    Item(CLAIM, "21", "Sample size", "size of the test set and how it was determined", CURATION,
         sample_size),
    Item(TRIPOD, "11", "Missing data", "how missing data were handled", CURATION,
         missing_data),
    Item(CLAIM, "12", "Missing data", "how missing data were handled", CURATION, missing_data),
    Item(TRIPOD, "12a", "Data partitioning", "how the data were used and partitioned",
         TRAINING, partitioning),
    Item(CLAIM, "19", "Data partitions", "how data were assigned to partitions", TRAINING,
         partitioning),
    Item(CLAIM, "20", "Level of disjointness", "the level at which partitions are disjoint",
         LEAKAGE, disjoint_level),
    Item(CLAIM, "22", "Model", "the model in enough detail to rebuild it", TRAINING, model),
    Item(CLAIM, "23", "Software", "software libraries, frameworks and versions", MANIFEST,
         software),
    Item(CLAIM, "24", "Initialisation", "initialisation of model parameters", TRAINING,
         initialisation),
    Item(TRIPOD, "12c", "Model building", "model type, building steps, hyperparameter tuning, "
         "internal validation", TRAINING, training),
    Item(CLAIM, "25", "Training", "training details and hyperparameters", TRAINING, training),
    Item(CLAIM, "26", "Model selection", "how the final model was selected", RANKING,
         final_model),
    Item(TRIPOD, "12e", "Performance measures", "measures and plots of performance and of "
         "model comparison", STUDY_TABLE, metrics),
    Item(CLAIM, "28", "Metrics", "metrics of model performance", STUDY_TABLE, metrics),
    Item(CLAIM, "29", "Significance and uncertainty", "statistical measures of significance "
         "and uncertainty", CHANCE, significance),
    Item(TRIPOD, "13", "Class imbalance", "methods for class imbalance, if any", CURATION,
         class_imbalance),
    Item(TRIPOD, "14", "Fairness", "approaches to model fairness", AUC, fairness),
    Item(TRIPOD, "15", "Model output", "the model's output and any thresholds", STUDY_TABLE,
         model_output),
    Item(TRIPOD, "16", "Development vs evaluation", "differences between development and "
         "evaluation data", REAL, external),
    Item(CLAIM, "33", "External testing", "testing on external data", REAL, external),
    Item(CLAIM, "30", "Robustness", "robustness or sensitivity analysis", CONTROLS, robustness),
    Item(CLAIM, "31", "Explainability", "explainability methods and how they were validated",
         GRADCAM, explainability),
    Item(TRIPOD, "20a", "Participant flow", "flow of participants through the study",
         CURATION, flow),
    Item(CLAIM, "35", "Participant flow", "numbers included and excluded", CURATION, flow),
    Item(TRIPOD, "20b", "Characteristics", "characteristics of the participants", CLINICAL,
         characteristics),
    Item(CLAIM, "36", "Characteristics", "demographic and clinical characteristics",
         CLINICAL, characteristics),
    Item(TRIPOD, "21", "Participants and events", "participants and outcome events in each "
         "analysis", TRAINING, events_per_analysis),
    Item(TRIPOD, "23a", "Performance", "performance estimates with confidence intervals", AUC,
         performance),
    Item(CLAIM, "37", "Performance", "performance of the final model with uncertainty",
         RADIOMICS, performance),
    Item(CLAIM, "39", "Failure analysis", "failure analysis of incorrect results", FAILURES,
         failure_analysis),
    Item(TRIPOD, "26", "Limitations", "limitations of the study", BASELINES, limitations),
    Item(CLAIM, "40", "Limitations", "study limitations", BASELINES, limitations),
    Item(TRIPOD, "18c", "Protocol", "where the protocol can be accessed", MANIFEST, protocol),
    Item(CLAIM, "42", "Protocol", "where the full protocol can be accessed", MANIFEST,
         protocol),
    Item(TRIPOD, "18d", "Registration", "study registration", MANIFEST, registration),
    Item(CLAIM, "34", "Registration", "clinical trial registration", MANIFEST, registration),
    Item(TRIPOD, "18e", "Data sharing", "availability of the study data", SYNTHETIC,
         data_sharing),
    Item(TRIPOD, "18f", "Code sharing", "availability of the analytical code", MANIFEST,
         code_sharing),
    Item(CLAIM, "43", "Availability", "where software, model and data can be accessed",
         MANIFEST, code_sharing),
)


def checklist_table(facts: RunFacts, items: tuple[Item, ...] = ITEMS) -> pd.DataFrame:
    """One row per item: checklist, item, topic, what it asks, the answer from this build,
    where the book shows it (title and relative link)."""
    rows = [{"checklist": i.checklist, "item": i.number, "topic": i.topic, "asks": i.asks,
             "answer": i.answer(facts), "where": i.where.title,
             "link": i.where.href()} for i in items]
    return pd.DataFrame(rows)


def checklist_html(table: pd.DataFrame) -> str:
    """The table as HTML, each 'where' a link into the book (answers escaped)."""
    head = "".join(f"<th>{c}</th>" for c in ("Checklist", "Item", "Topic", "Asks", "Answer "
                                               "from this build", "Where"))
    body = []
    for r in table.itertuples():
        body.append(
            f"<tr><td>{html.escape(r.checklist)}</td><td>{html.escape(r.item)}</td>"
            f"<td>{html.escape(r.topic)}</td><td>{html.escape(r.asks)}</td>"
            f"<td>{html.escape(r.answer)}</td>"
            f'<td><a class="checklist-link" href="{html.escape(r.link)}">'
            f"{html.escape(r.where)}</a></td></tr>")
    return (f'<table class="reporting-checklist"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table>")


def reporting_summary(table: pd.DataFrame) -> str:
    """One sentence: how many items of each checklist this page answers and how many are not
    applicable."""
    parts = []
    for name, group in table.groupby("checklist", sort=False):
        na = int(group["answer"].str.startswith("Not applicable").sum())
        parts.append(f"{name}: {len(group)} items answered from this build ({na} not "
                     "applicable, with the reason)")
    return "; ".join(parts) + ". Sources: " + " ".join(CITATIONS.values())
