"""Helpers used at the top of every chapter: the parameters used and the profile's settings."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .config import Profile, config_table
from .manifest import display_path

PATH_PARAMETERS = ("cohort_dir", "work_dir", "weights")


def parameters_table(**parameters: Any) -> pd.DataFrame:
    """The chapter's parameters as (parameter, value) rows; paths without the machine's root."""
    rows = []
    for name, value in parameters.items():
        if name in PATH_PARAMETERS and isinstance(value, str) and ("/" in value or "\\" in value):
            value = display_path(value)
        rows.append((name, str(value)))
    return pd.DataFrame(rows, columns=["parameter", "value"])


def profile_table(profile: Profile) -> pd.DataFrame:
    """Every setting of the profile used, one row each (printed at the top of each chapter)."""
    return pd.DataFrame(config_table(profile), columns=["setting", "value"])


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (for generated markdown pages) without extra dependencies."""
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
