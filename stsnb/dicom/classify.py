"""Which cohort image a DICOM series is: default rules on Modality and SeriesDescription, and
an import map (a small TOML file) that overrides them.

Image series map to the cohort stems of DESIGN.md section 4 (``ct``, ``t1w``, ``t2w``,
``ce_t1w``, ``pet``); RT objects keep their DICOM kind (``rtstruct``, ``rtdose``, ``rtplan``).
A series that no rule maps, or that two rules claim, is reported, never guessed.

The import map (``--map MAP``)::

    roi = "GTV"                      # regex (case-insensitive) choosing the tumour ROI
    [series]                         # regex on SeriesDescription -> stem or "ignore"
    "AX T1 FS POST" = "ce_t1w"
    "SCOUT" = "ignore"
    [patients.STS_012]               # per source folder: the same keys, tried first
    roi = "^GTV_Mass_CT$"
    series = { "T2 COR" = "ignore" }
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from stsnb.core.errors import CohortError
from stsnb.core.modalities import KNOWN_MODALITIES

__all__ = [
    "DEFAULT_ROI_PATTERN",
    "IGNORE",
    "IMAGE_STEMS",
    "Classification",
    "ImportMap",
    "classify_series",
    "read_import_map",
]

DEFAULT_ROI_PATTERN = "GTV"
IGNORE = "ignore"
#: Cohort stems an image series may map to (dose comes from RTDOSE, not from an image series).
IMAGE_STEMS: tuple[str, ...] = tuple(m for m in KNOWN_MODALITIES if m != "dose")
_RT_KINDS = {"RTSTRUCT": "rtstruct", "RTDOSE": "rtdose", "RTPLAN": "rtplan"}

# Tokens are bounded by anything but a letter or digit (so "_T1_" and "T1 FS" both match T1).
_B, _E = r"(?<![A-Z0-9])", r"(?![A-Z0-9])"
_CONTRAST = re.compile(
    rf"{_B}(GD|GAD|GADO\w*|CE|POST|POSTGAD|POSTGD|POSTCONTRAST|CONTRAST|ENH\w*|DOTAREM|MAGNEVIST)"
    rf"{_E}|C\+|\+C{_E}|{_B}T1W?C{_E}|{_B}T1CE{_E}"
)
_T1 = re.compile(rf"{_B}(T1\w*|MPRAGE|VIBE|FLASH|SPGR|LAVA|THRIVE)(?![A-Z0-9*])")
_T2 = re.compile(rf"{_B}(T2(?!\*)\w*|STIR|TIRM|SPAIR T2)(?![A-Z0-9*])|FSE\W*T2|T2\W*FS")
_LOCALIZER = re.compile(rf"{_B}(LOCALI[SZ]ER|SCOUT|SURVEY|TOPOGRAM)(?![A-Z0-9])")


@dataclass(frozen=True)
class Classification:
    """The cohort stem (or RT kind) of a series, or None with the reason it has none."""

    stem: str | None
    rule: str  # which rule decided (for the report)
    reason: str = ""  # why unmapped or ambiguous ('' when mapped)


@dataclass(frozen=True)
class _Rules:
    roi: str | None = None
    series: tuple[tuple[re.Pattern[str], str], ...] = ()


@dataclass(frozen=True)
class ImportMap:
    """Overrides read from an import map; the defaults when no map is given."""

    roi: str = DEFAULT_ROI_PATTERN
    series: tuple[tuple[re.Pattern[str], str], ...] = ()
    patients: dict[str, _Rules] = field(default_factory=dict)
    source: Path | None = None

    def roi_pattern(self, folder: str) -> str:
        """The ROI regex for one source folder (its own entry first)."""
        rules = self.patients.get(folder)
        return rules.roi if rules is not None and rules.roi is not None else self.roi

    def series_rules(self, folder: str) -> tuple[tuple[re.Pattern[str], str], ...]:
        """Description rules for one source folder: its own first, then the global ones."""
        rules = self.patients.get(folder)
        return (rules.series if rules is not None else ()) + self.series


def _map_error(path: Path, problem: str, fix: str) -> CohortError:
    return CohortError(f"import map: {problem}", path=path, fix=fix)


def _regex(path: Path, text: object, where: str) -> str:
    if not isinstance(text, str):
        raise _map_error(path, f"{where} must be a string, found {text!r}.", 'write e.g. "GTV".')
    try:
        re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise _map_error(
            path, f"{where} {text!r} is not a valid regular expression ({exc}).",
            "escape special characters such as + or ( with a backslash.",
        ) from exc
    return text


def _series_rules(path: Path, table: object, where: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    if not isinstance(table, dict):
        raise _map_error(path, f"{where} must be a table of pattern = stem.",
                         'write e.g. [series] then "T2 STIR" = "t2w".')
    allowed = (*IMAGE_STEMS, IGNORE)
    rules = []
    for pattern, stem in table.items():
        if stem not in allowed:
            raise _map_error(path, f"{where}: {pattern!r} maps to {stem!r}, not one of "
                             f"{', '.join(allowed)}.", "map each pattern to a cohort stem.")
        rules.append((re.compile(_regex(path, pattern, where), re.IGNORECASE), stem))
    return tuple(rules)


def read_import_map(path: str | Path | None) -> ImportMap:
    """Read an import map (TOML, see module docstring); the defaults when ``path`` is None."""
    if path is None:
        return ImportMap()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _map_error(path, "the file does not exist.", "pass an existing TOML file.") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise _map_error(path, f"cannot be read as TOML ({exc}).",
                         "correct the syntax (strings in double quotes).") from exc
    unknown = sorted(set(data) - {"roi", "series", "patients"})
    if unknown:
        raise _map_error(path, f"unknown key(s) {', '.join(unknown)}.",
                         "allowed: roi, [series], [patients.<folder>].")
    patients: dict[str, _Rules] = {}
    for folder, entry in data.get("patients", {}).items():
        where = f"[patients.{folder}]"
        if not isinstance(entry, dict) or set(entry) - {"roi", "series"}:
            raise _map_error(path, f"{where} may hold only roi and series.",
                             "write roi = \"...\" and series = { ... } under it.")
        patients[folder] = _Rules(
            roi=_regex(path, entry["roi"], f"{where} roi") if "roi" in entry else None,
            series=_series_rules(path, entry.get("series", {}), f"{where} series"),
        )
    return ImportMap(
        roi=_regex(path, data.get("roi", DEFAULT_ROI_PATTERN), "roi"),
        series=_series_rules(path, data.get("series", {}), "[series]"),
        patients=patients,
        source=path,
    )


def _default_mr(text: str) -> Classification:
    contrast = bool(_CONTRAST.search(text))
    t1, t2 = bool(_T1.search(text)), bool(_T2.search(text))
    if t1 and t2:
        return Classification(None, "default", "ambiguous: the description names both T1 and T2")
    if t2 and contrast:
        return Classification(None, "default",
                              "ambiguous: a T2 sequence with a contrast keyword")
    if contrast:
        return Classification("ce_t1w", "default (contrast keyword)")
    if t1:
        return Classification("t1w", "default (T1 keyword)")
    if t2:
        return Classification("t2w", "default (T2/STIR keyword)")
    return Classification(None, "default", "unmapped: no T1, T2, STIR or contrast keyword")


def classify_series(
    modality: str,
    description: str,
    image_type: str = "",
    contrast_agent: str = "",
    rules: tuple[tuple[re.Pattern[str], str], ...] = (),
) -> Classification:
    """Classify one series from its DICOM Modality, SeriesDescription (plus ProtocolName),
    ImageType and ContrastBolusAgent; map rules (regex on the description) come first."""
    modality = modality.strip().upper()
    if modality in _RT_KINDS:
        return Classification(_RT_KINDS[modality], "modality")
    for pattern, stem in rules:
        if pattern.search(description):
            return Classification(None if stem == IGNORE else stem, f"map {pattern.pattern!r}",
                                  "ignored by the import map" if stem == IGNORE else "")
    text = description.upper()
    if "LOCALIZER" in image_type.upper() or _LOCALIZER.search(text):
        return Classification(None, "default", "ignored: a localizer/scout")
    if modality == "CT":
        return Classification("ct", "default (modality CT)")
    if modality == "PT":
        return Classification("pet", "default (modality PT)")
    if modality == "MR":
        found = _default_mr(text)
        if contrast_agent.strip() and found.stem in (None, "t1w") and not _T2.search(text):
            return Classification("ce_t1w", "default (ContrastBolusAgent set)")
        return found
    return Classification(None, "default", f"unmapped: modality {modality or '(none)'}")
