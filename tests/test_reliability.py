"""Reliability on a smoke cohort: runs killed mid-way resume, half files are never trusted, a
changed setting redoes exactly what depends on it, same seed same predictions, disk space is
checked first, the manifest records what decides reuse, a failing chapter stops the batch.

The work dirs are copies of the session's smoke book (conftest.py): only what a test redoes runs.
Kills are real: `kill_driver.py` runs a stage in a subprocess that SIGKILLs itself at the point
named (a fold's training, a shard's write, a patient's registration).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from stsnb.core import manifest as manifest_module
from stsnb.core import store
from stsnb.core.config import SMOKE
from stsnb.core.errors import StsnbError
from stsnb.core.manifest import MANIFEST, TRACKED_PACKAGES, read_manifest
from stsnb.core.runs import RUN_RECORD
from stsnb.core.store import STAGE_RECORD
from stsnb.registration import run_registration
from stsnb.run import batch
from stsnb.slices import SliceStore, run_preprocessing
from stsnb.training import stage as training
from stsnb.training.features import FEATURE_DIR
from stsnb.training.stage import run_training

pytestmark = pytest.mark.smoke

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("kill_driver.py")
SEED = 3
UPSTREAM = ("cohort.csv", "curation", "registration", "slices", "combinations.csv", MANIFEST,
            "timings.csv")
RUN = Path("runs") / "patient" / "combo01"
TRAIN = dict(seed=SEED, combo=1, device="cpu", weights="none", precision="fp32", progress=False)


def copy_work(smoke_book: dict[str, Path], dest: Path, parts: tuple[str, ...] = UPSTREAM) -> Path:
    """A work dir holding copies of the smoke book's outputs `parts` (files keep their mtimes)."""
    source = smoke_book["work_dir"]
    dest.mkdir(parents=True)
    for part in parts:
        path = source / part
        if path.is_dir():
            shutil.copytree(path, dest / part)
        elif path.exists():
            shutil.copy2(path, dest / part)
    return dest


def kill(spec: dict) -> None:
    """Run a stage in a subprocess that SIGKILLs itself where `spec` says; check it died so."""
    result = subprocess.run([sys.executable, str(DRIVER), json.dumps(spec, default=str)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-3000:])


