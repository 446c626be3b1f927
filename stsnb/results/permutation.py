"""Chance, measured: permutation tests of the whole cross-validation -> ``significance.csv``.

For each head and combination the patient labels are permuted, the folds re-drawn under the
permuted labels by the same patient-stratified splitter and seed, and everything refitted (the
semantics of sklearn's `permutation_test_score`). p = (1 + #{null AUC >= observed}) / (1 + n).
The best of the ten combinations is corrected for that choice by the maximum statistic: the
observed AUC against the maximum over combinations of each permutation's AUCs (the same permuted
labels for every combination). The linear head (cached pooled features, cheap) runs the
profile's `linear_permutations` for every combination; the FC head runs `fc_permutations` for
its best combination (paper profile), and otherwise has only the random-label control runs of
chapter 04 (one draw each, not a test), its best p-value then corrected by Bonferroni.

``work_dir/significance.csv`` columns (a contract): split, head, combo, patient_auc, p_value,
p_best_corrected, n_permutations; then null_95th (the null's 95th percentile) and correction.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsnb.core.config import Profile, resolve_profile
from stsnb.core.errors import StsnbError
from stsnb.core.runs import discover_runs
from stsnb.core.store import (
    hash_config,
    read_json,
    record_timing,
    write_csv_atomic,
    write_json_atomic,
)
from stsnb.results.significance import PermutationResult, p_values, permutation_null
from stsnb.results.tables import auc_order, patient_aucs, split_predictions
from stsnb.training.features import SliceSource
from stsnb.training.folds import patient_table
from stsnb.training.linear import patient_matrix
from stsnb.training.linear_runs import POOLED_FILE

SIGNIFICANCE_FILE = "significance.csv"
SIGNIFICANCE_DIR = "significance"
COLUMNS = ("split", "head", "combo", "patient_auc", "p_value", "p_best_corrected",
           "n_permutations", "null_95th", "correction")


def pooled_patient_features(work_dir: str | Path, source: SliceSource, split: str = "patient",
                            combos: list[int] | None = None
                            ) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, str]]:
    """(patient ids, {combo: (p, 512) patient means}, {combo: linear key hash}) of the linear
    runs of `split` (their ``pooled.npy``), patients sorted by id."""
    runs = discover_runs(work_dir, "linear")
    runs = runs[runs["split"] == split]
    if combos is not None:
        runs = runs[runs["combo"].isin(combos)]
    pids_index = source.index["patient_id"].astype(str).to_numpy()
    matrices, keys, pids = {}, {}, None
    for run in runs.itertuples():
        record = read_json(run.dir / "run.json",
                           fix=f"rerun chapter 04 for combination {run.combo}.")
        pooled = np.load(run.dir / POOLED_FILE)
        if pooled.shape[0] != len(pids_index):
            raise StsnbError(f"{run.dir / POOLED_FILE} has {pooled.shape[0]} rows for "
                             f"{len(pids_index)} slices: rerun chapter 04 for combination "
                             f"{run.combo}.")
        pids, matrices[int(run.combo)] = patient_matrix(pooled.astype(np.float64), pids_index)
        keys[int(run.combo)] = record["key_hash"]
    return (pids if pids is not None else np.array([], dtype=str)), matrices, keys


def patient_labels(source: SliceSource, pids: np.ndarray) -> np.ndarray:
    """The recorded label of each patient in `pids` (int 0/1)."""
    table = patient_table(source.index).set_index("patient_id")
    return table["label"].reindex(pids).to_numpy(np.int64)


def cached_null(path: Path, key: dict[str, Any], compute) -> PermutationResult:
    """The permutation result stored at `path` (npz) for `key`, or computed and stored."""
    key_hash = hash_config(key)
    if path.exists():
        try:
            stored = np.load(path, allow_pickle=False)
            if str(stored["key_hash"]) == key_hash:
                return PermutationResult(
                    observed=dict(zip(stored["combos"].tolist(), stored["observed"].tolist(),
                                      strict=True)),
                    null=stored["null"], combos=tuple(stored["combos"].tolist()),
                    seconds=float(stored["seconds"]))
        except (OSError, ValueError, KeyError):
            pass
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, key_hash=key_hash, combos=np.array(result.combos),
             observed=np.array([result.observed[c] for c in result.combos]), null=result.null,
             seconds=result.seconds)
    tmp.replace(path)
    write_json_atomic(path.with_suffix(".json"), {"key": key, "key_hash": key_hash})
    return result


def linear_test(work_dir: str | Path, source: SliceSource, profile: Profile, seed: int,
                labels: np.ndarray | None = None, name: str = "linear_patient",
                n_permutations: int | None = None) -> tuple[PermutationResult, np.ndarray]:
    """The linear head's permutation test over every patient-split combination.

    `labels` (per patient, sorted by id): other labels than the recorded ones (the controls).
    Stored under ``work_dir/significance/<name>.npz`` and reused while its inputs are unchanged.
    """
    config = profile.training
    pids, matrices, keys = pooled_patient_features(work_dir, source)
    if not matrices:
        raise StsnbError(f"No linear-head run under {Path(work_dir) / 'runs/patient'}: run "
                         "chapter 04 first.")
    y = patient_labels(source, pids) if labels is None else np.asarray(labels, dtype=np.int64)
    n = config.linear_permutations if n_permutations is None else int(n_permutations)
    key = {"runs": keys, "labels": y.tolist(), "seed": int(seed), "folds": config.folds,
           "inner_folds": config.linear_inner_folds, "n_permutations": n,
           "class_weighting": config.class_weighting, "format": 1}

    def compute() -> PermutationResult:
        return permutation_null(matrices, y, config.folds, seed, n,
                                inner_folds=config.linear_inner_folds,
                                balanced=config.class_weighting == "balanced")

    path = Path(work_dir) / SIGNIFICANCE_DIR / f"{name}.npz"
    result = cached_null(path, key, compute)
    return result, y


def fc_permutation_aucs(source: SliceSource, work_dir: str | Path, profile: Profile,
                        combo: int, seed: int, n_permutations: int,
                        labels: np.ndarray | None = None) -> np.ndarray:
    """Patient AUCs of the FC head's whole CV under `n_permutations` permuted label sets.

    The permutations are the linear head's (`permutation_draw`), folds re-drawn under
    them; only the head retrains, on the combination's cached features. Stored per combination
    under ``work_dir/significance/fc_combo<NN>.csv`` and extended, never recomputed.
    """
    from stsnb.training.cv import permutation_run_aucs

    path = Path(work_dir) / SIGNIFICANCE_DIR / f"fc_combo{int(combo):02d}.csv"
    table = patient_table(source.index)
    y = table["label"].to_numpy(np.int64) if labels is None else labels
    return permutation_run_aucs(source, work_dir, profile, combo, seed, table["patient_id"],
                                y, n_permutations, path)


def fc_rows(work_dir: str | Path, source: SliceSource, profile: Profile, seed: int,
            n_combos: int) -> list[dict[str, Any]]:
    """The FC head's rows: patient split (p from its random-label runs or permutations)."""
    observed = patient_aucs(split_predictions(work_dir, "patient"))
    if not observed:
        return []
    controls = patient_aucs(split_predictions(work_dir, "random"))
    best = auc_order(observed)[0]
    extra = {}
    if profile.training.fc_permutations > 0:
        extra[best] = fc_permutation_aucs(source, work_dir, profile, best, seed,
                                          profile.training.fc_permutations)
    rows = []
    for combo, auc in sorted(observed.items()):
        null = np.array(list(extra.get(combo, [])) + ([controls[combo]] if combo in controls
                                                       else []), dtype=float)
        null = null[np.isfinite(null)]
        n = len(null)
        p = (1 + int((null >= auc).sum())) / (1 + n) if n else np.nan
        rows.append({"split": "patient", "head": "fc", "combo": combo, "patient_auc": auc,
                     "p_value": p, "p_best_corrected": min(1.0, p * n_combos)
                     if combo == best and n else np.nan, "n_permutations": n,
                     "null_95th": float(np.quantile(null, 0.95)) if n else np.nan,
                     "correction": f"Bonferroni (x{n_combos})" if combo == best and n
                     else ""})
    for combo, auc in sorted(controls.items()):
        rows.append({"split": "random", "head": "fc", "combo": combo, "patient_auc": auc,
                     "p_value": np.nan, "p_best_corrected": np.nan, "n_permutations": 0,
                     "null_95th": np.nan, "correction": "a control run (one draw of the null)"})
    return rows


