"""Chapter 04's pages on the three executors: two pages at once in processes give the local
executor's predictions byte for byte; the SLURM path through submitit's local executor (the same
job objects, run on this machine) reports a failing page by notebook, combination and cell,
cancels what had not started, and a rerun skips the finished pages. Only the submitting process
writes timings.csv and the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_reliability import SEED, copy_work

from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.manifest import MANIFEST, manifest_table, read_manifest
from stsnb.run import batch, jobs
from stsnb.run.jobs import ExecutorChoice, JobOutcome, SlurmSettings

pytestmark = pytest.mark.smoke

KWARGS = dict(profile="smoke", seed=SEED, splits=["patient"], device="cpu", weights="none",
              precision="fp32")
PAGES = ("04_training_combo02", "04_training_combo03")


def generated(work: Path) -> Path:
    return work / "jupyter_book" / "book" / "generated"


def predictions(work: Path) -> dict[str, bytes]:
    """Every predictions.csv of the work dir's runs (both heads), by relative path."""
    return {p.relative_to(work).as_posix(): p.read_bytes()
            for p in sorted((work / "runs").rglob("predictions.csv"))}


@pytest.fixture(scope="module")
def local_run(smoke_book, tmp_path_factory) -> Path:
    """Combinations 2 and 3 (patient split) on the local executor, one after the other."""
    work = copy_work(smoke_book, tmp_path_factory.mktemp("local") / "work")
    batch.run_training_batch(smoke_book["cohort_dir"], work, combos=[2, 3], **KWARGS)
    return work


def test_processes_run_two_pages_at_once_with_the_local_predictions(local_run, smoke_book,
                                                                     tmp_path):
    work = copy_work(smoke_book, tmp_path / "work")
    choice = ExecutorChoice("processes", jobs=2)
    assert choice.threads_per_job() >= 1
    out = batch.run_training_batch(smoke_book["cohort_dir"], work, combos=[2, 3],
                                   executor=choice, **KWARGS)
    assert [p.stem for p in out] == list(PAGES)
    expected = predictions(local_run)
    for combo in ("combo02", "combo03"):  # both heads, the runs and each of their folds
        assert {f"runs/patient/{combo}/predictions.csv",
                f"runs/patient/{combo}/linear/predictions.csv"} <= set(expected)
    assert predictions(work) == expected
    manifest = read_manifest(work)
    assert manifest["executor"] == "processes"
    entries = [manifest["jobs"][name] for name in PAGES]
    assert all(e["ok"] and e["host"] and e["executor"] == "processes" for e in entries)
    first, second = sorted(entries, key=lambda e: e["started"])
    assert second["started"] < first["started"] + first["seconds"]  # they overlapped
    assert {"patient/combo02", "patient/combo03"} <= set(manifest["runs"])
    assert manifest["stages"]["training"]["precision"] == "fp32"
    shown = dict(manifest_table(manifest).values)["chapter 04 pages"]
    assert "processes executor, on " in shown and entries[0]["host"] in shown
    # the jobs' own records were merged and removed: one timings.csv, written by the submitter
    timings = pd.read_csv(work / "timings.csv")
    for name in PAGES:
        assert f"chapter {name}" in set(timings["stage"])
    assert timings["stage"].is_unique
    for name in PAGES:
        left = {p.name for p in (work / "jobs" / name).iterdir()}
        assert left == {jobs.JOB_LOG}, left
        assert "thread(s)" in (work / "jobs" / name / jobs.JOB_LOG).read_text()


