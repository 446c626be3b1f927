"""Helpers used at the top of every chapter: the parameters used and the profile's settings."""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd

from .config import Profile, config_table
from .manifest import display_path

PATH_PARAMETERS = ("cohort_dir", "work_dir", "weights")


def _short_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """Warnings as 'Category: message' (no source path of the machine in the book)."""
    return f"{category.__name__}: {message}\n"


# Every chapter imports this module: its warnings (e.g. random weights) stay loud, without paths.
warnings.formatwarning = _short_warning


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


def weights_warning(work_dir: str) -> Any:
    """A loud banner when the run's network was not initialised with ImageNet weights."""
    from IPython.display import HTML

    from .manifest import read_manifest

    weights = read_manifest(work_dir).get("weights")
    if weights is None:
        return HTML("<p><b>Network weights:</b> no training run recorded yet.</p>")
    if weights.get("pretrained"):
        return HTML(f"<p><b>Network weights:</b> {weights.get('summary', 'ImageNet')}</p>")
    return HTML(
        '<div style="border:3px solid #b00020;background:#fdecea;padding:0.8em;'
        'font-size:1.1em"><b>WARNING: the network was NOT initialised with ImageNet weights'
        f"</b> ({weights.get('summary', 'random weights')}). These results are not transfer "
        "learning and must not be read as the study's method.</div>"
    )
