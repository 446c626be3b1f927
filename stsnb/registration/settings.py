"""The registration settings in force: the profile's, cohort.toml's [registration], rigid_only."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stsnb.core.config import Profile, RegistrationConfig
from stsnb.core.errors import CohortError
from stsnb.curation.cohort_config import COHORT_TOML, CohortConfig

INITIALIZATIONS = ("auto", "scanner", "geometry")
#: Smallest margin around the tumour z-extent: the preprocessing slab is the extent +- 10 mm.
MIN_ROI_MARGIN_MM = 10.0


def _fail(path: Path | None, problem: str, fix: str) -> CohortError:
    return CohortError(f"{COHORT_TOML} [registration]: {problem}", path=path, fix=fix)


def _coerce(name: str, value: Any, kind: Any, path: Path | None) -> Any:
    """The TOML value as the field's type (int, float, bool, str or tuple of int/float)."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, list | tuple) or not value:
            raise _fail(path, f"{name} must be a non-empty list, found {value!r}.",
                        f"write e.g. {name} = [4, 2].")
        return tuple(_coerce(name, v, item, path) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise _fail(path, f"{name} must be true or false, found {value!r}.",
                        f"write {name} = true or {name} = false.")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, f"{name} must be a whole number, found {value!r}.",
                        f"write e.g. {name} = 100.")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, f"{name} must be a number, found {value!r}.",
                        f"write e.g. {name} = 2.5.")
        return float(value)
    if not isinstance(value, str):
        raise _fail(path, f"{name} must be a string, found {value!r}.", f'write {name} = "...".')
    return value


def validate_settings(config: RegistrationConfig, path: Path | None = None) -> RegistrationConfig:
    """Raise CohortError when a setting is out of its range; return the config unchanged."""
    checks = [
        (config.initialization in INITIALIZATIONS,
         f"initialization {config.initialization!r} is not one of {', '.join(INITIALIZATIONS)}."),
        (config.rigid_iterations >= 1, "rigid_iterations must be >= 1."),
        (config.bspline_iterations >= 1, "bspline_iterations must be >= 1."),
        (config.refine_iterations >= 1, "refine_iterations must be >= 1."),
        (config.mi_histogram_bins >= 8, "mi_histogram_bins must be >= 8."),
        (0.0 < config.mi_sampling_fraction <= 1.0, "mi_sampling_fraction must be in (0, 1]."),
        (config.bspline_samples >= 500, "bspline_samples must be >= 500."),
        (config.bspline_z_damping >= 1.0, "bspline_z_damping must be >= 1 (1 = no damping)."),
        (config.bspline_focus_mm == 0 or config.bspline_focus_mm >= 20.0,
         "bspline_focus_mm must be 0 (every point) or >= 20 mm."),
        (config.rigid_focus_mm == 0 or config.rigid_focus_mm >= 5.0,
         "rigid_focus_mm must be 0 (the whole overlap) or >= 5 mm."),
        (config.working_spacing_mm >= 0.0, "working_spacing_mm must be >= 0 mm (0 = off)."),
        (config.bspline_mesh_mm >= 5.0, "bspline_mesh_mm must be >= 5 mm."),
        (config.roi_margin_mm >= MIN_ROI_MARGIN_MM,
         f"roi_margin_mm must be >= {MIN_ROI_MARGIN_MM:g} mm: the deformable region must cover "
         "the tumour z-extent +- 10 mm that preprocessing keeps."),
        (len(config.rigid_shrink_factors) == len(config.rigid_smoothing_sigmas_mm),
         "rigid_shrink_factors and rigid_smoothing_sigmas_mm need one value per level each."),
        (len(config.bspline_shrink_factors) == len(config.bspline_smoothing_sigmas_mm),
         "bspline_shrink_factors and bspline_smoothing_sigmas_mm need one value per level each."),
        (all(f >= 1 for f in config.rigid_shrink_factors + config.bspline_shrink_factors),
         "shrink factors must be >= 1."),
        (all(s >= 0 for s in config.rigid_smoothing_sigmas_mm
             + config.bspline_smoothing_sigmas_mm), "smoothing sigmas must be >= 0 mm."),
    ]
    for ok, problem in checks:
        if not ok:
            raise _fail(path, problem, "correct the value (the profile's defaults are in "
                        "stsnb/core/config.py, RegistrationConfig).")
    return config


def registration_settings(
    profile: Profile,
    cohort: CohortConfig | None = None,
    rigid_only: bool = False,
    cohort_dir: str | Path | None = None,
) -> RegistrationConfig:
    """The profile's registration settings with the cohort.toml overrides and `rigid_only` applied.

    Unknown or mistyped keys in [registration] raise a CohortError naming cohort.toml.
    """
    path = Path(cohort_dir) / COHORT_TOML if cohort_dir is not None else None
    overrides: Mapping[str, Any] = cohort.registration if cohort is not None else {}
    hints = typing.get_type_hints(RegistrationConfig)
    fields = {f.name for f in dataclasses.fields(RegistrationConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise _fail(path, f"unknown setting(s) {', '.join(unknown)}; allowed: "
                    f"{', '.join(sorted(fields))}.", "remove or rename them.")
    values = {name: _coerce(name, value, hints[name], path) for name, value in overrides.items()}
    config = dataclasses.replace(profile.registration, **values)
    if rigid_only:
        config = dataclasses.replace(config, deformable=False)
    return validate_settings(config, path)


def settings_table(config: RegistrationConfig) -> pd.DataFrame:
    """The registration settings in force as (setting, value) rows."""
    return pd.DataFrame([(k, str(v)) for k, v in dataclasses.asdict(config).items()],
                        columns=["setting", "value"])
