"""A small DICOM-RT exporter: cohort-layout volumes (SimpleITK) -> CT and MR image series,
RTSTRUCT (the tumour as planar contours, one structure set per image) and RTDOSE files. It
exists to test the importer by round trip and to make DICOM test cases; it writes only
synthetic identifiers.

Contours come from the 0.5 iso-line of each mask slice (contourpy, matplotlib's contouring
engine), in voxel indices turned into patient coordinates (mm); the importer's voxel-centre
rule gives the mask back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from contourpy import contour_generator
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["export_patient", "mask_contours"]

_SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "RTSTRUCT": "1.2.840.10008.5.1.4.1.1.481.3",
    "RTDOSE": "1.2.840.10008.5.1.4.1.1.481.2",
}
_DESCRIPTIONS = {"ct": "PLANNING CT", "t1w": "AX T1 SE", "t2w": "AX T2 FS",
                 "ce_t1w": "AX T1 FS POST GD"}


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _matrix(image: sitk.Image) -> np.ndarray:
    """Index (x, y, z) -> patient offset (mm) matrix: direction times spacing."""
    return np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())


def _base(modality: str, sop_uid: str, patient: Mapping[str, str]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _SOP_CLASS[modality]
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.PatientBirthDate = patient["birth_date"]
    ds.StudyInstanceUID = patient["study"]
    ds.StudyDate = "20200101"
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_series(image: sitk.Image, folder: Path, modality: str, description: str,
                  frame_uid: str, patient: Mapping[str, str], number: int) -> tuple[str, list[str]]:
    """One file per slice; int16 with a rescale slope (CT: 1, HU kept exactly)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if np.linalg.det(direction) <= 0:
        raise ValueError("a left-handed direction cannot be written as axial DICOM slices")
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    if modality == "CT":
        slope, intercept = 1.0, 0.0
        stored = np.round(values)
    else:
        intercept = 0.0
        slope = max(float(np.abs(values).max()) / 32000.0, 1e-6)
        stored = np.round(values / slope)
    stored = stored.astype(np.int16)
    series_uid = _uid(patient["id"], description, "series")
    matrix = _matrix(image)
    origin = np.asarray(image.GetOrigin())
    sops = []
    for k in range(values.shape[0]):
        sop = _uid(patient["id"], description, k)
        ds = _base(modality, sop, patient)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SeriesNumber = number
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + matrix[:, 2] * k]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{image.GetSpacing()[1]:.6f}", f"{image.GetSpacing()[0]:.6f}"]
        ds.SliceThickness = f"{image.GetSpacing()[2]:.6f}"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:g}"
        ds.PixelData = stored[k].tobytes()
        _save(ds, folder / f"{k:04d}.dcm")
        sops.append(sop)
    return series_uid, sops


def mask_contours(mask: sitk.Image) -> list[tuple[int, np.ndarray]]:
    """(slice index, (N, 3) points in mm) for every closed 0.5 iso-line of a 0/1 mask."""
    array = sitk.GetArrayFromImage(mask).astype(np.float64)
    matrix, origin = _matrix(mask), np.asarray(mask.GetOrigin())
    out = []
    for k in np.flatnonzero(array.reshape(array.shape[0], -1).any(axis=1)):
        padded = np.pad(array[k], 1)
        x = np.arange(-1, padded.shape[1] - 1, dtype=float)
        y = np.arange(-1, padded.shape[0] - 1, dtype=float)
        for line in contour_generator(x=x, y=y, z=padded).lines(0.5):
            points = np.asarray(line)[:-1] if np.allclose(line[0], line[-1]) else np.asarray(line)
            if len(points) < 3:
                continue
            index = np.column_stack([points, np.full(len(points), float(k))])
            out.append((int(k), origin + index @ matrix.T))
    return out


def _write_rtstruct(mask: sitk.Image, path: Path, series_uid: str, sops: list[str],
                    frame_uid: str, patient: Mapping[str, str], roi_name: str,
                    image_class: str) -> Path:
    sop = _uid(patient["id"], path.name, "rtstruct")
    ds = _base("RTSTRUCT", sop, patient)
    ds.SeriesInstanceUID = _uid(sop, "series")
    ds.SeriesDescription = f"structures {roi_name}"
    ds.StructureSetLabel = "RTstruct"
    ds.FrameOfReferenceUID = frame_uid
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ContourImageSequence = DicomSequence([Dataset() for _ in sops])
    for item, uid in zip(series.ContourImageSequence, sops, strict=True):
        item.ReferencedSOPClassUID = _SOP_CLASS[image_class]
        item.ReferencedSOPInstanceUID = uid
    study = Dataset()
    study.ReferencedSOPInstanceUID = patient["study"]
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = roi_name
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = DicomSequence([roi])
    contours = []
    for number, (k, points) in enumerate(mask_contours(mask), start=1):
        item = Dataset()
        item.ContourGeometricType = "CLOSED_PLANAR"
        item.NumberOfContourPoints = len(points)
        item.ContourNumber = number
        item.ContourData = [f"{v:.4f}" for v in points.ravel()]
        image = Dataset()
        image.ReferencedSOPInstanceUID = sops[k]
        item.ContourImageSequence = DicomSequence([image])
        contours.append(item)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = DicomSequence(contours)
    ds.ROIContourSequence = DicomSequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = "GTV"
    ds.RTROIObservationsSequence = DicomSequence([observation])
    return _save(ds, path)


