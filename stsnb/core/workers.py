"""Worker processes shared by the stages that spread patients over the cores (synthetic cohort,
registration, radiomics): how many, and how each one starts."""

from __future__ import annotations

import os

from stsnb.core.errors import ConfigError


def worker_count(workers: int | None, n_items: int | None = None) -> int:
    """Worker processes: ``os.cpu_count()`` for None, else a whole number >= 1; never more
    than `n_items` (at least 1) when given.

    >>> worker_count(4, 2), worker_count(3), worker_count(None, 0) >= 1
    (2, 3, True)
    """
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}.")
    return int(workers) if n_items is None else max(1, min(int(workers), n_items))


def single_blas_thread() -> None:
    """Worker start-up: one BLAS thread per process (idle BLAS threads spin and would take the
    cores the other workers need)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return
    threadpool_limits(limits=1)
