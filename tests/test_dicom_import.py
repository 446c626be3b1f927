"""DICOM-RT import: the real TCIA sample against its independently converted masks, a round trip
through the exporter, pydicom's RT test files, and every bad input the importer recognises."""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from cohort_fixtures import image_from_array
from pydicom.data import get_testdata_file

from stsnb.core.config import resolve_profile
from stsnb.core.errors import CohortError, LocatedError
from stsnb.curation.cohort_config import read_cohort_config
from stsnb.curation.stage import run_curation
from stsnb.dicom import classify_series, import_dicom_cohort, read_import_report
from stsnb.dicom.clinical import DAYS_PER_MONTH, read_clinical_map, read_sheet
from stsnb.dicom.export import export_patient
from stsnb.dicom.rtdose import read_rtdose
from stsnb.dicom.rtstruct import choose_roi, rasterise_contours
from stsnb.dicom.scan import read_dataset
from stsnb.dicom.series import pet_suv_factor
from stsnb.run.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "tcia-sts-sample"
SAMPLE_PATIENTS = ("STS_002", "STS_003", "STS_012")
NIFTI_NAMES = {"ct": "CT", "t1w": "MR_T1", "pet": "PET"}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# --------------------------------------------------------------------------- the real sample


@pytest.fixture(scope="module")
def real_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    import_dicom_cohort(SAMPLE, root / "cohort", clinical=SAMPLE / "clinical_tcia.csv",
                        clinical_map=SAMPLE / "clinical_map.toml", id_map=root / "ids.csv",
                        progress=False)
    return root / "cohort"


def test_real_sample_without_registration_runs_and_too_small_chapters_say_so(real_cohort,
                                                                              tmp_path):
    """Imported as the importer proposes (MR and PET in the CT's frame, nothing registered):
    chapters 01-03 run, the cross-validated chapters become pages that give the numbers."""
    from stsnb.run.book import run_chapters
    from stsnb.training.folds import cross_validation_shortfall

    work = tmp_path / "work"
    outputs = run_chapters(real_cohort, work, profile="smoke",
                           chapters=("01_data_curation", "02_registration_qa",
                                     "03_preprocessing", "04_training", "05_cv_results"))
    names = [p.name for p in outputs]
    assert names == ["01_data_curation.ipynb", "02_registration_qa.ipynb",
                     "03_preprocessing.ipynb", "04_training_too_small.md", "05_cv_results.md"]
    images = pd.read_csv(work / "registration" / "qa_images.csv")
    assert set(images["image"]) == {"t1w", "pet"} and not images["registered"].any()
    assert (images["dice_scanner"] >= 0.9).all() and (images["gtv_in_fov"] > 0.99).all()
    qa = pd.read_csv(work / "registration" / "qa.csv")
    assert qa["registration_note"].str.contains("not registered").all()
    assert len(pd.read_csv(work / "slices" / "index.csv")) > 0  # the slice store was written
    page = (outputs[3]).read_text(encoding="utf-8")
    assert "too small" in page and "3 patients" in page and "2 folds" in page
    chapter02 = outputs[1].read_text(encoding="utf-8")
    assert "Nothing to register" in chapter02 and "Traceback" not in chapter02
    # enough patients: no shortfall
    labels = pd.Series([0, 1] * 3, index=[f"P{i}" for i in range(6)])
    assert cross_validation_shortfall(labels, 2) is None
    assert "needs at least 3" in cross_validation_shortfall(labels.iloc[:5], 3)


def test_real_sample_masks_and_grids_match_the_shipped_nifti(real_cohort):
    ids = pd.read_csv(real_cohort.parent / "ids.csv", dtype=str)
    assert list(ids["source_folder"]) == list(SAMPLE_PATIENTS)
    for row in ids.itertuples():
        for stem, name in NIFTI_NAMES.items():
            mask_file = "gtv.nii.gz" if stem == "ct" else f"gtv_{stem}.nii.gz"
            ours = sitk.ReadImage(str(real_cohort / row.patient_id / mask_file))
            image = sitk.ReadImage(str(real_cohort / row.patient_id / f"{stem}.nii.gz"))
            reference = sitk.ReadImage(str(SAMPLE / row.source_folder / "nifti"
                                           / f"{name}_mask.nii.gz"))
            for grid in (ours, image):
                assert grid.GetSize() == reference.GetSize()
                assert np.allclose(grid.GetSpacing(), reference.GetSpacing(), atol=0.1)
                assert np.allclose(grid.GetOrigin(), reference.GetOrigin(), atol=0.1)
                assert np.allclose(grid.GetDirection(), reference.GetDirection(), atol=1e-4)
            dice = _dice(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference))
            assert dice >= 0.95, (row.source_folder, stem, dice)


