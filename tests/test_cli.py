"""The command line: synth writes a cohort once, errors print one clear line."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd


def _stsnb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stsnb", *args], capture_output=True,
                          text=True, timeout=600)


def test_synth_cli_writes_the_layout_and_keeps_it_on_rerun(tmp_path):
    out = tmp_path / "cohort"
    first = _stsnb("synth", "--out", str(out), "--patients", "2", "--seed", "5", "--quiet")
    assert first.returncode == 0, first.stderr
    clinical = pd.read_csv(out / "clinical.csv", dtype={"patient_id": str})
    assert len(clinical) == 2
    for pid in clinical["patient_id"]:
        assert (out / pid / "ct.nii.gz").exists() and (out / pid / "gtv.nii.gz").exists()
    before = (out / "clinical.csv").stat().st_mtime_ns
    again = _stsnb("synth", "--out", str(out), "--patients", "2", "--seed", "5", "--quiet")
    assert again.returncode == 0 and "kept" in again.stdout
    assert (out / "clinical.csv").stat().st_mtime_ns == before


def test_cli_reports_a_bad_cohort_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _stsnb("curate", "--cohort-dir", str(tmp_path / "empty"), "--work-dir",
                    str(tmp_path / "work"), "--profile", "smoke")
    assert result.returncode == 2
    assert result.stderr.startswith("stsnb: error:")
    assert "clinical.csv" in result.stderr and "Traceback" not in result.stderr


def test_synth_cli_generates_a_chosen_set_of_images(tmp_path):
    out = tmp_path / "pet"
    args = ("synth", "--out", str(out), "--patients", "1", "--seed", "5", "--quiet",
            "--workers", "1")
    bad = _stsnb(*args, "--modalities", "ct,pet,x-ray")
    assert bad.returncode == 2 and bad.stderr.startswith("stsnb: error: Unknown modality")
    assert "Traceback" not in bad.stderr and not (out / "clinical.csv").exists()
    first = _stsnb(*args, "--modalities", "ct,pet,t1w")
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in (out / "SYN001").glob("*.nii.gz")) == [
        "ct.nii.gz", "gtv.nii.gz", "pet.nii.gz", "t1w.nii.gz"]
    assert 'modalities = ["ct", "pet", "t1w"]' in (out / "cohort.toml").read_text()
    again = _stsnb(*args, "--modalities", "ct,pet,t1w")
    assert again.returncode == 0 and "kept" in again.stdout
    other = _stsnb(*args)  # the study's five images: not the cohort in the folder
    assert other.returncode == 0 and "kept" not in other.stdout
    images = {p.name for p in (out / "SYN001").glob("*.nii.gz")}
    assert "dose.nii.gz" in images and "pet.nii.gz" not in images
