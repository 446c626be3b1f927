"""Helpers used at the top of every chapter: the parameters used and the profile's settings."""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd

from stsnb.core.config import Profile, config_table
from stsnb.core.manifest import display_path

PATH_PARAMETERS = ("cohort_dir", "work_dir", "weights")


def _short_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """Warnings as 'Category: message' (no source path of the machine in the book)."""
    return f"{category.__name__}: {message}\n"


# Every chapter imports this module: its warnings (e.g. random weights) stay loud, without paths.
warnings.formatwarning = _short_warning

#: Longer tables are shown collapsed, under a line that gives their size.
OPEN_ROWS = 30


def table_html(table: pd.DataFrame) -> str:
    """A table as chapters show it: without pandas' 0, 1, 2 ... index when the index carries
    nothing (an unnamed default range), collapsed under its row count when longer than
    `OPEN_ROWS` rows."""
    index = table.index
    plain = isinstance(index, pd.RangeIndex) and index.name is None and index.start == 0 \
        and index.step == 1
    body = table.to_html(index=not plain, notebook=True, max_rows=500, max_cols=60)
    if len(table) <= OPEN_ROWS:
        return body
    return (f"<details><summary>Table of {len(table)} rows (click to open)</summary>"
            f"{body}</details>")


def _show_tables_plainly() -> None:
    """Make `table_html` the HTML form of every DataFrame displayed in this kernel."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the environment
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, table_html)


_show_tables_plainly()


def parameters_table(**parameters: Any) -> pd.DataFrame:
    """The chapter's parameters as (parameter, value) rows; paths without the machine's root."""
    rows = []
    for name, value in parameters.items():
        if name in PATH_PARAMETERS and isinstance(value, str) and ("/" in value or "\\" in value):
            value = display_path(value)
        rows.append((name, str(value)))
    return pd.DataFrame(rows, columns=["parameter", "value"])


def profile_table(profile: Profile, *sections: str) -> pd.DataFrame:
    """The settings of the profile used, one row each: those of `sections` (a chapter shows
    the settings it uses), or every setting when none is named (the first chapter)."""
    rows = config_table(profile, sections) if sections else config_table(profile)
    return pd.DataFrame(rows, columns=["setting", "value"])


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

    from stsnb.core.manifest import read_manifest
    from stsnb.training.report import weights_banner

    return HTML(weights_banner(read_manifest(work_dir).get("weights")))
