"""Frozen VGG features (VGG-19 or VGG-16, as resolved), computed once per slice and cached.

The convolutions are frozen and there is no augmentation, so a slice's convolutional features
(VGG features + 7x7 average pool, 25088 numbers at any input size) never change during training:
they are computed once and the head trains on them. The cache lives in
``work_dir/features/<key>/`` (one shard per patient, each written atomically) where the key is
what made the numbers: the slice store's key, the three channels, the weights (file SHA-256, or
the seed of random weights) and the precision. A rerun reuses every shard that exists.

Precision 'bf16' (the fast path) runs the convolutions in bfloat16 autocast with channels_last
memory, on CPU (AMX) and CUDA; its features are stored as the exact bfloat16 values (2 bytes
each). 'fp32' stores float32.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from stsnb.core.errors import ConfigError
from stsnb.core.manifest import software_key
from stsnb.core.store import (
    atomic_path,
    hash_config,
    read_json,
    remove_stale_temporaries,
    require_free_space,
    write_json_atomic,
)
from stsnb.training.model import (
    N_FEATURES,
    ModelBundle,
    backbone_forward,
    backbone_name,
    prepare_backbone,
)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
FEATURE_DIR = "features"
#: Images per forward pass of the frozen part.
BATCH = {"cpu": 16, "cuda": 128}


class SliceSource(Protocol):
    """What training reads from a slice store (`stsnb.slices.SliceStore` or `ArraySlices`)."""

    index: pd.DataFrame

    @property
    def modalities(self) -> tuple[str, ...]: ...

    @property
    def input_px(self) -> int: ...

    @property
    def key_hash(self) -> str: ...

    def images(self, rows: Sequence[int], channels: tuple[str, str, str]) -> np.ndarray: ...


class ArraySlices:
    """Slices held in memory behind the SliceStore reading interface (benchmarks, own arrays).

    `images`: (n, n_modalities, H, W) in [0, 1], channels in `modalities` order; `index`: one row
    per slice with at least patient_id, slice_index and label.
    """

    def __init__(self, images: np.ndarray, index: pd.DataFrame, modalities: Sequence[str],
                 key_hash: str | None = None) -> None:
        if images.ndim != 4 or images.shape[1] != len(modalities) or len(index) != len(images):
            raise ConfigError(f"ArraySlices needs images (n, {len(modalities)}, H, W) and one "
                              f"index row per image; got {images.shape} and {len(index)} rows.")
        self._images = images
        self.index = index.reset_index(drop=True).assign(row=np.arange(len(index)))
        self._modalities = tuple(modalities)
        if key_hash is None:
            digest = hashlib.sha256(np.ascontiguousarray(images).data)
            digest.update(self.index.to_csv(index=False).encode("utf-8"))
            digest.update(repr((images.shape, images.dtype.str, self._modalities)).encode())
            key_hash = digest.hexdigest()
        self._key = key_hash

    @property
    def modalities(self) -> tuple[str, ...]:
        return self._modalities

    @property
    def input_px(self) -> int:
        return int(self._images.shape[-1])

    @property
    def key_hash(self) -> str:
        return self._key

    def images(self, rows: Sequence[int], channels: tuple[str, str, str]) -> np.ndarray:
        """float32 (n, 3, H, W): the named modalities as R, G, B."""
        unknown = [c for c in channels if c not in self._modalities]
        if unknown:
            raise ConfigError(f"Channels {unknown} are not among {self._modalities}.")
        picks = [self._modalities.index(c) for c in channels]
        return self._images[np.asarray(rows)][:, picks].astype(np.float32)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' = CUDA when present, else CPU; ConfigError for an unknown or absent device."""
    key = str(device).strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key == "cuda" or key.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but torch sees no CUDA device. Fix: "
                              "device='auto' or 'cpu'.")
        return torch.device(key)
    raise ConfigError(f"Unknown device {device!r}: expected one of {', '.join(DEVICES)}.")


def bf16_supported(device: torch.device) -> bool:
    """True when bfloat16 convolutions run natively (CUDA with bf16; CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' = on a GPU, 'bf16' where it runs natively; on a CPU, this machine's measured
    choice (`stsnb.training.precision.cpu_precision`: bf16 only when >= 1.3x faster, decided
    once)."""
    key = str(precision).strip().lower()
    if key == "auto":
        if device.type == "cpu":
            from stsnb.training.precision import cpu_precision

            return cpu_precision().precision
        return "bf16" if bf16_supported(device) else "fp32"
    if key not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}: expected one of "
                          f"{', '.join(PRECISIONS)}.")
    return key


def feature_key(source: SliceSource, channels: Sequence[str], bundle: ModelBundle,
                precision: str) -> dict[str, Any]:
    """Everything the cached numbers depend on."""
    weights = bundle.weights
    return {"kind": f"{weights.backbone} features+avgpool", "store": source.key_hash,
            "channels": list(channels), "input_px": int(source.input_px),
            "weights": weights.identity(), "precision": precision,
            "transform": weights.transform, "software": software_key("features")}


