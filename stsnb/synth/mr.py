"""MR sequences (T1w, T2w, fat-suppressed CE-T1w) of one session, in arbitrary units.

Signal = tissue value (with tumour texture, heterogeneous enhancement of the viable tumour,
graded oedema) x smooth multiplicative bias field, blurred slightly in-plane, then Rician noise
(magnitude of complex Gaussian). Stored as int16 after a per-sequence scale.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from stsnb.core.modalities import MR_MODALITIES
from stsnb.synth import anatomy as A
from stsnb.synth.anatomy import TissueMaps
from stsnb.synth.spec import PatientPlan

#: Relative signal per tissue label (fat on T1w = 1) for T1w, T2w (no fat suppression), CE-T1w
#: (fat-suppressed, after gadolinium).
SIGNAL: dict[str, dict[int, float]] = {
    "t1w": {A.AIR: 0.0, A.SKIN: 0.55, A.FAT: 1.0, A.MUSCLE: 0.38, A.SEPTUM: 0.95,
            A.FASCIA: 0.15, A.CORTEX: 0.03, A.MARROW: 0.9, A.ARTERY: 0.06, A.VEIN: 0.22,
            A.TUMOUR: 0.33, A.NECROSIS: 0.28, A.HAEMORRHAGE: 0.92, A.OEDEMA: 0.3},
    "t2w": {A.AIR: 0.0, A.SKIN: 0.4, A.FAT: 0.8, A.MUSCLE: 0.22, A.SEPTUM: 0.75,
            A.FASCIA: 0.1, A.CORTEX: 0.02, A.MARROW: 0.7, A.ARTERY: 0.05, A.VEIN: 0.5,
            A.TUMOUR: 0.58, A.NECROSIS: 0.95, A.HAEMORRHAGE: 0.4, A.OEDEMA: 0.5},
    "ce_t1w": {A.AIR: 0.0, A.SKIN: 0.45, A.FAT: 0.12, A.MUSCLE: 0.3, A.SEPTUM: 0.12,
               A.FASCIA: 0.12, A.CORTEX: 0.03, A.MARROW: 0.1, A.ARTERY: 1.0, A.VEIN: 0.8,
               A.TUMOUR: 0.8, A.NECROSIS: 0.16, A.HAEMORRHAGE: 0.6, A.OEDEMA: 0.36},
}


def sequence_signal(seq: str, maps: TissueMaps, heterogeneity: float, jitter: float) -> np.ndarray:
    """Noise-free signal (float32) of one sequence from the tissue maps."""
    table = np.zeros(256, dtype=np.float32)
    for lab, val in SIGNAL[seq].items():
        table[lab] = val
    table[[A.TUMOUR, A.NECROSIS, A.OEDEMA]] *= np.float32(jitter)
    s = table[maps.labels]
    lab = maps.labels
    viable = lab == A.TUMOUR
    if seq == "t2w":
        s[viable] += np.float32(0.07) * maps.texture[viable]
        oed = lab == A.OEDEMA
        s[oed] += np.float32(0.35) * maps.oedema[oed]
    elif seq == "t1w":
        s[viable] += np.float32(0.02) * maps.texture[viable]
    else:
        enh = 1 + np.float32(heterogeneity) * maps.heterogeneity[viable]
        rim = np.exp(-maps.depth[viable] / np.float32(8.0))
        s[viable] = s[viable] * np.clip(enh, 0.2, 1.9) + np.float32(0.15) * rim
        oed = lab == A.OEDEMA
        s[oed] += np.float32(0.12) * maps.oedema[oed]
    return s


def bias_field(shape: tuple[int, int, int], coeffs: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial of normalised voxel coordinates)."""
    nz, ny, nx = shape
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    c = coeffs.astype(np.float32)
    log_b = (c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
             + c[6] * x * y + c[7] * x * z + c[8] * y * z)
    return np.exp(log_b)


def render_mr(plan: PatientPlan, maps: dict[str, TissueMaps], rng: np.random.Generator,
              sequences: tuple[str, ...] = MR_MODALITIES) -> dict[str, np.ndarray]:
    """The MR ``sequences`` (int16 a.u., shape of the MR grid; rendered in MR_MODALITIES order,
    so a sequence matches the full session's whenever the ones before it are rendered too);
    ``maps`` per sequence."""
    mr = plan.mr
    out = {}
    for i, seq in enumerate(MR_MODALITIES):
        if seq not in sequences:
            continue
        s = sequence_signal(seq, maps[seq], plan.factors["enhancement_heterogeneity"],
                            mr.contrast_jitter[seq])
        s *= bias_field(s.shape, mr.bias_coeffs[i])
        s = ndimage.gaussian_filter(s, sigma=(0.0, 0.5, 0.5), truncate=3.0)
        sigma = np.float32(mr.noise_sigma)
        re = s + sigma * rng.standard_normal(s.shape, dtype=np.float32)
        im = sigma * rng.standard_normal(s.shape, dtype=np.float32)
        mag = np.sqrt(re * re + im * im) * np.float32(mr.scales[seq])
        out[seq] = np.clip(np.rint(mag), 0, 32767).astype(np.int16)
    return out
