"""Seconds per patient of the radiomics features (MIRP in .venv-radiomics), on chapter 02's
outputs of a cohort.

    .venv/bin/python benchmarks/bench_radiomics.py --cohort data/synthetic --work work
        [--patients N] [--out /tmp/bench_radiomics] [--json out.json]

The stage runs as the book runs it (input checks, one worker process for the patients, per
patient outputs), writing into a fresh work dir under `--out` whose ``registration`` folder links
to the read-only ``<work>/registration``: nothing under `--work` is written. Reported per
patient and as medians: the worker's seconds per patient and per image (the CT's include the
shape features), the GTV volume (cm^3), and the whole stage's wall seconds (checks and the
worker's start included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from stsnb.radiomics import run_radiomics
from stsnb.registration import final_patients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", default="data/synthetic", help="cohort folder")
    parser.add_argument("--work", default="work", help="work dir with chapter 02's outputs")
    parser.add_argument("--patients", type=int, default=4, help="first N final patients")
    parser.add_argument("--out", default="/tmp/bench_radiomics", help="scratch work dir")
    parser.add_argument("--json", help="write the per-patient table and medians here")
    args = parser.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "registration").symlink_to(Path(args.work).resolve() / "registration")
    patients = final_patients(args.work)[: args.patients or None]
    started = time.perf_counter()
    run = run_radiomics(args.cohort, out, "quick", patients=patients, progress=False)
    wall = time.perf_counter() - started
    rows = []
    for pid in patients:
        record = json.loads((out / "radiomics" / pid / "record.json").read_text())
        rows.append({"patient_id": pid, "seconds": record["seconds"],
                     **{f"s_{k}": v for k, v in record["image_seconds"].items()},
                     "gtv_cm3": round(record["gtv_volume_mm3"] / 1000.0, 1)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    medians = table.drop(columns="patient_id").median().round(2).to_dict()
    print(f"median seconds per patient (worker): {medians['seconds']}; whole stage "
          f"{wall:.1f} s for {len(patients)} patients ({wall / len(patients):.1f} s each, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); MIRP {run.library['mirp']}; "
          f"{run.features.shape[1] - 1} features per patient")
    if args.json:
        Path(args.json).write_text(json.dumps({"patients": rows, "medians": medians,
                                               "wall_seconds": wall}, indent=2))


if __name__ == "__main__":
    main()
