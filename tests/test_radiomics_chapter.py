"""Chapter 05b's tables on known predictions: AUCs with CIs, the declared DeLong comparisons,
calibration, the summary and its too-small page."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stsnb.core.metrics import rank_auc
from stsnb.radiomics import chapter
from stsnb.results.delong import paired_delong
from stsnb.run.book import write_too_small_page
from stsnb.run.pages import CHAPTERS, CV_CHAPTERS


def predictions(prob: np.ndarray, label: np.ndarray, slices: int = 1) -> pd.DataFrame:
    """predictions.csv of len(label) patients, `slices` rows each with the patient's prob."""
    pids = [f"P{i:02d}" for i in range(len(label))]
    return pd.DataFrame({"patient_id": np.repeat(pids, slices),
                         "slice_index": np.tile(np.arange(slices), len(label)),
                         "fold": np.repeat(np.arange(len(label)) % 2 + 1, slices),
                         "label": np.repeat(label, slices), "prob": np.repeat(prob, slices)})


def example() -> tuple[chapter.NetworkBest, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    label = np.array([0, 1] * 10)
    fc = predictions(np.clip(0.5 + 0.3 * (label - 0.5) + rng.normal(0, 0.2, 20), 0.01, 0.99),
                     label, slices=3)
    linear = predictions(rng.uniform(0.05, 0.95, 20), label, slices=3)
    radiomics = predictions(np.clip(0.4 + 0.2 * label + rng.normal(0, 0.2, 20), 0.01, 0.99),
                            label)
    best = chapter.NetworkBest(combo=3, name="ct-dose-t2w", fc=fc, linear=linear)
    return best, radiomics, label


def test_auc_table_sorts_by_auc_with_bootstrap_cis():
    best, radiomics, label = example()
    table = chapter.auc_table({"radiomics-all-lr": ("radiomics", "all", radiomics),
                               chapter.fc_label(best): ("network", best.name, best.fc)},
                              n_boot=200, seed=0)
    assert list(table.columns) == list(chapter.AUC_COLUMNS)
    assert table["patient_auc"].is_monotonic_decreasing
    assert (table["ci_low"] <= table["patient_auc"]).all()
    assert (table["patient_auc"] <= table["ci_high"]).all()
    row = table.set_index("model").loc["radiomics-all-lr"]
    assert np.isclose(row.patient_auc, rank_auc(label, radiomics["prob"].to_numpy()))
    assert (table["n_patients"] == 20).all()


def test_declared_comparisons_are_the_paired_delong_tests():
    best, radiomics, label = example()
    rng = np.random.default_rng(1)
    volume = predictions(rng.uniform(0.05, 0.95, 20), label)
    rows = chapter.declared_comparisons(best, radiomics, {"GTV volume alone": volume})
    assert list(rows["b"]) == ["radiomics-all-lr", "GTV volume alone", chapter.linear_label(best)]
    assert (rows["a"] == chapter.fc_label(best)).all()
    expected = paired_delong(best.fc, radiomics)
    assert np.isclose(rows.loc[0, "p_value"], expected.p_value)
    assert np.isclose(rows.loc[0, "difference"], expected.difference)
    against_volume = paired_delong(best.fc, volume)
    assert np.isclose(rows.loc[1, "p_value"], against_volume.p_value)
    alone = chapter.declared_comparisons(chapter.NetworkBest(3, "x", best.fc, None), radiomics)
    assert len(alone) == 1


def test_summary_is_computed_from_the_tables():
    best, radiomics, _ = example()
    aucs = chapter.auc_table({"radiomics-all-lr": ("radiomics", "all", radiomics),
                              chapter.fc_label(best): ("network", best.name, best.fc)},
                             n_boot=50)
    significance = pd.DataFrame({"split": "patient", "head": "radiomics-lr", "combo": ["all"],
                                 "patient_auc": [0.7], "p_value": [0.04],
                                 "p_best_corrected": [0.04], "n_permutations": [24]})
    comparisons = chapter.declared_comparisons(best, radiomics)
    calibration, curves = chapter.calibration_table({"radiomics-all-lr": radiomics})
    assert set(calibration.columns) >= {"slope", "intercept", "brier"}
    assert curves["radiomics-all-lr"]["threshold"].between(0.1, 0.6).all()
    text = chapter.chapter_summary(aucs, significance, comparisons, calibration)
    auc = aucs.set_index("model").loc["radiomics-all-lr", "patient_auc"]
    for part in (f"{auc:.2f}", "p = 0.040", "24 permutations", "DeLong",
                 f"Brier {calibration.loc[0, 'brier']:.3f}", "below 0.05"):
        assert part in text, part


def test_chapter_follows_05_and_is_replaced_for_a_too_small_cohort(tmp_path):
    assert CHAPTERS.index("05b_radiomics") == CHAPTERS.index("05_cv_results") + 1
    assert "05b_radiomics" in CV_CHAPTERS
    page = write_too_small_page(tmp_path, "05b_radiomics", "3 patients.", "smoke")
    assert page.name == "05b_radiomics.md"
    assert page.read_text().startswith("# 05b Radiomics baseline: not run")
