"""Run first, publish second: execute the chapters with papermill, then build the Jupyter Book.

The default work dir (`work/` in the checkout) publishes into the checkout itself
(`book/generated/`, `_build/html`). Any other work dir gets its own book source under
`<work_dir>/jupyter_book/`, so two cohorts never overwrite each other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd

from .errors import StsnbError
from .manifest import display_path, manifest_table, read_manifest
from .notebook import PATH_PARAMETERS, markdown_table
from .store import atomic_path, ensure_writable_dir, record_timing, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: The chapters in book order; 04_training runs once per combination and split (stsnb.batch).
CHAPTERS: tuple[str, ...] = (
    "01_data_curation",
    "02_registration_qa",
    "03_preprocessing",
    "04_training",
    "05_cv_results",
    "05b_radiomics",  # the radiomics baseline on chapter 04's patient folds
    "08_controls",  # the positive and negative controls on chapter 04's cached features
    "06_gradcam",
    "07_real_cohort",  # appendix: the TCIA sample imported from DICOM (its own cohort)
    "09_reporting",  # TRIPOD+AI and CLAIM 2024 items answered from the work dir
)
TRAINING_CHAPTER = "04_training"
#: The chapters that need the profile's cross-validation (replaced by a page saying so when the
#: cohort is too small for it).
CV_CHAPTERS = ("04_training", "05_cv_results", "05b_radiomics", "08_controls", "06_gradcam",
               "09_reporting")
#: The page that stands for chapter 04's runs when the cohort is too small.
TOO_SMALL_TRAINING_PAGE = "04_training_too_small"
BOOK_FILES = ("_config.yml", "_toc.yml")
#: Cell tags that keep papermill's injected cell and the default parameters out of the book.
HIDDEN_TAGS = {"injected-parameters": "remove-cell", "parameters": "remove-cell"}


def default_work_dir() -> Path:
    """`work/` in the checkout."""
    return REPO_ROOT / "work"


def book_root(work_dir: str | Path) -> Path:
    """Where the book's source lives for this work dir (the checkout for the default one)."""
    work_dir = Path(work_dir).resolve()
    if work_dir == default_work_dir().resolve():
        return REPO_ROOT
    return work_dir / "jupyter_book"


def prepare_book_root(root: Path) -> Path:
    """Copy the static book files into `root` (a no-op for the checkout); return generated/."""
    if root != REPO_ROOT:
        root.mkdir(parents=True, exist_ok=True)
        for name in BOOK_FILES:
            shutil.copy2(REPO_ROOT / name, root / name)
        for path in (REPO_ROOT / "book").rglob("*"):
            rel = path.relative_to(REPO_ROOT)
            if path.is_file() and "generated" not in rel.parts:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, root / rel)
    generated = generated_dir(root)
    generated.mkdir(parents=True, exist_ok=True)
    return generated


def generated_dir(root: Path) -> Path:
    """The executed chapters' folder of a book source `root` (made by `prepare_book_root`)."""
    return root / "book" / "generated"


def _without_machine_paths(text: str, roots: list[str]) -> str:
    """`text` with each absolute root replaced by its display path (longest first)."""
    for root in sorted(roots, key=len, reverse=True):
        text = text.replace(root, display_path(root))
    return text


def hide_parameter_cells(path: Path, roots: tuple[str | Path, ...] = ()) -> None:
    """Tag papermill's injected cell and the defaults cell so the book leaves them out, and
    write the absolute `roots` (cohort, work dir, checkout) in the injected cell and papermill's
    metadata as display paths: an executed chapter holds no absolute path of the machine."""
    nb = nbformat.read(path, as_version=4)
    absolute = [str(r) for r in (*roots, REPO_ROOT, path.parent) if Path(r).is_absolute()]
    absolute = [r for r in absolute if r != "/"]
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        extra = [HIDDEN_TAGS[t] for t in tags if t in HIDDEN_TAGS]
        if extra:
            cell["metadata"]["tags"] = sorted(set(tags) | set(extra))
        if "injected-parameters" in tags:
            cell.source = _without_machine_paths(cell.source, absolute)
    meta = nb.metadata.get("papermill")
    if meta is not None:
        nb.metadata["papermill"] = json.loads(_without_machine_paths(json.dumps(meta), absolute))
    with atomic_path(path) as tmp:
        nbformat.write(nb, tmp)


def failure_message(source: str, page: str, run: str | None, where: str, error: str,
                    target: Path) -> str:
    """What a user reads when an executed chapter fails: notebook, run, cell, error, where."""
    what = f" for {run}" if run else ""
    return (f"Notebook {source} ({page}){what} failed in {where}: {error}. The executed "
            f"notebook, with the error visible, is at {target}. Fix: read the error there, "
            "correct the input or setting it names, and run again (finished work is reused).")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILING_LINE = re.compile(r"^-+>\s*\d+\s+(.*)$")


