"""Stage 03: tumour-slice preprocessing and the five-channel slice store.

`build_slice_store` turns each patient's volumes (every image on the CT grid) into one shard of
normalized 2D slices; `SliceStore` reads them back as any three-channel combination;
`run_preprocessing` is the chapter's stage runner over the registration stage's outputs.
"""

from stsnb.slices.build import (
    NORMALIZATIONS,
    PatientSource,
    PatientVolumes,
    build_slice_store,
    process_patient,
)
from stsnb.slices.geometry import AxialFrame, Placement, placement, sample_slices, tumour_slab
from stsnb.slices.slice_store import BuildReport, SliceStore, store_dir
from stsnb.slices.stage import preprocessing_patients, run_preprocessing

__all__ = [
    "NORMALIZATIONS",
    "AxialFrame",
    "BuildReport",
    "PatientSource",
    "PatientVolumes",
    "Placement",
    "SliceStore",
    "build_slice_store",
    "placement",
    "preprocessing_patients",
    "process_patient",
    "run_preprocessing",
    "sample_slices",
    "store_dir",
    "tumour_slab",
]
