"""Radiomics models on chapter 04's patient folds, their discovery, and the permutation test of
the lr models (the fast nested CV against the sklearn Pipeline it computes)."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import StandardScaler

from stsnb.core.config import SMOKE
from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.metrics import PREDICTION_COLUMNS, roc_auc
from stsnb.core.runs import discover_runs, parse_radiomics_run_name
from stsnb.core.store import write_csv_atomic
from stsnb.radiomics import models
from stsnb.radiomics import permutation as radiomics_permutation
from stsnb.results import tables as results
from stsnb.training.folds import make_folds, permutation_draw
from stsnb.training.logistic import patient_folds as redrawn_folds

N_PATIENTS, N_POSITIVE, SLICES = 36, 12, 2
PROFILE = replace(SMOKE, training=replace(SMOKE.training, folds=4),
                  radiomics=replace(SMOKE.radiomics, select_k=(2, 5), lr_cs=(0.1, 1.0),
                                    forest_trees=20, forest_min_leaf=(1, 3)))
SETS = ["ct", "dose", "t1w", "all"]


def patient_labels(seed: int = 0) -> np.ndarray:
    y = np.zeros(N_PATIENTS, dtype=np.int64)
    y[np.random.default_rng(seed).choice(N_PATIENTS, N_POSITIVE, replace=False)] = 1
    return y


def slice_index(y: np.ndarray) -> pd.DataFrame:
    """A slice store's index: SLICES slices per patient."""
    pids = [f"P{i:03d}" for i in range(len(y))]
    return pd.DataFrame({"row": np.arange(len(y) * SLICES),
                         "patient_id": np.repeat(pids, SLICES),
                         "slice_index": np.tile(np.arange(SLICES), len(y)),
                         "label": np.repeat(y, SLICES)})


def feature_table(y: np.ndarray, seed: int = 1) -> pd.DataFrame:
    """ct (12 columns, morph_volume shifted by 1.5 SD in the positives), dose (8, noise), t1w
    (8, noise, one missing value and one constant column)."""
    rng = np.random.default_rng(seed)
    table = {"patient_id": [f"P{i:03d}" for i in range(len(y))]}
    for image, n in (("ct", 12), ("dose", 8), ("t1w", 8)):
        for j in range(n):
            name = "morph_volume" if (image, j) == ("ct", 0) else f"stat_f{j}"
            table[f"{image}__{name}"] = rng.standard_normal(len(y)) * 10.0 + 100.0
    table["ct__morph_volume"] = table["ct__morph_volume"] + 15.0 * y
    frame = pd.DataFrame(table)
    frame.loc[3, "t1w__stat_f1"] = np.nan
    frame["t1w__stat_f2"] = 7.0
    return frame


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """A work dir with radiomics/features.csv, a slice index and every run of the 4 sets."""
    work = tmp_path_factory.mktemp("radiomics_models") / "work"
    y = patient_labels()
    write_csv_atomic(feature_table(y), work / "radiomics" / "features.csv")
    store = SimpleNamespace(index=slice_index(y))
    runs = models.run_radiomics_models(work, PROFILE, seed=0, store=store)
    return {"work": work, "store": store, "y": y, "runs": runs}


def run_of(layout: dict, feature_set: str, model: str) -> models.RadiomicsModelRun:
    return next(r for r in layout["runs"] if (r.feature_set, r.model) == (feature_set, model))


# ------------------------------------------------------------------------------- the runs


