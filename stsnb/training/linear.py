"""The linear head's inputs: pooled frozen features per slice and per patient.

The cached features of a slice are VGG's 7x7 average pool of 512 channels. `pool_features`
reduces them to 512 numbers per slice, either the mean over the 7x7 cells (``global``) or the
mean weighted by the fraction of each cell inside the GTV (``gtv``); `patient_matrix` averages a
patient's slices into one row. The classifier on them is `stsnb.training.logistic`."""

from __future__ import annotations

import numpy as np

from stsnb.core.errors import ConfigError, checked_name

POOLINGS = ("global", "gtv")


#: VGG's average pool: channels and cells per side of the cached features.
CHANNELS = 512


CELLS = 7


def _cell_edges(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of the 7 adaptive-pooling windows along an axis of `size`."""
    i = np.arange(CELLS)
    return (i * size) // CELLS, -((-(i + 1) * size) // CELLS)


def mask_fractions(masks: np.ndarray) -> np.ndarray:
    """(n, 7, 7) fraction of each cell inside the mask (area average, like torch's
    adaptive_avg_pool2d, for any H and W) from bool masks (n, H, W)."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1] < 1 or masks.shape[2] < 1:
        raise ConfigError(f"GTV masks must be (n_slices, H, W); got shape {masks.shape}.")
    n, h, w = masks.shape
    integral = np.zeros((n, h + 1, w + 1))
    integral[:, 1:, 1:] = masks.astype(np.float64).cumsum(1).cumsum(2)
    r0, r1 = _cell_edges(h)
    c0, c1 = _cell_edges(w)
    sums = (integral[:, r1[:, None], c1[None, :]] - integral[:, r0[:, None], c1[None, :]]
            - integral[:, r1[:, None], c0[None, :]] + integral[:, r0[:, None], c0[None, :]])
    return sums / ((r1 - r0)[:, None] * (c1 - c0)[None, :])


def pool_features(values: np.ndarray, masks: np.ndarray | None = None,
                  pooling: str = "global") -> np.ndarray:
    """(n, 512) float64 pooled features from cached features (n, 25088) or (n, 512, 7, 7).

    ``global``: mean over the 7x7 cells. ``gtv``: mean weighted by the fraction of each cell
    inside the slice's GTV (`masks`, bool (n, H, W)); a slice with an empty mask falls back to
    the global mean.
    """
    key = checked_name(pooling, POOLINGS, "pooling")
    values = np.asarray(values)
    size = CHANNELS * CELLS * CELLS
    if values.ndim == 2 and values.shape[1] == size:
        cells = values.reshape(len(values), CHANNELS, CELLS * CELLS)
    elif values.ndim == 4 and values.shape[1:] == (CHANNELS, CELLS, CELLS):
        cells = values.reshape(len(values), CHANNELS, CELLS * CELLS)
    else:
        raise ConfigError(f"Cached features must be (n_slices, {size}) or (n_slices, {CHANNELS}, "
                          f"{CELLS}, {CELLS}); got shape {values.shape}.")
    cells = cells.astype(np.float64, copy=False)
    pooled = cells.mean(axis=2)
    if key == "global":
        if masks is not None:
            raise ConfigError("Global pooling takes no GTV masks; pass pooling='gtv' to use them.")
        return pooled
    if masks is None:
        raise ConfigError("GTV pooling needs the slices' GTV masks (bool, n_slices x H x W).")
    masks = np.asarray(masks)
    if masks.ndim != 3 or len(masks) != len(values):
        raise ConfigError(f"GTV pooling needs one mask (H x W) per slice: {len(values)} slices, "
                          f"masks of shape {masks.shape}.")
    weights = mask_fractions(masks).reshape(len(masks), CELLS * CELLS)
    total = weights.sum(axis=1)
    inside = total > 0
    if inside.any():
        pooled[inside] = np.einsum("ncq,nq->nc", cells[inside], weights[inside]) / total[
            inside, None]
    return pooled


def patient_matrix(pooled: np.ndarray, patient_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique patient ids, (p, d) mean of each patient's rows of `pooled`)."""
    pooled = np.asarray(pooled, dtype=np.float64)
    patient_ids = np.asarray(patient_ids)
    if pooled.ndim != 2 or patient_ids.shape != (len(pooled),):
        raise ConfigError(f"patient_matrix needs rows (n, d) and one patient id per row; got "
                          f"{pooled.shape} and {patient_ids.shape}.")
    if not len(pooled):
        raise ConfigError("patient_matrix got no rows.")
    names, inverse, counts = np.unique(patient_ids, return_inverse=True, return_counts=True)
    sums = np.zeros((len(names), pooled.shape[1]))
    np.add.at(sums, inverse.ravel(), pooled)
    return names, sums / counts[:, None]
