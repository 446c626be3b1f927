"""Frames and grids (mm), the rigid CT->MR offset and the smooth non-rigid deformation.

The body frame of a synthetic patient *is* the CT's physical frame. The true CT->MR map is
``T(p) = A(p + d(p))``: first the smooth displacement ``d`` (defined in the CT frame), then the
rigid ``A(p) = R (p - c) + c + t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


def rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for angles in degrees."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Grid:
    """An image grid: size (nx, ny, nz) voxels, spacing mm, origin mm, direction (row-major 3x3)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Numpy array shape (nz, ny, nx)."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def matrix(self) -> np.ndarray:
        """Index (i, j, k) -> physical offset: direction @ diag(spacing)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3) * np.asarray(self.spacing)

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Physical x, y, z (mm, float32) of every voxel centre: arrays shaped like the image, or
        broadcastable (nz|1, ny|1, nx|1) arrays when the direction is the identity."""
        nx, ny, nz = self.size
        if np.allclose(self.direction, np.eye(3).ravel()):
            return tuple(np.asarray(self.origin[a] + self.spacing[a] * np.arange(n), np.float32)
                         .reshape([-1 if b == 2 - a else 1 for b in range(3)])
                         for a, n in enumerate((nx, ny, nz)))
        return self.points_at(np.arange(nx), np.arange(ny), np.arange(nz))

    def points_at(self, i: np.ndarray, j: np.ndarray, k: np.ndarray):
        """Physical x, y, z (float32) at the outer product of continuous indices i, j, k."""
        m = self.matrix
        ii = np.asarray(i, dtype=np.float64)[None, None, :]
        jj = np.asarray(j, dtype=np.float64)[None, :, None]
        kk = np.asarray(k, dtype=np.float64)[:, None, None]
        return tuple(
            (self.origin[a] + m[a, 0] * ii + m[a, 1] * jj + m[a, 2] * kk).astype(np.float32)
            for a in range(3)
        )

    def image(self, array: np.ndarray, is_vector: bool = False) -> sitk.Image:
        """A SimpleITK image of ``array`` (shape (nz, ny, nx)[, 3]) on this grid."""
        img = sitk.GetImageFromArray(array, isVector=is_vector)
        img.SetSpacing([float(s) for s in self.spacing])
        img.SetOrigin([float(o) for o in self.origin])
        img.SetDirection([float(d) for d in self.direction])
        return img


@dataclass(frozen=True)
class Rigid:
    """Rigid map p -> R (p - center) + center + translation (mm); angles in degrees."""

    angles_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    center_mm: tuple[float, float, float]

    def sitk(self) -> sitk.Euler3DTransform:
        """The same map as a SimpleITK Euler3DTransform."""
        tfm = sitk.Euler3DTransform()
        tfm.SetCenter([float(c) for c in self.center_mm])
        tfm.SetMatrix([float(v) for v in rotation(*self.angles_deg).ravel()])
        tfm.SetTranslation([float(t) for t in self.translation_mm])
        return tfm

    @property
    def matrix(self) -> np.ndarray:
        """The rotation as SimpleITK holds it."""
        return np.asarray(self.sitk().GetMatrix()).reshape(3, 3)

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """Map points (N, 3) forward."""
        c = np.asarray(self.center_mm)
        return (np.asarray(pts) - c) @ self.matrix.T + c + np.asarray(self.translation_mm)

    def apply_inverse_xyz(self, x, y, z):
        """Map arrays x, y, z backward (float32)."""
        r = self.matrix
        c = np.asarray(self.center_mm) + np.asarray(self.translation_mm)
        dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
        cc = self.center_mm
        return tuple(
            (np.float32(r[0, a]) * dx + np.float32(r[1, a]) * dy + np.float32(r[2, a]) * dz
             + np.float32(cc[a])) for a in range(3)
        )


