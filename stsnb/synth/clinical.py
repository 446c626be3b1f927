"""Clinical variables of a synthetic patient: histology, grade, age, sex, site, follow-up."""

from __future__ import annotations

import numpy as np

#: histology -> (probability, grade probabilities for grades 1, 2, 3, mean age in years)
HISTOLOGIES: dict[str, tuple[float, tuple[float, float, float], float]] = {
    "undifferentiated pleomorphic sarcoma": (0.30, (0.0, 0.15, 0.85), 63.0),
    "myxofibrosarcoma": (0.18, (0.2, 0.35, 0.45), 66.0),
    "liposarcoma": (0.20, (0.45, 0.4, 0.15), 55.0),
    "synovial sarcoma": (0.12, (0.0, 0.45, 0.55), 34.0),
    "leiomyosarcoma": (0.12, (0.15, 0.4, 0.45), 58.0),
    "malignant peripheral nerve sheath tumour": (0.08, (0.05, 0.35, 0.6), 45.0),
}
#: site -> probability
SITES: dict[str, float] = {"thigh": 0.66, "upper_arm": 0.16, "lower_leg": 0.18}
PRESCRIPTION_GY = 50.0
FRACTIONS = 25


def draw_clinical(rng: np.random.Generator) -> dict[str, object]:
    """Site, sex, age (years), histology and grade (1-3)."""
    site = str(rng.choice(list(SITES), p=list(SITES.values())))
    sex = "M" if rng.random() < 0.56 else "F"
    names = list(HISTOLOGIES)
    hist = names[int(rng.choice(len(names), p=[HISTOLOGIES[n][0] for n in names]))]
    _, grade_p, mean_age = HISTOLOGIES[hist]
    grade = int(rng.choice([1, 2, 3], p=grade_p))
    age = int(np.clip(round(rng.normal(mean_age, 13.0)), 18, 90))
    return {"site": site, "sex": sex, "age": age, "histology": hist, "grade": grade,
            "prescription_gy": PRESCRIPTION_GY, "fractions": FRACTIONS}


def draw_followup(metastasis: int, rng: np.random.Generator) -> dict[str, float | None]:
    """Follow-up (months) and, for DM, the time to metastasis (months)."""
    if metastasis:
        ttm = float(np.clip(rng.lognormal(np.log(14.0), 0.6), 3.0, 48.0))
        return {"followup_months": round(ttm + rng.uniform(0.0, 48.0), 1),
                "time_to_metastasis_months": round(ttm, 1)}
    return {"followup_months": round(float(rng.uniform(24.0, 120.0)), 1),
            "time_to_metastasis_months": None}
