"""The CPU precision choice: measured once per machine key, bf16 only when >= 1.3x faster,
cached so feature keys do not flip; the measurement itself is stubbed (no timing in tests)."""

from __future__ import annotations

import json

import pytest
import torch

from stsnb.training import precision
from stsnb.training.features import resolve_precision


class Stub:
    """A measurement that returns fixed images/s per precision and counts its calls."""

    def __init__(self, fp32: float, bf16: float) -> None:
        self.rates = {"fp32": fp32, "bf16": bf16}
        self.calls: list[str] = []

    def __call__(self, name: str, budget_s: float | None = None) -> float:
        self.calls.append(name)
        return self.rates[name]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    return tmp_path / "cache" / precision.CACHE_FILE


def test_emulated_bf16_picks_fp32(monkeypatch, cache):
    """Under ONEDNN_MAX_CPU_ISA=AVX2 bf16 is emulated (slower than fp32): fp32 is chosen and
    the machine key names the ISA limit."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    choice = precision.cpu_precision(measure=Stub(fp32=3.5, bf16=0.9))
    assert choice.precision == "fp32"
    assert choice.machine["onednn_max_cpu_isa"] == "AVX2"
    assert choice.speedup == pytest.approx(0.9 / 3.5)


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [
    (7.2, 27.6, "bf16"),   # AMX
    (3.5, 8.8, "bf16"),    # AVX-512-BF16 without AMX
    (3.5, 4.4, "fp32"),    # 1.26x: not worth a precision change
    (3.5, 3.5 * 1.3, "bf16"),
])
def test_bf16_only_when_at_least_1_3_times_faster(fp32, bf16, expected):
    assert precision.cpu_precision(measure=Stub(fp32, bf16)).precision == expected


def test_the_choice_is_cached_per_machine_key(monkeypatch, cache):
    first = Stub(fp32=3.5, bf16=9.0)
    assert precision.cpu_precision(measure=first).precision == "bf16"
    assert first.calls == ["fp32", "bf16"]
    again = Stub(fp32=9.0, bf16=1.0)  # a noisy second measurement must not flip the choice
    assert precision.cpu_precision(measure=again).precision == "bf16"
    assert again.calls == []
    stored = json.loads(cache.read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["bf16_images_per_s"] == 9.0
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # another key: measured
    other = Stub(fp32=3.5, bf16=8.0)
    assert precision.cpu_precision(measure=other).precision == "bf16"
    assert other.calls == ["fp32", "bf16"] and len(json.loads(cache.read_text())) == 2


def test_auto_on_cpu_uses_the_cached_choice(monkeypatch):
    monkeypatch.setattr(precision, "measure_throughput", Stub(fp32=7.0, bf16=1.0))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # explicit wins
    entry = precision.cpu_precision().as_dict()
    assert entry["precision"] == "fp32" and entry["min_speedup"] == precision.MIN_SPEEDUP


def test_a_real_measurement_returns_a_positive_rate(monkeypatch):
    monkeypatch.setattr(precision, "MEASURE_PX", 32)
    monkeypatch.setattr(precision, "MEASURE_IMAGES", 2)
    monkeypatch.setattr(precision, "MEASURE_BATCH", 2)
    assert precision.measure_throughput("fp32") > 0
