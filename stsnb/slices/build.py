"""Build the slice store patient by patient (streaming), reusing shards made from the same inputs.

Per patient: the axial slices of the GTV z-extent +- `z_margin_mm` (physical mm on the CT grid),
each modality min-max normalized to [0, 1] (per volume over the kept slab by default, or per
slice), fitted to a `canvas_px` square canvas in square pixels (the longer side spans it, the
shorter is zero-padded: aspect ratio kept), then scaled to `input_px` with antialiasing.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm.auto import tqdm

from stsnb.core.config import PreprocessingConfig, Profile, resolve_profile
from stsnb.core.errors import CohortError, ConfigError, StsnbError
from stsnb.core.imageio import (
    DIRECTION_TOLERANCE,
    ORIGIN_TOLERANCE_VOXELS,
    SPACING_RELATIVE_TOLERANCE,
)
from stsnb.core.manifest import software_key
from stsnb.core.store import (
    Record,
    Stage,
    atomic_path,
    hash_config,
    read_json,
    require_free_space,
    write_csv_atomic,
    write_json_atomic,
)
from stsnb.slices.geometry import (
    AxialFrame,
    Placement,
    place_and_resize,
    placement,
    sample_slices,
    tumour_slab,
)
from stsnb.slices.slice_store import (
    INDEX_COLUMNS,
    INDEX_FILE,
    INTENSITIES_FILE,
    PATIENTS_FILE,
    SHARD_DIR,
    STORE_FORMAT,
    STORE_META,
    BuildReport,
    SliceStore,
    image_shard_name,
    mask_shard_name,
    record_name,
    store_dir,
)

STAGE = "slices"
#: Normalization choices: min-max per volume (over the kept slab) or per slice, per modality.
NORMALIZATIONS = ("volume", "slice")
#: Slices resampled together (bounds memory: chunk x canvas_px^2 x 4 bytes per modality).
CHUNK_SLICES = 16
#: Raw intensity quantiles recorded per patient and modality (over the kept slab).
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class PatientVolumes:
    """One patient's images, every modality on the CT grid, and the GTV mask on the same grid.

    `paths` (optional) names the file of each image (key "gtv" for the mask) in error messages;
    `input_key` (optional) identifies the inputs for reuse; when None it is a hash of the voxels
    and geometry.
    """

    patient_id: str
    label: int
    images: dict[str, sitk.Image]
    gtv: sitk.Image
    paths: Mapping[str, Path] = field(default_factory=dict)
    input_key: str | None = None


@dataclass
class PatientSource:
    """A patient whose volumes are loaded only if its shard has to be (re)built."""

    patient_id: str
    label: int
    input_key: str
    load: Callable[[], PatientVolumes]


@dataclass
class PatientSlices:
    """The processed slices of one patient, ready to be written as a shard."""

    images: np.ndarray  # float16 (n, modalities, input_px, input_px)
    masks: np.ndarray  # uint8 (n, input_px, input_px)
    record: dict[str, Any]  # index rows, patient summary, intensity rows


def settings_for(config: PreprocessingConfig, modalities: tuple[str, ...]) -> dict[str, Any]:
    """The settings that change a shard's content (part of every key)."""
    return {"format": STORE_FORMAT, "modalities": list(modalities), **asdict(config),
            "software": software_key(STAGE)}


def check_config(config: PreprocessingConfig) -> None:
    """ConfigError for a preprocessing setting out of its allowed set."""
    if config.normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"normalization {config.normalization!r} is not one of {', '.join(NORMALIZATIONS)}."
        )
    if config.canvas_px < 1 or config.input_px < 1:
        raise ConfigError(f"canvas_px and input_px must be >= 1; got {config.canvas_px}, "
                          f"{config.input_px}.")
    if not config.z_margin_mm >= 0:
        raise ConfigError(f"z_margin_mm must be >= 0 mm; got {config.z_margin_mm}.")
    if config.max_slices_per_patient is not None and config.max_slices_per_patient < 1:
        raise ConfigError(f"max_slices_per_patient must be >= 1 or None; got "
                          f"{config.max_slices_per_patient}.")


