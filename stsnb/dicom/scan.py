"""Find the DICOM files of each patient folder and group them: image series by
SeriesInstanceUID, RT objects (RTSTRUCT, RTDOSE, RTPLAN) one per file."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from stsnb.core.errors import CohortError

__all__ = ["ImageSlice", "PatientSource", "RtObject", "SeriesGroup", "patient_folders",
           "read_dataset", "scan_patient"]

_RT_MODALITIES = ("RTSTRUCT", "RTDOSE", "RTPLAN")
_SKIPPED_NAMES = ("DICOMDIR",)


@dataclass(frozen=True)
class ImageSlice:
    """One image file: where it lies (mm) and how it is oriented."""

    path: Path
    sop_uid: str
    position: tuple[float, float, float] | None  # ImagePositionPatient (mm)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6 direction cosines)
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) mm
    n_frames: int


@dataclass
class SeriesGroup:
    """The image files of one series and the header values the import needs."""

    uid: str
    modality: str
    description: str
    series_number: str
    frame_uid: str
    image_type: str
    contrast_agent: str
    header: Dataset  # the first file's header, without pixels
    slices: list[ImageSlice] = field(default_factory=list)


@dataclass(frozen=True)
class RtObject:
    """One RTSTRUCT, RTDOSE or RTPLAN file."""

    kind: str  # DICOM Modality: RTSTRUCT | RTDOSE | RTPLAN
    path: Path
    sop_uid: str
    frame_uid: str


@dataclass
class PatientSource:
    """Everything found in one source patient folder."""

    folder: Path
    dicom_patient_ids: set[str]
    series: list[SeriesGroup]
    rt: list[RtObject]
    n_ignored_files: int


def patient_folders(source: str | Path) -> list[Path]:
    """The sub-folders of ``source`` (one per patient), sorted; hidden ones skipped."""
    root = Path(source).expanduser()
    if not root.is_dir():
        raise CohortError(f"the DICOM source folder {root} does not exist.", path=root,
                          fix="pass the folder that holds one sub-folder per patient.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise CohortError(f"the DICOM source folder {root} holds no patient folder.", path=root,
                          fix="put each patient's DICOM files in a folder of its own under it.")
    return folders


def read_dataset(path: Path, patient: str | None = None, pixels: bool = False) -> Dataset | None:
    """Read a DICOM file (header only unless ``pixels``); None when it is not DICOM.

    Files without the 128-byte preamble and 'DICM' prefix (older, still valid) are read when
    they hold a SOP Class UID and a Modality.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings about over-long values
        try:
            return pydicom.dcmread(path, stop_before_pixels=not pixels)
        except InvalidDicomError:
            pass
        except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            raise CohortError(
                f"the DICOM file {path.name} cannot be read ({type(exc).__name__}: {exc}).",
                patient_id=patient, path=path,
                fix="re-export the file, or move it out of the source folder.",
            ) from exc
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
        except Exception:  # noqa: BLE001 - not DICOM at all: ignored like any other file
            return None
    try:
        if "SOPClassUID" in ds and "Modality" in ds:
            return ds
    except Exception:  # noqa: BLE001 - a random file read as a raw data set
        return None
    return None


def _floats(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return tuple(float(v) for v in value)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value or "").strip()


def scan_patient(folder: Path) -> PatientSource:
    """Read the headers of every file under ``folder`` (any depth); non-DICOM files are
    counted and ignored."""
    series: dict[str, SeriesGroup] = {}
    rt: list[RtObject] = []
    ids: set[str] = set()
    ignored = 0
    name = folder.name
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") or path.name.upper() in _SKIPPED_NAMES:
            ignored += 1
            continue
        ds = read_dataset(path, name)
        if ds is None:
            ignored += 1
            continue
        ids.add(_text(ds, "PatientID"))
        modality = _text(ds, "Modality").upper()
        frame_uid = _text(ds, "FrameOfReferenceUID")
        sop_uid = _text(ds, "SOPInstanceUID")
        if modality in _RT_MODALITIES:
            rt.append(RtObject(modality, path, sop_uid, frame_uid))
            continue
        uid = _text(ds, "SeriesInstanceUID")
        if not uid:
            raise CohortError(f"the DICOM file {path.name} has no SeriesInstanceUID.",
                              patient_id=name, path=path,
                              fix="re-export the series from the scanner or PACS.")
        group = series.get(uid)
        if group is None:
            description = " ".join(filter(None, (_text(ds, "SeriesDescription"),
                                                 _text(ds, "ProtocolName"))))
            group = series[uid] = SeriesGroup(
                uid=uid, modality=modality, description=description,
                series_number=_text(ds, "SeriesNumber"), frame_uid=frame_uid,
                image_type=_text(ds, "ImageType"),
                contrast_agent=_text(ds, "ContrastBolusAgent"), header=ds)
        elif frame_uid != group.frame_uid:
            raise CohortError(
                f"series {group.description or uid} mixes frames of reference: {path.name} "
                "differs from the series' first file.",
                patient_id=name, path=path, fix="re-export the series as one consistent series.")
        position = _floats(ds, "ImagePositionPatient")
        spacing = _floats(ds, "PixelSpacing")
        group.slices.append(ImageSlice(
            path=path, sop_uid=sop_uid,
            position=tuple(position) if position and len(position) == 3 else None,  # type: ignore[arg-type]
            orientation=_floats(ds, "ImageOrientationPatient"),
            rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
            pixel_spacing=tuple(spacing[:2]) if spacing else None,  # type: ignore[arg-type]
            n_frames=int(ds.get("NumberOfFrames", 1) or 1),
        ))
    return PatientSource(folder=folder, dicom_patient_ids=ids, series=list(series.values()),
                         rt=rt, n_ignored_files=ignored)


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """The unit normal of an image plane from its 6 direction cosines (row x column)."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:6])
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)
