"""Embedded synthetic multimodal STS cohort: CT (HU), RT dose (Gy), MR T1w/T2w/CE-T1w (a.u.)
and, on request, FDG PET (SUV).

``plan_cohort`` draws every patient's parameters (cheap, no images); ``make_synthetic_cohort``
renders that plan into the cohort layout (DESIGN.md section 4), any set of those images, in
parallel worker processes. See book/synthetic_cohort.md.
"""

from stsnb.synth.plan import plan_cohort
from stsnb.synth.writer import make_synthetic_cohort

__all__ = ["make_synthetic_cohort", "plan_cohort"]
