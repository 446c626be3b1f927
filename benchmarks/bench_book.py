"""Where the quick book's time goes on this machine: per-stage seconds of a build, registration
seconds per patient, the chapters' wall time (some run beside the others), chapter 04's page
overhead (kernel start, imports, figures: the page's seconds minus its features and heads), and
the frozen convolutions' fp32 / bf16 throughput, with the CPU model. Optionally builds the book
first (into a fresh work dir), with oneDNN limited to an ISA (``--isa AVX512_CORE_BF16`` makes an
AMX CPU run its convolutions as one without AMX).

    .venv/bin/python benchmarks/bench_book.py --work-dir work              # a finished build
    .venv/bin/python benchmarks/bench_book.py --build /tmp/bench-work --isa AVX512_CORE_BF16
    .venv/bin/python benchmarks/bench_book.py --precision-only --isa default AVX512_CORE_BF16 AVX2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stsnb.core.manifest import read_manifest  # noqa: E402
from stsnb.run.book import CHAPTERS_WALL  # noqa: E402
from stsnb.training.precision import cpu_model  # noqa: E402

#: Prefixes of timings.csv stages, grouped as the README's time table shows them.
GROUPS = (("chapter 01", "chapter 01_data_curation"), ("chapter 02", "chapter 02_registration_qa"),
          ("chapter 03", "chapter 03_preprocessing"), ("chapter 04 (all pages)",
                                                       "chapter 04_training"),
          ("chapter 05", "chapter 05_cv_results"), ("chapter 05b", "chapter 05b_radiomics"),
          ("chapter 08 (controls)", "chapter 08_controls"), ("chapter 06", "chapter 06_gradcam"),
          ("chapter 07", "chapter 07_real_cohort"), ("reporting page", "chapter 09_reporting"))
PAGE = re.compile(r"^chapter 04_training_combo(\d\d)(?:_(slice|random))?$")


def last_timings(work_dir: Path) -> pd.DataFrame:
    """timings.csv with only the last row of each stage (a rerun appends)."""
    table = pd.read_csv(work_dir / "timings.csv")
    return table.groupby("stage", sort=False).tail(1).set_index("stage")["seconds"].to_frame()


def stage_table(timings: pd.DataFrame) -> pd.DataFrame:
    seconds = timings["seconds"]
    rows = [(name, float(seconds[seconds.index.str.startswith(prefix)].sum()))
            for name, prefix in GROUPS]
    return pd.DataFrame(rows, columns=["stage", "seconds"])


def page_table(timings: pd.DataFrame) -> pd.DataFrame:
    """Chapter 04's pages: page seconds, features, FC head, linear head and the rest."""
    seconds = timings["seconds"]
    rows = []
    for stage, total in seconds.items():
        match = PAGE.match(str(stage))
        if not match:
            continue
        combo, split = match.group(1), match.group(2) or "patient"
        features = sum(v for k, v in seconds.items()
                       if str(k).startswith("features ") and f"combo{combo}" in str(k)
                       and split == "patient")
        fc = seconds.get(f"training {split} combo{combo}", 0.0)
        linear = seconds.get(f"linear head {split} combo{combo}", 0.0)
        rows.append({"page": f"combo{combo} {split}", "seconds": total, "features": features,
                     "fc_head": fc, "linear_head": linear,
                     "overhead": total - features - fc - linear})
    return pd.DataFrame(rows)


def chapter04_wall(work_dir: Path) -> tuple[float, str, int] | None:
    """(wall seconds from the first page's start to the last page's end, executor, pages) from
    the manifest's jobs, or None when it names none (pages that overlap sum to more)."""
    manifest = read_manifest(work_dir)
    jobs = [job for name, job in (manifest.get("jobs") or {}).items()
            if name.startswith("04_training") and "started" in job]
    if not jobs:
        return None
    start = min(job["started"] for job in jobs)
    end = max(job["started"] + job["seconds"] for job in jobs)
    return end - start, str(manifest.get("executor", "")), len(jobs)


def beside_chapters(work_dir: Path) -> list[str]:
    """The chapters the manifest says ran beside the others (jobs that are not chapter 04's)."""
    manifest = read_manifest(work_dir)
    return [name for name in (manifest.get("jobs") or {}) if not name.startswith("04_training")]


def registration_seconds(work_dir: Path) -> pd.Series:
    qa = pd.read_csv(work_dir / "registration" / "qa.csv")
    return qa["seconds"].astype(float)