def compute_features(source: SliceSource, rows: np.ndarray, channels: Sequence[str],
                     bundle: ModelBundle, device: torch.device, precision: str,
                     batch_size: int | None = None) -> np.ndarray:
    """float32 (len(rows), 25088) features of the given store rows (no cache)."""
    batch_size = batch_size or BATCH.get(device.type, 16)
    out = np.empty((len(rows), N_FEATURES), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = torch.from_numpy(source.images(chunk, tuple(channels))).to(device)
        out[start:start + len(chunk)] = backbone_forward(bundle, images, precision).cpu().numpy()
    return out


def _encode(values: np.ndarray, precision: str) -> np.ndarray:
    if precision == "bf16":  # exact: the values are bfloat16 widened to float32
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    return values


def _decode(stored: np.ndarray) -> np.ndarray:
    if stored.dtype == np.uint16:
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(stored, dtype=np.float32)


@dataclass
class Features:
    """Cached features of every slice (index order) and what making them took."""

    values: np.ndarray  # float32 (n_slices, 25088), rows in slice-index order
    key: dict[str, Any]
    key_hash: str
    dir: Path
    computed_patients: int  # patients computed by this call (0 = all reused)
    seconds: float  # spent computing in this call
    total_seconds: float  # spent computing this cache, over every call that added to it

    @property
    def reused(self) -> bool:
        return self.computed_patients == 0


def cached_features(source: SliceSource, work_dir: str | Path, channels: Sequence[str],
                    bundle: ModelBundle, device: torch.device, precision: str,
                    batch_size: int | None = None, progress: bool = True) -> Features:
    """Features of every slice of `source`, from ``work_dir/features/<key>/`` or computed."""
    key = feature_key(source, channels, bundle, precision)
    key_hash = hash_config(key)
    root = Path(work_dir) / FEATURE_DIR / key_hash[:16]
    record_path = root / "cache.json"
    remove_stale_temporaries(root)  # shards cut off by a killed run
    previous = read_json(record_path)
    total = float(previous.get("seconds", 0.0)) if previous.get("key_hash") == key_hash else 0.0
    pids = source.index["patient_id"].astype(str).to_numpy()
    rows = source.index["row"].to_numpy(np.int64)
    values = np.empty((len(pids), N_FEATURES), dtype=np.float32)
    missing: list[tuple[str, np.ndarray]] = []
    for pid in pd.unique(pids):
        where = np.nonzero(pids == pid)[0]
        shard = root / f"{pid}.npy"
        stored = _load_shard(shard)
        if stored is not None and stored.shape == (len(where), N_FEATURES):
            values[where] = _decode(stored)
        else:
            missing.append((pid, where))
    seconds = 0.0
    if missing:
        n_rows = sum(len(where) for _, where in missing)
        require_free_space(root.parent, feature_bytes(n_rows, precision),
                           f"the {backbone_name(bundle.weights.backbone)} features of "
                           f"{len(missing)} patients ({n_rows} slices)")
        prepare_backbone(bundle, device, precision)
    bar = tqdm(total=len(missing), desc="features", unit="patient", disable=not progress,
               leave=False)
    group_rows = 4 * (batch_size or BATCH.get(device.type, 16))
    for group in _groups(missing, group_rows):  # several patients per forward pass
        started = time.perf_counter()
        where = np.concatenate([w for _, w in group])
        block = compute_features(source, rows[where], channels, bundle, device, precision,
                                 batch_size)
        start = 0
        for pid, part in group:
            stored = _encode(block[start:start + len(part)], precision)
            with atomic_path(root / f"{pid}.npy") as tmp:
                np.save(tmp, stored)
            values[part] = _decode(stored)
            start += len(part)
        seconds += time.perf_counter() - started
        bar.update(len(group))
    bar.close()
    total += seconds
    if missing or not previous:
        write_json_atomic(record_path, {"key": key, "key_hash": key_hash, "seconds": total,
                                        "n_features": N_FEATURES, "device": str(device)})
    return Features(values, key, key_hash, root, len(missing), seconds, total)


def feature_bytes(n_rows: int, precision: str) -> int:
    """Bytes on disk of the cached features of `n_rows` slices (npy headers aside)."""
    return int(n_rows) * N_FEATURES * (2 if precision == "bf16" else 4)


def _groups(items: list[tuple[str, np.ndarray]],
            rows: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Consecutive patients gathered until they hold at least `rows` slices."""
    group: list[tuple[str, np.ndarray]] = []
    for item in items:
        group.append(item)
        if sum(len(w) for _, w in group) >= rows:
            yield group
            group = []
    if group:
        yield group


def _load_shard(path: Path) -> np.ndarray | None:
    """A cached shard, or None when absent or unreadable (then it is computed again)."""
    try:
        return np.load(path) if path.exists() else None
    except (OSError, ValueError):
        return None


def read_feature_cache(work_dir: str | Path, features_dir: str, source: SliceSource,
                       key_hash: str) -> np.ndarray:
    """float32 (n_slices, 25088): a complete cache of ``work_dir/features/<dir>/`` in index order.

    The cache a finished run recorded (`features_dir`, `key_hash` of its run.json); StsnbError
    when the cache is not that one or a patient's shard is missing (rerun chapter 04).
    """
    root = Path(work_dir) / FEATURE_DIR / features_dir
    record = read_json(root / "cache.json")
    if record.get("key_hash") != key_hash:
        raise ConfigError(f"The feature cache {root} is not the one this run used (key "
                          f"{str(record.get('key_hash'))[:12]} != {key_hash[:12]}). Fix: rerun "
                          "chapter 04 for this combination.")
    pids = source.index["patient_id"].astype(str).to_numpy()
    values = np.empty((len(pids), N_FEATURES), dtype=np.float32)
    for pid in pd.unique(pids):
        where = np.nonzero(pids == pid)[0]
        stored = _load_shard(root / f"{pid}.npy")
        if stored is None or stored.shape != (len(where), N_FEATURES):
            raise ConfigError(f"The feature cache {root} has no complete shard for patient "
                              f"{pid}. Fix: rerun chapter 04 for this combination.")
        values[where] = _decode(stored)
    return values
