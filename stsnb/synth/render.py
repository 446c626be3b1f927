"""Render a planned patient's images (SimpleITK images on their grids); nothing is written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk

from stsnb.core.modalities import MR_MODALITIES, STUDY_MODALITIES
from stsnb.synth import anatomy
from stsnb.synth.ct import render_ct
from stsnb.synth.dose import render_dose
from stsnb.synth.mr import render_mr
from stsnb.synth.pet import render_pet
from stsnb.synth.plan import patient_rng
from stsnb.synth.spec import PatientPlan

#: Displacement field values are rounded to multiples of this (mm): exact in float32, compact.
DISPLACEMENT_QUANTUM_MM = 1.0 / 256


def render_patient(plan: PatientPlan,
                   modalities: tuple[str, ...] = STUDY_MODALITIES) -> dict[str, sitk.Image]:
    """The images of one patient as SimpleITK images, nothing written: the CT (always), the GTV,
    the other ``modalities`` and the truth (tissue labels; with an MR sequence, the GTV on the MR
    grid and the CT->MR displacement field)."""
    ct_grid, mr_grid = plan.ct_grid, plan.mr.grid
    maps = anatomy.tissue_maps(plan.limb, plan.tumour, *ct_grid.points())
    out: dict[str, sitk.Image] = {
        "ct": ct_grid.image(render_ct(plan, maps, patient_rng(plan.seed, plan.index, 2))),
        "gtv": ct_grid.image(maps.gtv.astype(np.uint8)),
        "tissue_labels": ct_grid.image(maps.labels),
    }
    if "dose" in modalities:
        out["dose"] = plan.dose.grid.image(render_dose(plan))
    del maps
    if "pet" in modalities:
        out["pet"] = plan.pet.grid.image(render_pet(plan, patient_rng(plan.seed, plan.index, 5)))
    sequences = tuple(m for m in MR_MODALITIES if m in modalities)
    if not sequences:
        return out
    t = plan.mr.ct_to_mr
    mr_maps = {}
    ref = MR_MODALITIES[0]
    for seq in (ref, *sequences):
        if seq in mr_maps:
            continue
        motion = plan.mr.motion.get(seq)
        if seq != ref and (motion is None or not any(motion.angles_deg + motion.translation_mm)):
            mr_maps[seq] = mr_maps[ref]
            continue
        pts = t.inverse_on_grid(mr_grid, motion if seq != ref else None)
        mr_maps[seq] = anatomy.tissue_maps(plan.limb, plan.tumour, *pts)
    mr = render_mr(plan, mr_maps, patient_rng(plan.seed, plan.index, 3), sequences)
    for seq, arr in mr.items():
        out[seq] = mr_grid.image(arr)
    out["gtv_mr"] = mr_grid.image(mr_maps[ref].gtv.astype(np.uint8))
    field = t.deformation.on_axis_grid(ct_grid)
    field = (np.round(field / DISPLACEMENT_QUANTUM_MM) * DISPLACEMENT_QUANTUM_MM).astype(np.float32)
    out["displacement"] = ct_grid.image(field, is_vector=True)
    return out


def landmark_table(plan: PatientPlan) -> pd.DataFrame:
    """Corresponding points: CT frame (mm) and MR frame of the reference sequence (mm)."""
    names = list(plan.landmarks)
    ct = np.array([plan.landmarks[n] for n in names])
    mr = plan.mr.ct_to_mr.forward(ct)
    return pd.DataFrame({"name": names, "ct_x": ct[:, 0], "ct_y": ct[:, 1], "ct_z": ct[:, 2],
                         "mr_x": mr[:, 0], "mr_y": mr[:, 1], "mr_z": mr[:, 2]})


