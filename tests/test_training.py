"""Chapter 04's stage: folds, feature cache, exact head forms, early stopping, runs, batch.

Small cases only: 32-64 px slices, a handful of patients, random weights (weights='none').
"""

from __future__ import annotations

import json
from dataclasses import replace

import nbformat
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from stsnb.core.combinations import resolve_combo
from stsnb.core.config import QUICK, SMOKE
from stsnb.core.errors import ConfigError
from stsnb.core.metrics import PREDICTION_COLUMNS
from stsnb.core.modalities import STUDY_MODALITIES
from stsnb.training import cv
from stsnb.training import stage as training
from stsnb.training.cv import cross_validate
from stsnb.training.features import ArraySlices, cached_features, resolve_device, resolve_precision
from stsnb.training.folds import Fold, LeakageError, assert_no_leakage, make_folds, permuted_labels
from stsnb.training.loop import EarlyStopping, class_weights, constant_loss, fit_fold
from stsnb.training.model import backbone_forward, build_model
from stsnb.training.stage import fold_model, train_combination

CPU = torch.device("cpu")


def make_slices(n_patients: int = 8, per_patient: int = 4, px: int = 32, signal: float = 0.4,
                seed: int = 0) -> ArraySlices:
    """Noise images whose brightness carries the label (every modality), labels alternating."""
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for p in range(n_patients):
        label = p % 2
        for s in range(per_patient):
            rows.append((f"P{p:02d}", 10 + s, label))
            images.append(rng.random((5, px, px)) * (1 - signal) + signal * label)
    index = pd.DataFrame(rows, columns=["patient_id", "slice_index", "label"])
    return ArraySlices(np.stack(images).astype(np.float16), index, STUDY_MODALITIES)


def small_profile(**training_overrides):
    return replace(SMOKE, training=replace(SMOKE.training, **training_overrides))


@pytest.fixture(scope="module")
def bundle():
    return build_model("none", seed=0)


@pytest.fixture(scope="module")
def slices():
    return make_slices()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, bundle, slices):
    work = tmp_path_factory.mktemp("run")
    profile = small_profile(max_epochs=3, batch_size=8, patience=2)
    run = train_combination(slices, work, profile, combo=9, split="patient", seed=0,
                            device="cpu", weights="none", precision="fp32", bundle=bundle,
                            progress=False)
    return work, profile, run


# -- folds ------------------------------------------------------------------------------------

def index_of(counts: list[int], labels: list[int]) -> pd.DataFrame:
    rows = [(f"P{p:02d}", s, lab) for p, (n, lab) in enumerate(zip(counts, labels, strict=True))
            for s in range(n)]
    return pd.DataFrame(rows, columns=["patient_id", "slice_index", "label"])


def test_patient_folds_cover_every_slice_once_without_shared_patients():
    rng = np.random.default_rng(1)
    index = index_of(list(rng.integers(5, 30, 40)), [int(p % 3 == 0) for p in range(40)])
    plan = make_folds(index, "patient", n_folds=5, seed=0, validation_fraction=0.1)
    tested = np.concatenate([f.test for f in plan.folds])
    assert sorted(tested) == list(range(len(index)))
    for fold in plan.folds:
        sets = [set(plan.patient_ids[part]) for part in (fold.train, fold.val, fold.test)]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        assert len(fold.val) and set(plan.labels[fold.test]) == {0, 1}
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(index)
    positives = [len(set(plan.patient_ids[f.test][plan.labels[f.test] == 1])) for f in plan.folds]
    assert max(positives) - min(positives) <= 1  # stratified by patients


def test_patient_folds_stay_stratified_with_equal_slice_counts():
    """The case where sklearn's StratifiedGroupKFold can put one class in one fold."""
    plan = make_folds(index_of([2] * 16, [p % 2 for p in range(16)]), "patient", 2, seed=1)
    for fold in plan.folds:
        assert plan.labels[fold.test].sum() == len(fold.test) // 2


def test_leakage_assertion_trips_on_crafted_overlap():
    pids = np.array(["A", "A", "B", "B", "C", "C"])
    clean = Fold(1, train=np.array([0, 1]), val=np.array([2, 3]), test=np.array([4, 5]))
    assert_no_leakage(clean, pids)
    shared_patient = Fold(1, train=np.array([0, 2]), val=np.array([3]), test=np.array([4, 5]))
    with pytest.raises(LeakageError, match="patients \\['B'\\]"):
        assert_no_leakage(shared_patient, pids)
    assert_no_leakage(shared_patient, pids, grouped=False)  # the slice split allows it
    shared_slice = Fold(1, train=np.array([0, 1]), val=np.array([2, 4]), test=np.array([4, 5]))
    with pytest.raises(LeakageError, match="slices in both validation and test"):
        assert_no_leakage(shared_slice, pids, grouped=False)


