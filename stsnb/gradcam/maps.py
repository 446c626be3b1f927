"""Stage 06: Grad-CAM on the backbone's last convolution, and how much of it lies in the GTV.

Maps come from the grad-cam package (pytorch-grad-cam) on each fold's own network and that
fold's test slices, for the class the network predicted for the slice (what drove its decision;
`target="positive"` maps the class "distant metastasis" for every slice instead). A map's *mass*
is the sum of its values; the share inside the GTV is compared with the share chance would give
(GTV area / body area). A map with no mass (Grad-CAM's ReLU removed every pixel: no positive
evidence for the class in the last convolutional layer) has no share; such maps are counted and
left out of the means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy import ndimage
from torch import nn

from stsnb.core.errors import StsnbError
from stsnb.core.metrics import THRESHOLD, outcome_class
from stsnb.core.store import write_csv_atomic
from stsnb.training.model import ModelBundle

#: Positive class index of the two-class head (distant metastasis).
POSITIVE_CLASS = 1
#: Width of the ring around the GTV, mm.
RING_MM = 10.0
#: Normalized CT above which a pixel counts as body (air is 0 after min-max over the slab).
BODY_THRESHOLD = 0.05
#: Chapter 06's tables in the work dir (read by the reporting page).
GRADCAM_DIR = "gradcam"
SHARES_FILE = "shares.csv"


class _NormalizedInput(nn.Module):
    """The network with its ImageNet input normalization in front: takes [0, 1] RGB."""

    def __init__(self, bundle: ModelBundle) -> None:
        super().__init__()
        self.transform = bundle.transform
        self.model = bundle.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


def last_conv_layer(model: nn.Module) -> nn.Conv2d:
    """The backbone's last convolution (VGG-19 `features[34]`, VGG-16 `features[28]`; 14 x 14
    at 224 px), found by type, not by index."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    if not convs:
        raise StsnbError("The model has no convolutional layer for Grad-CAM.")
    return convs[-1]


