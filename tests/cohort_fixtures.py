"""Tiny on-disk cohorts for the curation tests (SimpleITK images of a few thousand voxels)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

STUDY = ("ct", "dose", "t1w", "t2w", "ce_t1w")

CT_SIZE = (20, 20, 8)  # x, y, z voxels
CT_SPACING = (1.0, 1.0, 3.0)  # mm
CT_ORIGIN = (-10.0, -12.0, -9.0)  # mm
GTV_BOX = (slice(3, 6), slice(8, 12), slice(7, 12))  # z, y, x index ranges: 3*4*5 = 60 voxels
GTV_VOXELS = 60

DEFAULT_ROWS = (
    {"patient_id": "P01", "distant_metastasis": "1", "followup_months": "12", "age": "61",
     "sex": "F", "histology": "liposarcoma", "grade": "2", "site": "thigh",
     "name": "Alice Example", "birth_date": "1960-01-02"},
    {"patient_id": "P02", "distant_metastasis": "0", "followup_months": "30.5", "age": "48",
     "sex": "M", "histology": "UPS", "grade": "3", "site": "thigh",
     "name": "Bob Example", "birth_date": "1972-03-04"},
    {"patient_id": "P03", "distant_metastasis": "1", "followup_months": "6", "age": "70",
     "sex": "M", "histology": "UPS", "grade": "3", "site": "arm",
     "name": "Carol Example", "birth_date": "1950-05-06"},
    {"patient_id": "P04", "distant_metastasis": "0", "followup_months": "40", "age": "55",
     "sex": "F", "histology": "myxofibrosarcoma", "grade": "2", "site": "trunk",
     "name": "Dan Example", "birth_date": "1966-07-08"},
)  # fmt: skip


#: Identifying columns added to the book's cohort: none of them may reach the book or work_dir.
IDENTIFYING_COLUMNS = ("patient_name", "birth_date", "mrn")


def identifying_values(patient_id: str) -> dict[str, str]:
    """Distinctive fake identifiers of one patient (name, birth date, zero-padded MRN)."""
    number = int("".join(ch for ch in patient_id if ch.isdigit()) or 0)
    return {"patient_name": f"Zebedee Quillfeather{number:03d}",
            "birth_date": f"19{31 + number:02d}-0{1 + number % 9}-2{number % 8}",
            "mrn": f"0098{7000 + number}"}


def image_from_array(array: np.ndarray, spacing, origin, direction=None) -> sitk.Image:
    """A SimpleITK image of `array` (z, y, x) with spacing and origin in mm."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def ct_image() -> sitk.Image:
    """int16 HU: air around a water cylinder."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in CT_SIZE[::-1]), indexing="ij")
    hu = np.where((x - 10) ** 2 + (y - 10) ** 2 < 64, 40, -1000).astype(np.int16)
    return image_from_array(hu, CT_SPACING, CT_ORIGIN)


def gtv_image(empty: bool = False) -> sitk.Image:
    """uint8 0/1 mask on the CT grid."""
    mask = np.zeros(CT_SIZE[::-1], dtype=np.uint8)
    if not empty:
        mask[GTV_BOX] = 1
    return image_from_array(mask, CT_SPACING, CT_ORIGIN)


def dose_image() -> sitk.Image:
    """float32 Gy on a coarser grid than the CT, in the CT's frame."""
    dose = np.full((6, 12, 12), 50.0, dtype=np.float32)
    return image_from_array(dose, (2.0, 2.0, 4.5), (-11.0, -13.0, -10.5))


def mr_image(seed: int = 0) -> sitk.Image:
    """float32 MR in its own frame: anisotropic grid, rotated 20 degrees about z."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 500, size=(6, 16, 16)).astype(np.float32)
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    return image_from_array(values, (1.4, 1.4, 4.0), (5.0, -3.0, 2.0), direction)


def modality_image(modality: str) -> sitk.Image:
    if modality == "ct":
        return ct_image()
    if modality in ("dose", "pet"):
        return dose_image()
    return mr_image(seed=len(modality))


def write_image(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def write_clinical(cohort: Path, rows: Iterable[Mapping[str, str]]) -> Path:
    rows = list(rows)
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    path = cohort / "clinical.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_patient(cohort: Path, patient_id: str, modalities: Iterable[str] = STUDY) -> Path:
    folder = cohort / patient_id
    for modality in modalities:
        write_image(modality_image(modality), folder / f"{modality}.nii.gz")
    write_image(gtv_image(), folder / "gtv.nii.gz")
    return folder


def make_cohort(
    root: Path,
    rows: Iterable[Mapping[str, str]] = DEFAULT_ROWS,
    modalities: Iterable[str] = STUDY,
    toml: str | None = None,
) -> Path:
    """A cohort folder with clinical.csv, every image of every row, and cohort.toml if given."""
    cohort = root / "cohort"
    cohort.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    write_clinical(cohort, rows)
    for row in rows:
        write_patient(cohort, row["patient_id"], modalities)
    if toml is not None:
        (cohort / "cohort.toml").write_text(toml, encoding="utf-8")
    return cohort


def truncate(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
