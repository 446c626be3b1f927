"""The run manifest: what made a work dir's outputs (code, packages, profile, cohort, device)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from stsnb import __version__
from stsnb.core.config import Profile
from stsnb.core.store import (
    MANIFEST,
    STAGE_RECORD,
    cohort_checksum,
    job_dir,
    read_json,
    write_json_atomic,
)

#: Packages whose versions can change a result or a figure.
TRACKED_PACKAGES = (
    "numpy",
    "scipy",
    "pandas",
    "SimpleITK",
    "scikit-learn",
    "torch",
    "torchvision",
    "grad-cam",
    "matplotlib",
    "seaborn",
    "papermill",
    "jupyter-book",
)


def code_version() -> str:
    """`git describe` of the checkout when there is one, else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return f"{__version__}+g{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def package_versions() -> dict[str, str]:
    """Installed version of each tracked package ('missing' when absent)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


#: The packages whose arithmetic makes each stage's numbers: part of that stage's reuse key, so
#: that an upgrade recomputes what it could change (the manifest records every version).
STAGE_PACKAGES: dict[str, tuple[str, ...]] = {
    "slices": ("numpy", "SimpleITK", "scipy"),
    "features": ("numpy", "torch", "torchvision"),
    "training": ("numpy", "torch", "torchvision", "scikit-learn"),
    "linear": ("numpy", "scikit-learn"),
    "significance": ("numpy", "scikit-learn"),
    "radiomics_models": ("numpy", "pandas", "scikit-learn"),
}


def software_key(stage: str) -> dict[str, str]:
    """Versions of the packages that compute `stage`'s numbers (see STAGE_PACKAGES)."""
    versions = package_versions()
    return {name: versions.get(name, "missing") for name in STAGE_PACKAGES[stage]}


def _stage_record(work_dir: Path, stage: str) -> dict[str, Any]:
    """``work_dir/<stage>/stage.json`` (the key that made the stage's outputs), or {}."""
    return read_json(work_dir / stage / STAGE_RECORD)


def display_path(path: str | Path) -> str:
    """A path as shown in the book: relative to the current folder when inside it, else its name.

    The book never shows an absolute path of the user's machine.
    """
    target = Path(path).resolve()
    try:
        return target.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return target.name


#: Manifest entries that are tables keyed by stage, run or job: merged key by key.
MERGED_KEYS = ("stages", "runs", "jobs")