def test_runs_follow_the_networks_contract_on_chapter_04_patient_folds(layout):
    work, store, y = layout["work"], layout["store"], layout["y"]
    assert [(r.feature_set, r.model) for r in layout["runs"]] == [
        (s, m) for s in SETS for m in ("lr", "rf")]
    plan = make_folds(store.index, "patient", PROFILE.training.folds, 0,
                      PROFILE.training.validation_fraction)
    fold_of = {pid: fold.number for fold in plan.folds
               for pid in plan.patient_ids[fold.test]}
    for run in layout["runs"]:
        assert run.run_dir == work / "runs" / "patient" / f"radiomics-{run.feature_set}-{run.model}"
        for name in ("predictions.csv", "fold_metrics.csv", "run.json"):
            assert (run.run_dir / name).exists()
        preds = run.predictions
        assert list(preds.columns) == list(PREDICTION_COLUMNS)
        assert len(preds) == N_PATIENTS and preds["patient_id"].is_unique  # one row per patient
        assert preds["slice_index"].isna().all()
        assert preds["prob"].between(0, 1).all()
        assert preds.set_index("patient_id")["fold"].to_dict() == fold_of
        assert (preds.set_index("patient_id")["label"].sort_index().to_numpy() == y).all()
        metrics = run.fold_metrics
        assert metrics["fold"].tolist() == [1, 2, 3, 4]
        assert (metrics["n_train"] + metrics["n_test"] == N_PATIENTS).all()
        assert metrics["chosen_k"].isin([2, 5]).all()
        searched = "chosen_c" if run.model == "lr" else "chosen_min_leaf"
        assert metrics[searched].isin([0.1, 1.0] if run.model == "lr" else [1, 3]).all()
        record = json.loads((run.run_dir / "run.json").read_text())
        assert record["head"] == f"radiomics-{run.model}" and record["kind"] == "radiomics"
        assert sorted(map(sorted, record["key"]["folds"])) == sorted(
            sorted(set(plan.patient_ids[f.test])) for f in plan.folds)
        assert record["n_features"] == {"ct": 12, "dose": 8, "t1w": 8, "all": 28}[run.feature_set]


def test_the_ct_set_finds_the_shifted_volume_and_the_table_lists_every_run(layout):
    table = models.models_table(layout["runs"]).set_index(["feature_set", "model"])
    print(table["patient_auc"].round(3).to_dict())
    assert table.loc[("ct", "lr"), "patient_auc"] > 0.85
    assert table.loc[("ct", "rf"), "patient_auc"] > 0.75
    assert table.loc[("all", "lr"), "patient_auc"] > 0.75
    assert table.loc[("dose", "lr"), "patient_auc"] < 0.75
    assert set(table["head"]) == {"radiomics-lr", "radiomics-rf"}
    ct_lr = run_of(layout, "ct", "lr").fold_metrics
    assert (ct_lr["chosen_k"] >= 2).all()


def test_runs_are_reused_and_a_changed_feature_reruns_only_its_sets(layout, tmp_path):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(layout["work"], work)
    again = models.run_radiomics_models(work, PROFILE, seed=0, store=layout["store"])
    assert all(r.reused for r in again)
    pd.testing.assert_frame_equal(again[0].predictions, layout["runs"][0].predictions)
    table = pd.read_csv(work / "radiomics" / "features.csv", dtype={"patient_id": str})
    table.loc[0, "dose__stat_f3"] += 1.0
    write_csv_atomic(table, work / "radiomics" / "features.csv")
    changed = models.run_radiomics_models(work, PROFILE, seed=0, store=layout["store"])
    rerun = {(r.feature_set, r.model) for r in changed if not r.reused}
    assert rerun == {("dose", "lr"), ("dose", "rf"), ("all", "lr"), ("all", "rf")}
    other_seed = models.run_radiomics_models(work, PROFILE, seed=1, store=layout["store"],
                                             sets=["ct"], models=("lr",))
    assert not other_seed[0].reused


def test_patient_folds_refuse_the_slice_split_and_check_the_partition(layout):
    index = layout["store"].index
    with pytest.raises(ConfigError, match="patient-level"):
        models.patient_folds(make_folds(index, "slice", 4, 0, 0.1))
    folds = models.fold_plan(index, PROFILE, "patient", 0)
    models.check_patient_partition(folds)
    tests = list(folds.tests)
    overlapping = replace(folds, tests=(np.union1d(tests[0], tests[1][:1]), *tests[1:]))
    with pytest.raises(AssertionError, match="do not partition"):
        models.check_patient_partition(overlapping)
    random = models.fold_plan(index, PROFILE, "random", 0)  # the control: permuted labels
    assert not np.array_equal(random.labels, folds.labels)
    assert sorted(random.labels) == sorted(folds.labels)


