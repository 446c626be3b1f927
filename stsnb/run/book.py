"""Run first, publish second: execute the chapters with papermill, then build the Jupyter Book.

The default work dir (`work/` in the checkout) publishes into the checkout itself
(`book/generated/`, `_build/html`). Any other work dir gets its own book source under
`<work_dir>/jupyter_book/`, so two cohorts never overwrite each other.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from stsnb.core.errors import StsnbError
from stsnb.core.manifest import manifest_table, read_manifest
from stsnb.core.store import ensure_writable_dir, record_timing, write_text_atomic
from stsnb.run.batch import run_training_batch
from stsnb.run.jobs import merge_leftover_records
from stsnb.run.notebook import markdown_table
from stsnb.run.pages import (
    CHAPTERS,
    CV_CHAPTERS,
    TOO_SMALL_TRAINING_PAGE,
    TRAINING_CHAPTER,
    book_root,
    execute_chapter,
    generated_dir,
    prepare_book_root,
)
from stsnb.run.schedule import RUN, START, WAIT, BesideChapters, chapter_plan


def run_chapters(
    cohort_dir: str | Path,
    work_dir: str | Path,
    profile: str = "auto",
    seed: int = 0,
    chapters: tuple[str, ...] = CHAPTERS,
    combos: tuple[int | str, ...] | None = None,
    device: str = "auto",
    weights: str = "auto",
    backbone: str = "auto",
    executor: Any = None,
    dry_run: bool = False,
) -> list[Path]:
    """Execute the chapters for one cohort and work dir; return the executed notebooks.

    Chapter 04 runs as a batch: every combination (or `combos`) under the patient split, then
    the controls the profile asks for; runs already done with the same configuration are kept.
    `executor` (`stsnb.run.jobs.ExecutorChoice`) says where its pages run (default: here, one after
    the other). With the `processes` executor the appendix and the radiomics chapter run beside
    the others (`stsnb.run.schedule`); otherwise every chapter runs here in book order.
    `dry_run` prints what would run.
    """
    work_dir = ensure_writable_dir(Path(work_dir).resolve())
    root = book_root(work_dir)
    generated = generated_dir(root) if dry_run else prepare_book_root(root)
    parameters = {
        "cohort_dir": str(Path(cohort_dir).resolve()),
        "work_dir": str(work_dir),
        "profile": profile,
        "seed": int(seed),
    }
    unknown = [c for c in chapters if c not in CHAPTERS]
    if unknown:
        raise StsnbError(f"Unknown chapter(s) {unknown}: expected some of {list(CHAPTERS)}.")
    executor_name = getattr(executor, "name", "local")
    plan = chapter_plan(chapters, beside=executor_name == "processes")
    if dry_run:
        outputs: list[Path] = []
        for step, name in plan:
            if step == START:
                print(f"[stsnb] would execute {name} beside the other chapters", flush=True)
            elif step == RUN:
                outputs += _dry_run(name, cohort_dir, work_dir, profile, seed, combos, device,
                                    weights, backbone, executor)
        return outputs
    started = time.perf_counter()
    if merge_leftover_records(work_dir, executor_name):
        print("[stsnb] merged the records of jobs finished in an earlier run", flush=True)
    run = _ChapterRun(cohort_dir, work_dir, profile, seed, generated, parameters,
                      BesideChapters(generated, work_dir, parameters))
    try:
        for step, name in plan:
            if step == START:
                run.start(name)
            elif step == WAIT:
                run.beside.collect(wait_for=[name])
            elif name == TRAINING_CHAPTER:
                run.beside.collect()
                if not run.too_small(name):
                    run.outputs += run_training_batch(
                        cohort_dir, work_dir, profile, seed, combos=combos, device=device,
                        weights=weights, backbone=backbone, executor=executor)
            else:
                run.beside.collect()
                run.here(name, {"device": device} if name == "06_gradcam" else {})
    except BaseException:
        with contextlib.suppress(StsnbError):
            run.beside.close()
        raise
    run.beside.close()
    if tuple(chapters) == CHAPTERS:
        record_timing(work_dir, CHAPTERS_WALL, time.perf_counter() - started)
    return run.outputs


#: timings.csv's row for the wall time of a run of every chapter (chapters that run beside the
#: others make it shorter than the sum of the chapters' rows).
CHAPTERS_WALL = "all chapters (wall time)"


class _ChapterRun:
    """One run of the chapters: where they go, the cohort-size check, the chapters beside."""

    def __init__(self, cohort_dir: str | Path, work_dir: Path, profile: str, seed: int,
                 generated: Path, parameters: dict[str, Any], beside: BesideChapters) -> None:
        self.cohort_dir, self.work_dir, self.profile, self.seed = (cohort_dir, work_dir, profile,
                                                                   seed)
        self.generated, self.parameters, self.beside = generated, parameters, beside
        self.shortfall: str | None = None
        self.outputs: list[Path] = []

    def too_small(self, name: str) -> bool:
        """True when the cohort cannot be cross-validated and `name` needs it: the page that
        says so stands in for the chapter."""
        if name in CV_CHAPTERS and self.shortfall is None:
            self.shortfall = cohort_shortfall(self.work_dir, self.profile, self.seed) or ""
            if self.shortfall:
                print(f"[stsnb] the cohort is too small for cross-validation: {self.shortfall} "
                      f"The chapters {', '.join(CV_CHAPTERS)} are replaced in the book by a "
                      "page that says so.", flush=True)
        if name in CV_CHAPTERS and self.shortfall:
            self.outputs.append(write_too_small_page(self.generated, name, self.shortfall,
                                                     self.profile))
            return True
        remove_too_small_page(self.generated, name)
        return False

    def start(self, name: str) -> None:
        """Start `name` beside the chapters run here (the plan starts each chapter once)."""
        if self.too_small(name):
            return
        self.beside.start(name)
        self.outputs.append(self.generated / f"{name}.ipynb")

    def here(self, name: str, extra: dict[str, Any]) -> None:
        """Execute `name` in this process's kernel, with the cores the chapters beside leave."""
        if self.too_small(name):
            return
        print(f"[stsnb] executing {name} -> {self.generated / (name + '.ipynb')}", flush=True)
        with self.beside.here():
            self.outputs.append(execute_chapter(name, self.generated,
                                                {**self.parameters, **extra}, self.work_dir))


