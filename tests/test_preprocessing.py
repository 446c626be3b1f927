"""Stage 03: tumour slab in mm, aspect ratio, normalization, the slice store and its reuse."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from stsnb.core.combinations import combinations_for
from stsnb.core.config import SMOKE, PreprocessingConfig, Profile
from stsnb.core.errors import StsnbError
from stsnb.core.modalities import STUDY_MODALITIES
from stsnb.slices import (
    AxialFrame,
    PatientSource,
    PatientVolumes,
    SliceStore,
    build_slice_store,
    placement,
    sample_slices,
)
from stsnb.slices import build as build_module

# Direction whose index axis i runs along -z (feet), j along +x and k along +y: the slice axis
# is not the array's last axis and it runs against the patient axis.
PERMUTED = (0.0, 1.0, 0.0,
            0.0, 0.0, 1.0,
            -1.0, 0.0, 0.0)


def profile(**settings) -> Profile:
    """The smoke profile with small, fast preprocessing settings (overridable)."""
    base = {"canvas_px": 64, "input_px": 32}
    return dataclasses.replace(SMOKE, preprocessing=PreprocessingConfig(**{**base, **settings}))


def image(array: np.ndarray, spacing=(1.0, 1.0, 3.0), direction=None,
          origin=(-20.0, 15.0, 100.0)) -> sitk.Image:
    """A float32 SimpleITK image from a (k, j, i) array with the given geometry (mm)."""
    out = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    out.SetSpacing(spacing)
    out.SetOrigin(origin)
    if direction is not None:
        out.SetDirection(direction)
    return out


def patient(pid: str, gtv: np.ndarray, label: int = 0, ct: np.ndarray | None = None,
            **geometry) -> PatientVolumes:
    """Five images on one grid: CT as given (or textured), other images from the GTV and noise."""
    rng = np.random.default_rng(abs(hash(pid)) % 2**32)
    shape = gtv.shape
    images = {}
    for n, name in enumerate(STUDY_MODALITIES):
        if name == "ct" and ct is not None:
            values = ct
        else:
            values = rng.normal(50.0 * n, 5.0, shape) + (n + 1) * 40.0 * gtv
        images[name] = image(values, **geometry)
    return PatientVolumes(pid, label, images, image(gtv, **geometry))


def box_gtv(shape, k: tuple[int, int], j=(8, 16), i=(10, 20)) -> np.ndarray:
    gtv = np.zeros(shape, dtype=np.uint8)
    gtv[k[0]:k[1], j[0]:j[1], i[0]:i[1]] = 1
    return gtv


def slice_centre_z(img: sitk.Image, axis: int, k: int) -> float:
    """Physical z of a slice's centre from SimpleITK itself (independent of stsnb)."""
    centre = [(n - 1) / 2.0 for n in img.GetSize()]
    centre[axis] = float(k)
    return img.TransformContinuousIndexToPhysicalPoint(centre)[2]


# -- the tumour slab ------------------------------------------------------------------------------

def test_z_margin_in_mm_on_an_anisotropic_permuted_flipped_volume(tmp_path):
    # Array (k, j, i) = (12, 24, 30): index axis i (30 voxels, 3.0 mm) is the patient axis.
    shape = (12, 24, 30)
    gtv = np.zeros(shape, dtype=np.uint8)
    gtv[3:9, 5:15, 12:16] = 1  # i = 12..15
    volumes = patient("A1", gtv, spacing=(3.0, 0.8, 1.4), direction=PERMUTED)
    store = build_slice_store(tmp_path, [volumes], profile(), progress=False)
    index = store.index
    # 10 mm at 3 mm per slice: 3 slices each side (3, 6, 9 mm; 12 mm is out): i = 9..18.
    assert sorted(index["slice_index"]) == list(range(9, 19))
    # Inferior first: i runs towards the feet, so z increases as i decreases.
    assert list(index["slice_index"]) == list(range(18, 8, -1))
    ct = volumes.images["ct"]
    expected_z = [slice_centre_z(ct, 0, k) for k in index["slice_index"]]
    np.testing.assert_allclose(index["z_mm"], expected_z, atol=1e-3)
    assert np.all(np.diff(index["z_mm"]) > 0)
    # Areas come from the in-plane voxels (0.8 x 1.4 mm), tumour slices only.
    areas = index.set_index("slice_index")["tumour_area_mm2"]
    np.testing.assert_allclose(areas.loc[12:15], 6 * 10 * 0.8 * 1.4)
    assert (areas.drop(range(12, 16)) == 0).all()
    row = store.patients.iloc[0]
    assert row["margin_inferior_mm"] == pytest.approx(9.0)
    assert row["margin_clipped"] == "" and not row["gtv_at_edge"]