def test_slice_split_mixes_patients_and_random_split_permutes_patient_labels():
    index = index_of([6] * 12, [p % 2 for p in range(12)])
    plan = make_folds(index, "slice", n_folds=3, seed=0)
    overlap = [set(plan.patient_ids[f.test]) & set(plan.patient_ids[f.train])
               for f in plan.folds]
    assert all(overlap)  # the study's split: a test patient's other slices are in training
    permuted = permuted_labels(index, seed=4)
    per_patient = pd.Series(permuted).groupby(index["patient_id"]).nunique()
    assert (per_patient == 1).all() and permuted.sum() == index["label"].sum()
    assert (permuted != index["label"].to_numpy()).any()
    assert np.array_equal(permuted, permuted_labels(index, seed=4))
    random_plan = make_folds(index, "random", n_folds=3, seed=4)
    assert np.array_equal(random_plan.labels, permuted)


def test_fold_bad_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="single class"):
        make_folds(index_of([3] * 6, [0] * 6), "patient", 2)
    with pytest.raises(ConfigError, match="at least 5 patients of each class"):
        make_folds(index_of([3] * 8, [0, 0, 0, 0, 0, 1, 1, 1]), "patient", 5)
    with pytest.raises(ConfigError, match="Unknown split"):
        make_folds(index_of([3] * 4, [0, 1, 0, 1]), "leave-one-out", 2)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        make_folds(index_of([3] * 4, [0, 1, 0, 1]), "patient", 1)
    mixed = index_of([2, 2, 2, 2], [0, 1, 0, 1])
    mixed.loc[0, "label"] = 1
    with pytest.raises(ConfigError, match="both labels"):
        make_folds(mixed, "patient", 2)


# -- early stopping ---------------------------------------------------------------------------

def test_early_stopping_on_crafted_loss_curve():
    losses = [1.0, 0.8, 0.7, 0.75, 0.72, 0.71, 0.69]
    stopper = EarlyStopping(patience=3)
    stopped_at = None
    for epoch, loss in enumerate(losses, start=1):
        if stopper.update(epoch, loss, lambda e=epoch: {"epoch": e}):
            stopped_at = epoch
            break
    assert (stopped_at, stopper.best_epoch, stopper.best_loss) == (6, 3, 0.7)
    assert stopper.best_state == {"epoch": 3}


class CraftedHead:
    """logits = (0, w) for every slice: SGD on all-positive training labels raises w each step,
    so the validation loss (3 positives, 1 negative) falls to its minimum at w = log 3, then rises.
    """

    def __init__(self) -> None:
        self.w = nn.Parameter(torch.tensor(-2.0, dtype=torch.float64))

    def parameters(self):
        return iter([self.w])

    def train(self, mode: bool = True) -> None:
        pass

    def __call__(self, positions):
        return torch.stack([torch.zeros(len(positions), dtype=torch.float64),
                            self.w.expand(len(positions))], dim=1)

    def state(self):
        return {"w": self.w.detach().clone()}

    def load(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])


def test_fit_fold_stops_and_restores_the_best_epoch():
    labels = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1])
    fold = Fold(1, train=np.arange(4), val=np.arange(4, 8), test=np.arange(4, 8))
    config = replace(SMOKE.training, batch_size=4, learning_rate=1.0, momentum=0.0,
                     max_epochs=30, patience=2)
    outcome = fit_fold(CraftedHead(), labels, fold, config, seed=0)
    w, expected = -2.0, []  # the same curve by hand: one full-batch SGD step per epoch
    for _ in range(config.max_epochs):
        w += 1.0 / (1.0 + np.exp(w))  # -lr * d(-log sigmoid(w))/dw
        expected.append(-(3 * np.log(1 / (1 + np.exp(-w))) + np.log(1 - 1 / (1 + np.exp(-w))))
                        / 4)
    val = outcome.history[outcome.history["phase"] == "val"]["loss"].to_numpy()
    best = int(np.argmin(expected)) + 1
    np.testing.assert_allclose(val, expected[:len(val)], rtol=1e-12)
    assert 1 < best < config.max_epochs
    assert outcome.best_epoch == best and outcome.epochs_run == best + config.patience
    assert outcome.stopped_early
    np.testing.assert_allclose(outcome.test_prob, 1 / (1 + np.exp(-outcome.state["w"].item())))
    assert abs(outcome.best_val_loss - min(val)) < 1e-12


