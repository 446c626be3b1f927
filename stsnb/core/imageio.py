"""Guarded image reading: every failure becomes a CohortError naming the patient and the file.

SimpleITK reads a truncated ``.nii.gz`` without complaint (the missing voxels come back as
garbage), so :func:`read_image` and :func:`read_header` first check that a NIfTI file holds
all the bytes its header promises (:func:`check_complete`). Its NIfTI reader also turns NaN and
inf voxels into 0 without a word, so :func:`check_finite_file` counts them in the raw data.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from stsnb.core.errors import CohortError

__all__ = [
    "ImageHeader",
    "check_complete",
    "check_finite",
    "check_finite_file",
    "check_binary_mask",
    "check_same_grid",
    "read_header",
    "read_image",
]

_FLOAT_PIXEL_IDS = frozenset(
    getattr(sitk, name)
    for name in (
        "sitkFloat32",
        "sitkFloat64",
        "sitkVectorFloat32",
        "sitkVectorFloat64",
    )
)

#: Grid tolerances for "the same grid": a hundredth of a voxel for the origin, relative 1e-4
#: for the spacing, 1e-4 per direction-cosine element (about 0.006 degrees).
ORIGIN_TOLERANCE_VOXELS = 0.01
SPACING_RELATIVE_TOLERANCE = 1e-4
DIRECTION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ImageHeader:
    """Geometry and pixel type of one image, read from its header only (mm, voxels)."""

    path: Path
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_id: int
    pixel_type: str
    n_components: int

    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def is_float(self) -> bool:
        """True when the voxels are floating point (and so may hold NaN or inf)."""
        return self.pixel_id in _FLOAT_PIXEL_IDS

    @property
    def fov_mm(self) -> tuple[float, ...]:
        """Field of view per axis: size * spacing (mm)."""
        return tuple(n * s for n, s in zip(self.size, self.spacing, strict=True))

    @property
    def direction_is_identity(self) -> bool:
        eye = np.eye(self.dimension).ravel()
        return bool(np.allclose(self.direction, eye, atol=DIRECTION_TOLERANCE, rtol=0.0))


def _describe(what: str) -> str:
    return f"the {what} image" if what else "the image"


def _require_file(path: Path, patient_id: str | None, what: str) -> None:
    if not path.exists():
        raise CohortError(
            f"{_describe(what)} {path.name} does not exist.",
            patient_id=patient_id,
            path=path,
            fix="check the file name and the patient folder (stems are lower case: ct.nii.gz).",
        )
    if not path.is_file():
        raise CohortError(
            f"{_describe(what)} {path.name} is not a regular file.",
            patient_id=patient_id,
            path=path,
            fix="replace it with a NIfTI file.",
        )


def _unreadable(path: Path, patient_id: str | None, what: str, cause: BaseException) -> CohortError:
    detail = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    return CohortError(
        f"{_describe(what)} {path.name} cannot be read (corrupt, truncated or not an image): "
        f"{detail}",
        patient_id=patient_id,
        path=path,
        fix="re-export or re-copy the file; or remove it, and the patient is excluded for the "
        "missing image.",
    )


#: NIfTI files (by name); other formats are left to SimpleITK.
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _nifti(path: Path) -> nib.Nifti1Image | nib.Nifti2Image | None:
    """The NIfTI-1 or NIfTI-2 image (header read, voxels not) of `path`; None for another
    format or a header nibabel cannot read (SimpleITK's reader then says what the file is).
    nibabel reads the header, its byte order and version."""
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        return None
    try:
        return nib.load(path)
    except nib.filebasedimages.ImageFileError:
        return None


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as raw:
        return raw.read(2) == b"\x1f\x8b"


def _voxel_bytes(image: nib.Nifti1Image | nib.Nifti2Image) -> tuple[int, int]:
    """(header and extensions, voxel data) sizes in bytes of a single-file NIfTI."""
    header = image.header
    n_voxels = math.prod(int(n) for n in image.shape)
    return int(image.dataobj.offset), n_voxels * header.get_data_dtype().itemsize


def _truncated(path: Path, patient_id: str | None, what: str, detail: str) -> CohortError:
    return CohortError(
        f"{_describe(what)} {path.name} is truncated or corrupt: {detail}.",
        patient_id=patient_id,
        path=path,
        fix="re-copy or re-export the file (an interrupted copy leaves a cut-off file).",
    )


_STREAM_ERRORS = (OSError, EOFError, zlib.error, struct.error, ValueError,
                  nib.filebasedimages.ImageFileError)
_CHUNK_BYTES = 1 << 23


def _gzip_size(path: Path) -> int:
    """Bytes of a .gz file once decompressed, counted by decompressing it."""
    total = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            total += len(chunk)
    return total


def check_complete(path: str | Path, patient_id: str | None = None, what: str = "") -> None:
    """Raise CohortError when a NIfTI file (.nii or .nii.gz) holds fewer bytes than its header says.

    For .nii.gz the gzip trailer's size field is compared with the header (no decompression);
    only when they disagree (e.g. a multi-member gzip) is the stream decompressed to be sure.
    Other formats are left to SimpleITK.
    """
    path = Path(path)
    try:
        image = _nifti(path)
        gzipped = _is_gzip(path)
        if image is None:
            if gzipped and path.name.lower().endswith(NIFTI_SUFFIXES):
                _gzip_size(path)  # a stream cut off inside the header raises here
            return
        offset, data = _voxel_bytes(image)
        expected = offset + data
        if gzipped:
            with path.open("rb") as raw:
                raw.seek(-4, 2)
                (isize,) = struct.unpack("<I", raw.read(4))
        if not gzipped:
            total = path.stat().st_size
        elif isize == expected % 2**32:
            return
        else:
            total = _gzip_size(path)
    except _STREAM_ERRORS as exc:
        raise _truncated(path, patient_id, what, str(exc) or type(exc).__name__) from exc
    if total < expected:
        raise _truncated(
            path, patient_id, what, f"it holds {total} bytes, its header promises {expected}"
        )


def _count_non_finite_nifti(path: Path, patient_id: str | None, what: str) -> tuple[int, int, int]:
    """(NaN, inf, voxel values) counted in a NIfTI file's stored float data; (0, 0, 0) when its
    voxels are stored as integers (which cannot be NaN)."""
    try:
        image = _nifti(path)
        if image is None or image.header.get_data_dtype().kind not in "fc":
            return 0, 0, 0
        values = np.asanyarray(image.dataobj.get_unscaled())
        if values.dtype.kind == "c":
            values = values.view(values.real.dtype)
        return (int(np.count_nonzero(np.isnan(values))),
                int(np.count_nonzero(np.isinf(values))), int(values.size))
    except _STREAM_ERRORS as exc:
        raise _truncated(path, patient_id, what, str(exc) or type(exc).__name__) from exc


def read_header(path: str | Path, patient_id: str | None = None, what: str = "") -> ImageHeader:
    """Read an image's geometry and pixel type without its voxels; checks the file is complete."""
    path = Path(path)
    _require_file(path, patient_id, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(path, patient_id, what, exc) from exc
    check_complete(path, patient_id, what)
    pixel_id = reader.GetPixelID()
    return ImageHeader(
        path=path,
        size=tuple(int(n) for n in reader.GetSize()),
        spacing=tuple(float(s) for s in reader.GetSpacing()),
        origin=tuple(float(o) for o in reader.GetOrigin()),
        direction=tuple(float(d) for d in reader.GetDirection()),
        pixel_id=pixel_id,
        pixel_type=sitk.GetPixelIDValueAsString(pixel_id),
        n_components=int(reader.GetNumberOfComponents()),
    )


def read_image(path: str | Path, patient_id: str | None = None, what: str = "") -> sitk.Image:
    """Read an image; a missing, unreadable or truncated file raises CohortError naming it.

    ``what`` says which image it is (e.g. ``"t2w"``, ``"tumour mask"``) for the message.
    """
    path = Path(path)
    _require_file(path, patient_id, what)
    check_complete(path, patient_id, what)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _unreadable(path, patient_id, what, exc) from exc


def _raise_non_finite(
    path: Path, patient_id: str | None, what: str, n_nan: int, n_inf: int, n_values: int
) -> None:
    if not (n_nan or n_inf):
        return
    found = " and ".join(
        f"{n} {kind} voxel{'s' if n != 1 else ''}"
        for n, kind in ((n_nan, "NaN"), (n_inf, "infinite"))
        if n
    )
    raise CohortError(
        f"{_describe(what)} {path.name} holds {found} (of {n_values}).",
        patient_id=patient_id,
        path=path,
        fix="replace non-finite voxels with a background value (e.g. 0, or -1000 HU for CT) "
        "when exporting.",
    )


def check_finite_file(path: str | Path, patient_id: str | None = None, what: str = "") -> None:
    """Raise CohortError when an image file holds NaN or infinite voxels (says how many).

    NIfTI files are checked on their raw data, because SimpleITK's NIfTI reader silently turns
    non-finite values into 0; integer-stored voxels are not read at all. Other formats are
    read with SimpleITK.
    """
    path = Path(path)
    _require_file(path, patient_id, what)
    try:
        is_nifti = _nifti(path) is not None
    except _STREAM_ERRORS as exc:
        raise _unreadable(path, patient_id, what, exc) from exc
    if is_nifti:
        _raise_non_finite(path, patient_id, what, *_count_non_finite_nifti(path, patient_id, what))
        return
    check_finite(read_image(path, patient_id, what), path, patient_id, what)


def check_finite(
    image: sitk.Image, path: str | Path, patient_id: str | None = None, what: str = ""
) -> None:
    """Raise CohortError when an image in memory holds NaN or infinite voxels (says how many)."""
    if image.GetPixelID() not in _FLOAT_PIXEL_IDS:
        return
    values = sitk.GetArrayViewFromImage(image)
    if np.isfinite(values).all():
        return
    n_nan = int(np.count_nonzero(np.isnan(values)))
    n_inf = int(np.count_nonzero(np.isinf(values)))
    _raise_non_finite(Path(path), patient_id, what, n_nan, n_inf, values.size)


def check_binary_mask(
    image: sitk.Image, path: str | Path, patient_id: str | None = None, what: str = "tumour mask"
) -> int:
    """Raise CohortError unless every voxel is 0 or 1; return the number of voxels equal to 1."""
    check_finite(image, path, patient_id, what)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CohortError(
            f"{_describe(what)} {Path(path).name} has "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel; a mask has one.",
            patient_id=patient_id,
            path=path,
            fix="write the mask as a single-component 0/1 image.",
        )
    values = sitk.GetArrayViewFromImage(image)
    ones = values == 1
    n_ones = int(np.count_nonzero(ones))
    n_zeros = int(np.count_nonzero(values == 0))
    if n_ones + n_zeros != values.size:
        other = np.unique(values[~(ones | (values == 0))])
        shown = ", ".join(f"{v:g}" for v in other[:10].tolist())
        more = f" and {other.size - 10} more" if other.size > 10 else ""
        raise CohortError(
            f"{_describe(what)} {Path(path).name} is not binary: besides 0 and 1 it holds the "
            f"values {shown}{more} ({values.size - n_ones - n_zeros} voxels).",
            patient_id=patient_id,
            path=path,
            fix="binarise the mask (tumour = 1, background = 0, e.g. mask > 0) before export.",
        )
    return n_ones


def check_same_grid(
    header: ImageHeader,
    reference: ImageHeader,
    patient_id: str | None = None,
    what: str = "tumour mask",
    reference_what: str = "ct",
) -> None:
    """Raise CohortError unless ``header`` lies on the reference grid (size, spacing, origin,
    direction), saying which differs and by how much. Tolerances: origin 0.01 voxel,
    spacing relative 1e-4, direction 1e-4."""
    problems: list[str] = []
    name, ref_name = header.path.name, reference.path.name
    if header.size != reference.size:
        problems.append(f"size {header.size} voxels vs {reference.size}")
    else:
        spacing = np.asarray(header.spacing)
        ref_spacing = np.asarray(reference.spacing)
        spacing_diff = np.abs(spacing - ref_spacing)
        if np.any(spacing_diff > SPACING_RELATIVE_TOLERANCE * ref_spacing):
            problems.append(
                f"spacing {_fmt(spacing)} mm vs {_fmt(ref_spacing)} mm "
                f"(largest difference {spacing_diff.max():.4g} mm)"
            )
        origin_diff = np.abs(np.asarray(header.origin) - np.asarray(reference.origin))
        origin_tol = ORIGIN_TOLERANCE_VOXELS * float(ref_spacing.min())
        if np.any(origin_diff > origin_tol):
            problems.append(
                f"origin {_fmt(header.origin)} mm vs {_fmt(reference.origin)} mm "
                f"(largest difference {origin_diff.max():.4g} mm, tolerance {origin_tol:.3g} mm)"
            )
        direction_diff = np.abs(np.asarray(header.direction) - np.asarray(reference.direction))
        if np.any(direction_diff > DIRECTION_TOLERANCE):
            problems.append(
                f"direction {_fmt(header.direction)} vs {_fmt(reference.direction)} "
                f"(largest element difference {direction_diff.max():.4g})"
            )
    if problems:
        raise CohortError(
            f"{_describe(what)} {name} is not on the {reference_what} grid of {ref_name}: "
            + "; ".join(problems)
            + ".",
            patient_id=patient_id,
            path=header.path,
            fix=f"resample the mask onto the {reference_what} grid (nearest neighbour) or export "
            f"it from the planning system on the planning CT.",
        )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
