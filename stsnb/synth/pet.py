"""FDG PET (SUV) of a PET/CT, on its own ~4 mm grid in the CT's frame.

Uptake per tissue (background: muscle 0.6-0.9, fat 0.25-0.4, marrow 1.0-1.7, blood pool 1.4-2.0
SUV) and an avid viable tumour (median SUV 3.0 / 5.5 / 8.5 for grades 1 / 2 / 3) whose uptake is
highest at its surface (a rim decaying inward over 5-10 mm) and varies smoothly inside, around a
cold necrotic core (0.3-0.7 SUV). The activity is evaluated on a grid twice as fine as the PET's,
blurred by the system's point-spread function (Gaussian, 5.5-6.5 mm FWHM, counting the voxel's
own width) and averaged into the PET voxels; then correlated noise whose standard deviation grows
with the square root of the uptake (6-12 % at 1 SUV). Stored as float32 SUV.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from stsnb.synth import anatomy as A
from stsnb.synth.geometry import Grid
from stsnb.synth.spec import PatientPlan

#: Sub-voxels per PET voxel along each axis when evaluating the activity.
OVERSAMPLE = 2
#: FWHM (mm) of a Gaussian = this factor x its sigma.
FWHM_PER_SIGMA = float(2.0 * np.sqrt(2.0 * np.log(2.0)))
#: Spatial correlation of the reconstructed noise (sigma, PET voxels, along z, y, x).
NOISE_CORRELATION_VOX = (0.7, 0.7, 0.7)


def fine_grid(grid: Grid, factor: int = OVERSAMPLE) -> Grid:
    """The grid whose ``factor``^3 voxels tile each voxel of ``grid`` (identity direction)."""
    step = tuple(s / factor for s in grid.spacing)
    origin = tuple(o - (factor - 1) / 2 * s for o, s in zip(grid.origin, step, strict=True))
    return Grid(tuple(n * factor for n in grid.size), step, origin, grid.direction)


def psf_sigma_mm(fwhm_mm: float, spacing_mm: float) -> float:
    """Gaussian sigma (mm) to apply before averaging into voxels of ``spacing_mm`` so that the
    PSF including the voxel's box (variance spacing^2 / 12) has the variance of a Gaussian of
    FWHM ``fwhm_mm`` (its FWHM then agrees within ~1.5 %)."""
    var = (fwhm_mm / FWHM_PER_SIGMA) ** 2 - spacing_mm**2 / 12.0
    return float(np.sqrt(max(var, 0.0)))


def activity(plan: PatientPlan, grid: Grid) -> np.ndarray:
    """Noise-free uptake (float32 SUV) at the voxel centres of ``grid`` (no blur)."""
    pet = plan.pet
    maps = A.tissue_maps(plan.limb, plan.tumour, *grid.points())
    table = np.zeros(256, dtype=np.float32)
    for label, suv in pet.suv.items():
        table[label] = suv
    s = table[maps.labels]
    viable = maps.labels == A.TUMOUR
    rim = 1 + np.float32(pet.rim_gain) * np.exp(-maps.depth[viable] / np.float32(pet.rim_depth_mm))
    texture = np.clip(1 + np.float32(pet.heterogeneity) * maps.heterogeneity[viable], 0.4, 1.8)
    s[viable] *= rim * texture
    return s


def render_pet(plan: PatientPlan, rng: np.random.Generator) -> np.ndarray:
    """PET volume (float32 SUV, shape of the PET grid, >= 0)."""
    pet = plan.pet
    if pet is None:
        raise ValueError(f"patient {plan.patient_id} has no PET plan.")
    grid = pet.grid
    fine = fine_grid(grid)
    s = activity(plan, fine)
    sigma = [psf_sigma_mm(pet.fwhm_mm, sp) / fs
             for sp, fs in zip(grid.spacing[::-1], fine.spacing[::-1], strict=True)]
    s = ndimage.gaussian_filter(s, sigma=sigma, truncate=3.0)
    nz, ny, nx = grid.shape
    f = OVERSAMPLE
    s = s.reshape(nz, f, ny, f, nx, f).mean(axis=(1, 3, 5), dtype=np.float32)
    noise = rng.standard_normal(s.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=NOISE_CORRELATION_VOX, truncate=3.0)
    noise /= np.float32(_filtered_noise_sd(NOISE_CORRELATION_VOX))
    s = s + np.float32(pet.noise) * np.sqrt(np.maximum(s, 0)) * noise
    return np.round(np.clip(s, 0, None), 3).astype(np.float32)


def _filtered_noise_sd(sigma: tuple[float, float, float]) -> float:
    """Standard deviation of unit white noise after ``gaussian_filter(sigma, truncate=3)``."""
    size = 2 * int(np.ceil(3 * max(sigma))) + 5
    delta = np.zeros((size,) * 3)
    delta[(size // 2,) * 3] = 1.0
    kernel = ndimage.gaussian_filter(delta, sigma=sigma, truncate=3.0)
    return float(np.sqrt(np.sum(kernel**2)))
