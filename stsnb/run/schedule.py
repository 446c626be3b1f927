"""Which chapters run beside the others, and when: the book's order of execution.

On a CPU whose chapter-04 pages run as processes (`stsnb.run.jobs.auto_executor`), the chapters
that leave a core idle (kernel starts, imports, figures, single-threaded statistics) share the
machine with two that need nothing from them:

- the appendix (``07_real_cohort``) imports and registers its own cohort: it starts at once, beside
  chapters 01-03;
- the radiomics chapter (``05b_radiomics``) reads the registration and the slice store: it starts
  after chapter 03, beside chapter 04's pages (its features are done before the controls need
  them, so no chapter waits for it).

A chapter that reads one of them waits for it (`WAITS_FOR`): the controls read the radiomics
features, and the reporting page reads everything. Each chapter running beside writes its
timings and manifest entries in its own job folder (``<work_dir>/jobs/<chapter>/``), merged by
this process between two chapters, as chapter 04's jobs are (`stsnb.run.jobs.merge_job_record`);
while one runs, the chapters run here get the cores it leaves (torch and BLAS threads).
Elsewhere (one core, a GPU, SLURM) every chapter runs here in book order.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stsnb.core.errors import StsnbError
from stsnb.run.jobs import THREAD_VARIABLES, PageJob, environment, merge_job_record, run_page

#: Chapters that may run beside the others, and the chapters they start after (the last of
#: those in the run; at once when none is).
BESIDE: dict[str, tuple[str, ...]] = {
    "07_real_cohort": (),
    "05b_radiomics": ("01_data_curation", "02_registration_qa", "03_preprocessing"),
}
#: Chapters that read a chapter of BESIDE (they wait for it when it runs beside them).
WAITS_FOR: dict[str, tuple[str, ...]] = {
    "08_controls": ("05b_radiomics",),
    "09_reporting": tuple(BESIDE),
}
#: The plan's steps: start a chapter beside, run one here, wait for one started beside.
START, RUN, WAIT = "start", "run", "wait"
#: Threads each chapter running beside uses (its kernel; the radiomics chapter's MIRP workers
#: and the appendix's registration workers are processes of one thread each).
BESIDE_THREADS = 1


def chapter_plan(chapters: Sequence[str], beside: bool) -> list[tuple[str, str]]:
    """The steps that execute `chapters` (book order): (START, name), (RUN, name), (WAIT, name).

    Without `beside`, every chapter runs here in order. With it, the chapters of BESIDE start
    beside the others after the last of their `BESIDE` chapters in the run (at once when none);
    a chapter that reads one of them (`WAITS_FOR`) runs after those that do not, and waits for it.

    >>> chapter_plan(["01_data_curation", "07_real_cohort"], beside=False)
    [('run', '01_data_curation'), ('run', '07_real_cohort')]
    >>> chapter_plan(["03_preprocessing", "04_training", "05_cv_results", "05b_radiomics",
    ...               "08_controls", "06_gradcam"], beside=True)  # doctest: +NORMALIZE_WHITESPACE
    [('run', '03_preprocessing'), ('start', '05b_radiomics'), ('run', '04_training'),
     ('run', '05_cv_results'), ('run', '06_gradcam'), ('wait', '05b_radiomics'),
     ('run', '08_controls')]
    """
    if not beside:
        return [(RUN, name) for name in chapters]
    aside = [name for name in chapters if name in BESIDE]
    here = [name for name in chapters if name not in BESIDE]
    here = [n for n in here if n not in WAITS_FOR] + [n for n in here if n in WAITS_FOR]

    def after(name: str) -> str | None:
        present = [n for n in BESIDE[name] if n in here]
        return max(present, key=here.index) if present else None

    plan = [(START, name) for name in aside if after(name) is None]
    started = {name for _, name in plan}
    for name in here:
        plan += [(WAIT, other) for other in WAITS_FOR.get(name, ()) if other in started]
        started -= set(WAITS_FOR.get(name, ()))
        plan.append((RUN, name))
        for other in aside:
            if after(other) == name:
                plan.append((START, other))
                started.add(other)
    plan += [(WAIT, name) for name in aside if name in started]
    return plan


class BesideChapters:
    """Chapters executed in worker processes beside this one, each in its own job folder."""

    def __init__(self, generated: Path, work_dir: Path, parameters: dict[str, Any]) -> None:
        self.generated, self.work_dir, self.parameters = generated, work_dir, parameters
        self.running: dict[str, Future] = {}
        self.done: set[str] = set()
        self._pool: ProcessPoolExecutor | None = None

    def start(self, name: str) -> None:
        """Start chapter `name` beside this process (nothing when started already)."""
        if name in self.running or name in self.done:
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=len(BESIDE),
                                             mp_context=multiprocessing.get_context("spawn"))
        job = PageJob(name=name, combo=0, split="", run=f"chapter {name} beside the others",
                      title="", chapter=name, generated=str(self.generated),
                      work_dir=str(self.work_dir), parameters=self.parameters,
                      threads=BESIDE_THREADS, job_dir=str(self.work_dir / "jobs" / name))
        print(f"[stsnb] executing {name} beside the other chapters -> "
              f"{self.generated / (name + '.ipynb')}", flush=True)
        self.running[name] = self._pool.submit(run_page, job)

    def collect(self, wait_for: Sequence[str] = ()) -> None:
        """Merge the records of the chapters that finished, after waiting for `wait_for`;
        a StsnbError names a chapter that failed (the others' records are merged first)."""
        for name in wait_for:
            if name in self.running and not self.running[name].done():
                print(f"[stsnb] waiting for {name} (running beside)", flush=True)
                started = time.perf_counter()
                self.running[name].exception()  # waits; the outcome carries any error
                print(f"[stsnb] {name} done after {time.perf_counter() - started:.1f} s of "
                      "waiting", flush=True)
        errors = []
        for name, future in list(self.running.items()):
            if not future.done():
                continue
            del self.running[name]
            self.done.add(name)
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - the worker died: reported below
                errors.append(f"{name} (running beside the other chapters) did not finish: "
                              f"{type(exc).__name__}: {str(exc).strip()[-600:]}")
                continue
            merge_job_record(self.work_dir, self.work_dir / "jobs" / name, "processes", outcome)
            if not outcome.ok:
                errors.append(outcome.report())
        if errors:
            raise StsnbError("\n".join(errors))

    @contextmanager
    def here(self) -> Iterator[None]:
        """Run a chapter here with the cores the chapters running beside leave (at least 1)."""
        if not self.running:
            yield
            return
        threads = max(1, (os.cpu_count() or 1) - BESIDE_THREADS * len(self.running))
        with environment({name: str(threads) for name in THREAD_VARIABLES}):
            yield

    def close(self) -> None:
        """Wait for the chapters still running beside and merge their records (also after a
        failure here: what they computed is kept)."""
        if self.running:
            print(f"[stsnb] waiting for {', '.join(self.running)} (running beside)", flush=True)
        try:
            self.collect(wait_for=list(self.running))
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
