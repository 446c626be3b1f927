"""The three-channel combinations of the images (DESIGN.md §4-5).

For the study's five images, combinations 1-10 are the study's table, in its order and channel
order (R, G, B); this order is the study's, not a generated one. For any other declared set of
modalities, every three-image subset in `itertools.combinations` order (channels in declared
order), numbered from 1. After the triplets come the single-modality references (one image on
all three channels), one per modality in declared order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stsnb.core.errors import ConfigError
from stsnb.core.modalities import STUDY_MODALITIES
from stsnb.core.store import write_csv_atomic

#: The study's table (results slide), channels R-G-B as listed there.
STUDY_COMBINATIONS: tuple[tuple[str, str, str], ...] = (
    ("ct", "dose", "t1w"),  # 1 CT-Dose-T1w
    ("ct", "dose", "ce_t1w"),  # 2 CT-Dose-CE-T1w
    ("ct", "dose", "t2w"),  # 3 CT-Dose-T2w
    ("ct", "t1w", "ce_t1w"),  # 4 CT-T1w-CE-T1w
    ("ct", "t1w", "t2w"),  # 5 CT-T1w-T2w
    ("ct", "t2w", "ce_t1w"),  # 6 CT-T2w-CE-T1w
    ("dose", "t1w", "ce_t1w"),  # 7 Dose-T1w-CE-T1w
    ("dose", "t1w", "t2w"),  # 8 Dose-T1w-T2w
    ("dose", "t2w", "ce_t1w"),  # 9 Dose-T2w-CE-T1w
    ("t1w", "t2w", "ce_t1w"),  # 10 T1w-T2w-CE-T1w
)


@dataclass(frozen=True)
class Combination:
    """One network input: three images as the R, G and B channels."""

    number: int
    channels: tuple[str, str, str]

    @property
    def name(self) -> str:
        """`dose-t2w-ce_t1w` for a triplet, `t2w` for a single-modality reference."""
        if len(set(self.channels)) == 1:
            return self.channels[0]
        return "-".join(self.channels)

    @property
    def is_single(self) -> bool:
        """True for a single-modality reference (one image on all three channels)."""
        return len(set(self.channels)) == 1


def combinations_for(modalities: tuple[str, ...] = STUDY_MODALITIES) -> list[Combination]:
    """Every combination for a declared modality list, numbered from 1 (triplets, then singles)."""
    modalities = tuple(modalities)
    if len(modalities) < 3:
        raise ConfigError(
            f"Three-channel combinations need at least 3 modalities; got {list(modalities)}."
        )
    if set(modalities) == set(STUDY_MODALITIES) and len(modalities) == len(STUDY_MODALITIES):
        triplets = list(STUDY_COMBINATIONS)
    else:
        triplets = list(itertools.combinations(modalities, 3))
    singles = [(m, m, m) for m in modalities]
    return [Combination(i, tuple(c)) for i, c in enumerate(triplets + singles, start=1)]


def resolve_combo(combo: int | str, modalities: tuple[str, ...] = STUDY_MODALITIES) -> Combination:
    """The combination named by its number (1-based, int or digit string) or its name."""
    table = combinations_for(modalities)
    key = str(combo).strip().lower()
    if key.isdigit():
        number = int(key)
        if 1 <= number <= len(table):
            return table[number - 1]
        raise ConfigError(
            f"Combination {number} is out of range: this cohort has combinations 1-{len(table)} "
            f"({len(table) - len(modalities)} triplets, then {len(modalities)} single images)."
        )
    for item in table:
        if item.name == key:
            return item
    names = ", ".join(c.name for c in table)
    raise ConfigError(f"Unknown combination {combo!r}: expected a number or one of {names}.")


def combinations_table(modalities: tuple[str, ...] = STUDY_MODALITIES) -> pd.DataFrame:
    """number, name, red, green, blue (the content of `work_dir/combinations.csv`)."""
    rows = [(c.number, c.name, *c.channels) for c in combinations_for(modalities)]
    return pd.DataFrame(rows, columns=["number", "name", "red", "green", "blue"])


def write_combinations(work_dir: str | Path, modalities: tuple[str, ...]) -> Path:
    """Write `work_dir/combinations.csv` atomically."""
    return write_csv_atomic(combinations_table(modalities), Path(work_dir) / "combinations.csv")
