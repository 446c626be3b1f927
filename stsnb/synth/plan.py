"""Draw every synthetic patient's parameters (cheap: no volume is rendered here)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from stsnb.core.errors import ConfigError
from stsnb.core.modalities import MR_MODALITIES, STUDY_MODALITIES
from stsnb.synth import anatomy
from stsnb.synth.clinical import draw_clinical, draw_followup
from stsnb.synth.fields import PlaneWaves, SphereWaves, fibonacci_sphere
from stsnb.synth.geometry import CtToMr, Deformation, Grid, Rigid, rotation
from stsnb.synth.outcome import draw_outcome
from stsnb.synth.spec import Bone, DosePlan, Limb, MrSession, PatientPlan, PetPlan, Tumour

#: Incomplete patients in the study's screening: 11 of 72.
INCOMPLETE_PER_72 = 11
#: What an incomplete patient lacks, assigned in this order (cycling).
MISSING_KINDS = ("mr", "followup", "dose", "gtv")
#: Images in the CT's frame that an incomplete patient may lack (the "dose" kind), by preference.
CT_FRAME_KINDS = ("dose", "pet")
#: Median SUV of the viable tumour per grade (FDG: higher grade, higher uptake).
PET_TUMOUR_SUV = {1: 3.0, 2: 5.5, 3: 8.5}
#: CT slice thickness (mm) and the study's margin around the tumour's z-extent (mm).
CT_SLICE_MM = 3.0
Z_MARGIN_MM = 10.0
#: Frames the MR session can be written in: its own (the MR scanner's, displaced, rotated and
#: deformed from the CT's) or the CT's (co-registered, as in many research exports).
MR_FRAMES = ("own", "ct")

# site -> anatomy ranges (mm). bones: (x offset, y offset, radius, cortex) ranges;
# artery: (angle deg about the first bone, distance mm); septa: angles (deg) about the first bone.
_SITES = {
    "thigh": dict(semi=((72, 88), (62, 78)), fat=(6, 18), skin=(1.6, 2.4),
                  bones=[((2, 8), (-8, 2), (12.5, 15.0), (5.0, 7.0))],
                  artery=((200, 230), (26, 34), (3.5, 4.5)), septa=(30, 150, 265),
                  ld_median_cm=10.65, trans_cap_mm=44.0),
    "upper_arm": dict(semi=((42, 50), (38, 46)), fat=(4, 11), skin=(1.4, 2.0),
                      bones=[((-2, 3), (-3, 3), (10.0, 12.0), (3.5, 5.0))],
                      artery=((165, 195), (16, 22), (2.5, 3.5)), septa=(90, 270),
                      ld_median_cm=8.6, trans_cap_mm=27.0),
    "lower_leg": dict(semi=((48, 56), (44, 52)), fat=(4, 12), skin=(1.5, 2.2),
                      bones=[((-5, 0), (-22, -16), (11.0, 13.0), (4.5, 6.0)),
                             ((18, 24), (-2, 6), (6.0, 7.5), (2.0, 3.0))],
                      artery=((85, 110), (26, 32), (2.5, 3.5)), septa=(20, 150, 270),
                      ld_median_cm=9.0, trans_cap_mm=28.0),
}


def patient_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of patient ``index`` (0-based); ``stream`` separates independent uses."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def n_incomplete(n_patients: int) -> int:
    """How many screened patients are incomplete: round(N * 11 / 72)."""
    return int(round(n_patients * INCOMPLETE_PER_72 / 72))


def missing_image(kind: str, modalities: tuple[str, ...], rng: np.random.Generator) -> str:
    """What an incomplete patient lacks for a MISSING_KINDS entry, among the generated images.

    'mr': one of the generated MR sequences (any generated image but the CT when there is none);
    'dose': the first generated of CT_FRAME_KINDS (the GTV when neither is generated).
    """
    if kind == "mr":
        pool = [m for m in MR_MODALITIES if m in modalities] or [
            m for m in modalities if m != "ct"]
        return str(rng.choice(pool))
    if kind == "dose":
        return next((m for m in CT_FRAME_KINDS if m in modalities), "gtv")
    return kind


def assign_missing(n_patients: int, seed: int,
                   modalities: tuple[str, ...] = STUDY_MODALITIES) -> list[str]:
    """Per patient: '' (complete) or what it lacks (a generated image stem, 'gtv' or
    'followup'); for the study's five images 't1w' | 't2w' | 'ce_t1w' | 'dose' | 'gtv' |
    'followup'."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 72_011]))
    k = n_incomplete(n_patients)
    missing = [""] * n_patients
    chosen = rng.choice(n_patients, size=k, replace=False) if k else []
    for j, idx in enumerate(chosen):
        missing[int(idx)] = missing_image(MISSING_KINDS[j % len(MISSING_KINDS)], modalities, rng)
    return missing