def test_slurm_jobs_through_submitit_fail_clearly_cancel_and_resume(local_run, smoke_book,
                                                                     tmp_path, capsys):
    """submitit's local executor runs the job objects a cluster would: combination 3 fails
    (its run folder is a file), combination 2, not started, is cancelled; fixed, both run;
    run again, both are skipped before submission."""
    work = copy_work(smoke_book, tmp_path / "work")
    config = tmp_path / "slurm.toml"
    config.write_text('[slurm]\ncluster = "local"\ncpus_per_task = 1\ntime_min = 20\n'
                      'mem_gb = 4\n')
    choice = jobs.executor_choice(batch_args(["--executor", "slurm", "--slurm-config",
                                               str(config), "--jobs", "1"]))
    assert choice.slurm.cluster == "local" and choice.threads_per_job() == 1
    blocker = work / "runs" / "patient" / "combo03"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    with pytest.raises(StsnbError) as caught:
        batch.run_training_batch(smoke_book["cohort_dir"], work, combos=[3, 2],
                                 executor=choice, **KWARGS)
    message = str(caught.value)
    for text in ("04_training.ipynb", "04_training_combo03", "combination 3", "patient split",
                 "code cell", "slurm executor", "Job log:"):
        assert text in message, (text, message)
    assert not (generated(work) / "04_training_combo02.ipynb").exists()  # cancelled
    assert read_manifest(work)["jobs"]["04_training_combo03"]["ok"] is False
    blocker.unlink()
    out = batch.run_training_batch(smoke_book["cohort_dir"], work, combos=[3, 2],
                                   executor=choice, **KWARGS)
    assert sorted(p.stem for p in out) == sorted(PAGES)
    assert predictions(work) == predictions(local_run)  # 1 thread per job, same numbers
    stamps = {p: p.stat().st_mtime_ns for p in out}
    submitted = sorted((work / "jobs" / "slurm").iterdir())
    capsys.readouterr()
    again = batch.run_training_batch(smoke_book["cohort_dir"], work, combos=[3, 2],
                                     executor=choice, **KWARGS)
    assert {p: p.stat().st_mtime_ns for p in again} == stamps
    assert sorted((work / "jobs" / "slurm").iterdir()) == submitted  # nothing submitted
    assert capsys.readouterr().out.count("done with this configuration, skipped") == 2


