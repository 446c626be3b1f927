"""cohort.toml: which images a cohort has, in which channel order, and which need registration."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from stsnb.core.errors import CohortError
from stsnb.core.modalities import DEFAULT_MR_REFERENCE, DEFAULT_SAME_FRAME_AS_CT, STUDY_MODALITIES

__all__ = ["COHORT_TOML", "CohortConfig", "cohort_path", "read_cohort_config"]

COHORT_TOML = "cohort.toml"
_KEYS = ("modalities", "mr_reference", "same_frame_as_ct", "registered_in_ct_frame",
         "registration")
_STEM = re.compile(r"[a-z0-9_]+")
#: Stems that would collide with the tumour-mask files (gtv.nii.gz, gtv_<modality>.nii.gz).
_RESERVED = ("gtv", "truth")


@dataclass(frozen=True)
class CohortConfig:
    """A cohort's declared images (file stems, channel order) and registration settings.

    ``mr_reference`` is the image registered to the CT first; it is ``""`` only when every
    declared image is already in the CT's frame. ``registered_in_ct_frame`` lists registered
    images whose series share the CT's frame of reference all the same (registered anyway, e.g.
    ``import-dicom --register``): the registration QA flags a patient whose registration moves
    such an image far from its scanner position. ``registration`` is kept as read; the
    registration stage validates it.
    """

    modalities: tuple[str, ...] = STUDY_MODALITIES
    mr_reference: str = DEFAULT_MR_REFERENCE
    same_frame_as_ct: tuple[str, ...] = DEFAULT_SAME_FRAME_AS_CT
    registered_in_ct_frame: tuple[str, ...] = ()
    registration: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def registered(self) -> tuple[str, ...]:
        """Images registered to the CT (declared order): all but ct and same_frame_as_ct."""
        return tuple(m for m in self.modalities if m != "ct" and m not in self.same_frame_as_ct)


def cohort_path(cohort_dir: str | Path) -> Path:
    """The cohort folder as a Path; CohortError when it does not exist."""
    path = Path(cohort_dir).expanduser()
    if not path.is_dir():
        raise CohortError(
            f"the cohort folder {path} does not exist"
            + (" (it is a file)." if path.exists() else "."),
            path=path,
            fix="pass the folder that holds clinical.csv and one sub-folder per patient "
            "(make data writes the synthetic one to data/synthetic/).",
        )
    return path


def _fail(path: Path, problem: str, fix: str) -> CohortError:
    return CohortError(f"{COHORT_TOML}: {problem}", path=path, fix=fix)


def _string_list(path: Path, data: dict, key: str) -> tuple[str, ...]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(
            path,
            f"'{key}' must be a list of strings, found {value!r}.",
            f'write e.g. {key} = ["ct", "dose"].',
        )
    return tuple(value)


def _image_list(path: Path, data: dict, key: str) -> tuple[str, ...]:
    """A list of image stems, each listed once."""
    images = _string_list(path, data, key)
    if len(set(images)) != len(images):
        raise _fail(path, f"{key} lists an image twice.", "list each image once.")
    return images


def read_cohort_config(cohort_dir: str | Path) -> CohortConfig:
    """Read and validate ``<cohort_dir>/cohort.toml``; the study's defaults when it is absent.

    Defaults: modalities ct, dose, t1w, t2w, ce_t1w; mr_reference t1w (or, when t1w is not
    declared, the first declared image that is registered); same_frame_as_ct the declared ones
    of ["dose"].
    """
    cohort = cohort_path(cohort_dir)
    path = cohort / COHORT_TOML
    if not path.exists():
        return CohortConfig()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(
            path,
            f"TOML syntax error: {exc}.",
            "correct the syntax (strings in double quotes, lists in [...]); see https://toml.io.",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot be read ({exc}).", "save it as UTF-8 text.") from exc

    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise _fail(
            path,
            f"unknown key(s) {', '.join(repr(k) for k in unknown)}; allowed: {', '.join(_KEYS)}.",
            "remove or rename them (registration settings go in a [registration] table).",
        )

    modalities = _string_list(path, data, "modalities") if "modalities" in data else None
    if modalities is None:
        modalities = STUDY_MODALITIES
    bad = [m for m in modalities if not _STEM.fullmatch(m)]
    if bad:
        raise _fail(
            path,
            f"modality name(s) {', '.join(repr(m) for m in bad)} are not file stems in lower "
            "case letters, digits and '_'.",
            "use the file stem, e.g. 'ce_t1w' for ce_t1w.nii.gz.",
        )
    reserved = [m for m in modalities if m in _RESERVED or m.startswith("gtv_")]
    if reserved:
        raise _fail(
            path,
            f"{', '.join(repr(m) for m in reserved)} cannot be a modality: the name is reserved "
            "for the tumour masks (gtv.nii.gz, gtv_<modality>.nii.gz) or the truth/ folder.",
            "list only images in 'modalities'; the tumour mask gtv.nii.gz is always read.",
        )
    duplicates = sorted({m for m in modalities if modalities.count(m) > 1})
    if duplicates:
        raise _fail(
            path,
            f"modality {', '.join(repr(m) for m in duplicates)} is listed more than once.",
            "list each image once, in channel order.",
        )
    if "ct" not in modalities:
        raise _fail(
            path,
            f"'modalities' {list(modalities)} lacks 'ct': the planning CT is the reference frame "
            "and grid of every patient.",
            'add "ct" to modalities.',
        )
    if len(modalities) < 3:
        raise _fail(
            path,
            f"'modalities' {list(modalities)} has {len(modalities)} image(s); a combination "
            "needs three channels, so at least three are needed.",
            "declare at least three modalities.",
        )

    if "same_frame_as_ct" in data:
        same_frame = _image_list(path, data, "same_frame_as_ct")
        undeclared = [m for m in same_frame if m not in modalities]
        if undeclared:
            raise _fail(
                path,
                f"same_frame_as_ct names {', '.join(repr(m) for m in undeclared)}, not in "
                f"modalities {list(modalities)}.",
                "list only declared modalities in same_frame_as_ct.",
            )
        if "ct" in same_frame:
            raise _fail(
                path,
                "same_frame_as_ct contains 'ct', the reference frame itself.",
                "list only the other images that share the CT's frame (e.g. dose, pet).",
            )
    else:
        same_frame = tuple(m for m in DEFAULT_SAME_FRAME_AS_CT if m in modalities)

    registered = [m for m in modalities if m != "ct" and m not in same_frame]
    if "mr_reference" in data:
        mr_reference = data["mr_reference"]
        if not isinstance(mr_reference, str):
            raise _fail(
                path,
                f"'mr_reference' must be a string, found {mr_reference!r}.",
                'write e.g. mr_reference = "t1w".',
            )
        if mr_reference not in modalities:
            raise _fail(
                path,
                f"mr_reference {mr_reference!r} is not in modalities {list(modalities)}.",
                "name one of the declared images that is registered to the CT.",
            )
        if mr_reference not in registered:
            raise _fail(
                path,
                f"mr_reference {mr_reference!r} is the CT or in same_frame_as_ct, so it is not "
                "registered.",
                f"name one of the registered images: {registered}.",
            )
    elif DEFAULT_MR_REFERENCE in registered:
        mr_reference = DEFAULT_MR_REFERENCE
    else:
        mr_reference = registered[0] if registered else ""

    in_ct_frame: tuple[str, ...] = ()
    if "registered_in_ct_frame" in data:
        in_ct_frame = _image_list(path, data, "registered_in_ct_frame")
        stray = [m for m in in_ct_frame if m not in registered]
        if stray:
            raise _fail(
                path,
                f"registered_in_ct_frame names {', '.join(repr(m) for m in stray)}, which "
                f"{'is' if len(stray) == 1 else 'are'} not registered (registered: "
                f"{registered}).",
                "list only declared images that are neither the CT nor in same_frame_as_ct.",
            )

    registration = data.get("registration", {})
    if not isinstance(registration, dict):
        raise _fail(
            path,
            f"'registration' must be a table, found {registration!r}.",
            "write the settings under a [registration] header, one key = value per line.",
        )
    return CohortConfig(
        modalities=tuple(modalities),
        mr_reference=mr_reference,
        same_frame_as_ct=tuple(same_frame),
        registered_in_ct_frame=in_ct_frame,
        registration=MappingProxyType(dict(registration)),
    )