def _u(rng: np.random.Generator, lo_hi) -> float:
    return float(rng.uniform(*lo_hi))


def _signed(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi))


def draw_limb(rng: np.random.Generator, site: str, sex: str, z_ref: float) -> Limb:
    """The extremity cross-section of one patient (mm)."""
    s = _SITES[site]
    bones = tuple(Bone((_u(rng, b[0]), _u(rng, b[1])), _u(rng, b[2]), _u(rng, b[3]))
                  for b in s["bones"])
    ang, dist, rad = (_u(rng, r) for r in s["artery"])
    b0 = bones[0].offset_mm
    art = (b0[0] + dist * np.cos(np.deg2rad(ang)), b0[1] + dist * np.sin(np.deg2rad(ang)))
    side = np.deg2rad(ang + rng.choice([-1, 1]) * rng.uniform(25, 45))
    vr = rad * rng.uniform(1.2, 1.5)
    gap = rad + vr + rng.uniform(0.5, 2.0)
    vein = (art[0] + gap * np.cos(side), art[1] + gap * np.sin(side))
    fat = _u(rng, s["fat"]) * (1.3 if sex == "F" else 1.0)
    return Limb(
        site=site, z_ref_mm=z_ref,
        center_mm=(_u(rng, (-90, 90)), _u(rng, (-70, 50))),
        drift=(_u(rng, (-0.08, 0.08)), _u(rng, (-0.08, 0.08))),
        wobble_mm=_u(rng, (1, 4)), wobble_period_mm=_u(rng, (180, 400)),
        wobble_phase=_u(rng, (0, 2 * np.pi)),
        semi_axes_mm=(_u(rng, s["semi"][0]), _u(rng, s["semi"][1])),
        orientation_deg=_u(rng, (-25, 25)), taper_pct_per_100mm=_u(rng, (-8, 8)),
        harmonics=tuple((_u(rng, (0.01, 0.04)), _u(rng, (0, 2 * np.pi))) for _ in range(3)),
        skin_mm=_u(rng, s["skin"]), fat_mm=fat, fat_angle_deg=_u(rng, (0, 360)),
        bones=bones, artery_offset_mm=(float(art[0]), float(art[1])), artery_radius_mm=rad,
        vein_offset_mm=(float(vein[0]), float(vein[1])), vein_radius_mm=float(vr),
        vessel_twist_deg_per_100mm=_u(rng, (-12, 12)),
        septa_deg=tuple(a + _u(rng, (-12, 12)) for a in s["septa"]),
        septum_mm=_u(rng, (1.6, 3.0)),
    )


def _surface(semi, axes, shape: SphereWaves, center, n: int = 1000) -> np.ndarray:
    """Tumour surface sample points (n, 3) in the body frame."""
    u = fibonacci_sphere(n)
    f = shape(u[:, 0], u[:, 1], u[:, 2]).astype(np.float64)
    local = u * np.asarray(semi) * (1 + f)[:, None]
    return np.asarray(center) + local @ np.asarray(axes).T


def _longest_diameter(pts: np.ndarray) -> float:
    d2 = np.sum((pts[:, None, :] - pts[None, :, :]) ** 2, axis=-1)
    return float(np.sqrt(d2.max()))