def volumes_key(volumes: PatientVolumes, modalities: tuple[str, ...]) -> str:
    """SHA-256 over the geometry and voxels of each modality (declared order) and of the GTV."""
    digest = hashlib.sha256()
    for name in (*modalities, "gtv"):
        image = volumes.gtv if name == "gtv" else volumes.images.get(name)
        if image is None:
            digest.update(f"{name}:absent".encode())
            continue
        header = (name, image.GetSize(), image.GetSpacing(), image.GetOrigin(),
                  image.GetDirection(), image.GetPixelIDTypeAsString())
        digest.update(repr(header).encode())
        digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    return digest.hexdigest()


def _error(volumes: PatientVolumes, what: str, problem: str, fix: str) -> CohortError:
    return CohortError(f"{what}: {problem}", patient_id=volumes.patient_id,
                       path=volumes.paths.get(what), fix=fix)


def _check_volumes(volumes: PatientVolumes, modalities: tuple[str, ...]) -> AxialFrame:
    """Validate one patient's volumes (at the boundary, once); return the frame of the CT grid."""
    missing = [m for m in modalities if m not in volumes.images]
    if missing:
        raise CohortError(
            f"images {missing} are missing (declared modalities: {list(modalities)}).",
            patient_id=volumes.patient_id,
            fix="give every declared modality, each resampled onto the CT grid.",
        )
    reference_name = "ct" if "ct" in modalities else "gtv"
    reference = volumes.images["ct"] if reference_name == "ct" else volumes.gtv
    named = [(m, volumes.images[m]) for m in modalities] + [("gtv", volumes.gtv)]
    frames = {}
    for name, image in named:
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise _error(volumes, name, f"expected a 3D scalar image, found "
                         f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} "
                         "components per voxel.", "give one 3D scalar volume per image.")
        frames[name] = AxialFrame.of(image)
    ref = AxialFrame.of(reference)
    for name, frame in frames.items():
        problems = frame.same_grid(ref, ORIGIN_TOLERANCE_VOXELS, SPACING_RELATIVE_TOLERANCE,
                                   DIRECTION_TOLERANCE)
        if problems:
            raise _error(volumes, name, f"not on the {reference_name} grid: "
                         + "; ".join(problems) + ".",
                         "resample every image and the GTV onto the planning-CT grid "
                         "(chapter 02 does this) before building the slice store.")
    for name, image in named:
        values = sitk.GetArrayViewFromImage(image)
        if not np.isfinite(values).all():
            n_bad = int((~np.isfinite(values)).sum())
            raise _error(volumes, name, f"{n_bad} voxels are NaN or infinite.",
                         "replace non-finite voxels (e.g. with 0) before building the store.")
    return ref