def measure_precision(isa: str) -> dict:
    """fp32 and bf16 images/s in a fresh process (oneDNN reads its ISA limit at start)."""
    env = dict(os.environ)
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    code = ("import json; from stsnb.training.precision import measure_throughput as m, choose; "
            "f = m('fp32'); b = m('bf16', budget_s=16 / f); "
            "print(json.dumps({'fp32': f, 'bf16': b, 'choice': choose(f, b)}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def build(work_dir: Path, isa: str, profile: str) -> float:
    env = dict(os.environ)
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stsnb", "book", "--cohort-dir", "data/synthetic",
                    "--work-dir", str(work_dir), "--profile", profile], env=env, cwd=ROOT,
                   check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "work",
                        help="a finished build to read (default: work/)")
    parser.add_argument("--build", type=Path, default=None,
                        help="build the book into this (fresh) work dir first")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--isa", nargs="*", default=["default"],
                        help="ONEDNN_MAX_CPU_ISA values for the build (first) and the "
                        "precision measurement (each), e.g. default AVX512_CORE_BF16 AVX2")
    parser.add_argument("--precision-only", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report: dict = {"cpu": cpu_model(), "cores": os.cpu_count()}
    print(f"CPU: {report['cpu']} ({report['cores']} cores)")
    if not args.precision_only:
        work_dir = args.work_dir
        if args.build is not None:
            if args.build.exists() and any(args.build.iterdir()):
                parser.error(f"{args.build} is not empty: --build needs a fresh work dir.")
            work_dir = args.build
            report["build_seconds"] = build(work_dir, args.isa[0], args.profile)
            print(f"make book ({args.profile}, ONEDNN_MAX_CPU_ISA={args.isa[0]}): "
                  f"{report['build_seconds']:.0f} s")
        timings = last_timings(work_dir)
        stages = stage_table(timings)
        wall = chapter04_wall(work_dir)
        if wall is not None:  # pages that ran at once: their wall time, not their sum
            row = stages["stage"] == "chapter 04 (all pages)"
            print(f"chapter 04: {wall[2]} pages on the {wall[1]} executor, "
                  f"{float(stages.loc[row, 'seconds'].iloc[0]):.0f} page-seconds in "
                  f"{wall[0]:.0f} s of wall time")
            stages.loc[row, ["stage", "seconds"]] = ["chapter 04 (wall)", wall[0]]
        print("\nPer stage (s):\n" + stages.round(1).to_string(index=False))
        print(f"chapters in all: {stages['seconds'].sum():.0f} s (their sum)")
        beside = beside_chapters(work_dir)
        all_wall = timings["seconds"].get(CHAPTERS_WALL)
        if all_wall is not None:
            print(f"every chapter: {all_wall:.0f} s of wall time"
                  + (f" ({', '.join(beside)} beside the others)" if beside else ""))
            report["chapters_wall_s"] = float(all_wall)
        reg = registration_seconds(work_dir)
        stage_s = float(timings["seconds"].get("registration", float("nan")))
        print(f"\nRegistration: {len(reg)} patients in {stage_s:.0f} s, "
              f"{stage_s / len(reg):.2f} s per patient of wall time; each patient "
              f"median {reg.median():.2f} s (mean {reg.mean():.2f}, max {reg.max():.2f}; "
              "patients registered at once each take their own)")
        pages = page_table(timings)
        if len(pages):
            print("\nChapter 04 pages (s):\n" + pages.round(1).to_string(index=False))
            share = 100 * pages["overhead"].sum() / pages["seconds"].sum()
            print(f"page overhead (page - features - heads): median "
                  f"{pages['overhead'].median():.1f} s, {pages['overhead'].sum():.0f} s over "
                  f"{len(pages)} pages ({share:.0f} % of chapter 04)")
        report.update({"stages": stages.to_dict("records"),
                       "registration_median_s": float(reg.median()),
                       "pages": pages.to_dict("records")})
    print("\nFrozen convolutions (VGG-19, 224 px, images/s):")
    report["precision"] = {}
    for isa in args.isa:
        rates = measure_precision(isa)
        report["precision"][isa] = rates
        print(f"  ONEDNN_MAX_CPU_ISA={isa}: fp32 {rates['fp32']:.1f}, bf16 + channels_last "
              f"{rates['bf16']:.1f}, ratio bf16/fp32 {rates['bf16'] / rates['fp32']:.2f} -> "
              f"{rates['choice']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