def linear_rows(result: PermutationResult, work_dir: str | Path) -> list[dict[str, Any]]:
    """The linear head's rows: patient split, and the random-label runs against the same null."""
    table = p_values(result)
    rows = []
    best = int(table.sort_values(["patient_auc", "combo"], ascending=[False, True])
               ["combo"].iloc[0])
    for row in table.itertuples():
        column = result.combos.index(row.combo)
        rows.append({"split": "patient", "head": "linear", "combo": int(row.combo),
                     "patient_auc": row.patient_auc, "p_value": row.p_value,
                     "p_best_corrected": row.p_best_corrected,
                     "n_permutations": int(row.n_permutations),
                     "null_95th": float(np.quantile(result.null[:, column], 0.95)),
                     "correction": f"max statistic over {len(result.combos)} combinations"
                     + (" (best)" if row.combo == best else "")})
    maxima = result.null.max(axis=1)
    for combo, auc in sorted(patient_aucs(split_predictions(work_dir, "random",
                                                            head="linear")).items()):
        if combo not in result.combos:
            continue
        null = result.null[:, result.combos.index(combo)]
        n = len(null)
        rows.append({"split": "random", "head": "linear", "combo": combo, "patient_auc": auc,
                     "p_value": (1 + int((null >= auc).sum())) / (1 + n),
                     "p_best_corrected": (1 + int((maxima >= auc).sum())) / (1 + n),
                     "n_permutations": n, "null_95th": float(np.quantile(null, 0.95)),
                     "correction": "random-label control against the same null"})
    return rows


