"""Modality names (file stems) and the study's defaults."""

from __future__ import annotations

#: The study's five images, in the study's channel vocabulary order.
STUDY_MODALITIES: tuple[str, ...] = ("ct", "dose", "t1w", "t2w", "ce_t1w")
#: MR sequences of one session; they share the MR scanner's frame.
MR_MODALITIES: tuple[str, ...] = ("t1w", "t2w", "ce_t1w")
#: The sequence registered to the CT first (the study's default).
DEFAULT_MR_REFERENCE = "t1w"
#: Images already in the CT's frame, never registered.
DEFAULT_SAME_FRAME_AS_CT: tuple[str, ...] = ("dose",)
#: Every modality stem the suite knows.
KNOWN_MODALITIES: tuple[str, ...] = ("ct", "dose", "t1w", "t2w", "ce_t1w", "pet")
#: Display names for tables and figures.
DISPLAY_NAMES: dict[str, str] = {
    "ct": "CT",
    "dose": "Dose",
    "t1w": "T1w",
    "t2w": "T2w",
    "ce_t1w": "CE-T1w",
    "pet": "PET",
}
#: Physical unit of each image's voxel values.
UNITS: dict[str, str] = {
    "ct": "HU",
    "dose": "Gy",
    "t1w": "a.u.",
    "t2w": "a.u.",
    "ce_t1w": "a.u.",
    "pet": "SUV",
}
