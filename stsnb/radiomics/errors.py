"""RadiomicsError: an image or mask the feature stage cannot use (names patient, file and fix)."""

from __future__ import annotations

from stsnb.core.errors import LocatedError


class RadiomicsError(LocatedError):
    """Bad input to the radiomics stage: an empty GTV, an image that does not cover it, a
    missing or unusable file, or a failed feature computation (says patient, image, fix)."""
