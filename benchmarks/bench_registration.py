"""Seconds per patient of the rigid and the deformable registration step (chapter 02), with the
accuracy they reach, on a cohort's own volumes.

    .venv/bin/python benchmarks/bench_registration.py --cohort data/synthetic
        [--profile quick] [--patients N] [--threads T] [--json out.json]

Each patient runs end to end as the stage runs it (`register_patient`: rigid step, deformable
step, resampling onto the CT grid, QA measures), in this process, nothing written. Reported per
patient and as medians: wall seconds of the rigid step, of the deformable step and of the whole
patient; CPU seconds of the whole patient (user + system, all threads: less sensitive to a busy
machine); landmark TRE and Dice of the propagated GTV after each step (when the cohort has the
synthetic truth) and the minimum Jacobian determinant. `--threads` sets SimpleITK's thread count
(default: SimpleITK's own, all cores). `--workers N` registers N patients at once in worker
processes, as the stage does (the cores shared out as SimpleITK threads), and reports the wall
seconds of the whole run per patient beside each patient's own seconds. `--set name=value`
overrides a registration setting (e.g. `--set bspline_samples=5000`); `--baseline qa.csv`
(a stage's `registration/qa.csv`, or this script's `--csv`) compares every patient's TRE and
Dice with it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from stsnb.core.config import resolve_profile
from stsnb.curation.cohort import image_path
from stsnb.curation.cohort_config import read_cohort_config
from stsnb.registration.inputs import patient_inputs
from stsnb.registration.patient import register_patient
from stsnb.registration.settings import registration_settings

COLUMNS = ["patient_id", "seconds_rigid", "seconds_deformable", "seconds", "cpu_seconds",
           "tre_rigid_mm", "tre_deformable_mm", "dice_rigid", "dice_deformable", "min_jacobian"]


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (s)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def complete_patients(cohort_dir: Path, stems: list[str]) -> list[str]:
    """Patients of clinical.csv with every image and the GTV (the curation criteria on files)."""
    ids = pd.read_csv(cohort_dir / "clinical.csv", dtype={"patient_id": str})["patient_id"]
    return [pid for pid in ids
            if all(image_path(cohort_dir, pid, s).is_file() for s in [*stems, "gtv"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", default="data/synthetic", help="cohort folder")
    parser.add_argument("--profile", default="quick", help="smoke | quick | paper")
    parser.add_argument("--patients", type=int, default=0, help="first N complete (0 = all)")
    parser.add_argument("--threads", type=int, default=0, help="SimpleITK threads (0 = default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the per-patient table and medians here")
    parser.add_argument("--csv", help="write the per-patient table here (a --baseline later)")
    parser.add_argument("--workers", type=int, default=1, help="patients at once (processes)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a registration setting (repeatable)")
    parser.add_argument("--baseline", help="qa.csv to compare each patient's TRE and Dice with")
    args = parser.parse_args()
    if args.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    cohort_dir = Path(args.cohort)
    cohort = read_cohort_config(cohort_dir)
    profile = resolve_profile(args.profile)
    config = overridden(registration_settings(profile, cohort, cohort_dir=cohort_dir), args.set)
    ids = complete_patients(cohort_dir, list(cohort.modalities))
    ids = ids[: args.patients] if args.patients else ids
    threads = (args.threads or max(1, (os.cpu_count() or 1) // args.workers)
               if args.workers > 1 else sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    print(f"{len(ids)} patients, profile {profile.name}, overrides {args.set or 'none'}, "
          f"{args.workers} worker(s), SimpleITK threads {threads}, {os.cpu_count()} CPUs")
    started_all = time.perf_counter()
    jobs = [(cohort_dir, config, pid, args.seed) for pid in ids]
    if args.workers > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_threads,
                                 initargs=(threads,)) as pool:
            rows = list(pool.map(_one, jobs))
    else:
        rows = [_one(job) for job in jobs]
    wall = time.perf_counter() - started_all
    for row in rows:
        print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items()), flush=True)
    table = pd.DataFrame(rows, columns=COLUMNS)
    print(f"\nwall {wall:.1f} s for {len(ids)} patients: {wall / max(len(ids), 1):.2f} s per "
          "patient for the whole run")
    if args.csv:
        table.to_csv(args.csv, index=False)
    if args.baseline:
        compare(table, pd.read_csv(args.baseline, dtype={"patient_id": str}))
    medians = table.drop(columns="patient_id").median()
    print("\nmedian over patients:")
    for name, value in medians.items():
        print(f"  {name:20s} {value:8.2f}")
    print(f"  max seconds per patient: {table['seconds'].max():.1f}; "
          f"TRE deformable < rigid for {int((table.tre_deformable_mm < table.tre_rigid_mm).sum())}"
          f" of {len(table)}; min Jacobian over patients {table.min_jacobian.min():.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "profile": profile.name, "threads": threads, "cpus": os.cpu_count(),
            "patients": rows, "median": medians.to_dict()}, indent=2, default=float))


def _threads(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _one(job) -> dict:
    """One patient as the stage registers it: its QA columns, wall and CPU seconds."""
    cohort_dir, config, pid, seed = job
    cohort = read_cohort_config(cohort_dir)  # its parsed form does not pickle
    started_cpu = cpu_seconds()
    started = time.perf_counter()
    result = register_patient(patient_inputs(cohort_dir, pid, cohort), config, seed)
    row = {c: result.qa.get(c) for c in COLUMNS}
    row["seconds"] = time.perf_counter() - started
    row["cpu_seconds"] = cpu_seconds() - started_cpu
    return row


def overridden(config, settings: list[str]):
    """`config` with NAME=VALUE settings replaced (values parsed as the field's type)."""
    types = {f.name: type(getattr(config, f.name)) for f in fields(config)}
    changes = {}
    for item in settings:
        name, _, value = item.partition("=")
        if name not in types:
            raise SystemExit(f"unknown registration setting {name!r}; known: {sorted(types)}")
        kind = types[name]
        if kind is tuple:
            changes[name] = tuple(float(v) if "." in v else int(v)
                                  for v in value.split(",") if v)
        elif kind is bool:
            changes[name] = value.lower() in ("1", "true", "yes")
        else:
            changes[name] = kind(value)
    return replace(config, **changes)


def compare(table: pd.DataFrame, baseline: pd.DataFrame) -> None:
    """Per patient: TRE and Dice against the baseline's; the worst TRE change."""
    both = table.merge(baseline, on="patient_id", suffixes=("", "_before"))
    if both.empty:
        print("no patient in common with the baseline")
        return
    change = both["tre_deformable_mm"] - both["tre_deformable_mm_before"]
    print(f"\nagainst the baseline ({len(both)} patients): median TRE deformable "
          f"{both['tre_deformable_mm'].median():.2f} mm (before "
          f"{both['tre_deformable_mm_before'].median():.2f}), median Dice deformable "
          f"{both['dice_deformable'].median():.3f} (before "
          f"{both['dice_deformable_before'].median():.3f}); TRE change per patient: median "
          f"{change.median():+.2f} mm, worst {change.max():+.2f} mm "
          f"({both.loc[change.idxmax(), 'patient_id']}); "
          f"{int((change > 0.5).sum())} patients worse by more than 0.5 mm; median seconds "
          f"{both['seconds'].median():.2f} (before {both['seconds_before'].median():.2f})")


if __name__ == "__main__":
    main()
