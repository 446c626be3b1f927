"""Latent-risk model of distant metastasis (DM) from tumour properties that show in the images.

``score = sum_f w_f * (x_f - mean_f) / sd_f``; ``DM = 1`` when ``intercept + score + e > 0`` with
``e ~ N(0, NOISE_SD^2)``, so ``P(DM) = Phi((intercept + score) / NOISE_SD)``. The intercept is set
so that about one patient in three develops DM (calibrated on 2 000 simulated patients).
"""

from __future__ import annotations

import math

import numpy as np

#: factor -> (reference mean, reference sd, weight per sd). Fixed constants, not cohort statistics.
FACTORS: dict[str, tuple[float, float, float]] = {
    "tumour_size_cm": (10.0, 2.7, 0.7),
    "necrosis_fraction": (0.24, 0.15, 0.9),
    "enhancement_heterogeneity": (0.5, 0.2, 0.8),
    "oedema_mm": (8.0, 10.0, 0.5),
    "dose_coverage_deficit": (0.045, 0.065, 0.7),
    "grade": (2.4, 0.7, 0.5),
}
#: Standard deviation of the unexplained part of the latent risk.
NOISE_SD = 1.0
#: Intercept giving a DM prevalence of about 1/3 (see module docstring).
INTERCEPT = -1.10


def risk_score(factors: dict[str, float]) -> float:
    """Linear predictor without intercept (sum of weighted standardised factors)."""
    return float(sum(w * (factors[k] - m) / s for k, (m, s, w) in FACTORS.items()))


def draw_outcome(factors: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """Risk score, probability of DM, the noise draw and the outcome (0/1) for one patient."""
    score = risk_score(factors)
    noise = float(rng.normal(0.0, NOISE_SD))
    eta = INTERCEPT + score
    return {
        "risk_score": score,
        "risk": 0.5 * (1.0 + math.erf(eta / NOISE_SD / math.sqrt(2.0))),
        "risk_noise": noise,
        "metastasis": int(eta + noise > 0),
    }
