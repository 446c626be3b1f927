"""Cohort reading and curation: the happy path, every exclusion, every bad input."""

from __future__ import annotations

import gzip
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from stsnb.core.errors import CohortError, ConfigError
from stsnb.core.imageio import check_finite_file
from stsnb.curation.cohort import (
    BOOK_CLINICAL_COLUMNS,
    EXCLUSION_REASONS,
    CohortConfig,
    clinical_summary,
    curate_cohort,
    describe_reason,
    image_geometry,
    inclusion_flow,
    read_clinical,
    read_cohort_config,
    read_image,
)

try:
    from cohort_fixtures import (
        CT_SIZE,
        CT_SPACING,
        DEFAULT_ROWS,
        GTV_VOXELS,
        ct_image,
        dose_image,
        gtv_image,
        make_cohort,
        mr_image,
        truncate,
        write_clinical,
        write_image,
        write_patient,
    )
except ImportError:  # tests/ is a package
    from tests.cohort_fixtures import (
        CT_SIZE,
        CT_SPACING,
        DEFAULT_ROWS,
        GTV_VOXELS,
        ct_image,
        dose_image,
        gtv_image,
        make_cohort,
        mr_image,
        truncate,
        write_clinical,
        write_image,
        write_patient,
    )


def curate(cohort, **kwargs):
    return curate_cohort(cohort, progress=False, **kwargs)


def raises_cohort_error(call, *words, patient=None, file=None):
    """Run call, assert CohortError whose message holds the patient, file name and words."""
    with pytest.raises(CohortError) as info:
        call()
    message = str(info.value)
    if patient is not None:
        assert patient in message, message
        assert info.value.patient_id == patient
    if file is not None:
        assert file in message, message
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message}"
    assert info.value.fix, "every CohortError says how to fix it"
    return info.value


