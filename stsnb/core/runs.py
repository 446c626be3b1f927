"""Where every cross-validation run lives, how runs are named and found, and their predictions.

``work_dir/runs/<split>/<run>/``: ``combo<NN>`` for the FC head of a combination (its linear
head in ``combo<NN>/linear/``), ``radiomics-<set>-<model>`` for a radiomics model. Each run
holds ``predictions.csv`` (one row per test slice, :data:`stsnb.core.metrics.PREDICTION_COLUMNS`)
and, written last, its record ``run.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stsnb.core.combinations import Combination
from stsnb.core.errors import StsnbError
from stsnb.core.metrics import PREDICTION_COLUMNS
from stsnb.core.store import read_json

#: The cross-validation splits: patient-grouped (the default), the study's slice-level split and
#: the random-label control (patient-grouped); see stsnb.training.folds.
SPLITS = ("patient", "slice", "random")
GROUPED_SPLITS = ("patient", "random")
RUNS_DIR = "runs"  # every cross-validation run: work_dir/runs/<split>/<run>/
RUN_RECORD = "run.json"  # a run's record (key, outputs), written last


def run_dir(work_dir: str | Path, split: str, run: int | str) -> Path:
    """``work_dir/runs/<split>/<run>``: ``combo<NN>`` for a combination number, else `run`."""
    name = f"combo{int(run):02d}" if isinstance(run, int) or str(run).isdigit() else str(run)
    return Path(work_dir) / RUNS_DIR / split / name


@dataclass
class CrossValidationRun:
    """One combination's cross-validation on disk: the tables of DESIGN.md §4 (predictions,
    history, fold metrics), the run record and whether it was reused rather than trained."""

    combination: Combination
    split: str
    run_dir: Path
    predictions: pd.DataFrame
    history: pd.DataFrame
    fold_metrics: pd.DataFrame
    record: dict[str, Any]
    reused: bool


#: The radiomics models (L2 logistic regression, random forest) and their runs' name prefix.
RADIOMICS_MODELS = ("lr", "rf")
RADIOMICS_PREFIX = "radiomics"


def radiomics_head(model: str) -> str:
    """The head of a model's runs (``radiomics-lr``), as results tables name it."""
    return f"{RADIOMICS_PREFIX}-{str(model).strip().lower()}"


def radiomics_run_name(feature_set: str, model: str) -> str:
    """``radiomics-<set>-<model>``."""
    return f"{RADIOMICS_PREFIX}-{feature_set}-{str(model).strip().lower()}"


def parse_radiomics_run_name(name: str) -> tuple[str, str] | None:
    """(set, model) of a run folder's name, or None for a folder that is not a radiomics run."""
    parts = str(name).split("-")
    if (len(parts) != 3 or parts[0] != RADIOMICS_PREFIX or parts[2] not in RADIOMICS_MODELS
            or not parts[1]):
        return None
    return parts[1], parts[2]


def predictions_path(work_dir: str | Path, split: str, combo: int) -> Path:
    """`work_dir/runs/<split>/combo<NN>/predictions.csv`."""
    return run_dir(work_dir, split, int(combo)) / "predictions.csv"


def load_predictions(path: str | Path) -> pd.DataFrame:
    """Read and validate a predictions.csv (one row per test slice)."""
    path = Path(path)
    if not path.exists():
        raise StsnbError(f"{path} not found. Fix: run chapter 04 for this combination first.")
    table = pd.read_csv(path, dtype={"patient_id": str})
    missing = [c for c in PREDICTION_COLUMNS if c not in table.columns]
    if missing:
        raise StsnbError(f"{path} lacks the columns {missing}; found {list(table.columns)}.")
    if not table["prob"].between(0, 1).all() or not table["label"].isin([0, 1]).all():
        raise StsnbError(f"{path}: prob must lie in [0, 1] and label be 0 or 1.")
    return table


def run_record(work_dir: str | Path, split: str, combo: int) -> dict:
    """The FC run's ``run.json`` of (split, combo); StsnbError naming the fix when absent."""
    return read_json(run_dir(work_dir, split, int(combo)) / RUN_RECORD,
                     fix=f"run chapter 04 for combination {combo} ({split} split) first.")


def discover_runs(work_dir: str | Path, head: str = "fc") -> pd.DataFrame:
    """Every finished run under `work_dir/runs/`: split, combo (number), head and its folder.

    `head`: 'fc' (the study's head, ``runs/<split>/combo<NN>/``), 'linear'
    (``runs/<split>/combo<NN>/linear/``), 'all' (both) or 'radiomics' (the radiomics models,
    ``runs/<split>/radiomics-<set>-<model>/``: head ``radiomics-<model>``, and `combo` holds the
    feature set's name, not a combination number; never part of 'all').
    """
    if head not in ("fc", "linear", "all", "radiomics"):
        raise StsnbError(f"Unknown head {head!r}: expected fc, linear, all or radiomics.")
    if head == "radiomics":
        return _discover_radiomics_runs(work_dir)
    patterns = {"fc": "runs/*/combo*/predictions.csv",
                "linear": "runs/*/combo*/linear/predictions.csv"}
    rows = []
    for name, pattern in patterns.items():
        if head not in (name, "all"):
            continue
        for path in sorted(Path(work_dir).glob(pattern)):
            combo_dir = path.parent if name == "fc" else path.parent.parent
            split, combo = combo_dir.parent.name, combo_dir.name
            if split in SPLITS and combo[5:].isdigit():
                rows.append({"split": split, "combo": int(combo[5:]), "head": name,
                             "dir": path.parent})
    return pd.DataFrame(rows, columns=["split", "combo", "head", "dir"])


def _discover_radiomics_runs(work_dir: str | Path) -> pd.DataFrame:
    """The radiomics runs: split, combo (the feature set), head (radiomics-<model>), dir."""
    rows = []
    for path in sorted(Path(work_dir).glob("runs/*/radiomics-*/predictions.csv")):
        parsed = parse_radiomics_run_name(path.parent.name)
        split = path.parent.parent.name
        if parsed is not None and split in SPLITS:
            rows.append({"split": split, "combo": parsed[0], "head": radiomics_head(parsed[1]),
                         "dir": path.parent})
    return pd.DataFrame(rows, columns=["split", "combo", "head", "dir"])
