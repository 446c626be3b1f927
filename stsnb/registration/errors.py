"""RegistrationError: a registration that cannot be done, naming patient, file and fix."""

from __future__ import annotations

from pathlib import Path

from stsnb.core.errors import LocatedError


class RegistrationError(LocatedError):
    """An image or file that cannot be registered or read for QA (says patient, file, fix)."""

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
