"""Smooth random fields and sphere sampling, evaluable at any physical point (mm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlaneWaves:
    """Smooth noise: a normalised sum of random plane waves (unit variance, zero mean).

    ``wavevectors`` in rad/mm, shape (K, 3); ``phases`` in rad, shape (K,).
    """

    wavevectors: np.ndarray
    phases: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int,
             wavelength_mm: tuple[float, float]) -> PlaneWaves:
        """Draw ``n`` waves with wavelengths uniform in ``wavelength_mm`` and random directions."""
        dirs = unit_vectors(rng, n)
        lam = rng.uniform(*wavelength_mm, size=n)
        return cls(dirs * (2 * np.pi / lam)[:, None], rng.uniform(0, 2 * np.pi, size=n))

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Field value at points (x, y, z) in mm (broadcastable), float32, roughly in [-2, 2]."""
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), np.float32)
        for (kx, ky, kz), ph in zip(self.wavevectors.tolist(), self.phases.tolist(), strict=True):
            out += np.cos(kx * x + ky * y + kz * z + ph, dtype=np.float32)
        out *= np.float32(np.sqrt(2.0 / len(self.phases)))
        return out


@dataclass(frozen=True)
class SphereWaves:
    """Smooth function on the unit sphere: sum of a_k cos(w_k (u . d_k) + phi_k)."""

    amplitudes: np.ndarray
    frequencies: np.ndarray
    directions: np.ndarray
    phases: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, amplitude: float,
             frequency: tuple[float, float] = (1.0, 3.0)) -> SphereWaves:
        """``n`` low-order terms whose amplitudes sum (in quadrature) to ``amplitude``."""
        amps = rng.normal(size=n)
        amps *= amplitude / np.sqrt(np.sum(amps**2))
        return cls(amps, rng.uniform(*frequency, size=n), unit_vectors(rng, n),
                   rng.uniform(0, 2 * np.pi, size=n))

    def __call__(self, ux: np.ndarray, uy: np.ndarray, uz: np.ndarray) -> np.ndarray:
        """Value for unit vectors (ux, uy, uz)."""
        out = np.zeros(np.shape(ux), dtype=np.float32)
        for a, w, d, ph in zip(self.amplitudes.tolist(), self.frequencies.tolist(),
                               self.directions.tolist(), self.phases.tolist(), strict=True):
            out += a * np.cos(w * (d[0] * ux + d[1] * uy + d[2] * uz) + ph, dtype=np.float32)
        return out


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random unit vectors, shape (n, 3)."""
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` near-uniform unit vectors on the sphere, shape (n, 3) (deterministic)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azim = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar), np.cos(polar)],
                    axis=1)