def _normalize(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(values - lo) / (hi - lo) clipped to [0, 1]; 0 where hi == lo (a constant image)."""
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    out = (values - lo) / safe
    out[np.broadcast_to(span <= 0, out.shape)] = 0.0
    return np.clip(out, 0.0, 1.0, out=out)


def process_patient(volumes: PatientVolumes, config: PreprocessingConfig,
                    modalities: tuple[str, ...]) -> PatientSlices:
    """Slab, normalize, place and resize one patient's volumes (no file is written)."""
    frame = _check_volumes(volumes, modalities)
    pid = volumes.patient_id
    gtv_array = sitk.GetArrayViewFromImage(volumes.gtv) > 0
    if not gtv_array.any():
        raise _error(volumes, "gtv", "the GTV mask is empty (no voxel > 0).",
                     "check the tumour contour; a patient without one cannot be sliced.")
    slab = tumour_slab(frame, gtv_array, config.z_margin_mm)
    chosen = sample_slices(len(slab.slices), config.max_slices_per_patient)
    slices = slab.slices[chosen]
    oriented_gtv = frame.orient(gtv_array)
    where = placement(tuple(oriented_gtv.shape[1:]), frame.pixel_mm, config.canvas_px,
                      config.input_px)
    n, px = len(slices), config.input_px
    images = np.empty((n, len(modalities), px, px), dtype=np.float16)
    warnings_: list[str] = []
    intensity_rows, constant = [], []
    first, last = int(slab.slices[0]), int(slab.slices[-1])
    tumour = oriented_gtv[first:last + 1]
    for channel, name in enumerate(modalities):
        oriented = frame.orient(sitk.GetArrayViewFromImage(volumes.images[name]))
        kept = oriented[first:last + 1]
        lo, hi = float(kept.min()), float(kept.max())
        intensity_rows.append(_intensity_row(pid, name, lo, hi, kept, tumour))
        if hi <= lo:
            constant.append(name)
        for start in range(0, n, CHUNK_SLICES):
            chunk = np.asarray(oriented[slices[start:start + CHUNK_SLICES]], dtype=np.float32)
            if config.normalization == "volume":
                chunk = _normalize(chunk, np.float32(lo), np.float32(hi))
            else:
                chunk = _normalize(chunk, chunk.min(axis=(1, 2), keepdims=True),
                                   chunk.max(axis=(1, 2), keepdims=True))
            resized = place_and_resize(chunk, where)
            images[start:start + CHUNK_SLICES, channel] = np.clip(resized, 0.0, 1.0)
    if constant:
        warnings_.append(f"patient {pid}: {', '.join(constant)} constant over the kept slab "
                         f"(e.g. an empty registered image): stored as 0")
    masks = np.empty((n, px, px), dtype=np.uint8)
    for start in range(0, n, CHUNK_SLICES):
        chunk = oriented_gtv[slices[start:start + CHUNK_SLICES]].astype(np.float32)
        masks[start:start + CHUNK_SLICES] = place_and_resize(chunk, where) >= 0.5
    if slab.clipped:
        warnings_.append(
            f"patient {pid}: the {config.z_margin_mm:g} mm margin is clipped ({slab.clipped}) "
            f"because the CT volume ends there (margin kept: {slab.margin_inferior_mm:.1f} mm "
            f"inferior, {slab.margin_superior_mm:.1f} mm superior)"
        )
    voxel_area = frame.pixel_mm[0] * frame.pixel_mm[1]
    areas = oriented_gtv[slices].sum(axis=(1, 2)) * voxel_area
    rows = [{"patient_id": pid, "slice_index": frame.volume_index(int(s)),
             "z_mm": round(float(z), 4), "label": int(volumes.label),
             "tumour_area_mm2": round(float(a), 4), "shard": image_shard_name(pid),
             "shard_row": i}
            for i, (s, z, a) in enumerate(zip(slices, slab.z_mm[chosen], areas, strict=True))]
    patient = _patient_summary(volumes, frame, slab, where, n, constant)
    record = {"rows": rows, "patient": patient, "intensities": intensity_rows,
              "warnings": warnings_}
    return PatientSlices(images=images, masks=masks, record=record)


def _intensity_row(pid: str, name: str, lo: float, hi: float, kept: np.ndarray,
                   tumour: np.ndarray) -> dict[str, Any]:
    """Raw intensity summary of one image over the kept slab (unit of the image: HU, Gy, a.u.):
    min and max (the range that per-volume normalization maps to 0-1), quantiles of the slab
    (every 4th voxel in-plane) and of the GTV's voxels."""
    sample = np.asarray(kept[:, ::4, ::4], dtype=np.float64).ravel()
    inside = np.asarray(kept[tumour], dtype=np.float64)
    row: dict[str, Any] = {"patient_id": pid, "modality": name, "min": lo, "max": hi,
                           "mean": float(sample.mean()), "constant": hi <= lo}
    for prefix, values in (("", sample), ("gtv_", inside)):
        for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True):
            row[f"{prefix}p{round(q * 100):02d}"] = float(v)
    return row