def write_significance(work_dir: str | Path, profile: Profile | str = "auto", seed: int = 0,
                       store: SliceSource | None = None) -> pd.DataFrame:
    """Run (or reuse) every permutation test and write ``work_dir/significance.csv``."""
    from stsnb.training.stage import open_slices

    profile = resolve_profile(profile)
    source = store if store is not None else open_slices(work_dir, profile)
    started = time.perf_counter()
    result, _ = linear_test(work_dir, source, profile, seed)
    rows = linear_rows(result, work_dir)
    rows += fc_rows(work_dir, source, profile, seed, len(result.combos))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    write_csv_atomic(table, Path(work_dir) / SIGNIFICANCE_FILE)
    record_timing(work_dir, "permutation tests", time.perf_counter() - started)
    return table


def read_significance(work_dir: str | Path) -> pd.DataFrame:
    """``work_dir/significance.csv``; StsnbError naming the fix when it is absent."""
    path = Path(work_dir) / SIGNIFICANCE_FILE
    if not path.exists():
        raise StsnbError(f"{path} does not exist: run chapter 05 (it runs the permutation "
                         "tests), or stsnb.results.permutation.write_significance.")
    return pd.read_csv(path)


def heads_table(significance: pd.DataFrame, names: dict[int, str]) -> pd.DataFrame:
    """Patient split, one row per combination: both heads' patient AUC and p-values."""
    table = significance[significance["split"] == "patient"]
    wide = None
    for head in ("fc", "linear"):
        part = table[table["head"] == head].set_index("combo")[
            ["patient_auc", "p_value", "n_permutations"]].add_prefix(f"{head}_")
        wide = part if wide is None else wide.join(part, how="outer")
    if wide is None or wide.empty:
        return pd.DataFrame()
    wide.insert(0, "name", [names.get(int(c), str(c)) for c in wide.index])
    return wide.reset_index()


def significance_summary(significance: pd.DataFrame, alpha: float = 0.05) -> str:
    """The verdicts, in words: per head, the best combination with its corrected p-value."""
    lines = []
    for head, text in (("linear", "Linear head"), ("fc", "FC head (the study's)")):
        part = significance[(significance["split"] == "patient")
                            & (significance["head"] == head)]
        if part.empty:
            continue
        best = part.sort_values(["patient_auc", "combo"], ascending=[False, True]).iloc[0]
        found = part[part["p_value"] < alpha]
        n = int(best.n_permutations)
        corrected = best.p_best_corrected
        verdict = ("a signal beyond chance after correcting for the choice of the best "
                   "combination" if corrected < alpha else
                   "no signal beyond chance once the choice of the best combination is "
                   "corrected for" if np.isfinite(corrected) else "no test (no permutations)")
        detail = (f"{text}: best combination {int(best.combo)}, patient AUC "
                  f"{best.patient_auc:.2f}, p = {best.p_value:.3f} ({n} permutation"
                  f"{'s' if n != 1 else ''}), corrected p = {corrected:.3f}: {verdict}; "
                  f"{len(found)} of {len(part)} combinations have an uncorrected p < {alpha}.")
        if head == "fc" and n <= 1:
            detail += (" With a single random-label run per combination this is one draw of "
                       "the null, not a test (the paper profile runs "
                       "fc_permutations for the best combination).")
        lines.append(detail)
    control = significance[(significance["split"] == "random")
                           & (significance["head"] == "linear")]
    if len(control):
        lines.append(f"Random-label runs (linear head) against the same null: corrected p "
                     f"{', '.join(f'{p:.2f}' for p in control['p_best_corrected'])} (chance "
                     "expected).")
    return " ".join(lines)