def test_real_sample_cohort_files_report_and_config(real_cohort):
    config = read_cohort_config(real_cohort)
    assert config.modalities == ("ct", "t1w", "pet")
    assert set(config.same_frame_as_ct) == {"t1w", "pet"}  # one FrameOfReferenceUID per patient
    clinical = pd.read_csv(real_cohort / "clinical.csv")
    assert list(clinical["patient_id"]) == ["P001", "P002", "P003"]
    assert list(clinical["distant_metastasis"]) == [0, 0, 1]  # STS_012: bone metastases
    assert clinical["followup_months"].tolist() == pytest.approx(
        [501 / DAYS_PER_MONTH, 756 / DAYS_PER_MONTH, 663 / DAYS_PER_MONTH], abs=0.01)
    report = read_import_report(real_cohort)
    written = report[report["status"] == "written"]
    assert len(written) == 3 * 6  # ct, t1w, pet and their three masks per patient
    pet = report[(report["kind"] == "series") & (report["stem"] == "pet")]
    assert pet["detail"].str.contains("SUV").all()
    assert (report.loc[report["kind"] != "note", "frame"] == "ct").all()


def _all_text(folder: Path) -> bytes:
    data = b""
    for path in folder.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            data += gzip.decompress(raw) if path.name.endswith(".gz") else raw
    return data.lower()


def test_no_dicom_identifier_reaches_the_cohort_folder(real_cohort):
    text = _all_text(real_cohort)
    for identifier in (*SAMPLE_PATIENTS, "1.3.6.1.4.1.14519", "20050216", "dcm4che"):
        assert identifier.lower().encode() not in text, identifier
    assert not any("ids" in p.name for p in real_cohort.rglob("*"))


def test_curation_runs_on_the_imported_real_cohort(real_cohort, tmp_path):
    result = run_curation(real_cohort, tmp_path / "work", resolve_profile("smoke"),
                          progress=False)
    table = result.cohort
    assert table["included"].all(), table["exclusion_reason"].tolist()
    assert table["label"].tolist() == [0, 0, 1]
    assert {"has_ct", "has_t1w", "has_pet"} <= set(table.columns)
    assert (table["n_gtv_voxels"] > 10000).all()


