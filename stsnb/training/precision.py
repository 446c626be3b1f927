"""Which precision the frozen convolutions run in on a CPU: decided once per machine by a short
measurement, then reused.

bfloat16 autocast with channels_last memory is about 4-6x faster than float32 on a CPU with AMX,
about 2x on one with AVX-512-BF16 only, and slower than float32 where bfloat16 is emulated
(AVX2, or ``ONEDNN_MAX_CPU_ISA=AVX2``). CPU flags do not tell which of these holds, so
``precision="auto"`` on a CPU times both precisions on a few VGG-19 forward passes and takes
bf16 only when it is at least :data:`MIN_SPEEDUP` times faster. The decision is stored per
machine key (CPU model, torch version, oneDNN ISA limit, threads) in
``$STSNB_CACHE_DIR/precision.json`` (default ``~/.cache/stsnb``), so every later run on the same
machine uses the same precision and the feature caches' keys do not flip between runs.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from stsnb.core.store import read_json, write_json_atomic

#: bf16 must be at least this many times faster than fp32 to be chosen.
MIN_SPEEDUP = 1.3
CACHE_ENV = "STSNB_CACHE_DIR"
CACHE_FILE = "precision.json"
#: Images per measurement (after a warm-up batch), at the network's 224 px input.
MEASURE_IMAGES = 16
MEASURE_BATCH = 8
MEASURE_PX = 224


def cache_dir() -> Path:
    """``$STSNB_CACHE_DIR`` or ``~/.cache/stsnb``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stsnb")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> dict[str, Any]:
    """What the measured speeds depend on."""
    return {"cpu": cpu_model(), "torch": torch.__version__,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
            "threads": int(torch.get_num_threads())}


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


@dataclass(frozen=True)
class PrecisionChoice:
    """The measured throughputs (images/s; bf16 None when not measured) and the choice."""

    precision: str
    fp32_images_per_s: float
    bf16_images_per_s: float | None
    machine: dict[str, Any]
    measured: str  # when (ISO time)

    @property
    def speedup(self) -> float | None:
        if self.bf16_images_per_s is None or self.fp32_images_per_s <= 0:
            return None
        return self.bf16_images_per_s / self.fp32_images_per_s

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup, "min_speedup": MIN_SPEEDUP}

    def summary(self) -> str:
        bf16 = ("not measured" if self.bf16_images_per_s is None
                else f"{self.bf16_images_per_s:.1f} images/s")
        return (f"{self.precision} (measured on {self.machine.get('cpu', '?')}: fp32 "
                f"{self.fp32_images_per_s:.1f} images/s, bf16 + channels_last {bf16}; bf16 "
                f"only when >= {MIN_SPEEDUP}x faster)")


def choose(fp32_rate: float, bf16_rate: float | None) -> str:
    """'bf16' when it was measured at least MIN_SPEEDUP times faster than fp32, else 'fp32'.

    >>> choose(7.2, 27.6), choose(3.5, 4.0), choose(7.0, None)
    ('bf16', 'fp32', 'fp32')
    """
    if bf16_rate is None or fp32_rate <= 0:
        return "fp32"
    return "bf16" if bf16_rate >= MIN_SPEEDUP * fp32_rate else "fp32"


def _features(precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """VGG-19's convolutions (random weights: speed does not depend on them) in `precision`."""
    from torchvision.models import vgg19

    features = vgg19(weights=None).features.eval()
    if precision == "bf16":
        features = features.to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if precision == "bf16":
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                    return features(x)
            return features(x)

    return run


def measure_throughput(precision: str, budget_s: float | None = None) -> float:
    """Images per second of VGG-19's convolutions on this CPU in `precision` (fp32 | bf16),
    over :data:`MEASURE_IMAGES` images of 224 px after a warm-up batch. With `budget_s`, a
    warm-up that alone takes longer returns its own (slow) rate without measuring further."""
    run = _features(precision)
    generator = torch.Generator().manual_seed(0)
    warm = torch.rand(2, 3, MEASURE_PX, MEASURE_PX, generator=generator)
    started = time.perf_counter()
    run(warm)
    warm_s = time.perf_counter() - started
    if budget_s is not None and warm_s > budget_s:
        return len(warm) / warm_s
    batch = torch.rand(MEASURE_BATCH, 3, MEASURE_PX, MEASURE_PX, generator=generator)
    started = time.perf_counter()
    for _ in range(MEASURE_IMAGES // MEASURE_BATCH):
        run(batch)
    return MEASURE_IMAGES / (time.perf_counter() - started)


def cpu_precision(measure: Callable[..., float] | None = None,
                  refresh: bool = False) -> PrecisionChoice:
    """This machine's choice: from the cache when its key was measured before, else measured
    now (fp32 first, then bf16 with fp32's time as the warm-up's budget) and stored."""
    key = machine_key()
    path = cache_dir() / CACHE_FILE
    cache = read_json(path)
    entry = cache.get(_key_text(key))
    if entry and not refresh:
        return PrecisionChoice(entry["precision"], entry["fp32_images_per_s"],
                               entry["bf16_images_per_s"], entry["machine"], entry["measured"])
    measure = measure or measure_throughput
    fp32 = float(measure("fp32"))
    bf16 = float(measure("bf16", budget_s=MEASURE_IMAGES / max(fp32, 1e-9)))
    choice = PrecisionChoice(choose(fp32, bf16), fp32, bf16, key,
                             time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    cache[_key_text(key)] = asdict(choice)
    write_json_atomic(path, cache)
    return choice