def test_missing_patients_and_unknown_sets_are_named(layout):
    features = pd.read_csv(layout["work"] / "radiomics" / "features.csv",
                           dtype={"patient_id": str})
    folds = models.fold_plan(layout["store"].index, PROFILE, "patient", 0)
    with pytest.raises(StsnbError, match="No radiomics features for 1 .*P000"):
        models.run_model(layout["work"], features.iloc[1:], folds, "ct", "lr", PROFILE)
    with pytest.raises(ConfigError, match="Unknown radiomics feature set 'pet'"):
        models.run_model(layout["work"], features, folds, "pet", "lr", PROFILE)
    with pytest.raises(ConfigError, match="Unknown radiomics model 'svm'"):
        models.check_model("svm")


def test_selection_inside_the_training_folds_keeps_noise_at_chance():
    rng = np.random.default_rng(5)
    y = patient_labels(3)
    x = rng.standard_normal((N_PATIENTS, 300))
    pids = np.array([f"P{i:03d}" for i in range(N_PATIENTS)])
    tests = redrawn_folds(y, 4, 0)
    folds = models.PatientFolds("patient", pids, y, tuple(tests), (1, 2, 3, 4))
    config = replace(PROFILE.radiomics, select_k=(5,), lr_cs=(1.0,))
    nested, _ = models.nested_cv("lr", x, folds, config, 0)
    leaky_columns = np.argsort(f_classif(x, y)[0])[-5:]  # chosen on every patient: leakage
    leaky, _ = models.nested_cv("lr", x[:, leaky_columns], folds, config, 0)
    print("nested", roc_auc(y, nested), "selected on all patients", roc_auc(y, leaky))
    assert roc_auc(y, nested) < 0.65 < 0.85 < roc_auc(y, leaky)


# ------------------------------------------------------------------------------- discovery


def test_discovery_finds_the_radiomics_runs_apart_from_the_combinations(layout, tmp_path):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(layout["work"], work)
    fc = work / "runs" / "patient" / "combo01"
    (fc / "linear").mkdir(parents=True)
    preds = layout["runs"][0].predictions.assign(slice_index=0)
    for folder in (fc, fc / "linear"):
        preds.to_csv(folder / "predictions.csv", index=False)
    (work / "runs" / "patient" / "radiomics-notaset").mkdir()  # not a run name
    found = discover_runs(work, "radiomics")
    assert list(found.columns) == ["split", "combo", "head", "dir"]
    assert sorted(zip(found["combo"], found["head"], strict=True)) == sorted(
        (s, f"radiomics-{m}") for s in SETS for m in ("lr", "rf"))
    assert discover_runs(work)["head"].tolist() == ["fc"]
    assert sorted(discover_runs(work, "all")["head"]) == ["fc", "linear"]
    assert list(results.split_predictions(work)) == [1]
    runs = models.split_runs(work, "patient", model="lr")
    assert sorted(runs) == sorted((s, "lr") for s in SETS)
    with pytest.raises(StsnbError, match="split_runs"):
        results.split_predictions(work, head="radiomics")
    assert parse_radiomics_run_name("radiomics-ce_t1w-rf") == ("ce_t1w", "rf")
    assert parse_radiomics_run_name("combo01") is None


# ------------------------------------------------------------------- the permutation test