def draw_tumour(rng: np.random.Generator, limb: Limb, grade: int,
                z_t: float) -> tuple[Tumour, float]:
    """Tumour shape, position, necrosis, haemorrhage, oedema and texture fields (mm), and the
    enhancement heterogeneity (0-1)."""
    s = _SITES[limb.site]
    ld_target = 10 * float(np.clip(rng.lognormal(np.log(s["ld_median_cm"]), 0.3), 3.2, 14.6))
    shape = SphereWaves.draw(rng, 6, amplitude=_u(rng, (0.06, 0.15)))
    axes = rotation(0, 0, _u(rng, (0, 360))) @ rotation(_u(rng, (0, 18)), 0, 0) @ rotation(
        0, 0, _u(rng, (0, 360)))
    unit = np.array([_u(rng, (0.45, 0.8)), _u(rng, (0.45, 0.8)), 1.0])
    semi = unit
    for _ in range(3):
        ld = _longest_diameter(_surface(semi, axes, shape, np.zeros(3), 400))
        semi = semi * ld_target / ld
        semi[:2] = np.minimum(semi[:2], s["trans_cap_mm"])
    # position: in a compartment (between two septa), clear of the bones (best of a few tries)
    septa = sorted(a % 360 for a in limb.septa_deg)
    bone = limb.bones[0]
    cx, cy = (float(v) for v in anatomy.limb_center(limb, np.float32(z_t)))
    best, best_clear = None, -np.inf
    for _ in range(12):
        k = int(rng.integers(len(septa)))
        a0, a1 = septa[k], septa[(k + 1) % len(septa)] + (360 if k == len(septa) - 1 else 0)
        psi = np.deg2rad((a0 + a1) / 2 + _u(rng, (-12, 12)))
        dist = bone.radius_mm + 3 + max(semi[:2]) * _u(rng, (0.6, 0.85))
        cand = np.array([cx + bone.offset_mm[0] + dist * np.cos(psi),
                         cy + bone.offset_mm[1] + dist * np.sin(psi), z_t])
        clear = min(np.hypot(cand[0] - cx - b.offset_mm[0], cand[1] - cy - b.offset_mm[1])
                    - b.radius_mm for b in limb.bones[1:]) - 0.75 * max(semi[:2]) if len(
                        limb.bones) > 1 else 0.0
        if clear > best_clear:
            best, best_clear = cand, clear
        if clear >= 0:
            break
    center = best
    # necrosis (by grade), haemorrhage, oedema, enhancement heterogeneity
    nec_target = {1: (0.0, 0.12), 2: (0.0, 0.38), 3: (0.12, 0.6)}[grade]
    nec = _u(rng, nec_target)
    hae = []
    if rng.random() < 0.12 + 0.08 * grade:
        for _ in range(int(rng.integers(1, 3))):
            local = semi * rng.uniform(-0.45, 0.45, size=3)
            hae.append((tuple(float(v) for v in center + axes @ local),
                        float(min(semi) * rng.uniform(0.15, 0.3))))
    oedema = _u(rng, (6, 28)) * (1.0 if limb.site == "thigh" else 0.7) if (
        rng.random() < 0.2 + 0.12 * grade) else 0.0
    het_range = {1: (0.1, 0.4), 2: (0.2, 0.6), 3: (0.35, 0.9)}[grade]
    pts = _surface(semi, axes, shape, center)
    margin = max(oedema * 1.15, 4 + limb.skin_mm + limb.fat_mm * 1.35) + 3
    return Tumour(
        center_mm=center, axes=axes, semi_axes_mm=semi, shape=shape,
        necrosis_offset_mm=semi * rng.normal(0, 0.08, size=3),
        necrosis_scale=float(nec ** (1 / 3)) if nec > 0.02 else 0.0,
        necrosis_shape=SphereWaves.draw(rng, 6, amplitude=_u(rng, (0.1, 0.25))),
        rim_mm=_u(rng, (4, 9)), haemorrhages=tuple(hae), oedema_mm=oedema,
        oedema_noise=PlaneWaves.draw(rng, 8, (12, 30)),
        heterogeneity_noise=PlaneWaves.draw(rng, 10, (10, 30)),
        texture_noise=PlaneWaves.draw(rng, 10, (6, 16)),
        bbox_min_mm=pts.min(axis=0) - margin, bbox_max_mm=pts.max(axis=0) + margin,
    ), _u(rng, het_range)


