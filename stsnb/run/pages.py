"""The book's pages: the chapters, where their sources and executed copies live, and running one.

A chapter is a notebook in ``notebooks/``, executed by papermill into the book source's
``book/generated/`` folder (the checkout for the default work dir, ``<work_dir>/jupyter_book/``
for any other). The source folder is the checkout holding this package, or ``$STSNB_SOURCE``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import nbformat

from stsnb.core.errors import StsnbError
from stsnb.core.manifest import display_path
from stsnb.core.store import atomic_path, record_timing
from stsnb.run.notebook import PATH_PARAMETERS

#: Where the notebooks, ``_config.yml``, ``_toc.yml`` and ``book/`` are read from when the
#: package is installed outside its checkout.
SOURCE_ENV = "STSNB_SOURCE"
REPO_ROOT = Path(os.environ.get(SOURCE_ENV) or Path(__file__).resolve().parents[2])
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: The chapters in book order; 04_training runs once per combination and split (stsnb.run.batch).
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




def retitle(path: Path, title: str) -> None:
    """Give an executed chapter its own first heading (the book's page title and its toc)."""
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "markdown")
    lines = first.source.splitlines()
    first.source = "\n".join([f"# {title}", *lines[1:]])
    with atomic_path(path) as tmp:
        nbformat.write(nb, tmp)
