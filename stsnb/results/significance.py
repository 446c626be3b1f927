"""Permutation test of the whole nested cross-validation of the linear head.

The null distribution of the patient AUC is made by permuting the patients' labels and running
everything again: outer folds re-drawn on the permuted labels, C chosen again in the inner
folds, every model refitted. Permutation k uses the same permuted labels (and so the same folds)
for every combination, so the largest AUC over the combinations in each permutation gives a
null for the best combination (max-statistic correction for having looked at all of them).

p-values count the observed run as one of the permutations: (1 + #(null >= observed)) / (1 + n),
never 0, and 1 / (1 + n) at best.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stsnb.core.errors import ConfigError
from stsnb.core.metrics import roc_auc
from stsnb.training.folds import permutation_draw
from stsnb.training.logistic import DEFAULT_CS, nested_cv_batch, patient_folds

#: Mixed into each permutation's seed, with the seed and the permutation number.
#: An AUC of the null within this of the observed one counts as reaching it.
_TIE_TOL = 1e-12


@dataclass(frozen=True)
class PermutationResult:
    """Observed patient AUC per combination and the null AUCs (n_permutations, n_combos)."""

    observed: dict[int, float]
    null: np.ndarray
    combos: tuple[int, ...]
    seconds: float  # wall seconds of the whole test (observed run included)


def _cv_aucs(stack: np.ndarray, y: np.ndarray, n_folds: int, seed: int,
             Cs: Sequence[float] | np.ndarray, inner_folds: int,
             balanced: bool = False) -> np.ndarray:
    """Patient AUC of the nested CV of each matrix in `stack` (m, p, d) on labels y."""
    folds = patient_folds(y, n_folds, seed)
    probs, _, _ = nested_cv_batch(stack, y, folds, Cs, inner_folds, seed, balanced)
    return np.atleast_1d(roc_auc(y, probs))


def cv_auc(X: np.ndarray, y: np.ndarray, n_folds: int, seed: int,
           Cs: Sequence[float] | np.ndarray = DEFAULT_CS, inner_folds: int = 3,
           balanced: bool = False) -> float:
    """Patient ROC AUC of the out-of-fold probabilities of `nested_cv_probs` on
    `patient_folds(y, n_folds, seed)` (X: (p, d) patient matrix)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ConfigError(f"The patient matrix must be (p, d); got shape {X.shape}.")
    return float(_cv_aucs(X[None], np.asarray(y), n_folds, seed, Cs, inner_folds,
                          balanced)[0])


def permutation_null(features: Mapping[int, np.ndarray], y: np.ndarray, n_folds: int,
                     seed: int, n_permutations: int,
                     Cs: Sequence[float] | np.ndarray = DEFAULT_CS,
                     inner_folds: int = 3, balanced: bool = False) -> PermutationResult:
    """Observed and permutation-null patient AUCs of the nested CV of each combination.

    `features`: combination number -> (p, d) patient matrix, rows in the order of `y` (the
    same patients in the same order for every combination; d may differ between them).
    """
    if not features:
        raise ConfigError("permutation_null needs at least one combination's patient matrix.")
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise ConfigError(f"n_permutations must be a positive integer; got {n_permutations}.")
    y = np.asarray(y)
    combos = tuple(int(c) for c in features)
    matrices = [np.asarray(features[c], dtype=np.float64) for c in features]
    for combo, matrix in zip(combos, matrices, strict=True):
        if matrix.ndim != 2 or len(matrix) != len(y):
            raise ConfigError(f"Combination {combo}: the patient matrix must be (p, d) with one "
                              f"row per label ({len(y)}); got shape {matrix.shape}.")
    widths = {m.shape[1] for m in matrices}
    groups = ([list(range(len(combos)))] if len(widths) == 1 else
              [[i for i, m in enumerate(matrices) if m.shape[1] == w] for w in sorted(widths)])
    stacks = [np.stack([matrices[i] for i in group]) for group in groups]

    def run(labels: np.ndarray) -> np.ndarray:
        aucs = np.empty(len(combos))
        for group, stack in zip(groups, stacks, strict=True):
            aucs[group] = _cv_aucs(stack, labels, n_folds, seed, Cs, inner_folds, balanced)
        return aucs

    return permuted_runs(run, y, seed, n_permutations, combos)


def permuted_runs(run: Callable[[np.ndarray], np.ndarray], y: np.ndarray, seed: int,
                  n_permutations: int, names: tuple) -> PermutationResult:
    """`run(labels)` (one AUC per name) on `y` and on permutations 1..n of it (the same
    permutations for every name, `permutation_draw`), timed."""
    started = time.perf_counter()
    observed = run(y)
    null = np.empty((int(n_permutations), len(names)))
    for k in range(1, int(n_permutations) + 1):
        null[k - 1] = run(permutation_draw(y, seed, k))
    return PermutationResult(observed=dict(zip(names, observed.tolist(), strict=True)),
                             null=null, combos=names, seconds=time.perf_counter() - started)


def p_values(result: PermutationResult) -> pd.DataFrame:
    """combo, patient_auc, p_value, p_best_corrected, n_permutations: one row per combination.

    p_value: against the combination's own null; p_best_corrected: against the largest AUC
    over all combinations in each permutation (>= p_value).
    """
    n = len(result.null)
    observed = np.array([result.observed[c] for c in result.combos])
    reach = result.null >= observed[None, :] - _TIE_TOL
    best = result.null.max(axis=1)
    reach_best = best[:, None] >= observed[None, :] - _TIE_TOL
    return pd.DataFrame({
        "combo": list(result.combos),
        "patient_auc": observed,
        "p_value": (1 + reach.sum(axis=0)) / (1 + n),
        "p_best_corrected": (1 + reach_best.sum(axis=0)) / (1 + n),
        "n_permutations": n,
    })


def null_quantile(result: PermutationResult, combo: int, q: float = 0.95) -> float:
    """The q-quantile of combination `combo`'s null AUCs."""
    if combo not in result.combos:
        raise ConfigError(f"Combination {combo} is not in the permutation test "
                          f"(combinations {list(result.combos)}).")
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"A quantile must lie in [0, 1]; got {q}.")
    return float(np.quantile(result.null[:, result.combos.index(combo)], q))
