"""Permutation test of the linear head: `permutation_null` against sklearn's reference.

    .venv/bin/python benchmarks/bench_permutation.py [--patients 61] [--positives 18]
        [--features 512] [--combos 10] [--permutations 200] [--sklearn-permutations 2]
        [--folds 5] [--inner-folds 3] [--seed 0] [--sklearn-blas-threads 1]
        [--exact-reference] [--json out.json]

Synthetic patient matrices (label-bearing noise: combination c shifts 16 of its features by
0.1 * (c - 1) standard deviations in the positives, so the observed AUCs range from chance to
high), one per combination, all on the same patients. Two ways to run the permutation test of
the nested cross-validation (outer stratified folds over patients, C chosen by inner 3-fold ROC
AUC, refit, patient AUC of the out-of-fold probabilities; the observed run plus permutations):

- ours: `stsnb.results.significance.permutation_null` (row-space Newton, every C, inner fold and
  combination of a permutation in one batch);
- sklearn: per combination and outer fold, ``GridSearchCV(make_pipeline(StandardScaler(),
  LogisticRegression()), {"logisticregression__C": Cs}, cv=StratifiedKFold(3, shuffle=True,
  random_state=seed), scoring="roc_auc")`` on the same folds and permuted labels, for the
  observed run and the first few permutations only.

Printed: seconds per permutation per combination of each (the observed run counted as one),
their ratio, and how well the two agree (patient AUCs of the observed and of the shared
permutations, the C chosen in each outer fold of the observed run). `--exact-reference` solves
sklearn's model tightly (tol 1e-10, max_iter 10000) instead of with its defaults.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stsnb.core.metrics import roc_auc  # noqa: E402
from stsnb.results.significance import p_values, permutation_null  # noqa: E402
from stsnb.training.folds import permutation_draw  # noqa: E402
from stsnb.training.logistic import DEFAULT_CS, nested_cv_probs, patient_folds


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_name() -> str:
    """The processor's model name (lscpu), else what platform knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def synthetic(n_patients: int, positives: int, n_features: int, n_combos: int,
              seed: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Labels and one (p, d) patient matrix per combination (label-bearing noise)."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n_patients, dtype=np.int64)
    y[rng.choice(n_patients, positives, replace=False)] = 1
    features = {}
    for combo in range(1, n_combos + 1):
        x = rng.normal(size=(n_patients, n_features))
        x[:, :16] += 0.1 * (combo - 1) * y[:, None]
        features[combo] = x
    return y, features


