"""``python -m stsnb import-dicom``: a folder of DICOM patients -> a cohort folder in the
layout of DESIGN.md section 4, with pseudonymous ids, cohort.toml, clinical.csv and the
import report.

The cohort is written into a temporary folder beside the target and renamed at the end, so
an import that fails leaves nothing behind. No DICOM identifier (name, birth date, PatientID,
UIDs, dates) reaches the cohort folder: images are written from their voxel arrays and grid
only, the report holds pseudonyms and frame labels; the link pseudonym -> source is written
only with ``id_map``, and never inside the cohort folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import SimpleITK as sitk
from tqdm.auto import tqdm

from stsnb import __version__
from stsnb.core.errors import CohortError
from stsnb.core.modalities import KNOWN_MODALITIES
from stsnb.curation.cohort_config import COHORT_TOML, read_cohort_config
from stsnb.dicom.classify import read_import_map
from stsnb.dicom.clinical import map_clinical, read_clinical_map
from stsnb.dicom.patient import PatientImport, import_patient
from stsnb.dicom.report import REPORT_COLUMNS, REPORT_CSV, REPORT_JSON
from stsnb.dicom.scan import patient_folders

__all__ = ["ImportResult", "import_dicom_cohort", "pseudonym"]


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote: the cohort folder, its report, modalities and frames."""

    cohort_dir: Path
    report: pd.DataFrame
    modalities: tuple[str, ...]
    same_frame_as_ct: tuple[str, ...]
    unmatched_clinical_rows: int
    registered_in_ct_frame: tuple[str, ...] = ()


def pseudonym(index: int, n_patients: int) -> str:
    """P001, P002, ... (more digits when there are more than 999 patients)."""
    return f"P{index + 1:0{max(3, len(str(n_patients)))}d}"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _check_output(out: Path, source: Path, id_map: Path | None, overwrite: bool) -> None:
    if _inside(out, source) or _inside(source, out):
        raise CohortError("the cohort folder and the DICOM source folder overlap.", path=out,
                          fix="write the cohort to a folder outside the source (and vice versa).")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise CohortError(f"the cohort folder {out} exists and is not empty.", path=out,
                              fix="choose a new folder, or pass --overwrite to replace an "
                              "earlier import.")
        if not (out / REPORT_JSON).is_file():
            raise CohortError(f"{out} is not a folder made by import-dicom (no {REPORT_JSON}); "
                              "--overwrite replaces only earlier imports.", path=out,
                              fix="choose a new or empty folder.")
    if id_map is not None and _inside(id_map, out):
        raise CohortError("the id map links pseudonyms to DICOM identifiers and may not lie "
                          "inside the cohort folder.", path=id_map,
                          fix="write it to a protected place outside the cohort folder.")


def _frames(results: list[PatientImport], register: Sequence[str]
            ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], list[str]]:
    """(modalities, same_frame_as_ct, registered_in_ct_frame, notes) from the images of every
    patient."""
    found = {stem for r in results for stem in r.images}
    modalities = tuple(m for m in KNOWN_MODALITIES if m in found)
    notes = []
    same, in_frame = [], []
    for stem in modalities:
        if stem == "ct":
            continue
        labels = [r.frames[stem] for r in results if stem in r.frames]
        if stem in register:
            notes.append(f"{stem}: registered to the CT (--register) although "
                         f"{labels.count('ct')} of {len(labels)} share its frame.")
            if labels and all(label == "ct" for label in labels):
                in_frame.append(stem)
        elif all(label == "ct" for label in labels):
            same.append(stem)
        elif any(label == "ct" for label in labels):
            notes.append(f"{stem}: shares the CT's frame of reference in {labels.count('ct')} "
                         f"of {len(labels)} patients; registered to the CT for all.")
    missing = [f"{r.patient_id} lacks {', '.join(m for m in modalities if m not in r.images)}"
               for r in results if any(m not in r.images for m in modalities)]
    notes += [f"{m} (curation excludes the patient)" for m in missing]
    return modalities, tuple(same), tuple(in_frame), notes


