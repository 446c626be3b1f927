"""The helpers every chapter imports: how tables and settings are shown."""

from __future__ import annotations

import pandas as pd

from stsnb.run.notebook import OPEN_ROWS, table_html


def test_tables_drop_an_index_that_carries_nothing_and_keep_one_that_does():
    plain = table_html(pd.DataFrame({"metric": ["auc", "f1"], "value": [0.7, 0.5]}))
    assert "<th>0</th>" not in plain and "<td>auc</td>" in plain
    named = table_html(pd.DataFrame({"value": [0.7]}, index=pd.Index(["P01"], name="patient")))
    assert "P01" in named and "patient" in named
    shifted = table_html(pd.DataFrame({"value": [1, 2]}, index=[5, 6]))  # a filtered table
    assert "<th>5</th>" in shifted


def test_long_tables_are_collapsed_under_their_row_count():
    short = table_html(pd.DataFrame({"x": range(OPEN_ROWS)}))
    assert not short.startswith("<details>")
    long = table_html(pd.DataFrame({"x": range(OPEN_ROWS + 12)}))
    assert long.startswith("<details><summary>Table of 42 rows")
    assert long.count("<tr") == OPEN_ROWS + 12 + 1  # every row kept, plus the header
