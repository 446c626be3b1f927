"""DICOM-RT import: a folder of patients (CT, MR, PET series, RTSTRUCT, RTDOSE, RTPLAN) into
the cohort layout (DESIGN.md section 4), and a small exporter used by the round-trip tests.

``python -m stsnb import-dicom SRC --out COHORT_DIR`` runs :func:`import_dicom_cohort`.
"""

from stsnb.dicom.classify import DEFAULT_ROI_PATTERN, ImportMap, classify_series, read_import_map
from stsnb.dicom.report import REPORT_CSV, REPORT_JSON, read_import_report
from stsnb.dicom.writer import ImportResult, import_dicom_cohort, pseudonym

__all__ = [
    "DEFAULT_ROI_PATTERN",
    "REPORT_CSV",
    "REPORT_JSON",
    "ImportMap",
    "ImportResult",
    "classify_series",
    "import_dicom_cohort",
    "pseudonym",
    "read_import_map",
    "read_import_report",
]
