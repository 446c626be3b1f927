"""L2 logistic regression per patient with a nested cross-validation, exact and batched.

The classifier is sklearn's ``make_pipeline(StandardScaler(), LogisticRegression(C=C))`` (L2
penalty on the weights, unpenalised intercept), solved exactly but faster:

- with p training patients and d = 512 features (p << d) the weights lie in the span of the
  standardised training rows Z (representer theorem), so with the eigendecomposition
  K = Z Z^T = U S U^T the problem is an ordinary logistic regression on the r <= p - 1 columns
  F = U S^(1/2) (test rows: K_test U S^(-1/2)), with the same penalty;
- Newton's method (with a backtracking line search) solves it for every C, training set and
  feature matrix at once, as one batch of small (r + 1)-square systems.

`nested_cv_probs` chooses C inside each outer training set (stratified inner folds over the
training patients only, mean inner ROC AUC, ties to the smaller C), refits on the whole training
set and predicts the held-out patients."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import numpy as np
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import ThreadpoolController

from stsnb.core.errors import ConfigError
from stsnb.core.metrics import roc_auc

#: Inverse penalty strengths (sklearn's C), ascending.
DEFAULT_CS = np.logspace(-4, 1, 6)


#: Eigenvalues of the training kernel below this fraction of the largest are dropped (the
#: centring alone makes one of them zero).
_RANK_TOL = 1e-10


#: Newton stops once no training margin moves by more than this (logits).
_MARGIN_TOL = 1e-4


_MAX_NEWTON = 100


#: C of an outer fold with fewer than 2 training patients of a class (no inner split possible;
#: sklearn's default C). Only tiny cohorts (the smoke tests) reach it.
FALLBACK_C = 1.0


#: Two mean inner AUCs closer than this count as a tie.
_TIE_TOL = 1e-12


@dataclass(frozen=True)
class NestedResult:
    """Nested cross-validation of one patient matrix.

    `prob`: out-of-fold probability of every patient (p,); `chosen_c`: the C chosen in each
    outer fold; `inner_auc`: its mean inner-fold ROC AUC (the best one) in each outer fold.
    """

    prob: np.ndarray
    chosen_c: np.ndarray
    inner_auc: np.ndarray


def _check_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ConfigError(f"Patient labels must be a vector of 0 and 1; got shape {y.shape} and "
                          f"values {sorted(set(np.unique(y).tolist()))[:5]}.")
    return y.astype(np.int64)


def _check_counts(y: np.ndarray, n_folds: int, what: str) -> None:
    counts = np.bincount(y, minlength=2)
    if counts.min() < n_folds:
        raise ConfigError(f"{n_folds}-fold {what} needs at least {n_folds} patients of each "
                          f"class; the labels have {int(counts[0])} negatives and "
                          f"{int(counts[1])} positives. Fix: use fewer folds or more patients.")


def patient_folds(labels: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Test positions of stratified k-fold over patients in the given order (callers pass
    patients sorted by id): the split of `stsnb.training.folds.make_folds(..., 'patient', ...)`."""
    y = _check_labels(labels)
    if int(n_folds) != n_folds or n_folds < 2:
        raise ConfigError(f"Cross-validation needs at least 2 folds; got {n_folds}.")
    _check_counts(y, int(n_folds), "cross-validation")
    splitter = StratifiedKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(y)), y)]


@cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block: the solver's matrices are small and many, and a
    threaded BLAS spends far longer (up to 100x on 2 busy cores) waking its threads than
    multiplying them."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def _row_space(x_train: np.ndarray, n_train: np.ndarray, x_test: np.ndarray,
               n_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-space coordinates of a batch of training sets and their test rows.

    `x_train` (B, a, d) and `x_test` (B, t, d) hold each set's rows in their first `n_train`
    (`n_test`) positions (the rest is padding); both are overwritten. The rows are standardised
    with their training set's mean and standard deviation (as StandardScaler, constant features
    left unscaled). With d <= a these standardised rows are returned; otherwise coordinates
    F_train (B, a, a), F_test (B, t, a) with the same inner products as the standardised rows
    (up to a constant column, which the unpenalised intercept absorbs): see `_factor`.
    """
    a, t = x_train.shape[1], x_test.shape[1]
    rows = (np.arange(a) < n_train[:, None]).astype(np.float64)
    test_rows = (np.arange(t) < n_test[:, None]).astype(np.float64)
    n = n_train[:, None].astype(np.float64)
    mean = (rows[:, None, :] @ x_train)[:, 0] / n
    z_train = np.subtract(x_train, mean[:, None], out=x_train)
    z_train *= rows[..., None]
    var = np.einsum("bad,bad->bd", z_train, z_train) / n
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var))[:, None]
    z_train /= scale
    z_test = np.subtract(x_test, mean[:, None], out=x_test)
    z_test /= scale
    z_test *= test_rows[..., None]
    if z_train.shape[2] <= a:  # no more features than rows: the features themselves
        return z_train, z_test
    # BLAS on one thread (see `one_blas_thread`): a threaded syrk is pathologically slow here.
    kernel = z_train @ z_train.transpose(0, 2, 1)
    cross = z_test @ z_train.transpose(0, 2, 1)
    return _factor(kernel, cross, rows, test_rows)


def _factor(kernel: np.ndarray, cross: np.ndarray, rows: np.ndarray,
            test_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F_train (B, a, a), F_test (B, t, a) with F_train F_train^T = K + s^2 1 1^T and
    F_test F_train^T = K_test + s^2 1 1^T (over the real rows; identity on the padding).

    Adding the constant feature s to every row changes nothing: its weight can move into the
    unpenalised intercept at no cost, so it is 0 at the optimum. It removes the zero eigenvalue
    of centring, so K + s^2 1 1^T is usually positive definite and its Cholesky factor serves
    as F_train; otherwise (repeated or collinear rows) the eigendecomposition of K gives an
    orthonormal basis of the row space, dropping null directions.
    """
    n = rows.sum(axis=1)
    trace = np.trace(kernel, axis1=1, axis2=2)
    s2 = np.where(trace > 0, trace / n, 1.0)[:, None, None]
    lifted = kernel + s2 * (rows[:, :, None] * rows[:, None, :])
    a = kernel.shape[1]
    lifted[:, np.arange(a), np.arange(a)] += 1.0 - rows
    try:
        lower = np.linalg.cholesky(lifted)
    except np.linalg.LinAlgError:
        lower = None
    if lower is not None:
        pivots = np.diagonal(lower, axis1=1, axis2=2) ** 2
        if np.all(pivots >= _RANK_TOL * s2[:, :, 0]):
            lifted_cross = cross + s2 * (test_rows[:, :, None] * rows[:, None, :])
            f_test = np.linalg.solve(lower, lifted_cross.transpose(0, 2, 1)).transpose(0, 2, 1)
            return lower, f_test
    eigval, eigvec = np.linalg.eigh(kernel)
    keep = eigval > _RANK_TOL * np.maximum(eigval[:, -1:], 0.0)
    root = np.sqrt(np.where(keep, eigval, 0.0))
    inv_root = np.where(keep, 1.0 / np.where(keep, root, 1.0), 0.0)
    return eigvec * root[:, None, :], (cross @ eigvec) * inv_root[:, None, :]


def _sigmoid(m: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * m))


def _objective(y: np.ndarray, w: np.ndarray, c: np.ndarray, beta: np.ndarray,
               margins: np.ndarray) -> np.ndarray:
    loss = (w * (np.logaddexp(0.0, margins) - y * margins)).sum(axis=1)
    return c * loss + 0.5 * (beta**2).sum(axis=1)


def _objective_at(f: np.ndarray, y: np.ndarray, w: np.ndarray, c: np.ndarray,
                  theta: np.ndarray) -> np.ndarray:
    margins = (f @ theta[:, :-1, None])[..., 0] + theta[:, -1:]
    return _objective(y, w, c, theta[:, :-1], margins)