# --------------------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def volumes() -> dict[str, sitk.Image]:
    """A small patient: CT (HU) with a hollow ellipsoidal GTV, two MR sequences on an oblique
    grid (20 degrees about z) with the GTV drawn on T1w, and a dose on a coarser grid."""
    nz, ny, nx = 14, 40, 44
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    r = ((x - 22) / 10.0) ** 2 + ((y - 19) / 8.0) ** 2 + ((z - 7) / 4.5) ** 2
    inner = ((x - 22) / 3.5) ** 2 + ((y - 19) / 3.0) ** 2 + ((z - 7) / 2.0) ** 2
    gtv = ((r <= 1.0) & (inner > 1.0)).astype(np.uint8)  # a hole on the middle slices
    hu = np.where(r <= 1.0, 40, np.where((x - 22) ** 2 + (y - 19) ** 2 < 400, 0, -1000))
    spacing, origin = (1.1, 1.2, 3.0), (-24.0, -20.5, -21.0)
    ct = image_from_array(hu.astype(np.int16), spacing, origin)
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    mr_grid = image_from_array(np.zeros((12, 36, 36), np.float32), (1.4, 1.4, 3.5),
                               (-20.0, -30.0, -19.0), direction)
    rng = np.random.default_rng(0)
    mr = {}
    for stem in ("t1w", "t2w"):
        values = rng.uniform(0, 900, size=(12, 36, 36)).astype(np.float32)
        mr[stem] = image_from_array(values, mr_grid.GetSpacing(), mr_grid.GetOrigin(), direction)
    mr_gtv = sitk.Resample(image_from_array(gtv, spacing, origin), mr_grid, sitk.Transform(),
                           sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    dose = 50.0 * np.exp(-r[::2, ::2, ::2] / 3.0)
    return {"ct": ct, "gtv": image_from_array(gtv, spacing, origin), **mr, "gtv_t1w": mr_gtv,
            "dose": image_from_array(dose.astype(np.float32), (2.2, 2.4, 6.0), origin)}


def _export(volumes, folder: Path, **kwargs) -> dict[str, Path]:
    options = {"gtv": volumes["gtv"], "mr": {"t1w": volumes["t1w"], "t2w": volumes["t2w"]},
               "mr_gtv": {"t1w": volumes["gtv_t1w"]}, "dose": volumes["dose"]}
    options.update(kwargs)
    return export_patient(folder, volumes["ct"], **options)


def _import(source: Path, out: Path, **kwargs):
    return import_dicom_cohort(source, out, progress=False, **kwargs)


def _same_grid(a: sitk.Image, b: sitk.Image, atol: float = 1e-4) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_round_trip_gives_back_images_masks_and_dose(volumes, tmp_path):
    _export(volumes, tmp_path / "src" / "SYN-0001")
    result = _import(tmp_path / "src", tmp_path / "cohort")
    folder = tmp_path / "cohort" / "P001"
    assert result.modalities == ("ct", "dose", "t1w", "t2w")
    assert result.same_frame_as_ct == ("dose",)
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    _same_grid(ct, volumes["ct"])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct),
                                  sitk.GetArrayFromImage(volumes["ct"]))
    for stem in ("t1w", "t2w"):
        mr = sitk.ReadImage(str(folder / f"{stem}.nii.gz"))
        _same_grid(mr, volumes[stem])
        error = np.abs(sitk.GetArrayFromImage(mr) - sitk.GetArrayFromImage(volumes[stem]))
        assert error.max() <= 900 / 32000  # one step of the int16 rescale slope
    for name in ("gtv", "gtv_t1w"):
        mask = sitk.ReadImage(str(folder / f"{name}.nii.gz"))
        _same_grid(mask, volumes[name])
        assert _dice(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(volumes[name])) >= 0.99
    dose = sitk.ReadImage(str(folder / "dose.nii.gz"))
    _same_grid(dose, volumes["dose"])
    assert np.abs(sitk.GetArrayFromImage(dose) - sitk.GetArrayFromImage(volumes["dose"])).max() \
        < 1e-3
    report = read_import_report(tmp_path / "cohort")
    assert report.loc[report["kind"] == "dose", "detail"].str.contains("PLAN").all()
    assert set(report.loc[report["stem"] == "t1w", "frame"]) == {"frame 2"}
    text = _all_text(tmp_path / "cohort")
    for identifier in (b"syn-0001", b"synthetic", b"19600101"):
        assert identifier not in text


def test_round_trip_masks_are_exact_including_the_hole(volumes, tmp_path):
    _export(volumes, tmp_path / "src" / "A", dose=None)
    _import(tmp_path / "src", tmp_path / "cohort")
    gtv = _array(tmp_path / "cohort" / "P001" / "gtv.nii.gz")
    truth = sitk.GetArrayFromImage(volumes["gtv"])
    assert truth[7].sum() > 0 and truth[7, 19, 22] == 0  # the hole exists in the truth
    np.testing.assert_array_equal(gtv, truth)


def test_beam_doses_are_summed_and_a_plan_dose_wins(volumes, tmp_path):
    _export(volumes, tmp_path / "beams" / "A", dose_summation=("BEAM", "BEAM", "BEAM"))
    _import(tmp_path / "beams", tmp_path / "c1")
    dose = _array(tmp_path / "c1" / "P001" / "dose.nii.gz")
    assert np.abs(dose - sitk.GetArrayFromImage(volumes["dose"])).max() < 1e-3
    assert read_import_report(tmp_path / "c1").query("kind == 'dose'")["detail"].str.contains(
        "sum of 3 BEAM").all()
    _export(volumes, tmp_path / "both" / "A", dose_summation=("BEAM", "PLAN", "BEAM"))
    _import(tmp_path / "both", tmp_path / "c2")
    detail = read_import_report(tmp_path / "c2").query("kind == 'dose'")["detail"].iloc[0]
    assert "PLAN dose of 3 RTDOSE files" in detail
    assert np.abs(_array(tmp_path / "c2" / "P001" / "dose.nii.gz")
                  - sitk.GetArrayFromImage(volumes["dose"])).max() < 1e-3