def _patient_summary(volumes: PatientVolumes, frame: AxialFrame, slab, where: Placement,
                     n_stored: int, constant: list[str]) -> dict[str, Any]:
    return {
        "patient_id": volumes.patient_id,
        "label": int(volumes.label),
        "slab_slices": len(slab.slices),
        "stored_slices": n_stored,
        "slice_step_mm": round(frame.slice_step_mm, 4),
        "gtv_z_min_mm": round(slab.gtv_z_min_mm, 3),
        "gtv_z_max_mm": round(slab.gtv_z_max_mm, 3),
        "slab_z_min_mm": round(float(slab.z_mm.min()), 3),
        "slab_z_max_mm": round(float(slab.z_mm.max()), 3),
        "margin_inferior_mm": round(slab.margin_inferior_mm, 3),
        "margin_superior_mm": round(slab.margin_superior_mm, 3),
        "margin_clipped": slab.clipped,
        "gtv_at_edge": slab.gtv_at_edge,
        "native_rows": where.native_px[0],
        "native_cols": where.native_px[1],
        "native_pixel_mm": f"{where.native_mm[0]:.4g} x {where.native_mm[1]:.4g}",
        "canvas_pixel_mm": round(where.pixel_mm, 5),
        "placed_rows": where.placed_px[0],
        "placed_cols": where.placed_px[1],
        "input_pixel_mm": round(where.input_pixel_mm, 5),
        "constant_images": " ".join(constant),
    }


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save to `path` (a temporary path of `atomic_path`)."""
    with open(path, "wb") as handle:
        np.save(handle, array)


def _shard_is_current(shards: Path, pid: str, key_hash: str, settings: dict) -> dict | None:
    """The patient's record when its shards exist and were made with `key_hash`, else None."""
    record = Record(shards / record_name(pid)).current(key_hash)
    if record is None:
        return None
    try:
        images = np.load(shards / image_shard_name(pid), mmap_mode="r")
        masks = np.load(shards / mask_shard_name(pid), mmap_mode="r")
    except (OSError, ValueError):
        return None
    px = settings["input_px"]
    n = len(record["rows"])
    if images.shape != (n, len(settings["modalities"]), px, px) or masks.shape != (n, px, px):
        return None
    return record


def _patient_key(pid: str, label: int, input_key: str, settings: dict) -> str:
    return hash_config({"patient_id": pid, "label": int(label), "input": input_key,
                        "settings": settings})


def _check_label(pid: str, label: object) -> int:
    """The label as 0/1; CohortError naming the patient otherwise."""
    try:
        value = float(label)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if value not in (0.0, 1.0):
        raise CohortError(f"label must be 0 or 1, found {label!r}.", patient_id=pid,
                          fix="only patients with a known outcome go into the slice store.")
    return int(value)


def _check_id(pid: str, seen: set[str]) -> None:
    if not _SAFE_ID.fullmatch(pid):
        raise CohortError(f"patient id {pid!r} cannot name a shard file.", patient_id=pid,
                          fix="use letters, digits, '.', '_' or '-' in patient ids.")
    if pid in seen:
        raise CohortError("the patient appears twice in the volumes given to the slice store.",
                          patient_id=pid, fix="give each patient once.")
    seen.add(pid)


