"""The command line: `stsnb synth|import-dicom|curate|train|run|book` (or `python -m stsnb`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from stsnb import __version__
from stsnb.core.errors import StsnbError
from stsnb.core.runs import SPLITS
from stsnb.core.store import write_json_atomic
from stsnb.run.jobs import add_executor_arguments

#: Written after a complete generation: (patients, seed, version; the images and the MR frame
#: when not the defaults) of the cohort in the folder.
SYNTH_STAMP = ".stsnb-synth.json"


def _synth(args: argparse.Namespace) -> None:
    from stsnb.core.modalities import STUDY_MODALITIES
    from stsnb.synth import make_synthetic_cohort
    from stsnb.synth.writer import check_modalities

    out = Path(args.out)
    stamp = out / SYNTH_STAMP
    modalities = check_modalities(args.modalities)
    wanted = {"patients": args.patients, "seed": args.seed, "version": __version__}
    if modalities != STUDY_MODALITIES:
        wanted["modalities"] = list(modalities)
    if args.mr_frame != "own":  # a default cohort's stamp stays as it was
        wanted["mr_frame"] = args.mr_frame
    if not args.force and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        print(f"[stsnb] synthetic cohort already in {out} (same patients, seed, images and MR "
              "frame): kept")
        return
    started = time.perf_counter()
    table = make_synthetic_cohort(out, n_patients=args.patients, seed=args.seed,
                                  progress=not args.quiet, modalities=modalities,
                                  workers=args.workers, mr_frame=args.mr_frame)
    seconds = time.perf_counter() - started
    write_json_atomic(stamp, wanted)
    print(f"[stsnb] synthetic cohort: {len(table)} screened patients in {out} ({seconds:.1f} s)")


def _run(args: argparse.Namespace) -> None:
    from stsnb.run.book import run_chapters
    from stsnb.run.pages import CHAPTERS

    chapters = tuple(args.chapters) if args.chapters else CHAPTERS
    combos = tuple(args.combos) if args.combos else None
    from stsnb.run.jobs import executor_choice

    run_chapters(args.cohort_dir, args.work_dir, args.profile, args.seed, chapters,
                 combos=combos, device=args.device, weights=args.weights,
                 backbone=args.backbone, executor=executor_choice(args),
                 dry_run=args.dry_run)


def _book(args: argparse.Namespace) -> None:
    from stsnb.run.book import build_book

    if not args.build_only:
        _run(args)
    if args.dry_run:
        return
    index = build_book(args.work_dir)
    print(f"[stsnb] book built: {index}")


def _curate(args: argparse.Namespace) -> None:
    from stsnb.core.config import resolve_profile
    from stsnb.curation.stage import run_curation

    result = run_curation(args.cohort_dir, args.work_dir, resolve_profile(args.profile),
                          seed=args.seed, min_followup_months=args.min_followup_months)
    included = int(result.cohort["included"].sum())
    print(f"[stsnb] curated: {len(result.cohort)} screened, {included} included")


def _import_dicom(args: argparse.Namespace) -> None:
    from stsnb.dicom import import_dicom_cohort

    result = import_dicom_cohort(
        args.source, args.out, import_map=args.map, clinical=args.clinical,
        clinical_map=args.clinical_map, id_map=args.id_map, register=tuple(args.register),
        overwrite=args.overwrite, progress=not args.quiet)
    n = result.report["patient_id"].replace("", None).dropna().nunique()
    print(f"[stsnb] imported {n} patients into {result.cohort_dir}: "
          f"{', '.join(result.modalities)} (same frame as the CT: "
          f"{', '.join(result.same_frame_as_ct) or 'none'}); see import_report.csv")


def _train(args: argparse.Namespace) -> None:
    from stsnb.run.batch import run_training_batch
    from stsnb.run.jobs import executor_choice

    run_training_batch(args.cohort_dir, args.work_dir, args.profile, args.seed,
                       args.combos or None, args.splits or None, args.device, args.weights,
                       args.precision, args.backbone, executor=executor_choice(args),
                       dry_run=args.dry_run)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort-dir", default="data/synthetic", help="cohort folder")
    parser.add_argument("--work-dir", default="work", help="work folder for all outputs")
    parser.add_argument("--profile", default="auto", choices=["auto", "smoke", "quick", "paper"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--weights", default="auto",
                        help="auto | imagenet | hed-vgg16 | none | path to a state dict")
    parser.add_argument("--backbone", default="auto", choices=["auto", "vgg19", "vgg16"],
                        help="auto: the study's VGG-19 with ImageNet weights when they load, "
                        "else VGG-16 with the offline HED filters")
    parser.add_argument("--combos", nargs="*", help="combinations for chapter 04 (default all)")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="stsnb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write the synthetic multimodal STS cohort")
    synth.add_argument("--out", required=True, help="cohort folder to write")
    synth.add_argument("--patients", type=int, default=72, help="screened patients (72)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--modalities", default=None,
                       help="images to generate, comma-separated, in channel order, the CT "
                       "required (default ct,dose,t1w,t2w,ce_t1w; also pet, e.g. ct,pet,t1w)")
    synth.add_argument("--workers", type=int, default=None,
                       help="processes rendering patients in parallel (default: CPU count)")
    synth.add_argument("--mr-frame", default="own", choices=["own", "ct"],
                       help="frame of the MR sequences: own (default: the MR scanner's, "
                       "displaced, rotated and deformed from the CT's, so they are registered) "
                       "or ct (written co-registered in the CT's frame on the MR's own grid, "
                       "listed in same_frame_as_ct: nothing to register)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.add_argument("--force", action="store_true", help="regenerate even if present")
    synth.set_defaults(func=_synth)

    curate = sub.add_parser("curate", help="check the inclusion criteria, write cohort.csv")
    _add_run_arguments(curate)
    curate.add_argument("--min-followup-months", type=float, default=0.0)
    curate.set_defaults(func=_curate)

    train = sub.add_parser("train", help="chapter 04 only: one executed page per combination "
                           "and split (both heads), finished pages skipped")
    _add_run_arguments(train)
    add_executor_arguments(train)
    train.add_argument("--splits", nargs="*", default=None, choices=SPLITS,
                       help="default: patient for all, the controls per the profile")
    train.add_argument("--precision", default="auto", help="auto | fp32 | bf16")
    train.set_defaults(func=_train)

    run = sub.add_parser("run", help="execute the chapters with papermill")
    _add_run_arguments(run)
    add_executor_arguments(run)
    run.add_argument("--chapters", nargs="*", help="notebook names (default: all, in order)")
    run.set_defaults(func=_run)

    book = sub.add_parser("book", help="execute the chapters, then build the HTML book")
    _add_run_arguments(book)
    add_executor_arguments(book)
    book.add_argument("--chapters", nargs="*", help="notebook names (default: all, in order)")
    book.add_argument("--build-only", action="store_true", help="only build from executed ones")
    book.set_defaults(func=_book)
    dicom = sub.add_parser("import-dicom", help="import DICOM-RT patients as a cohort folder")
    dicom.add_argument("source", help="folder with one sub-folder of DICOM files per patient")
    dicom.add_argument("--out", required=True, help="cohort folder to write")
    dicom.add_argument("--map", help="import map (TOML): series rules and the tumour ROI pattern")
    dicom.add_argument("--clinical", help="clinical sheet (CSV; XLSX when openpyxl is installed)")
    dicom.add_argument("--clinical-map", help="column map of the clinical sheet (TOML)")
    dicom.add_argument("--id-map", help="CSV linking pseudonyms to the source (outside --out)")
    dicom.add_argument("--register", nargs="*", default=[],
                       help="images to register even when they share the CT's frame")
    dicom.add_argument("--overwrite", action="store_true", help="replace an earlier import")
    dicom.add_argument("--quiet", action="store_true", help="no progress bar")
    dicom.set_defaults(func=_import_dicom)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors of the suite print one clear line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except StsnbError as exc:
        print(f"stsnb: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
