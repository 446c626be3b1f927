"""The radiomics stage: IBSI features of the GTV (shape, first order, GLCM, GLRLM, GLSZM).

Computed by MIRP, the IBSI reference implementation, in its own environment
(``.venv-radiomics``, made by ``make env``): ``worker`` runs there by subprocess and imports
nothing from stsnb. Modules: ``settings`` (the discretisation of each image and why),
``inputs`` (the files of a patient and the checks before computing), ``environment`` (where the
radiomics Python is, the library versions), ``stage`` (all patients, saved and reused). Imported
on their own: ``models`` (logistic regression and random forest per feature set on chapter 04's
patient folds, ``runs/<split>/radiomics-<set>-<model>/``) and ``permutation`` (the permutation
test of the lr models, rows shaped like significance.csv).
"""

from stsnb.radiomics.environment import library_versions, radiomics_python
from stsnb.radiomics.errors import RadiomicsError
from stsnb.radiomics.inputs import (
    MAX_OUTSIDE_FRACTION,
    RadiomicsInputs,
    check_inputs,
    radiomics_inputs,
)
from stsnb.radiomics.settings import (
    COMMON_SETTINGS,
    RADIOMICS_SETTINGS,
    SPATIAL_AUTOCORRELATION,
    ImageSettings,
    left_out_features,
    settings_table,
)
from stsnb.radiomics.stage import RadiomicsRun, has_features, read_features, run_radiomics

__all__ = [
    "COMMON_SETTINGS",
    "MAX_OUTSIDE_FRACTION",
    "RADIOMICS_SETTINGS",
    "ImageSettings",
    "RadiomicsError",
    "RadiomicsInputs",
    "RadiomicsRun",
    "SPATIAL_AUTOCORRELATION",
    "check_inputs",
    "has_features",
    "left_out_features",
    "library_versions",
    "radiomics_inputs",
    "radiomics_python",
    "read_features",
    "run_radiomics",
    "settings_table",
]