def _write_rtdose(dose: sitk.Image, path: Path, frame_uid: str, patient: Mapping[str, str],
                  summation: str, index: int) -> Path:
    values = sitk.GetArrayFromImage(dose).astype(np.float64)
    scaling = max(float(values.max()), 1e-6) / 4.0e9
    sop = _uid(patient["id"], "rtdose", index, summation)
    ds = _base("RTDOSE", sop, patient)
    ds.SeriesInstanceUID = _uid(sop, "series")
    ds.FrameOfReferenceUID = frame_uid
    direction = np.asarray(dose.GetDirection()).reshape(3, 3)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in dose.GetOrigin()]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
    ds.PixelSpacing = [f"{dose.GetSpacing()[1]:.6f}", f"{dose.GetSpacing()[0]:.6f}"]
    ds.GridFrameOffsetVector = [f"{k * dose.GetSpacing()[2]:.6f}" for k in range(values.shape[0])]
    ds.FrameIncrementPointer = pydicom.tag.Tag("GridFrameOffsetVector")
    ds.NumberOfFrames = values.shape[0]
    ds.Rows, ds.Columns = values.shape[1], values.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", summation
    ds.DoseGridScaling = f"{scaling:.10e}"
    ds.PixelData = np.round(np.clip(values, 0, None) / scaling).astype(np.uint32).tobytes()
    return _save(ds, path)


def export_patient(
    folder: str | Path,
    ct: sitk.Image,
    *,
    gtv: sitk.Image | None = None,
    mr: Mapping[str, sitk.Image] | None = None,
    mr_gtv: Mapping[str, sitk.Image] | None = None,
    dose: sitk.Image | None = None,
    dose_summation: Sequence[str] = ("PLAN",),
    patient_id: str = "SYN-0001",
    patient_name: str = "Synthetic^Patient",
    mr_in_ct_frame: bool = False,
    roi_name: str = "GTV",
) -> dict[str, Path]:
    """Write one patient as DICOM under ``folder``: CT/ and MR_<stem>/ series, RS_<stem>.dcm
    structure sets (``gtv`` on the CT, ``mr_gtv[stem]`` on that MR) and RD_<n>.dcm dose files,
    one per entry of ``dose_summation`` (PLAN files hold the dose, the BEAM files share it
    equally). The MR series share one frame of reference (the CT's if ``mr_in_ct_frame``).
    Returns the folder of each series and the path of each RT file.
    """
    folder = Path(folder)
    patient = {"id": patient_id, "name": patient_name, "birth_date": "19600101",
               "study": _uid(patient_id, "study")}
    ct_frame = _uid(patient_id, "frame ct")
    mr_frame = ct_frame if mr_in_ct_frame else _uid(patient_id, "frame mr")
    written: dict[str, Path] = {}
    ct_uid, ct_sops = _write_series(ct, folder / "CT", "CT", _DESCRIPTIONS["ct"], ct_frame,
                                    patient, 1)
    written["ct"] = folder / "CT"
    if gtv is not None:
        written["rtstruct_ct"] = _write_rtstruct(gtv, folder / "RS_ct.dcm", ct_uid, ct_sops,
                                                 ct_frame, patient, roi_name, "CT")
    for number, (stem, image) in enumerate((mr or {}).items(), start=2):
        uid, sops = _write_series(image, folder / f"MR_{stem}", "MR",
                                  _DESCRIPTIONS.get(stem, stem), mr_frame, patient, number)
        written[stem] = folder / f"MR_{stem}"
        if mr_gtv and stem in mr_gtv:
            written[f"rtstruct_{stem}"] = _write_rtstruct(
                mr_gtv[stem], folder / f"RS_{stem}.dcm", uid, sops, mr_frame, patient, roi_name,
                "MR")
    if dose is not None:
        n_beams = sum(1 for s in dose_summation if s == "BEAM")
        for index, summation in enumerate(dose_summation):
            part = dose / float(n_beams) if summation == "BEAM" else dose
            written[f"rtdose_{index}"] = _write_rtdose(
                part, folder / f"RD_{index}.dcm", ct_frame, patient, summation, index)
    return written
