"""Where chapter 04's pages run: one after the other in this process (`local`), N at once in
worker processes of this machine (`processes`), or as SLURM jobs through submitit (`slurm`).

Every executor runs the same picklable `PageJob` with `run_page`. A job sets its own thread
counts (torch and BLAS, through the environment its papermill kernel inherits), and writes its
timings and manifest entries into its own folder (``<work_dir>/jobs/<page>/``, named by
``STSNB_JOB_DIR``); only the submitting process writes ``timings.csv`` and ``manifest.json``,
merging each finished job's record (`merge_job_record`). Jobs of one combination share its
feature cache: a job waits while another of its combination runs. The work dir must be on a file
system every node sees (the only assumption of the `slurm` executor).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.store import (
    JOB_DIR_ENV,
    JOB_WORK_DIR_ENV,
    MANIFEST,
    TIMINGS,
    read_json,
    record_timing,
    write_json_atomic,
)

EXECUTORS = ("local", "processes", "slurm")
#: Seconds between two kernel starts of the `processes` executor (papermill's kernels pick
#: their ports when they start; starts at the same instant can race for them).
STAGGER_S = 3.0
#: Seconds between two looks at the running jobs.
POLL_S = 1.0
#: Environment variables that set torch's and the BLAS libraries' thread counts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
JOB_LOG = "job.log"
JOB_RECORD = "job.json"


@dataclass(frozen=True)
class PageJob:
    """One executed page of chapter 04: what to run, where, and with how many threads."""

    name: str  # page (executed notebook) name, e.g. 04_training_combo09_slice
    combo: int
    split: str
    run: str  # what the page computes, for messages: "combination 9 (...), slice split"
    title: str  # the executed page's first heading ("" keeps the notebook's own)
    chapter: str  # the notebook in notebooks/ that it executes
    generated: str  # folder of the executed notebooks
    work_dir: str
    parameters: dict[str, Any]
    threads: int  # torch and BLAS threads of the job's kernel
    job_dir: str | None = None  # its own records (None: the submitting process writes them)


@dataclass
class JobOutcome:
    """How a job ended: `error` is empty on success, else what failed (notebook, combination,
    cell); `log` is the job's log file."""

    name: str
    error: str = ""
    host: str = ""
    started: float = 0.0  # when it started (s since the epoch)
    seconds: float = 0.0
    log: str = ""
    executed: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def report(self) -> str:
        """What failed, with the job's log when it has one."""
        return self.error + (f" Job log: {self.log}." if self.log else "")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block (restored after)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_page(job: PageJob) -> JobOutcome:
    """Execute one page (papermill) with the job's thread counts; never raises for a failing
    notebook: the outcome carries the error. What every executor runs, wherever it runs."""
    from stsnb.run.pages import execute_chapter, retitle

    host = socket.gethostname()
    started = time.perf_counter()
    env = {name: str(job.threads) for name in THREAD_VARIABLES}
    log = ""
    if job.job_dir:
        Path(job.job_dir).mkdir(parents=True, exist_ok=True)
        env[JOB_DIR_ENV] = job.job_dir
        env[JOB_WORK_DIR_ENV] = str(Path(job.work_dir).resolve())
        log = str(Path(job.job_dir) / JOB_LOG)
        for stale in (TIMINGS, MANIFEST, JOB_RECORD):
            (Path(job.job_dir) / stale).unlink(missing_ok=True)
    outcome = JobOutcome(job.name, host=host, log=log, started=round(time.time(), 3))
    with environment(env), _log_to(log):
        print(f"[stsnb] {job.name} on {host}: {job.run}, {job.threads} thread(s)", flush=True)
        try:
            executed = execute_chapter(job.chapter, Path(job.generated), job.parameters,
                                       Path(job.work_dir), stage_name=job.name, run=job.run)
            if job.title:
                retitle(executed, job.title)
            outcome.executed = str(executed)
        except StsnbError as exc:
            outcome.error = str(exc)
        except Exception as exc:  # a job must report, whatever went wrong  # noqa: BLE001
            outcome.error = (f"{job.name} ({job.run}) failed outside its notebook: "
                             f"{type(exc).__name__}: {exc}")
        outcome.seconds = round(time.perf_counter() - started, 3)
        print(f"[stsnb] {job.name}: {'done' if outcome.ok else 'failed'} in "
              f"{outcome.seconds:.1f} s", flush=True)
    if job.job_dir:
        write_json_atomic(Path(job.job_dir) / JOB_RECORD, outcome.__dict__)
    return outcome


@contextlib.contextmanager
def _log_to(path: str) -> Iterator[None]:
    """Copy this process's output into `path` too (nothing when empty)."""
    if not path:
        yield
        return
    with open(path, "a", encoding="utf-8") as handle:
        with contextlib.redirect_stdout(_Tee(sys.stdout, handle)), \
                contextlib.redirect_stderr(_Tee(sys.stderr, handle)):
            yield


