"""Seconds per patient of the radiomics features (MIRP in .venv-radiomics) with and without
Moran's I and Geary's C, on chapter 02's outputs of a cohort, and the other features compared.

    .venv/bin/python benchmarks/bench_radiomics.py --cohort data/synthetic --work work
        [--patients N] [--out /tmp/bench_radiomics] [--json out.json]

The stage runs as the book runs it (input checks, one worker process for the patients, per
patient outputs) twice: with the paper profile (every feature) and with the quick profile
(``radiomics.spatial_autocorrelation=False``: MIRP's Monte Carlo estimates of Moran's I and
Geary's C left out), each into a fresh work dir under `--out` whose ``registration`` folder
links to the read-only ``<work>/registration``: nothing under `--work` is written. Reported per
patient and as medians: the worker's seconds per patient and the CT's (which include the shape
features) both ways, the GTV volume (cm^3), the whole stage's wall seconds; then the features
only one way has (must be exactly the two left out) and the largest difference between the
others (must be 0: the same numbers, bit for bit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stsnb.radiomics import run_radiomics
from stsnb.registration import final_patients

#: (label, profile) of the two runs, the full feature set first.
RUNS = (("full", "paper"), ("left_out", "quick"))


def run_once(cohort: str, work: str, out: Path, profile: str,
             patients: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, float, str]:
    """(features, per-patient seconds, wall seconds, MIRP version) of one stage run in `out`."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "registration").symlink_to(Path(work).resolve() / "registration")
    started = time.perf_counter()
    run = run_radiomics(cohort, out, profile, patients=patients, progress=False)
    wall = time.perf_counter() - started
    rows = []
    for pid in patients:
        record = json.loads((out / "radiomics" / pid / "record.json").read_text())
        rows.append({"patient_id": pid, "seconds": record["seconds"],
                     "s_ct": record["image_seconds"].get("ct"),
                     "gtv_cm3": round(record["gtv_volume_mm3"] / 1000.0, 1)})
    return run.features, pd.DataFrame(rows), wall, run.library["mirp"]


def compare(full: pd.DataFrame, reduced: pd.DataFrame) -> dict[str, object]:
    """The columns only one table has, and the largest absolute difference of the shared ones
    (NaN in both counts as equal)."""
    a, b = full.set_index("patient_id"), reduced.set_index("patient_id")
    shared = [c for c in a.columns if c in b.columns]
    x, y = a[shared].to_numpy(float), b.loc[a.index, shared].to_numpy(float)
    both_nan = np.isnan(x) & np.isnan(y)
    diff = np.where(both_nan, 0.0, np.abs(x - y))
    return {"only_full": [c for c in a.columns if c not in b.columns],
            "only_left_out": [c for c in b.columns if c not in a.columns],
            "n_shared": len(shared), "max_abs_difference": float(np.nanmax(diff, initial=0.0)),
            "n_different": int((~(both_nan | (x == y))).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", default="data/synthetic", help="cohort folder")
    parser.add_argument("--work", default="work", help="work dir with chapter 02's outputs")
    parser.add_argument("--patients", type=int, default=4, help="first N final patients")
    parser.add_argument("--out", default="/tmp/bench_radiomics", help="scratch folder")
    parser.add_argument("--json", help="write the per-patient table and medians here")
    args = parser.parse_args()

    patients = final_patients(args.work)[: args.patients or None]
    features, tables, walls = {}, {}, {}
    for label, profile in RUNS:
        features[label], tables[label], walls[label], mirp = run_once(
            args.cohort, args.work, Path(args.out) / label, profile, patients)
    table = tables["full"].merge(tables["left_out"].drop(columns="gtv_cm3"), on="patient_id",
                                 suffixes=("_full", "_left_out"))
    print(table.to_string(index=False))
    medians = table.drop(columns="patient_id").median().round(2).to_dict()
    n = len(patients)
    print(f"median seconds per patient (worker): full {medians['seconds_full']}, Moran's I and "
          f"Geary's C left out {medians['seconds_left_out']} "
          f"({medians['seconds_full'] / medians['seconds_left_out']:.1f}x); CT with shape "
          f"features {medians['s_ct_full']} -> {medians['s_ct_left_out']}")
    print(f"whole stage: full {walls['full']:.1f} s, left out {walls['left_out']:.1f} s for {n} "
          f"patients ({walls['full'] / n:.1f} -> {walls['left_out'] / n:.1f} s each; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); MIRP {mirp}")
    same = compare(features["full"], features["left_out"])
    print(f"features: {same['n_shared']} in both runs, {same['n_different']} values differ "
          f"(largest difference {same['max_abs_difference']:g}); only in the full run: "
          f"{', '.join(same['only_full']) or 'none'}; only in the other: "
          f"{', '.join(same['only_left_out']) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "patients": table.to_dict(orient="records"), "medians": medians,
            "wall_seconds": walls, "comparison": same}, indent=2))


if __name__ == "__main__":
    main()
