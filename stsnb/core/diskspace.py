"""Disk space a stage's large outputs need, checked before they are written.

The probe itself is `stsnb.core.store.free_bytes` (shutil.disk_usage of the nearest existing
folder); `stsnb.core.store.require_free_space` raises a StsnbError naming what needs the space, how
much, and how much is free. This module estimates the registration stage's outputs from image
headers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import SimpleITK as sitk

from stsnb.core.store import require_free_space

#: Volumes on the CT grid that one patient's registration writes besides its images: the GTV,
#: the contour propagated by the rigid and the final transform, and the Jacobian determinant.
EXTRA_VOLUMES = 4
#: Bytes per voxel assumed for a written volume: float32 (4 bytes) that gzip compression about
#: halves on real images (synthetic ones, with empty space around the MR field of view, compress
#: further).
BYTES_PER_VOXEL = 2


class RegistrationFiles(Protocol):
    """What the estimate reads from a patient's registration inputs."""

    patient_id: str
    ct: Path
    registered: dict[str, Path]
    same_frame: dict[str, Path]


def ct_voxels(path: str | Path) -> int:
    """Voxel count of an image, from its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return math.prod(int(n) for n in reader.GetSize())


def registration_bytes(inputs: RegistrationFiles) -> int:
    """Estimated bytes of one patient's registration outputs (compressed volumes on the CT grid:
    every image, the GTV, the propagated contours and the Jacobian; transforms are small)."""
    volumes = len(inputs.registered) + len(inputs.same_frame) + EXTRA_VOLUMES
    return ct_voxels(inputs.ct) * BYTES_PER_VOXEL * volumes


def check_registration_space(folder: str | Path, todo: Iterable[RegistrationFiles]) -> None:
    """StsnbError before registering when the disk of `folder` cannot hold the outputs of the
    patients in `todo` (those not reused)."""
    todo = list(todo)
    if not todo:
        return
    need = sum(registration_bytes(inputs) for inputs in todo)
    require_free_space(folder, need, f"the registration outputs of {len(todo)} patient(s) "
                       f"(images on the CT grid, transforms, Jacobian)")