def test_class_weights_and_the_constant_reference():
    np.testing.assert_allclose(class_weights(np.array([1, 0, 0, 0, 1, 0, 0, 0]), "balanced"),
                               [8 / 12, 8 / 4])
    assert class_weights(np.array([1, 0, 0]), "none") is None
    assert class_weights(np.array([0, 0, 0]), "balanced") is None  # one class: unweighted
    assert constant_loss(0.25, "balanced") == pytest.approx(np.log(2))
    assert constant_loss(0.25, "none") == pytest.approx(-(0.25 * np.log(0.25)
                                                          + 0.75 * np.log(0.75)))
    assert constant_loss(0.0, "none") == 0.0
    with pytest.raises(ConfigError, match="class_weighting"):
        training.check_training_config(replace(SMOKE.training, class_weighting="inverse"))


@pytest.mark.parametrize(("weighting", "probability"), [("none", 0.25), ("balanced", 0.5)])
def test_a_bias_only_head_reaches_the_constant_reference(weighting, probability):
    """A head that can learn nothing but a bias ends at the best constant prediction: the
    prior (unweighted) or 0.5 (balanced), its training loss at `constant_loss`."""
    labels = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0] * 2)
    positions = np.arange(8)
    fold = Fold(1, train=positions, val=positions, test=positions + 8)
    config = replace(SMOKE.training, batch_size=8, learning_rate=2.0, momentum=0.0,
                     max_epochs=200, patience=200, class_weighting=weighting)
    outcome = fit_fold(CraftedHead(), labels, fold, config, seed=0)
    np.testing.assert_allclose(outcome.test_prob, probability, atol=1e-3)
    assert outcome.constant_loss == pytest.approx(constant_loss(0.25, weighting))
    assert outcome.restored_train_loss == pytest.approx(outcome.constant_loss, abs=1e-5)
    val = outcome.history[outcome.history["phase"] == "val"]["loss"]
    assert val.iloc[-1] == pytest.approx(outcome.constant_loss, abs=1e-5)


# -- the cached path is the naive loop --------------------------------------------------------

def frozen_features(bundle, slices, channels):
    """Features of every slice, batch by batch, as the naive loop computes them."""
    return np.concatenate([backbone_forward(bundle, torch.from_numpy(
        slices.images(np.arange(i, min(i + 8, len(slices.index))), channels)), "fp32").numpy()
        for i in range(0, len(slices.index), 8)])


def one_fold_plan(slices):
    plan = make_folds(slices.index, "patient", 2, seed=0, validation_fraction=0.25)
    return replace(plan, folds=plan.folds[1:])


def test_cached_features_match_the_frozen_forward_and_are_reused(tmp_path, bundle, slices):
    channels = resolve_combo(9).channels
    first = cached_features(slices, tmp_path, channels, bundle, CPU, "fp32", progress=False)
    assert first.computed_patients == 8 and first.values.shape == (32, 25088)
    images = torch.from_numpy(slices.images(np.arange(5), channels))
    direct = backbone_forward(bundle, images, "fp32").numpy()
    np.testing.assert_allclose(first.values[:5], direct, rtol=1e-5, atol=1e-7)
    again = cached_features(slices, tmp_path, channels, bundle, CPU, "fp32", progress=False)
    assert again.reused and np.array_equal(again.values, first.values)
    bf16 = cached_features(slices, tmp_path, channels, bundle, CPU, "bf16", progress=False)
    assert bf16.key_hash != first.key_hash  # the precision is part of the key
    assert np.load(bf16.dir / "P00.npy").dtype == np.uint16  # exact bfloat16 values
    np.testing.assert_allclose(bf16.values, first.values, rtol=0.05, atol=0.02 * np.abs(
        first.values).max())


def test_cached_training_equals_the_naive_loop_exactly_in_float64(bundle, slices):
    """Float64 head arithmetic: no float rounding hides a difference between the two paths."""
    combination = resolve_combo(9)
    plan = one_fold_plan(slices)
    config = replace(SMOKE.training, batch_size=8, max_epochs=2, patience=2)
    values = frozen_features(bundle, slices, combination.channels)
    outcomes = {form: cross_validate(slices, combination, plan, bundle, config, 0, CPU, "fp32",
                                     form, values, dtype=torch.float64, scaling="none")[0]
                for form in ("dual", "naive")}
    dual, naive = outcomes["dual"], outcomes["naive"]
    np.testing.assert_allclose(dual.test_prob, naive.test_prob, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dual.history["loss"], naive.history["loss"], rtol=0, atol=1e-10)
    assert dual.best_epoch == naive.best_epoch
    assert np.ptp(naive.test_prob) > 0  # the head did learn something slice-specific


