"""Run one stage in a subprocess and SIGKILL it at a chosen point (the resume tests).

    python tests/kill_driver.py '<json spec>'

The spec names the stage to run (`stage`: registration | slices | training), its arguments
(`cohort_dir`, `work_dir`, `seed`, `patients`, `combo`, `profile_changes`), and where to die:
`target` ("module:function"), `match` (a text the call's arguments must contain), `call` (the
Nth matching call) and `mode`: "before" (die instead of calling), "after" (die after the call
returned) or "half" (truncate the file named by the first argument to half, then die: a write
cut off mid-way).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill(target: str, match: str, call: int, mode: str) -> None:
    """Wrap `target` so that its `call`-th call whose arguments contain `match` kills us."""
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    seen = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if match in repr(args) + repr(kwargs):
            seen[0] += 1
            if seen[0] == call:
                if mode == "before":
                    _die()
                if mode == "half":
                    path = Path(args[0])
                    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                    _die()
                result = original(*args, **kwargs)
                _die()
                return result
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def profile_with(changes: dict[str, dict[str, Any]]):
    """The smoke profile with some fields of its sections changed."""
    from stsnb.core.config import SMOKE

    sections = {s: replace(getattr(SMOKE, s), **v) for s, v in changes.items()}
    return replace(SMOKE, **sections)


def run_stage(spec: dict[str, Any]) -> None:
    """Run the stage the spec names, as a chapter would."""
    profile = profile_with(spec.get("profile_changes", {}))
    cohort, work, seed = spec["cohort_dir"], spec["work_dir"], int(spec.get("seed", 3))
    if spec["stage"] == "registration":
        from stsnb.registration import run_registration

        run_registration(cohort, work, profile, seed=seed, patients=spec.get("patients"),
                         progress=False)
    elif spec["stage"] == "slices":
        from stsnb.slices import run_preprocessing

        run_preprocessing(cohort, work, profile, seed=seed, progress=False)
    elif spec["stage"] == "training":
        from stsnb.training.stage import run_training

        run_training(cohort, work, profile, seed=seed, combo=spec.get("combo", 1),
                     device="cpu", weights="none", precision="fp32", progress=False)
    else:
        raise SystemExit(f"unknown stage {spec['stage']!r}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    install_kill(spec["target"], spec.get("match", ""), int(spec.get("call", 1)),
                 spec.get("mode", "before"))
    run_stage(spec)
    sys.exit(3)  # the kill point was never reached


if __name__ == "__main__":
    main()
