"""Both heads on disk, the permutation tests and the controls.

The linear head's contract and its agreement with the FC run's folds on a tiny slice store; the
significance table, the controls and a signal that must be found on the shared smoke run's own
cached features (the smoke book's work dir).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_training import synthetic_volumes

from stsnb.core.config import SMOKE
from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.metrics import patient_predictions, roc_auc
from stsnb.core.modalities import STUDY_MODALITIES
from stsnb.core.runs import discover_runs
from stsnb.results import controls
from stsnb.results.significance import p_values, permutation_null
from stsnb.training.features import read_feature_cache
from stsnb.training.folds import make_folds
from stsnb.training.linear import pool_features
from stsnb.training.linear_runs import POOLED_FILE, linear_dir, linear_done, run_linear_training
from stsnb.training.stage import run_training


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A slice store of 12 tiny patients, the FC run and the linear run of combination 9."""
    from stsnb.slices import SliceStore, build_slice_store

    work = tmp_path_factory.mktemp("heads") / "work"
    build_slice_store(work, list(synthetic_volumes(12)), "smoke", progress=False,
                      modalities=STUDY_MODALITIES)
    store = SliceStore.open(work)
    fc = run_training("cohort", work, SMOKE, seed=0, combo=9, device="cpu", weights="none",
                      store=store, progress=False)
    linear = run_linear_training(work, SMOKE, seed=0, combo=9, store=store, fc_run=fc)
    return work, store, fc, linear


def test_linear_run_follows_the_contract_and_the_fc_folds(tiny_runs):
    work, store, fc, linear = tiny_runs
    out = linear_dir(work, "patient", 9)
    assert linear.run_dir == out and out.parent == fc.run_dir
    for name in ("predictions.csv", "history.csv", "fold_metrics.csv", "run.json", POOLED_FILE):
        assert (out / name).exists(), name
    preds = linear.predictions
    assert list(preds.columns) == list(fc.predictions.columns)
    assert len(preds) == len(store.index)  # one row per test slice
    # a patient-level model: one probability per patient, on each of its slices
    assert (preds.groupby("patient_id")["prob"].nunique() == 1).all()
    # the same patient folds as the FC head
    fold_of = preds.groupby("patient_id")["fold"].first()
    assert fold_of.equals(fc.predictions.groupby("patient_id")["fold"].first())
    assert linear.fold_metrics["chosen_c"].isin(np.logspace(-4, 1, 6)).all()
    assert np.load(out / POOLED_FILE).shape == (len(store.index), 512)
    record = json.loads((out / "run.json").read_text())
    assert record["head"] == "linear" and record["pooling"] == SMOKE.training.linear_pooling
    # the GTV of these volumes is bright for label 1: the linear head separates them
    patients = patient_predictions(preds)
    assert roc_auc(patients["label"].to_numpy(), patients["prob"].to_numpy()) > 0.8


def test_linear_run_is_reused_and_found_beside_the_fc_run(tiny_runs):
    work, store, fc, linear = tiny_runs
    assert linear_done(store, work, SMOKE, 9, "patient", 0)
    again = run_linear_training(work, SMOKE, seed=0, combo=9, store=store, fc_run=fc)
    assert again.reused and again.predictions.equals(linear.predictions)
    runs = discover_runs(work, "all")
    assert sorted(runs["head"]) == ["fc", "linear"]
    assert discover_runs(work)["head"].tolist() == ["fc"]
    assert not linear_done(store, work, SMOKE, 9, "patient", seed=1)


def test_make_folds_draws_the_folds_under_given_labels():
    index = pd.DataFrame({"patient_id": [f"P{p:02d}" for p in range(10) for _ in range(3)],
                          "slice_index": [s for _ in range(10) for s in range(3)],
                          "label": [p % 2 for p in range(10) for _ in range(3)]})
    other = np.repeat([1, 1, 1, 0, 0, 0, 0, 1, 0, 0], 3)
    plan = make_folds(index, "patient", 2, seed=0, labels=other)
    assert np.array_equal(plan.labels, other)
    for fold in plan.folds:  # stratified on the given labels: 2 of the 4 positives per test fold
        assert plan.labels[fold.test].sum() == 6
    with pytest.raises(ConfigError, match="both labels"):
        make_folds(index, "patient", 2, labels=np.r_[1, other[1:]] * 0 + np.arange(30) % 2)