class _Tee:
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def merge_job_record(work_dir: str | Path, job_dir: str | Path, executor: str,
                     outcome: JobOutcome | None = None) -> None:
    """Fold a finished job's timings and manifest entries into the work dir's own files (the
    submitting process only) and name the job's executor and host in the manifest."""
    from stsnb.core.manifest import merge_manifest, read_manifest

    job_dir = Path(job_dir)
    timings = job_dir / TIMINGS
    if timings.exists():
        for row in pd.read_csv(timings).itertuples(index=False):
            record_timing(work_dir, str(row.stage), float(row.seconds))
        timings.unlink()
    if outcome is None:
        record = read_json(job_dir / JOB_RECORD)
        outcome = JobOutcome(**{f.name: record[f.name] for f in fields(JobOutcome)
                                if f.name in record}) if record else None
    manifest = merge_manifest(read_manifest(work_dir), read_json(job_dir / MANIFEST))
    if outcome is not None:
        manifest["executor"] = executor
        manifest.setdefault("jobs", {})[outcome.name] = {
            "executor": executor, "host": outcome.host, "started": outcome.started,
            "seconds": outcome.seconds, "ok": outcome.ok}
    if manifest:
        write_json_atomic(Path(work_dir) / MANIFEST, manifest)
    (job_dir / MANIFEST).unlink(missing_ok=True)
    (job_dir / JOB_RECORD).unlink(missing_ok=True)


def merge_leftover_records(work_dir: str | Path, executor: str, prefix: str = "") -> int:
    """Merge the records of jobs that finished while no submitter was there to merge them (a
    submitting process that was stopped, or jobs started by another scheduler with
    ``STSNB_JOB_DIR`` set); return how many. `prefix`: only the jobs whose name starts with it
    (chapter 04's pages: a chapter running beside them writes its own folder meanwhile)."""
    root = Path(work_dir) / "jobs"
    count = 0
    for job_dir in sorted(p for p in root.glob(f"{prefix}*") if p.is_dir()):
        if any((job_dir / name).exists() for name in (JOB_RECORD, TIMINGS, MANIFEST)):
            merge_job_record(work_dir, job_dir, executor)
            count += 1
    return count


@dataclass(frozen=True)
class SlurmSettings:
    """Resources of each SLURM job (submitit's names); from a TOML file and the command line.

    `cluster` is "slurm" on a cluster; submitit's "local" (subprocesses on this machine) and
    "debug" (in this process) executors run the same job objects without one.
    """

    partition: str | None = None
    time_min: int = 60
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    mem_gb: float = 16.0
    account: str | None = None
    qos: str | None = None
    setup: tuple[str, ...] = ()  # shell lines before each job (e.g. "module load cuda")
    additional: dict[str, Any] = field(default_factory=dict)  # other sbatch options
    cluster: str = "slurm"

    @classmethod
    def from_toml(cls, path: str | Path | None, **overrides: Any) -> SlurmSettings:
        """Settings from a TOML file (keys as the fields; a [slurm] table or the top level),
        then non-None `overrides` (the command line)."""
        values: dict[str, Any] = {}
        if path:
            path = Path(path)
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(f"SLURM settings {path} cannot be read ({exc}).") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"SLURM settings {path} are not valid TOML: {exc}.") from exc
            values = dict(data.get("slurm", data))
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ConfigError(f"SLURM settings {path}: unknown key(s) {unknown}; expected "
                                  f"some of {sorted(known)}.")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "setup" in values:
            values["setup"] = tuple(values["setup"])
        settings = cls(**values)
        if settings.cluster not in ("slurm", "local", "debug"):
            raise ConfigError(f"SLURM settings: cluster {settings.cluster!r}, expected 'slurm' "
                              "(or submitit's 'local' or 'debug' to try the jobs here).")
        if settings.cpus_per_task < 1 or settings.time_min < 1:
            raise ConfigError("SLURM settings: cpus_per_task and time_min must be >= 1.")
        return settings

    def submitit_parameters(self) -> dict[str, Any]:
        """Parameters for the submitit executor of `cluster` (its own names: SlurmExecutor's
        are sbatch's; the local one knows the time limit and GPUs only)."""
        if self.cluster == "slurm":
            params: dict[str, Any] = {"time": int(self.time_min), "nodes": 1,
                                      "ntasks_per_node": 1,
                                      "cpus_per_task": int(self.cpus_per_task),
                                      "mem": f"{int(round(self.mem_gb * 1024))}MB"}
            if self.gpus_per_node:
                params["gpus_per_node"] = int(self.gpus_per_node)
            for name in ("partition", "account", "qos"):
                if getattr(self, name):
                    params[name] = getattr(self, name)
            if self.setup:
                params["setup"] = list(self.setup)
            if self.additional:
                params["additional_parameters"] = dict(self.additional)
            return params
        if self.cluster == "local":
            return {"timeout_min": int(self.time_min), "nodes": 1, "tasks_per_node": 1}
        return {}