def batch_args(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    jobs.add_executor_arguments(parser)
    return parser.parse_args(argv)


def test_dry_run_lists_pages_and_runs_nothing(local_run, smoke_book, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(local_run, work)
    shutil.rmtree(work / "runs" / "patient" / "combo03")
    capsys.readouterr()
    out = batch.run_training_batch(smoke_book["cohort_dir"], work, combos=[2, 3],
                                   dry_run=True, **KWARGS)
    printed = capsys.readouterr().out
    assert "04_training_combo02: done with this configuration, skipped" in printed
    assert "would execute 04_training (combination 3" in printed
    assert [p.stem for p in out] == ["04_training_combo02"]
    assert not (work / "runs" / "patient" / "combo03").exists()


def test_slurm_settings_from_toml_and_command_line(tmp_path):
    path = tmp_path / "slurm.toml"
    path.write_text('partition = "gpu"\ntime_min = 90\ngpus_per_node = 1\ncpus_per_task = 8\n'
                    'mem_gb = 32\nsetup = ["module load cuda"]\n'
                    '[additional]\nconstraint = "a100"\n')
    settings = SlurmSettings.from_toml(path, cpus_per_task=6, partition=None)
    assert (settings.partition, settings.cpus_per_task, settings.gpus_per_node) == ("gpu", 6, 1)
    params = settings.submitit_parameters()
    assert params["partition"] == "gpu" and params["time"] == 90 and params["mem"] == "32768MB"
    assert params["setup"] == ["module load cuda"]
    assert params["additional_parameters"] == {"constraint": "a100"}
    assert params["gpus_per_node"] == 1 and params["cpus_per_task"] == 6
    # the sbatch script submitit would write (no cluster needed to make it)
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="python -m x", folder=str(tmp_path), **params)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --mem=32768MB",
                 "#SBATCH --constraint=a100", "module load cuda"):
        assert line in script, (line, script)
    assert ExecutorChoice("slurm", 4, slurm=settings).threads_per_job() == 6
    path.write_text('partiton = "gpu"\n')
    with pytest.raises(ConfigError, match="partiton"):
        SlurmSettings.from_toml(path)
    path.write_text("time_min = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SlurmSettings.from_toml(path)
    with pytest.raises(ConfigError, match="executor"):
        ExecutorChoice("threads")
    with pytest.raises(SystemExit):
        batch_args(["--executor", "threads"])
    with pytest.raises(ConfigError, match="jobs"):
        ExecutorChoice("processes", jobs=0)


def test_a_job_s_record_changes_only_what_the_job_computed(tmp_path, monkeypatch):
    """A job that started before another finished must not put back the older entries it saw:
    its manifest record holds only its own changes."""
    from stsnb.core.config import SMOKE
    from stsnb.core.manifest import update_manifest
    from stsnb.core.store import JOB_DIR_ENV, record_timing, write_json_atomic

    work = tmp_path / "work"
    cohort = tmp_path / "cohort"
    work.mkdir()
    cohort.mkdir()
    write_json_atomic(work / MANIFEST, {"runs": {"patient/combo01": {"key_hash": "old"}},
                                        "profile": "smoke"})
    job_dir = work / "jobs" / "04_training_combo02"
    job_dir.mkdir(parents=True)
    monkeypatch.setenv(JOB_DIR_ENV, str(job_dir))
    seen = update_manifest(work, profile=SMOKE, cohort_dir=cohort, seed=0, stage="training",
                           cohort_sha256="x", runs={"patient/combo02": {"key_hash": "b"}})
    record_timing(work, "features combo02", 1.5)
    assert seen["runs"]["patient/combo01"] == {"key_hash": "old"}  # the job sees the whole
    assert not (work / "timings.csv").exists()
    monkeypatch.delenv(JOB_DIR_ENV)
    # meanwhile another job re-ran combination 1 and was merged
    write_json_atomic(work / MANIFEST, {"runs": {"patient/combo01": {"key_hash": "new"}},
                                        "profile": "smoke"})
    jobs.merge_job_record(work, job_dir, "processes",
                          JobOutcome("04_training_combo02", host="node1", seconds=2.0))
    manifest = read_manifest(work)
    assert manifest["runs"] == {"patient/combo01": {"key_hash": "new"},
                                "patient/combo02": {"key_hash": "b"}}
    assert manifest["jobs"]["04_training_combo02"]["host"] == "node1"
    assert pd.read_csv(work / "timings.csv").to_dict("records") == [
        {"stage": "features combo02", "seconds": 1.5}]
    assert not list(job_dir.iterdir())


def test_book_dry_run_lists_every_chapter_and_runs_nothing(tmp_path, capsys):
    """`stsnb run --dry-run` on a work dir where nothing has run: every chapter listed, chapter
    04's pages said to follow chapter 03, nothing written but the work dir itself."""
    from stsnb.run.cli import main
    from stsnb.run.pages import CHAPTERS

    work = tmp_path / "work"
    assert main(["run", "--work-dir", str(work), "--profile", "smoke", "--dry-run",
                 "--executor", "processes", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    for name in CHAPTERS:
        assert name in printed
    assert "would execute every page of 04_training" in printed and "chapter 03" in printed
    assert sorted(p.name for p in work.iterdir()) == []


def test_auto_runs_two_pages_at_once_on_a_multi_core_cpu_and_one_on_a_gpu(monkeypatch):
    assert jobs.auto_executor("cpu", cores=2) == "processes"
    assert jobs.auto_executor("cpu", cores=1) == "local"
    assert jobs.auto_executor("auto", cores=4, gpu=True) == "local"
    assert jobs.auto_executor("cuda:0", cores=16) == "local"
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 2)
    args = batch_args([])
    assert args.executor == "auto"
    args.device = "cpu"
    choice = jobs.executor_choice(args)
    assert (choice.name, choice.jobs, choice.threads_per_job()) == ("processes", 2, 1)
    args.device = "cuda"
    assert jobs.executor_choice(args) == ExecutorChoice("local", 1)
    assert jobs.executor_choice(batch_args(["--executor", "local"])).name == "local"


def test_chapter_plan_runs_the_appendix_and_radiomics_beside_the_others():
    """The book's order on a CPU: the appendix at once, the radiomics chapter after chapter 03
    (beside chapter 04); the controls wait for the radiomics features, the reporting page for
    all."""
    from stsnb.run.pages import CHAPTERS
    from stsnb.run.schedule import chapter_plan

    plan = chapter_plan(CHAPTERS, beside=True)
    assert plan == [("start", "07_real_cohort"), ("run", "01_data_curation"),
                    ("run", "02_registration_qa"), ("run", "03_preprocessing"),
                    ("start", "05b_radiomics"), ("run", "04_training"),
                    ("run", "05_cv_results"), ("run", "06_gradcam"),
                    ("wait", "05b_radiomics"), ("run", "08_controls"),
                    ("wait", "07_real_cohort"), ("run", "09_reporting")]
    assert chapter_plan(CHAPTERS, beside=False) == [("run", name) for name in CHAPTERS]
    # a part of the book: each chapter still starts after those it reads and is waited for
    assert chapter_plan(["02_registration_qa", "05b_radiomics", "08_controls"], beside=True) == [
        ("run", "02_registration_qa"), ("start", "05b_radiomics"), ("wait", "05b_radiomics"),
        ("run", "08_controls")]
    assert chapter_plan(["05b_radiomics", "07_real_cohort"], beside=True) == [
        ("start", "05b_radiomics"), ("start", "07_real_cohort"), ("wait", "05b_radiomics"),
        ("wait", "07_real_cohort")]


def test_the_smoke_book_ran_chapters_beside_each_other_and_merged_their_records(smoke_book):
    """The shared smoke book ran as `make book` does on a CPU: the appendix and the radiomics
    chapter in worker processes, their records merged into timings.csv and the manifest by the
    submitting process (none left in their job folders), the radiomics chapter after chapter 03
    and before the controls, which found its features."""
    from stsnb.core.store import TIMINGS
    from stsnb.run.book import CHAPTERS_WALL
    from stsnb.run.jobs import JOB_RECORD

    work = smoke_book["work_dir"]
    manifest = read_manifest(work)
    timings = pd.read_csv(work / TIMINGS).set_index("stage")["seconds"]
    for name in ("07_real_cohort", "05b_radiomics"):
        assert manifest["jobs"][name]["ok"] is True
        assert timings[f"chapter {name}"] > 0
        assert not [p.name for p in (work / "jobs" / name).iterdir()
                    if p.name in (TIMINGS, MANIFEST, JOB_RECORD)]
    pages = {k: v for k, v in manifest["jobs"].items() if k.startswith("04_training")}
    assert len(pages) >= 2
    radiomics = manifest["jobs"]["05b_radiomics"]  # beside chapter 04's first pages
    assert radiomics["started"] <= min(p["started"] for p in pages.values()) + 1
    chapters = timings[[s for s in timings.index if s.startswith("chapter ")]]
    assert 0 < timings[CHAPTERS_WALL] < chapters.sum()
    controls = pd.read_csv(work / "controls" / "radiomics.csv")
    assert set(controls["kind"]) == {"positive", "negative"}
    assert "07_real_cohort" in manifest["jobs"] and "radiomics" in manifest["stages"]
    # the appendix's own stages kept their records in its own work dir, not the book's
    real = work / "real_cohort" / "work"
    assert read_manifest(real)["cohort_dir"] != manifest["cohort_dir"]
    assert manifest["cohort_dir"].endswith(smoke_book["cohort_dir"].name)
    assert "registration" in set(pd.read_csv(real / TIMINGS)["stage"])


def test_a_chapter_failing_beside_the_others_is_reported_by_name_with_its_log(tmp_path):
    """A chapter running beside the others that fails (the appendix given a DICOM folder that
    does not exist) raises one error naming the notebook, the failing cell and the job's log;
    its record is merged and the executed notebook, error included, is kept."""
    from stsnb.run.schedule import BesideChapters

    work = tmp_path / "work"
    generated = tmp_path / "generated"
    generated.mkdir()
    parameters = {"cohort_dir": str(tmp_path), "work_dir": str(work), "profile": "smoke",
                  "seed": 0, "sample_dir": str(tmp_path / "no-such-sample")}
    beside = BesideChapters(generated, work, parameters)
    beside.start("07_real_cohort")
    assert list(beside.running) == ["07_real_cohort"]
    with pytest.raises(StsnbError) as error:
        beside.close()
    message = str(error.value)
    assert "07_real_cohort" in message and "no-such-sample" in message
    assert "cell" in message and str(work / "jobs" / "07_real_cohort" / "job.log") in message
    assert (generated / "07_real_cohort.ipynb").exists()
    assert read_manifest(work)["jobs"]["07_real_cohort"]["ok"] is False
    assert not (work / "jobs" / "07_real_cohort" / "job.json").exists()


def test_a_job_keeps_in_its_folder_only_the_records_of_its_own_work_dir(tmp_path, monkeypatch):
    """Inside a job, the records of its work dir go to its own folder (merged later), while a
    stage working on another work dir (the appendix's own cohort) writes that one as usual: the
    book's timings and manifest never take the appendix's curation or registration."""
    from stsnb.core.config import resolve_profile
    from stsnb.core.manifest import update_manifest
    from stsnb.core.store import JOB_DIR_ENV, JOB_WORK_DIR_ENV, TIMINGS, job_dir, record_timing

    work, other, own = tmp_path / "work", tmp_path / "work" / "real_cohort" / "work", \
        tmp_path / "work" / "jobs" / "07_real_cohort"
    for folder in (work, other, own):
        folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv(JOB_DIR_ENV, str(own))
    monkeypatch.setenv(JOB_WORK_DIR_ENV, str(work))
    assert job_dir(work) == own and job_dir(other) is None
    record_timing(work, "chapter 07_real_cohort", 3.0)
    record_timing(other, "registration", 7.0)
    update_manifest(other, profile=resolve_profile("smoke"), cohort_dir=tmp_path / "sample",
                    seed=0, stage="registration")
    assert pd.read_csv(own / TIMINGS)["stage"].tolist() == ["chapter 07_real_cohort"]
    assert pd.read_csv(other / TIMINGS)["stage"].tolist() == ["registration"]
    assert "registration" in read_manifest(other)["stages"]
    assert not (own / MANIFEST).exists() and not (work / TIMINGS).exists()
    monkeypatch.delenv(JOB_WORK_DIR_ENV)  # a job started elsewhere: every work dir is its own
    assert job_dir(other) == own
