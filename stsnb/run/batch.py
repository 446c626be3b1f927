"""Chapter 04 as a papermill batch: one executed notebook per combination and split.

Each run executes ``notebooks/04_training.ipynb`` into the book's generated folder as
``04_training_combo<NN>.ipynb`` (patient split) or ``04_training_combo<NN>_<split>.ipynb``
(controls). A run whose outputs exist with the same configuration, and whose executed notebook
is newer than them, is skipped, so a rerun resumes where the last one stopped.

    python -m stsnb.run.batch --cohort-dir data/synthetic --work-dir work --combos 1 9
    python -m stsnb.run.batch --executor processes --jobs 2
    python -m stsnb.run.batch --executor slurm --slurm-config slurm.toml --dry-run

The pages run one after the other in this process (`--executor local`, the default), N at once
in processes of this machine (`processes`) or as SLURM jobs (`slurm`, through submitit): see
`stsnb.run.jobs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stsnb.core.combinations import Combination, combinations_for, resolve_combo
from stsnb.core.config import Profile, resolve_profile
from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.runs import RUN_RECORD, SPLITS, run_dir
from stsnb.core.store import ensure_writable_dir
from stsnb.plots.training import combination_label
from stsnb.results.tables import auc_order, patient_aucs, split_predictions
from stsnb.run.jobs import (
    ExecutorChoice,
    PageJob,
    execute_jobs,
    merge_leftover_records,
)
from stsnb.run.pages import book_root, generated_dir, notebook_errors, prepare_book_root
from stsnb.training.features import SliceSource
from stsnb.training.folds import check_split
from stsnb.training.linear_runs import linear_done
from stsnb.training.stage import is_done, open_slices

CHAPTER = "04_training"


def notebook_name(combo: int, split: str = "patient") -> str:
    """``04_training_combo09`` for the patient split, ``04_training_combo09_slice`` otherwise."""
    suffix = "" if split == "patient" else f"_{split}"
    return f"{CHAPTER}_combo{int(combo):02d}{suffix}"


#: control_combos value: the controls run for the best and the worst combination.
EXTREMES = "extremes"


def control_numbers(setting: tuple[int, ...] | str | None, numbers: Sequence[int],
                    ranked: Sequence[int] | None = None) -> list[int]:
    """Which of `numbers` get the control splits under the profile's `control_combos`.

    None: all; a tuple: those listed; "extremes": the best and the worst of `numbers` in
    `ranked` (patient-level AUC order, stsnb.results.stats.auc_order), none while that is unknown.
    """
    if setting is None:
        return list(numbers)
    if isinstance(setting, str):
        if setting != EXTREMES:
            raise ConfigError(f"control_combos {setting!r}: expected a tuple of combination "
                              f"numbers, None (all) or {EXTREMES!r}.")
        order = [n for n in (ranked or ()) if n in numbers]
        return list(dict.fromkeys([order[0], order[-1]])) if order else []
    return [n for n in numbers if n in setting]


def training_jobs(profile: Profile, modalities: tuple[str, ...],
                  combos: Sequence[int | str] | None = None,
                  splits: Sequence[str] | None = None,
                  ranked: Sequence[int] | None = None) -> list[tuple[int, str]]:
    """(combination number, split) pairs in run order.

    Default combinations: every three-image combination (the study's ten). Default splits: the
    patient split for each, then the controls ('slice', 'random') for the profile's
    `control_combos` (see `control_numbers`; "extremes" needs `ranked`, the patient-split
    ranking, and yields no control job without it). Splits given explicitly apply to every
    combination given.
    """
    if combos is None:
        numbers = [c.number for c in combinations_for(modalities) if not c.is_single]
    else:
        numbers = list(dict.fromkeys(resolve_combo(c, modalities).number for c in combos))
    if splits is not None:
        chosen = [check_split(s) for s in splits]
        return [(n, s) for s in chosen for n in numbers]
    controls = control_numbers(profile.training.control_combos, numbers, ranked)
    jobs = [(n, "patient") for n in numbers]
    for split in SPLITS[1:]:
        jobs += [(n, split) for n in controls]
    return jobs


def run_training_batch(cohort_dir: str | Path, work_dir: str | Path,
                       profile: str = "auto", seed: int = 0,
                       combos: Sequence[int | str] | None = None,
                       splits: Sequence[str] | None = None, device: str = "auto",
                       weights: str = "auto", precision: str = "auto",
                       backbone: str = "auto", executor: ExecutorChoice | None = None,
                       dry_run: bool = False) -> list[Path]:
    """Execute chapter 04 (both heads) for each (combination, split); return the notebooks.

    `executor` says where the pages run (default: here, one after the other); `dry_run` only
    prints the pages that would run and those that would be skipped.
    """
    executor = executor or ExecutorChoice()
    work_dir = ensure_writable_dir(Path(work_dir).resolve())
    merged = 0 if dry_run else merge_leftover_records(work_dir, executor.name, prefix=CHAPTER)
    if merged:
        print(f"[stsnb] merged the records of {merged} job(s) finished in an earlier batch",
              flush=True)
    resolved = resolve_profile(profile)
    store = open_slices(work_dir, resolved)
    root = book_root(work_dir)
    generated = generated_dir(root) if dry_run else prepare_book_root(root)
    weights_arg = str(Path(weights).resolve()) if Path(weights).is_file() else weights
    modalities = tuple(store.modalities)
    jobs = training_jobs(resolved, modalities, combos, splits)
    options = {"device": device, "weights": weights_arg, "precision": precision,
               "backbone": backbone}
    batch = _Batch(cohort_dir, work_dir, profile, resolved, store, generated, seed, options,
                   executor, dry_run)
    outputs = batch.run(jobs)
    if splits is None and resolved.training.control_combos == EXTREMES:
        numbers = [n for n, _ in jobs]
        try:
            ranked = auc_order(patient_aucs(split_predictions(work_dir, "patient", numbers)))
        except (StsnbError, OSError, ValueError):
            if not dry_run:
                raise
            print("[stsnb] would then run the controls for the best and the worst combination "
                  "by patient-level AUC (known once the patient split has run)", flush=True)
            return outputs
        controls = [job for job in training_jobs(resolved, modalities, combos, None, ranked)
                    if job[1] != "patient"]
        print(f"[stsnb] controls for the best and the worst combination by patient-level AUC: "
              f"{sorted({n for n, _ in controls})}", flush=True)
        outputs += batch.run(controls)
    return outputs


@dataclass(frozen=True)
class _Batch:
    """What every page of one batch shares; `options`: device, weights, precision and
    backbone, as chapter 04's parameters."""

    cohort_dir: str | Path
    work_dir: Path
    profile: str
    resolved: Profile
    store: SliceSource
    generated: Path
    seed: int
    options: dict[str, str]
    executor: ExecutorChoice
    dry_run: bool

    def is_current(self, number: int, split: str) -> bool:
        """True when the page's runs (both heads) and its executed notebook are current."""
        target = self.generated / f"{notebook_name(number, split)}.ipynb"
        record = run_dir(self.work_dir, split, number) / RUN_RECORD
        options = self.options
        return bool(target.exists() and record.exists()
                    and target.stat().st_mtime >= record.stat().st_mtime
                    and not notebook_errors(target)
                    and is_done(self.store, self.work_dir, self.resolved, number, split,
                                self.seed, options["device"], options["weights"],
                                options["precision"], options["backbone"])
                    and linear_done(self.store, self.work_dir, self.resolved, number, split,
                                    self.seed))

    def page_job(self, number: int, split: str) -> PageJob:
        """The job that executes one page with this batch's executor."""
        name = notebook_name(number, split)
        combination = resolve_combo(number, tuple(self.store.modalities))
        parameters = {"cohort_dir": str(Path(self.cohort_dir).resolve()),
                      "work_dir": str(self.work_dir), "profile": self.profile,
                      "seed": int(self.seed), "combo": int(number), "split": split,
                      **self.options, "head": "both", "progress": False}
        own_records = self.executor.name != "local"
        return PageJob(name=name, combo=int(number), split=split,
                       run=f"combination {number} ({combination.name}), {split} split",
                       title=page_title(combination, split), chapter=CHAPTER,
                       generated=str(self.generated), work_dir=str(self.work_dir),
                       parameters=parameters, threads=self.executor.threads_per_job(),
                       job_dir=str(self.work_dir / "jobs" / name) if own_records else None)

    def run(self, jobs: Sequence[tuple[int, str]]) -> list[Path]:
        """Execute every page of `jobs` that is not current (skipped ones are listed)."""
        outputs, pending = [], []
        for number, split in jobs:
            name = notebook_name(number, split)
            if self.is_current(number, split):
                print(f"[stsnb] {name}: done with this configuration, skipped", flush=True)
                outputs.append(self.generated / f"{name}.ipynb")
                continue
            pending.append(self.page_job(number, split))
            verb = "would execute" if self.dry_run else "to execute"
            print(f"[stsnb] {verb} {CHAPTER} ({pending[-1].run}) -> {name}.ipynb", flush=True)
        if self.dry_run or not pending:
            return outputs
        print(f"[stsnb] {len(pending)} page(s) on the {self.executor.name} executor "
              f"({self.executor.jobs} at once, {self.executor.threads_per_job()} thread(s) "
              "each)" if self.executor.name != "local" else
              f"[stsnb] {len(pending)} page(s), one after the other", flush=True)
        outcomes = execute_jobs(pending, self.executor, self.work_dir)
        return outputs + [Path(o.executed) for o in outcomes]


SPLIT_TITLES = {"patient": "patient split", "slice": "slice split (the study's)",
                "random": "permuted-label control"}


def page_title(combination: Combination, split: str) -> str:
    """The executed page's title, e.g. '04 Training: 9 Dose-T2w-CE-T1w, patient split'."""
    return f"04 Training: {combination_label(combination)}, {SPLIT_TITLES[split]}"