def measure_tumour(limb: Limb, tumour: Tumour, rng: np.random.Generator,
                   n: int = 20000) -> dict[str, float]:
    """Monte-Carlo volume (cc), necrosis fraction and centroid (mm) of the rendered GTV."""
    pts = _surface(tumour.semi_axes_mm, tumour.axes, tumour.shape, tumour.center_mm)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    p = rng.uniform(lo, hi, size=(n, 3)).astype(np.float32)
    maps = anatomy.tissue_maps(limb, tumour, p[:, 0], p[:, 1], p[:, 2])
    gtv = maps.gtv
    vol = gtv.mean() * np.prod(hi - lo) / 1000.0
    nec = float((maps.labels == anatomy.NECROSIS).sum() / max(gtv.sum(), 1))
    return {"volume_cc": float(vol), "necrosis_fraction": nec,
            "centroid": p[gtv].mean(axis=0).astype(float), "z_min": float(lo[2]),
            "z_max": float(hi[2]), "ld_mm": _longest_diameter(pts[::2])}


def _body_bbox(limb: Limb, tumour: Tumour, z_lo: float, z_hi: float) -> np.ndarray:
    """Conservative in-plane bounding box (x0, y0, x1, y1) of the body over [z_lo, z_hi] (mm)."""
    zs = np.linspace(z_lo, z_hi, 9).astype(np.float32)
    cx, cy = anatomy.limb_center(limb, zs)
    r = max(limb.semi_axes_mm) * (1 + sum(a for a, _ in limb.harmonics)) * (
        1 + abs(limb.taper_pct_per_100mm) / 1e4 * max(abs(z_lo - limb.z_ref_mm),
                                                  abs(z_hi - limb.z_ref_mm)))
    pts = _surface(tumour.semi_axes_mm, tumour.axes, tumour.shape, tumour.center_mm, 400)
    bulge = 4 + limb.skin_mm + limb.fat_mm * 0.85
    return np.array([min(cx.min() - r, pts[:, 0].min() - bulge),
                     min(cy.min() - r, pts[:, 1].min() - bulge),
                     max(cx.max() + r, pts[:, 0].max() + bulge),
                     max(cy.max() + r, pts[:, 1].max() + bulge)])


def draw_ct_grid(rng: np.random.Generator, bbox: np.ndarray, z_min: float, z_max: float) -> Grid:
    """CT grid: ~1 x 1 x 3 mm, 200-260 mm in-plane FOV cropped to the limb, identity direction."""
    sp = float(rng.choice([0.9375, 0.9766, 1.0, 1.0742]))
    need = max(bbox[2] - bbox[0], bbox[3] - bbox[1]) + 24
    n = int(np.ceil(np.clip(need, 200, max(260, need)) / sp))
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    z0 = z_min - _u(rng, (28, 42))
    nz = int(np.ceil((z_max + _u(rng, (28, 42)) - z0) / CT_SLICE_MM)) + 1
    return Grid((n, n, nz), (sp, sp, CT_SLICE_MM),
                (cx - (n - 1) / 2 * sp + _u(rng, (-4, 4)), cy - (n - 1) / 2 * sp + _u(rng, (-4, 4)),
                 z0))


