"""Atomic writes, content hashes and stage records: what lets a stage be skipped or redone safely.

A stage writes its outputs under `work_dir/<stage>/` with `atomic_path` (temp file, then rename)
and records the key that made them (hashes of its configuration and its inputs) in
`<stage>/stage.json`. The stage is skipped only when that record matches the current key and
every output it lists still exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import StsnbError

STAGE_RECORD = "stage.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv_atomic(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def hash_config(obj: Any) -> str:
    """SHA-256 of a JSON-serialisable object in canonical form (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(paths: Iterable[str | Path], root: str | Path) -> str:
    """SHA-256 over (relative path, content hash) of each file, in sorted order."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.relative_to(root).as_posix().encode("utf-8"))
        digest.update(hash_file(path).encode("ascii"))
    return digest.hexdigest()


def cohort_checksum(cohort_dir: str | Path) -> str:
    """Content checksum of a cohort folder (every file except hidden ones), SHA-256 hex."""
    root = Path(cohort_dir)
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return hash_files(files, root)


class Stage:
    """The record of one stage's outputs under `work_dir/<name>/` and the key that made them."""

    def __init__(self, work_dir: str | Path, name: str, key: dict[str, Any]) -> None:
        self.work_dir = Path(work_dir)
        self.name = name
        self.key = key
        self.key_hash = hash_config(key)
        self.dir = self.work_dir / name
        self._started = time.perf_counter()

    @property
    def record_path(self) -> Path:
        return self.dir / STAGE_RECORD

    def read_record(self) -> dict[str, Any] | None:
        """The stored record, or None when absent or unreadable (a crash mid-write)."""
        try:
            return json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_current(self) -> bool:
        """True when the outputs exist and were made with the same key."""
        record = self.read_record()
        if not record or record.get("key_hash") != self.key_hash:
            return False
        return all((self.work_dir / rel).exists() for rel in record.get("outputs", []))

    def start(self) -> None:
        """Mark the start of the work (for the timing) and make the folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._started = time.perf_counter()

    def finish(self, outputs: Iterable[str | Path]) -> dict[str, Any]:
        """Record the key and the outputs (relative to work_dir) after they were written."""
        rel = []
        for out in outputs:
            out = Path(out)
            rel.append((out.relative_to(self.work_dir) if out.is_absolute() else out).as_posix())
        record = {
            "stage": self.name,
            "key_hash": self.key_hash,
            "key": self.key,
            "outputs": rel,
            "seconds": round(time.perf_counter() - self._started, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(self.record_path, record)
        record_timing(self.work_dir, self.name, record["seconds"])
        return record


def record_timing(work_dir: str | Path, stage: str, seconds: float) -> Path:
    """Set the row of `stage` in `work_dir/timings.csv` (stage, seconds), keeping the others."""
    path = Path(work_dir) / "timings.csv"
    if path.exists():
        table = pd.read_csv(path)
        table = table[table["stage"] != stage]
    else:
        table = pd.DataFrame(columns=["stage", "seconds"])
    row = pd.DataFrame({"stage": [stage], "seconds": [round(float(seconds), 3)]})
    table = pd.concat([table, row], ignore_index=True) if len(table) else row
    return write_csv_atomic(table, path)


def ensure_writable_dir(path: str | Path, what: str = "work_dir") -> Path:
    """Create `path` if needed and check it can be written, with a clear error otherwise."""
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StsnbError(
            f"{what} {target} cannot be written ({exc.strerror or exc}). "
            f"Fix: choose a writable folder for {what}."
        ) from exc
    return target
