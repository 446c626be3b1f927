"""Training chapter 04: cached features against the naive loop, fp32 against bf16, GPU paper run.

    .venv/bin/python benchmarks/bench_training.py compare [--patients 24] [--slices 8] [--px 224]
        [--epochs 2] [--folds 10] [--precisions bf16 fp32] [--json out.json]
    python3 benchmarks/bench_training.py paper [--device cuda] [--json out.json]

`compare` (CPU by default): one combination's cross-validation as the paper profile runs it
(10 folds, batch 64, lr 0.01, momentum 0.9; epochs capped by --epochs and patience raised so that
every path runs the same epochs), on the same slices, three ways per precision:

- naive: a full forward pass through the frozen convolutions at every step and every validation
  (the study's loop; the head is the ordinary classifier);
- cached, primal head: features computed once, the ordinary classifier trained on them;
- cached (the chapter's path, `train_combination`): features once (the feature pass is counted,
  the run writes its outputs), the head in its exact dual form.

Then feature throughput (images/s) of the frozen part in fp32 and in bf16 autocast with
channels_last. Wall and CPU seconds are both printed: CPU seconds say less about a busy machine.

`paper`: the chapter's path for all ten combinations at the paper profile's sizes (61 patients,
2395 slices of 224 px, 10 folds, <= 50 epochs, patience 8), features and heads, from slices held
in memory with the slice store's shape (label-bearing noise). Needs only torch, torchvision,
numpy, pandas, scikit-learn and tqdm (no SimpleITK), for a GPU machine's own Python.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stsnb.core.combinations import resolve_combo  # noqa: E402
from stsnb.core.config import PAPER  # noqa: E402
from stsnb.core.modalities import STUDY_MODALITIES  # noqa: E402
from stsnb.training.cv import cross_validate
from stsnb.training.features import (  # noqa: E402
    ArraySlices,
    compute_features,
    resolve_device,
    resolve_precision,
)
from stsnb.training.folds import make_folds  # noqa: E402
from stsnb.training.model import build_model, prepare_backbone  # noqa: E402
from stsnb.training.stage import train_combination


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def synthetic_slices(n_patients: int, per_patient: int | list[int], px: int,
                     seed: int = 0) -> ArraySlices:
    """Slices shaped like the store's: 5 channels in [0, 1], float16; the label shifts the mean."""
    rng = np.random.default_rng(seed)
    counts = [per_patient] * n_patients if isinstance(per_patient, int) else per_patient
    labels = (np.arange(n_patients) % 3 == 0).astype(int)  # about a third positive
    images = np.empty((sum(counts), len(STUDY_MODALITIES), px, px), dtype=np.float16)
    rows, start = [], 0
    for p, (count, label) in enumerate(zip(counts, labels, strict=True)):
        block = rng.random((count, len(STUDY_MODALITIES), px, px), dtype=np.float32)
        images[start:start + count] = 0.7 * block + 0.3 * label * rng.random()
        rows += [(f"B{p:03d}", 100 + s, int(label)) for s in range(count)]
        start += count
    index = pd.DataFrame(rows, columns=["patient_id", "slice_index", "label"])
    return ArraySlices(images, index, STUDY_MODALITIES, key_hash=f"bench-{seed}-{px}-{counts}")


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu


