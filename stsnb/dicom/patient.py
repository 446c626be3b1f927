"""One patient's DICOM folder -> the cohort images (CT, MR, PET on their own grids), the dose
(Gy, own grid), the tumour masks (gtv.nii.gz on the CT, gtv_<modality>.nii.gz on the others)
and the report rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
from pydicom.dataset import Dataset

from stsnb.core.errors import CohortError
from stsnb.core.modalities import MR_MODALITIES
from stsnb.dicom.classify import Classification, ImportMap, classify_series
from stsnb.dicom.report import Reporter
from stsnb.dicom.rtdose import DoseGrid, Prescription, combine_doses, read_prescription, read_rtdose
from stsnb.dicom.rtstruct import choose_roi, rasterise_contours, referenced_series, roi_contours
from stsnb.dicom.scan import PatientSource, RtObject, SeriesGroup, read_dataset, scan_patient
from stsnb.dicom.series import SeriesImage, read_series

__all__ = ["PatientImport", "import_patient"]


@dataclass
class PatientImport:
    """What one patient's import produced (in memory, written by the writer)."""

    patient_id: str
    images: dict[str, sitk.Image] = field(default_factory=dict)  # stem -> image
    masks: dict[str, sitk.Image] = field(default_factory=dict)  # file stem -> mask
    frames: dict[str, str] = field(default_factory=dict)  # stem -> frame label
    rows: list[dict[str, object]] = field(default_factory=list)
    dicom_ids: tuple[str, ...] = ()  # the source's PatientID (kept in memory, for the id map)


def _label(series: SeriesGroup) -> str:
    return repr(series.description or f"number {series.series_number}")


def _classify(source: PatientSource, import_map: ImportMap, report: Reporter
              ) -> dict[str, SeriesGroup]:
    """stem -> its one series; unmapped ones reported; two series for one stem is an error."""
    rules = import_map.series_rules(source.folder.name)
    found: dict[str, list[tuple[SeriesGroup, Classification]]] = {}
    for series in source.series:
        result = classify_series(series.modality, series.description, series.image_type,
                                 series.contrast_agent, rules)
        if result.stem is None:
            status = "ambiguous" if result.reason.startswith("ambiguous") else (
                "ignored" if result.reason.startswith("ignored") else "unmapped")
            report.add("series", "", status, dicom_modality=series.modality,
                       description=series.description, n_files=len(series.slices),
                       detail=f"{result.reason} ({result.rule})")
            continue
        found.setdefault(result.stem, []).append((series, result))
    chosen = {}
    for stem, items in found.items():
        if len(items) > 1:
            listing = "; ".join(f"{_label(s)} (series number {s.series_number or '?'}, "
                                f"{len(s.slices)} files, {c.rule})" for s, c in items)
            raise CohortError(
                f"{len(items)} series are classified as {stem}: {listing}.",
                patient_id=source.folder.name, path=items[1][0].slices[0].path.parent,
                fix="keep one of them in the source folder, or choose in the import map "
                '(--map): [series] "<description pattern>" = "ignore" for the others.')
        chosen[stem] = items[0][0]
    return chosen


def _structure_target(ds: Dataset, rt: RtObject, series: dict[str, SeriesGroup],
                      all_series: list[SeriesGroup], patient: str) -> tuple[str | None, str]:
    """(stem of the image series a structure set was drawn on, how it was found)."""
    uids, sops = referenced_series(ds)
    by_uid = {s.uid: s for s in all_series}
    stem_of = {s.uid: stem for stem, s in series.items()}
    present = [u for u in uids if u in by_uid]
    how = "RTReferencedSeriesSequence"
    if not present and sops:
        present = sorted({s.uid for s in all_series
                          if any(sl.sop_uid in sops for sl in s.slices)})
        how = "ContourImageSequence"
    if not present and not uids and not sops:
        frames = {str(r.get("ReferencedFrameOfReferenceUID", ""))
                  for r in ds.get("StructureSetROISequence", [])} | {rt.frame_uid}
        present = [s.uid for s in all_series if s.frame_uid in frames and s.uid in stem_of]
        how = "FrameOfReferenceUID"
        if len(present) > 1:
            names = ", ".join(_label(by_uid[u]) for u in present)
            raise CohortError(
                f"the structure set names no image series, and {len(present)} series share its "
                f"frame of reference ({names}); which one it was drawn on is ambiguous.",
                patient_id=patient, path=rt.path,
                fix="export the RTSTRUCT with its referenced series (ContourImageSequence).")
    if not present:
        named = ", ".join(sorted(uids)) or f"{len(sops)} image instance(s)"
        raise CohortError(
            f"the structure set references image series {named}, which is not among the "
            f"patient's {len(all_series)} image series in the source folder.",
            patient_id=patient, path=rt.path,
            fix="copy the referenced image series into the patient's folder (or remove the "
            "RTSTRUCT if it belongs to another patient or study).")
    if len(present) > 1:
        names = ", ".join(_label(by_uid[u]) for u in present)
        raise CohortError(f"the structure set references {len(present)} image series ({names}).",
                          patient_id=patient, path=rt.path,
                          fix="export one structure set per image series.")
    return stem_of.get(present[0]), how