def _dry_run(name: str, cohort_dir: str | Path, work_dir: Path, profile: str, seed: int,
             combos: tuple[int | str, ...] | None, device: str, weights: str, backbone: str,
             executor: Any) -> list[Path]:
    """Print what running chapter `name` would do; run nothing (chapter 04: its pages, those
    that would run and those skipped, once chapter 03's slice store exists)."""
    if name != TRAINING_CHAPTER:
        print(f"[stsnb] would execute {name}", flush=True)
        return []

    try:
        return run_training_batch(cohort_dir, work_dir, profile, seed, combos=combos,
                                  device=device, weights=weights, backbone=backbone,
                                  executor=executor, dry_run=True)
    except StsnbError as exc:
        print(f"[stsnb] would execute every page of {name} (they are listed once chapter 03 "
              f"has run: {str(exc).splitlines()[0]})", flush=True)
        return []


def cohort_shortfall(work_dir: str | Path, profile: str = "auto", seed: int = 0) -> str | None:
    """Why the patients that chapter 02 kept cannot be cross-validated with the profile's folds
    (numbers of patients and events, and what is needed); None when they can."""
    from stsnb.core.config import resolve_profile
    from stsnb.curation.stage import read_cohort_table
    from stsnb.registration import final_patients
    from stsnb.training.folds import cross_validation_shortfall

    config = resolve_profile(profile).training
    kept = final_patients(work_dir)
    cohort = read_cohort_table(work_dir).set_index("patient_id")
    labels = cohort["label"].reindex(kept)
    return cross_validation_shortfall(labels, config.folds, seed, config.validation_fraction)


