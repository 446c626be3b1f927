"""The linear head's pooling on the suite's controls: global average against GTV-weighted.

On a finished work dir (chapters 03-04 run: the slice store and every combination's cached
features), for each pooling and each control label (positive: top third by necrosis fraction;
negative: random, `stsnb.results.controls`), the patient AUC of the nested cross-validation of every
combination, its permutation p-value, the best combination's p corrected for the choice among
all of them, and the rank of combination 1 (CT-Dose-T1w, the only one without T2w and CE-T1w,
which should rank last on the positive control). Prints a table and the seconds per pooling.

    .venv/bin/python benchmarks/bench_control_pooling.py --work work --cohort data/synthetic \
        [--permutations 200] [--json /tmp/bench_control_pooling.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stsnb.core.combinations import resolve_combo  # noqa: E402
from stsnb.core.config import resolve_profile  # noqa: E402
from stsnb.core.runs import RUN_RECORD, run_dir
from stsnb.results.controls import KINDS, SHOWING, control_labels  # noqa: E402
from stsnb.results.significance import p_values, permutation_null  # noqa: E402
from stsnb.training.features import read_feature_cache  # noqa: E402
from stsnb.training.folds import patient_table
from stsnb.training.linear import POOLINGS, patient_matrix  # noqa: E402
from stsnb.training.linear_runs import pool_slices  # noqa: E402
from stsnb.training.stage import open_slices  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="work")
    parser.add_argument("--cohort", default="data/synthetic")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    profile = resolve_profile(args.profile)
    source = open_slices(args.work, profile)
    pids = patient_table(source.index)["patient_id"].to_numpy()
    slice_pids = source.index["patient_id"].astype(str).to_numpy()
    labels = {kind: control_labels(args.cohort, pids, kind, args.seed) for kind in KINDS}
    features = {}
    for combo in range(1, 11):
        record_path = run_dir(args.work, "patient", combo) / RUN_RECORD
        if not record_path.exists():
            continue
        record = json.loads(record_path.read_text(encoding="utf-8"))
        features[combo] = read_feature_cache(args.work, record["features_dir"], source,
                                             record["features_key_hash"])
    if not features:
        print(f"No finished FC run under {args.work}/runs/patient: run chapter 04 first.")
        return 1
    showing = {c for c in features
               if set(resolve_combo(c, tuple(source.modalities)).channels) & set(SHOWING)}
    rows, seconds = [], {}
    balanced = profile.training.class_weighting == "balanced"
    for pooling in POOLINGS:
        started = time.perf_counter()
        matrices = {}
        for combo, values in features.items():
            pooled = pool_slices(source, values, pooling)
            order, matrices[combo] = patient_matrix(pooled.astype(np.float64), slice_pids)
            assert list(order) == list(pids)
        for kind in KINDS:
            result = permutation_null(matrices, labels[kind], profile.training.folds, args.seed,
                                      args.permutations,
                                      inner_folds=profile.training.linear_inner_folds,
                                      balanced=balanced)
            table = p_values(result).set_index("combo")
            observed = table["patient_auc"]
            best = int(observed.idxmax())
            rank1 = int((observed > observed[1]).sum()) + 1 if 1 in observed.index else 0
            rows.append({"pooling": pooling, "control": kind, "best_combo": best,
                         "best_auc": round(float(observed[best]), 3),
                         "best_p_corrected": round(float(table.loc[best, "p_best_corrected"]),
                                                   3),
                         "combo1_auc": round(float(observed.get(1, np.nan)), 3),
                         "combo1_rank": rank1,
                         "showing_below_combo1": int(sum(observed[c] <= observed.get(1, -1)
                                                         for c in showing)),
                         "significant_uncorrected": int((table["p_value"] < 0.05).sum())})
        seconds[pooling] = round(time.perf_counter() - started, 1)
    table = pd.DataFrame(rows)
    print(f"CPU: {cpu_model()}; {len(pids)} patients, {len(features)} combinations, "
          f"{args.permutations} permutations per pooling and control")
    print(table.to_string(index=False))
    print("seconds per pooling (both controls):", seconds)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "rows": rows,
                                               "seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