def draw_dose(rng: np.random.Generator, bbox: np.ndarray, tumour: Tumour, limb: Limb,
              z_min: float, z_max: float) -> DosePlan:
    """The pre-operative plan (50 Gy / 25 fx) and its dose grid (own spacing and origin)."""
    sp = float(rng.choice([2.5, 3.0]))
    spz = float(rng.choice([2.5, 3.0]))
    x0, y0 = bbox[0] - _u(rng, (8, 14)), bbox[1] - _u(rng, (8, 14))
    nx = int(np.ceil((bbox[2] + 10 - x0) / sp)) + 1
    ny = int(np.ceil((bbox[3] + 10 - y0) / sp)) + 1
    z0 = z_min - _u(rng, (58, 66))
    nz = int(np.ceil((z_max + _u(rng, (58, 66)) - z0) / spz)) + 1
    n_beams = int(rng.choice([2, 3, 5, 7], p=[0.3, 0.2, 0.3, 0.2]))
    start = _u(rng, (0, 180))
    beams = tuple(start + i * (180.0 if n_beams == 2 else 360.0 / n_beams) + _u(rng, (-8, 8))
                  for i in range(n_beams))
    cold = _u(rng, (0.05, 0.2)) if rng.random() < 0.35 else 0.0
    outward = np.rad2deg(np.arctan2(tumour.center_mm[1] - limb.center_mm[1],
                                    tumour.center_mm[0] - limb.center_mm[0]))
    return DosePlan(
        grid=Grid((nx, ny, nz), (sp, sp, spz), (x0, y0, z0)), prescription_gy=50.0, fractions=25,
        ctv_radial_mm=15.0, ctv_longitudinal_mm=30.0, ptv_mm=7.0,
        penumbra_sigma_mm=_u(rng, (3.6, 4.6)), beam_angles_deg=beams,
        bath_fraction={2: 0.55, 3: 0.4, 5: 0.3, 7: 0.25}[n_beams] * _u(rng, (0.8, 1.1)),
        hotspot=_u(rng, (0.05, 0.07)), hotspot_noise=PlaneWaves.draw(rng, 6, (40, 90)),
        cold_direction_deg=float(outward + _u(rng, (-40, 40))), cold_depth=cold,
    )


def check_mr_frame(mr_frame: str) -> str:
    """``mr_frame`` when it is one of MR_FRAMES, else ConfigError."""
    if mr_frame not in MR_FRAMES:
        raise ConfigError(f"mr_frame must be one of {', '.join(map(repr, MR_FRAMES))}, "
                          f"got {mr_frame!r}.")
    return mr_frame