def write_too_small_page(generated: Path, chapter: str, shortfall: str, profile: str) -> Path:
    """The page that replaces `chapter` in the book when the cohort is too small (any executed
    notebook of that chapter from an earlier run is removed, so the book shows only this)."""
    from stsnb.core.config import resolve_profile

    resolved = resolve_profile(profile)
    name = TOO_SMALL_TRAINING_PAGE if chapter == TRAINING_CHAPTER else chapter
    for stale in ([*generated.glob(f"{TRAINING_CHAPTER}_*.ipynb")]
                  if chapter == TRAINING_CHAPTER else [generated / f"{chapter}.ipynb"]):
        stale.unlink(missing_ok=True)
    title = {"04_training": "04 Training", "05_cv_results": "05 Cross-validated results",
             "05b_radiomics": "05b Radiomics baseline", "08_controls": "Controls",
             "06_gradcam": "06 Grad-CAM",
             "09_reporting": "Reporting checklist: TRIPOD+AI and CLAIM 2024"}[chapter]
    text = (f"# {title}: not run, the cohort is too small\n\n"
            f"The {resolved.name} profile cross-validates over {resolved.training.folds} "
            "patient-grouped folds, stratified by outcome: each fold's test set needs patients "
            "of both classes, and each training set a validation patient, so each class needs "
            f"at least {resolved.training.folds} patients. This cohort: {shortfall}\n\n"
            "Chapters 01-03 ran on it (curation, registration QA, the slice store); this "
            "chapter and the others that need cross-validation are left out rather than "
            "computed on too few patients. Fix: a larger cohort, or a profile with fewer "
            "folds (`smoke`: 2 folds).\n")
    return write_text_atomic(generated / f"{name}.md", text)


def remove_too_small_page(generated: Path, chapter: str) -> None:
    """Remove the too-small page of `chapter` (its notebook is executed this time)."""
    name = TOO_SMALL_TRAINING_PAGE if chapter == TRAINING_CHAPTER else chapter
    (generated / f"{name}.md").unlink(missing_ok=True)


def run_summary_markdown(work_dir: str | Path) -> str:
    """The book's first-page block: the run manifest and the time of each stage."""
    work_dir = Path(work_dir)
    manifest = read_manifest(work_dir)
    lines = ["## This build", ""]
    if not manifest:
        lines.append("No run manifest was found: the chapters have not been executed.")
        return "\n".join(lines) + "\n"
    lines += [
        f"Profile **{manifest.get('profile', '?')}**, seed {manifest.get('seed', '?')}, "
        f"cohort `{manifest.get('cohort_dir', '?')}`.",
        "",
    ]
    weights = manifest.get("weights")
    if weights is not None:
        from stsnb.training.model import network_sentence

        lines += [network_sentence(weights), ""]
    if weights is not None and not weights.get("pretrained", False):
        lines += [
            "```{warning}",
            "The network was **not** initialised with pretrained weights in this build "
            f"({weights.get('summary', 'random weights')}): the results are not transfer "
            "learning.",
            "```",
            "",
        ]
    lines += ["### Run manifest", "", markdown_table(manifest_table(manifest)), ""]
    timings_path = work_dir / "timings.csv"
    if timings_path.exists():
        timings = pd.read_csv(timings_path)
        timings["seconds"] = timings["seconds"].map(lambda s: f"{s:.1f}")
        lines += ["### Time of each stage", "", markdown_table(timings), ""]
    return "\n".join(lines) + "\n"


def build_book(work_dir: str | Path) -> Path:
    """Write the run summary and build the HTML book; return the path of its index.html."""
    work_dir = Path(work_dir).resolve()
    root = book_root(work_dir)
    generated = prepare_book_root(root)
    write_text_atomic(generated / "run_summary.md", run_summary_markdown(work_dir))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book) if jupyter_book.exists() else "jupyter-book", "build",
               str(root), "--builder", "html"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise StsnbError(
            "jupyter-book build failed:\n" + result.stdout[-4000:] + result.stderr[-4000:]
        )
    index = root / "_build" / "html" / "index.html"
    if not index.exists():
        raise StsnbError(f"jupyter-book build produced no {index}.")
    return index
