"""Profiles carry the study's numbers; stage records, atomic writes and timings behave."""

from __future__ import annotations

import pandas as pd
import pytest

from stsnb.core.config import PAPER, QUICK, SMOKE, resolve_profile
from stsnb.core.errors import ConfigError, StsnbError
from stsnb.core.store import (
    Stage,
    atomic_path,
    cohort_checksum,
    ensure_writable_dir,
    record_timing,
    write_text_atomic,
)


def test_paper_profile_is_the_study_protocol():
    t, p = PAPER.training, PAPER.preprocessing
    assert (t.folds, t.momentum, t.batch_size, t.learning_rate) == (10, 0.9, 64, 0.01)
    assert (t.max_epochs, t.patience) == (50, 8)
    assert (p.z_margin_mm, p.canvas_px, p.input_px) == (10.0, 512, 224)
    assert p.max_slices_per_patient is None and t.control_combos is None


def test_quick_keeps_the_network_input_and_smoke_is_small():
    assert QUICK.preprocessing.input_px == 224
    assert QUICK.training.folds < PAPER.training.folds
    assert SMOKE.training.folds == 2 and SMOKE.training.max_epochs <= 2


def test_profile_resolution(monkeypatch):
    assert resolve_profile("PAPER") is PAPER
    monkeypatch.setattr("stsnb.core.config.cuda_available", lambda: False)
    assert resolve_profile("auto") is QUICK
    monkeypatch.setattr("stsnb.core.config.cuda_available", lambda: True)
    assert resolve_profile("auto") is PAPER
    with pytest.raises(ConfigError, match="Unknown profile 'fast'"):
        resolve_profile("fast")


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "table.csv"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_stage_is_current_only_for_same_key_and_existing_outputs(tmp_path):
    stage = Stage(tmp_path, "demo", {"profile": "smoke", "seed": 0})
    assert not stage.is_current()
    stage.start()
    out = write_text_atomic(stage.dir / "out.txt", "x")
    stage.finish([out])
    assert Stage(tmp_path, "demo", {"profile": "smoke", "seed": 0}).is_current()
    assert not Stage(tmp_path, "demo", {"profile": "smoke", "seed": 1}).is_current()
    out.unlink()
    assert not Stage(tmp_path, "demo", {"profile": "smoke", "seed": 0}).is_current()
    (stage.dir / "stage.json").write_text("{truncated")
    assert not Stage(tmp_path, "demo", {"profile": "smoke", "seed": 0}).is_current()


def test_timings_keep_one_row_per_stage(tmp_path):
    record_timing(tmp_path, "curation", 1.5)
    record_timing(tmp_path, "registration", 2.0)
    record_timing(tmp_path, "curation", 3.25)
    table = pd.read_csv(tmp_path / "timings.csv")
    assert sorted(table["stage"]) == ["curation", "registration"]
    assert table.set_index("stage").loc["curation", "seconds"] == 3.25


def test_cohort_checksum_follows_content_not_time(tmp_path):
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "ct.nii.gz").write_bytes(b"abc")
    (tmp_path / ".stamp").write_text("ignored")
    first = cohort_checksum(tmp_path)
    (tmp_path / "p1" / "ct.nii.gz").write_bytes(b"abc")
    assert cohort_checksum(tmp_path) == first
    (tmp_path / "p1" / "ct.nii.gz").write_bytes(b"abd")
    assert cohort_checksum(tmp_path) != first


def test_unwritable_work_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StsnbError, match="work_dir .* cannot be written"):
        ensure_writable_dir(blocker / "work")


def test_a_chapter_shows_the_settings_it_uses_and_the_first_page_all():
    from stsnb.core.config import QUICK
    from stsnb.run.notebook import profile_table

    everything = profile_table(QUICK)
    training = profile_table(QUICK, "training")
    assert training["setting"].iloc[0] == "profile" and training["value"].iloc[0] == "quick"
    assert all(s.startswith("training.") for s in training["setting"].iloc[1:])
    assert set(training["setting"]) < set(everything["setting"])
    assert {"registration.", "preprocessing.", "radiomics."} <= {
        s.split(".")[0] + "." for s in everything["setting"]}
    assert "synthetic_patients" in set(everything["setting"])
    with pytest.raises(ConfigError, match="Unknown profile sections"):
        profile_table(QUICK, "trainig")