def _structures(source: PatientSource, series: dict[str, SeriesGroup],
                images: dict[str, SeriesImage], import_map: ImportMap, report: Reporter,
                result: PatientImport) -> None:
    patient = source.folder.name
    pattern = import_map.roi_pattern(patient)
    sources: dict[str, Path] = {}
    for rt in (r for r in source.rt if r.kind == "RTSTRUCT"):
        ds = read_dataset(rt.path, patient)
        if ds is None:
            raise CohortError("the RTSTRUCT cannot be read.", patient_id=patient, path=rt.path,
                              fix="re-export it from the planning system.")
        stem, how = _structure_target(ds, rt, series, source.series, patient)
        label = str(ds.get("StructureSetLabel", "")).strip()
        if stem is None:
            report.add("structure", "", "ignored", dicom_modality="RTSTRUCT",
                       description=label, detail="drawn on a series that is not imported "
                       "(unmapped or ignored)")
            continue
        choice = choose_roi(ds, pattern)
        if choice.number is None and choice.matching:
            raise CohortError(
                f"{len(choice.matching)} ROIs of the structure set on the {stem} match the "
                f"tumour pattern {pattern!r}: {', '.join(choice.matching)}.",
                patient_id=patient, path=rt.path,
                fix=f'choose one with the import map (--map): roi = "^{choice.matching[0]}$", '
                f'or under [patients.{patient}].')
        if choice.number is None:
            problem = (f"no ROI of the structure set on the {stem} matches the tumour pattern "
                       f"{pattern!r} (with closed contours); it holds: "
                       f"{', '.join(choice.names) or 'no ROI'}.")
            if stem == "ct":
                raise CohortError(problem, patient_id=patient, path=rt.path,
                                  fix='set the pattern in the import map (--map), e.g. roi = '
                                  '"^GTV" or the exact ROI name.')
            report.add("structure", stem, "warning", dicom_modality="RTSTRUCT",
                       description=", ".join(choice.names), detail=problem + " No mask written.")
            continue
        output = "gtv" if stem == "ct" else f"gtv_{stem}"
        if output in sources:
            raise CohortError(
                f"two structure sets give the tumour on the {stem}: {sources[output].name} and "
                f"{rt.path.name}.", patient_id=patient, path=rt.path,
                fix="keep one structure set per image in the source folder.")
        sources[output] = rt.path
        contours = roi_contours(ds, choice.number)
        mask, outside = rasterise_contours(contours, images[stem].image, patient, rt.path)
        result.masks[output] = mask
        n = int(sitk.GetArrayViewFromImage(mask).sum())
        detail = (f"ROI {choice.name!r} ({len(contours)} contours, {n} voxels, "
                  f"{n * math.prod(mask.GetSpacing()) / 1000:.1f} cc); "
                  f"image found by {how}")
        if outside:
            detail += f"; {outside} contour(s) outside the image were left out"
        report.add("structure", stem, "written" if n else "warning",
                   output=f"{output}.nii.gz", dicom_modality="RTSTRUCT",
                   description=", ".join(choice.names), image=mask, frame=result.frames[stem],
                   detail=detail if n else detail + "; the mask is empty")
    if "gtv" not in result.masks:
        report.note("no tumour structure on the CT: gtv.nii.gz not written (curation excludes "
                    "the patient as 'missing tumour structure').")


