"""RegistrationError: a registration that cannot be done, naming patient, file and fix."""

from __future__ import annotations

from pathlib import Path

from ..errors import StsnbError


class RegistrationError(StsnbError, ValueError):
    """An image or file that cannot be registered or read for QA (says patient, file, fix)."""

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

    def with_context(
        self, patient_id: str | None = None, path: str | Path | None = None
    ) -> RegistrationError:
        """The same error with the patient and file filled in where they were missing."""
        return RegistrationError(
            self.problem,
            patient_id=self.patient_id or patient_id,
            path=self.path or path,
            fix=self.fix,
        )
