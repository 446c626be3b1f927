"""The FC head's cross-validation (chapter 04's and chapter 08's unit of work), four ways.

    .venv/bin/python benchmarks/bench_fc_head.py --work work [--combo 1] [--repeats 2]

On a built quick-profile work dir (the slice store and the combination's feature cache), one
whole cross-validation of the FC head in its dual form, each variant in its own process:

- ``per-fold tables, default allocator``: the dual tables' products over 25088 features (W0 x
  for every slice, X X^T) made again for every fold, as before the products were shared, and
  glibc's default allocator (every buffer above 32 MB mapped afresh and returned when freed);
- ``shared tables, default allocator``: the products made once per feature matrix and scaled by
  each fold's factor ('rms' scaling);
- ``shared tables, freed buffers kept``: as above, with glibc keeping freed buffers for the
  next step (`stsnb.training.head.reuse_freed_memory`);
- ``..., fused SGD`` (what the chapters run): as above, with SGD's momentum and weight update
  in one fused pass over each weight (`stsnb.training.loop.fused_sgd`).

Prints seconds per cross-validation (best of the repeats), the ratio to the first variant, the
epochs of each fold and the largest difference of a test probability from the first variant.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("per-fold tables, default allocator", "shared tables, default allocator",
            "shared tables, freed buffers kept", "shared tables, freed buffers kept, fused SGD")


def run_variant(work: str, combo: int, variant: str) -> dict:
    """One cross-validation in this process (the variant's patches applied first)."""
    import numpy as np

    from stsnb.core.combinations import resolve_combo
    from stsnb.core.config import QUICK
    from stsnb.training import cv, loop
    from stsnb.training.features import cached_features, resolve_device, resolve_precision
    from stsnb.training.folds import make_folds
    from stsnb.training.head import DualTables, InputScaling
    from stsnb.training.model import build_model
    from stsnb.training.stage import open_slices

    if variant in VARIANTS[:2]:
        loop.reuse_freed_memory = lambda: False
    if variant != VARIANTS[3]:
        loop.fused_sgd = lambda device: False
    if variant == VARIANTS[0]:
        def per_fold(self, fold):  # the tables as they were made before: per fold, from scratch
            train = self.values[fold.train]
            scaling = InputScaling.fit(train, self.mode)
            if scaling.identity:
                return self.unscaled(), scaling
            scaled = scaling.apply(self.values)
            first = self.bundle.initial_head["0.weight"].to(scaled)
            return DualTables(scaled, first), scaling
        cv.FoldTables.__call__ = per_fold
    source = open_slices(work, QUICK)
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    bundle = build_model("auto", seed=0)
    combination = resolve_combo(combo, tuple(source.modalities))
    features = cached_features(source, work, combination.channels, bundle, device, precision,
                               progress=False)
    plan = make_folds(source.index, "patient", QUICK.training.folds, 0,
                      QUICK.training.validation_fraction)
    started = time.perf_counter()
    outcomes = cv.cross_validate(source, combination, plan, bundle, QUICK.training, 0, device,
                                 precision, features=features.values)
    seconds = time.perf_counter() - started
    prob = np.concatenate([o.test_prob for o in outcomes])
    return {"seconds": seconds, "epochs": [o.epochs_run for o in outcomes],
            "prob": prob.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="work")
    parser.add_argument("--combo", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.work, args.combo, args.variant)))
        return
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu}; quick profile, combination {args.combo}, patient split")
    results = {}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--work", args.work, "--combo",
                                  str(args.combo), "--variant", variant],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            best = results.get(variant)
            if best is None or got["seconds"] < best["seconds"]:
                results[variant] = got
    import numpy as np

    first = results[VARIANTS[0]]
    for variant in VARIANTS:
        got = results[variant]
        diff = float(np.max(np.abs(np.array(got["prob"]) - np.array(first["prob"]))))
        print(f"{variant:48s} {got['seconds']:6.1f} s  x{first['seconds'] / got['seconds']:.2f}"
              f"  epochs {got['epochs']}  max |dprob| {diff:.1e}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