def rows_with(**changes):
    """DEFAULT_ROWS with per-patient cell changes: rows_with(P02={'followup_months': ''})."""
    return [{**row, **changes.get(row["patient_id"], {})} for row in DEFAULT_ROWS]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One complete four-patient cohort, copied per test (writing images is the slow part)."""
    return make_cohort(tmp_path_factory.mktemp("template"))


@pytest.fixture
def cohort(template, tmp_path):
    return shutil.copytree(template, tmp_path / "cohort")


# --------------------------------------------------------------------------- happy path


def test_happy_path_includes_everyone_and_keeps_clinical_columns(cohort):
    table = curate(cohort)
    assert list(table["patient_id"]) == ["P01", "P02", "P03", "P04"]
    assert table["included"].dtype == bool and table["included"].all()
    assert (table["exclusion_reason"] == "").all()
    assert str(table["label"].dtype) == "Int64"
    assert list(table["label"]) == [1, 0, 1, 0]
    assert list(table["followup_months"]) == [12.0, 30.5, 6.0, 40.0]
    for modality in ("ct", "dose", "t1w", "t2w", "ce_t1w", "gtv"):
        assert table[f"has_{modality}"].all()
    assert (table["n_gtv_voxels"] == GTV_VOXELS).all()
    assert table["gtv_volume_cc"].tolist() == pytest.approx([GTV_VOXELS * 3 / 1000] * 4)
    assert list(table.columns[:5]) == [
        "patient_id",
        "included",
        "exclusion_reason",
        "label",
        "followup_months",
    ]
    for column in ("age", "sex", "histology", "grade", "site", "name", "birth_date"):
        assert column in table.columns
    assert table["name"].tolist() == [r["name"] for r in DEFAULT_ROWS]
    assert table["birth_date"].tolist() == [r["birth_date"] for r in DEFAULT_ROWS]
    assert "distant_metastasis" not in table.columns


def test_progress_bar_runs(cohort):
    assert curate_cohort(cohort, progress=True)["included"].all()


def test_tolerates_bom_header_whitespace_and_float_labels(cohort):
    text = (
        "\ufeff patient_id , distant_metastasis,followup_months ,mrn\n"
        "P01, 1.0 ,12,00123\nP02,0.0,30,00456\nP03,1,6,007\nP04,0,,008\n"
    )
    (cohort / "clinical.csv").write_text(text, encoding="utf-8")
    clinical = read_clinical(cohort)
    assert list(clinical["patient_id"]) == ["P01", "P02", "P03", "P04"]
    assert list(clinical["distant_metastasis"]) == [1, 0, 1, 0]
    assert clinical["mrn"].tolist() == ["00123", "00456", "007", "008"]  # zero-padded ids stay
    assert math.isnan(clinical["followup_months"][3])


def test_missing_spellings_of_unknown_are_accepted(cohort):
    write_clinical(
        cohort, rows_with(P01={"distant_metastasis": "NA"}, P02={"followup_months": "n/a"})
    )
    table = curate(cohort)
    assert table["label"].isna().tolist() == [True, False, False, False]
    assert table["exclusion_reason"].tolist()[:2] == ["unknown outcome", "no follow-up"]


def test_patient_ids_are_strings(tmp_path):
    rows = [{"patient_id": "001", "distant_metastasis": "1", "followup_months": "3"}]
    rows += [{"patient_id": "002", "distant_metastasis": "0", "followup_months": "3"}]
    cohort = make_cohort(tmp_path, rows=rows)
    table = curate(cohort)
    assert table["patient_id"].tolist() == ["001", "002"] and table["included"].all()


def test_truth_folder_and_extra_files_are_ignored(cohort):
    write_image(gtv_image(), cohort / "P01" / "truth" / "anything.nii.gz")
    (cohort / "P01" / "notes.txt").write_text("ignored")
    (cohort / "README.md").write_text("ignored")
    assert curate(cohort)["included"].all()


# --------------------------------------------------------------------------- exclusions


def test_missing_image_is_excluded(cohort):
    (cohort / "P02" / "t2w.nii.gz").unlink()
    table = curate(cohort).set_index("patient_id")
    assert not table.loc["P02", "included"]
    assert table.loc["P02", "exclusion_reason"] == "missing t2w"
    assert not table.loc["P02", "has_t2w"] and table.loc["P02", "has_t1w"]
    assert table.drop(index="P02")["included"].all()


def test_missing_dose_and_ct_are_excluded(cohort):
    (cohort / "P01" / "dose.nii.gz").unlink()
    (cohort / "P03" / "ct.nii.gz").unlink()
    table = curate(cohort).set_index("patient_id")
    assert table.loc["P01", "exclusion_reason"] == "missing dose"
    assert table.loc["P03", "exclusion_reason"] == "missing ct"


def test_missing_gtv_is_excluded(cohort):
    (cohort / "P03" / "gtv.nii.gz").unlink()
    table = curate(cohort).set_index("patient_id")
    assert table.loc["P03", "exclusion_reason"] == "missing tumour structure"
    assert not table.loc["P03", "has_gtv"]
    assert pd.isna(table.loc["P03", "n_gtv_voxels"]) and pd.isna(table.loc["P03", "gtv_volume_cc"])


def test_empty_gtv_is_excluded(cohort):
    write_image(gtv_image(empty=True), cohort / "P04" / "gtv.nii.gz")
    table = curate(cohort).set_index("patient_id")
    assert table.loc["P04", "exclusion_reason"] == "empty tumour structure"
    assert table.loc["P04", "n_gtv_voxels"] == 0 and table.loc["P04", "gtv_volume_cc"] == 0


def test_row_without_folder_is_excluded(cohort):
    shutil.rmtree(cohort / "P02")
    table = curate(cohort).set_index("patient_id")
    assert table.loc["P02", "exclusion_reason"] == "no image folder"
    assert not table.loc["P02", ["has_ct", "has_dose", "has_gtv"]].any()


def test_unknown_outcome_and_no_followup_are_excluded(cohort):
    write_clinical(cohort, rows_with(P01={"distant_metastasis": ""}, P02={"followup_months": ""}))
    table = curate(cohort).set_index("patient_id")
    assert table.loc["P01", "exclusion_reason"] == "unknown outcome"
    assert pd.isna(table.loc["P01", "label"])
    assert table.loc["P02", "exclusion_reason"] == "no follow-up"
    assert table.loc[["P03", "P04"], "included"].all()


def test_several_reasons_are_joined(cohort):
    (cohort / "P01" / "t1w.nii.gz").unlink()
    (cohort / "P01" / "gtv.nii.gz").unlink()
    write_clinical(cohort, rows_with(P01={"distant_metastasis": "", "followup_months": ""}))
    reason = curate(cohort).set_index("patient_id").loc["P01", "exclusion_reason"]
    assert reason == "missing t1w; missing tumour structure; unknown outcome; no follow-up"


def test_min_followup_excludes_short_negatives_only(cohort):
    # P01 positive 12 months, P02 negative 30.5, P03 positive 6, P04 negative 40
    table = curate(cohort, min_followup_months=36).set_index("patient_id")
    assert table["included"].to_dict() == {"P01": True, "P02": False, "P03": True, "P04": True}
    assert table.loc["P02", "exclusion_reason"] == "follow-up < 36 months"
    assert "36 months" in describe_reason("follow-up < 36 months")
    assert curate(cohort, min_followup_months=0)["included"].all()


def test_min_followup_must_be_a_nonnegative_number(cohort):
    with pytest.raises(ConfigError, match="min_followup_months"):
        curate(cohort, min_followup_months=-1)
    with pytest.raises(ConfigError, match="min_followup_months"):
        curate(cohort, min_followup_months="soon")


def test_exclusion_vocabulary_describes_every_reason():
    assert set(EXCLUSION_REASONS) >= {
        "no image folder",
        "missing <modality>",
        "missing tumour structure",
        "empty tumour structure",
        "unknown outcome",
        "no follow-up",
    }
    assert describe_reason("missing t2w") == "the declared image t2w.nii.gz is absent"
    assert describe_reason("unknown outcome") == EXCLUSION_REASONS["unknown outcome"]


# --------------------------------------------------------------------------- flow, geometry


def test_inclusion_flow_counts(cohort):
    (cohort / "P01" / "t2w.nii.gz").unlink()
    (cohort / "P02" / "t2w.nii.gz").unlink()
    (cohort / "P02" / "gtv.nii.gz").unlink()
    write_clinical(cohort, rows_with(P03={"followup_months": ""}))
    flow = inclusion_flow(curate(cohort))
    assert list(flow.columns) == ["step", "reason", "n_patients", "description"]
    assert flow["step"].tolist() == ["screened", "excluded", "excluded", "excluded", "included"]
    assert flow["reason"].tolist() == ["", "missing t2w", "missing tumour structure",
                                       "no follow-up", ""]  # fmt: skip
    assert flow["n_patients"].tolist() == [4, 2, 1, 1, 1]
    assert flow.loc[1, "description"] == "the declared image t2w.nii.gz is absent"


def test_inclusion_flow_all_included(cohort):
    flow = inclusion_flow(curate(cohort))
    assert flow["step"].tolist() == ["screened", "included"]
    assert flow["n_patients"].tolist() == [4, 4]


def test_clinical_has_column_is_not_a_modality(cohort):
    write_clinical(cohort, [{**r, "has_chemo": "1"} for r in DEFAULT_ROWS])
    table = curate(cohort)
    assert table["has_chemo"].tolist() == [1, 1, 1, 1]
    assert set(image_geometry(cohort, table)["modality"]) == {"ct", "dose", "t1w", "t2w", "ce_t1w"}


def test_image_geometry_reads_headers(cohort):
    (cohort / "P04" / "t1w.nii.gz").unlink()
    geometry = image_geometry(cohort, curate(cohort))
    assert len(geometry) == 4 * 5 - 1
    assert ((geometry["patient_id"] == "P04") & (geometry["modality"] == "t1w")).sum() == 0
    ct = geometry[geometry["modality"] == "ct"].iloc[0]
    assert (ct["size_x"], ct["size_y"], ct["size_z"]) == CT_SIZE
    assert (ct["spacing_x_mm"], ct["spacing_y_mm"], ct["spacing_z_mm"]) == CT_SPACING
    assert (ct["fov_x_mm"], ct["fov_y_mm"], ct["fov_z_mm"]) == pytest.approx((20, 20, 24))
    assert (ct["origin_x_mm"], ct["origin_y_mm"], ct["origin_z_mm"]) == (-10, -12, -9)
    assert ct["direction_is_identity"] and "16-bit signed integer" in ct["pixel_type"]
    mr = geometry[geometry["modality"] == "t2w"].iloc[0]
    assert not mr["direction_is_identity"]
    assert mr["spacing_x_mm"] == pytest.approx(1.4)
    assert mr["fov_z_mm"] == pytest.approx(6 * 4.0)
    dose = geometry[geometry["modality"] == "dose"].iloc[0]
    assert (dose["size_x"], dose["fov_x_mm"]) == (12, pytest.approx(24.0))
    assert "32-bit float" in dose["pixel_type"]


# --------------------------------------------------------------------------- clinical summary


def test_clinical_summary_shows_only_allowlisted_columns(cohort):
    table = curate(cohort)
    assert {"name", "birth_date"} <= set(table.columns)
    summary = clinical_summary(table)
    text = summary.to_string() + " ".join(summary.index) + " ".join(summary.columns)
    for row in DEFAULT_ROWS:
        assert row["name"] not in text and row["birth_date"] not in text
    assert "name" not in text.lower() and "birth" not in text.lower()
    assert list(summary.columns) == ["DM+ (n=2)", "DM- (n=2)", "All (n=4)"]
    assert summary.loc["Patients, n"].tolist() == ["2", "2", "4"]
    assert summary.loc["Age, years, median [IQR]", "DM+ (n=2)"].startswith("65.5")
    assert summary.loc["Sex: F, n (%)"].tolist() == ["1 (50%)", "1 (50%)", "2 (50%)"]
    assert "Grade: 3, n (%)" in summary.index  # whole numbers shown without '.0'
    assert any(i.startswith("Histology: UPS") for i in summary.index)
    assert any(i.startswith("Site: thigh") for i in summary.index)
    assert "Follow-up, months, median [IQR]" in summary.index
    assert set(BOOK_CLINICAL_COLUMNS) == {"age", "sex", "histology", "grade", "site"}


def test_clinical_summary_counts_included_patients_only(cohort):
    (cohort / "P01" / "ct.nii.gz").unlink()
    summary = clinical_summary(curate(cohort))
    assert summary.loc["Patients, n"].tolist() == ["1", "2", "3"]


# --------------------------------------------------------------------------- cohort.toml


def write_toml(cohort, text):
    (cohort / "cohort.toml").write_text(text, encoding="utf-8")


def test_config_defaults_without_toml(cohort):
    config = read_cohort_config(cohort)
    assert config == CohortConfig()
    assert config.modalities == ("ct", "dose", "t1w", "t2w", "ce_t1w")
    assert config.mr_reference == "t1w"
    assert config.same_frame_as_ct == ("dose",)
    assert dict(config.registration) == {}
    assert config.registered == ("t1w", "t2w", "ce_t1w")


def test_config_reads_every_key(cohort):
    write_toml(
        cohort,
        'modalities = ["ct", "dose", "t2w", "t1w", "ce_t1w"]\nmr_reference = "t2w"\n'
        'same_frame_as_ct = ["dose"]\n[registration]\nmode = "rigid"\niterations = 50\n',
    )
    config = read_cohort_config(cohort)
    assert config.modalities == ("ct", "dose", "t2w", "t1w", "ce_t1w")
    assert config.mr_reference == "t2w"
    assert dict(config.registration) == {"mode": "rigid", "iterations": 50}
    with pytest.raises(TypeError):
        config.registration["mode"] = "x"  # read-only


def test_non_default_modality_set(tmp_path):
    cohort = make_cohort(
        tmp_path,
        modalities=("ct", "pet", "t2w"),
        toml='modalities = ["ct", "pet", "t2w"]\nsame_frame_as_ct = ["pet"]\n',
    )
    config = read_cohort_config(cohort)
    assert config.mr_reference == "t2w"  # t1w not declared: the first registered image
    assert config.same_frame_as_ct == ("pet",)
    table = curate(cohort)
    assert table["included"].all()
    has = [c for c in table.columns if c.startswith("has_")]
    assert has == ["has_ct", "has_pet", "has_t2w", "has_gtv"]
    (cohort / "P01" / "pet.nii.gz").unlink()
    assert curate(cohort)["exclusion_reason"][0] == "missing pet"
    assert set(image_geometry(cohort, curate(cohort))["modality"]) == {"ct", "pet", "t2w"}


def test_default_same_frame_drops_undeclared_dose(cohort):
    write_toml(cohort, 'modalities = ["ct", "t1w", "t2w"]\n')
    config = read_cohort_config(cohort)
    assert config.same_frame_as_ct == () and config.mr_reference == "t1w"


def test_all_images_in_ct_frame_leaves_no_mr_reference(cohort):
    write_toml(cohort, 'modalities = ["ct", "dose", "pet"]\nsame_frame_as_ct = ["dose", "pet"]\n')
    config = read_cohort_config(cohort)
    assert config.mr_reference == "" and config.registered == ()


def test_registered_in_ct_frame_is_read_and_defaults_to_none(cohort):
    assert read_cohort_config(cohort).registered_in_ct_frame == ()
    write_toml(cohort, 'registered_in_ct_frame = ["t2w", "t1w"]\n')
    config = read_cohort_config(cohort)
    assert config.registered_in_ct_frame == ("t2w", "t1w")
    assert set(config.registered_in_ct_frame) <= set(config.registered)


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('modalities = ["ct", "dose"\n', ["TOML syntax"]),
        ('modalities = ["ct", "dose", "t1w"]\nchannels = 3\n', ["unknown key", "channels"]),
        ('modalities = ["ct", "dose", "T1w"]\n', ["'T1w'", "lower case"]),
        ('modalities = ["ct", "dose", "t1-w"]\n', ["'t1-w'"]),
        ('modalities = ["dose", "t1w", "t2w"]\n', ["lacks 'ct'"]),
        ('modalities = ["ct", "t1w", "t1w"]\n', ["'t1w'", "more than once"]),
        ('modalities = ["ct", "t1w"]\n', ["at least three"]),
        ('modalities = "ct"\n', ["list of strings"]),
        ('modalities = ["ct", "gtv", "t1w"]\n', ["'gtv'", "reserved"]),
        ('mr_reference = "flair"\n', ["'flair'", "not in modalities"]),
        ('mr_reference = "dose"\n', ["'dose'", "same_frame_as_ct"]),
        ('mr_reference = "ct"\n', ["'ct'", "not registered"]),
        ('same_frame_as_ct = ["pet"]\n', ["'pet'", "not in modalities"]),
        ('same_frame_as_ct = ["ct", "dose"]\n', ["'ct'"]),
        ("registration = 3\n", ["'registration' must be a table"]),
        ('registered_in_ct_frame = ["dose"]\n', ["'dose'", "not registered"]),
        ('registered_in_ct_frame = ["ct"]\n', ["'ct'", "not registered"]),
        ('registered_in_ct_frame = ["t2w", "t2w"]\n', ["registered_in_ct_frame", "twice"]),
        ('registered_in_ct_frame = "t2w"\n', ["list of strings"]),
    ],
)
def test_config_errors_name_cohort_toml(cohort, toml, words):
    write_toml(cohort, toml)
    error = raises_cohort_error(lambda: read_cohort_config(cohort), "cohort.toml", *words)
    assert error.path == cohort / "cohort.toml"


def test_config_error_stops_curation(cohort):
    write_toml(cohort, "modalities = [\n")
    raises_cohort_error(lambda: curate(cohort), "cohort.toml", "syntax")


def test_missing_cohort_folder(tmp_path):
    raises_cohort_error(lambda: curate(tmp_path / "nowhere"), "nowhere", "does not exist")


# --------------------------------------------------------------------------- clinical.csv


def test_missing_clinical_csv(cohort):
    (cohort / "clinical.csv").unlink()
    raises_cohort_error(lambda: curate(cohort), "clinical.csv", "missing", "patient_id")


def test_missing_required_column_lists_present_ones(cohort):
    rows = [{k: v for k, v in r.items() if k != "followup_months"} for r in DEFAULT_ROWS]
    write_clinical(cohort, rows)
    error = raises_cohort_error(
        lambda: read_clinical(cohort), "clinical.csv", "followup_months", "header has"
    )
    assert "patient_id, distant_metastasis, age" in str(error)


def test_duplicate_patient_ids_are_named(cohort):
    write_clinical(cohort, [*DEFAULT_ROWS, DEFAULT_ROWS[2]])
    raises_cohort_error(
        lambda: curate(cohort), "clinical.csv", "duplicate", "lines 4, 6", patient="P03"
    )


@pytest.mark.parametrize("value", ["2", "yes", "-1", "0.5"])
def test_bad_label_is_named(cohort, value):
    write_clinical(cohort, rows_with(P02={"distant_metastasis": value}))
    raises_cohort_error(
        lambda: curate(cohort),
        "clinical.csv",
        "distant_metastasis",
        f"'{value}'",
        "line 3",
        patient="P02",
    )


@pytest.mark.parametrize("value", ["abc", "-3", "inf", "12 months"])
def test_bad_followup_is_named(cohort, value):
    write_clinical(cohort, rows_with(P04={"followup_months": value}))
    raises_cohort_error(
        lambda: curate(cohort), "clinical.csv", "followup_months", f"'{value}'", patient="P04"
    )


def test_several_bad_labels_are_all_listed(cohort):
    write_clinical(
        cohort, rows_with(P01={"distant_metastasis": "yes"}, P03={"distant_metastasis": "no"})
    )
    raises_cohort_error(lambda: read_clinical(cohort), "P01", "'yes'", "P03", "'no'")


def test_empty_patient_id(cohort):
    write_clinical(cohort, rows_with(P02={"patient_id": " "}))
    raises_cohort_error(lambda: read_clinical(cohort), "clinical.csv", "empty patient_id", "3")


def test_empty_and_ragged_csv(cohort):
    (cohort / "clinical.csv").write_text("")
    raises_cohort_error(lambda: read_clinical(cohort), "clinical.csv", "empty")
    (cohort / "clinical.csv").write_text(
        "patient_id,distant_metastasis,followup_months\nP01,1,12\nP02,0,30,extra,cells\n"
    )
    raises_cohort_error(lambda: read_clinical(cohort), "clinical.csv", "comma-separated")


def test_non_utf8_csv(cohort):
    (cohort / "clinical.csv").write_bytes(
        "patient_id,distant_metastasis,followup_months,site\nP01,1,12,h\u00fcfte\n".encode(
            "latin-1"
        )
    )
    raises_cohort_error(lambda: read_clinical(cohort), "clinical.csv", "UTF-8")


def test_folder_without_row_is_named(cohort):
    write_patient(cohort, "P99")
    raises_cohort_error(lambda: curate(cohort), "no row in clinical.csv", patient="P99", file="P99")


def test_folder_without_row_case_hint(cohort):
    shutil.move(cohort / "P02", cohort / "p02")
    raises_cohort_error(lambda: curate(cohort), "case differs", patient="p02")


def test_clinical_column_clashing_with_curation(cohort):
    write_clinical(cohort, [{**r, "included": "yes"} for r in DEFAULT_ROWS])
    raises_cohort_error(lambda: curate(cohort), "clinical.csv", "included", "clash")


# --------------------------------------------------------------------------- broken images


def test_truncated_float_image(cohort):
    truncate(cohort / "P03" / "t2w.nii.gz")
    raises_cohort_error(lambda: curate(cohort), "truncated", patient="P03", file="t2w.nii.gz")


def test_truncated_integer_image_is_caught_without_reading_voxels(cohort):
    # SimpleITK itself reads a cut-off .nii.gz without complaint; the gzip size check does not.
    path = cohort / "P01" / "ct.nii.gz"
    noise = np.random.default_rng(0).integers(-1000, 1000, CT_SIZE[::-1], dtype=np.int16)
    image = sitk.GetImageFromArray(noise)
    image.CopyInformation(ct_image())
    write_image(image, path)  # noise does not compress: the cut keeps the header
    truncate(path, 0.8)
    raises_cohort_error(lambda: curate(cohort), "truncated", patient="P01", file="ct.nii.gz")


def test_random_bytes_file(cohort):
    (cohort / "P02" / "dose.nii.gz").write_bytes(np.random.default_rng(1).bytes(2000))
    raises_cohort_error(lambda: curate(cohort), "cannot be read", patient="P02", file="dose.nii.gz")


def test_empty_file(cohort):
    (cohort / "P02" / "t1w.nii.gz").write_bytes(b"")
    raises_cohort_error(lambda: curate(cohort), "cannot be read", patient="P02", file="t1w.nii.gz")


def test_multi_member_gzip_is_accepted(cohort):
    # A valid file whose gzip trailer does not give the total size (concatenated members).
    path = cohort / "P01" / "t1w.nii.gz"
    plain = cohort / "t1w.nii"
    sitk.WriteImage(mr_image(), str(plain), useCompression=False)
    data = plain.read_bytes()
    plain.unlink()
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    assert curate(cohort)["included"].all()
    assert read_image(path, "P01", "t1w").GetSize() == (16, 16, 6)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels_are_counted(cohort, value):
    dose = dose_image()
    values = sitk.GetArrayFromImage(dose)
    values[0, 0, :3] = value
    bad = sitk.GetImageFromArray(values)
    bad.CopyInformation(dose)
    write_image(bad, cohort / "P04" / "dose.nii.gz")
    kind = "NaN" if np.isnan(value) else "infinite"
    raises_cohort_error(
        lambda: curate(cohort), f"3 {kind} voxels", patient="P04", file="dose.nii.gz"
    )


def test_non_binary_gtv_names_values(cohort):
    mask = gtv_image()
    values = sitk.GetArrayFromImage(mask)
    values[0, 0, 0] = 2
    values[0, 0, 1] = 255
    bad = sitk.GetImageFromArray(values)
    bad.CopyInformation(mask)
    write_image(bad, cohort / "P02" / "gtv.nii.gz")
    raises_cohort_error(
        lambda: curate(cohort), "not binary", "2, 255", patient="P02", file="gtv.nii.gz"
    )


def _gtv_with(cohort, patient, **geometry):
    mask = gtv_image()
    if "size" in geometry:
        array = np.zeros(geometry["size"][::-1], dtype=np.uint8)
        array[1:3, 1:3, 1:3] = 1
        resized = sitk.GetImageFromArray(array)
        resized.SetSpacing(mask.GetSpacing())
        resized.SetOrigin(mask.GetOrigin())
        mask = resized
    if "spacing" in geometry:
        mask.SetSpacing(geometry["spacing"])
    if "origin" in geometry:
        mask.SetOrigin(geometry["origin"])
    if "direction" in geometry:
        mask.SetDirection(geometry["direction"])
    write_image(mask, cohort / patient / "gtv.nii.gz")


@pytest.mark.parametrize(
    ("geometry", "words"),
    [
        ({"size": (20, 20, 9)}, ["size", "(20, 20, 9)", "(20, 20, 8)"]),
        ({"spacing": (1.0, 1.0, 2.5)}, ["spacing", "largest difference 0.5 mm"]),
        ({"origin": (-10.0, -12.0, -7.5)}, ["origin", "largest difference 1.5 mm"]),
        ({"direction": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)}, ["direction"]),
    ],
)
def test_gtv_off_the_ct_grid(cohort, geometry, words):
    _gtv_with(cohort, "P03", **geometry)
    raises_cohort_error(
        lambda: curate(cohort), "not on the CT grid", *words, patient="P03", file="gtv.nii.gz"
    )


def test_gtv_within_tolerance_is_on_the_grid(cohort):
    _gtv_with(cohort, "P03", origin=(-10.0 + 1e-4, -12.0, -9.0))
    assert curate(cohort)["included"].all()


def test_misnamed_image_is_an_error_not_an_exclusion(cohort):
    shutil.move(cohort / "P01" / "ct.nii.gz", cohort / "P01" / "CT.nii.gz")
    raises_cohort_error(lambda: curate(cohort), "CT.nii.gz", "ct.nii.gz", patient="P01")
    shutil.move(cohort / "P01" / "CT.nii.gz", cohort / "P01" / "ct.nii.gz")
    sitk.WriteImage(mr_image(), str(cohort / "P02" / "t2w.nii"))
    (cohort / "P02" / "t2w.nii.gz").unlink()
    raises_cohort_error(lambda: curate(cohort), "t2w.nii", "t2w.nii.gz", patient="P02")


def test_four_dimensional_image(cohort):
    volume = sitk.GetImageFromArray(np.zeros((2, 6, 16, 16), dtype=np.float32), isVector=False)
    write_image(volume, cohort / "P02" / "t1w.nii.gz")
    raises_cohort_error(lambda: curate(cohort), "4-D", patient="P02", file="t1w.nii.gz")


def test_error_is_reported_for_the_first_bad_patient(cohort):
    truncate(cohort / "P02" / "ct.nii.gz")
    truncate(cohort / "P04" / "ct.nii.gz")
    raises_cohort_error(lambda: curate(cohort), patient="P02")


# --------------------------------------------------------------------------- read_image


def test_read_image_guards(tmp_path):
    path = write_image(ct_image(), tmp_path / "P01" / "ct.nii.gz")
    assert read_image(path, "P01", "ct").GetSize() == CT_SIZE
    raises_cohort_error(
        lambda: read_image(tmp_path / "P01" / "t1w.nii.gz", "P01", "t1w"),
        "does not exist",
        patient="P01",
        file="t1w.nii.gz",
    )
    (tmp_path / "P01" / "junk.nii.gz").write_bytes(os.urandom(500))
    error = raises_cohort_error(
        lambda: read_image(tmp_path / "P01" / "junk.nii.gz", "P01", "junk"),
        "cannot be read",
        patient="P01",
        file="junk.nii.gz",
    )
    assert isinstance(error.__cause__, RuntimeError)  # the SimpleITK error is chained
    truncate(path)
    raises_cohort_error(lambda: read_image(path, "P01", "ct"), "truncated", file="ct.nii.gz")


def test_nan_in_mr_and_float_gtv_are_found_on_disk(cohort):
    # SimpleITK's NIfTI reader turns NaN into 0, so the check reads the raw voxels.
    mr = mr_image()
    values = sitk.GetArrayFromImage(mr)
    values[2, 5, 5] = np.nan
    bad = sitk.GetImageFromArray(values)
    bad.CopyInformation(mr)
    write_image(bad, cohort / "P01" / "ce_t1w.nii.gz")
    raises_cohort_error(lambda: curate(cohort), "1 NaN voxel ", patient="P01", file="ce_t1w.nii.gz")
    write_image(mr, cohort / "P01" / "ce_t1w.nii.gz")
    mask = sitk.Cast(gtv_image(), sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(mask)
    values[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(values)
    bad.CopyInformation(mask)
    write_image(bad, cohort / "P01" / "gtv.nii.gz")
    raises_cohort_error(lambda: curate(cohort), "NaN", patient="P01", file="gtv.nii.gz")


def test_check_finite_file_other_formats(tmp_path):
    values = np.zeros((4, 5, 6), dtype=np.float32)
    values[0, 0, :2] = np.inf
    path = tmp_path / "dose.mha"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    raises_cohort_error(
        lambda: check_finite_file(path, "P07", "dose"), "2 infinite voxels", patient="P07"
    )