def mtimes(folder: Path) -> dict[str, int]:
    """mtime (ns) of every file under `folder`, by relative path."""
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
            for p in folder.rglob("*") if p.is_file()}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def count_folds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Numbers of the folds trained from now on (training.fit_fold calls)."""
    calls: list[int] = []
    real = training.fit_fold

    def counted(head, labels, fold, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls.append(fold.number)
        return real(head, labels, fold, *args, **kwargs)

    monkeypatch.setattr(training, "fit_fold", counted)
    return calls


def tmp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*.tmp*")]


@pytest.fixture(scope="module")
def reference(smoke_book, tmp_path_factory) -> dict[str, Path | bytes]:
    """Combination 1, seed 3, random weights: trained twice from scratch in one work dir."""
    work = copy_work(smoke_book, tmp_path_factory.mktemp("reference") / "work")
    cohort = smoke_book["cohort_dir"]
    first = run_training(cohort, work, SMOKE, **TRAIN)
    assert not first.reused
    first_bytes = (work / RUN / "predictions.csv").read_bytes()
    shutil.rmtree(work / "runs")
    shutil.rmtree(work / FEATURE_DIR)
    second = run_training(cohort, work, SMOKE, **TRAIN)
    assert not second.reused
    return {"work": work, "cohort": cohort, "first": first_bytes,
            "predictions": (work / RUN / "predictions.csv").read_bytes()}


def test_same_seed_gives_identical_predictions_twice_on_cpu(reference):
    """Everything recomputed (features and heads): predictions.csv is byte for byte the same."""
    assert reference["first"] == reference["predictions"]
    table = pd.read_csv(reference["work"] / RUN / "predictions.csv")
    assert len(table) > 10 and table["prob"].between(0, 1).all()


def test_training_killed_mid_fold_resumes_without_redoing_the_finished_fold(
        reference, smoke_book, tmp_path, monkeypatch):
    work = copy_work(smoke_book, tmp_path / "work")
    kill({"stage": "training", "cohort_dir": reference["cohort"], "work_dir": work,
          "target": "stsnb.training.stage:fit_fold", "call": 2, "mode": "before"})
    out = work / RUN
    assert (out / "folds" / "fold01" / "fold.json").exists()
    assert not (out / "folds" / "fold02" / "fold.json").exists()
    assert not (out / RUN_RECORD).exists()
    fold1, features = mtimes(out / "folds" / "fold01"), mtimes(work / FEATURE_DIR)
    calls = count_folds(monkeypatch)
    run = run_training(reference["cohort"], work, SMOKE, **TRAIN)
    assert calls == [2] and not run.reused
    assert mtimes(out / "folds" / "fold01") == fold1  # the finished fold is not redone
    assert mtimes(work / FEATURE_DIR) == features  # nor the cached features
    assert (out / "predictions.csv").read_bytes() == reference["predictions"]


def test_a_run_killed_while_rewriting_its_tables_for_another_seed_is_not_trusted(
        reference, tmp_path, monkeypatch):
    """Seed 4 is killed just after replacing predictions.csv of a finished seed-3 run: going
    back to seed 3 must not trust that file (its old record would vouch for it)."""
    work = tmp_path / "work"
    shutil.copytree(reference["work"], work)
    kill({"stage": "training", "cohort_dir": reference["cohort"], "work_dir": work, "seed": 4,
          "target": "os:replace", "match": "combo01/predictions.csv", "mode": "after"})
    assert (work / RUN / "predictions.csv").read_bytes() != reference["predictions"]
    calls = count_folds(monkeypatch)
    run = run_training(reference["cohort"], work, SMOKE, **TRAIN)
    assert not run.reused and sorted(calls) == [1, 2]  # the folds were seed 4's: retrained
    assert run.record["key"]["seed"] == SEED
    assert (work / RUN / "predictions.csv").read_bytes() == reference["predictions"]


def test_truncated_run_fold_and_feature_files_are_detected_and_remade(
        reference, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(reference["work"], work)
    out = work / RUN
    calls = count_folds(monkeypatch)
    truncate(out / "predictions.csv")
    again = run_training(reference["cohort"], work, SMOKE, **TRAIN)
    assert not again.reused and calls == []  # only the run's tables were remade
    assert (out / "predictions.csv").read_bytes() == reference["predictions"]
    shards = sorted((work / FEATURE_DIR).rglob("*.npy"))
    before = mtimes(work / FEATURE_DIR)
    truncate(shards[0])
    truncate(out / "folds" / "fold02" / "history.csv")
    truncate(out / "history.csv")
    again = run_training(reference["cohort"], work, SMOKE, **TRAIN)
    assert not again.reused and calls == [2]
    after = mtimes(work / FEATURE_DIR)
    changed = {name for name in after if after[name] != before.get(name)
               and name.endswith(".npy")}
    assert changed == {shards[0].relative_to(work / FEATURE_DIR).as_posix()}
    assert (out / "predictions.csv").read_bytes() == reference["predictions"]


def test_features_killed_mid_write_resume_and_leave_no_half_shard(reference, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(reference["work"], work, ignore=shutil.ignore_patterns("runs", FEATURE_DIR))
    kill({"stage": "training", "cohort_dir": reference["cohort"], "work_dir": work,
          "target": "os:replace", "match": f"/{FEATURE_DIR}/", "call": 3, "mode": "half"})
    cache = next((work / FEATURE_DIR).iterdir())
    shards = [p for p in cache.glob("*.npy") if not p.name.startswith(".")]
    assert len(shards) == 2 and len(tmp_leftovers(cache)) == 1
    kept = mtimes(cache)
    run = run_training(reference["cohort"], work, SMOKE, **TRAIN)
    assert not run.reused and tmp_leftovers(cache) == []
    assert all(mtimes(cache)[name] == t for name, t in kept.items() if not name.startswith("."))
    assert (work / RUN / "predictions.csv").read_bytes() == reference["predictions"]


def test_a_changed_setting_redoes_exactly_what_depends_on_it(reference, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(reference["work"], work)
    cohort = reference["cohort"]
    upstream = {p: mtimes(work / p) for p in ("registration", "slices", "curation")}
    features = mtimes(work / FEATURE_DIR)
    longer = replace(SMOKE, training=replace(SMOKE.training, max_epochs=3))
    run = run_training(cohort, work, longer, **TRAIN)
    assert not run.reused and mtimes(work / FEATURE_DIR) == features  # head only
    run = run_training(cohort, work, SMOKE, **{**TRAIN, "seed": 4})
    assert not run.reused and run.record["key"]["seed"] == 4
    seeds = {json.loads(p.read_text())["key"]["weights"]["seed"]
             for p in (work / FEATURE_DIR).glob("*/cache.json")}
    assert seeds == {SEED, 4}  # random weights follow the seed: new features beside the old
    assert run_training(cohort, work, SMOKE, **TRAIN).reused is False  # run dir holds seed 4
    assert (work / RUN / "predictions.csv").read_bytes() == reference["predictions"]
    assert {p: mtimes(work / p) for p in upstream} == upstream
    assert run_preprocessing(cohort, work, SMOKE, seed=SEED, progress=False).last_build.all_reused


def test_an_upgraded_package_redoes_the_stages_it_computes(reference, tmp_path, monkeypatch):
    """The manifest's package versions are part of the keys: a new torch redoes features and
    heads, not the slice store."""
    work = tmp_path / "work"
    shutil.copytree(reference["work"], work)
    versions = manifest_module.package_versions()
    monkeypatch.setattr(manifest_module, "package_versions",
                        lambda: {**versions, "torch": versions["torch"] + ".post1"})
    calls = count_folds(monkeypatch)
    run = run_training(reference["cohort"], work, SMOKE, **TRAIN)
    assert not run.reused and sorted(calls) == [1, 2]
    assert len(list((work / FEATURE_DIR).iterdir())) == 2  # a second feature cache
    built = run_preprocessing(reference["cohort"], work, SMOKE, seed=SEED, progress=False)
    assert built.last_build.all_reused
    assert read_manifest(work)["packages"]["torch"].endswith(".post1")


def test_slice_store_killed_mid_shard_for_a_new_setting_is_rebuilt_right(smoke_book, tmp_path):
    """A 5 mm margin build is killed between a patient's image and mask shards; back on the
    smoke setting, the three patients it finished and the half one are rebuilt, the rest is
    reused, and every shard equals the original."""
    original = SliceStore.open(smoke_book["work_dir"])
    work = copy_work(smoke_book, tmp_path / "work")
    cohort = smoke_book["cohort_dir"]
    kill({"stage": "slices", "cohort_dir": cohort, "work_dir": work,
          "profile_changes": {"preprocessing": {"z_margin_mm": 5.0}},
          "target": "stsnb.slices.build:_save_npy", "match": "_gtv", "call": 4,
          "mode": "before"})
    with pytest.raises(StsnbError, match="incomplete"):
        SliceStore.open(work)
    patients = list(original.patients["patient_id"])
    fourth = work / "slices" / "shards" / f"{patients[3]}.npy"
    assert not np.array_equal(np.load(fourth), np.load(original.root / "shards" / fourth.name))
    rebuilt = run_preprocessing(cohort, work, SMOKE, seed=SEED, progress=False)
    assert list(rebuilt.last_build.built) == patients[:4]
    assert list(rebuilt.last_build.reused) == patients[4:]
    for pid in patients:
        for name in (f"{pid}.npy", f"{pid}_gtv.npy"):
            assert np.array_equal(np.load(rebuilt.root / "shards" / name),
                                  np.load(original.root / "shards" / name)), name
    assert (rebuilt.root / "index.csv").read_bytes() == (original.root / "index.csv").read_bytes()
    assert tmp_leftovers(rebuilt.root) == []


def test_registration_killed_mid_save_and_a_truncated_transform_are_redone(smoke_book, tmp_path):
    """Seed 4 re-registers one patient and is killed after two of its images; another patient's
    transform is truncated. Back on seed 3, exactly those two patients are registered again."""
    work = copy_work(smoke_book, tmp_path / "work", ("cohort.csv", "curation", "registration"))
    cohort = smoke_book["cohort_dir"]
    folders = sorted(p for p in (work / "registration").iterdir() if p.is_dir())
    first, second = folders[0].name, folders[1].name
    kill({"stage": "registration", "cohort_dir": cohort, "work_dir": work, "seed": 4,
          "patients": [first], "target": "stsnb.registration.stage:_write_image", "call": 2,
          "mode": "after"})
    truncate(folders[1] / "transform_t1w.h5")
    others = {p.name: mtimes(p) for p in folders[2:]}
    run = run_registration(cohort, work, SMOKE, seed=SEED, progress=False)
    assert sorted(run.reused) == sorted(others)
    for pid in (first, second):
        record = json.loads((work / "registration" / pid / "record.json").read_text())
        assert record["key"]["seed"] == SEED and record["sizes"]
    assert {p.name: mtimes(p) for p in folders[2:]} == others
    assert len(run.qa) == len(folders)


def _tiny_disk(monkeypatch: pytest.MonkeyPatch, free: int = 1 << 20) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(store.shutil, "disk_usage",
                        lambda path: usage._replace(free=free))


def test_large_writes_check_free_space_first(reference, smoke_book, tmp_path, monkeypatch):
    cohort = smoke_book["cohort_dir"]
    work = copy_work(smoke_book, tmp_path / "work")
    shutil.rmtree(work / "slices")
    first = sorted(p for p in (work / "registration").iterdir() if p.is_dir())[0]
    (first / "record.json").unlink()
    _tiny_disk(monkeypatch)
    with pytest.raises(StsnbError, match=r"slice store.*needs about [\d.]+ MiB.*1\.0 MiB are "
                       r"free") as caught:
        run_preprocessing(cohort, work, SMOKE, seed=SEED, progress=False)
    assert "patient " in str(caught.value)
    assert not list((work / "slices" / "shards").glob("*.npy"))
    with pytest.raises(StsnbError, match=r"registration outputs of 1 patient.*needs about"):
        run_registration(cohort, work, SMOKE, seed=SEED, progress=False)
    assert not (first / "record.json").exists()
    features = tmp_path / "features"
    shutil.copytree(reference["work"], features, ignore=shutil.ignore_patterns("runs",
                                                                                FEATURE_DIR))
    with pytest.raises(StsnbError, match=r"VGG-19 features of \d+ patients.*MiB are free"):
        run_training(cohort, features, SMOKE, **TRAIN)
    assert not list((features / FEATURE_DIR).rglob("*.npy"))


def test_manifest_is_complete_and_holds_the_keys_that_decide_reuse(smoke_book):
    work = smoke_book["work_dir"]
    manifest = read_manifest(work)
    for item in ("code_version", "python", "platform", "packages", "profile", "profile_config",
                 "seed", "cohort_dir", "cohort_sha256", "weights", "stages", "runs"):
        assert item in manifest, item
    assert set(manifest["packages"]) == set(TRACKED_PACKAGES)
    assert manifest["profile_config"] == json.loads(json.dumps(SMOKE.as_dict()))
    assert {"pretrained", "summary", "sha256"} <= set(manifest["weights"])
    for name in ("curation", "registration", "slices"):
        entry = manifest["stages"][name]
        record = json.loads((work / name / STAGE_RECORD).read_text())
        assert entry["key_hash"] == record["key_hash"], name
        assert entry["seconds"] == record["seconds"] and entry["seed"] == SEED
        assert {"device", "precision", "profile", "finished"} <= set(entry)
    runs = sorted((work / "runs").glob("*/combo*"))
    assert len(runs) == len(manifest["runs"]) >= 10
    for out in runs:
        entry = manifest["runs"][f"{out.parent.name}/{out.name}"]
        record = json.loads((out / RUN_RECORD).read_text())
        assert entry["key_hash"] == record["key_hash"]
        assert entry["weights"] == record["key"]["weights"] and entry["seed"] == SEED
        assert record["key"]["software"]["torch"] == manifest["packages"]["torch"]


def test_a_failing_chapter_stops_the_batch_naming_notebook_combination_and_cell(
        reference, tmp_path):
    """Combination 2's run folder is a file: its notebook fails, stays with the error visible,
    the batch stops; once fixed, a rerun executes it again (an errored page is never kept)."""
    work = tmp_path / "work"
    shutil.copytree(reference["work"], work)
    blocker = work / "runs" / "patient" / "combo02"
    blocker.write_text("not a folder")
    kwargs = dict(profile="smoke", seed=SEED, splits=["patient"], device="cpu",
                  weights="none", precision="fp32")
    with pytest.raises(StsnbError) as caught:
        batch.run_training_batch(reference["cohort"], work, combos=[2, 3], **kwargs)
    message = str(caught.value)
    for text in ("04_training.ipynb", "04_training_combo02", "combination 2 (ct-dose-ce_t1w)",
                 "patient split", "code cell", "run_training(", "combo02"):
        assert text in message, (text, message)
    generated = work / "jupyter_book" / "book" / "generated"
    failed = generated / "04_training_combo02.ipynb"
    nb = nbformat.read(failed, as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors and not (generated / "04_training_combo03.ipynb").exists()
    assert not list(generated.glob(".*running*"))
    blocker.unlink()
    done = batch.run_training_batch(reference["cohort"], work, combos=[2], **kwargs)
    assert batch.notebook_errors(done[0]) == []
    nb = nbformat.read(done[0], as_version=4)
    last = next(c for c in reversed(nb.cells) if c.cell_type == "code")
    last.outputs = [nbformat.v4.new_output("error", ename="ValueError",
                                                    evalue="a plot failed", traceback=[])]
    nbformat.write(nb, done[0])
    before = done[0].stat().st_mtime_ns
    again = batch.run_training_batch(reference["cohort"], work, combos=[2], **kwargs)
    assert again[0].stat().st_mtime_ns != before and batch.notebook_errors(again[0]) == []


def test_a_failure_message_quotes_the_line_that_raised_not_the_cell_s_first(tmp_path):
    """The kernel's traceback names the failing line; the message quotes it (colour codes
    removed), so a reader sees `y = 1 / 0` and not the cell's unrelated first line."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from stsnb.run.pages import _cell_text

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = None\nif x is None:\n    y = 1 / 0\nz = 2")]
    source = tmp_path / "fails.ipynb"
    nbformat.write(nb, source)
    with pytest.raises(PapermillExecutionError) as caught:
        papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"),
                                   kernel_name="python3", progress_bar=False)
    assert _cell_text(caught.value.source, caught.value.traceback) == "y = 1 / 0"
    assert _cell_text(caught.value.source, None) == "x = None"
