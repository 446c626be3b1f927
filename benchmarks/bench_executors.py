"""Chapter 04's pages one after the other (`local`) against N at once in processes
(`processes --jobs N`), from scratch (no feature cache), on this machine, with the CPU model.

    .venv/bin/python benchmarks/bench_executors.py --work-dir work [--combos 1 2 3 4] [--jobs 2]

Both variants start from copies of a finished build's upstream outputs (curation, registration,
slice store; nothing of chapter 04), run the same pages (patient split) in one run of this
script, and must give byte-identical predictions (checked). Printed: wall seconds of each, their
ratio, each page's seconds, and the mean page cost, from which the README's estimate of a batch
on N nodes is made (pages / N x seconds per page).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stsnb.core.manifest import read_manifest  # noqa: E402
from stsnb.run.batch import run_training_batch  # noqa: E402
from stsnb.run.jobs import ExecutorChoice  # noqa: E402
from stsnb.training.precision import cpu_model  # noqa: E402

UPSTREAM = ("cohort.csv", "curation", "registration", "slices", "combinations.csv",
            "manifest.json")


def fresh_copy(source: Path, dest: Path) -> Path:
    """`dest` with the upstream outputs of `source` (no runs, no feature cache, no timings)."""
    dest.mkdir(parents=True)
    for part in UPSTREAM:
        path = source / part
        if path.is_dir():
            shutil.copytree(path, dest / part)
        elif path.exists():
            shutil.copy2(path, dest / part)
    manifest = json.loads((dest / "manifest.json").read_text())
    for key in ("runs", "jobs", "executor"):
        manifest.pop(key, None)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def predictions(work: Path) -> dict[str, bytes]:
    return {p.relative_to(work).as_posix(): p.read_bytes()
            for p in sorted((work / "runs").rglob("predictions.csv"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="work", help="a finished build (quick profile)")
    parser.add_argument("--cohort-dir", default="data/synthetic")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--combos", nargs="*", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    source = Path(args.work_dir).resolve()
    seed = int(read_manifest(source).get("seed", 0))
    print(f"CPU: {cpu_model()}; {len(args.combos)} pages (patient split, combinations "
          f"{args.combos}), profile {args.profile}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for choice in (ExecutorChoice("local"), ExecutorChoice("processes", jobs=args.jobs)):
            work = fresh_copy(source, Path(tmp) / choice.name)
            started = time.perf_counter()
            run_training_batch(args.cohort_dir, work, args.profile, seed, combos=args.combos,
                               splits=["patient"], executor=choice)
            wall = time.perf_counter() - started
            manifest = read_manifest(work)
            pages = {name: job["seconds"] for name, job in manifest["jobs"].items()}
            results[choice.name] = {"wall_s": round(wall, 1), "jobs": choice.jobs,
                                    "threads_per_job": choice.threads_per_job(),
                                    "page_s": pages, "predictions": predictions(work)}
            print(f"{choice.name:9s} jobs {choice.jobs} x {choice.threads_per_job()} thread(s):"
                  f" {wall:7.1f} s wall; pages " +
                  ", ".join(f"{n[-7:]} {s:.1f} s" for n, s in pages.items()))
    local, processes = results["local"], results["processes"]
    same = local.pop("predictions") == processes.pop("predictions")
    per_page = local["wall_s"] / len(args.combos)
    print(f"local / processes wall: {local['wall_s'] / processes['wall_s']:.2f}x; "
          f"predictions byte-identical: {same}; {per_page:.1f} s per page (local)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "combos": args.combos,
                                               "same_predictions": same, **results}, indent=2))
    if not same:
        raise SystemExit("the executors gave different predictions")


if __name__ == "__main__":
    main()
