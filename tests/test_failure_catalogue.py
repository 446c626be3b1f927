"""The failure catalogue: every bad input the suite recognises, the message a user sees.

Each case builds its bad input, triggers the failure and checks the message. The book page
`book/failures.md` is generated from these same cases; a test fails when it is out of date.
Regenerate it with
`STSNB_WRITE_CATALOGUE=1 .venv/bin/python -m pytest tests/test_failure_catalogue.py`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from cohort_fixtures import DEFAULT_ROWS, make_cohort, truncate, write_image, write_patient

from stsnb.core import store
from stsnb.core.combinations import resolve_combo
from stsnb.core.config import resolve_profile
from stsnb.core.errors import StsnbError
from stsnb.core.store import ensure_writable_dir
from stsnb.curation.cohort import curate_cohort

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "book" / "failures.md"


@dataclass(frozen=True)
class Case:
    area: str
    bad_input: str
    trigger: Callable[[Path], object]
    expect: str  # regex the message must match


def _cohort(tmp: Path, rows=DEFAULT_ROWS, toml: str | None = None) -> Path:
    return make_cohort(tmp, rows=rows, toml=toml)


def _rows(**changes):
    rows = [dict(r) for r in DEFAULT_ROWS]
    for key, value in changes.items():
        rows[0][key] = value
    return rows


def _missing_clinical(tmp):
    cohort = _cohort(tmp)
    (cohort / "clinical.csv").unlink()
    return curate_cohort(cohort, progress=False)


def _missing_column(tmp):
    rows = [{k: v for k, v in r.items() if k != "followup_months"} for r in DEFAULT_ROWS]
    return curate_cohort(_cohort(tmp, rows), progress=False)


def _bad_label(tmp):
    return curate_cohort(_cohort(tmp, _rows(distant_metastasis="yes")), progress=False)


def _duplicate_ids(tmp):
    rows = [dict(r) for r in DEFAULT_ROWS]
    rows[1]["patient_id"] = rows[0]["patient_id"]
    return curate_cohort(_cohort(tmp, rows), progress=False)


def _negative_followup(tmp):
    return curate_cohort(_cohort(tmp, _rows(followup_months="-3")), progress=False)


def _orphan_folder(tmp):
    cohort = _cohort(tmp)
    write_patient(cohort, "P99")
    return curate_cohort(cohort, progress=False)


def _truncated(tmp):
    cohort = _cohort(tmp)
    truncate(cohort / "P01" / "t2w.nii.gz")
    return curate_cohort(cohort, progress=False)


def _not_an_image(tmp):
    cohort = _cohort(tmp)
    (cohort / "P02" / "ct.nii.gz").write_bytes(os.urandom(2000))
    return curate_cohort(cohort, progress=False)


def _nan_voxels(tmp):
    cohort = _cohort(tmp)
    path = cohort / "P01" / "t1w.nii.gz"
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[0, 0, :5] = np.nan
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    write_image(out, path)
    return curate_cohort(cohort, progress=False)


def _gtv_off_grid(tmp):
    cohort = _cohort(tmp)
    path = cohort / "P01" / "gtv.nii.gz"
    gtv = sitk.ReadImage(str(path))
    gtv.SetOrigin(tuple(o + 2.5 for o in gtv.GetOrigin()))
    write_image(gtv, path)
    return curate_cohort(cohort, progress=False)


def _gtv_not_binary(tmp):
    cohort = _cohort(tmp)
    path = cohort / "P02" / "gtv.nii.gz"
    gtv = sitk.ReadImage(str(path))
    write_image(gtv * 3, path)
    return curate_cohort(cohort, progress=False)


def _toml_unknown_modality(tmp):
    toml = 'modalities = ["ct", "dose", "T1 weighted"]\n'
    return curate_cohort(_cohort(tmp, toml=toml), progress=False)


def _toml_syntax(tmp):
    return curate_cohort(_cohort(tmp, toml='modalities = ["ct", "dose"\n'), progress=False)


def _toml_reference(tmp):
    toml = 'modalities = ["ct", "dose", "t1w", "t2w"]\nmr_reference = "ce_t1w"\n'
    return curate_cohort(_cohort(tmp, toml=toml), progress=False)


def _unknown_profile(tmp):
    return resolve_profile("fast")


def _combo_out_of_range(tmp):
    return resolve_combo(16)


def _combo_unknown_name(tmp):
    return resolve_combo("ct-pet-t2w")


def _work_dir_not_writable(tmp):
    blocker = tmp / "results.txt"
    blocker.write_text("a file where a folder should be")
    return ensure_writable_dir(blocker / "work")


def _predictions_missing(tmp):
    from stsnb.core.runs import load_predictions

    return load_predictions(tmp / "runs" / "patient" / "combo09" / "predictions.csv")


def _predictions_mixed_labels(tmp):
    from stsnb.core.metrics import patient_predictions

    table = pd.DataFrame({"patient_id": ["P01", "P01"], "slice_index": [3, 4], "fold": [1, 1],
                          "label": [0, 1], "prob": [0.2, 0.7]})
    return patient_predictions(table)


@contextlib.contextmanager
def _one_mib_free() -> Iterator[None]:
    """The free-space probe reports 1 MiB free on every disk."""
    usage = shutil.disk_usage("/")
    with mock.patch.object(store.shutil, "disk_usage", lambda path: usage._replace(free=1 << 20)):
        yield


def _disk_full_slices(tmp):
    from cohort_fixtures import STUDY, ct_image, gtv_image

    from stsnb.slices import PatientVolumes, build_slice_store

    volumes = PatientVolumes("P01", 1, {m: ct_image() for m in STUDY}, gtv_image())
    with _one_mib_free():
        return build_slice_store(tmp / "work", [volumes], "smoke", progress=False,
                                 modalities=STUDY)


@functools.cache
def _random_network():
    from stsnb.training.model import build_model

    return build_model("none", seed=0)


def _disk_full_features(tmp):
    import torch

    from stsnb.training.features import ArraySlices, cached_features

    index = pd.DataFrame({"patient_id": ["P01", "P01", "P02"], "slice_index": [3, 4, 3],
                          "label": [1, 1, 0]})
    images = np.zeros((3, 5, 32, 32), dtype=np.float16)
    source = ArraySlices(images, index, ("ct", "dose", "t1w", "t2w", "ce_t1w"))
    with _one_mib_free():
        return cached_features(source, tmp / "work", ("ct", "dose", "t1w"), _random_network(),
                               torch.device("cpu"), "fp32", progress=False)


def _disk_full_registration(tmp):
    from stsnb.core.config import SMOKE
    from stsnb.curation.stage import run_curation
    from stsnb.registration import run_registration

    cohort = _cohort(tmp)
    run_curation(cohort, tmp / "work", SMOKE, progress=False)
    with _one_mib_free():
        return run_registration(cohort, tmp / "work", SMOKE, progress=False)


CASES = [
    Case("clinical.csv", "clinical.csv missing", _missing_clinical, r"clinical\.csv"),
    Case("clinical.csv", "a required column missing", _missing_column, r"followup_months"),
    Case("clinical.csv", "a label other than 1, 0 or empty", _bad_label, r"yes"),
    Case("clinical.csv", "duplicate patient ids", _duplicate_ids, r"P01"),
    Case("clinical.csv", "a negative follow-up", _negative_followup, r"-3"),
    Case("cohort files", "a patient folder with no row in clinical.csv", _orphan_folder, r"P99"),
    Case("cohort files", "a truncated image file", _truncated, r"P01.*t2w|t2w.*P01"),
    Case("cohort files", "a file that is not an image", _not_an_image, r"P02"),
    Case("cohort files", "NaN voxels in an image", _nan_voxels, r"(?i)nan"),
    Case("geometry", "a GTV not on the CT grid", _gtv_off_grid, r"(?i)origin"),
    Case("geometry", "a GTV with values other than 0 and 1", _gtv_not_binary, r"3"),
    Case("cohort.toml", "a modality name that is not a file stem", _toml_unknown_modality,
         r"T1 weighted"),
    Case("cohort.toml", "a TOML syntax error", _toml_syntax, r"cohort\.toml"),
    Case("cohort.toml", "mr_reference not among the modalities", _toml_reference, r"ce_t1w"),
    Case("parameters", "an unknown profile", _unknown_profile, r"fast"),
    Case("parameters", "a combination number out of range", _combo_out_of_range, r"16"),
    Case("parameters", "an unknown combination name", _combo_unknown_name, r"ct-pet-t2w"),
    Case("work dir", "a work_dir on a path that cannot be written", _work_dir_not_writable,
         r"cannot be written"),
    Case("work dir", "too little free disk space for the registration outputs",
         _disk_full_registration, r"registration outputs of 4 patient.*MiB are free"),
    Case("work dir", "too little free disk space for the slice store", _disk_full_slices,
         r"patient P01.*slice store.*needs about .*MiB are free"),
    Case("work dir", "too little free disk space for the feature cache", _disk_full_features,
         r"VGG-19 features of 2 patients.*MiB are free"),
    Case("results", "no predictions for a combination", _predictions_missing, r"chapter 04"),
    Case("results", "a patient with slices of both labels", _predictions_mixed_labels,
         r"both labels"),
]


def _message(case: Case, tmp: Path) -> str:
    with pytest.raises(StsnbError) as caught:
        case.trigger(tmp)
    return str(caught.value)


def _clean(message: str, tmp: Path) -> str:
    text = message.replace(str(tmp), "<dir>").replace("\n", " ")
    return re.sub(r"\s+", " ", text).replace("|", "/").strip()


def _page(rows: list[tuple[str, str, str]]) -> str:
    lines = [
        "# Failure catalogue",
        "",
        "Every bad input the suite recognises, and the message a user sees. Each row is a test",
        "(`tests/test_failure_catalogue.py`), and this page is generated from those tests, so "
        "the",
        "messages are the real ones (`<dir>` stands for the folder of the run).",
        "",
        "| area | bad input | message |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {area} | {bad} | {message} |" for area, bad, message in rows]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[c.bad_input for c in CASES])
def test_each_bad_input_gets_a_clear_message(case, tmp_path):
    message = _message(case, tmp_path)
    assert re.search(case.expect, message), message
    assert "Traceback" not in message


def test_catalogue_page_is_up_to_date(tmp_path_factory):
    rows = []
    for case in CASES:
        tmp = tmp_path_factory.mktemp("case")
        rows.append((case.area, case.bad_input, _clean(_message(case, tmp), tmp)))
    assert len(rows) >= 15
    page = _page(rows)
    if os.environ.get("STSNB_WRITE_CATALOGUE"):
        PAGE.write_text(page, encoding="utf-8")
    assert PAGE.exists(), "run with STSNB_WRITE_CATALOGUE=1 to write book/failures.md"
    assert PAGE.read_text(encoding="utf-8") == page
