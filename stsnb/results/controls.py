"""The suite's own controls: does the pipeline find a signal that is there, and only then?

Both run on the default cohort's own slices and cached features with other labels; only the
heads retrain (nothing is registered or extracted again). They use the synthetic cohort's
ground truth (``<cohort>/<patient>/truth/risk.json``) to test the pipeline only, never to train
for the real outcome.

- **Positive**: the top third of the patients by necrosis fraction of the GTV (the synthetic
  plan's ``necrosis_fraction``). Necrosis is dark and unenhanced on T2w and CE-T1w and barely
  different from viable tumour on CT, so a combination with T2w or CE-T1w should find it and
  combination 1 (CT-Dose-T1w, neither) should rank below them. Its oracle: the label is a
  threshold of the necrosis fraction (AUC 1 by construction); the AUC of a one-number image
  summary (the mean intensity inside the GTV, per modality) says how visible it is in each image.
- **Negative**: as many positives as the positive control, drawn at random among the patients
  with a documented seed (`NEGATIVE_SEED`): independent of the images, so every combination must
  land at chance (about 5 % of them below p = 0.05 by construction, none after correction).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stsnb.core.combinations import resolve_combo
from stsnb.core.config import Profile, resolve_profile
from stsnb.core.errors import StsnbError
from stsnb.core.metrics import roc_auc
from stsnb.core.store import record_timing, write_csv_atomic
from stsnb.results.permutation import linear_rows, linear_test
from stsnb.training.features import SliceSource
from stsnb.training.folds import patient_table

KINDS = ("positive", "negative")
#: Seed of the negative control's labels (with the run's seed): np.random.default_rng([seed, it]).
NEGATIVE_SEED = 0xC0A7
POSITIVE_FACTOR = "necrosis_fraction"
POSITIVE_SHARE = 1 / 3  # top third
CONTROLS_DIR = "controls"
#: The images that show necrosis clearly (the positive control's expected winners).
SHOWING = ("t2w", "ce_t1w")


def truth_factor(cohort_dir: str | Path, patient_id: str, name: str = POSITIVE_FACTOR) -> float:
    """A latent factor of the synthetic plan (``truth/risk.json``'s factors) for one patient."""
    path = Path(cohort_dir) / patient_id / "truth" / "risk.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return float(doc["factors"][name])
    except (OSError, ValueError, KeyError) as exc:
        raise StsnbError(f"Patient {patient_id}: {path} has no factor {name!r} ({exc}). The "
                         "controls need a synthetic cohort with its ground truth (make data)."
                         ) from exc


def control_labels(cohort_dir: str | Path, patient_ids: np.ndarray, kind: str,
                   seed: int = 0) -> np.ndarray:
    """int64 labels per patient (in the order of `patient_ids`) of the `kind` control."""
    pids = [str(p) for p in patient_ids]
    n_pos = max(1, int(math.floor(len(pids) * POSITIVE_SHARE + 0.5)))
    labels = np.zeros(len(pids), dtype=np.int64)
    if kind == "positive":
        values = np.array([truth_factor(cohort_dir, p) for p in pids])
        order = np.lexsort((np.array(pids), -values))  # largest first, ties by id
        labels[order[:n_pos]] = 1
    elif kind == "negative":
        rng = np.random.default_rng([int(seed), NEGATIVE_SEED])
        labels[rng.choice(len(pids), size=n_pos, replace=False)] = 1
    else:
        raise StsnbError(f"Unknown control {kind!r}: expected one of {', '.join(KINDS)}.")
    return labels


def image_oracle(source: SliceSource, patient_ids: np.ndarray,
                 labels: np.ndarray) -> pd.DataFrame:
    """Per modality: the patient AUC of the mean intensity inside the GTV for `labels`
    (how visible the label is in each image; 0.5 = not at all, far from 0.5 either way = very)."""
    rows = source.index["row"].to_numpy(np.int64)
    pids = source.index["patient_id"].astype(str).to_numpy()
    masks = source.gtv_masks(rows)
    out = []
    for modality in source.modalities:
        images = source.modality(rows, modality)
        inside = np.array([img[m].mean() if m.any() else np.nan
                           for img, m in zip(images, masks, strict=True)])
        means = pd.Series(inside).groupby(pids).mean().reindex(patient_ids)
        auc = float(roc_auc(labels, means.to_numpy()))
        out.append({"modality": modality, "gtv_mean_auc": auc,
                    "separation": abs(auc - 0.5) * 2})
    return pd.DataFrame(out)


@dataclass
class ControlResults:
    """Both controls: the linear head's permutation tests and the FC head's runs."""

    linear: pd.DataFrame  # kind, combo, patient_auc, p_value, p_best_corrected, n_permutations
    fc: pd.DataFrame  # kind, combo, draw, patient_auc, train_loss, constant_loss, prob_iqr
    oracle: pd.DataFrame  # modality, gtv_mean_auc, separation (positive labels)
    n_positive: int
    n_patients: int
    seconds: dict[str, float]


def best_showing(table: pd.DataFrame, modalities: tuple[str, ...]) -> int:
    """The combination with T2w or CE-T1w with the highest AUC in `table` (combo, patient_auc);
    the best of all where no combination holds them (a cohort without those images)."""
    showing = [c for c in table["combo"]
               if set(resolve_combo(int(c), modalities).channels) & set(SHOWING)]
    pool = table[table["combo"].isin(showing)] if showing else table
    ranked = pool.sort_values(["patient_auc", "combo"], ascending=[False, True])
    return int(ranked["combo"].iloc[0])


def run_controls(cohort_dir: str | Path, work_dir: str | Path, profile: Profile | str = "auto",
                 seed: int = 0, store: SliceSource | None = None,
                 fc_negative_draws: int | None = None) -> ControlResults:
    """Run both controls (reused where stored) and write ``work_dir/controls/*.csv``."""
    from stsnb.training.cv import FoldHeads
    from stsnb.training.stage import open_slices

    profile = resolve_profile(profile)
    source = store if store is not None else open_slices(work_dir, profile)
    pids = patient_table(source.index)["patient_id"].to_numpy()
    pid_of_slice = source.index["patient_id"].astype(str)
    seconds: dict[str, float] = {}
    linear_tables = []
    labels = {kind: control_labels(cohort_dir, pids, kind, seed) for kind in KINDS}
    for kind in KINDS:
        started = time.perf_counter()
        result, _ = linear_test(work_dir, source, profile, seed, labels=labels[kind],
                                name=f"control_{kind}")
        rows = pd.DataFrame([r for r in linear_rows(result, work_dir)
                             if r["split"] == "patient"]).assign(kind=kind)
        linear_tables.append(rows)
        seconds[f"controls: linear head, {kind}"] = time.perf_counter() - started
    linear = pd.concat(linear_tables, ignore_index=True)
    positive = linear[linear["kind"] == "positive"]
    best = best_showing(positive, tuple(source.modalities))
    fc_combos = list(dict.fromkeys([best, 1]))
    draws = (fc_negative_draws if fc_negative_draws is not None
             else max(1, profile.training.fc_permutations, CONTROL_FC_DRAWS.get(profile.name, 9)))
    fc_rows = []
    started = time.perf_counter()
    for combo in fc_combos:
        if combo not in set(linear["combo"]):
            continue
        heads = FoldHeads(source, work_dir, profile, combo, seed)
        runs = [("positive", 0, labels["positive"])]
        if combo == best:
            runs += [("negative", k, control_labels(cohort_dir, pids, "negative", seed + k))
                     for k in range(draws)]
        for kind, draw, per_patient in runs:
            slice_labels = pid_of_slice.map(dict(zip(pids, per_patient, strict=True)))
            outcome = heads.run(slice_labels.to_numpy(np.int64))
            fc_rows.append({"kind": kind, "combo": combo, "draw": draw,
                            "patient_auc": outcome.patient_auc,
                            "train_loss": outcome.train_loss,
                            "constant_loss": outcome.constant_loss,
                            "prob_iqr": float(np.subtract(*np.percentile(
                                outcome.patient_prob, [75, 25])))})
    seconds["controls: FC head"] = time.perf_counter() - started
    fc = pd.DataFrame(fc_rows)
    oracle = image_oracle(source, pids, labels["positive"])
    root = Path(work_dir) / CONTROLS_DIR
    write_csv_atomic(linear, root / "linear.csv")
    write_csv_atomic(fc, root / "fc.csv")
    write_csv_atomic(oracle, root / "oracle.csv")
    for stage, value in seconds.items():
        record_timing(work_dir, stage, value)
    return ControlResults(linear, fc, oracle, int(labels["positive"].sum()), len(pids), seconds)


#: FC runs of the negative control per profile (their 95th percentile is the positive's bar).
CONTROL_FC_DRAWS = {"smoke": 2, "quick": 9, "paper": 19}


def controls_summary(results: ControlResults, alpha: float = 0.05) -> str:
    """The controls' verdicts in words, with the figures."""
    linear = results.linear
    lines = [f"{results.n_positive} of {results.n_patients} patients positive in both controls."]
    for kind in KINDS:
        part = linear[linear["kind"] == kind]
        best = part.sort_values(["patient_auc", "combo"], ascending=[False, True]).iloc[0]
        significant = int((part["p_value"] < alpha).sum())
        lines.append(
            f"**{kind.capitalize()} control, linear head:** best combination {int(best.combo)} "
            f"(AUC {best.patient_auc:.2f}, corrected p = {best.p_best_corrected:.3f}, "
            f"{int(best.n_permutations)} permutations); {significant} of {len(part)} "
            f"combinations with uncorrected p < {alpha}.")
    positive = linear[linear["kind"] == "positive"].set_index("combo")["patient_auc"]
    if 1 in positive.index and len(positive) > 1:
        rank = int((positive > positive[1]).sum()) + 1
        lines.append(f"Combination 1 (no T2w, no CE-T1w) ranks {rank} of {len(positive)} on the "
                     f"positive control (AUC {positive[1]:.2f}).")
    fc = results.fc
    if len(fc):
        negative = fc[fc["kind"] == "negative"]["patient_auc"]
        bar = float(np.quantile(negative, 0.95)) if len(negative) else np.nan
        for row in fc[fc["kind"] == "positive"].itertuples():
            lines.append(
                f"**FC head, positive control, combination {row.combo}:** patient AUC "
                f"{row.patient_auc:.2f} against the 95th percentile {bar:.2f} of its "
                f"{len(negative)} negative-control runs; training loss at the restored epoch "
                f"{row.train_loss:.3f} = {row.train_loss / row.constant_loss:.2f} x that of "
                f"the best constant prediction ({row.constant_loss:.3f} nats).")
    return " ".join(lines)


def radiomics_controls_summary(table: pd.DataFrame, alpha: float = 0.05) -> str:
    """The radiomics lr models' verdicts on both controls (rows of
    `stsnb.radiomics.permutation.control_significance`), in words."""
    lines = []
    for kind in KINDS:
        part = table[table["kind"] == kind]
        if part.empty:
            continue
        best = part.sort_values(["patient_auc", "combo"], ascending=[False, True]).iloc[0]
        verdict = "found" if best.p_best_corrected < alpha else "not found"
        lines.append(
            f"**{kind.capitalize()} control, radiomics lr:** best set {best.combo} (AUC "
            f"{best.patient_auc:.2f}, p = {best.p_value:.3f}, corrected for the choice among "
            f"{len(part)} sets p = {best.p_best_corrected:.3f}, {int(best.n_permutations)} "
            f"permutations): {verdict}; {int((part['p_value'] < alpha).sum())} of {len(part)} "
            f"sets with uncorrected p < {alpha}.")
    return " ".join(lines)