def feature_throughput(bundle, slices, device, precision: str, n: int) -> float:
    """Images per second of the frozen part (after one warm-up batch)."""
    channels = resolve_combo(9).channels
    rows = np.arange(min(n, len(slices.index)))
    prepare_backbone(bundle, device, precision)
    compute_features(slices, rows[:8], channels, bundle, device, precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    with Clock() as clock:
        compute_features(slices, rows, channels, bundle, device, precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(rows) / clock.wall


def compare(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    slices = synthetic_slices(args.patients, args.slices, args.px, args.seed)
    combination = resolve_combo(9)
    config = replace(PAPER.training, folds=args.folds, max_epochs=args.epochs,
                     patience=args.epochs + 1)
    profile = replace(PAPER, training=config)
    plan = make_folds(slices.index, "patient", config.folds, args.seed,
                      config.validation_fraction)
    bundle = build_model("none", seed=args.seed)
    results: dict = {"slices": len(slices.index), "patients": args.patients, "px": args.px,
                     "folds": config.folds, "epochs": config.max_epochs,
                     "batch_size": config.batch_size, "device": str(device),
                     "torch": torch.__version__, "threads": torch.get_num_threads()}
    for precision in args.precisions:
        row: dict = {}
        with tempfile.TemporaryDirectory() as work, Clock() as cached:
            run = train_combination(slices, work, profile, combination.number, "patient",
                                    args.seed, str(device), "none", precision, save_heads=False,
                                    bundle=bundle, progress=False)
        row["cached_wall_s"], row["cached_cpu_s"] = cached.wall, cached.cpu
        row["cached_features_s"] = run.record["feature_seconds"]
        row["cached_head_s"] = run.record["head_seconds"]
        with Clock() as features_clock:
            values = compute_features(slices, np.arange(len(slices.index)),
                                      combination.channels, bundle, device, precision)
        with Clock() as primal:
            cross_validate(slices, combination, plan, bundle, config, args.seed, device,
                           precision, "primal", values)
        row["cached_primal_wall_s"] = features_clock.wall + primal.wall
        row["cached_primal_cpu_s"] = features_clock.cpu + primal.cpu
        with Clock() as naive:
            cross_validate(slices, combination, plan, bundle, config, args.seed, device,
                           precision, "naive")
        row["naive_wall_s"], row["naive_cpu_s"] = naive.wall, naive.cpu
        row["ratio_naive_to_cached_wall"] = naive.wall / cached.wall
        row["ratio_naive_to_cached_cpu"] = naive.cpu / cached.cpu
        row["ratio_naive_to_cached_primal_wall"] = naive.wall / row["cached_primal_wall_s"]
        # Per fold and epoch (the feature pass aside), and what the measured parts give over the
        # paper profile's epochs: 9 (the fewest, patience 8) and 50 (the most).
        fold_epochs = config.folds * config.max_epochs
        row["naive_per_fold_epoch_s"] = naive.wall / fold_epochs
        row["cached_head_per_fold_epoch_s"] = row["cached_head_s"] / fold_epochs
        for epochs in (9, 50):
            row[f"ratio_at_{epochs}_epochs"] = (row["naive_per_fold_epoch_s"] * epochs) / (
                row["cached_features_s"] / config.folds
                + row["cached_head_per_fold_epoch_s"] * epochs)
        results[precision] = row
        print(f"[{precision}] naive {naive.wall:.1f} s wall ({naive.cpu:.1f} s CPU) | cached "
              f"{cached.wall:.1f} s wall ({cached.cpu:.1f} s CPU: features "
              f"{row['cached_features_s']:.1f} s, head {row['cached_head_s']:.1f} s) | cached "
              f"with the primal head {row['cached_primal_wall_s']:.1f} s | ratio naive/cached "
              f"{row['ratio_naive_to_cached_wall']:.1f}x wall, "
              f"{row['ratio_naive_to_cached_cpu']:.1f}x CPU", flush=True)
        print(f"[{precision}] per fold and epoch: naive {row['naive_per_fold_epoch_s']:.2f} s, "
              f"cached head {row['cached_head_per_fold_epoch_s']:.2f} s; from these parts, at the "
              f"paper's 9 / 50 epochs per fold: {row['ratio_at_9_epochs']:.1f}x / "
              f"{row['ratio_at_50_epochs']:.1f}x", flush=True)
    throughput = {p: feature_throughput(bundle, slices, device, p, args.throughput_images)
                  for p in ("fp32", "bf16")}
    results["features_images_per_s"] = throughput
    results["ratio_bf16_to_fp32_features"] = throughput["bf16"] / throughput["fp32"]
    print(f"features at {args.px} px: fp32 {throughput['fp32']:.1f} images/s, bf16 + "
          f"channels_last {throughput['bf16']:.1f} images/s "
          f"({results['ratio_bf16_to_fp32_features']:.1f}x)", flush=True)
    return results


def paper(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    rng = np.random.default_rng(args.seed)
    n, total = args.patients, args.total_slices
    counts = list(rng.multinomial(total - n * 2, np.ones(n) / n) + 2)  # `total` slices in all
    slices = synthetic_slices(n, counts, args.px, args.seed)
    profile = PAPER
    if args.max_epochs:  # only for a dry run of this script on a small machine
        profile = replace(PAPER, training=replace(PAPER.training, max_epochs=args.max_epochs))
    bundle = build_model("none", seed=args.seed)
    results: dict = {"slices": len(slices.index), "patients": n, "px": args.px,
                     "device": str(device), "precision": precision, "torch": torch.__version__,
                     "max_epochs": profile.training.max_epochs, "combinations": {}}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as work, Clock() as total:
        for number in range(1, 11):
            with Clock() as clock:
                run = train_combination(slices, work, profile, number, "patient", args.seed,
                                        str(device), "none", precision, save_heads=False,
                                        bundle=bundle, progress=False)
            metrics = run.fold_metrics
            results["combinations"][number] = {
                "wall_s": clock.wall, "features_s": run.record["feature_seconds"],
                "head_s": run.record["head_seconds"],
                "epochs_run_mean": float(metrics["epochs_run"].mean()),
                "auc_mean": float(metrics["auc"].mean())}
            print(f"combination {number}: {clock.wall:.1f} s (features "
                  f"{run.record['feature_seconds']:.1f} s, head {run.record['head_seconds']:.1f}"
                  f" s, {metrics['epochs_run'].mean():.1f} epochs per fold)", flush=True)
    results["total_wall_s"] = total.wall
    print(f"all ten combinations, 10 folds each: {total.wall:.1f} s wall on {device} "
          f"({precision} features, torch {torch.__version__})", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("compare", help="cached vs naive, fp32 vs bf16 (one combination)")
    one.add_argument("--patients", type=int, default=24)
    one.add_argument("--slices", type=int, default=8, help="slices per patient")
    one.add_argument("--px", type=int, default=224)
    one.add_argument("--epochs", type=int, default=2)
    one.add_argument("--folds", type=int, default=10)
    one.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    one.add_argument("--throughput-images", type=int, default=64)
    one.add_argument("--device", default="cpu")
    all_ten = sub.add_parser("paper", help="all ten combinations at the paper profile's sizes")
    all_ten.add_argument("--device", default="auto")
    all_ten.add_argument("--precision", default="auto")
    all_ten.add_argument("--patients", type=int, default=61)
    all_ten.add_argument("--total-slices", type=int, default=2395)
    all_ten.add_argument("--px", type=int, default=224)
    all_ten.add_argument("--max-epochs", type=int, default=0, help="0 = the paper's 50")
    for p in (one, all_ten):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results = compare(args) if args.mode == "compare" else paper(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
