"""Stage 02: MR-to-CT registration, contour propagation and registration QA.

The CT is fixed and the MR moving: every transform maps CT points (mm) to MR points (mm), so the
MR is resampled onto the CT grid with it directly, and a contour drawn in the MR frame is mapped
onto the CT grid with the same transform for QA (no inverse). Modules: ``rigid`` (Mattes MI,
multi-resolution, Euler 3-D), ``deformable`` (B-spline refinement in the tumour region),
``patient`` (one patient end to end), ``measures`` and ``qa`` (Dice, TRE, MI, Jacobian, flags),
``stage`` (all patients, saved and reused), ``review`` (decisions after looking), ``views``
(what the figures show).
"""

from stsnb.registration.errors import RegistrationError
from stsnb.registration.qa import QA_COLUMNS, QAThresholds, flagged_first, qa_summary, read_qa
from stsnb.registration.review import decide_patients, final_patients, read_review
from stsnb.registration.settings import registration_settings
from stsnb.registration.stage import RegistrationRun, run_registration
from stsnb.registration.views import load_views, registered_volumes, sample_patients

__all__ = [
    "QA_COLUMNS",
    "QAThresholds",
    "RegistrationError",
    "RegistrationRun",
    "decide_patients",
    "final_patients",
    "flagged_first",
    "load_views",
    "qa_summary",
    "read_qa",
    "read_review",
    "registered_volumes",
    "registration_settings",
    "run_registration",
    "sample_patients",
]