def test_cached_training_matches_the_naive_loop_in_float32(bundle, slices):
    """As runs train (float32): equal up to float rounding (ReLU kinks can amplify it)."""
    combination = resolve_combo(9)
    plan = one_fold_plan(slices)
    config = replace(SMOKE.training, batch_size=8, max_epochs=2, patience=2)
    values = frozen_features(bundle, slices, combination.channels)
    dual = cross_validate(slices, combination, plan, bundle, config, 0, CPU, "fp32", "dual",
                          values, scaling="none")[0]
    naive = cross_validate(slices, combination, plan, bundle, config, 0, CPU, "fp32", "naive",
                           scaling="none")[0]
    np.testing.assert_allclose(dual.test_prob, naive.test_prob, rtol=0, atol=1e-4)
    assert dual.best_epoch == naive.best_epoch



def test_rms_tables_come_from_one_product_and_match_the_primal_head(bundle, slices,
                                                                    monkeypatch):
    """'rms' scaling: each fold's dual tables are the unscaled products times the fold's factor
    (one product over 25088 features for every fold), and train as the ordinary head does."""
    combination = resolve_combo(9)
    values = torch.from_numpy(frozen_features(bundle, slices, combination.channels)).double()
    plan = make_folds(slices.index, "patient", 2, seed=0, validation_fraction=0.25)
    products = []
    original = cv.DualTables.__init__
    monkeypatch.setattr(cv.DualTables, "__init__",
                        lambda self, *a: products.append(1) or original(self, *a))
    tables = cv.FoldTables(values, bundle, "rms")
    first_weight = bundle.initial_head["0.weight"].double()
    factors = []
    for fold in plan.folds:
        fold_tables, scaling = tables(fold)
        factors.append(scaling.factor)
        direct = object.__new__(cv.DualTables)  # the products of the scaled features
        original(direct, scaling.apply(values), first_weight)
        np.testing.assert_allclose(fold_tables.base, direct.base, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(fold_tables.gram, direct.gram, rtol=1e-12)
    assert len(products) == 1 and factors[0] != factors[1] and all(f > 0 for f in factors)

    monkeypatch.undo()
    one = replace(plan, folds=plan.folds[1:])
    config = replace(SMOKE.training, batch_size=8, max_epochs=2, patience=2)
    dual, primal = (cross_validate(slices, combination, one, bundle, config, 0, CPU, "fp32",
                                   form, values.float().numpy(), dtype=torch.float64,
                                   scaling="rms")[0] for form in ("dual", "primal"))
    np.testing.assert_allclose(dual.test_prob, primal.test_prob, rtol=0, atol=1e-10)
    assert np.ptp(primal.test_prob) > 0


def test_freed_buffers_are_kept_for_the_next_step_on_glibc():
    import platform

    from stsnb.training.head import reuse_freed_memory
    kept = reuse_freed_memory()
    assert kept is (platform.libc_ver()[0] == "glibc")
    assert reuse_freed_memory() is kept  # once per process

# -- runs on disk -----------------------------------------------------------------------------

def test_run_outputs_follow_the_contract(finished_run, slices):
    work, profile, run = finished_run
    out = work / "runs" / "patient" / "combo09"
    predictions = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert tuple(predictions.columns) == PREDICTION_COLUMNS
    assert len(predictions) == len(slices.index)  # every slice tested exactly once
    assert sorted(predictions["fold"].unique()) == [1, 2]
    assert predictions["prob"].between(0, 1).all()
    merged = predictions.merge(slices.index, on=["patient_id", "slice_index"],
                               suffixes=("", "_index"))
    assert len(merged) == len(predictions)
    assert (merged["label"] == merged["label_index"]).all()
    history = pd.read_csv(out / "history.csv")
    assert tuple(history.columns) == ("fold", "epoch", "phase", "loss", "accuracy")
    assert set(history["phase"]) == {"train", "val"}
    metrics = pd.read_csv(out / "fold_metrics.csv")
    for column in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc",
                   "n_test", "best_epoch", "weights_pretrained"):
        assert column in metrics.columns
    for fold, part in history[history["phase"] == "val"].groupby("fold"):
        best = metrics.set_index("fold").loc[fold, "best_epoch"]
        assert part.set_index("epoch")["loss"].idxmin() == best
    record = json.loads((out / "run.json").read_text())
    assert record["weights"]["pretrained"] is False and record["n_folds"] == 2
    assert (out / "folds" / "fold01" / "head.pt").exists()
    timings = pd.read_csv(work / "timings.csv")
    assert {"features combo09", "training patient combo09"} <= set(timings["stage"])


