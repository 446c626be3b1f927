"""Slice geometry: axial orientation, the tumour slab (+-margin in mm) and the canvas placement.

Every length is physical (mm). The CT grid may have any spacing and direction: the slice axis is
the index axis closest to the patient's cranio-caudal axis (physical z), and each axial slice is
shown with rows running anterior -> posterior and columns patient right -> left (LPS, the
radiological view), whatever order and sign the volume's axes have on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

#: Slack on physical comparisons (mm): a slice centre exactly at the margin is kept.
Z_TOLERANCE_MM = 1e-4


@dataclass(frozen=True)
class AxialFrame:
    """How a volume's voxel array maps onto (z: inferior->superior, y: anterior->posterior,
    x: right->left) and where its axial slices lie.

    ``index_axes[p]`` is the SimpleITK index axis along physical axis p (0 = x, 1 = y, 2 = z);
    ``flipped[p]`` says that index runs against that physical axis.
    """

    size: tuple[int, int, int]  # SimpleITK index order (i, j, k)
    spacing_mm: tuple[float, float, float]  # SimpleITK index order
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, column j = direction of index axis j
    index_axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]

    @classmethod
    def of(cls, image: sitk.Image) -> AxialFrame:
        """The frame of a 3D image (raises ValueError for another dimension)."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, found {image.GetDimension()}D")
        direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
        weights = np.abs(direction)
        index_axes = [-1, -1, -1]
        # Greedy assignment of index axes to physical axes, strongest alignment first.
        for flat in np.argsort(-weights, axis=None):
            physical, index = divmod(int(flat), 3)
            if index_axes[physical] < 0 and index not in index_axes:
                index_axes[physical] = index
        flipped = tuple(bool(direction[p, index_axes[p]] < 0) for p in range(3))
        return cls(
            size=tuple(int(n) for n in image.GetSize()),
            spacing_mm=tuple(float(s) for s in image.GetSpacing()),
            origin_mm=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
            index_axes=tuple(index_axes),
            flipped=flipped,
        )

    @property
    def slice_axis(self) -> int:
        """The SimpleITK index axis that numbers the axial slices."""
        return self.index_axes[2]

    @property
    def n_slices(self) -> int:
        return self.size[self.slice_axis]

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """In-plane voxel size (y, x) of an axial slice in mm (rows, columns)."""
        return (self.spacing_mm[self.index_axes[1]], self.spacing_mm[self.index_axes[0]])

    @property
    def slice_step_mm(self) -> float:
        """Physical z distance between the centres of neighbouring slices (mm)."""
        d = np.asarray(self.direction).reshape(3, 3)
        return abs(float(d[2, self.slice_axis])) * self.spacing_mm[self.slice_axis]

    def orient(self, array_zyx: np.ndarray) -> np.ndarray:
        """View of a SimpleITK array (k, j, i) as (z up, y posterior, x left): no copy."""
        # numpy axis of SimpleITK index axis a is 2 - a.
        order = [2 - self.index_axes[2], 2 - self.index_axes[1], 2 - self.index_axes[0]]
        view = np.transpose(array_zyx, order)
        flips = (self.flipped[2], self.flipped[1], self.flipped[0])
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
        return view[slices]

    def volume_index(self, oriented_slice: int) -> int:
        """Index along the volume's own slice axis of an oriented (inferior-first) slice."""
        return self.n_slices - 1 - oriented_slice if self.flipped[2] else oriented_slice

    def slice_centre_z_mm(self) -> np.ndarray:
        """Physical z (mm) of the centre of every oriented slice, inferior first."""
        d = np.asarray(self.direction).reshape(3, 3)
        centre = (np.asarray(self.size, dtype=float) - 1.0) / 2.0
        base = np.asarray(self.origin_mm) + d @ (np.asarray(self.spacing_mm) * centre)
        k = np.array([self.volume_index(i) for i in range(self.n_slices)], dtype=float)
        step = d[2, self.slice_axis] * self.spacing_mm[self.slice_axis]
        return base[2] + (k - centre[self.slice_axis]) * step

    def voxel_z_mm(self, array_indices: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Physical z (mm) of voxel centres given as SimpleITK-array indices (k, j, i)."""
        d = np.asarray(self.direction).reshape(3, 3)
        z = np.full(array_indices[0].shape, self.origin_mm[2], dtype=float)
        for a in range(3):  # SimpleITK index axis a sits at numpy axis 2 - a
            z += d[2, a] * self.spacing_mm[a] * array_indices[2 - a]
        return z

    def same_grid(self, other: AxialFrame, origin_tol_voxels: float, spacing_rel_tol: float,
                  direction_tol: float) -> list[str]:
        """What differs from `other` beyond the tolerances (empty when the grids agree)."""
        problems = []
        if self.size != other.size:
            return [f"size {self.size} voxels vs {other.size}"]
        sp, osp = np.asarray(self.spacing_mm), np.asarray(other.spacing_mm)
        if np.any(np.abs(sp - osp) > spacing_rel_tol * osp):
            problems.append(f"spacing {_fmt(sp)} mm vs {_fmt(osp)} mm")
        tol = origin_tol_voxels * float(osp.min())
        if np.any(np.abs(np.subtract(self.origin_mm, other.origin_mm)) > tol):
            problems.append(f"origin {_fmt(self.origin_mm)} mm vs {_fmt(other.origin_mm)} mm")
        if np.any(np.abs(np.subtract(self.direction, other.direction)) > direction_tol):
            problems.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return problems


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


@dataclass(frozen=True)
class Slab:
    """The axial slices kept for one patient: the GTV z-extent +- the margin (mm)."""

    slices: np.ndarray  # oriented slice numbers (inferior first), contiguous
    z_mm: np.ndarray  # physical z of each kept slice centre
    gtv_z_min_mm: float
    gtv_z_max_mm: float
    margin_inferior_mm: float  # margin obtained below the GTV (distance of slice centres)
    margin_superior_mm: float
    clipped: str  # "", "inferior", "superior" or "both": the volume ends inside the margin
    gtv_at_edge: bool  # the GTV reaches the first or last slice of the volume


def tumour_slab(frame: AxialFrame, gtv_array: np.ndarray, margin_mm: float) -> Slab:
    """Slices whose centre lies within `margin_mm` of the GTV's z-extent (voxel centres, mm).

    `gtv_array` is the mask as SimpleITK returns it (k, j, i), non-empty.
    The margin is clipped where the volume ends: `clipped` names the side where a slice that the
    margin would keep is missing from the volume.
    """
    voxels = np.nonzero(gtv_array)
    z_voxels = frame.voxel_z_mm(voxels)
    z_lo, z_hi = float(z_voxels.min()), float(z_voxels.max())
    z_centres = frame.slice_centre_z_mm()
    keep = np.nonzero((z_centres >= z_lo - margin_mm - Z_TOLERANCE_MM)
                      & (z_centres <= z_hi + margin_mm + Z_TOLERANCE_MM))[0]
    step = frame.slice_step_mm
    below = z_lo - float(z_centres[keep].min())
    above = float(z_centres[keep].max()) - z_hi
    sides = []
    if keep[0] == 0 and below + step <= margin_mm + Z_TOLERANCE_MM:
        sides.append("inferior")
    if keep[-1] == frame.n_slices - 1 and above + step <= margin_mm + Z_TOLERANCE_MM:
        sides.append("superior")
    on_axis = voxels[2 - frame.slice_axis]  # index along the volume's own slice axis
    return Slab(
        slices=keep,
        z_mm=z_centres[keep],
        gtv_z_min_mm=z_lo,
        gtv_z_max_mm=z_hi,
        margin_inferior_mm=below,
        margin_superior_mm=above,
        clipped="both" if len(sides) == 2 else (sides[0] if sides else ""),
        gtv_at_edge=bool(on_axis.min() == 0 or on_axis.max() == frame.n_slices - 1),
    )


def sample_slices(n: int, max_slices: int | None) -> np.ndarray:
    """Positions (0..n-1) of at most `max_slices` evenly spaced slices; all when None.

    Each chosen slice is the centre of one of `max_slices` equal runs of the slab, so the outermost
    margin slices are not over-represented.
    """
    if max_slices is None or n <= max_slices:
        return np.arange(n)
    return np.floor((np.arange(max_slices) + 0.5) * n / max_slices).astype(int)


@dataclass(frozen=True)
class Placement:
    """How an axial slice goes onto the square canvas (pixel sizes in mm)."""

    native_px: tuple[int, int]  # (rows, columns) on the CT grid
    native_mm: tuple[float, float]  # CT pixel size (rows, columns), mm
    canvas_px: int
    pixel_mm: float  # square canvas pixel, mm
    placed_px: tuple[int, int]  # (rows, columns) the slice occupies on the canvas
    input_px: int

    @property
    def input_pixel_mm(self) -> float:
        """Pixel size (mm) of the network input: the canvas pixel times canvas / input."""
        return self.pixel_mm * self.canvas_px / self.input_px

    @property
    def offset_px(self) -> tuple[int, int]:
        """Top-left corner of the slice on the canvas (it is centred)."""
        rows, cols = self.placed_px
        return ((self.canvas_px - rows) // 2, (self.canvas_px - cols) // 2)


def placement(native_px: tuple[int, int], native_mm: tuple[float, float], canvas_px: int,
              input_px: int) -> Placement:
    """Fit the slice's field of view to the canvas in square pixels (aspect ratio kept).

    The canvas pixel is max(field of view of rows, of columns) / canvas_px (mm): the longer side
    spans the canvas, the shorter one is centred and zero-padded. A 512 x 512 CT, the study's
    case, lands on the 512 canvas unchanged; a smaller matrix is scaled up and a larger one down,
    as a whole, never stretched (rows and columns get the same pixel size in mm).
    """
    fov = (native_px[0] * native_mm[0], native_px[1] * native_mm[1])
    pixel = max(fov) / canvas_px
    placed = tuple(min(canvas_px, max(1, int(round(f / pixel)))) for f in fov)
    return Placement(native_px, native_mm, canvas_px, pixel, placed, input_px)


def place_and_resize(slices: np.ndarray, where: Placement) -> np.ndarray:
    """(n, rows, cols) float32 slices -> (n, input_px, input_px) float32.

    Resampled to the canvas pixel size when needed, zero-padded around it, then scaled to the
    network input with antialiased bilinear interpolation (its weights are non-negative and sum
    to one, so values stay within the range of the input and of the zero padding).
    """
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    if tuple(x.shape[-2:]) != where.placed_px:
        x = F.interpolate(x, size=where.placed_px, mode="bilinear", antialias=True,
                          align_corners=False)
    canvas = torch.zeros((x.shape[0], 1, where.canvas_px, where.canvas_px), dtype=torch.float32)
    r0, c0 = where.offset_px
    canvas[:, :, r0:r0 + where.placed_px[0], c0:c0 + where.placed_px[1]] = x
    if where.input_px != where.canvas_px:
        canvas = F.interpolate(canvas, size=(where.input_px, where.input_px), mode="bilinear",
                               antialias=True, align_corners=False)
    return canvas[:, 0].numpy()