def sklearn_cv(x: np.ndarray, y: np.ndarray, n_folds: int, seed: int, cs: np.ndarray,
               inner_folds: int, exact: bool) -> tuple[float, list[float]]:
    """Patient AUC of the reference nested CV and the C chosen in each outer fold."""
    model = (LogisticRegression(max_iter=10000, tol=1e-10) if exact else LogisticRegression())
    prob = np.zeros(len(y))
    chosen = []
    for test in patient_folds(y, n_folds, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        search = GridSearchCV(make_pipeline(StandardScaler(), model),
                              {"logisticregression__C": cs},
                              cv=StratifiedKFold(inner_folds, shuffle=True, random_state=seed),
                              scoring="roc_auc").fit(x[train], y[train])
        prob[test] = search.predict_proba(x[test])[:, 1]
        chosen.append(float(search.best_params_["logisticregression__C"]))
    return float(roc_auc(y, prob)), chosen


def run(args: argparse.Namespace) -> dict:
    y, features = synthetic(args.patients, args.positives, args.features, args.combos, args.seed)
    cs = np.asarray(DEFAULT_CS)
    combos = list(features)
    results: dict = {"cpu": cpu_name(), "python": platform.python_version(),
                     "patients": args.patients, "positives": args.positives,
                     "features": args.features, "combos": args.combos, "folds": args.folds,
                     "inner_folds": args.inner_folds, "Cs": cs.tolist(),
                     "permutations": args.permutations,
                     "sklearn_permutations": args.sklearn_permutations,
                     "exact_reference": args.exact_reference,
                     "sklearn_blas_threads": args.sklearn_blas_threads}
    print(f"{args.combos} combinations of {args.patients} patients ({args.positives} positive) "
          f"x {args.features} features, {args.folds} outer x {args.inner_folds} inner folds, "
          f"{len(cs)} Cs; CPU: {results['cpu']}", flush=True)

    wall, cpu = time.perf_counter(), cpu_seconds()
    ours = permutation_null(features, y, args.folds, args.seed, args.permutations, cs,
                            args.inner_folds)
    ours_wall, ours_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    runs = (args.permutations + 1) * args.combos
    results["ours_wall_s"], results["ours_cpu_s"] = ours_wall, ours_cpu
    results["ours_s_per_perm_combo"] = ours_wall / runs
    table = p_values(ours)
    results["ours_p_values"] = table.to_dict(orient="records")
    print(f"ours: {args.permutations} permutations + observed x {args.combos} combinations in "
          f"{ours_wall:.1f} s wall ({ours_cpu:.1f} s CPU)", flush=True)

    reference_observed, reference_null, chosen_ref = {}, np.zeros(
        (args.sklearn_permutations, args.combos)), {}
    wall, cpu = time.perf_counter(), cpu_seconds()
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(
            args.sklearn_blas_threads, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        for column, combo in enumerate(combos):
            x = features[combo]
            reference_observed[combo], chosen_ref[combo] = sklearn_cv(
                x, y, args.folds, args.seed, cs, args.inner_folds, args.exact_reference)
            for k in range(1, args.sklearn_permutations + 1):
                reference_null[k - 1, column] = sklearn_cv(
                    x, permutation_draw(y, args.seed, k), args.folds, args.seed, cs,
                    args.inner_folds, args.exact_reference)[0]
    ref_wall, ref_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    n_warnings = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    ref_runs = (args.sklearn_permutations + 1) * args.combos
    results["sklearn_wall_s"], results["sklearn_cpu_s"] = ref_wall, ref_cpu
    results["sklearn_s_per_perm_combo"] = ref_wall / ref_runs
    results["sklearn_convergence_warnings"] = n_warnings
    results["ratio_sklearn_to_ours"] = results["sklearn_s_per_perm_combo"] / results[
        "ours_s_per_perm_combo"]
    results["ratio_sklearn_to_ours_cpu"] = (ref_cpu / ref_runs) / (ours_cpu / runs)

    observed_diff = np.array([ours.observed[c] - reference_observed[c] for c in combos])
    null_diff = ours.null[:args.sklearn_permutations] - reference_null
    chosen_ours = {c: nested_cv_probs(features[c], y, patient_folds(y, args.folds, args.seed),
                                      cs, args.inner_folds, args.seed).chosen_c.tolist()
                   for c in combos}
    same_c = sum(a == b for c in combos for a, b in zip(chosen_ours[c], chosen_ref[c],
                                                          strict=True))
    results["observed_auc"] = {c: {"ours": ours.observed[c], "sklearn": reference_observed[c]}
                               for c in combos}
    results["max_abs_diff_observed_auc"] = float(np.abs(observed_diff).max())
    results["max_abs_diff_null_auc"] = (float(np.abs(null_diff).max()) if null_diff.size
                                        else None)
    results["chosen_c_equal"] = f"{same_c}/{args.folds * args.combos}"

    per_ours = results["ours_s_per_perm_combo"]
    per_ref = results["sklearn_s_per_perm_combo"]
    print()
    print("| path | runs (permutations + observed) x combinations | wall s | CPU s "
          "| s per permutation per combination |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| ours (`permutation_null`) | {args.permutations + 1} x {args.combos} | "
          f"{ours_wall:.1f} | {ours_cpu:.1f} | {per_ours * 1e3:.1f} ms |")
    reference = "tight" if args.exact_reference else "defaults"
    print(f"| sklearn GridSearchCV ({reference}, BLAS threads {args.sklearn_blas_threads}) | "
          f"{args.sklearn_permutations + 1} x {args.combos} | {ref_wall:.1f} | {ref_cpu:.1f} | "
          f"{per_ref * 1e3:.1f} ms |")
    print(f"| ratio sklearn / ours | | | {results['ratio_sklearn_to_ours_cpu']:.0f}x "
          f"| **{results['ratio_sklearn_to_ours']:.0f}x** |")
    print()
    print("| combination | AUC ours | AUC sklearn | p (ours) | p best-corrected (ours) |")
    print("| --- | --- | --- | --- | --- |")
    for row in table.itertuples():
        print(f"| {row.combo} | {row.patient_auc:.4f} | {reference_observed[row.combo]:.4f} | "
              f"{row.p_value:.3f} | {row.p_best_corrected:.3f} |")
    print()
    null_text = (f"{results['max_abs_diff_null_auc']:.2g}" if null_diff.size else "n/a")
    print(f"agreement: observed AUC max |diff| {results['max_abs_diff_observed_auc']:.2g}, "
          f"null AUC (first {args.sklearn_permutations} permutations) max |diff| {null_text}, "
          f"chosen C equal in {results['chosen_c_equal']} outer folds; sklearn convergence "
          f"warnings: {n_warnings}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=61)
    parser.add_argument("--positives", type=int, default=18)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--combos", type=int, default=10)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--sklearn-permutations", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--inner-folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sklearn-blas-threads", type=int, default=1,
                        help="BLAS threads for the reference (ours always runs on one)")
    parser.add_argument("--exact-reference", action="store_true",
                        help="sklearn with tol=1e-10, max_iter=10000 (its defaults otherwise)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