def test_fold_model_reproduces_the_predictions(finished_run, slices):
    work, _, run = finished_run
    bundle = fold_model(work, "patient", 9, 2, slices)
    rows = run.predictions[run.predictions["fold"] == 2]
    key = slices.index.set_index(["patient_id", "slice_index"])["row"]
    positions = key.loc[list(zip(rows["patient_id"], rows["slice_index"], strict=True))]
    images = torch.from_numpy(slices.images(positions.to_numpy(), resolve_combo(9).channels))
    with torch.no_grad():
        bundle.model.classifier.eval()
        logits = bundle.model.classifier(backbone_forward(bundle, images, "fp32"))
    np.testing.assert_allclose(torch.softmax(logits, 1)[:, 1].numpy(), rows["prob"], atol=1e-5)


def test_runs_resume_per_fold_and_skip_when_current(finished_run, slices, bundle, monkeypatch):
    work, profile, run = finished_run
    calls = []
    real_fit = training.fit_fold
    monkeypatch.setattr(training, "fit_fold",
                        lambda head, labels, fold, *a, **k: calls.append(fold.number)
                        or real_fit(head, labels, fold, *a, **k))
    kwargs = dict(combo=9, split="patient", seed=0, device="cpu", weights="none",
                  precision="fp32", bundle=bundle, progress=False)
    again = train_combination(slices, work, profile, **kwargs)
    assert again.reused and calls == []
    out = work / "runs" / "patient" / "combo09"
    (out / "folds" / "fold02" / "fold.json").unlink()
    (out / "run.json").unlink()
    resumed = train_combination(slices, work, profile, **kwargs)
    assert calls == [2] and not resumed.reused
    pd.testing.assert_frame_equal(resumed.predictions, run.predictions)
    train_combination(slices, work, profile, **{**kwargs, "seed": 1})
    assert calls == [2, 1, 2]  # another seed: other folds, everything retrained


def test_training_is_deterministic_on_cpu(tmp_path, finished_run, bundle, slices):
    _, profile, first = finished_run
    again = train_combination(slices, tmp_path, profile, combo=9, split="patient", seed=0,
                              device="cpu", weights="none", precision="fp32", bundle=bundle,
                              progress=False)
    assert not again.reused
    pd.testing.assert_frame_equal(again.predictions, first.predictions, check_exact=True)
    pd.testing.assert_frame_equal(again.history, first.history, check_exact=True)


def test_random_label_control_lands_at_chance(tmp_path, bundle):
    """The true labels are learnt; permuted patient labels score at chance on new patients."""
    data = make_slices(n_patients=16, per_patient=2, px=32, signal=0.5, seed=5)
    quick = QUICK.training  # the quick profile's optimisation of the FC head on rescaled features
    profile = small_profile(folds=2, max_epochs=quick.max_epochs, batch_size=8,
                            patience=quick.patience, validation_fraction=0.2)
    auc = {}
    for split, seed in (("patient", 0), ("random", 0), ("random", 1), ("random", 2)):
        run = train_combination(data, tmp_path, profile, combo=1, split=split, seed=seed,
                                device="cpu", weights="none", precision="fp32", bundle=bundle,
                                save_heads=False, progress=False)
        auc[split, seed] = roc_auc_score(run.predictions["label"], run.predictions["prob"])
    assert auc["patient", 0] > 0.9, auc  # the brightness carries the true label
    random = [auc["random", seed] for seed in range(3)]
    assert all(abs(a - 0.5) < 0.3 for a in random) and abs(np.mean(random) - 0.5) < 0.15, auc


def test_bad_training_inputs_are_clear_errors(tmp_path, slices, bundle):
    kwargs = dict(device="cpu", weights="none", precision="fp32", bundle=bundle, progress=False)
    with pytest.raises(ConfigError, match="out of range"):
        train_combination(slices, tmp_path, SMOKE, combo=16, **kwargs)
    with pytest.raises(ConfigError, match="Unknown split"):
        train_combination(slices, tmp_path, SMOKE, split="kfold", **kwargs)
    with pytest.raises(ConfigError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="Unknown precision"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ConfigError, match="at least 5 patients of each class"):
        train_combination(slices, tmp_path, small_profile(folds=5), **kwargs)
    with pytest.raises(ConfigError, match="momentum"):
        train_combination(slices, tmp_path, small_profile(momentum=1.5), **kwargs)
    assert not (tmp_path / "runs").exists()