def gradcam_maps(bundle: ModelBundle, images: np.ndarray,
                 target_class: int | np.ndarray = POSITIVE_CLASS,
                 batch_size: int = 8) -> np.ndarray:
    """Grad-CAM maps (n, H, W) in [0, 1] for [0, 1] RGB inputs (n, 3, H, W), in float32.

    `target_class`: one class for every image, or one per image.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise StsnbError(f"Grad-CAM expects (n, 3, H, W) images; got shape {images.shape}.")
    classes = np.broadcast_to(np.asarray(target_class, dtype=np.int64), (len(images),))
    wrapped = _NormalizedInput(bundle).float().eval()
    device = next(bundle.model.parameters()).device
    wrapped.to(device).to(memory_format=torch.contiguous_format)
    layer = last_conv_layer(bundle.model)
    maps = []
    with GradCAM(model=wrapped, target_layers=[layer]) as cam:
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
            chunk = chunk.float().to(device).requires_grad_(True)
            targets = [ClassifierOutputTarget(int(c))
                       for c in classes[start:start + batch_size]]
            maps.append(cam(input_tensor=chunk, targets=targets))
    return np.concatenate(maps).astype(np.float32)


def ring_mask(gtv: np.ndarray, width_px: int) -> np.ndarray:
    """Pixels within `width_px` of the GTV but outside it (bool, same shape)."""
    grown = ndimage.binary_dilation(gtv, iterations=max(int(width_px), 1))
    return grown & ~gtv


def mass_shares(cam: np.ndarray, gtv: np.ndarray, body: np.ndarray,
                ring_px: int) -> dict[str, float]:
    """Share of one map's mass inside the GTV, in the ring around it, and chance's share.

    Chance = GTV area / body area (a map spread evenly over the body).
    """
    gtv, body = gtv.astype(bool), body.astype(bool) | gtv.astype(bool)
    total = float(cam.sum())
    ring = ring_mask(gtv, ring_px) & body
    share = (lambda m: float(cam[m].sum()) / total) if total > 0 else (lambda m: float("nan"))
    return {
        "share_gtv": share(gtv),
        "share_ring": share(ring),
        "chance_gtv": float(gtv.sum()) / max(float(body.sum()), 1.0),
        "chance_ring": float(ring.sum()) / max(float(body.sum()), 1.0),
    }


def overlay(rgb: np.ndarray, cam: np.ndarray, weight: float = 0.45) -> np.ndarray:
    """The map over the three input channels (3, H, W) in [0, 1] -> (H, W, 3) uint8, RGB order."""
    image = np.clip(np.moveaxis(rgb, 0, -1), 0.0, 1.0).astype(np.float32)
    return show_cam_on_image(image, cam, use_rgb=True, image_weight=1.0 - weight)


@dataclass
class GradCamResult:
    """Per-slice shares (the table) and the maps/inputs of the slices shown."""

    table: pd.DataFrame
    maps: np.ndarray
    images: np.ndarray
    gtv: np.ndarray
    combo: int


def select_slices(predictions: pd.DataFrame, per_fold: int, seed: int = 0) -> pd.DataFrame:
    """Up to `per_fold` test slices per fold, spread over the outcome classes (seeded)."""
    table = predictions.copy()
    table["outcome"] = [outcome_class(int(y), float(p))
                        for y, p in zip(table["label"], table["prob"], strict=True)]
    picked = []
    for _, group in table.groupby("fold"):
        shuffled = group.sample(frac=1.0, random_state=seed)
        by_class = [g for _, g in shuffled.groupby("outcome")]
        take = []
        while len(take) < per_fold and any(len(g) for g in by_class):
            for i, g in enumerate(by_class):
                if len(g) and len(take) < per_fold:
                    take.append(g.iloc[0])
                    by_class[i] = g.iloc[1:]
        picked.append(pd.DataFrame(take))
    return pd.concat(picked, ignore_index=True)


def body_masks(store, rows: np.ndarray) -> np.ndarray:
    """Body pixels of each stored slice: CT above the air level, or any image non-zero."""
    if "ct" in store.modalities:
        return store.modality(rows, "ct") > BODY_THRESHOLD
    stacked = store.images(rows, tuple(store.modalities[:3]))
    return stacked.max(axis=1) > 0


#: Which class each map explains: the network's prediction, or distant metastasis for all.
TARGETS = ("predicted", "positive")


def run_gradcam(work_dir: str | Path, combo: int, store, split: str = "patient",
                per_fold: int = 8, device: str = "cpu", seed: int = 0,
                target: str = "predicted") -> GradCamResult:
    """Grad-CAM of each fold's network on its own test slices, with the mass shares."""
    if target not in TARGETS:
        raise StsnbError(f"Grad-CAM target {target!r}: expected one of {', '.join(TARGETS)}.")
    from stsnb.core.combinations import resolve_combo
    from stsnb.core.runs import load_predictions, predictions_path
    from stsnb.training.stage import fold_model

    combination = resolve_combo(combo, tuple(store.modalities))
    predictions = load_predictions(predictions_path(work_dir, split, combination.number))
    chosen = select_slices(predictions, per_fold, seed)
    chosen["cam_class"] = ((chosen["prob"] >= THRESHOLD).astype(np.int64) if target == "predicted"
                           else POSITIVE_CLASS)
    lookup = store.index.set_index(["patient_id", "slice_index"])["row"]
    chosen["row"] = [int(lookup.loc[(p, s)]) for p, s in
                     zip(chosen["patient_id"], chosen["slice_index"], strict=True)]
    maps, images, gtvs, rows_out = [], [], [], []
    for fold, group in chosen.groupby("fold", sort=True):
        bundle = fold_model(work_dir, split, combination.number, int(fold), store, device=device)
        rows = group["row"].to_numpy()
        rgb = store.images(rows, combination.channels)
        maps.append(gradcam_maps(bundle, rgb, group["cam_class"].to_numpy()))
        images.append(rgb)
        gtvs.append(store.gtv_masks(rows))
        rows_out.append(group)
    table = pd.concat(rows_out, ignore_index=True)
    maps_arr, images_arr, gtv_arr = (np.concatenate(maps), np.concatenate(images),
                                     np.concatenate(gtvs))
    body = body_masks(store, table["row"].to_numpy())
    pixel_mm = store.pixel_mm(table["row"].to_numpy())
    shares = [mass_shares(maps_arr[i], gtv_arr[i], body[i],
                          int(round(RING_MM / float(pixel_mm[i])))) for i in range(len(table))]
    table = pd.concat([table, pd.DataFrame(shares)], axis=1)
    table["empty_map"] = maps_arr.reshape(len(table), -1).sum(axis=1) <= 0
    return GradCamResult(table=table, maps=maps_arr, images=images_arr, gtv=gtv_arr,
                         combo=combination.number)