def identity_ct_to_mr(deformation: Deformation) -> CtToMr:
    """The identity CT->MR map (no rigid part, ``deformation``'s bumps with zero amplitude)."""
    zero = Rigid((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    return CtToMr(zero, Deformation(deformation.centers_mm, deformation.sigmas_mm,
                                    np.zeros_like(deformation.amplitudes_mm)))


def draw_mr(rng: np.random.Generator, tumour: Tumour, limb: Limb, ct: Grid,
            frame: str = "own") -> MrSession:
    """The MR session: own grid (~0.8 mm x 4-5 mm voxels, smaller FOV), the true CT->MR map
    (rigid offset + smooth deformation) and optional inter-sequence motion.

    ``frame`` "own": the grid is oblique in the MR scanner's frame. "ct": the session is written
    in the CT's frame (identity direction, CT->MR map and motion the identity); the same random
    numbers are drawn, so the patient's other images and values do not change.
    """
    c = tumour.center_mm
    rigid = Rigid((_signed(rng, 1, 5), _signed(rng, 1, 5), _signed(rng, 2, 9)),
                  tuple(_signed(rng, 3, 14) for _ in range(3)), tuple(float(v) for v in c))
    k = 4
    centers = c + rng.normal(0, 1, size=(k, 3)) * np.array([30.0, 30.0, 45.0])
    amps = rng.normal(size=(k, 3))
    amps *= (rng.uniform(1.5, 3.5, size=k) / np.linalg.norm(amps, axis=1))[:, None]
    deform = Deformation(centers, rng.uniform(30, 60, size=k), amps)
    t = CtToMr(rigid, deform)
    direction = rotation(_signed(rng, 2, 8), _signed(rng, 1, 5), _signed(rng, 1, 6))
    in_ct = check_mr_frame(frame) == "ct"
    if in_ct:
        t, direction = identity_ct_to_mr(deform), np.eye(3)
    sp = round(_u(rng, (0.7, 0.9)), 4)
    spz = float(rng.choice([4.0, 4.4, 4.5, 5.0, 5.5]))
    fov = float(np.clip(ct.size[0] * ct.spacing[0] * _u(rng, (0.7, 0.85)), 150, 220))
    # tumour (+ oedema) and limb centre in the MR grid's axes
    pts = _surface(tumour.semi_axes_mm, tumour.axes, tumour.shape, c, 1000)
    w = t.forward(pts) @ direction  # coordinates along the MR grid axes
    lx, ly = anatomy.limb_center(limb, np.float32(c[2]))
    wl = t.forward(np.array([[float(lx), float(ly), c[2]]]))[0] @ direction
    wc = t.forward(c[None])[0] @ direction
    pad = tumour.oedema_mm + 12
    lo, hi = w.min(axis=0) - pad, w.max(axis=0) + pad
    fov = max(fov, float(np.max(hi[:2] - lo[:2])) + 4)
    n = int(np.ceil(fov / sp))
    half = (n - 1) / 2 * sp
    start = []
    for a in range(2):
        mid = 0.5 * (wl[a] + wc[a]) + _u(rng, (-8, 8))
        mid = float(np.clip(mid, hi[a] - half, lo[a] + half))
        start.append(mid - half)
    z_lo = w[:, 2].min() - Z_MARGIN_MM - _u(rng, (6, 18))
    z_hi = w[:, 2].max() + Z_MARGIN_MM + _u(rng, (6, 18))
    nz = int(np.ceil((z_hi - z_lo) / spz)) + 1
    origin = direction @ np.array([start[0], start[1], z_lo])
    grid = Grid((n, n, nz), (sp, sp, spz), tuple(float(v) for v in origin),
                tuple(float(v) for v in direction.ravel()))
    motion = {}
    moving = rng.random() < 0.3
    for seq in MR_MODALITIES[1:]:
        if moving and rng.random() < 0.7:
            motion[seq] = Rigid(tuple(float(v) for v in rng.normal(0, 0.7, 3)),
                                tuple(float(v) for v in rng.normal(0, 0.8, 3)),
                                tuple(float(v) for v in t.forward(c[None])[0]))
        if in_ct or seq not in motion:
            motion[seq] = Rigid((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    return MrSession(
        grid=grid, ct_to_mr=t, motion=motion,
        bias_coeffs=rng.normal(0, 0.09, size=(3, 9)) + rng.normal(0, 0.09, size=(1, 9)),
        noise_sigma=_u(rng, (0.02, 0.035)),
        contrast_jitter={s: _u(rng, (0.92, 1.08)) for s in MR_MODALITIES},
        scales={s: _u(rng, (700, 1400)) for s in MR_MODALITIES},
        frame=frame,
    )


def landmarks(limb: Limb, tumour: Tumour, centroid, z_min: float,
              z_max: float) -> dict[str, tuple[float, float, float]]:
    """Named physical points (CT frame, mm): bone and vessel centres at several z, tumour points."""
    out: dict[str, tuple[float, float, float]] = {}
    zs = {"inf": z_min + 6, "mid": 0.5 * (z_min + z_max), "sup": z_max - 6}
    for tag, z in zs.items():
        zf = np.float32(z)
        cx, cy = anatomy.limb_center(limb, zf)
        for bi, bone in enumerate(limb.bones[: 1 if tag != "mid" else 2]):
            out[f"bone{bi + 1}_centre_{tag}"] = (float(cx) + bone.offset_mm[0],
                                                 float(cy) + bone.offset_mm[1], float(z))
        (ax, ay), (vx, vy) = anatomy.vessel_centres(limb, zf)
        out[f"artery_{tag}"] = (float(ax), float(ay), float(z))
        if tag == "mid":
            out["vein_mid"] = (float(vx), float(vy), float(z))
    out["tumour_centroid"] = tuple(float(v) for v in centroid)
    pts = _surface(tumour.semi_axes_mm, tumour.axes, tumour.shape, tumour.center_mm, 1000)
    for name, i in (("tumour_inferior_pole", pts[:, 2].argmin()),
                    ("tumour_superior_pole", pts[:, 2].argmax())):
        inward = 0.85 * pts[i] + 0.15 * tumour.center_mm
        out[name] = tuple(float(v) for v in inward)
    return out


def draw_pet(rng: np.random.Generator, ct: Grid, grade: int) -> PetPlan:
    """FDG PET of the PET/CT: ~4 mm voxels in the CT's frame covering the CT's field of view
    (+4-12 mm), 5.5-6.5 mm FWHM, uptake per tissue in SUV (viable tumour by grade)."""
    sp = float(rng.choice([3.6458, 4.0, 4.0728]))
    spz = float(rng.choice([3.27, 4.0]))
    lo = np.asarray(ct.origin, dtype=float)
    hi = lo + (np.asarray(ct.size) - 1) * np.asarray(ct.spacing)
    origin, size = [], []
    for a, step in enumerate((sp, sp, spz)):
        start = lo[a] - _u(rng, (4, 12))
        origin.append(float(start))
        size.append(int(np.ceil((hi[a] + _u(rng, (4, 12)) - start) / step)) + 1)
    muscle = _u(rng, (0.6, 0.9))
    fat = _u(rng, (0.25, 0.4))
    blood = _u(rng, (1.4, 2.0))
    tumour = float(np.clip(rng.lognormal(np.log(PET_TUMOUR_SUV[grade]), 0.3), 1.8, 20.0))
    suv = {
        anatomy.AIR: 0.0, anatomy.SKIN: 0.9 * muscle, anatomy.FAT: fat, anatomy.MUSCLE: muscle,
        anatomy.SEPTUM: fat, anatomy.FASCIA: muscle, anatomy.CORTEX: 0.35,
        anatomy.MARROW: _u(rng, (1.0, 1.7)), anatomy.ARTERY: blood, anatomy.VEIN: blood,
        anatomy.TUMOUR: tumour, anatomy.NECROSIS: _u(rng, (0.3, 0.7)),
        anatomy.HAEMORRHAGE: _u(rng, (0.8, 1.2)), anatomy.OEDEMA: muscle * _u(rng, (1.2, 1.6)),
    }
    return PetPlan(grid=Grid(tuple(size), (sp, sp, spz), tuple(origin)),
                   fwhm_mm=_u(rng, (5.5, 6.5)), suv=suv, rim_gain=_u(rng, (0.2, 0.5)),
                   rim_depth_mm=_u(rng, (5, 10)), heterogeneity=_u(rng, (0.1, 0.3)),
                   noise=_u(rng, (0.06, 0.12)))


def plan_patient(seed: int, index: int, missing: str = "", mr_frame: str = "own") -> PatientPlan:
    """All parameters of patient ``index`` (0-based); independent of the other patients.
    ``mr_frame`` (MR_FRAMES) changes only the MR session's frame and grid."""
    rng = patient_rng(seed, index)
    clin = draw_clinical(rng)
    z_t = _u(rng, (-350, 50))
    limb = draw_limb(rng, clin["site"], clin["sex"], z_t + _u(rng, (-30, 30)))
    tumour, het = draw_tumour(rng, limb, clin["grade"], z_t)
    m = measure_tumour(limb, tumour, patient_rng(seed, index, 1))
    for _ in range(4):  # keep the necrotic fraction within 0-60 %
        if m["necrosis_fraction"] <= 0.58:
            break
        scale = tumour.necrosis_scale * (0.55 / m["necrosis_fraction"]) ** (1 / 3)
        tumour = dataclasses.replace(tumour, necrosis_scale=scale)
        m = measure_tumour(limb, tumour, patient_rng(seed, index, 1))
    z_min, z_max = m["z_min"], m["z_max"]
    ct_bbox = _body_bbox(limb, tumour, z_min - 50, z_max + 50)
    ct = draw_ct_grid(rng, ct_bbox, z_min, z_max)
    dose = draw_dose(rng, _body_bbox(limb, tumour, z_min - 66, z_max + 66), tumour, limb,
                     z_min, z_max)
    mr = draw_mr(rng, tumour, limb, ct, mr_frame)
    ct_noise = _u(rng, (10, 16))
    jitter = {k: _u(rng, (-6, 6)) for k in ("fat", "muscle", "tumour", "necrosis")}
    jitter["cortex"] = _u(rng, (-200, 300))
    factors = {
        "tumour_size_cm": round(m["ld_mm"] / 10, 3),
        "necrosis_fraction": round(m["necrosis_fraction"], 4),
        "enhancement_heterogeneity": round(het, 4),
        "oedema_mm": round(tumour.oedema_mm, 2),
        "dose_coverage_deficit": round(dose.cold_depth, 4),
        "grade": float(clin["grade"]),
    }
    risk = draw_outcome(factors, rng)
    clin.update(draw_followup(risk["metastasis"], rng))
    clin["distant_metastasis"] = risk["metastasis"]
    if missing == "followup":
        clin.update(followup_months=None, distant_metastasis=None, time_to_metastasis_months=None)
    zk = ct.origin[2] + CT_SLICE_MM * np.arange(ct.size[2])
    n_slices = int(np.sum((zk >= z_min - Z_MARGIN_MM) & (zk <= z_max + Z_MARGIN_MM)))
    extra = {"z_min": z_min, "z_max": z_max, "volume_cc": m["volume_cc"], "n_slices": n_slices,
             "haemorrhage": bool(tumour.haemorrhages)}
    return PatientPlan(
        index=index, patient_id=f"SYN{index + 1:03d}", seed=seed, limb=limb, tumour=tumour,
        ct_grid=ct, ct_noise_hu=ct_noise, ct_jitter_hu=jitter, dose=dose, mr=mr,
        factors=factors, risk={**risk, **extra}, clinical=clin, missing=missing,
        landmarks=landmarks(limb, tumour, m["centroid"], z_min, z_max),
        pet=draw_pet(patient_rng(seed, index, 4), ct, clin["grade"]),
    )


def plan_patients(n_patients: int = 72, seed: int = 0,
                  modalities: tuple[str, ...] = STUDY_MODALITIES,
                  mr_frame: str = "own") -> list[PatientPlan]:
    """Every screened patient's plan (the cohort make_synthetic_cohort renders); ``modalities``
    (the generated images) decides only what incomplete patients lack, ``mr_frame``
    (MR_FRAMES) only the MR session's frame and grid."""
    if int(n_patients) != n_patients or n_patients < 1:
        raise ConfigError(f"n_patients must be a whole number >= 1, got {n_patients!r}.")
    check_mr_frame(mr_frame)
    missing = assign_missing(n_patients, seed, tuple(modalities))
    return [plan_patient(seed, i, missing[i], mr_frame) for i in range(n_patients)]


def plan_table(plans: list[PatientPlan]) -> pd.DataFrame:
    """One row per patient: identity, completeness, clinical values, latent factors, risk, size."""
    rows = []
    for p in plans:
        c, r = p.clinical, p.risk
        rows.append({
            "patient_id": p.patient_id, "index": p.index, "complete": p.missing == "",
            "missing": p.missing, "site": c["site"], "sex": c["sex"], "age": c["age"],
            "histology": c["histology"], "grade": c["grade"],
            "followup_months": c["followup_months"],
            "distant_metastasis": c["distant_metastasis"],
            "time_to_metastasis_months": c["time_to_metastasis_months"],
            "metastasis_latent": r["metastasis"],
            "tumour_z_min_mm": r["z_min"], "tumour_z_max_mm": r["z_max"],
            "tumour_z_extent_mm": r["z_max"] - r["z_min"],
            "tumour_volume_cc": r["volume_cc"], **p.factors, "haemorrhage": r["haemorrhage"],
            "risk_score": r["risk_score"], "risk": r["risk"], "n_slices": r["n_slices"],
        })
    df = pd.DataFrame(rows)
    for col in ("distant_metastasis",):
        df[col] = df[col].astype("Int64")
    df["grade"] = df["grade"].astype(int)
    return df


def plan_cohort(n_patients: int = 72, seed: int = 0,
                modalities: tuple[str, ...] = STUDY_MODALITIES) -> pd.DataFrame:
    """Draw every patient's parameters without rendering volumes (cheap).

    One row per screened patient: ``patient_id``, ``complete``, ``missing`` ('' or what is
    missing), tumour z-extent (mm), ``tumour_size_cm`` (longest diameter), the latent risk
    factors, ``risk_score``/``risk`` (P(DM)), ``distant_metastasis`` (as in clinical.csv, <NA>
    when follow-up is missing), ``metastasis_latent`` and ``n_slices`` (CT slices of 3 mm within
    the tumour z-extent +-10 mm). make_synthetic_cohort renders exactly this plan (with the same
    ``modalities``, which decide only what incomplete patients lack).
    """
    return plan_table(plan_patients(n_patients, seed, modalities))