def build_slice_store(work_dir: str | Path, volumes: Iterable[PatientVolumes | PatientSource],
                      profile: Profile | str, progress: bool = True, *,
                      modalities: tuple[str, ...] | None = None) -> SliceStore:
    """Build (or reuse) ``work_dir/slices`` one patient at a time; return the opened store.

    `modalities` is the channel order (default: the first patient's image order). A patient's
    shard is reused when its record says it was made from the same inputs and settings; each
    shard is written atomically, and ``store.json`` (written last) marks a complete store.
    """
    started = time.perf_counter()
    config = resolve_profile(profile).preprocessing
    check_config(config)
    root, work_dir = store_dir(work_dir), Path(work_dir)
    shards = root / SHARD_DIR
    shards.mkdir(parents=True, exist_ok=True)
    for stale in shards.glob(".*.tmp*"):  # left by a killed process (atomic_path cleans others)
        stale.unlink()
    old_meta = read_json(root / STORE_META) or None
    records: list[dict[str, Any]] = []
    keys: dict[str, str] = {}
    built, reused, messages = [], [], []
    seen: set[str] = set()
    settings: dict[str, Any] | None = None
    total = len(volumes) if hasattr(volumes, "__len__") else None
    bar = tqdm(volumes, total=total, desc="slice store", unit="patient", disable=not progress)
    for position, item in enumerate(bar):
        pid = str(item.patient_id)
        _check_id(pid, seen)
        label = _check_label(pid, item.label)
        bar.set_postfix_str(pid)
        loaded = item if isinstance(item, PatientVolumes) else None
        if modalities is None:
            loaded = loaded or item.load()
            modalities = tuple(loaded.images)
        modalities = tuple(modalities)
        settings = settings or settings_for(config, modalities)
        if isinstance(item, PatientSource):
            input_key = item.input_key
        else:
            input_key = item.input_key or volumes_key(item, modalities)
        key_hash = _patient_key(pid, label, input_key, settings)
        keys[pid] = key_hash
        record = _shard_is_current(shards, pid, key_hash, settings)
        if record is not None:
            reused.append(pid)
        else:
            if not built:  # the store is about to change: it is incomplete until the end
                (root / STORE_META).unlink(missing_ok=True)
            loaded = loaded or item.load()
            result = process_patient(loaded, config, modalities)
            later = volumes[position + 1:] if isinstance(volumes, Sequence) else ()
            left = 1 + sum(not (shards / image_shard_name(str(v.patient_id))).exists()
                           for v in later)
            _check_space(shards, result, left, pid)
            (shards / record_name(pid)).unlink(missing_ok=True)  # no record vouches for a
            # shard being rewritten (a kill between the two shards leaves no mix trusted)
            with atomic_path(shards / image_shard_name(pid)) as tmp:
                _save_npy(tmp, result.images)
            with atomic_path(shards / mask_shard_name(pid)) as tmp:
                _save_npy(tmp, result.masks)
            record = {"key_hash": key_hash, **result.record}
            write_json_atomic(shards / record_name(pid), record)
            built.append(pid)
            del result
        del loaded, item
        for message in record.get("warnings", []):
            warnings.warn(message, stacklevel=2)
            messages.append(message)
        records.append({k: record[k] for k in ("rows", "patient", "intensities")})
    bar.close()
    if not records:
        raise StsnbError("No patient was given to the slice store: nothing to build. Fix: check "
                         "that the cohort has included patients with registered images.")
    store_key = {"stage": STAGE, "settings": settings, "patients": keys}
    stage = Stage(work_dir, STAGE, store_key)
    report = BuildReport(built=tuple(built), reused=tuple(reused),
                         seconds=round(time.perf_counter() - started, 3),
                         warnings=tuple(messages))
    if built or not old_meta or old_meta.get("key_hash") != stage.key_hash \
            or not stage.is_current():
        stage._started = started  # the build began before its key (all inputs) was known
        (root / STORE_META).unlink(missing_ok=True)  # incomplete until the tables agree again
        _write_tables(root, records)
        _remove_unreferenced(shards, set(keys))
        outputs = [root / name for name in (INDEX_FILE, PATIENTS_FILE, INTENSITIES_FILE)]
        outputs += [shards / f(pid) for pid in keys
                    for f in (image_shard_name, mask_shard_name, record_name)]
        write_json_atomic(root / STORE_META, _meta(settings, stage.key_hash, records))
        stage.finish([*outputs, root / STORE_META])
    store = SliceStore.open(work_dir)
    store.last_build = report
    return store


def _check_space(shards: Path, result: PatientSlices, left: int, pid: str) -> None:
    """StsnbError when the disk cannot hold this shard and `left - 1` more of its size (the
    patients after it that have no shard yet)."""
    each = result.images.nbytes + result.masks.nbytes
    require_free_space(shards, each * left,
                       f"the slice store ({left} patient shard(s) left to write, about "
                       f"{each / 2**20:.1f} MiB each)", patient_id=pid)


def _write_tables(root: Path, records: list[dict]) -> None:
    rows = [row for record in records for row in record["rows"]]
    index = pd.DataFrame(rows)
    index.insert(0, "row", np.arange(len(index)))
    write_csv_atomic(index[list(INDEX_COLUMNS)], root / INDEX_FILE)
    write_csv_atomic(pd.DataFrame([r["patient"] for r in records]), root / PATIENTS_FILE)
    intensities = [row for record in records for row in record["intensities"]]
    write_csv_atomic(pd.DataFrame(intensities), root / INTENSITIES_FILE)


def _meta(settings: dict, key_hash: str, records: list[dict]) -> dict[str, Any]:
    return {**settings, "key_hash": key_hash, "dtype": "float16",
            "n_rows": sum(len(r["rows"]) for r in records), "n_patients": len(records)}


def _remove_unreferenced(shards: Path, patients: set[str]) -> None:
    """Delete shards and records of patients no longer in the store."""
    keep = {f(pid) for pid in patients for f in (image_shard_name, mask_shard_name, record_name)}
    for path in shards.iterdir():
        if path.is_file() and path.name not in keep and not path.name.startswith("."):
            path.unlink()
