"""Tables and sentences for chapter 03 (numbers only; the figures are in stsnb.plots)."""

from __future__ import annotations

import pandas as pd

from stsnb.core.combinations import combinations_for
from stsnb.core.errors import ConfigError
from stsnb.slices.slice_store import SliceStore

#: The study's total of 2D slices (image-processing slide).
STUDY_SLICES = 2395


def build_table(store: SliceStore) -> pd.DataFrame:
    """What the last build did: patients rebuilt and reused, seconds, warnings."""
    report = store.last_build
    rows = [("patients in the store", len(store.patients)),
            ("slices in the store", len(store))]
    if report is not None:
        rows += [("patients processed now", len(report.built)),
                 ("patients reused (same inputs and settings)", len(report.reused)),
                 ("seconds", f"{report.seconds:.1f}"),
                 ("warnings", len(report.warnings))]
    return pd.DataFrame(rows, columns=["item", "value"]).astype(str)


def slice_counts(store: SliceStore) -> pd.DataFrame:
    """Slices in the tumour slabs (the `paper` profile keeps all) and stored, beside the study."""
    patients = store.patients
    rows = []
    for column, what in (("slab_slices", "in the tumour slabs (GTV +- margin)"),
                         ("stored_slices", "stored (after the profile's sampling)")):
        counts = patients[column]
        rows.append({"slices": what, "total": int(counts.sum()),
                     "per patient (median)": float(counts.median()),
                     "min": int(counts.min()), "max": int(counts.max())})
    rows.append({"slices": "the study (61 patients)", "total": STUDY_SLICES,
                 "per patient (median)": round(STUDY_SLICES / 61, 1), "min": None, "max": None})
    return pd.DataFrame(rows)


def label_counts(store: SliceStore) -> pd.DataFrame:
    """Patients and stored slices per outcome (1 = distant metastasis)."""
    by_label = store.index.groupby("label").agg(slices=("row", "size"),
                                                patients=("patient_id", "nunique"))
    by_label["fraction of slices"] = (by_label["slices"] / by_label["slices"].sum()).round(3)
    return by_label.reset_index()


def margin_table(store: SliceStore) -> pd.DataFrame:
    """Patients whose margin is clipped by the end of the CT volume, or whose images are
    constant over the slab (stored as 0)."""
    patients = store.patients
    flagged = patients[(patients["margin_clipped"].astype(str) != "")
                       | (patients["constant_images"].astype(str) != "")]
    columns = ["patient_id", "margin_clipped", "margin_inferior_mm", "margin_superior_mm",
               "gtv_at_edge", "constant_images"]
    return flagged[columns].reset_index(drop=True)


def example_row(store: SliceStore, patient_id: str = "") -> int:
    """The row of the largest tumour section of `patient_id` (of the whole store when empty)."""
    index = store.index
    if patient_id:
        index = index[index["patient_id"] == str(patient_id)]
        if index.empty:
            raise ConfigError(f"Patient {patient_id!r} is not in the slice store; it holds "
                              f"{', '.join(store.patients['patient_id'])}.")
    return int(index.loc[index["tumour_area_mm2"].idxmax(), "row"])


def preprocessing_summary(store: SliceStore) -> str:
    """A few sentences with the numbers that matter, for the chapter's summary."""
    patients = store.patients
    slab, stored = int(patients["slab_slices"].sum()), len(store)
    clipped = int((patients["margin_clipped"].astype(str) != "").sum())
    pixel = patients["input_pixel_mm"]
    size_mb = store.disk_usage().set_index("kind").loc["total", "bytes"] / 2**20
    combos = combinations_for(store.modalities)
    n_singles = sum(c.is_single for c in combos)
    n_triplets = len(combos) - n_singles
    return (
        f"{len(patients)} patients give {slab} axial slices within the GTV z-extent "
        f"+- {store.z_margin_mm:g} mm (the study: {STUDY_SLICES} slices of 61 patients); this "
        f"profile stores {stored}. Each holds the {len(store.modalities)} images "
        f"({', '.join(store.modalities)}) min-max normalized per {store.normalization} over the "
        f"kept slab, fitted to {store.canvas_px} x {store.canvas_px} and scaled to "
        f"{store.input_px} x {store.input_px} pixels of {pixel.min():.2f}-{pixel.max():.2f} mm. "
        f"The margin is clipped by the end of the CT for {clipped} patient"
        f"{'s' if clipped != 1 else ''}. The store takes {size_mb:.1f} MiB on disk; the "
        f"{n_triplets} three-image combination{'s' if n_triplets != 1 else ''} and the "
        f"{n_singles} single-image references are read from it as views."
    )