def test_mr_in_the_ct_frame_is_declared_same_frame(volumes, tmp_path):
    _export(volumes, tmp_path / "src" / "A", mr_in_ct_frame=True)
    result = _import(tmp_path / "src", tmp_path / "cohort")
    assert result.same_frame_as_ct == ("dose", "t1w", "t2w")
    forced = _import(tmp_path / "src", tmp_path / "cohort2", register=("t1w", "t2w"))
    assert forced.same_frame_as_ct == ("dose",)
    assert read_cohort_config(tmp_path / "cohort2").mr_reference == "t1w"


# --------------------------------------------------------------------------- pydicom's files


def test_pydicom_rtdose_is_rejected_as_relative_then_read_when_absolute(tmp_path):
    path = Path(get_testdata_file("rtdose.dcm"))
    with pytest.raises(CohortError, match="DoseUnits is RELATIVE") as info:
        read_rtdose(path, "X")
    assert info.value.path == path
    ds = pydicom.dcmread(path)
    ds.DoseUnits = "GY"
    copy = tmp_path / "rtdose_gy.dcm"
    ds.save_as(copy)
    dose = read_rtdose(copy, "X")
    assert dose.image.GetSize() == (10, 10, 15)
    np.testing.assert_allclose(dose.image.GetSpacing(), (10.0, 10.0, 5.0))
    np.testing.assert_allclose(dose.image.GetOrigin(), (189.43125, 199.43125, -761.87))
    expected = ds.pixel_array.astype(np.float64) * 1e-6
    np.testing.assert_allclose(sitk.GetArrayFromImage(dose.image), expected, rtol=1e-6)
    assert dose.summation == "BEAM"


def test_pydicom_rtstruct_is_read_and_rejected_with_a_clear_message(volumes, tmp_path):
    path = Path(get_testdata_file("rtstruct.dcm"))
    ds = read_dataset(path)  # no preamble: read as raw DICOM
    assert ds is not None and ds.Modality == "RTSTRUCT"
    choice = choose_roi(ds, "GTV")
    assert choice.number is None and "patient" in choice.names
    patient = tmp_path / "src" / "PHANTOM"
    export_patient(patient, volumes["ct"], patient_id="tPhantom30sep")
    shutil.copy(path, patient / "rtstruct.dcm")
    with pytest.raises(CohortError, match="not among the patient's 1 image series") as info:
        _import(tmp_path / "src", tmp_path / "cohort")
    assert info.value.patient_id == "PHANTOM" and info.value.path.name == "rtstruct.dcm"
    assert not (tmp_path / "cohort").exists()  # nothing half-written


# --------------------------------------------------------------------------- bad input


def _edit(folder: Path, **values) -> None:
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for key, value in values.items():
            setattr(ds, key, value)
        ds.save_as(path)


def _expect(tmp_path: Path, match: str, patient: str = "A", **kwargs) -> LocatedError:
    with pytest.raises(CohortError, match=match) as info:
        _import(tmp_path / "src", tmp_path / "cohort", **kwargs)
    assert isinstance(info.value, LocatedError)
    assert info.value.patient_id == patient and info.value.path is not None
    assert f"patient {patient}" in str(info.value) and "Fix:" in str(info.value)
    return info.value


def test_two_ct_series_for_one_patient(volumes, tmp_path):
    files = _export(volumes, tmp_path / "src" / "A")
    shutil.copytree(files["ct"], tmp_path / "src" / "A" / "CT2")
    _edit(tmp_path / "src" / "A" / "CT2", SeriesInstanceUID=pydicom.uid.generate_uid(),
          SeriesDescription="CT recon 2")
    error = _expect(tmp_path, "2 series are classified as ct")
    assert "PLANNING CT" in str(error) and "CT recon 2" in str(error)
    (tmp_path / "map.toml").write_text('[series]\n"recon 2" = "ignore"\n')
    _import(tmp_path / "src", tmp_path / "cohort", import_map=tmp_path / "map.toml")
    report = read_import_report(tmp_path / "cohort")
    assert "ignored by the import map" in " ".join(report["detail"])


def test_rtstruct_referencing_a_missing_series(volumes, tmp_path):
    files = _export(volumes, tmp_path / "src" / "A")
    shutil.rmtree(files["t1w"])
    error = _expect(tmp_path, "references image series .* not among the patient's")
    assert error.path == files["rtstruct_t1w"]


