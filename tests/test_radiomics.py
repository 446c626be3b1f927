"""The radiomics stage: MIRP's shape features of a sphere and a cube against their analytic values
through the whole stage (worker by subprocess), reuse and recomputation, and bad input."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from stsnb.core.errors import StsnbError
from stsnb.radiomics import (
    COMMON_SETTINGS,
    RADIOMICS_SETTINGS,
    RadiomicsError,
    check_inputs,
    radiomics_inputs,
    radiomics_python,
    run_radiomics,
    settings_table,
)
from stsnb.radiomics import stage as radiomics_stage
from stsnb.radiomics.environment import RADIOMICS_VENV, ROOT, WORKER
from stsnb.radiomics.settings import mirp_arguments

needs_env = pytest.mark.skipif(
    not radiomics_python().exists(),
    reason="needs the radiomics environment .venv-radiomics, which `make env` creates")

IMAGES = ("ct", "dose", "t1w", "pet")
RADIUS_MM = 20.0
CUBE_MM = 30.0
#: Tolerances against the analytic values, for MIRP's mesh-based estimates (IBSI: volume and
#: surface area of the marching-cubes mesh over the mask, here after resampling to 2 mm). The
#: mesh cuts the voxel staircase, so the volume stays close (within 3 %), while the area of a
#: curved surface stays above the smooth one, the more so with thick slices; IBSI notes this
#: overestimate and gives no analytic tolerance. Measured with MIRP 2.7.0: sphere 1 mm +0.4 % /
#: +8.5 %, sphere 0.94 x 0.94 x 3 mm +1.3 % / +12.7 %, cube -0.7 % / -4.0 % (edges cut).
VOLUME_TOLERANCE = 0.03
SURFACE_TOLERANCE = {"isotropic": 0.10, "3 mm slices": 0.15}


# --------------------------------------------------------------------------- a small work dir


def _write(array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 20.0, 5.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def _grid(size_mm: float, spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Voxel-centre coordinates (mm, z y x arrays) of a grid of about `size_mm` per side,
    centred on 0."""
    n = [int(math.ceil(size_mm / s)) for s in spacing]  # x, y, z counts
    axes = [(np.arange(k) - (k - 1) / 2.0) * s for k, s in zip(n, spacing, strict=True)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return z, y, x


def _sphere(spacing: tuple[float, float, float]) -> np.ndarray:
    z, y, x = _grid(2 * RADIUS_MM + 12.0, spacing)
    return (np.sqrt(x**2 + y**2 + z**2) <= RADIUS_MM).astype(np.uint8)


def _cube(spacing: tuple[float, float, float]) -> np.ndarray:
    z, y, x = _grid(CUBE_MM + 12.0, spacing)
    half = CUBE_MM / 2.0
    return ((np.abs(x) < half) & (np.abs(y) < half) & (np.abs(z) < half)).astype(np.uint8)


#: patient -> (spacing x, y, z in mm, mask maker, analytic volume mm^3, analytic surface mm^2,
#: surface tolerance)
SHAPES = {
    "SPHERE1MM": ((1.0, 1.0, 1.0), _sphere, 4.0 / 3.0 * math.pi * RADIUS_MM**3,
                  4.0 * math.pi * RADIUS_MM**2, SURFACE_TOLERANCE["isotropic"]),
    "SPHEREANISO": ((0.9375, 0.9375, 3.0), _sphere, 4.0 / 3.0 * math.pi * RADIUS_MM**3,
                    4.0 * math.pi * RADIUS_MM**2, SURFACE_TOLERANCE["3 mm slices"]),
    "CUBE": ((1.0, 1.0, 1.0), _cube, CUBE_MM**3, 6.0 * CUBE_MM**2,
             SURFACE_TOLERANCE["isotropic"]),
}
#: Sphericity (36 pi V^2)^(1/3) / A of a cube.
CUBE_SPHERICITY = (36.0 * math.pi) ** (1.0 / 3.0) / 6.0


def _images_for(mask: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """CT (HU), dose (Gy), T1w (a.u.) and PET (SUV) with texture inside the mask, none 0
    anywhere."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(mask.shape)
    inside = mask.astype(bool)
    ct = np.where(inside, 40 + 30 * noise, -80 + 10 * noise).round().astype(np.int16)
    dose = (50.0 + 1.5 * rng.random(mask.shape) + 0.5 * inside).astype(np.float32)
    t1w = np.where(inside, 600 + 80 * noise, 300 + 20 * noise).clip(1).round().astype(np.int16)
    pet = np.where(inside, 6.0 + 1.5 * noise, 1.0 + 0.2 * noise).clip(0.1).astype(np.float32)
    return {"ct": ct, "dose": dose, "t1w": t1w, "pet": pet}


def make_layout(root: Path) -> tuple[Path, Path]:
    """A cohort folder (cohort.toml, <patient>/ct.nii.gz) and a work dir with chapter 02's
    outputs (registration/<patient>/{dose,t1w,pet,gtv}.nii.gz, registration/patients.csv)."""
    cohort, work = root / "cohort", root / "work"
    cohort.mkdir(parents=True)
    (cohort / "cohort.toml").write_text(
        'modalities = ["ct", "dose", "t1w", "pet"]\nmr_reference = "t1w"\n'
        'same_frame_as_ct = ["dose", "pet"]\n', encoding="utf-8")
    for seed, (pid, (spacing, shape, *_)) in enumerate(SHAPES.items()):
        mask = shape(spacing)
        images = _images_for(mask, seed)
        _write(images["ct"], spacing, cohort / pid / "ct.nii.gz")
        folder = work / "registration" / pid
        _write(mask, spacing, folder / "gtv.nii.gz")
        for name in ("dose", "t1w", "pet"):
            _write(images[name], spacing, folder / f"{name}.nii.gz")
    write_patients_csv(work, list(SHAPES))
    return cohort, work


def write_patients_csv(work: Path, patients: list[str]) -> None:
    """``registration/patients.csv`` as the registration review writes it (all kept)."""
    pd.DataFrame({"patient_id": patients, "flagged": False, "flag_reason": "", "decision": "",
                  "note": "", "kept": True, "why": ""}).to_csv(
        work / "registration" / "patients.csv", index=False)


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The stage run once on the sphere and cube patients (the worker in .venv-radiomics)."""
    if not radiomics_python().exists():
        pytest.skip("needs the radiomics environment .venv-radiomics, which `make env` creates")
    cohort, work = make_layout(tmp_path_factory.mktemp("radiomics"))
    run = run_radiomics(cohort, work, "quick", progress=False)
    return {"cohort": cohort, "work": work, "run": run}


def _copy(computed: dict, tmp_path: Path) -> tuple[Path, Path]:
    cohort, work = tmp_path / "cohort", tmp_path / "work"
    shutil.copytree(computed["cohort"], cohort)
    shutil.copytree(computed["work"], work)
    return cohort, work


# --------------------------------------------------------------------------- settings, worker


def test_settings_table_states_each_image_with_its_discretisation_and_reason():
    for image in ("ct", "dose", "pet", "t1w", "t2w", "ce_t1w"):
        row = RADIOMICS_SETTINGS[image]
        assert row.reason
        if row.unit in ("HU", "Gy", "SUV"):  # calibrated: fixed bin width from a lower bound
            assert row.method == "fixed_bin_size" and row.bin_width > 0
            assert row.lower_bound is not None
        else:  # arbitrary units: fixed bin number
            assert row.method == "fixed_bin_number" and row.n_bins >= 16
    assert (RADIOMICS_SETTINGS["ct"].bin_width, RADIOMICS_SETTINGS["ct"].lower_bound) == (
        25.0, -1000.0)
    assert COMMON_SETTINGS["by_slice"] is False and COMMON_SETTINGS["ibsi_compliant"] is True
    args = mirp_arguments("dose")
    assert json.loads(json.dumps(args, allow_nan=False)) == args  # plain JSON for the request
    assert args["resegmentation_intensity_range"] == [0.0, None]
    assert "morphology" in mirp_arguments("ct")["base_feature_families"]
    assert "morphology" not in args["base_feature_families"]
    table = settings_table(IMAGES)
    assert list(table["image"]) == ["CT", "Dose", "T1w", "PET"]
    assert table["reason"].str.len().min() > 20


def test_worker_imports_nothing_from_stsnb():
    tree = ast.parse(WORKER.read_text(encoding="utf-8"))
    modules = {alias.name.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert "stsnb" not in modules
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert modules - {"__future__", "csv", "importlib", "json", "logging", "math", "os", "sys",
                      "time", "traceback", "warnings", "pathlib", "typing"} == {"mirp"}


def test_make_env_creates_the_radiomics_environment_with_every_package_pinned():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    env_target = re.search(r"^env: (.*)$", makefile, re.MULTILINE).group(1)
    assert "$(RADIOMICS_STAMP)" in env_target.split()
    assert re.search(r"^RADIOMICS_VENV := \.venv-radiomics$", makefile, re.MULTILINE)
    assert "--no-deps -r radiomics-requirements.txt" in makefile
    assert ".venv-radiomics/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    lines = (ROOT / "radiomics-requirements.txt").read_text(encoding="utf-8").splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert "mirp" in pins and all(re.fullmatch(r"[0-9][0-9a-z.]*", v) for v in pins.values())
    sites = sorted(RADIOMICS_VENV.glob("lib/python3*/site-packages"))
    if sites:  # the environment as made: exactly the pinned versions
        installed = {d.metadata["Name"].lower(): d.version
                     for d in importlib.metadata.distributions(path=[str(p) for p in sites])}
        for name, version in pins.items():
            assert installed.get(name.lower()) == version, name


def test_missing_environment_names_it_and_make_env(tmp_path, monkeypatch):
    cohort, work = tmp_path / "cohort", tmp_path / "work"
    cohort.mkdir()
    (work / "registration").mkdir(parents=True)
    write_patients_csv(work, ["P1"])
    monkeypatch.setenv("STSNB_RADIOMICS_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    with pytest.raises(StsnbError, match=r"make env") as info:
        run_radiomics(cohort, work, "quick", progress=False)
    assert "no-venv" in str(info.value)


# --------------------------------------------------------------------------- bad input


def test_empty_gtv_names_patient_and_file(tmp_path):
    cohort, work = make_layout(tmp_path)
    mask_path = work / "registration" / "CUBE" / "gtv.nii.gz"
    mask = sitk.ReadImage(str(mask_path))
    sitk.WriteImage(mask * 0, str(mask_path))
    with pytest.raises(RadiomicsError, match=r"GTV is empty") as info:
        check_inputs(radiomics_inputs(cohort, work, "CUBE", IMAGES))
    assert info.value.patient_id == "CUBE" and info.value.path == mask_path
    assert "review.csv" in str(info.value)


def test_image_not_covering_the_gtv_names_patient_image_and_file(tmp_path):
    cohort, work = make_layout(tmp_path)
    path = work / "registration" / "SPHERE1MM" / "t1w.nii.gz"
    image = sitk.ReadImage(str(path))
    values = sitk.GetArrayFromImage(image)
    values[values.shape[0] // 2:] = 0  # the upper half lies outside the T1w's field of view
    outside = sitk.GetImageFromArray(values)
    outside.CopyInformation(image)
    sitk.WriteImage(outside, str(path))
    with pytest.raises(RadiomicsError, match=r"not inside the t1w image's field of view") as info:
        check_inputs(radiomics_inputs(cohort, work, "SPHERE1MM", IMAGES))
    assert info.value.patient_id == "SPHERE1MM" and info.value.path == path
    assert "%" in str(info.value)


def test_missing_image_and_image_off_the_grid_name_the_file(tmp_path):
    cohort, work = make_layout(tmp_path)
    dose = work / "registration" / "CUBE" / "dose.nii.gz"
    dose.unlink()
    with pytest.raises(RadiomicsError, match=r"dose image \(dose.nii.gz\) is missing") as info:
        radiomics_inputs(cohort, work, "CUBE", IMAGES)
    assert info.value.path == dose and "chapter 02" in str(info.value)
    t1w = work / "registration" / "SPHERE1MM" / "t1w.nii.gz"
    image = sitk.ReadImage(str(t1w))
    image.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(image, str(t1w))
    with pytest.raises(RadiomicsError, match=r"t1w .* not on the GTV grid") as info:
        check_inputs(radiomics_inputs(cohort, work, "SPHERE1MM", IMAGES))
    assert info.value.patient_id == "SPHERE1MM"


# --------------------------------------------------------------------------- the whole stage


@needs_env
def test_shape_features_match_the_analytic_sphere_and_cube(computed):
    table = computed["run"].features.set_index("patient_id")
    assert list(table.index) == list(SHAPES)
    errors = {pid: (table.loc[pid, "ct__morph_volume"] / volume - 1.0,
                    table.loc[pid, "ct__morph_area_mesh"] / surface - 1.0)
              for pid, (_, _, volume, surface, _) in SHAPES.items()}
    print("relative errors (volume, surface):",
          {p: (round(float(v), 4), round(float(a), 4)) for p, (v, a) in errors.items()})
    for pid, (v_err, s_err) in errors.items():
        assert abs(v_err) <= VOLUME_TOLERANCE, (pid, v_err)
        assert abs(s_err) <= SHAPES[pid][4], (pid, s_err)
    for pid in ("SPHERE1MM", "SPHEREANISO"):
        assert 0.85 < table.loc[pid, "ct__morph_sphericity"] <= 1.0
    assert table.loc["CUBE", "ct__morph_sphericity"] == pytest.approx(CUBE_SPHERICITY, rel=0.05)


@needs_env
def test_tables_hold_every_image_and_family(computed):
    work, run = computed["work"], computed["run"]
    wide = pd.read_csv(work / "radiomics" / "features.csv", dtype={"patient_id": str})
    assert list(wide["patient_id"]) == list(SHAPES) and len(wide) == len(SHAPES)
    images = {c.split("__")[0] for c in wide.columns if c != "patient_id"}
    assert images == set(IMAGES)
    for prefix in ("ct__morph_", "ct__stat_", "dose__cm_", "dose__rlm_", "t1w__szm_"):
        assert any(c.startswith(prefix) for c in wide.columns), prefix
    assert not any(c.startswith(("dose__morph_", "t1w__morph_", "pet__morph_"))
                   for c in wide.columns)
    assert any("fbs_w0.25" in c for c in wide.columns if c.startswith("dose__"))
    assert any("fbn_n32" in c for c in wide.columns if c.startswith("t1w__"))
    assert any("fbs_w0.5" in c for c in wide.columns if c.startswith("pet__"))
    assert wide["pet__stat_mean"].between(5.5, 6.5).all()  # SUV as given, not rescaled
    assert np.isfinite(wide.filter(like="__stat_").to_numpy()).all()
    long = pd.read_csv(work / "radiomics" / "CUBE" / "features.csv")
    assert list(long.columns) == ["patient_id", "image", "feature", "value"]
    record = json.loads((work / "radiomics" / "CUBE" / "record.json").read_text())
    assert record["key"]["library"]["mirp"] == run.library["mirp"]
    assert set(record["key"]["inputs"]) == {"gtv", *IMAGES}
    timings = pd.read_csv(work / "timings.csv")
    assert "radiomics" in set(timings["stage"])
    assert run.computed == tuple(SHAPES) and set(run.seconds) == set(SHAPES)


@needs_env
def test_second_run_reuses_and_a_changed_file_recomputes_that_patient_only(
        computed, tmp_path, monkeypatch):
    cohort, work = _copy(computed, tmp_path)
    real_worker = radiomics_stage.run_worker
    requested: list[list[str]] = []

    def no_worker(*args, **kwargs):
        raise AssertionError("the worker ran although every patient is saved")

    monkeypatch.setattr(radiomics_stage, "run_worker", no_worker)
    again = run_radiomics(cohort, work, "quick", progress=False)
    assert again.reused == tuple(SHAPES) and again.computed == ()
    pd.testing.assert_frame_equal(again.features, computed["run"].features)

    def spy(request, *args, **kwargs):
        requested.append([p["patient_id"] for p in request["patients"]])
        return real_worker(request, *args, **kwargs)

    monkeypatch.setattr(radiomics_stage, "run_worker", spy)
    dose_path = work / "registration" / "SPHERE1MM" / "dose.nii.gz"
    dose = sitk.ReadImage(str(dose_path))
    sitk.WriteImage(dose * 1.1, str(dose_path), useCompression=True)  # 10 % more dose
    before = json.loads((work / "radiomics" / "CUBE" / "record.json").read_text())
    changed = run_radiomics(cohort, work, "quick", progress=False)
    assert requested == [["SPHERE1MM"]]
    assert changed.computed == ("SPHERE1MM",) and changed.reused == ("SPHEREANISO", "CUBE")
    assert json.loads((work / "radiomics" / "CUBE" / "record.json").read_text()) == before
    new = changed.features.set_index("patient_id")
    old = computed["run"].features.set_index("patient_id")
    assert new.loc["SPHERE1MM", "dose__stat_mean"] == pytest.approx(
        1.1 * old.loc["SPHERE1MM", "dose__stat_mean"], rel=1e-3)
    assert new.loc["SPHERE1MM", "ct__morph_volume"] == old.loc["SPHERE1MM", "ct__morph_volume"]


@needs_env
def test_stage_stops_on_an_empty_gtv_before_the_worker(computed, tmp_path, monkeypatch):
    cohort, work = _copy(computed, tmp_path)
    mask_path = work / "registration" / "CUBE" / "gtv.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(mask_path)) * 0, str(mask_path))
    monkeypatch.setattr(radiomics_stage, "run_worker",
                        lambda *a, **k: pytest.fail("the worker ran on bad input"))
    with pytest.raises(RadiomicsError, match=r"\[patient CUBE, file .*gtv.nii.gz\] the GTV is "
                                             r"empty"):
        run_radiomics(cohort, work, "quick", progress=False)


@needs_env
def test_worker_failure_shows_its_stderr_and_the_patient(computed, tmp_path):
    request = radiomics_stage.worker_request(
        [radiomics_inputs(computed["cohort"], computed["work"], "CUBE", IMAGES)])
    request["patients"][0]["images"][0]["settings"]["base_discretisation_bin_width"] = -1.0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(RadiomicsError, match=r"exit status 1 while computing patient CUBE") as e:
        radiomics_stage.run_worker(request, scratch, lambda *a: None)
    message = str(e.value)
    assert "MIRP failed" in message and "image ct" in message and "ct.nii.gz" in message


def test_quick_and_smoke_leave_out_spatial_autocorrelation_and_paper_keeps_it():
    from stsnb.core.config import PAPER, QUICK, SMOKE
    from stsnb.radiomics.settings import SPATIAL_AUTOCORRELATION, left_out_features

    assert SPATIAL_AUTOCORRELATION == ("morph_moran_i", "morph_geary_c")
    assert left_out_features(PAPER.radiomics) == ()
    assert left_out_features(QUICK.radiomics) == left_out_features(SMOKE.radiomics) == (
        SPATIAL_AUTOCORRELATION)


@needs_env
def test_left_out_features_are_absent_and_every_other_feature_is_unchanged(computed, tmp_path):
    cohort, work = _copy(computed, tmp_path)
    quick = computed["run"].features.set_index("patient_id")
    assert computed["run"].left_out == ("morph_moran_i", "morph_geary_c")
    assert not {"ct__morph_moran_i", "ct__morph_geary_c"} & set(quick.columns)
    record = json.loads((work / "radiomics" / "CUBE" / "record.json").read_text())
    assert record["key"]["leave_out"] == ["morph_geary_c", "morph_moran_i"]
    full = run_radiomics(cohort, work, "paper", patients=["CUBE"], progress=False)
    assert full.computed == ("CUBE",) and full.left_out == ()  # the key differs: recomputed
    row = full.features.set_index("patient_id").loc["CUBE"]
    assert set(row.index) - set(quick.columns) == {"ct__morph_moran_i", "ct__morph_geary_c"}
    assert np.isfinite(row[["ct__morph_moran_i", "ct__morph_geary_c"]]).all()
    pd.testing.assert_series_equal(row[quick.columns], quick.loc["CUBE"], check_exact=True)


@needs_env
def test_worker_refuses_to_leave_out_an_unknown_feature(computed, tmp_path):
    request = radiomics_stage.worker_request(
        [radiomics_inputs(computed["cohort"], computed["work"], "CUBE", ("ct",))],
        leave_out=("morph_not_a_feature",))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(RadiomicsError, match=r"cannot leave out morph_not_a_feature: not a "
                                             r"morphology feature of MIRP 2\.7\.0"):
        radiomics_stage.run_worker(request, scratch, lambda *a: None)


def test_patients_are_dealt_to_workers_round_robin():
    assert radiomics_stage.worker_chunks(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"],
                                                                          ["b", "d"]]
    assert radiomics_stage.worker_chunks(["a"], 4) == [["a"]]
    assert radiomics_stage.worker_chunks([], 2) == []


@needs_env
def test_workers_in_parallel_give_the_same_features(computed, tmp_path, monkeypatch):
    """Three patients over two worker processes at once: each worker gets its own request and
    the features equal those of one worker."""
    cohort, work = _copy(computed, tmp_path)
    for record in (work / "radiomics").glob("*/record.json"):
        record.unlink()
    real_worker = radiomics_stage.run_worker
    requested: list[list[str]] = []

    def spy(request, *args, **kwargs):
        requested.append([p["patient_id"] for p in request["patients"]])
        return real_worker(request, *args, **kwargs)

    monkeypatch.setattr(radiomics_stage, "run_worker", spy)
    parallel = run_radiomics(cohort, work, "quick", progress=False, workers=2)
    assert sorted(map(len, requested)) == [1, 2]
    assert sorted(p for r in requested for p in r) == sorted(SHAPES)
    pd.testing.assert_frame_equal(parallel.features, computed["run"].features)
