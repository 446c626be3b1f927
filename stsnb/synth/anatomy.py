"""Tissue label maps of the synthetic extremity, evaluated analytically at body points (mm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stsnb.synth.spec import Limb, Tumour

AIR, SKIN, FAT, MUSCLE, SEPTUM, FASCIA = 0, 1, 2, 3, 4, 5
CORTEX, MARROW, ARTERY, VEIN = 6, 7, 8, 9
TUMOUR, NECROSIS, HAEMORRHAGE, OEDEMA = 10, 11, 12, 13

#: Label -> name (the legend written to truth/README.txt).
LEGEND: dict[int, str] = {
    AIR: "air (outside the body)",
    SKIN: "skin",
    FAT: "subcutaneous fat",
    MUSCLE: "muscle",
    SEPTUM: "intermuscular fat septum (between compartments)",
    FASCIA: "deep fascia",
    CORTEX: "cortical bone",
    MARROW: "bone marrow (fatty)",
    ARTERY: "artery",
    VEIN: "vein",
    TUMOUR: "tumour, viable (enhancing)",
    NECROSIS: "tumour, necrotic core",
    HAEMORRHAGE: "tumour, haemorrhage",
    OEDEMA: "peritumoral oedema",
}
#: Labels that make up the GTV.
GTV_LABELS: tuple[int, ...] = (TUMOUR, NECROSIS, HAEMORRHAGE)


@dataclass
class TissueMaps:
    """Labels plus the continuous fields the intensity models need (float32, same shape)."""

    labels: np.ndarray
    heterogeneity: np.ndarray  # smooth noise inside the tumour (CE-T1w enhancement)
    texture: np.ndarray  # smooth noise inside the tumour (T2w, CT)
    oedema: np.ndarray  # 0..1 strength of oedema
    depth: np.ndarray  # mm inside the tumour surface (radial), 0 outside

    @property
    def gtv(self) -> np.ndarray:
        """Tumour mask (uint8)."""
        return (self.labels >= TUMOUR) & (self.labels <= HAEMORRHAGE)


def limb_center(limb: Limb, z):
    """Limb centre (x, y) in mm at height z."""
    dz = z - np.float32(limb.z_ref_mm)
    w = np.float32(limb.wobble_mm) * np.sin(
        np.float32(2 * np.pi / limb.wobble_period_mm) * dz + np.float32(limb.wobble_phase))
    return (np.float32(limb.center_mm[0]) + np.float32(limb.drift[0]) * dz + w,
            np.float32(limb.center_mm[1]) + np.float32(limb.drift[1]) * dz + 0.5 * w)


def vessel_centres(limb: Limb, z):
    """Artery and vein centres (x, y) in mm at height z (they spiral slowly about the bone)."""
    cx, cy = limb_center(limb, z)
    ang = float(np.deg2rad(limb.vessel_twist_deg_per_100mm) / 100) * (
        z - np.float32(limb.z_ref_mm))
    ca, sa = np.cos(ang), np.sin(ang)
    bx, by = limb.bones[0].offset_mm
    out = []
    for ox, oy in (limb.artery_offset_mm, limb.vein_offset_mm):
        rx, ry = ox - bx, oy - by
        out.append((cx + bx + ca * rx - sa * ry, cy + by + sa * rx + ca * ry))
    return out


def tumour_local(tumour: Tumour, x, y, z):
    """Tumour-local coordinates (mm, along the tumour's axes) of points."""
    c = tumour.center_mm
    dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
    a = tumour.axes
    return tuple(np.float32(a[0, i]) * dx + np.float32(a[1, i]) * dy + np.float32(a[2, i]) * dz
                 for i in range(3))


def tumour_distance(tumour: Tumour, q):
    """Signed radial distance (mm) to the tumour surface (negative inside) at local points q."""
    s = [qi / np.float32(ai) for qi, ai in zip(q, tumour.semi_axes_mm, strict=True)]
    rho = np.sqrt(s[0] ** 2 + s[1] ** 2 + s[2] ** 2) + np.float32(1e-6)
    u = [si / rho for si in s]
    f = tumour.shape(*u)
    surf = (1 + f) * np.sqrt(sum((np.float32(ai) * ui) ** 2
                                 for ai, ui in zip(tumour.semi_axes_mm, u, strict=True)))
    return np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) - surf