@dataclass(frozen=True)
class ExecutorChoice:
    """How the batch runs its jobs: `name` in EXECUTORS, `jobs` at once (processes; at most in
    flight for slurm), `keep_going` after a failure, and the SLURM settings."""

    name: str = "local"
    jobs: int = 1
    keep_going: bool = False
    slurm: SlurmSettings | None = None

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise ConfigError(f"Unknown executor {self.name!r}: expected one of {EXECUTORS}.")
        if isinstance(self.jobs, bool) or int(self.jobs) != self.jobs or self.jobs < 1:
            raise ConfigError(f"jobs must be a whole number >= 1, got {self.jobs!r}.")

    def threads_per_job(self) -> int:
        """Torch and BLAS threads of each job: the cores shared out (local: all of them)."""
        cores = os.cpu_count() or 1
        if self.name == "slurm":
            return (self.slurm or SlurmSettings()).cpus_per_task
        if self.name == "processes":
            return max(1, cores // self.jobs)
        return cores


class _Handle:
    """A started job: done(), outcome(), cancel() (a process pool's future or a submitit job)."""

    def __init__(self, job: PageJob, future: Any, log: str = "") -> None:
        self.job, self.future, self.log = job, future, log

    def done(self) -> bool:
        return bool(self.future.done())

    def outcome(self) -> JobOutcome:
        try:
            return self.future.result()
        # the job died (killed, out of memory, a node that failed): reported, never raised
        except Exception as exc:  # noqa: BLE001
            return JobOutcome(self.job.name, error=f"{self.job.name} ({self.job.run}) did not "
                              f"finish: {type(exc).__name__}: {str(exc).strip()[-600:]}",
                              log=self.log or self.job.job_dir or "")

    def cancel(self) -> None:
        self.future.cancel()


def _process_pool(jobs: int) -> tuple[Callable[[PageJob], _Handle], Callable[[], None]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(job: PageJob) -> _Handle:
        return _Handle(job, pool.submit(run_page, job))

    return submit, lambda: pool.shutdown(wait=True, cancel_futures=True)


def _submitit(settings: SlurmSettings, folder: Path
              ) -> tuple[Callable[[PageJob], _Handle], Callable[[], None]]:
    """submitit's executor of `settings.cluster`: its SLURM, local or debug executor, each with
    its own parameter names (`SlurmSettings.submitit_parameters`)."""
    import submitit

    kinds = {"slurm": submitit.SlurmExecutor, "local": submitit.LocalExecutor,
             "debug": submitit.DebugExecutor}
    executor = kinds[settings.cluster](folder=str(folder / "%j"))
    executor.update_parameters(**settings.submitit_parameters())

    def submit(job: PageJob) -> _Handle:
        if settings.cluster == "slurm":
            executor.update_parameters(job_name=job.name)
        handle = executor.submit(run_page, job)
        return _Handle(job, handle, log=str(handle.paths.stderr))

    return submit, lambda: None


def execute_jobs(jobs: Sequence[PageJob], choice: ExecutorChoice,
                 work_dir: str | Path) -> list[JobOutcome]:
    """Run `jobs` with the chosen executor, merging each finished job's record; a job waits
    while another job of its combination runs. After a failure the jobs not yet started are
    cancelled (and SLURM's running ones) unless `choice.keep_going`; raises a StsnbError that
    names every failed job (notebook, combination, split, cell, log) once the rest ended."""
    work_dir = Path(work_dir)
    if not jobs:
        return []
    if choice.name == "local":
        submit, close = (lambda job: _Immediate(job)), (lambda: None)
    elif choice.name == "processes":
        submit, close = _process_pool(choice.jobs)
    else:
        submit, close = _submitit(choice.slurm or SlurmSettings(), work_dir / "jobs" / "slurm")
    waiting = list(jobs)
    running: list[_Handle] = []
    outcomes: list[JobOutcome] = []
    limit = 1 if choice.name == "local" else choice.jobs
    stop = False
    last_start = 0.0
    shown = ""
    try:
        while waiting or running:
            busy = {h.job.combo for h in running}
            ready = [j for j in waiting if j.combo not in busy] if not stop else []
            while ready and len(running) < limit:
                job = ready.pop(0)
                if choice.name == "processes" and running:
                    time.sleep(max(0.0, STAGGER_S - (time.monotonic() - last_start)))
                waiting.remove(job)
                running.append(submit(job))
                last_start = time.monotonic()
                busy.add(job.combo)
                ready = [j for j in ready if j.combo not in busy]
            for handle in [h for h in running if h.done()]:
                running.remove(handle)
                outcome = handle.outcome()
                own = handle.job.job_dir or work_dir / "jobs" / handle.job.name
                merge_job_record(work_dir, own, choice.name, outcome)
                outcomes.append(outcome)
                if not outcome.ok and not choice.keep_going and not stop:
                    stop = True
                    print(f"[stsnb] {outcome.name} failed: cancelling the {len(waiting)} "
                          "job(s) not started (--keep-going runs them)", flush=True)
                    for other in running:
                        if choice.name == "slurm":
                            other.cancel()
                    waiting.clear()
            status = _progress(outcomes, running, waiting)
            if status != shown:
                print(f"[stsnb] jobs: {status}", flush=True)
                shown = status
            if running:
                time.sleep(POLL_S)
    finally:
        for handle in running:
            handle.cancel()
        close()
    failed = [o for o in outcomes if not o.ok]
    if failed:
        lines = [f"- {o.report()}" for o in failed]
        raise StsnbError(f"{len(failed)} of {len(jobs)} chapter-04 job(s) failed "
                         f"({choice.name} executor):\n" + "\n".join(lines))
    return outcomes


def _progress(outcomes: list[JobOutcome], running: list[_Handle], waiting: list[PageJob]) -> str:
    done = sum(o.ok for o in outcomes)
    return (f"{done} done, {len(running)} running, {len(outcomes) - done} failed, "
            f"{len(waiting)} waiting")


class _Immediate:
    """The local executor's handle: the page runs, in this process, when it is submitted."""

    def __init__(self, job: PageJob) -> None:
        self.job = job
        self._outcome = run_page(job)

    def done(self) -> bool:
        return True

    def outcome(self) -> JobOutcome:
        return self._outcome

    def cancel(self) -> None:
        pass


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose where chapter 04's pages run (batch and book commands)."""
    parser.add_argument("--executor", default="auto", choices=("auto", *EXECUTORS),
                        help="auto (default): processes on a CPU with 2 or more cores, else "
                        "local; local: one page after the other; processes: --jobs pages at "
                        "once on this machine; slurm: SLURM jobs through submitit")
    parser.add_argument("--jobs", type=int, default=None,
                        help="pages at once (processes: default 2; slurm: most in flight, "
                        "default 100)")
    parser.add_argument("--keep-going", action="store_true",
                        help="after a failed page, run the others anyway")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the pages that would run and those skipped; run nothing")
    parser.add_argument("--slurm-config", help="TOML file of SLURM settings (see README)")
    parser.add_argument("--slurm-partition", default=None)
    parser.add_argument("--slurm-time-min", type=int, default=None, help="minutes per job")
    parser.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per job")
    parser.add_argument("--slurm-cpus", type=int, default=None, help="CPUs per job (threads)")
    parser.add_argument("--slurm-mem-gb", type=float, default=None, help="memory per job (GB)")


def auto_executor(device: str = "auto", cores: int | None = None,
                  gpu: bool | None = None) -> str:
    """The executor `auto` stands for: `processes` (two pages at once, each on half the cores)
    when the pages run on a CPU with 2 or more cores, else `local`.

    Two pages at once overlap one page's kernel start, imports and figures with the other's
    convolutions and head (chapter 04 of the quick book 1.23x faster on 2 cores:
    `benchmarks/bench_executors.py`); on a GPU the pages share one device, so they run in turn.
    `gpu` None asks torch whether `device` 'auto' finds one.

    >>> auto_executor("cpu", cores=2), auto_executor("cpu", cores=1), auto_executor("cuda", 8)
    ('processes', 'local', 'local')
    """
    cores = (os.cpu_count() or 1) if cores is None else cores
    if device.startswith("cuda") or device == "mps":
        return "local"
    if device == "auto" and gpu is None and cores >= 2:
        import torch

        gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    return "local" if gpu or cores < 2 else "processes"


def executor_choice(args: argparse.Namespace) -> ExecutorChoice:
    """The executor the command line asks for (`auto`: see `auto_executor`)."""
    name = (auto_executor(getattr(args, "device", "auto")) if args.executor == "auto"
            else args.executor)
    slurm = None
    if name == "slurm":
        slurm = SlurmSettings.from_toml(
            args.slurm_config, partition=args.slurm_partition, time_min=args.slurm_time_min,
            gpus_per_node=args.slurm_gpus, cpus_per_task=args.slurm_cpus,
            mem_gb=args.slurm_mem_gb)
    default_jobs = {"local": 1, "processes": 2, "slurm": 100}[name]
    return ExecutorChoice(name, args.jobs or default_jobs, args.keep_going, slurm)