def _cell_text(source: str, traceback: list[str] | None = None) -> str:
    """The cell's line that raised (from the kernel's traceback), else its first code line,
    shortened, for an error message."""
    marked = (_FAILING_LINE.match(line.strip()) for entry in traceback or []
              for line in _ANSI.sub("", entry).splitlines())
    failing = next((m.group(1).strip() for m in marked if m and m.group(1).strip()), "")
    lines = [line.strip() for line in source.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    first = failing or (lines[0] if lines else "")
    return first if len(first) <= 70 else first[:67] + "..."


def notebook_errors(path: Path) -> list[str]:
    """'ename: evalue' of every error output in an executed notebook (empty when it ran clean)."""
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:
        return [f"unreadable notebook: {exc}"]
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def execute_chapter(
    name: str,
    out_dir: Path,
    parameters: dict[str, Any],
    work_dir: Path,
    stage_name: str | None = None,
    run: str | None = None,
) -> Path:
    """Execute `notebooks/<name>.ipynb` with papermill into `out_dir`; return the output path.

    The notebook runs into a temporary file that replaces the output only on success; a failure
    (an error in a cell, or a kernel that died) leaves the executed notebook, error included, at
    the output path and raises a StsnbError naming the notebook, `run` (e.g. the combination
    and split) and the failing cell.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    source = NOTEBOOK_DIR / f"{name}.ipynb"
    if not source.exists():
        raise StsnbError(f"Notebook {source.name} not found in notebooks/.")
    out_name = f"{stage_name or name}.ipynb"
    target = out_dir / out_name
    tmp = out_dir / f".{stage_name or name}.running.ipynb"
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source),
            str(tmp),
            parameters=parameters,
            cwd=str(NOTEBOOK_DIR),
            kernel_name="python3",
            progress_bar=False,
        )
    except PapermillExecutionError as exc:
        os.replace(tmp, target)
        where = (f"code cell {exc.exec_count} (cell {exc.cell_index + 1} of the notebook, "
                 f"`{_cell_text(exc.source, exc.traceback)}`)")
        raise StsnbError(failure_message(source.name, stage_name or name, run, where,
                                         f"{exc.ename}: {exc.evalue}", target)) from exc
    except (DeadKernelError, CellTimeoutError) as exc:
        if not tmp.exists():
            raise
        os.replace(tmp, target)
        raise StsnbError(failure_message(
            source.name, stage_name or name, run, "the cell that was running",
            f"{type(exc).__name__} (the kernel died or timed out, e.g. out of memory): "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", target)) from exc
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    os.replace(tmp, target)
    roots = tuple(v for k, v in parameters.items()
                  if k in PATH_PARAMETERS and isinstance(v, str) and Path(v).is_absolute())
    hide_parameter_cells(target, roots)
    record_timing(work_dir, f"chapter {stage_name or name}", time.perf_counter() - started)
    return target


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
    """Execute each chapter in order for one cohort and work dir; return the executed notebooks.

    Chapter 04 runs as a batch: every combination (or `combos`) under the patient split, then
    the controls the profile asks for; runs already done with the same configuration are kept.
    `executor` (`stsnb.jobs.ExecutorChoice`) says where its pages run (default: here, one after
    the other); every other chapter runs here, after them. `dry_run` prints what would run.
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
    outputs = []
    shortfall = None
    for name in chapters:
        if dry_run:
            outputs += _dry_run(name, cohort_dir, work_dir, profile, seed, combos, device,
                                weights, backbone, executor)
            continue
        if name in CV_CHAPTERS and shortfall is None:
            shortfall = cohort_shortfall(work_dir, profile, seed) or ""
            if shortfall:
                print(f"[stsnb] the cohort is too small for cross-validation: {shortfall} The "
                      f"chapters {', '.join(CV_CHAPTERS)} are replaced in the book by a page "
                      "that says so.", flush=True)
        if name in CV_CHAPTERS and shortfall:
            outputs.append(write_too_small_page(generated, name, shortfall, profile))
            continue
        remove_too_small_page(generated, name)
        if name == TRAINING_CHAPTER:
            from .batch import run_training_batch

            outputs += run_training_batch(cohort_dir, work_dir, profile, seed, combos=combos,
                                          device=device, weights=weights, backbone=backbone,
                                          executor=executor)
            continue
        extra = {"device": device} if name == "06_gradcam" else {}
        print(f"[stsnb] executing {name} -> {generated / (name + '.ipynb')}", flush=True)
        outputs.append(execute_chapter(name, generated, {**parameters, **extra}, work_dir))
    return outputs


def _dry_run(name: str, cohort_dir: str | Path, work_dir: Path, profile: str, seed: int,
             combos: tuple[int | str, ...] | None, device: str, weights: str, backbone: str,
             executor: Any) -> list[Path]:
    """Print what running chapter `name` would do; run nothing (chapter 04: its pages, those
    that would run and those skipped, once chapter 03's slice store exists)."""
    if name != TRAINING_CHAPTER:
        print(f"[stsnb] would execute {name}", flush=True)
        return []
    from .batch import run_training_batch

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
    from .config import resolve_profile
    from .curation import read_cohort_table
    from .folds import cross_validation_shortfall
    from .registration import final_patients

    config = resolve_profile(profile).training
    kept = final_patients(work_dir)
    cohort = read_cohort_table(work_dir).set_index("patient_id")
    labels = cohort["label"].reindex(kept)
    return cross_validation_shortfall(labels, config.folds, seed, config.validation_fraction)


def write_too_small_page(generated: Path, chapter: str, shortfall: str, profile: str) -> Path:
    """The page that replaces `chapter` in the book when the cohort is too small (any executed
    notebook of that chapter from an earlier run is removed, so the book shows only this)."""
    from .config import resolve_profile

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
        from .model import network_sentence

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