def test_z_margin_follows_the_physical_axis_of_a_tilted_volume(tmp_path):
    tilt = math.radians(25.0)  # an oblique volume, rotated about x
    c, s = math.cos(tilt), math.sin(tilt)
    direction = (1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)
    shape = (30, 24, 20)
    gtv = box_gtv(shape, (12, 17), j=(4, 20), i=(5, 15))
    volumes = patient("T1", gtv, spacing=(1.1, 1.3, 2.5), direction=direction)
    store = build_slice_store(tmp_path, [volumes], profile(z_margin_mm=7.5), progress=False)
    ref = volumes.gtv
    voxels = np.argwhere(gtv > 0)
    z_gtv = [ref.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])[2]
             for k, j, i in voxels]
    centres = np.array([slice_centre_z(ref, 2, k) for k in range(shape[0])])
    expected = np.nonzero((centres >= min(z_gtv) - 7.5 - 1e-4)
                          & (centres <= max(z_gtv) + 7.5 + 1e-4))[0]
    assert list(store.index["slice_index"]) == list(expected)
    np.testing.assert_allclose(store.index["z_mm"], centres[expected], atol=1e-3)
    # The tilt widens the GTV's z-extent beyond its 5 slices: counting slices (5 + 2 x 3 at
    # 2.5 mm) would keep 11.
    assert len(expected) >= 13


def test_axial_frame_orients_any_axis_order_to_z_y_x():
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (k, j, i)
    frame = AxialFrame.of(image(array, spacing=(3.0, 0.8, 1.4), direction=PERMUTED))
    oriented = frame.orient(array)
    assert oriented.shape == (4, 2, 3)  # z <- i (flipped), y <- k, x <- j
    np.testing.assert_array_equal(oriented[0], array[:, :, 3])
    assert frame.pixel_mm == (1.4, 0.8) and frame.slice_step_mm == pytest.approx(3.0)


def test_a_gtv_at_the_volume_edge_clips_the_margin_and_says_so(tmp_path):
    shape = (14, 24, 24)
    gtv = box_gtv(shape, (0, 3))  # tumour in the first 3 slices: no room below
    with pytest.warns(UserWarning, match=r"patient EDGE.*margin is clipped \(inferior\)"):
        store = build_slice_store(tmp_path, [patient("EDGE", gtv)], profile(), progress=False)
    row = store.patients.iloc[0]
    assert row["margin_clipped"] == "inferior" and row["gtv_at_edge"]
    assert row["margin_inferior_mm"] == 0.0 and row["margin_superior_mm"] == pytest.approx(9.0)
    assert list(store.index["slice_index"]) == list(range(0, 6))
    assert any("EDGE" in w for w in store.last_build.warnings)


def test_quick_sampling_takes_evenly_spaced_slices(tmp_path):
    assert list(sample_slices(5, None)) == [0, 1, 2, 3, 4]
    assert list(sample_slices(3, 8)) == [0, 1, 2]
    assert list(sample_slices(20, 4)) == [2, 7, 12, 17]
    gtv = box_gtv((30, 24, 24), (8, 20))
    store = build_slice_store(tmp_path, [patient("Q", gtv)], profile(max_slices_per_patient=4),
                              progress=False)
    assert list(store.index["slice_index"]) == [7, 11, 16, 20]  # slab 5..22, 18 slices
    assert store.patients.iloc[0]["slab_slices"] == 18


