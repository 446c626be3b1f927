"""Stage 05: every table of the results chapter, recomputed from the work dir's runs: the study's
table beside ours, the combinations ranked, the splits compared, the baselines, the chance
verdicts and the chapter's summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stsnb.core.errors import StsnbError
from stsnb.core.metrics import (
    STUDY_METRICS,
    binary_metrics,
    patient_predictions,
)
from stsnb.core.runs import SPLITS, discover_runs, load_predictions
from stsnb.results.stats import (
    baseline_predictions,
    chance_band,
    fold_metrics,
    format_mean_std,
    mean_std,
    paired_auc_difference,
    patient_metrics_ci,
)

#: The study's published table (results slide 2): slice-level 10-fold CV, mean +- std.
STUDY_TABLE = pd.DataFrame(
    [
        (1, "ct-dose-t1w", 0.78, 0.02, 0.67, 0.02, 0.75, 0.02, 0.73, 0.05, 0.70, 0.03),
        (2, "ct-dose-ce_t1w", 0.85, 0.03, 0.81, 0.03, 0.82, 0.03, 0.77, 0.06, 0.79, 0.04),
        (3, "ct-dose-t2w", 0.84, 0.03, 0.75, 0.04, 0.83, 0.03, 0.79, 0.06, 0.77, 0.05),
        (4, "ct-t1w-ce_t1w", 0.80, 0.02, 0.68, 0.02, 0.72, 0.02, 0.69, 0.05, 0.68, 0.04),
        (5, "ct-t1w-t2w", 0.80, 0.02, 0.71, 0.03, 0.70, 0.02, 0.68, 0.04, 0.69, 0.03),
        (6, "ct-t2w-ce_t1w", 0.86, 0.04, 0.81, 0.06, 0.73, 0.04, 0.71, 0.06, 0.76, 0.06),
        (7, "dose-t1w-ce_t1w", 0.89, 0.04, 0.75, 0.05, 0.84, 0.04, 0.81, 0.07, 0.78, 0.06),
        (8, "dose-t1w-t2w", 0.85, 0.02, 0.76, 0.03, 0.80, 0.02, 0.77, 0.05, 0.76, 0.04),
        (9, "dose-t2w-ce_t1w", 0.90, 0.03, 0.85, 0.06, 0.84, 0.04, 0.78, 0.05, 0.81, 0.04),
        (10, "t1w-t2w-ce_t1w", 0.89, 0.02, 0.77, 0.02, 0.86, 0.02, 0.83, 0.03, 0.80, 0.03),
    ],
    columns=[
        "number", "name",
        "accuracy_mean", "accuracy_std", "sensitivity_mean", "sensitivity_std",
        "specificity_mean", "specificity_std", "precision_mean", "precision_std",
        "f1_mean", "f1_std",
    ],
)


def combination_names(work_dir: str | Path) -> dict[int, str]:
    """Combination number -> name for this work dir, from `combinations.csv` (chapter 03; the
    cohort's declared modalities); the study's numbering when that file is absent."""
    from stsnb.core.combinations import combinations_for

    path = Path(work_dir) / "combinations.csv"
    if not path.exists():
        return {c.number: c.name for c in combinations_for()}
    table = pd.read_csv(path, dtype={"name": str})
    if not {"number", "name"} <= set(table.columns):
        raise StsnbError(f"{path} lacks the columns number and name; rerun chapter 03.")
    return dict(zip(table["number"].astype(int), table["name"], strict=True))


def study_comparison(ours: Mapping[int, pd.DataFrame],
                     names: Mapping[int, str] | None = None) -> pd.DataFrame:
    """Our slice-level mean ± std beside the study's, one row per combination, same layout.

    `ours` maps a combination number to its per-fold metrics (`fold_metrics`); `names` maps our
    numbers to names (`combination_names`; default: the study's numbering). A study combination
    is matched by its images in channel order; it reads "not in this cohort" when this cohort
    lacks one of them, "not run" otherwise. Our combinations that are not in the study's table
    follow, with "not in the study" in the study's columns.
    """
    if names is None:
        names = dict(zip(STUDY_TABLE["number"], STUDY_TABLE["name"], strict=True))
    number_of = {name: number for number, name in names.items()}
    metrics = ("accuracy", "sensitivity", "specificity", "precision", "f1")

    def ours_cell(number: int | None, metric: str) -> str:
        if number is None:
            return "not in this cohort"
        if number not in ours:
            return "not run"
        mean, std = mean_std(ours[number], (metric,))[metric]
        return format_mean_std(mean, std)

    rows = []
    for study_row in STUDY_TABLE.itertuples(index=False):
        number = number_of.get(study_row.name)
        row = {"combination": f"{study_row.number}. {study_row.name}"}
        if number is not None and number != study_row.number:
            row["combination"] += f" (ours: {number})"
        for metric in metrics:
            row[f"{metric} (study)"] = format_mean_std(getattr(study_row, f"{metric}_mean"),
                                                       getattr(study_row, f"{metric}_std"))
            row[f"{metric} (ours)"] = ours_cell(number, metric)
        rows.append(row)
    in_study = set(STUDY_TABLE["name"])
    for number in sorted(ours):
        name = names.get(number, str(number))
        if name in in_study:
            continue
        row = {"combination": f"{number}. {name}"}
        for metric in metrics:
            row[f"{metric} (study)"] = "not in the study"
            row[f"{metric} (ours)"] = ours_cell(number, metric)
        rows.append(row)
    return pd.DataFrame(rows)


def best_epoch_accuracy(history: pd.DataFrame) -> pd.DataFrame:
    """Per fold, train and validation accuracy at the epoch of lowest validation loss."""
    rows = []
    for fold, group in history.groupby("fold"):
        val = group[group["phase"] == "val"]
        best = int(val.loc[val["loss"].idxmin(), "epoch"])
        at_best = group[group["epoch"] == best].set_index("phase")["accuracy"]
        rows.append({"fold": fold, "best_epoch": best, "train": float(at_best.get("train")),
                     "val": float(at_best.get("val"))})
    return pd.DataFrame(rows)


def combination_summary(work_dir: str | Path, split: str, n_boot: int = 2000,
                        seed: int = 0, head: str = "fc") -> pd.DataFrame:
    """One row per combination run under `split` by `head`: slice-level mean ± std over folds
    and the patient-level AUC and balanced accuracy with bootstrap 95% CIs."""
    names = combination_names(work_dir)
    runs = discover_runs(work_dir, head)
    rows = []
    for run in runs[runs["split"] == split].itertuples():
        preds = load_predictions(run.dir / "predictions.csv")
        per_fold = fold_metrics(preds)
        summary = mean_std(per_fold)
        row = {"combo": run.combo, "name": names.get(run.combo, str(run.combo))}
        for metric in STUDY_METRICS:
            row[f"slice_{metric}_mean"], row[f"slice_{metric}_std"] = summary[metric]
        ci = patient_metrics_ci(preds, n_boot=n_boot, seed=seed,
                                metrics=("auc", "balanced_accuracy")).set_index("metric")
        for metric in ("auc", "balanced_accuracy"):
            row[f"patient_{metric}"] = ci.loc[metric, "estimate"]
            row[f"patient_{metric}_low"] = ci.loc[metric, "ci_low"]
            row[f"patient_{metric}_high"] = ci.loc[metric, "ci_high"]
        history_path = run.dir / "history.csv"
        if head == "fc" and history_path.exists():
            acc = best_epoch_accuracy(pd.read_csv(history_path))
            row["train_accuracy"], row["val_accuracy"] = acc["train"].mean(), acc["val"].mean()
        row["test_accuracy"] = summary["accuracy"][0]
        row["n_patients"] = preds["patient_id"].nunique()
        row["n_slices"] = len(preds)
        rows.append(row)
    return pd.DataFrame(rows)


def split_predictions(work_dir: str | Path, split: str = "patient",
                      combos: Sequence[int] | None = None,
                      head: str = "fc") -> dict[int, pd.DataFrame]:
    """predictions.csv of every finished run of `split` (or of `combos` only), by combination
    (`head` fc, linear or all; the radiomics runs: `stsnb.radiomics.models.split_runs`)."""
    if head == "radiomics":
        raise StsnbError("split_predictions is by combination number; read the radiomics runs "
                         "with stsnb.radiomics.models.split_runs.")
    runs = discover_runs(work_dir, head)
    if runs.empty:
        return {}
    runs = runs[runs["split"] == split]
    if combos is not None:
        runs = runs[runs["combo"].isin(list(combos))]
    return {int(r.combo): load_predictions(r.dir / "predictions.csv") for r in runs.itertuples()}


def patient_aucs(preds: Mapping[int, pd.DataFrame]) -> dict[int, float]:
    """Patient-level AUC (mean slice probability per patient) of each combination."""
    return {c: binary_metrics(*patient_predictions(p)[["label", "prob"]].T.to_numpy())["auc"]
            for c, p in preds.items()}


def auc_order(aucs: Mapping[int, float]) -> list[int]:
    """Combinations from the highest patient-level AUC to the lowest (ties: lower number first;
    an undefined AUC ranks last)."""
    def key(combo: int) -> tuple[float, int]:
        auc = aucs[combo]
        return (-auc if np.isfinite(auc) else np.inf, combo)
    return sorted(aucs, key=key)


def ranking(work_dir: str | Path, split: str = "patient", n_boot: int = 2000,
            seed: int = 0) -> pd.DataFrame:
    """Combinations ranked by patient-level AUC, each compared with the best (paired bootstrap)."""
    preds = split_predictions(work_dir, split)
    aucs = patient_aucs(preds)
    order = auc_order(aucs)
    if not order:
        return pd.DataFrame()
    best = order[0]
    rows = []
    for rank, combo in enumerate(order, start=1):
        diff = (paired_auc_difference(preds[best], preds[combo], n_boot=n_boot, seed=seed)
                if combo != best else {"auc_difference": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                                       "p_not_worse": 1.0})
        rows.append({"rank": rank, "combo": combo, "patient_auc": aucs[combo],
                     "auc_minus_best": diff["auc_difference"], "ci_low": diff["ci_low"],
                     "ci_high": diff["ci_high"], "p_not_worse_than_best": diff["p_not_worse"]})
    return pd.DataFrame(rows)


def patient_folds(predictions: pd.DataFrame) -> dict[str, int]:
    """patient -> test fold, from a patient-grouped run's predictions."""
    folds = predictions.groupby("patient_id")["fold"].agg(["first", "nunique"])
    if (folds["nunique"] > 1).any():
        raise StsnbError("A patient is tested in two folds: these are not patient-grouped folds.")
    return folds["first"].to_dict()


#: Patient-level baselines, on the network's patient folds (logistic regression).
BASELINES = {
    "GTV volume alone": ["gtv_volume_cc"],
    "clinical columns alone (age, sex, grade)": ["age", "sex", "grade"],
}


def baseline_table(work_dir: str | Path, reference: pd.DataFrame, n_boot: int = 2000,
                   seed: int = 0) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Each baseline's patient-level AUC (95% CI) beside the reference run, on its folds."""
    from stsnb.curation.stage import read_cohort_table

    cohort = read_cohort_table(work_dir)
    patients = cohort[cohort["included"]].assign(label=lambda t: t["label"].astype(int))
    folds = patient_folds(reference)
    predictions = {"network (reference combination)": reference}
    for name, features in BASELINES.items():
        usable = [f for f in features if f in patients.columns]
        if usable:
            predictions[name] = baseline_predictions(patients, folds, usable, seed=seed)
    rows = []
    for name, preds in predictions.items():
        ci = patient_metrics_ci(preds, n_boot=n_boot, seed=seed, metrics=("auc",))
        rows.append({"model": name, "patient_auc": ci.loc[0, "estimate"],
                     "ci_low": ci.loc[0, "ci_low"], "ci_high": ci.loc[0, "ci_high"]})
    return pd.DataFrame(rows), predictions


def chance_band_sentence(verdicts: pd.DataFrame, significance: pd.DataFrame) -> str:
    """The analytic chance band of these patients next to the linear head's permutation null
    (its 95th percentile, patient split, over the combinations)."""
    linear = significance[(significance["head"] == "linear")
                          & (significance["split"] == "patient")]["null_95th"]
    band = (f"Analytic band for these patients: {verdicts.band_low.iloc[0]:.2f}-"
            f"{verdicts.band_high.iloc[0]:.2f}")
    if linear.empty:
        return band + "; no permutation null of the linear head yet."
    return (f"{band}; 95th percentile of the linear head's permutation null: "
            f"{linear.min():.2f}-{linear.max():.2f} over the combinations.")


def chance_verdicts(work_dir: str | Path, level: float = 0.95) -> pd.DataFrame:
    """Each run's patient-level AUC against the chance band for its patients.

    The random-label control must fall inside the band; a combination whose AUC lies above
    the band has found a signal at that level (one-sided, not corrected for the number of
    combinations).
    """
    names = combination_names(work_dir)
    rows = []
    for run in discover_runs(work_dir).itertuples():
        patients = patient_predictions(load_predictions(run.dir / "predictions.csv"))
        n_pos = int((patients["label"] == 1).sum())
        n_neg = int((patients["label"] == 0).sum())
        auc = binary_metrics(patients["label"].to_numpy(), patients["prob"].to_numpy())["auc"]
        low, high = chance_band(n_pos, n_neg, level)
        verdict = ("above chance" if auc > high else "below chance" if auc < low
                   else "inside the chance band")
        rows.append({"split": run.split, "combo": run.combo,
                     "name": names.get(run.combo, str(run.combo)), "patients": n_pos + n_neg,
                     "dm": n_pos, "patient_auc": auc, "band_low": low, "band_high": high,
                     "verdict": verdict})
    return pd.DataFrame(rows, columns=["split", "combo", "name", "patients", "dm", "patient_auc",
                                       "band_low", "band_high", "verdict"])


def split_comparison(work_dir: str | Path, n_boot: int = 2000, seed: int = 0,
                     known: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Combinations run under more than one split, side by side (the leakage control).

    `known`: combination_summary tables already computed (same n_boot and seed), by split.
    """
    known = known or {}
    frames = [(known[split] if split in known else
               combination_summary(work_dir, split, n_boot=n_boot, seed=seed)).assign(split=split)
              for split in SPLITS]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    shared = table.groupby("combo")["split"].nunique()
    return table[table["combo"].isin(shared[shared > 1].index)].reset_index(drop=True)


def results_summary(summary: pd.DataFrame, ranked: pd.DataFrame, by_split: pd.DataFrame,
                    baselines: pd.DataFrame) -> str:
    """The chapter's closing paragraph, with the figures that matter."""
    if summary.empty:
        return "No patient-grouped run was found."
    best = summary.sort_values("patient_auc", ascending=False).iloc[0]
    worst = summary.sort_values("patient_auc").iloc[0]
    text = [
        f"Best combination (patient-level AUC): **{int(best.combo)} {best['name']}**, AUC "
        f"{best.patient_auc:.2f} (95% CI {best.patient_auc_low:.2f}-{best.patient_auc_high:.2f}); "
        f"worst: {int(worst.combo)} {worst['name']}, AUC {worst.patient_auc:.2f}.",
    ]
    if len(ranked) > 1:
        close = ranked[(ranked["ci_high"] >= 0) & (ranked["rank"] > 1)]
        text.append(f"{len(close)} of {len(ranked) - 1} other combinations are not "
                    "distinguishable from the best at 95% (paired bootstrap).")
    if len(by_split):
        means = by_split.groupby("split")["slice_accuracy_mean"].mean()
        parts = [f"{split} {value:.2f}" for split, value in means.items()]
        text.append("Mean slice-level test accuracy by split: " + ", ".join(parts) + ".")
    if len(baselines):
        parts = [f"{r.model} {r.patient_auc:.2f}" for r in baselines.itertuples()]
        text.append("Patient-level AUC of the baselines on the same folds: " + ", ".join(parts)
                    + ".")
    return " ".join(text)
