"""Cross-validation folds over the slice index: patient-grouped (default), slice-level, control.

- ``patient``: grouped by patient and stratified by label: sklearn `StratifiedKFold` over the
  patients (each patient has one label), every patient's slices in one test fold. sklearn's
  `StratifiedGroupKFold` balances slice counts greedily and can fail to stratify at all when
  patients have equal slice counts (as the quick profile gives them; scikit-learn issue 24656),
  so the split is made on the patient table, where it is exact. The validation set (early
  stopping) is carved from the training patients, also by whole patients and per class.
- ``slice``: the study's split, `StratifiedKFold` over slices: slices of one patient fall in
  train and test alike. Kept to measure how optimistic that is.
- ``random``: the patient split after permuting the patients' labels (seeded): the images say
  nothing about these labels, so this control must land at chance.

`assert_no_leakage` proves, for every fold, that no slice (and, for the grouped splits, no
patient) is in two of train, validation and test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from stsnb.core.errors import ConfigError, checked_name
from stsnb.core.runs import GROUPED_SPLITS, SPLITS


class LeakageError(AssertionError):
    """A patient (or slice) in two of train, validation and test of one fold."""


@dataclass(frozen=True)
class Fold:
    """One fold: positions (0..n-1 in the slice index) of its train, validation and test sets."""

    number: int  # from 1
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class FoldPlan:
    """Every fold of one split, and the labels they are trained and scored on (per slice)."""

    split: str
    folds: tuple[Fold, ...]
    labels: np.ndarray  # int64 per index position (permuted patient labels for 'random')
    patient_ids: np.ndarray  # str per index position


def check_split(split: str) -> str:
    """The split name, lower case; ConfigError for an unknown one."""
    return checked_name(split, SPLITS, "split")


def patient_table(index: pd.DataFrame) -> pd.DataFrame:
    """patient_id, label, n_slices: one row per patient, sorted by patient_id."""
    labels = pd.to_numeric(index["label"], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise ConfigError("Slice labels must be 0 or 1 for every slice; the index has "
                          f"{sorted(set(index['label'].astype(str)))}. Fix: rerun chapters 01-03.")
    table = pd.DataFrame({"patient_id": index["patient_id"].astype(str), "label": labels})
    mixed = table.groupby("patient_id")["label"].nunique()
    if (mixed > 1).any():
        raise ConfigError(f"Patients {list(mixed[mixed > 1].index)} have slices with both labels; "
                          "a label belongs to a patient.")
    grouped = table.groupby("patient_id")
    return pd.DataFrame({"label": grouped["label"].first().astype(int),
                         "n_slices": grouped.size()}).reset_index()


def permuted_labels(index: pd.DataFrame, seed: int) -> np.ndarray:
    """Per-slice labels after a seeded permutation of the labels among patients."""
    patients = patient_table(index)
    rng = np.random.default_rng([int(seed), 0x5EED])
    shuffled = dict(zip(patients["patient_id"], rng.permutation(patients["label"].to_numpy()),
                        strict=True))
    return index["patient_id"].astype(str).map(shuffled).to_numpy(np.int64)


#: Part of every permutation draw's seed (a draw never equals the random split's labels).
PERMUTATION_SALT = 0xC0FFEE


def permutation_draw(y: np.ndarray, seed: int, k: int) -> np.ndarray:
    """The labels `y` of permutation k (from 1) of a permutation test: the same draw for every
    combination, head and feature set, so their nulls share their permutations."""
    return np.random.default_rng([int(seed), int(k), PERMUTATION_SALT]).permutation(np.asarray(y))


def _check_counts(counts: pd.Series, n_folds: int, unit: str) -> None:
    present = counts[counts > 0]
    if len(present) < 2:
        raise ConfigError(
            f"The cohort has a single class ({unit}s per label: {counts.to_dict()}): a classifier "
            "needs patients with and without distant metastasis."
        )
    short = present[present < n_folds]
    if len(short):
        raise ConfigError(
            f"{n_folds}-fold cross-validation needs at least {n_folds} {unit}s of each class; "
            f"label {int(short.index[0])} has {int(short.iloc[0])}. Fix: use fewer folds (a "
            "smaller profile) or a larger cohort."
        )


def _grouped_validation(train: np.ndarray, labels: np.ndarray, pids: np.ndarray,
                        fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Whole training patients per class (at least one where the class has two or more)."""
    chosen: list[str] = []
    patients = pd.DataFrame({"pid": pids[train], "label": labels[train]}).drop_duplicates("pid")
    for _, group in patients.sort_values("pid").groupby("label"):
        if len(group) >= 2:
            n_val = min(len(group) - 1, max(1, round(fraction * len(group))))
            chosen += list(rng.choice(group["pid"].to_numpy(), size=n_val, replace=False))
    return train[np.isin(pids[train], chosen)]


