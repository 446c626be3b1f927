"""Radiomics worker: IBSI features computed by MIRP, run with the Python of ``.venv-radiomics``.

It imports nothing from stsnb (only the standard library at import time, MIRP when it
runs), so it runs in its own environment::

    .venv-radiomics/bin/python -I stsnb/radiomics/worker.py request.json out_dir

``request.json``::

    {"patients": [{"patient_id": "P1", "images": [
        {"image": "ct", "image_path": "...", "mask_path": "...",
         "settings": {<MIRP extract_features keyword arguments>}}, ...]}, ...]}

A ``null`` upper bound of ``resegmentation_intensity_range`` is an open bound (NaN for MIRP).
An optional top-level ``"leave_out": ["morph_moran_i", ...]`` names morphology features not to
compute at all (see `leave_out_features`).
For each patient in order it writes ``out_dir/<patient_id>.csv`` (columns patient_id, image,
feature, value: one row per feature of each image, MIRP's feature names) atomically, and prints
to stdout a line ``stsnb-radiomics-start {"patient_id": ...}`` before and a line
``stsnb-radiomics-done {"patient_id": ..., "seconds": ..., "image_seconds": {...},
"warnings": [...]}`` after (the stage follows these lines). A failure prints the patient, the
image, the file and the library's error to stderr and exits with status 1.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

START = "stsnb-radiomics-start "
DONE = "stsnb-radiomics-done "
COLUMNS = ("patient_id", "image", "feature", "value")
#: MIRP's columns that describe the input, not a feature.
_METADATA_PREFIXES = ("sample_name", "image_")
#: The MIRP version whose internals `leave_out_features` wraps (radiomics-requirements.txt pins
#: it); another version stops the worker instead of computing a different feature set.
LEAVE_OUT_MIRP_VERSION = "2.7.0"


class WorkerError(Exception):
    """A request the worker cannot compute (the message names patient, image and file)."""


def mirp_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as MIRP takes them (open resegmentation bound: NaN)."""
    args = dict(settings)
    bounds = args.get("resegmentation_intensity_range")
    if bounds is not None:
        args["resegmentation_intensity_range"] = [math.nan if b is None else float(b)
                                                  for b in bounds]
    return args


def leave_out_features(names: list[str]) -> None:
    """Make MIRP skip the morphology features `names` (its abbreviations, e.g. morph_moran_i).

    MIRP has no option to skip a single feature (its ``no_approximation`` only replaces the
    Monte Carlo estimate of Moran's I and Geary's C by the exact, slower sum), so this wraps
    ``mirp._features.morph_3d_features.get_morphology_3d_class_dict``, the table from which
    ``generate_morph_3d_features`` makes the family's features, to return it without `names`.
    The other features are computed as before (each from its own cached data). MIRP 2.7.0 only:
    WorkerError for another version or a name not in the table.
    """
    if not names:
        return
    import importlib.metadata

    version = importlib.metadata.version("mirp")
    if version != LEAVE_OUT_MIRP_VERSION:
        raise WorkerError(f"leaving out {', '.join(names)} wraps MIRP {LEAVE_OUT_MIRP_VERSION}'s "
                          f"morphology table, but MIRP {version} is installed: check that "
                          "mirp._features.morph_3d_features.get_morphology_3d_class_dict still "
                          "builds the family, then update LEAVE_OUT_MIRP_VERSION.")
    from mirp._features import morph_3d_features

    full_table = morph_3d_features.get_morphology_3d_class_dict
    unknown = sorted(set(names) - set(full_table()))
    if unknown:
        raise WorkerError(f"cannot leave out {', '.join(unknown)}: not a morphology feature of "
                          f"MIRP {version} (known: {', '.join(sorted(full_table()))}).")
    left_out = frozenset(names)

    def table_without() -> dict[str, Any]:
        return {name: feature for name, feature in full_table().items()
                if name not in left_out}

    morph_3d_features.get_morphology_3d_class_dict = table_without


def feature_rows(table: Any, patient_id: str, image: str) -> list[tuple[str, str, str, float]]:
    """(patient_id, image, feature, value) for every feature column of MIRP's one-row table."""
    rows = []
    for column in table.columns:
        if str(column).startswith(_METADATA_PREFIXES):
            continue
        rows.append((patient_id, image, str(column), float(table[column].iloc[0])))
    return rows


def _where(patient_id: str, entry: dict[str, Any]) -> str:
    return (f"patient {patient_id}, image {entry.get('image')} (file {entry.get('image_path')}, "
            f"mask {entry.get('mask_path')})")


def _compute(extract_features: Any, patient_id: str,
             entry: dict[str, Any]) -> tuple[list[tuple], list[str]]:
    """One image's feature rows and the library's warnings about it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)  # the itk bindings' SWIG types
        try:
            tables = extract_features(image=str(entry["image_path"]),
                                      mask=str(entry["mask_path"]), export_features=True,
                                      write_features=False, **mirp_arguments(entry["settings"]))
        except Exception as exc:
            raise WorkerError(f"{_where(patient_id, entry)}: MIRP failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not tables or len(tables) != 1 or len(tables[0]) != 1:
        n = 0 if not tables else sum(len(t) for t in tables)
        raise WorkerError(f"{_where(patient_id, entry)}: MIRP returned {n} feature rows instead "
                          "of one (is the mask empty after resampling, or not a single 0/1 "
                          "region?).")
    notes = sorted({f"{entry['image']}: {w.message}" for w in caught
                    if not issubclass(w.category, DeprecationWarning)})
    return feature_rows(tables[0], patient_id, str(entry["image"])), notes


def _write_rows(rows: list[tuple], path: Path) -> None:
    """Write the rows as CSV to `path` atomically (temporary file, then rename)."""
    import csv

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for patient_id, image, feature, value in rows:
            writer.writerow((patient_id, image, feature, repr(value)))
    os.replace(tmp, path)


def run(request_path: Path, out_dir: Path) -> None:
    """Compute every patient of the request, writing ``out_dir/<patient_id>.csv`` each."""
    import logging

    from mirp import extract_features

    logging.disable(logging.INFO)  # MIRP logs every step at INFO level
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    leave_out_features(list(request.get("leave_out", [])))
    out_dir.mkdir(parents=True, exist_ok=True)
    for patient in request["patients"]:
        patient_id = str(patient["patient_id"])
        print(START + json.dumps({"patient_id": patient_id}), flush=True)
        started = time.perf_counter()
        rows: list[tuple] = []
        notes: list[str] = []
        image_seconds: dict[str, float] = {}
        for entry in patient["images"]:
            image_started = time.perf_counter()
            image_rows, image_notes = _compute(extract_features, patient_id, entry)
            image_seconds[str(entry["image"])] = round(time.perf_counter() - image_started, 3)
            rows += image_rows
            notes += image_notes
        _write_rows(rows, out_dir / f"{patient_id}.csv")
        print(DONE + json.dumps({"patient_id": patient_id,
                                 "seconds": round(time.perf_counter() - started, 3),
                                 "image_seconds": image_seconds, "warnings": notes}),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: worker.py request.json out_dir", file=sys.stderr)
        return 2
    try:
        run(Path(args[0]), Path(args[1]))
    except WorkerError as exc:
        traceback.print_exc()
        print(f"radiomics worker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
