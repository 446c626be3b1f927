"""Does the study's FC head learn, and how many SGD steps does it need? (chapter 04's settings)

    .venv/bin/python benchmarks/bench_fc_steps.py --work work --cohort data/synthetic \
        [--combo 10] [--settings 8:3 20:6 40:10:0.001] [--labels positive outcome] [--json out.json]

On a built quick-profile work dir (chapter 03's slice store; the combination's feature cache is
made when absent), the FC head's whole cross-validation under each (max_epochs:patience)
setting (and learning rate, when given), for the positive control's labels (top third by
necrosis fraction) and the recorded
outcome: SGD steps taken (sum over folds), training loss at the restored epoch against the
entropy of the training prior, patient AUC, the interquartile range of the test probabilities
and the seconds of the heads (features excluded). Only the head retrains; the rest of the
profile (folds, batch, learning rate, feature scaling) is the quick profile's.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stsnb.core.combinations import resolve_combo  # noqa: E402
from stsnb.core.config import QUICK  # noqa: E402
from stsnb.results.controls import control_labels  # noqa: E402
from stsnb.training.cv import cross_validate, head_training
from stsnb.training.features import cached_features, resolve_device, resolve_precision  # noqa: E402
from stsnb.training.folds import make_folds, patient_table  # noqa: E402
from stsnb.training.model import build_model  # noqa: E402
from stsnb.training.stage import open_slices


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="work")
    parser.add_argument("--cohort", default="data/synthetic")
    parser.add_argument("--combo", type=int, default=10)
    parser.add_argument("--settings", nargs="*", default=["8:3", "20:6", "40:10"],
                        help="max_epochs:patience[:learning_rate] settings")
    parser.add_argument("--labels", nargs="*", default=["positive", "outcome"])
    parser.add_argument("--scaling", nargs="*", default=[None],
                        help="feature scalings to compare (default: the weights' own)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    source = open_slices(args.work, QUICK)
    combination = resolve_combo(args.combo, tuple(source.modalities))
    device = resolve_device("cpu")
    bundle = build_model("auto", seed=0)
    features = cached_features(source, args.work, combination.channels, bundle, device,
                               resolve_precision("auto", device), progress=False)
    patients = patient_table(source.index)
    pids = source.index["patient_id"].astype(str)
    rows = []
    for labels_name in args.labels:
        if labels_name == "outcome":
            slice_labels = None
        else:
            per_patient = control_labels(args.cohort, patients["patient_id"].to_numpy(),
                                         labels_name, 0)
            slice_labels = pids.map(dict(zip(patients["patient_id"], per_patient,
                                             strict=True))).to_numpy(np.int64)
        for setting, scaling in ((s, m) for s in args.settings for m in args.scaling):
            parts = setting.split(":")
            epochs, patience = int(parts[0]), int(parts[1])
            config = replace(QUICK.training, max_epochs=epochs, patience=patience)
            if len(parts) > 2:  # this rate for every weights source
                config = replace(config, learning_rate=float(parts[2]),
                                 rescaled_learning_rate=None)
            rate = head_training(config, bundle.weights).learning_rate
            plan = make_folds(source.index, "patient", config.folds, 0,
                              config.validation_fraction, labels=slice_labels)
            started = time.perf_counter()
            outcomes = cross_validate(source, combination, plan, bundle, config, 0, device,
                                      "fp32", features=features.values, scaling=scaling)
            seconds = time.perf_counter() - started
            prob = np.empty(len(plan.labels))
            steps, losses, constants = 0, [], []
            for fold, outcome in zip(plan.folds, outcomes, strict=True):
                prob[fold.test] = outcome.test_prob
                steps += outcome.epochs_run * int(np.ceil(len(fold.train) / config.batch_size))
                losses.append(outcome.restored_train_loss)
                constants.append(outcome.constant_loss)
            per_patient_prob = pd.DataFrame({"pid": plan.patient_ids, "y": plan.labels,
                                             "p": prob}).groupby("pid").mean()
            rows.append({
                "labels": labels_name, "max_epochs": epochs, "patience": patience,
                "learning_rate": rate, "scaling": scaling or "default",
                "steps": steps, "train_loss": float(np.mean(losses)),
                "loss_over_constant": float(np.mean(losses) / np.mean(constants)),
                "patient_auc": float(roc_auc_score(per_patient_prob["y"],
                                                   per_patient_prob["p"])),
                "prob_iqr": float(np.subtract(*np.percentile(per_patient_prob["p"], [75, 25]))),
                "seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
    print(f"\nCPU: {cpu_name()}; combination {combination.number} ({combination.name}); "
          f"{len(source.index)} slices, {QUICK.training.folds} folds, batch "
          f"{QUICK.training.batch_size}; weights {bundle.weights.label}")
    print(pd.DataFrame(rows).to_string(index=False))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