# -- the chapter and its batch ----------------------------------------------------------------

def synthetic_volumes(n_patients: int = 8):
    """Tiny volumes on one CT grid (every modality, GTV sphere), labels alternating."""
    from stsnb.slices import PatientVolumes

    rng = np.random.default_rng(2)
    z, y, x = np.mgrid[:16, :40, :40]  # 3 mm slices: the tumour +- 10 mm fits
    gtv = ((z - 8) ** 2 * 9 + (y - 20) ** 2 * 4 + (x - 20) ** 2 * 4) < 150
    for p in range(n_patients):
        label = p % 2
        images = {}
        for m, name in enumerate(STUDY_MODALITIES):
            values = rng.normal(100 + 50 * m, 10, gtv.shape) + gtv * (30 + 40 * label)
            image = sitk.GetImageFromArray(values.astype(np.float32))
            image.SetSpacing((2.0, 2.0, 3.0))
            images[name] = image
        mask = sitk.GetImageFromArray(gtv.astype(np.uint8))
        mask.CopyInformation(images["ct"])
        yield PatientVolumes(patient_id=f"S{p:02d}", label=label, images=images, gtv=mask)


def test_batch_executes_the_chapter_and_skips_finished_runs(tmp_path, monkeypatch):
    from stsnb.run import batch
    from stsnb.slices import build_slice_store

    work = tmp_path / "work"
    build_slice_store(work, list(synthetic_volumes()), "smoke", progress=False,
                      modalities=STUDY_MODALITIES)
    outputs = batch.run_training_batch(tmp_path / "cohort", work, profile="smoke", seed=0,
                                       combos=[9], splits=["patient"], device="cpu",
                                       weights="none")
    assert [p.name for p in outputs] == ["04_training_combo09.ipynb"]
    nb = nbformat.read(outputs[0], as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    assert nb.cells[0].source.startswith("# 04 Training: 9 Dose-T2w-CE-T1w, patient split\n")
    text = json.dumps(nb.cells)
    for expected in ("WARNING: Not transfer learning", "Learning curves", "image/png",
                     "mean +- SD"):
        assert expected in text, expected
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["weights"]["pretrained"] is False and "training" in manifest["stages"]
    assert (work / "runs" / "patient" / "combo09" / "predictions.csv").exists()
    from stsnb.run import jobs

    monkeypatch.setattr(jobs, "run_page", lambda *a, **k: pytest.fail("not skipped"))
    again = batch.run_training_batch(tmp_path / "cohort", work, profile="smoke", seed=0,
                                     combos=[9], splits=["patient"], device="cpu",
                                     weights="none")
    assert again == outputs


def test_batch_jobs_follow_the_profile():
    from stsnb.core.config import PAPER
    from stsnb.run import batch

    jobs = batch.training_jobs(QUICK, STUDY_MODALITIES)
    assert jobs == [(n, "patient") for n in range(1, 11)]  # controls wait for the ranking
    ranked = [4, 2, 9, 1, 10, 3, 5, 6, 8, 7]
    jobs = batch.training_jobs(QUICK, STUDY_MODALITIES, ranked=ranked)
    assert jobs[10:] == [(4, "slice"), (7, "slice"), (4, "random"), (7, "random")]
    assert batch.training_jobs(QUICK, STUDY_MODALITIES, combos=["dose-t2w-ce_t1w", 1],
                               ranked=ranked) == [
        (9, "patient"), (1, "patient"), (9, "slice"), (1, "slice"), (9, "random"),
        (1, "random")]
    assert batch.training_jobs(PAPER, STUDY_MODALITIES)[10:] == (
        [(n, "slice") for n in range(1, 11)] + [(n, "random") for n in range(1, 11)])
    assert batch.control_numbers((1, 9), [1, 2, 9]) == [1, 9]
    with pytest.raises(ConfigError, match="control_combos"):
        batch.control_numbers("best", [1, 2])
    assert batch.notebook_name(9, "slice") == "04_training_combo09_slice"
    with pytest.raises(ConfigError):
        batch.training_jobs(QUICK, STUDY_MODALITIES, combos=[11 + 10])