def test_prepared_rows_equal_sklearns_imputer_scaler_and_f_test(layout):
    features = pd.read_csv(layout["work"] / "radiomics" / "features.csv",
                           dtype={"patient_id": str})
    x = models.feature_matrix(features, features["patient_id"].to_numpy(),
                              models.feature_sets(features)["all"])
    y = layout["y"]
    train, test = np.arange(6, N_PATIENTS), np.arange(6)
    z_train, z_test, scores = radiomics_permutation._prepared(x, y, train, test)
    imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(x[train])
    scaler = StandardScaler().fit(imputer.transform(x[train]))
    np.testing.assert_allclose(z_train, scaler.transform(imputer.transform(x[train])),
                               atol=1e-12)
    np.testing.assert_allclose(z_test, scaler.transform(imputer.transform(x[test])),
                               atol=1e-12)
    with np.errstate(all="ignore"), pytest.warns(UserWarning):
        reference = f_classif(z_train, y[train])[0]
    np.testing.assert_allclose(scores, reference, rtol=1e-10)
    assert np.isnan(scores).sum() == 1  # the constant column
    for k in (2, 5, 27):
        with np.errstate(all="ignore"), pytest.warns(UserWarning):
            kept = SelectKBest(f_classif, k=k).fit(z_train, y[train]).get_support(indices=True)
        assert np.array_equal(radiomics_permutation._top_k(scores, k), kept)


def test_fast_nested_cv_equals_the_sklearn_pipeline(layout):
    features = pd.read_csv(layout["work"] / "radiomics" / "features.csv",
                           dtype={"patient_id": str})
    folds = models.fold_plan(layout["store"].index, PROFILE, "patient", 0)
    sets = models.feature_sets(features)
    matrices = [models.feature_matrix(features, folds.patient_ids, sets[s]) for s in SETS]
    fast = radiomics_permutation.nested_cv_batch(matrices, folds.labels, list(folds.tests),
                                                 PROFILE.radiomics, 0)
    for i, name in enumerate(SETS):
        reference = run_of(layout, name, "lr")
        metrics = reference.fold_metrics
        assert fast.chosen_k[i].tolist() == metrics["chosen_k"].tolist(), name
        assert fast.chosen_c[i].tolist() == metrics["chosen_c"].tolist(), name
        np.testing.assert_allclose(fast.inner_auc[i], metrics["inner_auc"], atol=1e-12)
        prob = reference.predictions.set_index("patient_id")["prob"].reindex(folds.patient_ids)
        np.testing.assert_allclose(fast.prob[i], prob.to_numpy(), atol=1e-6)


def test_permutation_test_of_the_lr_models(layout):
    rows, result = radiomics_permutation.radiomics_significance(
        layout["work"], PROFILE, seed=0, store=layout["store"], n_permutations=19)
    print(rows.to_string(), f"{result.seconds:.2f} s")
    assert list(rows.columns) == ["split", "head", "combo", "patient_auc", "p_value",
                                  "p_best_corrected", "n_permutations"]
    assert rows["combo"].tolist() == SETS and set(rows["head"]) == {"radiomics-lr"}
    assert (rows["split"] == "patient").all() and (rows["n_permutations"] == 19).all()
    assert (rows["p_best_corrected"] >= rows["p_value"]).all()
    assert rows["p_value"].between(1 / 20, 1).all()
    by_set = rows.set_index("combo")
    assert by_set.loc["ct", "p_value"] == by_set.loc["ct", "p_best_corrected"] == 1 / 20
    assert by_set.loc["dose", "p_value"] > 0.1
    for name in SETS:  # the observed AUC is the lr run's
        preds = run_of(layout, name, "lr").predictions
        assert by_set.loc[name, "patient_auc"] == pytest.approx(
            roc_auc(preds["label"].to_numpy(), preds["prob"].to_numpy()), abs=1e-9)
    # permutation 1: the labels permuted among patients, the folds drawn again under them
    folds = models.fold_plan(layout["store"].index, PROFILE, "patient", 0)
    features = pd.read_csv(layout["work"] / "radiomics" / "features.csv",
                           dtype={"patient_id": str})
    x = models.feature_matrix(features, folds.patient_ids, models.feature_sets(features)["ct"])
    labels = permutation_draw(folds.labels, 0, 1)
    once = radiomics_permutation.nested_cv_batch(
        [x], labels, redrawn_folds(labels, PROFILE.training.folds, 0), PROFILE.radiomics, 0)
    assert result.null[0, 0] == pytest.approx(roc_auc(labels, once.prob[0]), abs=1e-12)
    assert np.std(result.null[:, 0]) > 0.02
