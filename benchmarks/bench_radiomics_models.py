"""Seconds of the radiomics models (nested CV per feature set and model) and of the lr models'
permutation test, on a work dir with ``radiomics/features.csv`` and chapter 03's slice store.

    .venv/bin/python benchmarks/bench_radiomics_models.py --work /tmp/bench_work \
        [--profile quick] [--permutations 200] [--sklearn-permutations 2] [--json out.json]

The runs are written under ``<work>/runs/patient/radiomics-*`` (use a scratch work dir whose
``slices`` and ``radiomics`` folders link to the real ones). Reported: seconds of each run's
nested CV (sklearn Pipelines and GridSearchCV), the permutation test's seconds per permutation
per set (the batched solver, observed run included), the same nested CV by the sklearn Pipeline
on a few permutations for comparison, and the observed AUCs both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from stsnb.core.config import resolve_profile
from stsnb.core.metrics import roc_auc
from stsnb.radiomics import models
from stsnb.radiomics.permutation import radiomics_significance
from stsnb.radiomics.stage import read_features
from stsnb.training.folds import permutation_draw
from stsnb.training.logistic import patient_folds
from stsnb.training.stage import open_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="work dir (runs are written here)")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--permutations", type=int, default=None,
                        help="default: the profile's radiomics.lr_permutations")
    parser.add_argument("--sklearn-permutations", type=int, default=2,
                        help="permutations refitted by the sklearn Pipeline, for comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    profile = resolve_profile(args.profile)
    store = open_slices(args.work, profile)
    started = time.perf_counter()
    runs = models.run_radiomics_models(args.work, profile, seed=args.seed, store=store)
    models_wall = time.perf_counter() - started
    table = models.models_table(runs)
    print(table.to_string(index=False))
    per_model = table.groupby("model")["seconds"].agg(["sum", "median"]).round(2)
    print(f"nested CV of {len(runs)} runs: {models_wall:.1f} s wall "
          f"({'all reused' if table['reused'].all() else 'computed'}); by model:\n{per_model}")

    rows, result = radiomics_significance(args.work, profile, seed=args.seed, store=store,
                                          n_permutations=args.permutations)
    n_sets, n_perm = len(result.combos), len(result.null)
    per = result.seconds / ((n_perm + 1) * n_sets)
    print(rows.to_string(index=False))
    print(f"permutation test: {n_perm} permutations x {n_sets} sets in {result.seconds:.1f} s "
          f"({1000 * per:.1f} ms per permutation per set)")

    folds = models.fold_plan(store.index, profile, "patient", args.seed)
    features = read_features(args.work)
    sets = models.feature_sets(features)
    started = time.perf_counter()
    for k in range(1, args.sklearn_permutations + 1):
        labels = permutation_draw(folds.labels, args.seed, k)
        tests = patient_folds(labels, profile.training.folds, args.seed)
        shuffled = models.PatientFolds("patient", folds.patient_ids, labels, tuple(tests),
                                       tuple(range(1, len(tests) + 1)))
        for name, columns in sets.items():
            x = models.feature_matrix(features, folds.patient_ids, columns)
            prob, _ = models.nested_cv("lr", x, shuffled, profile.radiomics, args.seed)
            assert abs(roc_auc(labels, prob) - result.null[k - 1, result.combos.index(name)]) \
                < 1e-6, (name, k)
    sk = (time.perf_counter() - started) / max(1, args.sklearn_permutations * len(sets))
    print(f"sklearn Pipeline + GridSearchCV: {1000 * sk:.0f} ms per permutation per set "
          f"({sk / per:.0f}x), the same null AUCs; {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}")
    observed = {r.feature_set: float(r.record["seconds"]) for r in runs if r.model == "lr"}
    if args.json:
        Path(args.json).write_text(json.dumps({
            "runs": table.to_dict(orient="records"), "models_wall": models_wall,
            "permutation_seconds": result.seconds, "ms_per_permutation_per_set": 1000 * per,
            "sklearn_ms_per_permutation_per_set": 1000 * sk, "lr_seconds": observed,
            "significance": rows.to_dict(orient="records"),
            "null_mean": np.mean(result.null, axis=0).tolist()}, indent=2))


if __name__ == "__main__":
    main()