def _newton(f: np.ndarray, y: np.ndarray, w: np.ndarray, c: np.ndarray,
            start: np.ndarray | None = None) -> np.ndarray:
    """Weights and intercept of L2 logistic regressions, one per problem: theta (Q, r + 1).

    Problem q has features f[q] (n, r), labels y[q], row weights w[q] (1 for a training row, 0
    for padding) and inverse penalty c[q]; it minimises
    c * sum_i w_i logloss_i + |beta|^2 / 2 over theta = (beta, intercept), the intercept
    unpenalised. Newton's method with a backtracking (Armijo) line search from `start` (or the
    intercept-only model), each problem until its step moves no margin by more than
    `_MARGIN_TOL`.
    """
    n_problems, r = len(c), f.shape[2]
    design = np.concatenate([f, np.ones(f.shape[:2] + (1,))], axis=2)
    ys, ws = y, w
    if start is None:
        rate = np.clip((ws * ys).sum(1) / ws.sum(1), 1e-6, 1 - 1e-6)
        theta = np.zeros((n_problems, r + 1))
        theta[:, r] = np.log(rate / (1 - rate))
    else:
        theta = start.copy()
    active = np.arange(n_problems)
    diagonal = np.arange(r + 1)
    penalty = np.ones(r + 1)
    penalty[r] = 1e-12  # the intercept: unpenalised, a hair of curvature for safety
    for _ in range(_MAX_NEWTON):
        if not active.size:
            break
        if len(active) == n_problems:
            da, ya, wa, ca, ta = design, ys, ws, c, theta
        else:
            da, ya, wa, ca = design[active], ys[active], ws[active], c[active]
            ta = theta[active]
        margins = (da @ ta[..., None])[..., 0]
        prob = _sigmoid(margins)
        resid = ca[:, None] * wa * (prob - ya)
        grad = (resid[:, None, :] @ da)[:, 0] + penalty * ta
        curv = ca[:, None] * wa * prob * (1 - prob)
        hess = da.transpose(0, 2, 1) @ (da * curv[..., None])
        hess[:, diagonal, diagonal] += penalty
        step = -np.linalg.solve(hess, grad[..., None])[..., 0]
        move = (da @ step[..., None])[..., 0]
        slope = (grad * step).sum(1)
        before = _objective(ya, wa, ca, ta[:, :r], margins)
        size = np.ones(len(active))
        todo = np.arange(len(active))
        for _ in range(40):
            trial = ta[todo] + size[todo, None] * step[todo]
            after = _objective(ya[todo], wa[todo], ca[todo], trial[:, :r],
                               margins[todo] + size[todo, None] * move[todo])
            slack = 1e-13 * (1 + np.abs(before[todo]))
            ok = after <= before[todo] + 1e-4 * size[todo] * slope[todo] + slack
            todo = todo[~ok]
            if not todo.size:
                break
            size[todo] *= 0.5
        theta[active] = ta + size[:, None] * step
        done = size * np.abs(move).max(axis=1) < _MARGIN_TOL
        active = active[~done]
    return theta


