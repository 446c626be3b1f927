"""The tables of chapter 05b (radiomics baseline): patient AUCs with bootstrap CIs beside the
networks' best, the declared DeLong comparisons, calibration, and the summary in words.

The networks' best combination is the FC head's highest patient AUC on the patient split
(`stsnb.results.stats.auc_order`, the one chapter 06 explains); the linear head is read on the same
combination. The radiomics ``lr`` models' permutation rows are written to
``work_dir/radiomics/significance.csv``, not to ``work_dir/significance.csv``: the latter's
``combo`` column holds combination numbers only (chapter 05 and tests/test_heads.py read it so),
where a radiomics row's combo is a feature set's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stsnb.core.errors import StsnbError
from stsnb.core.runs import radiomics_head, radiomics_run_name
from stsnb.core.store import write_csv_atomic
from stsnb.radiomics.models import ALL
from stsnb.radiomics.stage import radiomics_dir
from stsnb.results.calibration import patient_calibration
from stsnb.results.delong import paired_delong
from stsnb.results.stats import patient_metrics_ci
from stsnb.results.tables import auc_order, patient_aucs, split_predictions

SIGNIFICANCE_FILE = "significance.csv"
AUC_COLUMNS = ("model", "kind", "features", "patient_auc", "ci_low", "ci_high", "n_patients")


@dataclass(frozen=True)
class NetworkBest:
    """The FC head's best combination on the patient split and both heads' predictions of it."""

    combo: int
    name: str
    fc: pd.DataFrame
    linear: pd.DataFrame | None


def network_best(work_dir: str | Path, names: Mapping[int, str],
                 split: str = "patient") -> NetworkBest:
    """The FC head's best combination by patient AUC (ties: the lower number), as chapter 06
    chooses it, with its FC and linear predictions (linear None when that run is absent)."""
    fc = split_predictions(work_dir, split)
    if not fc:
        raise StsnbError(f"No FC run of the {split} split in {work_dir}: run chapter 04 first.")
    best = auc_order(patient_aucs(fc))[0]
    linear = split_predictions(work_dir, split, combos=[best], head="linear").get(best)
    return NetworkBest(combo=int(best), name=str(names.get(best, best)), fc=fc[best],
                       linear=linear)


def fc_label(best: NetworkBest) -> str:
    return f"FC head, combination {best.combo} ({best.name})"


def linear_label(best: NetworkBest) -> str:
    return f"linear head, combination {best.combo} ({best.name})"


def auc_table(entries: Mapping[str, tuple[str, str, pd.DataFrame]], n_boot: int = 2000,
              seed: int = 0) -> pd.DataFrame:
    """One row per model: name -> (kind, features, predictions.csv table); patient AUC with its
    bootstrap 95 % CI over patients (`results.patient_metrics_ci`), sorted by AUC."""
    rows = []
    for name, (kind, features, preds) in entries.items():
        ci = patient_metrics_ci(preds, n_boot=n_boot, seed=seed, metrics=("auc",))
        rows.append({"model": name, "kind": kind, "features": features,
                     "patient_auc": ci.loc[0, "estimate"], "ci_low": ci.loc[0, "ci_low"],
                     "ci_high": ci.loc[0, "ci_high"],
                     "n_patients": int(preds["patient_id"].nunique())})
    table = pd.DataFrame(rows, columns=list(AUC_COLUMNS))
    order = np.lexsort((np.arange(len(table)), -table["patient_auc"].fillna(-np.inf).to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def declared_comparisons(best: NetworkBest, radiomics_all_lr: pd.DataFrame,
                         baselines: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """DeLong's paired test of the comparisons fixed before any result is read: the FC head's
    best combination against ``radiomics-all-lr``, against each of chapter 05's baselines
    (``baselines``: name -> predictions on the same patient folds, e.g. GTV volume alone and
    the clinical columns alone), and against the linear head on that combination
    (difference = b - a; two-sided p)."""
    pairs = [(fc_label(best), best.fc, radiomics_run_name(ALL, "lr"), radiomics_all_lr)]
    for name, preds in (baselines or {}).items():
        pairs.append((fc_label(best), best.fc, name, preds))
    if best.linear is not None:
        pairs.append((fc_label(best), best.fc, linear_label(best), best.linear))
    rows = []
    for name_a, a, name_b, b in pairs:
        result = paired_delong(a, b)
        rows.append({"a": name_a, "b": name_b, **result.as_dict()})
    return pd.DataFrame(rows)


def calibration_table(entries: Mapping[str, pd.DataFrame]) -> tuple[pd.DataFrame,
                                                                     dict[str, pd.DataFrame]]:
    """(slope, intercept, Brier per model; decision curve per model), at patient level."""
    rows, curves = [], {}
    for name, preds in entries.items():
        summary, curve = patient_calibration(preds)
        rows.append({"model": name, **{k: summary[k] for k in
                                       ("slope", "intercept", "brier", "n", "prevalence")}})
        curves[name] = curve
    return pd.DataFrame(rows), curves


def write_significance(work_dir: str | Path, rows: pd.DataFrame) -> Path:
    """``work_dir/radiomics/significance.csv``: the ``lr`` models' permutation rows."""
    return write_csv_atomic(rows, radiomics_dir(work_dir) / SIGNIFICANCE_FILE)


def _ci(row: pd.Series) -> str:
    return f"{row.patient_auc:.2f} (95 % CI {row.ci_low:.2f}-{row.ci_high:.2f})"


def chapter_summary(aucs: pd.DataFrame, significance: pd.DataFrame, comparisons: pd.DataFrame,
                    calibration: pd.DataFrame, alpha: float = 0.05) -> str:
    """The chapter's closing paragraph, from its tables."""
    radiomics = aucs[aucs["kind"] == "radiomics"]
    networks = aucs[aucs["kind"] == "network"]
    text = []
    if len(radiomics):
        top = radiomics.iloc[0]
        text.append(f"Best radiomics model: **{top.model}**, patient AUC {_ci(top)}.")
    if len(networks):
        top = networks.iloc[0]
        text.append(f"Best network: {top.model}, {_ci(top)}.")
    baselines = aucs[aucs["kind"] == "baseline"]
    if len(baselines):
        text.append("Baselines on the same folds: " + ", ".join(
            f"{r.model} {r.patient_auc:.2f}" for r in baselines.itertuples()) + ".")
    lr = significance[significance["head"] == radiomics_head("lr")]
    if len(lr):
        best = lr.sort_values(["patient_auc", "combo"], ascending=[False, True]).iloc[0]
        verdict = "below" if best.p_best_corrected < alpha else "not below"
        text.append(f"Permutation test of the lr models ({int(best.n_permutations)} "
                    f"permutations): the best set, {best.combo}, has p = {best.p_value:.3f}, "
                    f"corrected for the choice among {len(lr)} sets p = "
                    f"{best.p_best_corrected:.3f} ({verdict} {alpha}).")
    for r in comparisons.itertuples():
        significant = np.isfinite(r.p_value) and r.p_value < alpha
        text.append(f"DeLong, {r.b} against {r.a}: AUC difference {r.difference:+.2f} "
                    f"(95 % CI {r.ci_low:+.2f} to {r.ci_high:+.2f}), p = {r.p_value:.3f}: "
                    + ("a difference at the 5 % level." if significant
                       else "no difference shown at the 5 % level."))
    for r in calibration.itertuples():
        text.append(f"{r.model}: calibration slope {r.slope:.2f}, intercept {r.intercept:+.2f}, "
                    f"Brier {r.brier:.3f}.")
    return " ".join(text)