@dataclass(frozen=True)
class Deformation:
    """Smooth displacement d(p) = sum_k a_k exp(-|p - c_k|^2 / (2 s_k^2)) in mm."""

    centers_mm: np.ndarray  # (K, 3)
    sigmas_mm: np.ndarray  # (K,)
    amplitudes_mm: np.ndarray  # (K, 3)

    def __call__(self, x, y, z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Displacement components (mm, float32) at points x, y, z."""
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        out = [np.zeros(shape, dtype=np.float32) for _ in range(3)]
        for c, s, a in zip(self.centers_mm, self.sigmas_mm, self.amplitudes_mm, strict=True):
            g = np.exp(-((x - np.float32(c[0])) ** 2 + (y - np.float32(c[1])) ** 2
                         + (z - np.float32(c[2])) ** 2) / np.float32(2 * s * s))
            for a_i, o in zip(a, out, strict=True):
                o += np.float32(a_i) * g
        return tuple(out)

    def on_axis_grid(self, grid: Grid) -> np.ndarray:
        """Field on an identity-direction grid, (nz, ny, nx, 3) float32, via separability."""
        nx, ny, nz = grid.size
        ax = [grid.origin[a] + grid.spacing[a] * np.arange(n) for a, n in enumerate((nx, ny, nz))]
        c, s = self.centers_mm, self.sigmas_mm[:, None]
        gx, gy, gz = (np.exp(-((ax[i][None, :] - c[:, i : i + 1]) ** 2) / (2 * s * s))
                      for i in range(3))
        plane = (gy[:, :, None] * gx[:, None, :]).reshape(len(s), -1)  # (K, ny*nx)
        out = np.empty((nz, ny * nx, 3), dtype=np.float32)
        for comp in range(3):
            out[:, :, comp] = (gz * self.amplitudes_mm[:, comp : comp + 1]).T @ plane
        return out.reshape(nz, ny, nx, 3)


@dataclass(frozen=True)
class CtToMr:
    """The true CT->MR map T(p) = A(p + d(p)) (mm)."""

    rigid: Rigid
    deformation: Deformation

    def forward(self, pts: np.ndarray) -> np.ndarray:
        """Map CT points (N, 3) to MR points."""
        p = np.asarray(pts, dtype=np.float64)
        d = np.stack(self.deformation(p[:, 0], p[:, 1], p[:, 2]), axis=1)
        return self.rigid.apply(p + d)

    def inverse_xyz(self, x, y, z, iterations: int = 6):
        """Map MR points (arrays) back to CT/body points: fixed point of p = A^-1(q) - d(p)."""
        yx, yy, yz = self.rigid.apply_inverse_xyz(x, y, z)
        px, py, pz = yx, yy, yz
        for _ in range(iterations):
            dx, dy, dz = self.deformation(px, py, pz)
            px, py, pz = yx - dx, yy - dy, yz - dz
        return px, py, pz

    def inverse_on_grid(self, grid: Grid, motion: Rigid | None = None, coarse_mm: float = 4.0):
        """Body points of every voxel of ``grid`` (an MR grid), after undoing ``motion`` (an
        inter-sequence rigid motion) if given: exact rigid part, displacement solved on a
        coarse sub-grid and interpolated (error << 0.05 mm for a smooth d)."""
        nx, ny, nz = grid.size
        mx = max(2, int(np.ceil((nx - 1) * grid.spacing[0] / coarse_mm)) + 1)
        my = max(2, int(np.ceil((ny - 1) * grid.spacing[1] / coarse_mm)) + 1)
        ci, cj = np.linspace(0, nx - 1, mx), np.linspace(0, ny - 1, my)
        qx, qy, qz = grid.points_at(ci, cj, np.arange(nz))
        if motion is not None:
            qx, qy, qz = motion.apply_inverse_xyz(qx, qy, qz)
        yx, yy, yz = self.rigid.apply_inverse_xyz(qx, qy, qz)
        px, py, pz = self.inverse_xyz(qx, qy, qz)
        fx, fy, fz = grid.points_at(np.arange(nx), np.arange(ny), np.arange(nz))
        if motion is not None:
            fx, fy, fz = motion.apply_inverse_xyz(fx, fy, fz)
        bx, by, bz = self.rigid.apply_inverse_xyz(fx, fy, fz)
        wx, wy = _linear_weights(ci, nx), _linear_weights(cj, ny)
        out = []
        for b, p, yv in ((bx, px, yx), (by, py, yy), (bz, pz, yz)):
            corr = np.einsum("yj,kji,xi->kyx", wy, (p - yv).astype(np.float64), wx, optimize=True)
            out.append(b + corr.astype(np.float32))
        return tuple(out)


def _linear_weights(nodes: np.ndarray, n: int) -> np.ndarray:
    """Matrix (n, len(nodes)) interpolating linearly from sorted ``nodes`` to 0..n-1."""
    x = np.arange(n, dtype=np.float64)
    hi = np.clip(np.searchsorted(nodes, x, side="right"), 1, len(nodes) - 1)
    lo = hi - 1
    f = (x - nodes[lo]) / (nodes[hi] - nodes[lo])
    w = np.zeros((n, len(nodes)))
    w[np.arange(n), lo] = 1 - f
    w[np.arange(n), hi] += f
    return w
