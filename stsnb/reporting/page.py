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
``tests/test_book.py`` checks that every link resolves in the built book."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from stsnb.reporting.answers import (
    characteristics,
    class_imbalance,
    code_sharing,
    data_sharing,
    data_sources,
    disjoint_level,
    eligibility,
    events_per_analysis,
    explainability,
    external,
    failure_analysis,
    fairness,
    final_model,
    flow,
    initialisation,
    limitations,
    metrics,
    missing_data,
    model,
    model_output,
    outcome,
    partitioning,
    performance,
    preprocessing,
    protocol,
    registration,
    robustness,
    sample_size,
    significance,
    software,
    training,
)
from stsnb.reporting.facts import (
    AUC,
    BASELINES,
    CHANCE,
    CITATIONS,
    CLAIM,
    CLINICAL,
    CONTROLS,
    CURATION,
    FAILURES,
    GRADCAM,
    INTENSITIES,
    LEAKAGE,
    MANIFEST,
    PREPROCESSING,
    RADIOMICS,
    RANKING,
    REAL,
    STUDY_TABLE,
    SYNTHETIC,
    TRAINING,
    TRIPOD,
    RunFacts,
    Where,
)


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