def necrosis_inside(tumour: Tumour, q):
    """Whether local points q lie in the (irregular) necrotic core, before the rim rule."""
    if tumour.necrosis_scale <= 0:
        return np.zeros(np.shape(q[0]), dtype=bool)
    sc = tumour.semi_axes_mm * tumour.necrosis_scale
    s = [(qi - np.float32(o)) / np.float32(a)
         for qi, o, a in zip(q, tumour.necrosis_offset_mm, sc, strict=True)]
    rho = np.sqrt(s[0] ** 2 + s[1] ** 2 + s[2] ** 2) + np.float32(1e-6)
    return rho < 1 + tumour.necrosis_shape(*(si / rho for si in s))


def tissue_maps(limb: Limb, tumour: Tumour, x, y, z) -> TissueMaps:
    """Labels and fields at body points x, y, z (mm; broadcastable float32 arrays)."""
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    cx, cy = limb_center(limb, z)
    u, v = x - cx, y - cy
    # --- outer contour: rotated ellipse with low-order harmonics, tapering along z
    o = np.deg2rad(limb.orientation_deg)
    ur = np.float32(np.cos(o)) * u + np.float32(np.sin(o)) * v
    vr = -np.float32(np.sin(o)) * u + np.float32(np.cos(o)) * v
    taper = 1 + np.float32(limb.taper_pct_per_100mm / 1e4) * (z - np.float32(limb.z_ref_mm))
    a, b = (np.float32(s) * taper for s in limb.semi_axes_mm)
    theta = np.arctan2(vr, ur)
    harm = 1 + sum(np.float32(amp) * np.cos((m + 2) * theta + np.float32(ph))
                   for m, (amp, ph) in enumerate(limb.harmonics))
    r_norm = np.sqrt((ur / a) ** 2 + (vr / b) ** 2) / harm
    r_mean = np.sqrt(np.float32(limb.semi_axes_mm[0] * limb.semi_axes_mm[1])) * taper
    g = (r_norm - 1) * r_mean  # mm, ~0 at the skin surface, negative inside
    fat = np.float32(limb.fat_mm) * (
        1 + np.float32(0.35) * np.cos(theta - np.float32(np.deg2rad(limb.fat_angle_deg))))
    g = np.broadcast_to(g, shape).astype(np.float32)
    fat = np.broadcast_to(fat, shape)

    # --- tumour-related quantities, on the points inside the tumour's bounding box only
    lo, hi = tumour.bbox_min_mm, tumour.bbox_max_mm
    box = ((x >= lo[0]) & (x <= hi[0])) & ((y >= lo[1]) & (y <= hi[1])) & (
        (z >= lo[2]) & (z <= hi[2]))
    box = np.broadcast_to(box, shape)
    sel = np.nonzero(box)
    bx_, by_, bz_ = (np.broadcast_to(c, shape)[sel] for c in (x, y, z))
    q = tumour_local(tumour, bx_, by_, bz_)
    tdist = tumour_distance(tumour, q)
    skin = np.float32(limb.skin_mm)
    bulge = tdist - np.float32(4.0) - skin - np.float32(0.6) * fat[sel]  # stretched over the tumour
    g[sel] = np.minimum(g[sel], bulge)

    labels = np.full(shape, MUSCLE, dtype=np.uint8)
    labels[g > -skin - fat - 1.2] = FASCIA
    labels[g > -skin - fat] = FAT
    labels[g > -skin] = SKIN
    labels[g > 0] = AIR
    muscle = labels == MUSCLE

    # --- septa from the (first) bone outward, vessels, bones
    b0 = limb.bones[0]
    sx, sy = u - np.float32(b0.offset_mm[0]), v - np.float32(b0.offset_mm[1])
    twist = float(np.deg2rad(limb.vessel_twist_deg_per_100mm) / 100) * (
        z - np.float32(limb.z_ref_mm))
    for ang in limb.septa_deg:
        ps = float(np.deg2rad(ang)) + twist
        along = np.cos(ps) * sx + np.sin(ps) * sy
        perp = np.abs(-np.sin(ps) * sx + np.cos(ps) * sy)
        hit = (perp < np.float32(limb.septum_mm / 2)) & (along > np.float32(b0.radius_mm)) & muscle
        labels[hit] = SEPTUM
    (ax_, ay_), (vx_, vy_) = vessel_centres(limb, z)
    inside = labels != AIR
    for (px, py), r, lab in (((ax_, ay_), limb.artery_radius_mm, ARTERY),
                             ((vx_, vy_), limb.vein_radius_mm, VEIN)):
        labels[((x - px) ** 2 + (y - py) ** 2 < np.float32(r * r)) & inside] = lab
    bone_near = np.zeros(shape, dtype=bool)  # bone + 1.5 mm: the tumour stays out
    for bone in limb.bones:
        d2 = (u - np.float32(bone.offset_mm[0])) ** 2 + (v - np.float32(bone.offset_mm[1])) ** 2
        d2 = np.broadcast_to(d2, shape)
        labels[d2 < np.float32(bone.radius_mm**2)] = CORTEX
        labels[d2 < np.float32((bone.radius_mm - bone.cortex_mm) ** 2)] = MARROW
        bone_near |= d2 < np.float32((bone.radius_mm + 1.5) ** 2)

    heterogeneity = np.zeros(shape, dtype=np.float32)
    texture = np.zeros(shape, dtype=np.float32)
    oedema = np.zeros(shape, dtype=np.float32)
    depth = np.zeros(shape, dtype=np.float32)
    if len(sel[0]) == 0:
        return TissueMaps(labels, heterogeneity, texture, oedema, depth)

    lab_sel = labels[sel]
    # --- peritumoral oedema (feathery border), in muscle and septa
    if tumour.oedema_mm > 0:
        w = float(tumour.oedema_mm)
        ci = np.nonzero((tdist > 0) & (tdist < 1.1 * w)
                        & np.isin(lab_sel, (MUSCLE, SEPTUM, FASCIA)))[0]
        reach = w * (0.75 + 0.25 * tumour.oedema_noise(bx_[ci], by_[ci], bz_[ci]))
        oi = ci[tdist[ci] < reach]
        lab_sel[oi] = OEDEMA
        oedema[tuple(s[oi] for s in sel)] = np.clip(1 - tdist[oi] / w, 0.2, 1)
    # --- tumour: viable tissue, necrotic core (behind a viable rim), haemorrhage
    ti = np.nonzero((tdist < 0) & ~bone_near[sel])[0]
    tx, ty, tz = bx_[ti], by_[ti], bz_[ti]
    td = tdist[ti]
    tex = tumour.texture_noise(tx, ty, tz)
    lab_t = np.full(len(ti), TUMOUR, dtype=np.uint8)
    lab_t[necrosis_inside(tumour, [qi[ti] for qi in q]) & (td < -np.float32(tumour.rim_mm))] = (
        NECROSIS)
    for (hx, hy, hz), r in tumour.haemorrhages:
        rr = np.float32(r) * (1 + np.float32(0.25) * tex)
        lab_t[(tx - np.float32(hx)) ** 2 + (ty - np.float32(hy)) ** 2
              + (tz - np.float32(hz)) ** 2 < rr * rr] = HAEMORRHAGE
    lab_sel[ti] = lab_t
    labels[sel] = lab_sel
    sel_t = tuple(s[ti] for s in sel)
    heterogeneity[sel_t] = tumour.heterogeneity_noise(tx, ty, tz)
    texture[sel_t] = tex
    depth[sel_t] = -td
    return TissueMaps(labels, heterogeneity, texture, oedema, depth)
