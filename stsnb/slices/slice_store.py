"""The slice store on disk and its reader (`SliceStore`): one shard per patient, one index.

Layout under ``work_dir/slices/``:

- ``index.csv``: one row per stored slice: row (0..N-1), patient_id, slice_index (axial index in
  the patient's CT volume), z_mm (physical z of the slice centre), label (0/1), tumour_area_mm2
  (GTV area in that slice on the CT grid), shard (file name), shard_row;
- ``shards/<pid>.npy``: float16 (n_slices, n_modalities, input_px, input_px) in [0, 1], channels
  in the cohort's declared modality order; ``shards/<pid>_gtv.npy``: uint8 (n_slices, input_px,
  input_px), the GTV placed exactly like the images; ``shards/<pid>.json``: the patient's record
  (the key that made the shard, its index rows, its geometry and intensity summary);
- ``patients.csv`` (one row per patient: slab, margins, canvas pixel size), ``intensities.csv``
  (per patient and modality: raw quantiles over the kept slab, in HU, Gy or a.u.);
- ``store.json``: modalities, input_px, canvas_px, normalization, z_margin_mm, key_hash; written
  last, so a store without it is incomplete.

The ten combinations are read as views of the shards (memory-mapped), never copied on disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsnb.core.combinations import Combination
from stsnb.core.errors import ConfigError, StsnbError

STORE_DIR = "slices"
SHARD_DIR = "shards"
STORE_META = "store.json"
INDEX_FILE = "index.csv"
PATIENTS_FILE = "patients.csv"
INTENSITIES_FILE = "intensities.csv"
#: Bumped whenever the content or layout of a shard changes (part of every key).
STORE_FORMAT = 1
INDEX_COLUMNS = ("row", "patient_id", "slice_index", "z_mm", "label", "tumour_area_mm2",
                 "shard", "shard_row")


def store_dir(work_dir: str | Path) -> Path:
    """``work_dir/slices``."""
    return Path(work_dir) / STORE_DIR


def image_shard_name(patient_id: str) -> str:
    return f"{patient_id}.npy"


def mask_shard_name(patient_id: str) -> str:
    return f"{patient_id}_gtv.npy"


def record_name(patient_id: str) -> str:
    return f"{patient_id}.json"


@dataclass(frozen=True)
class BuildReport:
    """What one call of the builder did: patients rebuilt and reused, seconds."""

    built: tuple[str, ...]
    reused: tuple[str, ...]
    seconds: float
    warnings: tuple[str, ...] = ()

    @property
    def all_reused(self) -> bool:
        return not self.built


@dataclass
class SliceStore:
    """Read access to a complete slice store (open it with `SliceStore.open(work_dir)`)."""

    root: Path
    meta: dict[str, Any]
    index: pd.DataFrame
    patients: pd.DataFrame
    intensities: pd.DataFrame
    last_build: BuildReport | None = None
    _images: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, work_dir: str | Path) -> SliceStore:
        """Open ``work_dir/slices``; StsnbError when it is missing or incomplete."""
        root = store_dir(work_dir)
        meta_path = root / STORE_META
        if not meta_path.exists():
            state = "is incomplete (a build was interrupted or is running)" if root.exists() \
                else "does not exist"
            raise StsnbError(
                f"The slice store {root} {state}: {STORE_META} is missing. Fix: run chapter 03 "
                "(stsnb.slices.run_preprocessing) for this work dir; it reuses finished shards."
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            index = pd.read_csv(root / INDEX_FILE, dtype={"patient_id": str, "shard": str})
            patients = pd.read_csv(root / PATIENTS_FILE, dtype={"patient_id": str},
                                   keep_default_na=False)
            intensities = pd.read_csv(root / INTENSITIES_FILE, dtype={"patient_id": str})
        except (OSError, ValueError) as exc:
            raise StsnbError(
                f"The slice store {root} cannot be read ({exc}). Fix: rerun chapter 03."
            ) from exc
        if meta.get("format") != STORE_FORMAT:
            raise StsnbError(
                f"The slice store {root} has format {meta.get('format')}, this code reads "
                f"format {STORE_FORMAT}. Fix: rerun chapter 03 to rebuild it."
            )
        store = cls(root=root, meta=meta, index=index, patients=patients,
                    intensities=intensities)
        store._check()
        return store

    def _check(self) -> None:
        missing = [c for c in INDEX_COLUMNS if c not in self.index.columns]
        n = int(self.meta.get("n_rows", -1))
        if missing or len(self.index) != n or not np.array_equal(self.index["row"], np.arange(n)):
            raise StsnbError(
                f"The slice index {self.root / INDEX_FILE} does not match {STORE_META} "
                f"(missing columns {missing}, {len(self.index)} rows, expected {n} numbered "
                "0..N-1). Fix: rerun chapter 03."
            )
        expected = (len(self.modalities), self.input_px, self.input_px)
        for shard, rows in self.index.groupby("shard")["shard_row"]:
            path = self.root / SHARD_DIR / shard
            mask_path = path.with_name(path.stem + "_gtv.npy")
            for p in (path, mask_path):
                if not p.exists():
                    raise StsnbError(
                        f"The slice store {self.root} is incomplete: shard {p.name} is missing. "
                        "Fix: rerun chapter 03."
                    )
            images = np.load(path, mmap_mode="r")
            masks = np.load(mask_path, mmap_mode="r")
            count = len(rows)
            if (images.shape != (count, *expected) or images.dtype != np.float16
                    or masks.shape != (count, *expected[1:])
                    or sorted(rows) != list(range(count))):
                raise StsnbError(
                    f"Shard {path.name} of the slice store holds {images.shape} {images.dtype} "
                    f"(mask {masks.shape}), the index expects {(count, *expected)} float16. "
                    "Fix: rerun chapter 03."
                )
            self._images[shard] = images
            self._masks[shard] = masks

    # -- metadata -------------------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        """The stored channels, in the cohort's declared order."""
        return tuple(self.meta["modalities"])

    @property
    def input_px(self) -> int:
        return int(self.meta["input_px"])

    @property
    def canvas_px(self) -> int:
        return int(self.meta["canvas_px"])

    @property
    def normalization(self) -> str:
        return str(self.meta["normalization"])

    @property
    def z_margin_mm(self) -> float:
        return float(self.meta["z_margin_mm"])

    @property
    def key_hash(self) -> str:
        """Hash of the settings and of every patient's inputs that made this store."""
        return str(self.meta["key_hash"])

    def __len__(self) -> int:
        return len(self.index)

    def patient_rows(self, patient_id: str) -> np.ndarray:
        """Store rows of one patient, inferior slice first."""
        return self.index.loc[self.index["patient_id"] == str(patient_id), "row"].to_numpy()

    def pixel_mm(self, rows: Sequence[int]) -> np.ndarray:
        """Size (mm) of a stored pixel for each row (square pixels; varies between patients)."""
        sizes = self.patients.set_index("patient_id")["input_pixel_mm"]
        return self.index["patient_id"].iloc[self._rows(rows)].map(sizes).to_numpy(float)

    def content_box(self, patient_id: str) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1) of the input pixels fully covered by the patient's slice
        (the rest is zero padding or blends into it)."""
        row = self.patients.set_index("patient_id").loc[str(patient_id)]
        scale = self.input_px / self.canvas_px
        r0 = (self.canvas_px - int(row["placed_rows"])) // 2
        c0 = (self.canvas_px - int(row["placed_cols"])) // 2
        r1, c1 = r0 + int(row["placed_rows"]), c0 + int(row["placed_cols"])
        return (int(np.ceil(r0 * scale)), int(np.floor(r1 * scale)),
                int(np.ceil(c0 * scale)), int(np.floor(c1 * scale)))

    # -- data -----------------------------------------------------------------------------------
    def _rows(self, rows: Sequence[int]) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.index)):
            raise ConfigError(
                f"Slice store rows must lie in 0..{len(self.index) - 1}; got "
                f"{int(rows.min())}..{int(rows.max())}."
            )
        return rows

    def channel_indices(self, channels: Sequence[str] | Combination) -> np.ndarray:
        """Positions in the shards of the named channels (a Combination or modality names)."""
        names = channels.channels if isinstance(channels, Combination) else tuple(channels)
        unknown = [c for c in names if c not in self.modalities]
        if unknown:
            raise ConfigError(
                f"Channels {unknown} are not in the slice store; it holds "
                f"{', '.join(self.modalities)}."
            )
        return np.array([self.modalities.index(c) for c in names], dtype=np.int64)

    def _gather(self, rows: np.ndarray, read) -> None:
        shards = self.index["shard"].to_numpy()[rows]
        shard_rows = self.index["shard_row"].to_numpy()[rows]
        for shard in pd.unique(shards):
            where = np.nonzero(shards == shard)[0]
            read(shard, where, shard_rows[where])

    def images(self, rows: Sequence[int],
               channels: tuple[str, str, str] | Combination) -> np.ndarray:
        """float32 (n, 3, H, W) in [0, 1]: the named modalities as R, G, B for the given rows.

        Read from the memory-mapped shards: a combination is a view of the store, not a copy.
        """
        rows = self._rows(rows)
        channel = self.channel_indices(channels)
        if len(channel) != 3:
            raise ConfigError(f"Three channels are needed (R, G, B); got {len(channel)}.")
        out = np.empty((len(rows), 3, self.input_px, self.input_px), dtype=np.float32)

        def read(shard: str, where: np.ndarray, shard_rows: np.ndarray) -> None:
            out[where] = self._images[shard][shard_rows[:, None], channel[None, :]]

        self._gather(rows, read)
        return out

    def modality(self, rows: Sequence[int], name: str) -> np.ndarray:
        """float32 (n, H, W) in [0, 1]: one stored modality for the given rows."""
        return self.images(rows, (name, name, name))[:, 0]

    def gtv_masks(self, rows: Sequence[int]) -> np.ndarray:
        """bool (n, H, W): the GTV placed exactly like the images, for the given rows."""
        rows = self._rows(rows)
        out = np.empty((len(rows), self.input_px, self.input_px), dtype=bool)

        def read(shard: str, where: np.ndarray, shard_rows: np.ndarray) -> None:
            out[where] = self._masks[shard][shard_rows] > 0

        self._gather(rows, read)
        return out

    def disk_usage(self) -> pd.DataFrame:
        """Bytes on disk by kind of file: image shards, mask shards, tables and records."""
        kinds = {"image shards": 0, "GTV mask shards": 0, "tables and records": 0}
        counts = dict.fromkeys(kinds, 0)
        image_shards = set(self.index["shard"])
        for path in self.root.rglob("*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix == ".npy":
                kind = "image shards" if path.name in image_shards else "GTV mask shards"
            else:
                kind = "tables and records"
            kinds[kind] += path.stat().st_size
            counts[kind] += 1
        table = pd.DataFrame({"files": counts, "bytes": kinds}).rename_axis("kind").reset_index()
        total = pd.DataFrame({"kind": ["total"], "files": [table["files"].sum()],
                              "bytes": [table["bytes"].sum()]})
        table = pd.concat([table, total], ignore_index=True)
        table["MiB"] = (table["bytes"] / 2**20).round(1)
        return table