def _dose(source: PatientSource, ct_frame: str, report: Reporter,
          result: PatientImport) -> None:
    patient = source.folder.name
    plans: list[Prescription] = []
    for rt in (r for r in source.rt if r.kind == "RTPLAN"):
        plan = read_prescription(rt.path, patient)
        plans.append(plan)
        report.add("plan", "dose", "info", dicom_modality="RTPLAN", detail=(
            f"prescription {plan.dose_gy:g} Gy" if plan.dose_gy is not None
            else "prescription not stated") + (
            f" in {plan.fractions} fractions" if plan.fractions else ""))
    doses: list[DoseGrid] = []
    for rt in (r for r in source.rt if r.kind == "RTDOSE"):
        dose = read_rtdose(rt.path, patient)
        if dose.frame_uid != ct_frame:
            raise CohortError(
                "the RTDOSE is not in the planning CT's frame of reference (FrameOfReferenceUID "
                "differs); dose.nii.gz must be in the CT's frame.", patient_id=patient,
                path=rt.path, fix="export the dose of the plan made on this CT.")
        doses.append(dose)
    if not doses:
        if plans:
            report.note("an RTPLAN but no RTDOSE: dose.nii.gz not written.")
        return
    image, rule = combine_doses(doses, patient, plans[0] if len(plans) == 1 else None)
    result.images["dose"] = image
    result.frames["dose"] = "ct"
    maximum = float(sitk.GetArrayViewFromImage(image).max())
    report.add("dose", "dose", "written", output="dose.nii.gz", dicom_modality="RTDOSE",
               n_files=len(doses), image=image, frame="ct",
               detail=f"{rule}; maximum {maximum:.2f} Gy")


def import_patient(folder: Path, patient_id: str, import_map: ImportMap
                   ) -> tuple[PatientImport, set[str]]:
    """Import one source folder as ``patient_id``; returns the result and the DICOM
    identifiers found (PatientID, name parts), which the writer keeps out of the cohort."""
    source = scan_patient(folder)
    name = folder.name
    if not source.series and not source.rt:
        raise CohortError(f"no DICOM file found in the patient folder ({source.n_ignored_files} "
                          "other files ignored).", patient_id=name, path=folder,
                          fix="put the patient's DICOM files (any depth) in the folder.")
    ids = {i for i in source.dicom_patient_ids if i}
    if len(ids) > 1:
        raise CohortError(f"the folder holds DICOM files of {len(ids)} different PatientIDs.",
                          patient_id=name, path=folder,
                          fix="keep one patient's files per folder.")
    identifiers = {name, *ids}
    for s in source.series:
        person = str(s.header.get("PatientName", ""))
        identifiers |= {p for p in person.replace("^", " ").split() if len(p) >= 3} | {person}
    report = Reporter(patient_id, identifiers)
    result = PatientImport(patient_id=patient_id, dicom_ids=tuple(sorted(ids)))
    series = _classify(source, import_map, report)
    if "ct" not in series:
        raise CohortError("no CT series found; the planning CT is every patient's reference.",
                          patient_id=name, path=folder,
                          fix="add the planning CT series, or map a series to ct with --map.")
    local: dict[str, str] = {}

    def frame_label(uid: str) -> str:
        if uid == series["ct"].frame_uid:
            return "ct"
        if uid not in local:
            local[uid] = f"frame {len(local) + 2}"
        return local[uid]

    mr = {stem: s for stem, s in series.items() if stem in MR_MODALITIES}
    mr_frames = {s.frame_uid for s in mr.values()}
    if len(mr_frames) > 1:
        listing = "; ".join(f"{stem} {_label(s)} in {frame_label(s.frame_uid)}"
                            for stem, s in mr.items())
        raise CohortError(
            f"the MR series lie in {len(mr_frames)} frames of reference ({listing}); the MR "
            "sequences of one session must share one frame.", patient_id=name,
            path=next(iter(mr.values())).slices[0].path.parent,
            fix="import the sequences of one MR session only (ignore the others in the map), "
            "or register them to one frame before the import.")
    images: dict[str, SeriesImage] = {}
    for stem, s in series.items():
        images[stem] = read_series(s, stem, name)
        result.images[stem] = images[stem].image
        result.frames[stem] = frame_label(s.frame_uid)
        report.add("series", stem, "written", output=f"{stem}.nii.gz", dicom_modality=s.modality,
                   description=s.description, n_files=len(s.slices), image=images[stem].image,
                   frame=result.frames[stem], detail=images[stem].note)
    _structures(source, series, images, import_map, report, result)
    _dose(source, series["ct"].frame_uid, report, result)
    if source.n_ignored_files:
        report.note(f"{source.n_ignored_files} non-DICOM file(s) ignored.", status="info")
    result.rows = report.rows
    return result, identifiers
