"""Peak memory and time of building the slice store (chapter 03) on a whole cohort.

    .venv/bin/python benchmarks/bench_slice_store.py --cohort data/synthetic --work /tmp/bench
        [--profile paper] [--source auto|registration|scanner] [--patients N] [--json out.json]

The build streams patient by patient, so its peak RSS should stay near one patient's volumes
plus the interpreter, whatever the cohort size. `--source registration` builds from chapter 02's
outputs in the work dir (the chapter's own path, `run_preprocessing`); `--source scanner`
resamples each image onto the CT grid in scanner coordinates instead (no registration: the
same grid sizes and the same preprocessing work, for a cohort not yet registered); `auto`
takes registration outputs when they exist. The store is rebuilt from scratch, then rebuilt
again to time the reuse path. Each build runs in a fresh process (curation, when needed, in
another), whose peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss`; the baseline is that
process's RSS after importing stsnb, torch and SimpleITK.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from stsnb.core.config import resolve_profile
from stsnb.curation.cohort_config import read_cohort_config
from stsnb.curation.stage import read_cohort_table, run_curation
from stsnb.slices import PatientSource, PatientVolumes, build_slice_store, store_dir


def rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (s): less sensitive to a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Seconds spent in the loaders (reading and resampling), summed."""

    seconds = 0.0


def scanner_sources(cohort_dir: Path, cohort: pd.DataFrame, modalities: tuple[str, ...],
                    timer: Timer) -> list[PatientSource]:
    """Every image resampled onto its CT grid in scanner coordinates, loaded on demand."""

    def loader(pid: str, label: int):
        def load() -> PatientVolumes:
            started = time.perf_counter()
            folder = cohort_dir / pid
            ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
            images = {}
            for name in modalities:
                image = ct if name == "ct" else sitk.ReadImage(str(folder / f"{name}.nii.gz"))
                images[name] = image if name == "ct" else sitk.Resample(
                    image, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            gtv = sitk.ReadImage(str(folder / "gtv.nii.gz"))
            Timer.seconds += time.perf_counter() - started
            return PatientVolumes(pid, label, images, gtv)
        return load

    rows = cohort[cohort["included"]]
    return [PatientSource(r.patient_id, int(r.label), f"scanner:{cohort_dir / r.patient_id}",
                          loader(r.patient_id, int(r.label))) for r in rows.itertuples()]


def build(args: argparse.Namespace, profile, source: str):
    if source == "registration":
        from stsnb.slices import run_preprocessing

        return run_preprocessing(args.cohort, args.work, profile, progress=args.progress)
    cohort = read_cohort_table(args.work)
    if args.patients:
        included = cohort[cohort["included"]].head(args.patients)["patient_id"]
        cohort = cohort[cohort["patient_id"].isin(included)]
    modalities = read_cohort_config(args.cohort).modalities
    sources = scanner_sources(args.cohort, cohort, modalities, Timer())
    return build_slice_store(args.work, sources, profile, progress=args.progress,
                             modalities=modalities)


def measured_build(args: argparse.Namespace, source: str) -> dict:
    """One build in this (fresh) process: seconds, peak RSS and what was built."""
    import torch  # noqa: F401  (imported by the build; counted in the baseline)

    profile = resolve_profile(args.profile)
    baseline = rss_mib()
    cpu = cpu_seconds()
    started = time.perf_counter()
    store = build(args, profile, source)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    usage = store.disk_usage().set_index("kind")
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_seconds": Timer.seconds,
        "baseline_mib": baseline,
        "peak_mib": rss_mib(),
        "patients": len(store.patients),
        "slices_stored": len(store),
        "slices_in_slabs": int(store.patients["slab_slices"].sum()),
        "reused_all": store.last_build.all_reused,
        "store_mib": float(usage.loc["total", "MiB"]),
        "most_slices": int(store.patients["stored_slices"].max()),
        "largest_slice_px": int((store.patients["native_rows"]
                                 * store.patients["native_cols"]).max()),
    }


def in_child(function, *arguments):
    """Run `function(*arguments)` in a fresh interpreter (spawn) and return its result."""
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(1)
    try:
        return pool.apply(function, arguments)
    finally:
        pool.close()  # let the child exit on its own (terminate() leaks its semaphores)
        pool.join()


def curate(cohort: Path, work: Path, profile: str) -> None:
    run_curation(cohort, work, resolve_profile(profile), progress=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--source", choices=("auto", "registration", "scanner"), default="auto")
    parser.add_argument("--patients", type=int, default=0, help="first N included (scanner)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if not (args.work / "cohort.csv").exists():
        in_child(curate, args.cohort, args.work, args.profile)
    source = args.source
    if source == "auto":
        qa = args.work / "registration" / "qa.csv"
        source = "registration" if qa.exists() else "scanner"
    shutil.rmtree(store_dir(args.work), ignore_errors=True)
    first = in_child(measured_build, args, source)
    again = in_child(measured_build, args, source)
    result = {
        "profile": resolve_profile(args.profile).name,
        "source": source,
        "patients": first["patients"],
        "slices_stored": first["slices_stored"],
        "slices_in_slabs": first["slices_in_slabs"],
        "build_seconds": round(first["seconds"], 1),
        "of_which_loading_seconds": round(first["load_seconds"], 1)
        if source == "scanner" else None,
        "build_cpu_seconds": round(first["cpu_seconds"], 1),
        "seconds_per_patient": round(first["seconds"] / max(first["patients"], 1), 2),
        "rebuild_all_reused_seconds": round(again["seconds"], 2),
        "rebuild_reused_all": again["reused_all"],
        "rss_after_imports_mib": round(first["baseline_mib"], 1),
        "peak_rss_mib": round(first["peak_mib"], 1),
        "peak_rss_increase_mib": round(first["peak_mib"] - first["baseline_mib"], 1),
        "store_on_disk_mib": first["store_mib"],
        "most_slices_one_patient": first["most_slices"],
        "largest_slice_px": first["largest_slice_px"],
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