def test_no_roi_matching_the_pattern(volumes, tmp_path):
    files = _export(volumes, tmp_path / "src" / "A", roi_name="Tumour")
    error = _expect(tmp_path, "no ROI .* matches the tumour pattern 'GTV'.*it holds: Tumour")
    assert error.path == files["rtstruct_ct"]
    (tmp_path / "map.toml").write_text('roi = "^tumou?r$"\n')
    _import(tmp_path / "src", tmp_path / "cohort", import_map=tmp_path / "map.toml")
    assert _array(tmp_path / "cohort" / "P001" / "gtv.nii.gz").sum() > 0


def test_several_matching_rois_are_listed_and_the_map_chooses(volumes, tmp_path):
    files = _export(volumes, tmp_path / "src" / "A")
    ds = pydicom.dcmread(files["rtstruct_ct"])
    roi = pydicom.Dataset()
    roi.ROINumber, roi.ROIName = 2, "GTV_boost"
    roi.ReferencedFrameOfReferenceUID = ds.FrameOfReferenceUID
    ds.StructureSetROISequence.append(roi)
    contour = pydicom.Dataset()
    contour.ReferencedROINumber = 2
    contour.ContourSequence = pydicom.Sequence([ds.ROIContourSequence[0].ContourSequence[0]])
    ds.ROIContourSequence.append(contour)
    ds.save_as(files["rtstruct_ct"])
    _expect(tmp_path, "2 ROIs .* match the tumour pattern 'GTV': GTV, GTV_boost")
    (tmp_path / "map.toml").write_text('[patients.A]\nroi = "^GTV$"\n')
    _import(tmp_path / "src", tmp_path / "cohort", import_map=tmp_path / "map.toml")
    np.testing.assert_array_equal(_array(tmp_path / "cohort" / "P001" / "gtv.nii.gz"),
                                  sitk.GetArrayFromImage(volumes["gtv"]))


def test_a_series_with_missing_slices(volumes, tmp_path):
    files = _export(volumes, tmp_path / "src" / "A", mr={}, mr_gtv={})
    (files["ct"] / "0006.dcm").unlink()
    error = _expect(tmp_path, r"missing slices: a gap of 6\.00 mm .* 3\.00 mm apart "
                    r"\(about 1 slice\(s\) missing")
    assert error.path.name == "0007.dcm" and "PLANNING CT" in str(error)


def test_mixed_frames_of_reference_within_one_mr_session(volumes, tmp_path):
    files = _export(volumes, tmp_path / "src" / "A")
    _edit(files["t2w"], FrameOfReferenceUID=pydicom.uid.generate_uid())
    _expect(tmp_path, "the MR series lie in 2 frames of reference .*t1w .* t2w")


def test_dose_in_another_frame_and_unmapped_series_reported(volumes, tmp_path):
    files = _export(volumes, tmp_path / "src" / "A")
    _edit(files["t2w"], SeriesDescription="DWI b800")
    _import(tmp_path / "src", tmp_path / "cohort")
    report = read_import_report(tmp_path / "cohort")
    row = report[report["description"] == "DWI b800"].iloc[0]
    assert row["status"] == "unmapped" and row["output"] == ""
    assert not (tmp_path / "cohort" / "P001" / "t2w.nii.gz").exists()
    ds = pydicom.dcmread(files["rtdose_0"])
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(files["rtdose_0"])
    _expect(tmp_path, "not in the planning CT's frame", overwrite=True)


def test_output_and_id_map_guards(volumes, tmp_path):
    _export(volumes, tmp_path / "src" / "A", mr={}, mr_gtv={})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(CohortError, match="exists and is not empty"):
        _import(tmp_path / "src", tmp_path / "busy")
    with pytest.raises(CohortError, match="not a folder made by import-dicom"):
        _import(tmp_path / "src", tmp_path / "busy", overwrite=True)
    with pytest.raises(CohortError, match="id map .* may not lie inside the cohort folder"):
        _import(tmp_path / "src", tmp_path / "cohort", id_map=tmp_path / "cohort" / "ids.csv")
    with pytest.raises(CohortError, match="at least three images"):
        _import(tmp_path / "src", tmp_path / "cohort")  # CT and dose only


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("description, stem", [
    ("AX T1 SE", "t1w"), ("T1_FS", "t1w"), ("IBSI_1_STS_012_MR_T1_image", "t1w"),
    ("AX T2 FS", "t2w"), ("FSE T2", "t2w"), ("COR STIR", "t2w"), ("t2_tse_fs_tra", "t2w"),
    ("T1 FS POST GD", "ce_t1w"), ("AX T1+C", "ce_t1w"), ("T1 GAD", "ce_t1w"),
    ("T1 CE", "ce_t1w"), ("POSTGAD VIBE", "ce_t1w"), ("DWI b800", None), ("T1 T2 map", None),
    ("T2 POST GD", None), ("3-plane LOCALIZER", None), ("T2* GRE", None),
])
def test_default_mr_classification(description, stem):
    assert classify_series("MR", description).stem == stem