def share_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean share of map mass in the GTV and ring against chance, per fold and outcome class."""
    group_cols = ["fold", "label"]
    summary = table.groupby(group_cols)[["share_gtv", "chance_gtv", "share_ring",
                                         "chance_ring"]].mean()
    summary["n_slices"] = table.groupby(group_cols).size()
    if "empty_map" in table:
        summary["empty_maps"] = table.groupby(group_cols)["empty_map"].sum()
    summary["gtv_share_over_chance"] = summary["share_gtv"] / summary["chance_gtv"]
    return summary.reset_index()


def gtv_share_test(table: pd.DataFrame) -> dict[str, float]:
    """Is the map mass inside the GTV above chance? One-sided Wilcoxon signed-rank test of
    share_gtv - chance_gtv over the slices whose map has mass (paired per slice)."""
    from scipy.stats import wilcoxon

    kept = table[np.isfinite(table["share_gtv"])]
    diff = (kept["share_gtv"] - kept["chance_gtv"]).to_numpy()
    if len(diff) < 2 or np.allclose(diff, 0.0):
        return {"n": float(len(diff)), "median_difference": float(np.median(diff)) if len(diff)
                else float("nan"), "p_value": float("nan")}
    return {"n": float(len(diff)), "median_difference": float(np.median(diff)),
            "p_value": float(wilcoxon(diff, alternative="greater").pvalue)}


def gradcam_summary(result: GradCamResult) -> str:
    """The chapter's closing sentence: where the maps fall, against chance."""
    t = result.table
    if t.empty:
        return "No slices were analysed."
    empty = int(t["empty_map"].sum()) if "empty_map" in t else 0
    note = (f" {empty} of {len(t)} maps were empty (no positive evidence for the class in the "
            "last convolutional layer) and are left out of the shares." if empty else "")
    t = t[np.isfinite(t["share_gtv"])]
    if t.empty:
        return (f"Combination {result.combo}: every one of the {empty} maps was empty, so no "
                "share inside the GTV can be given.")
    test = gtv_share_test(t)
    verdict = (f"one-sided Wilcoxon signed-rank test of share minus chance over {int(test['n'])} "
               f"slices: p = {test['p_value']:.3g}"
               + (" (above chance at 5%)." if test["p_value"] < 0.05 else
                  " (not above chance at 5%)."))
    ratio = t["share_gtv"].mean() / max(t["chance_gtv"].mean(), 1e-9)
    by_label = t.groupby("label")["share_gtv"].mean()
    parts = ", ".join(f"{'DM+' if k == 1 else 'DM-'} {v:.2f}" for k, v in by_label.items())
    return (
        f"Combination {result.combo}, {len(t)} test slices over {t['fold'].nunique()} folds: "
        f"on average {t['share_gtv'].mean():.2f} of a map's mass lies inside the GTV "
        f"(chance {t['chance_gtv'].mean():.2f}, {ratio:.1f} times chance) and "
        f"{t['share_ring'].mean():.2f} in the 10 mm ring around it (chance "
        f"{t['chance_ring'].mean():.2f}). Inside-GTV share by outcome: {parts}; "
        + verdict + note
    )


def write_shares(work_dir: str | Path, table: pd.DataFrame) -> Path:
    """``work_dir/gradcam/shares.csv``: the per-slice shares of a chapter 06 run."""
    return write_csv_atomic(table, Path(work_dir) / GRADCAM_DIR / SHARES_FILE)