def _cohort_toml(modalities: Sequence[str], same_frame: Sequence[str],
                 in_frame: Sequence[str] = ()) -> str:
    def listing(items: Sequence[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"
    text = (
        "# Written by `python -m stsnb import-dicom` from the DICOM series found\n"
        "# (import_report.csv says which series became which image).\n"
        f"modalities = {listing(modalities)}\n"
        "# Images whose series share the planning CT's FrameOfReferenceUID in every patient\n"
        "# (not registered; the dose always belongs here).\n"
        f"same_frame_as_ct = {listing(same_frame)}\n"
    )
    if in_frame:
        text += (
            "# Images that share the CT's frame in every patient but are registered anyway\n"
            "# (--register): the registration QA flags a patient whose registration moves one\n"
            "# of them far from its scanner position.\n"
            f"registered_in_ct_frame = {listing(in_frame)}\n"
        )
    return text


def _write_image(image: sitk.Image, path: Path) -> None:
    sitk.WriteImage(image, str(path), useCompression=True)


def import_dicom_cohort(
    source: str | Path,
    out: str | Path,
    import_map: str | Path | None = None,
    clinical: str | Path | None = None,
    clinical_map: str | Path | None = None,
    id_map: str | Path | None = None,
    register: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> ImportResult:
    """Import every patient folder of ``source`` into the cohort folder ``out``.

    Patients get ids P001, P002, ... in the order of their sorted folder names. ``clinical``
    (a sheet) needs ``clinical_map``; without them clinical.csv lists every patient with an
    empty outcome and follow-up. ``register`` names images registered to the CT even when they
    share its frame of reference. Raises CohortError (naming the patient folder, the file and
    the problem) on the first patient that cannot be imported; nothing is written then.
    """
    source, out = Path(source).expanduser(), Path(out).expanduser()
    id_map = Path(id_map).expanduser() if id_map is not None else None
    folders = patient_folders(source)
    _check_output(out, source, id_map, overwrite)
    if (clinical is None) != (clinical_map is None):
        raise CohortError("a clinical sheet and its column map go together.",
                          path=Path(clinical or clinical_map),  # type: ignore[arg-type]
                          fix="pass both --clinical SHEET and --clinical-map MAP, or neither.")
    mapping = read_import_map(import_map)
    cmap = read_clinical_map(clinical_map) if clinical_map is not None else None
    unknown = [m for m in register if m not in KNOWN_MODALITIES or m in ("ct", "dose")]
    if unknown:
        raise CohortError(f"--register names {', '.join(unknown)}, not a registrable image.",
                          fix="name MR or PET stems (t1w, t2w, ce_t1w, pet).")

    results: list[PatientImport] = []
    keys: dict[str, str] = {}
    id_rows = []
    for index, folder in enumerate(tqdm(folders, desc="Importing DICOM", unit="patient",
                                        disable=not progress)):
        pid = pseudonym(index, len(folders))
        result, _identifiers = import_patient(folder, pid, mapping)
        results.append(result)
        for key in (folder.name, *result.dicom_ids):
            keys.setdefault(key, pid)
        id_rows.append({"patient_id": pid, "source_folder": folder.name,
                        "dicom_patient_id": ";".join(result.dicom_ids)})
    modalities, same_frame, in_frame, notes = _frames(results, register)
    if len(modalities) < 3:
        raise CohortError(
            f"only {', '.join(modalities)} found across the patients; the suite needs at least "
            "three images per patient (combinations have three channels).", path=source,
            fix="add the missing series, or map unmapped series with --map (see the series "
            "listed as unmapped).")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows: list[dict[str, object]] = []
        for result in results:
            folder = tmp / result.patient_id
            folder.mkdir()
            for stem, image in result.images.items():
                _write_image(image, folder / f"{stem}.nii.gz")
            for stem, mask in result.masks.items():
                _write_image(mask, folder / f"{stem}.nii.gz")
            rows += result.rows
        rows += [{"patient_id": "", "kind": "note", "status": "info", "detail": n}
                 for n in notes]
        (tmp / COHORT_TOML).write_text(_cohort_toml(modalities, same_frame, in_frame),
                                       encoding="utf-8")
        unmatched: list[str] = []
        if cmap is not None:
            table, unmatched = map_clinical(clinical, cmap, keys)  # type: ignore[arg-type]
            if unmatched:
                rows.append({"patient_id": "", "kind": "note", "status": "info",
                             "detail": f"{len(unmatched)} clinical sheet row(s) matched no "
                             "imported patient and were left out."})
        else:
            table = pd.DataFrame({"patient_id": [r.patient_id for r in results],
                                  "distant_metastasis": "", "followup_months": ""})
        table.to_csv(tmp / "clinical.csv", index=False)
        report = pd.DataFrame(rows, columns=list(REPORT_COLUMNS)).fillna("")
        report.to_csv(tmp / REPORT_CSV, index=False)
        summary = {
            "stsnb_version": __version__,
            "patients": len(results),
            "modalities": list(modalities),
            "same_frame_as_ct": list(same_frame),
            "registered_in_ct_frame": list(in_frame),
            "roi_pattern": mapping.roi,
            "import_map": mapping.source.name if mapping.source else None,
            "clinical_map": cmap.path.name if cmap is not None else None,
            "followup_unit": cmap.unit if cmap is not None else None,
            "notes": notes,
            "rows": report.to_dict("records"),
        }
        (tmp / REPORT_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        read_cohort_config(tmp)  # the cohort.toml written is one the suite reads
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        os.chmod(out, 0o755)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if id_map is not None:
        id_map.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(id_rows).to_csv(id_map, index=False)
    return ImportResult(cohort_dir=out, report=report, modalities=modalities,
                        same_frame_as_ct=same_frame, unmatched_clinical_rows=len(unmatched),
                        registered_in_ct_frame=in_frame)
