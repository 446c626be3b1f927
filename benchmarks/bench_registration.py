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
(default: SimpleITK's own, all cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from stsnb.cohort import image_path
from stsnb.cohort_config import read_cohort_config
from stsnb.config import resolve_profile
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
    args = parser.parse_args()
    if args.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    cohort_dir = Path(args.cohort)
    cohort = read_cohort_config(cohort_dir)
    profile = resolve_profile(args.profile)
    config = registration_settings(profile, cohort, cohort_dir=cohort_dir)
    ids = complete_patients(cohort_dir, list(cohort.modalities))
    ids = ids[: args.patients] if args.patients else ids
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    print(f"{len(ids)} patients, profile {profile.name}, SimpleITK threads {threads}, "
          f"{os.cpu_count()} CPUs")
    rows = []
    for pid in ids:
        started_cpu = cpu_seconds()
        started = time.perf_counter()
        result = register_patient(patient_inputs(cohort_dir, pid, cohort), config, args.seed)
        row = {c: result.qa.get(c) for c in COLUMNS}
        row["seconds"] = time.perf_counter() - started
        row["cpu_seconds"] = cpu_seconds() - started_cpu
        rows.append(row)
        print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items()), flush=True)
    table = pd.DataFrame(rows, columns=COLUMNS)
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


if __name__ == "__main__":
    main()