def test_classification_by_modality_and_contrast_agent():
    assert classify_series("CT", "anything").stem == "ct"
    assert classify_series("PT", "WB FDG").stem == "pet"
    assert classify_series("RTDOSE", "").stem == "rtdose"
    assert classify_series("MR", "AX SE", contrast_agent="Dotarem").stem == "ce_t1w"
    assert classify_series("CT", "SCOUT", image_type="ORIGINAL\\PRIMARY\\LOCALIZER").stem is None
    assert classify_series("OT", "screen capture").reason.startswith("unmapped")


def test_pet_suv_factor_from_bqml_with_decay_to_scan_start():
    ds = pydicom.Dataset()
    ds.Units, ds.DecayCorrection, ds.PatientWeight = "BQML", "START", "70"
    ds.SeriesDate, ds.SeriesTime = "20200101", "110000"
    item = pydicom.Dataset()
    item.RadionuclideTotalDose, item.RadionuclideHalfLife = "370000000", "6586.2"
    item.RadiopharmaceuticalStartDateTime = "20200101100000"
    ds.RadiopharmaceuticalInformationSequence = pydicom.Sequence([item])
    factor, note = pet_suv_factor(ds)
    assert factor == pytest.approx(70000 / (370e6 * 2 ** (-3600 / 6586.2)))
    assert "SUVbw computed" in note
    ds.Units = "CNTS"
    assert pet_suv_factor(ds)[0] is None and "kept as given" in pet_suv_factor(ds)[1]


def test_rasterisation_of_a_square_and_a_contour_off_plane(tmp_path):
    reference = image_from_array(np.zeros((3, 10, 10), np.uint8), (2.0, 2.0, 5.0), (0.0, 0.0, 0.0))
    square = np.array([[3.0, 3.0, 5.0], [11.0, 3.0, 5.0], [11.0, 11.0, 5.0], [3.0, 11.0, 5.0]])
    mask, outside = rasterise_contours([square], reference, "X", tmp_path / "rs.dcm")
    array = sitk.GetArrayFromImage(mask)
    assert outside == 0 and array.sum() == 16 and array[1, 2:6, 2:6].all()  # centres 4..10 mm
    tilted = square.copy()
    tilted[2:, 2] = 9.0
    with pytest.raises(CohortError, match="does not lie in one slice plane"):
        rasterise_contours([tilted], reference, "X", tmp_path / "rs.dcm")


def test_clinical_map_units_identifying_columns_and_xlsx(tmp_path):
    cmap = read_clinical_map(SAMPLE / "clinical_map.toml")
    assert cmap.months_per_unit == pytest.approx(1 / 30.4375)
    bad = tmp_path / "bad.toml"
    bad.write_text('patient_id = "ID"\ndistant_metastasis = "DM"\nfollowup_months = "FU"\n'
                   '[columns]\nname = "Patient name"\n')
    with pytest.raises(CohortError, match="look identifying"):
        read_clinical_map(bad)
    sheet = tmp_path / "sheet.xlsx"
    sheet.write_bytes(b"PK\x03\x04")
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        with pytest.raises(CohortError, match="needs openpyxl"):
            read_sheet(sheet)


def test_command_line_import_and_error_exit(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["import-dicom", str(SAMPLE), "--out", str(out), "--quiet"]) == 0
    assert "imported 3 patients" in capsys.readouterr().out
    clinical = pd.read_csv(out / "clinical.csv", keep_default_na=False)
    assert (clinical["distant_metastasis"] == "").all()  # no sheet: outcome unknown
    assert main(["import-dicom", str(SAMPLE), "--out", str(out), "--quiet"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
