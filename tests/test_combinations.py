"""The combinations follow the study's table and the contract for other modality sets."""

from __future__ import annotations

import pytest

from stsnb.core.combinations import combinations_for, combinations_table, resolve_combo
from stsnb.core.errors import ConfigError

STUDY_NAMES = [
    "ct-dose-t1w", "ct-dose-ce_t1w", "ct-dose-t2w", "ct-t1w-ce_t1w", "ct-t1w-t2w",
    "ct-t2w-ce_t1w", "dose-t1w-ce_t1w", "dose-t1w-t2w", "dose-t2w-ce_t1w", "t1w-t2w-ce_t1w",
]


def test_study_order_and_channels():
    table = combinations_table()
    assert list(table["name"][:10]) == STUDY_NAMES
    assert list(table["name"][10:]) == ["ct", "dose", "t1w", "t2w", "ce_t1w"]
    assert list(table["number"]) == list(range(1, 16))
    row9 = table.iloc[8]
    assert (row9["red"], row9["green"], row9["blue"]) == ("dose", "t2w", "ce_t1w")
    assert resolve_combo(13).channels == ("t1w", "t1w", "t1w")


def test_other_modality_sets_use_itertools_order():
    combos = combinations_for(("ct", "pet", "t2w", "dose"))
    names = [c.name for c in combos]
    assert names[:4] == ["ct-pet-t2w", "ct-pet-dose", "ct-t2w-dose", "pet-t2w-dose"]
    assert names[4:] == ["ct", "pet", "t2w", "dose"]


def test_combo_by_number_or_name_and_bad_values():
    assert resolve_combo("9").name == "dose-t2w-ce_t1w"
    assert resolve_combo("dose-t2w-ce_t1w").number == 9
    with pytest.raises(ConfigError, match="Combination 16 is out of range.*1-15"):
        resolve_combo(16)
    with pytest.raises(ConfigError, match="Unknown combination 'ct-mri'"):
        resolve_combo("ct-mri")
    with pytest.raises(ConfigError, match="at least 3 modalities"):
        combinations_for(("ct", "dose"))
