"""One family of errors for bad input: each names the patient, the file, the problem, the fix."""

from __future__ import annotations

from functools import partial
from pathlib import Path


class StsnbError(Exception):
    """Base of every error stsnb raises on purpose."""


class LocatedError(StsnbError, ValueError):
    """Bad input located in a patient and a file: the message names both, the problem, the fix."""

    def __init__(
        self,
        problem: str,
        *,
        patient_id: str | None = None,
        path: str | Path | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.patient_id = patient_id
        self.path = Path(path) if path is not None else None
        self.fix = fix
        parts = []
        if patient_id is not None:
            parts.append(f"patient {patient_id}")
        if path is not None:
            parts.append(f"file {path}")
        where = f"[{', '.join(parts)}] " if parts else ""
        message = f"{where}{problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)

    def __reduce__(self):
        """Pickled with its fields (an error raised in a worker process arrives whole)."""
        return (partial(type(self), patient_id=self.patient_id, path=self.path, fix=self.fix),
                (self.problem,))


class CohortError(LocatedError):
    """A cohort folder, clinical.csv, cohort.toml or image that breaks the cohort contract."""


class ConfigError(StsnbError, ValueError):
    """A parameter (profile, combination, split, device, weights, ...) out of its allowed set."""


class WeightsError(ConfigError):
    """Weights that cannot be used: missing file, wrong hash, not the network's state dict."""


def checked_name(value: str, choices: tuple[str, ...], what: str) -> str:
    """`value` stripped and lower case when it is one of `choices`; else a ConfigError naming
    `what` and the choices.

    >>> checked_name(" Patient ", ("patient", "slice"), "split")
    'patient'
    """
    key = str(value).strip().lower()
    if key not in choices:
        raise ConfigError(f"Unknown {what} {value!r}: expected one of {', '.join(choices)}.")
    return key