# -- placement on the canvas --------------------------------------------------------------------

def extent(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def physical_shape(shape, spacing, kind: str, size_mm) -> np.ndarray:
    """A circle (radius) or rectangle (height, width) in mm, centred, drawn on every slice."""
    nz, ny, nx = shape
    y = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    x = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    if kind == "circle":
        inside = xx**2 + yy**2 <= size_mm**2
    else:
        inside = (np.abs(yy) <= size_mm[0] / 2) & (np.abs(xx) <= size_mm[1] / 2)
    return np.broadcast_to(inside, shape).astype(np.uint8)


@pytest.mark.parametrize(
    ("spacing", "shape", "kind", "size_mm", "ratio"),
    [
        ((1.6, 0.8, 3.0), (3, 80, 40), "circle", 24.0, 1.0),  # pixels twice as long in x
        ((0.7, 1.4, 3.0), (3, 40, 90), "rect", (28.0, 56.0), 2.0),  # width = 2 x height
        ((1.0, 1.0, 3.0), (3, 100, 150), "rect", (40.0, 80.0), 2.0),  # scaled down to fit
    ],
)
def test_the_physical_aspect_ratio_is_kept(tmp_path, spacing, shape, kind, size_mm, ratio):
    gtv = physical_shape(shape, spacing, kind, size_mm)
    ct = 1000.0 * gtv - 500.0
    store = build_slice_store(tmp_path, [patient("R", gtv, ct=ct, spacing=spacing)],
                              profile(canvas_px=96, input_px=48), progress=False)
    row = store.patients.iloc[0]
    fov = (shape[1] * spacing[1], shape[2] * spacing[0])
    # Placed region: same physical size per pixel in rows and columns, within half a pixel.
    assert row["placed_rows"] * row["canvas_pixel_mm"] == pytest.approx(fov[0], abs=row[
        "canvas_pixel_mm"])
    assert row["placed_cols"] * row["canvas_pixel_mm"] == pytest.approx(fov[1], abs=row[
        "canvas_pixel_mm"])
    assert max(row["placed_rows"], row["placed_cols"]) == 96  # the longer side spans the canvas
    middle = store.patient_rows("R")[1]
    for mask in (store.gtv_masks([middle])[0], store.modality([middle], "ct")[0] > 0.5):
        height, width = extent(mask)
        assert width / height == pytest.approx(ratio, rel=0.12)
        size = size_mm * 2 if kind == "circle" else size_mm[0]
        assert height * row["input_pixel_mm"] == pytest.approx(size, rel=0.12)


def test_placement_fits_the_field_of_view_to_the_canvas():
    # The study's case: a 512 x 512 CT stays as it is on the 512 canvas.
    study = placement((512, 512), (0.98, 0.98), 512, 224)
    assert study.pixel_mm == pytest.approx(0.98) and study.placed_px == (512, 512)
    assert study.input_pixel_mm == pytest.approx(0.98 * 512 / 224)
    # 300 x 0.9 = 270 mm by 400 x 1.2 = 480 mm: the 480 mm side spans the canvas.
    wide = placement((300, 400), (0.9, 1.2), 512, 224)
    assert wide.pixel_mm == pytest.approx(480 / 512) and wide.placed_px == (288, 512)
    assert wide.offset_px == (112, 0)
    # A small matrix is scaled up as a whole: 252 x 0.9375 mm = 236.25 mm on 512 pixels.
    small = placement((252, 200), (0.9375, 0.9375), 512, 224)
    assert small.placed_px == (512, 406) and small.pixel_mm == pytest.approx(236.25 / 512)


def test_values_lie_in_0_1_and_match_min_max_over_the_slab(tmp_path):
    shape = (16, 32, 32)
    gtv = box_gtv(shape, (6, 9))
    rng = np.random.default_rng(4)
    ct = rng.uniform(-1000.0, 1500.0, shape)
    volumes = patient("N", gtv, ct=ct)
    # canvas = input = the slice size: no interpolation, stored values are the normalized ones.
    for normalization in ("volume", "slice"):
        store = build_slice_store(tmp_path / normalization, [volumes],
                                  profile(canvas_px=32, input_px=32, normalization=normalization),
                                  progress=False)
        rows = store.index["row"].to_numpy()
        every = store.images(rows, ("ct", "dose", "t2w"))
        assert every.dtype == np.float32 and every.min() >= 0.0 and every.max() <= 1.0
        k = store.index["slice_index"].to_numpy()
        slab = ct[k].astype(np.float32)
        if normalization == "volume":
            lo, hi = slab.min(), slab.max()
        else:
            lo, hi = slab.min(axis=(1, 2), keepdims=True), slab.max(axis=(1, 2), keepdims=True)
        expected = (slab - lo) / (hi - lo)
        np.testing.assert_allclose(store.modality(rows, "ct"), expected, atol=1e-3)
        intensity = store.intensities.set_index("modality").loc["ct"]
        assert intensity["min"] == pytest.approx(slab.min()) and intensity["max"] == \
            pytest.approx(slab.max())


def test_an_empty_registered_image_is_stored_as_zero_with_a_warning(tmp_path):
    shape = (12, 24, 24)
    volumes = patient("Z", box_gtv(shape, (5, 7)))
    volumes.images["t1w"] = image(np.zeros(shape))
    with pytest.warns(UserWarning, match="patient Z: t1w constant"):
        store = build_slice_store(tmp_path, [volumes], profile(), progress=False)
    rows = store.patient_rows("Z")
    assert not store.modality(rows, "t1w").any()
    assert store.modality(rows, "t2w").max() > 0.5
    assert store.patients.iloc[0]["constant_images"] == "t1w"
    assert bool(store.intensities.set_index("modality").loc["t1w", "constant"])


# -- the store: index, views, reuse, interruption ------------------------------------------------

def encoded_patient(pid: str, first: int, label: int, shape=(18, 24, 24)) -> PatientVolumes:
    """CT = 10 x slice index (the store's rows can be decoded back to their slice)."""
    gtv = box_gtv(shape, (first, first + 3 + len(pid) % 3), i=(4, 9 + first))
    ct = np.broadcast_to(10.0 * np.arange(shape[0])[:, None, None], shape).copy()
    return patient(pid, gtv, label=label, ct=ct)


@pytest.fixture()
def three_patients() -> list[PatientVolumes]:
    return [encoded_patient("P01", 4, 1), encoded_patient("P02", 7, 0),
            encoded_patient("P03x", 5, 1)]


def test_the_index_matches_the_store_row_by_row(tmp_path, three_patients):
    store = build_slice_store(tmp_path, three_patients, profile(canvas_px=24, input_px=24),
                              progress=False)
    index = store.index
    assert list(index.columns) == ["row", "patient_id", "slice_index", "z_mm", "label",
                                   "tumour_area_mm2", "shard", "shard_row"]
    assert list(index["row"]) == list(range(len(index)))
    by_id = {p.patient_id: p for p in three_patients}
    ct = store.modality(index["row"], "ct")
    masks = store.gtv_masks(index["row"])
    for row in index.itertuples():
        volumes = by_id[row.patient_id]
        gtv = sitk.GetArrayFromImage(volumes.gtv)
        slab = index.loc[index["patient_id"] == row.patient_id, "slice_index"]
        lo, hi = slab.min(), slab.max()
        decoded = lo + ct[row.row, 12, 12] * (hi - lo)  # CT = 10 x slice, normalized on slab
        assert decoded == pytest.approx(row.slice_index, abs=0.05)
        assert row.label == volumes.label and row.shard == f"{row.patient_id}.npy"
        assert row.tumour_area_mm2 == pytest.approx(gtv[row.slice_index].sum() * 1.0)
        np.testing.assert_array_equal(masks[row.row], gtv[row.slice_index].astype(bool))
        assert row.z_mm == pytest.approx(slice_centre_z(volumes.gtv, 2, row.slice_index))
    assert set(store.patients["patient_id"]) == set(by_id)
    assert store.key_hash == store.meta["key_hash"] and len(store.key_hash) == 64


def test_combinations_are_views_of_the_stored_modalities(tmp_path, three_patients):
    build_slice_store(tmp_path, three_patients, profile(), progress=False)
    store = SliceStore.open(tmp_path)
    files_before = sorted(p.name for p in (tmp_path / "slices").rglob("*"))
    rows = [7, 0, len(store) - 1, 3]
    shards = {s: np.load(tmp_path / "slices" / "shards" / s) for s in store.index["shard"]}
    combos = combinations_for(store.modalities)
    assert [c.name for c in combos[:10]] == [
        "ct-dose-t1w", "ct-dose-ce_t1w", "ct-dose-t2w", "ct-t1w-ce_t1w", "ct-t1w-t2w",
        "ct-t2w-ce_t1w", "dose-t1w-ce_t1w", "dose-t1w-t2w", "dose-t2w-ce_t1w", "t1w-t2w-ce_t1w"]
    for combo in combos:
        views = store.images(rows, combo.channels)
        assert views.shape == (4, 3, 32, 32) and views.dtype == np.float32
        np.testing.assert_array_equal(views, store.images(rows, combo))
        for position, row in enumerate(rows):
            entry = store.index.iloc[row]
            for k, name in enumerate(combo.channels):
                stored = shards[entry["shard"]][entry["shard_row"], store.modalities.index(name)]
                np.testing.assert_array_equal(views[position, k], stored.astype(np.float32))
    assert sorted(p.name for p in (tmp_path / "slices").rglob("*")) == files_before
    with pytest.raises(StsnbError, match="not in the slice store"):
        store.images(rows, ("ct", "pet", "dose"))
    with pytest.raises(StsnbError, match="rows must lie in"):
        store.images([len(store)], ("ct", "dose", "t1w"))


def shard_times(work_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (work_dir / "slices" / "shards").glob("*.npy")}


def test_a_rerun_reuses_and_a_changed_setting_or_input_rebuilds(tmp_path, three_patients):
    first = build_slice_store(tmp_path, three_patients, profile(), progress=False)
    assert set(first.last_build.built) == {"P01", "P02", "P03x"}
    times = shard_times(tmp_path)
    again = build_slice_store(tmp_path, three_patients, profile(), progress=False)
    assert again.last_build.all_reused and shard_times(tmp_path) == times
    assert again.key_hash == first.key_hash
    # One patient's image changes: only that shard is rebuilt.
    three_patients[1].images["t2w"] = image(sitk.GetArrayFromImage(
        three_patients[1].images["t2w"]) + 1.0)
    changed = build_slice_store(tmp_path, three_patients, profile(), progress=False)
    assert changed.last_build.built == ("P02",) and changed.key_hash != first.key_hash
    # A setting changes: everything is rebuilt at the new size.
    bigger = build_slice_store(tmp_path, three_patients, profile(input_px=40), progress=False)
    assert set(bigger.last_build.built) == {"P01", "P02", "P03x"}
    assert bigger.images([0], ("ct", "dose", "t1w")).shape == (1, 3, 40, 40)
    # A patient that leaves the cohort leaves the store (files too).
    fewer = build_slice_store(tmp_path, three_patients[:2], profile(input_px=40), progress=False)
    assert set(fewer.index["patient_id"]) == {"P01", "P02"}
    assert not list((tmp_path / "slices" / "shards").glob("P03x*"))


def test_sources_are_loaded_only_when_their_shard_is_rebuilt(tmp_path, three_patients):
    loads = []

    def source(volumes: PatientVolumes) -> PatientSource:
        def load() -> PatientVolumes:
            loads.append(volumes.patient_id)
            return volumes
        return PatientSource(volumes.patient_id, volumes.label, f"key-{volumes.patient_id}",
                             load)

    build_slice_store(tmp_path, [source(v) for v in three_patients], profile(), progress=False,
                      modalities=STUDY_MODALITIES)
    assert loads == ["P01", "P02", "P03x"]
    store = build_slice_store(tmp_path, [source(v) for v in three_patients], profile(),
                              progress=False, modalities=STUDY_MODALITIES)
    assert loads == ["P01", "P02", "P03x"] and store.last_build.all_reused


def test_an_interrupted_build_leaves_no_half_shard_and_a_rerun_completes(
        tmp_path, three_patients, monkeypatch):
    real_save = build_module._save_npy
    calls = []

    def crash_in_second_patient(path: Path, array: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 3:  # first shard file of the second patient
            path.write_bytes(b"\x93NUMPY half a shard")
            raise KeyboardInterrupt("power cut mid-patient")
        real_save(path, array)

    monkeypatch.setattr(build_module, "_save_npy", crash_in_second_patient)
    with pytest.raises(KeyboardInterrupt):
        build_slice_store(tmp_path, three_patients, profile(), progress=False)
    shards = tmp_path / "slices" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["P01.json", "P01.npy", "P01_gtv.npy"]
    with pytest.raises(StsnbError, match="does not exist|incomplete"):
        SliceStore.open(tmp_path)
    monkeypatch.setattr(build_module, "_save_npy", real_save)
    store = build_slice_store(tmp_path, three_patients, profile(), progress=False)
    assert store.last_build.reused == ("P01",) and store.last_build.built == ("P02", "P03x")
    assert len(store.patients) == 3


def test_a_failing_rebuild_never_leaves_a_stale_store_open(tmp_path, three_patients):
    build_slice_store(tmp_path, three_patients, profile(), progress=False)
    broken = [*three_patients[:1], dataclasses.replace(three_patients[1],
                                                       gtv=image(np.zeros((18, 24, 24))))]
    with pytest.raises(StsnbError, match="P02"):
        build_slice_store(tmp_path, broken, profile(input_px=40), progress=False)
    with pytest.raises(StsnbError, match="incomplete"):
        SliceStore.open(tmp_path)


# -- bad input ----------------------------------------------------------------------------------

def test_mismatched_grids_name_the_patient_and_the_image(tmp_path):
    shape = (12, 24, 24)
    volumes = patient("MIS", box_gtv(shape, (4, 7)))
    volumes.images["t2w"] = image(np.ones(shape), spacing=(1.0, 1.0, 2.0))
    volumes.paths = {"t2w": Path("/reg/MIS/t2w.nii.gz")}
    with pytest.raises(StsnbError, match=r"patient MIS, file /reg/MIS/t2w.nii.gz.*t2w: not on "
                                         r"the ct grid: spacing"):
        build_slice_store(tmp_path, [volumes], profile(), progress=False)
    volumes.images["t2w"] = image(np.ones((12, 24, 25)))
    with pytest.raises(StsnbError, match=r"patient MIS.*t2w: not on the ct grid: size"):
        build_slice_store(tmp_path, [volumes], profile(), progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v: v.images.pop("dose"), r"patient BAD\].*images \['dose'\] are missing"),
        (lambda v: setattr(v, "gtv", image(np.zeros((12, 24, 24)))), "GTV mask is empty"),
        (lambda v: setattr(v, "label", None), "label must be 0 or 1"),
        (lambda v: v.images.__setitem__("ct", image(np.full((12, 24, 24), np.nan))),
         "ct: 6912 voxels are NaN"),
        (lambda v: setattr(v, "patient_id", "../BAD"), "cannot name a shard file"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, change, message):
    volumes = patient("BAD", box_gtv((12, 24, 24), (4, 7)))
    change(volumes)
    with pytest.raises(StsnbError, match=message):
        build_slice_store(tmp_path, [volumes], profile(), progress=False,
                          modalities=STUDY_MODALITIES)


def test_opening_a_missing_store_says_what_to_run(tmp_path):
    with pytest.raises(StsnbError, match="does not exist.*run chapter 03"):
        SliceStore.open(tmp_path)
    with pytest.raises(StsnbError, match="normalization 'robust'"):
        build_slice_store(tmp_path, [], profile(normalization="robust"), progress=False)
    with pytest.raises(StsnbError, match="No patient"):
        build_slice_store(tmp_path, [], profile(), progress=False)


def test_disk_usage_counts_the_shards(tmp_path, three_patients):
    store = build_slice_store(tmp_path, three_patients, profile(), progress=False)
    usage = store.disk_usage().set_index("kind")
    assert usage.loc["image shards", "files"] == 3
    expected = sum(2 * 5 * 32 * 32 * n for n in store.index.groupby("shard").size())
    assert expected < usage.loc["image shards", "bytes"] < expected + 3 * 256
    assert usage.loc["total", "bytes"] == sum(
        p.stat().st_size for p in (tmp_path / "slices").rglob("*") if p.is_file())
    assert isinstance(store.index, pd.DataFrame)


# -- the stage runner over chapter 02's outputs --------------------------------------------------

def fake_registered_cohort(root: Path, patients: dict[str, tuple[bool, int, bool]]) -> tuple[
        Path, Path]:
    """A cohort folder (CT, GTV) and a work dir as chapters 01 and 02 leave them.

    `patients`: id -> (included, label, kept after registration review).
    """
    cohort, work = root / "cohort", root / "work"
    shape = (14, 24, 24)
    rows, kept_rows = [], []
    for n, (pid, (included, label, kept)) in enumerate(patients.items()):
        volumes = patient(pid, box_gtv(shape, (4 + n, 8 + n)), label=label)
        (cohort / pid).mkdir(parents=True)
        sitk.WriteImage(volumes.images["ct"], str(cohort / pid / "ct.nii.gz"))
        sitk.WriteImage(volumes.gtv, str(cohort / pid / "gtv.nii.gz"))
        folder = work / "registration" / pid
        folder.mkdir(parents=True)
        for name in STUDY_MODALITIES[1:]:
            sitk.WriteImage(volumes.images[name], str(folder / f"{name}.nii.gz"))
        rows.append({"patient_id": pid, "included": included, "exclusion_reason": "",
                     "label": label})
        if included:
            kept_rows.append({"patient_id": pid, "kept": kept})
    pd.DataFrame(rows).to_csv(work / "cohort.csv", index=False)
    pd.DataFrame(kept_rows).to_csv(work / "registration" / "patients.csv", index=False)
    return cohort, work


def test_the_stage_takes_the_patients_chapter_02_kept_and_writes_combinations(tmp_path):
    from stsnb.slices import run_preprocessing

    cohort, work = fake_registered_cohort(tmp_path, {
        "S1": (True, 1, True), "S2": (True, 0, True), "S3": (True, 0, False),
        "S4": (False, 1, False)})
    store = run_preprocessing(cohort, work, profile(), progress=False)
    assert list(store.patients["patient_id"]) == ["S1", "S2"]
    assert store.index.groupby("patient_id")["label"].first().to_dict() == {"S1": 1, "S2": 0}
    combos = pd.read_csv(work / "combinations.csv")
    assert list(combos["name"][:10]) == [c.name for c in combinations_for(STUDY_MODALITIES)[:10]]
    assert len(combos) == 15 and list(combos.iloc[8][["red", "green", "blue"]]) == [
        "dose", "t2w", "ce_t1w"]
    assert not store.last_build.reused
    again = run_preprocessing(cohort, work, profile(), progress=False)
    assert again.last_build.all_reused and again.key_hash == store.key_hash
    # A registered image rewritten with other content: only that patient is rebuilt.
    t2w = work / "registration" / "S2" / "t2w.nii.gz"
    sitk.WriteImage(image(np.ones((14, 24, 24))), str(t2w))
    changed = run_preprocessing(cohort, work, profile(), progress=False)
    assert changed.last_build.built == ("S2",)
    t2w.unlink()
    with pytest.raises(StsnbError, match=r"patient S2.*t2w.*does not exist.*chapter 02"):
        run_preprocessing(cohort, work, profile(), progress=False)