def _slice_validation(train: np.ndarray, labels: np.ndarray, fraction: float,
                      seed: int) -> np.ndarray:
    n_val = max(2, round(fraction * len(train)))
    _, val = train_test_split(train, test_size=n_val, stratify=labels[train], random_state=seed)
    return np.sort(val)


def _patient_pairs(pids: np.ndarray, per_patient: pd.Series, n_folds: int,
                   seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(train, test) slice positions of stratified k-fold over patients."""
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    names = per_patient.index.to_numpy()
    for _, test in splitter.split(names, per_patient.to_numpy()):
        in_test = np.isin(pids, names[test])
        yield np.nonzero(~in_test)[0], np.nonzero(in_test)[0]


def assert_no_leakage(fold: Fold, patient_ids: np.ndarray, grouped: bool = True) -> None:
    """Raise LeakageError if a slice, or (grouped) a patient, is in two of train, val and test."""
    parts = {"train": fold.train, "validation": fold.val, "test": fold.test}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = np.intersect1d(parts[a], parts[b])
            if shared.size:
                raise LeakageError(f"Fold {fold.number}: {shared.size} slices in both {a} and "
                                   f"{b} (positions {shared[:5].tolist()}...).")
            if grouped:
                both = np.intersect1d(patient_ids[parts[a]], patient_ids[parts[b]])
                if both.size:
                    raise LeakageError(f"Fold {fold.number}: patients {both.tolist()} are in "
                                       f"both {a} and {b}.")


def cross_validation_shortfall(patient_labels: pd.Series, n_folds: int, seed: int = 0,
                               validation_fraction: float = 0.1) -> str | None:
    """Why patient-grouped `n_folds`-fold CV cannot run on patients with these 0/1 labels
    (one per patient, indexed by patient id), in words; None when it can. The folds are drawn
    exactly as `make_folds` draws them (one slice per patient stands for each patient)."""
    labels = pd.Series(patient_labels).dropna().astype(int)
    index = pd.DataFrame({"patient_id": labels.index.astype(str), "slice_index": 0,
                          "label": labels.to_numpy()})
    try:
        make_folds(index, "patient", n_folds, seed, validation_fraction)
    except ConfigError as exc:
        reason = str(exc).split(" Fix:")[0]  # the page says what to do
        return f"{len(labels)} patients, {int(labels.sum())} with the event: {reason}"
    return None


def make_folds(index: pd.DataFrame, split: str, n_folds: int, seed: int = 0,
               validation_fraction: float = 0.1,
               labels: np.ndarray | None = None) -> FoldPlan:
    """The folds of `split` over the slice index (positions 0..n-1), checked for leakage.

    `labels`: per-slice labels to use instead of the index's (a permutation test's or a control's
    labels; one label per patient); the folds are drawn under them as under the real ones.
    """
    split = check_split(split)
    if int(n_folds) != n_folds or n_folds < 2:
        raise ConfigError(f"Cross-validation needs at least 2 folds; got {n_folds}.")
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigError(f"validation_fraction must lie in (0, 1); got {validation_fraction}.")
    n_folds = int(n_folds)
    patients = patient_table(index)
    pids = index["patient_id"].astype(str).to_numpy()
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(index),):
            raise ConfigError(f"{labels.shape} labels given for {len(index)} slices.")
        patient_table(index.assign(label=labels))  # one 0/1 label per patient, or an error
    elif split == "random":
        labels = permuted_labels(index, seed)
    else:
        labels = patients.set_index("patient_id")["label"].reindex(pids).to_numpy(np.int64)
    positions = np.arange(len(index))
    if split in GROUPED_SPLITS:
        per_patient = pd.Series(labels).groupby(pids).first()
        _check_counts(per_patient.value_counts().reindex([0, 1], fill_value=0), n_folds,
                      "patient")
        pairs = _patient_pairs(pids, per_patient, n_folds, seed)
    else:
        _check_counts(pd.Series(labels).value_counts().reindex([0, 1], fill_value=0), n_folds,
                      "slice")
        pairs = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            positions, labels)
    folds = []
    for number, (train, test) in enumerate(pairs, start=1):
        if split in GROUPED_SPLITS:
            rng = np.random.default_rng([int(seed), number])
            val = _grouped_validation(train, labels, pids, validation_fraction, rng)
        else:
            val = _slice_validation(train, labels, validation_fraction, seed + number)
        if not val.size:
            raise ConfigError(f"Fold {number} leaves no patient for validation: the cohort is "
                              "too small for this many folds. Fix: use fewer folds.")
        fold = Fold(number, np.setdiff1d(train, val), val, np.sort(test))
        assert_no_leakage(fold, pids, grouped=split in GROUPED_SPLITS)
        folds.append(fold)
    return FoldPlan(split=split, folds=tuple(folds), labels=labels, patient_ids=pids)