def test_control_labels_follow_the_truth(tmp_path):
    pids = ["A", "B", "C", "D", "E", "F"]
    for pid, value in zip(pids, [0.1, 0.5, 0.3, 0.9, 0.0, 0.2], strict=True):
        (tmp_path / pid / "truth").mkdir(parents=True)
        (tmp_path / pid / "truth" / "risk.json").write_text(
            json.dumps({"factors": {"necrosis_fraction": value}}))
    positive = controls.control_labels(tmp_path, np.array(pids), "positive")
    assert positive.tolist() == [0, 1, 0, 1, 0, 0]  # the top third: D (0.9) and B (0.5)
    negative = controls.control_labels(tmp_path, np.array(pids), "negative", seed=0)
    assert negative.sum() == 2
    assert np.array_equal(negative, controls.control_labels(tmp_path, np.array(pids),
                                                            "negative", seed=0))
    (tmp_path / "A" / "truth" / "risk.json").unlink()
    with pytest.raises(StsnbError, match="Patient A"):
        controls.control_labels(tmp_path, np.array(pids), "positive")


# -- on the shared smoke run ------------------------------------------------------------------

def test_significance_table_has_both_heads_for_every_combination(smoke_book):
    work = smoke_book["work_dir"]
    table = pd.read_csv(work / "significance.csv")
    assert list(table.columns[:7]) == ["split", "head", "combo", "patient_auc", "p_value",
                                       "p_best_corrected", "n_permutations"]
    patient = table[table["split"] == "patient"]
    linear = patient[patient["head"] == "linear"]
    fc = patient[patient["head"] == "fc"]
    assert sorted(linear["combo"]) == sorted(fc["combo"]) == list(range(1, 11))
    assert (linear["n_permutations"] == SMOKE.training.linear_permutations).all()
    assert (linear["p_best_corrected"] >= linear["p_value"]).all()
    assert linear["p_value"].between(1 / 21, 1).all()
    # the chapter reads its verdicts from it
    text = (smoke_book["executed"] / "05_cv_results.ipynb").read_text()
    assert "permutation" in text and "corrected p" in text


def smoke_pooled(work, store):
    """Per-slice features of every combination of the smoke run, read from its feature caches
    (the ones the FC runs recorded) and pooled over the whole slice."""
    pooled = {}
    for run in discover_runs(work).itertuples():
        if run.split == "patient":
            record = json.loads((run.dir / "run.json").read_text())
            values = read_feature_cache(work, record["features_dir"], store,
                                        record["features_key_hash"])
            pooled[int(run.combo)] = pool_features(values, None, "global")
    assert len(pooled) == 10
    return pooled


def test_smoke_features_find_a_signal_that_is_there_and_not_one_that_is_not(smoke_book):
    """Slice rows of the smoke run's cached features; labels: the slice's mean T2w intensity
    above the median (how much bright tissue the slice holds, which every image shows), and the
    same labels shuffled."""
    from stsnb.slices import SliceStore

    work = smoke_book["work_dir"]
    store = SliceStore.open(work)
    pooled = smoke_pooled(work, store)
    t2w = store.modality(store.index["row"].to_numpy(), "t2w")
    brightness = t2w.reshape(len(t2w), -1).mean(axis=1)
    bright = (brightness > np.median(brightness)).astype(np.int64)
    random = np.random.default_rng(7).permutation(bright)
    found = p_values(permutation_null(pooled, bright, 3, 0, 99))
    best = found.sort_values("patient_auc").iloc[-1]
    assert best.patient_auc > 0.85 and best.p_best_corrected < 0.05
    assert (found["p_value"] < 0.05).sum() >= 8
    chance = p_values(permutation_null(pooled, random, 3, 0, 99))
    assert (chance["p_best_corrected"] > 0.05).all()
    assert chance["patient_auc"].max() < best.patient_auc


def test_controls_page_and_tables(smoke_book):
    work = smoke_book["work_dir"]
    linear = pd.read_csv(work / "controls" / "linear.csv")
    assert set(linear["kind"]) == {"positive", "negative"}
    assert (linear.groupby("kind")["combo"].nunique() == 10).all()
    fc = pd.read_csv(work / "controls" / "fc.csv")
    assert {"positive", "negative"} <= set(fc["kind"])
    assert fc["train_loss"].gt(0).all() and fc["constant_loss"].gt(0).all()
    oracle = pd.read_csv(work / "controls" / "oracle.csv")
    assert set(oracle["modality"]) == set(STUDY_MODALITIES)
    text = (smoke_book["executed"] / "08_controls.ipynb").read_text()
    assert "Positive control, linear head" in text and "negative-control runs" in text
    radiomics = pd.read_csv(work / "controls" / "radiomics.csv")
    assert set(radiomics["kind"]) == {"positive", "negative"}
    assert (radiomics["head"] == "radiomics-lr").all() and "all" in set(radiomics["combo"])
    assert radiomics["p_value"].between(0, 1).all()
    assert "Positive control, radiomics lr" in text
