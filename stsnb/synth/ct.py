"""Planning CT in HU: tissue values, a little blur (scanner PSF) and correlated noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from stsnb.synth import anatomy as A
from stsnb.synth.anatomy import TissueMaps
from stsnb.synth.spec import PatientPlan

#: Mean HU per tissue label (before per-patient jitter).
HU: dict[int, float] = {
    A.AIR: -1000.0, A.SKIN: 30.0, A.FAT: -100.0, A.MUSCLE: 48.0, A.SEPTUM: -90.0,
    A.FASCIA: 20.0, A.CORTEX: 1250.0, A.MARROW: -45.0, A.ARTERY: 42.0, A.VEIN: 40.0,
    A.TUMOUR: 36.0, A.NECROSIS: 17.0, A.HAEMORRHAGE: 62.0, A.OEDEMA: 28.0,
}
_JITTER = {A.FAT: "fat", A.SEPTUM: "fat", A.MUSCLE: "muscle", A.TUMOUR: "tumour",
           A.NECROSIS: "necrosis", A.CORTEX: "cortex"}


def render_ct(plan: PatientPlan, maps: TissueMaps, rng: np.random.Generator) -> np.ndarray:
    """CT volume (int16 HU, shape of the CT grid) from the tissue maps on the CT grid."""
    table = np.zeros(256, dtype=np.float32)
    for lab, hu in HU.items():
        table[lab] = hu + plan.ct_jitter_hu.get(_JITTER.get(lab, ""), 0.0)
    hu = table[maps.labels]
    tumour = (maps.labels == A.TUMOUR) | (maps.labels == A.NECROSIS)
    hu[tumour] += np.float32(5.0) * maps.texture[tumour]
    hu = ndimage.gaussian_filter(hu, sigma=(0.15, 0.6, 0.6), truncate=3.0)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.7, 0.7), truncate=3.0)
    noise *= np.float32(plan.ct_noise_hu / 0.41)  # 0.41: sd of white noise after that blur
    hu += noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
