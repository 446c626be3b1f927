"""RT dose (Gy) of a pre-operative course (50 Gy / 25 fx) on the dose grid, in the CT's frame.

CTV = GTV + 30 mm longitudinal / 15 mm radial (within the body), PTV = CTV + 7 mm. The dose is
the PTV coverage blurred by the penumbra (sigma ~4 mm: 80-20 % fall-off ~7 mm), with smooth hot
spots (max 105-107 %), an optional cold sector in the CTV margin (never within 8 mm of the GTV),
and a low-dose bath along the beam paths.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from stsnb.synth import anatomy as A
from stsnb.synth.spec import PatientPlan


def render_dose(plan: PatientPlan) -> np.ndarray:
    """Dose volume (float32 Gy, shape of the dose grid)."""
    d = plan.dose
    grid = d.grid
    sp = np.asarray(grid.spacing)[::-1]  # (z, y, x) mm
    x, y, z = grid.points()
    maps = A.tissue_maps(plan.limb, plan.tumour, x, y, z)
    body = maps.labels != A.AIR
    gtv = maps.gtv
    # anisotropic distance to the GTV: z distances count radial/longitudinal times
    ratio = d.ctv_radial_mm / d.ctv_longitudinal_mm
    d_gtv = ndimage.distance_transform_edt(~gtv, sampling=(sp[0] * ratio, sp[1], sp[2]))
    ctv = (d_gtv <= d.ctv_radial_mm) & body
    d_ctv = ndimage.distance_transform_edt(~ctv, sampling=sp)
    sig = d.penumbra_sigma_mm / sp
    core = ndimage.gaussian_filter((d_ctv <= d.ptv_mm + 4.0).astype(np.float32), sig)
    ptv = d_ctv <= d.ptv_mm
    # smooth hot spots inside the PTV: max exactly 1 + hotspot
    hot = np.clip(plan.dose.hotspot_noise(x, y, z), 0, None)
    hot /= max(float(hot[ptv].max()), 1e-6)
    mod = 1 + np.float32(d.hotspot) * hot
    # cold sector in the CTV margin, away from the GTV
    if d.cold_depth > 0:
        tx, ty = plan.tumour.center_mm[:2]
        phi = np.arctan2(y - np.float32(ty), x - np.float32(tx))
        ang = np.clip((np.cos(phi - np.deg2rad(d.cold_direction_deg)) - 0.5) / 0.5, 0, 1)
        deep = np.clip((d_gtv - 8.0) / 8.0, 0, 1).astype(np.float32)
        mod *= 1 - np.float32(d.cold_depth) * ang * deep
    # low-dose bath: the PTV's projection along each beam, per slice
    bath = np.zeros(grid.shape, dtype=np.float32)
    for ang_deg in d.beam_angles_deg:
        t = np.deg2rad(ang_deg)
        s = np.broadcast_to(-np.sin(t) * x + np.cos(t) * y, grid.shape)
        lo = np.where(ptv, s, np.inf).min(axis=(1, 2))[:, None, None]
        hi = np.where(ptv, s, -np.inf).max(axis=(1, 2))[:, None, None]
        bath += ((s >= lo) & (s <= hi)).astype(np.float32)
    bath = ndimage.gaussian_filter(bath / len(d.beam_angles_deg), sig) * np.float32(d.bath_fraction)
    dose = d.prescription_gy * (core * mod + (1 - core) * bath) * body
    return dose.astype(np.float32)
