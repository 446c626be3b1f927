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
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from stsnb.core.errors import StsnbError

STAGE_RECORD = "stage.json"
#: Set by a batch job (stsnb.run.jobs): the folder where that job writes its own timings and
#: manifest entries, merged into the work dir's by the submitting process.
JOB_DIR_ENV = "STSNB_JOB_DIR"
#: The work dir whose records a job keeps in its own folder (others are written as usual).
JOB_WORK_DIR_ENV = "STSNB_JOB_WORK_DIR"
TIMINGS = "timings.csv"  # seconds per stage, in the work dir (or a batch job's own folder)
MANIFEST = "manifest.json"  # the run manifest (stsnb.core.manifest), in the work dir
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


def read_json(path: str | Path, fix: str | None = None) -> dict[str, Any]:
    """The JSON object in `path`; {} when it is missing or unreadable (a record not written),
    or, when `fix` says how to make it, a StsnbError naming the file and the fix."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if fix is None:
            return {}
        why = "is missing" if isinstance(exc, FileNotFoundError) else f"is unreadable ({exc})"
        raise StsnbError(f"{path} {why}. Fix: {fix}") from exc


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


class Record:
    """A JSON file vouching that the outputs it lists were made with one key (its hash).

    Every output is listed relative to `root` (default: the record's folder) with its size, so
    a missing, truncated or rewritten output makes the record stop vouching. The one check
    "is this output current?" of every stage (curation, registration, slices, runs, folds,
    radiomics) goes through :meth:`current`.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_text_atomic(folder / "table.csv", "a,b\\n1,2\\n")
    >>> record = Record(folder / "record.json")
    >>> _ = record.finish("abc", ["table.csv"])
    >>> record.is_current("abc"), record.is_current("other")
    (True, False)
    >>> _ = write_text_atomic(folder / "table.csv", "a,b\\n")  # rewritten: another size
    >>> record.is_current("abc")
    False
    """

    def __init__(self, path: str | Path, root: str | Path | None = None) -> None:
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path.parent

    def read(self) -> dict[str, Any]:
        """The stored record; {} when absent or unreadable (a crash mid-write)."""
        return read_json(self.path)

    def current(self, key_hash: str, **expected: Any) -> dict[str, Any] | None:
        """The record when it was made with `key_hash` (and holds the `expected` values), and
        every output it lists exists with its recorded size; else None."""
        record = self.read()
        if not record or record.get("key_hash") != key_hash:
            return None
        if any(record.get(name) != value for name, value in expected.items()):
            return None
        if not all((self.root / rel).exists() for rel in record.get("outputs", [])):
            return None
        return record if outputs_intact(self.root, record.get("sizes", {})) else None

    def is_current(self, key_hash: str, **expected: Any) -> bool:
        return self.current(key_hash, **expected) is not None

    def invalidate(self) -> None:
        """Remove the record before the outputs are rewritten: a run killed while rewriting
        them never leaves a record that vouches for a mix of old and new files."""
        self.path.unlink(missing_ok=True)

    def finish(self, key_hash: str, outputs: Iterable[str | Path],
               **fields: Any) -> dict[str, Any]:
        """Write the record (key hash, `fields`, outputs relative to `root` with their sizes,
        time) after the outputs were written; return it."""
        rel = []
        for out in outputs:
            out = Path(out)
            try:  # a path under root (relative or absolute like root itself)
                out = out.relative_to(self.root)
            except ValueError:  # already relative to root
                pass
            rel.append(out.as_posix())
        record = {"key_hash": key_hash, **fields, "outputs": rel,
                  "sizes": output_sizes(rel, self.root),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json_atomic(self.path, record)
        return record


class Stage:
    """The record of one stage's outputs under `work_dir/<name>/` and the key that made them."""

    def __init__(self, work_dir: str | Path, name: str, key: dict[str, Any]) -> None:
        self.work_dir = Path(work_dir)
        self.name = name
        self.key = key
        self.key_hash = hash_config(key)
        self.dir = self.work_dir / name
        self.record = Record(self.dir / STAGE_RECORD, root=self.work_dir)
        self._started = time.perf_counter()

    @property
    def record_path(self) -> Path:
        return self.record.path

    def read_record(self) -> dict[str, Any] | None:
        """The stored record, or None when absent or unreadable (a crash mid-write)."""
        return self.record.read() or None

    def is_current(self) -> bool:
        """True when the outputs exist, whole (sizes as recorded), and were made with the key."""
        return self.record.is_current(self.key_hash)

    def invalidate(self) -> None:
        """Remove the record before the outputs are rewritten (see `Record.invalidate`)."""
        self.record.invalidate()

    def start(self) -> None:
        """Mark the start of the work (for the timing) and make the folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._started = time.perf_counter()

    def finish(self, outputs: Iterable[str | Path]) -> dict[str, Any]:
        """Record the key and the outputs (relative to work_dir) after they were written."""
        seconds = round(time.perf_counter() - self._started, 3)
        record = self.record.finish(self.key_hash, outputs, stage=self.name, key=self.key,
                                    seconds=seconds)
        record_timing(self.work_dir, self.name, seconds)
        return record


def output_sizes(paths: Iterable[str | Path], root: str | Path) -> dict[str, int]:
    """Size in bytes of each output, keyed by its path relative to `root` (give paths relative to
    `root`, or absolute ones inside it), for `outputs_intact`."""
    root = Path(root)
    sizes = {}
    for path in paths:
        full = root / path
        rel = full.relative_to(root) if full.is_absolute() and root.is_absolute() else Path(path)
        sizes[rel.as_posix()] = full.stat().st_size
    return sizes


def outputs_intact(root: str | Path, sizes: dict[str, int]) -> bool:
    """True when every recorded output exists with its recorded size (a truncated or rewritten
    file fails this, so it is made again instead of trusted)."""
    root = Path(root)
    for rel, size in sizes.items():
        try:
            if (root / rel).stat().st_size != int(size):
                return False
        except (OSError, TypeError, ValueError):
            return False
    return True


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporary files `atomic_path` leaves behind when a process is killed mid-write
    (in `folder` and below); return how many. Call it only where no other process writes."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.rglob(".*.tmp*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk holding `path` (its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(shutil.disk_usage(probe).free)


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def require_free_space(path: str | Path, need_bytes: int, what: str,
                       patient_id: str | None = None) -> None:
    """StsnbError before a large write when the disk of `path` has less than `need_bytes` free
    (plus 5% and 16 MiB of headroom), naming what needs the space, how much, and how much is free.
    """
    if need_bytes <= 0:
        return
    wanted = int(need_bytes * 1.05) + (16 << 20)
    free = free_bytes(path)
    if free < wanted:
        who = f"patient {patient_id}, " if patient_id is not None else ""
        raise StsnbError(
            f"[{who}folder {path}] not enough free disk space for {what}: it needs about "
            f"{_mib(wanted)} ({_mib(need_bytes)} plus headroom) and {_mib(free)} are free. "
            "Fix: free disk space there, or choose a work_dir on a disk with more room."
        )


def job_dir(work_dir: str | Path | None = None) -> Path | None:
    """The running batch job's own record folder (``STSNB_JOB_DIR``) for the records of its
    work dir (``STSNB_JOB_WORK_DIR``); None outside a job, and for the records of another work
    dir (the appendix's own cohort), which go to that work dir as usual."""
    value = os.environ.get(JOB_DIR_ENV, "")
    if not value:
        return None
    own = os.environ.get(JOB_WORK_DIR_ENV, "")
    if work_dir is not None and own and Path(work_dir).resolve() != Path(own).resolve():
        return None
    return Path(value)


def record_timing(work_dir: str | Path, stage: str, seconds: float) -> Path:
    """Set the row of `stage` in `work_dir/timings.csv` (stage, seconds), keeping the others;
    inside a batch job, in the job's own ``timings.csv`` (merged by the submitting process)."""
    path = (job_dir(work_dir) or Path(work_dir)) / TIMINGS
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
