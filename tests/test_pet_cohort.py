"""A cohort with other images than the study's: PET/CT and T1w only, every chapter end to end."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from stsnb.core.combinations import combinations_for, resolve_combo
from stsnb.results.tables import combination_names, combination_summary, study_comparison
from stsnb.run.pages import CHAPTERS

pytestmark = pytest.mark.smoke

PET_COMBINATIONS = [
    (1, "ct-pet-t1w", "ct", "pet", "t1w"),
    (2, "ct", "ct", "ct", "ct"),
    (3, "pet", "pet", "pet", "pet"),
    (4, "t1w", "t1w", "t1w", "t1w"),
]


def _outputs(path: Path) -> list[str]:
    """Every text and markdown output of an executed notebook."""
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                texts.append(out.text)
            for kind in ("text/markdown", "text/plain"):
                if kind in out.get("data", {}):
                    texts.append(out.data[kind])
    return texts


def test_every_chapter_ran_on_the_pet_cohort(pet_run):
    executed = {p.stem: p for p in pet_run["executed"].glob("0*.ipynb")}
    for name in CHAPTERS:
        if name == "04_training":  # one triplet: its page and the two controls
            pages = {n for n in executed if n.startswith("04_training_combo")}
            assert pages == {"04_training_combo01", "04_training_combo01_slice",
                             "04_training_combo01_random"}
        else:
            assert name in executed
    assert {p.stem for p in pet_run["notebooks"]} <= set(executed)
    for path in executed.values():
        nb = nbformat.read(path, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert errors == [], path.name


def test_combinations_are_numbered_triplet_first_then_singles(pet_run):
    work_dir = pet_run["work_dir"]
    table = pd.read_csv(work_dir / "combinations.csv")
    assert [tuple(r) for r in table.itertuples(index=False)] == PET_COMBINATIONS
    modalities = ("ct", "pet", "t1w")
    assert [(c.number, c.name) for c in combinations_for(modalities)] == [
        (n, name) for n, name, *_ in PET_COMBINATIONS]
    assert resolve_combo("pet", modalities).number == 3
    assert resolve_combo(1, modalities).channels == ("ct", "pet", "t1w")
    assert combination_names(work_dir) == {n: name for n, name, *_ in PET_COMBINATIONS}
    store = json.loads((work_dir / "slices" / "store.json").read_text())
    assert store["modalities"] == list(modalities)


def test_pet_is_resampled_in_the_ct_frame_and_t1w_registered(pet_run):
    work_dir, cohort = pet_run["work_dir"], pet_run["cohort_dir"]
    qa = pd.read_csv(work_dir / "registration" / "qa.csv", dtype={"patient_id": str})
    assert set(qa["mr_reference"]) == {"t1w"} and qa["dice_deformable"].median() > 0.85
    for pid in qa["patient_id"][:3]:
        record = json.loads((work_dir / "registration" / pid / "record.json").read_text())
        assert record["key"]["registered"] == ["t1w"] and record["key"]["same_frame"] == ["pet"]
        ct = sitk.ReadImage(str(cohort / pid / "ct.nii.gz"))
        pet_on_ct = sitk.ReadImage(str(work_dir / "registration" / pid / "pet.nii.gz"))
        assert pet_on_ct.GetSize() == ct.GetSize()
        assert np.allclose(pet_on_ct.GetOrigin(), ct.GetOrigin())
        direct = sitk.Resample(sitk.ReadImage(str(cohort / pid / "pet.nii.gz")), ct,
                               sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        diff = np.abs(sitk.GetArrayFromImage(pet_on_ct) - sitk.GetArrayFromImage(direct))
        assert float(np.percentile(diff, 99)) < 0.05  # SUV: not moved, only resampled


def test_results_and_gradcam_name_the_cohorts_combination(pet_run):
    work_dir, executed = pet_run["work_dir"], pet_run["executed"]
    summary = combination_summary(work_dir, "patient", n_boot=50)
    assert summary["name"].tolist() == ["ct-pet-t1w"]
    fold = pd.DataFrame({"fold": [1, 2], "accuracy": [0.5, 0.7], "sensitivity": [0.5, 0.5],
                         "specificity": [0.5, 0.5], "precision": [0.5, 0.5], "f1": [0.5, 0.5]})
    table = study_comparison({1: fold}, combination_names(work_dir)).set_index("combination")
    assert (table.iloc[:10]["accuracy (ours)"] == "not in this cohort").all()
    assert table.loc["1. ct-pet-t1w", "accuracy (study)"] == "not in the study"
    assert table.loc["1. ct-pet-t1w", "accuracy (ours)"] == "0.60 ± 0.14"
    results_text = "\n".join(_outputs(executed / "05_cv_results.ipynb"))
    assert "Best combination (patient-level AUC): **1 ct-pet-t1w**" in results_text
    gradcam_text = "\n".join(_outputs(executed / "06_gradcam.ipynb"))
    assert "combination **1 (ct-pet-t1w)**" in gradcam_text
    preprocessing = "\n".join(_outputs(executed / "03_preprocessing.ipynb"))
    assert "the 1 three-image combination and the 3 single-image references" in preprocessing