def balanced_row_weights(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row weights n / (2 n_class) of padded training sets (y, mask: (B, n); mask 1 for a row,
    0 for padding): sklearn's ``class_weight="balanced"``; plain `mask` for a one-class set."""
    n = mask.sum(axis=1, keepdims=True)
    positives = (mask * (y == 1)).sum(axis=1, keepdims=True)
    negatives = n - positives
    both = (positives > 0) & (negatives > 0)
    w_pos = np.divide(n, 2 * positives, out=np.ones_like(n), where=both)
    w_neg = np.divide(n, 2 * negatives, out=np.ones_like(n), where=both)
    return mask * np.where(y == 1, w_pos, w_neg)


def _fit_batch(x_train: np.ndarray, y_train: np.ndarray, n_train: np.ndarray,
               x_test: np.ndarray, n_test: np.ndarray, c: np.ndarray,
               balanced: bool = False) -> np.ndarray:
    """Test probabilities (B, k, t) of B padded training sets, each fitted for its k values
    of C (`c` (B, k)); `balanced`: rows weighted n / (2 n_class) (sklearn's
    ``class_weight="balanced"``).

    The k fits of a set run from the smallest C up, each starting from the previous solution
    (a continuation path: a few Newton steps per C instead of many from scratch).
    """
    f_train, f_test = _row_space(x_train, n_train, x_test, n_test)
    weights = (np.arange(x_train.shape[1]) < n_train[:, None]).astype(np.float64)
    y = y_train.astype(np.float64)
    if balanced:
        weights = balanced_row_weights(y, weights)
    n_sets, k = c.shape
    sets = np.arange(n_sets)
    order = np.argsort(c, axis=1, kind="stable")
    log_c = np.log(np.take_along_axis(c, order, axis=1))
    prob = np.empty((n_sets, k, x_test.shape[1]))
    theta = previous = None
    for j in range(k):
        column = order[:, j]
        cs = c[sets, column]
        start = theta
        if previous is not None:  # the secant of the path in log C, if it starts lower
            gap = log_c[:, j - 1] - log_c[:, j - 2]
            ratio = np.divide(log_c[:, j] - log_c[:, j - 1], gap, out=np.zeros(n_sets),
                              where=gap > 0)
            guess = theta + ratio[:, None] * (theta - previous)
            better = (_objective_at(f_train, y, weights, cs, guess)
                      < _objective_at(f_train, y, weights, cs, theta))
            start = np.where(better[:, None], guess, theta)
        previous = theta
        theta = _newton(f_train, y, weights, cs, start)
        margins = (f_test @ theta[:, :-1, None])[..., 0] + theta[:, -1:]
        prob[sets, column] = _sigmoid(margins)
    return prob


def _check_cs(cs: Sequence[float] | np.ndarray) -> np.ndarray:
    cs = np.asarray(cs, dtype=np.float64).ravel()
    if not cs.size or not np.all(np.isfinite(cs)) or np.any(cs <= 0):
        raise ConfigError(f"The inverse penalties C must be positive and finite; got {cs}.")
    return cs


def fit_predict_logistic(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
                         Cs: Sequence[float] | np.ndarray = DEFAULT_CS,
                         balanced: bool = False) -> np.ndarray:
    """(len(Cs), n_test) probabilities of class 1 from StandardScaler + L2 logistic regression
    fitted on (X_train, y_train) for each C (sklearn's inverse penalty); `balanced` = sklearn's
    ``class_weight="balanced"``."""
    x_train = np.array(X_train, dtype=np.float64)  # copies: the solver works in place
    x_test = np.array(X_test, dtype=np.float64)
    y = _check_labels(y_train)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ConfigError(f"fit_predict_logistic needs 2-d training and test rows with the same "
                          f"columns; got {x_train.shape} and {x_test.shape}.")
    if len(y) != len(x_train) or len(np.unique(y)) < 2:
        raise ConfigError("fit_predict_logistic needs one label per training row and both "
                          "classes among them.")
    cs = _check_cs(Cs)
    with one_blas_thread():
        return _fit_batch(x_train[None], y[None], np.array([len(y)]), x_test[None],
                          np.array([len(x_test)]), cs[None], balanced)[0]


def fit_predict_batch(x_train: np.ndarray, y_train: np.ndarray, n_train: np.ndarray,
                      x_test: np.ndarray, n_test: np.ndarray, c: np.ndarray,
                      balanced: bool = False) -> np.ndarray:
    """Test probabilities (B, k, t) of B padded training sets, StandardScaler + L2 logistic
    regression for each of a set's k values of C (`c` (B, k)).

    `x_train` (B, a, d) and `x_test` (B, t, d) hold each set's rows in their first `n_train`
    (`n_test`) positions, labels `y_train` (B, a) likewise (the rest is padding); `balanced` =
    sklearn's ``class_weight="balanced"``. The inputs are copied (the solver works in place).
    """
    with one_blas_thread():
        return _fit_batch(np.array(x_train, dtype=np.float64), np.asarray(y_train),
                          np.asarray(n_train), np.array(x_test, dtype=np.float64),
                          np.asarray(n_test), np.asarray(c, dtype=np.float64), balanced)


def _pad(groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays padded with 0 into one (len(groups), longest) array, and their lengths."""
    lengths = np.array([len(g) for g in groups])
    out = np.zeros((len(groups), lengths.max()), dtype=np.int64)
    for i, g in enumerate(groups):
        out[i, :len(g)] = g
    return out, lengths


def _gather(stack: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows `index` (S, a) of every matrix in `stack` (m, p, d), as one (m * S, a, d) array."""
    m, _, d = stack.shape
    return np.take(stack, index.ravel(), axis=1).reshape(m * len(index), index.shape[1], d)


def _inner_splits(train: np.ndarray, y: np.ndarray, inner_folds: int,
                  seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    counts = np.bincount(y[train], minlength=2)
    k = int(min(inner_folds, counts.min()))
    if counts.min() < 1:
        raise ConfigError(f"An outer training fold has a single class ({int(counts[0])} "
                          f"negatives, {int(counts[1])} positives). Fix: fewer outer folds.")
    if k < 2:  # too few patients of a class to choose C: FALLBACK_C (recorded, inner AUC NaN)
        return []
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(train[a], train[b]) for a, b in splitter.split(np.zeros(len(train)), y[train])]


def nested_cv_batch(stack: np.ndarray, y: np.ndarray, test_folds: Sequence[np.ndarray],
                    Cs: Sequence[float] | np.ndarray = DEFAULT_CS, inner_folds: int = 3,
                    seed: int = 0, balanced: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nested CV of several patient matrices `stack` (m, p, d) on the same labels and folds.

    Returns out-of-fold probabilities (m, p), the chosen C (m, n_folds) and its mean inner AUC
    (m, n_folds); see `nested_cv_probs`.
    """
    with one_blas_thread():
        return _nested_cv_batch(stack, y, test_folds, Cs, inner_folds, seed, balanced)


def _nested_cv_batch(stack: np.ndarray, y: np.ndarray, test_folds: Sequence[np.ndarray],
                     cs: Sequence[float] | np.ndarray, inner_folds: int,
                     seed: int, balanced: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stack = np.asarray(stack, dtype=np.float64)
    y = _check_labels(y)
    cs = _check_cs(cs)
    if stack.ndim != 3 or stack.shape[1] != len(y):
        raise ConfigError(f"Patient matrices must be (m, p, d) with one row per label; got "
                          f"{stack.shape} for {len(y)} labels.")
    if int(inner_folds) != inner_folds or inner_folds < 2:
        raise ConfigError(f"Choosing C needs at least 2 inner folds; got {inner_folds}.")
    folds = [np.sort(np.asarray(t, dtype=np.int64)) for t in test_folds]
    every = np.concatenate(folds) if folds else np.array([], dtype=np.int64)
    if len(folds) < 2 or len(every) != len(y) or not np.array_equal(np.sort(every),
                                                                   np.arange(len(y))):
        raise ConfigError("The test folds must split the patients: every patient in exactly one "
                          f"of at least two folds ({len(y)} patients, {len(every)} test "
                          f"positions in {len(folds)} folds).")
    m, n_folds = len(stack), len(folds)
    trains = [np.setdiff1d(np.arange(len(y)), t) for t in folds]
    # Phase 1: every inner split of every outer training set, for every C and every matrix.
    splits = [(o, tr, te) for o, train in enumerate(trains)
              for tr, te in _inner_splits(train, y, int(inner_folds), seed)]
    inner = np.zeros((m, n_folds, len(cs)))
    count = np.zeros(n_folds)
    if splits:
        tr_idx, tr_n = _pad([s[1] for s in splits])
        te_idx, te_n = _pad([s[2] for s in splits])
        n_splits = len(splits)
        prob = _fit_batch(_gather(stack, tr_idx), np.tile(y[tr_idx], (m, 1)), np.tile(tr_n, m),
                          _gather(stack, te_idx), np.tile(te_n, m),
                          np.broadcast_to(cs, (m * n_splits, len(cs))), balanced)
        prob = prob.reshape(m, n_splits, len(cs), -1)
        for s, (o, _, te) in enumerate(splits):
            inner[:, o] += roc_auc(y[te], prob[:, s, :, :len(te)])
            count[o] += 1
    no_inner = count == 0  # folds too small for an inner split: FALLBACK_C
    inner /= np.maximum(count, 1)[None, :, None]
    inner[:, no_inner] = 0.0
    best = inner.max(axis=2, keepdims=True)
    tied = inner >= best - _TIE_TOL
    chosen = np.where(tied, cs, np.inf).min(axis=2)  # ties: the smaller C
    chosen[:, no_inner] = FALLBACK_C
    best[:, no_inner] = np.nan
    # Phase 2: each outer training set refitted with its chosen C.
    otr_idx, otr_n = _pad(trains)
    ote_idx, ote_n = _pad(folds)
    out = _fit_batch(_gather(stack, otr_idx),
                     np.tile(y[otr_idx], (m, 1)), np.tile(otr_n, m),
                     _gather(stack, ote_idx),
                     np.tile(ote_n, m), chosen.reshape(-1, 1), balanced)
    out = out.reshape(m, n_folds, -1)
    probs = np.zeros((m, len(y)))
    for o, test in enumerate(folds):
        probs[:, test] = out[:, o, :len(test)]
    return probs, chosen, best[..., 0]


def nested_cv_probs(X: np.ndarray, y: np.ndarray, test_folds: Sequence[np.ndarray],
                    Cs: Sequence[float] | np.ndarray = DEFAULT_CS, inner_folds: int = 3,
                    seed: int = 0, balanced: bool = False) -> NestedResult:
    """Out-of-fold probabilities of the patients (rows of X) under nested cross-validation.

    For each outer fold (`test_folds`: test positions), C is chosen on the training patients
    only: stratified inner folds (min(inner_folds, smallest class count) of them, shuffled with
    `seed`), the mean inner ROC AUC of each C, ties to the smaller C; the model is refitted on
    all training patients with that C and predicts the fold's test patients. `balanced`: rows
    weighted n / (2 n_class) of each training set (sklearn's ``class_weight="balanced"``).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ConfigError(f"The patient matrix must be (p, d); got shape {X.shape}.")
    probs, chosen, inner = nested_cv_batch(X[None], y, test_folds, Cs, inner_folds, seed,
                                           balanced)
    return NestedResult(prob=probs[0], chosen_c=chosen[0], inner_auc=inner[0])
