"""Parameter records of one synthetic patient (lengths in mm, doses in Gy, uptake in SUV)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stsnb.synth.fields import PlaneWaves, SphereWaves
from stsnb.synth.geometry import CtToMr, Grid, Rigid


@dataclass(frozen=True, eq=False)
class Bone:
    """A long bone: centre offset (mm) from the limb centre, outer radius and cortex (mm)."""

    offset_mm: tuple[float, float]
    radius_mm: float
    cortex_mm: float


@dataclass(frozen=True, eq=False)
class Limb:
    """Extremity cross-section varying slowly along z (the limb axis)."""

    site: str
    z_ref_mm: float
    center_mm: tuple[float, float]
    drift: tuple[float, float]  # mm of centre shift per mm of z
    wobble_mm: float
    wobble_period_mm: float
    wobble_phase: float
    semi_axes_mm: tuple[float, float]
    orientation_deg: float
    taper_pct_per_100mm: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for m = 2, 3, 4
    skin_mm: float
    fat_mm: float
    fat_angle_deg: float
    bones: tuple[Bone, ...]
    artery_offset_mm: tuple[float, float]
    artery_radius_mm: float
    vein_offset_mm: tuple[float, float]
    vein_radius_mm: float
    vessel_twist_deg_per_100mm: float
    septa_deg: tuple[float, ...]
    septum_mm: float


@dataclass(frozen=True, eq=False)
class Tumour:
    """Perturbed ellipsoid with a necrotic core, haemorrhage blobs and peritumoral oedema."""

    center_mm: np.ndarray  # (3,)
    axes: np.ndarray  # (3, 3) columns: local axes in body frame
    semi_axes_mm: np.ndarray  # (3,)
    shape: SphereWaves
    necrosis_offset_mm: np.ndarray  # (3,) in local axes
    necrosis_scale: float  # necrosis semi-axes as a fraction of the tumour's (0 = none)
    necrosis_shape: SphereWaves
    rim_mm: float  # minimal viable rim thickness
    haemorrhages: tuple[tuple[tuple[float, float, float], float], ...]  # (centre mm, radius mm)
    oedema_mm: float  # width of peritumoral oedema (0 = none)
    oedema_noise: PlaneWaves
    heterogeneity_noise: PlaneWaves
    texture_noise: PlaneWaves
    bbox_min_mm: np.ndarray
    bbox_max_mm: np.ndarray


@dataclass(frozen=True, eq=False)
class DosePlan:
    """Pre-operative plan: prescription, margins, beams, hot spot, cold sector."""

    grid: Grid
    prescription_gy: float
    fractions: int
    ctv_radial_mm: float
    ctv_longitudinal_mm: float
    ptv_mm: float
    penumbra_sigma_mm: float
    beam_angles_deg: tuple[float, ...]
    bath_fraction: float
    hotspot: float  # max dose / prescription - 1
    hotspot_noise: PlaneWaves
    cold_direction_deg: float
    cold_depth: float  # fraction of prescription missing in the cold sector (0 = none)


@dataclass(frozen=True, eq=False)
class MrSession:
    """MR geometry and contrast parameters of the session."""

    grid: Grid
    ct_to_mr: CtToMr
    motion: dict[str, Rigid]  # per sequence: reference-session point -> that sequence's point
    bias_coeffs: np.ndarray  # (3 sequences, 9) polynomial coefficients of log bias
    noise_sigma: float  # in units of fat T1 signal
    contrast_jitter: dict[str, float]
    scales: dict[str, float]
    #: "own": the session in the MR scanner's frame; "ct": written in the CT's frame
    #: (co-registered; ct_to_mr and motion are the identity), on the MR's own grid.
    frame: str = "own"


@dataclass(frozen=True, eq=False)
class PetPlan:
    """FDG PET of a PET/CT (SUV): its grid in the CT's frame, resolution, uptake and noise."""

    grid: Grid
    fwhm_mm: float  # system resolution (full width at half maximum)
    suv: dict[int, float]  # mean SUV per tissue label (viable tumour: before rim and texture)
    rim_gain: float  # extra viable uptake at the tumour surface (fraction), decaying inward
    rim_depth_mm: float  # e-folding depth (mm) of that extra uptake
    heterogeneity: float  # amplitude of the smooth uptake field in the viable tumour (fraction)
    noise: float  # noise sd at 1 SUV (SUV); sd scales with sqrt(SUV)


@dataclass(frozen=True, eq=False)
class PatientPlan:
    """Everything needed to render one patient, plus the tables' values."""

    index: int
    patient_id: str
    seed: int
    limb: Limb
    tumour: Tumour
    ct_grid: Grid
    ct_noise_hu: float
    ct_jitter_hu: dict[str, float]
    dose: DosePlan
    mr: MrSession
    factors: dict[str, float]
    risk: dict[str, float]
    clinical: dict[str, object]
    missing: str = ""
    landmarks: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    pet: PetPlan | None = None