def merge_manifest(manifest: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with `changes` applied: MERGED_KEYS entry by entry, any other key replaced."""
    for key, value in changes.items():
        if key in MERGED_KEYS and isinstance(value, dict):
            manifest.setdefault(key, {}).update(value)
        else:
            manifest[key] = value
    return manifest


def read_manifest(work_dir: str | Path) -> dict[str, Any]:
    """The manifest of a work dir, or an empty dict when none exists yet (inside a batch job:
    with the entries that job has recorded so far)."""
    manifest = read_json(Path(work_dir) / MANIFEST)
    own = job_dir(work_dir)
    return merge_manifest(manifest, read_json(own / MANIFEST)) if own is not None else manifest


def update_manifest(
    work_dir: str | Path,
    *,
    profile: Profile,
    cohort_dir: str | Path,
    seed: int,
    stage: str,
    device: str = "cpu",
    precision: str = "fp32",
    weights: dict[str, Any] | None = None,
    cohort_sha256: str | None = None,
    runs: dict[str, dict[str, Any]] | None = None,
    precision_measurement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record the run-level facts and one stage's entry in `work_dir/manifest.json`.

    The stage's entry holds the profile, seed, device and precision it ran with and, from its
    record (``<stage>/stage.json``), the key hash that decides whether its outputs are reused
    and the seconds it took. `runs` adds or replaces entries of ``runs`` (one per training run:
    its key hash, seed, weights, device and precision). `precision_measurement` records the
    CPU's measured fp32 and bf16 throughputs and the precision chosen from them
    (`stsnb.training.precision.PrecisionChoice.as_dict`).
    """
    changes: dict[str, Any] = {
        **{
            "code_version": code_version(),
            "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}",
            "cpu_count": os.cpu_count(),
            "packages": package_versions(),
            "profile": profile.name,
            "profile_config": profile.as_dict(),
            "seed": int(seed),
            "cohort_dir": display_path(cohort_dir),
            "cohort_sha256": cohort_sha256 or cohort_checksum(cohort_dir),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "stages": {},
    }
    record = _stage_record(Path(work_dir), stage)
    changes["stages"][stage] = {
        "profile": profile.name,
        "seed": int(seed),
        "device": device,
        "precision": precision,
        "key_hash": record.get("key_hash"),
        "seconds": record.get("seconds"),
        "finished": record.get("finished") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if weights is not None:
        changes["weights"] = weights
    if runs:
        changes["runs"] = dict(runs)
    if precision_measurement is not None:
        changes["precision_measurement"] = precision_measurement
    own = job_dir(work_dir)
    if own is not None:  # a batch job records only its changes; the submitter merges them
        write_json_atomic(own / MANIFEST, merge_manifest(read_json(own / MANIFEST), changes))
        return read_manifest(work_dir)
    manifest = merge_manifest(read_manifest(work_dir), changes)
    write_json_atomic(Path(work_dir) / MANIFEST, manifest)
    return manifest


def _measured(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "not measured (GPU, or a precision given explicitly)"
    bf16 = entry.get("bf16_images_per_s")
    return (f"{entry.get('precision')}: fp32 {entry.get('fp32_images_per_s', 0):.1f} images/s, "
            f"bf16 {'-' if bf16 is None else f'{bf16:.1f}'} images/s on "
            f"{entry.get('machine', {}).get('cpu', '?')}")


def _jobs_text(manifest: dict[str, Any]) -> str:
    """Where chapter 04's pages ran: executor, pages, hosts (from the batch's job entries)."""
    jobs = manifest.get("jobs", {})
    if not jobs:
        return "not run by a batch yet"
    hosts = sorted({str(j.get("host", "?")) for j in jobs.values()})
    failed = sum(not j.get("ok", True) for j in jobs.values())
    executors = sorted({str(j.get("executor", "?")) for j in jobs.values()})
    text = (f"{len(jobs)} on the {' and '.join(executors)} executor, on "
            f"{', '.join(hosts[:4])}{' ...' if len(hosts) > 4 else ''}")
    return text + (f" ({failed} failed at their last run)" if failed else "")


def manifest_table(manifest: dict[str, Any]) -> pd.DataFrame:
    """The manifest as (item, value) rows for the book's first page."""
    weights = manifest.get("weights")
    if weights is None:
        weights_text = "not used by the chapters run so far"
    else:
        weights_text = str(weights.get("summary", weights))
    devices = sorted({s.get("device", "?") for s in manifest.get("stages", {}).values()})
    precisions = sorted({s.get("precision", "?") for s in manifest.get("stages", {}).values()})
    rows = [
        ("code version", manifest.get("code_version", "?")),
        ("profile", manifest.get("profile", "?")),
        ("seed", manifest.get("seed", "?")),
        ("cohort", manifest.get("cohort_dir", "?")),
        ("cohort SHA-256", str(manifest.get("cohort_sha256", "?"))[:16] + "..."),
        ("network weights", weights_text),
        ("device", ", ".join(devices) or "?"),
        ("precision", ", ".join(precisions) or "?"),
        ("precision measured", _measured(manifest.get("precision_measurement"))),
        ("python", f"{manifest.get('python', '?')} on {manifest.get('platform', '?')}"),
        ("CPU cores", manifest.get("cpu_count", "?")),
        ("stages run", ", ".join(manifest.get("stages", {})) or "none"),
        ("chapter 04 pages", _jobs_text(manifest)),
        ("last update", manifest.get("updated", "?")),
    ]
    rows += [(f"package {k}", v) for k, v in manifest.get("packages", {}).items()]
    return pd.DataFrame(rows, columns=["item", "value"]).astype(str)
