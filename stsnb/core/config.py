"""Frozen configuration per profile: every number of the study's protocol in one place.

Each field says where its value comes from. `paper` is the study's protocol; `quick` is the same
code path made to fit a 2-core CPU; `smoke` is the tests' profile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stsnb.core.errors import ConfigError

PROFILES = ("auto", "smoke", "quick", "paper")


@dataclass(frozen=True)
class RegistrationConfig:
    """MR-to-CT registration settings (SimpleITK; CT fixed, MR moving; lengths in mm).

    A cohort may override any field in the [registration] table of its cohort.toml.
    """

    initialization: str = "auto"  # auto | scanner | geometry (see stsnb.registration.rigid)
    # auto keeps the scanner positions (when the images overlap there) unless a start farther
    # than initialization_far_mm from them improves the start metric by initialization_min_gain
    initialization_far_mm: float = 10.0
    initialization_min_gain: float = 0.05  # relative (0.05 = 5 % of the metric's magnitude)
    rigid_iterations: int = 200  # per level; regular-step gradient descent on Mattes MI
    rigid_shrink_factors: tuple[int, ...] = (4, 2, 1)  # multi-resolution pyramid (working grid)
    rigid_smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)  # per level, mm
    rigid_z_starts_mm: tuple[float, ...] = (-16.0, -8.0, 8.0, 16.0)  # restarts along CT z, mm
    rigid_z_rotations_deg: tuple[float, ...] = (-8.0, -4.0, 4.0, 8.0)  # restarts about CT z
    mi_histogram_bins: int = 50  # Mattes MI bins (SimpleITK's usual default)
    mi_sampling_fraction: float = 0.05  # random voxel sampling for the metric
    rigid_focus_mm: float = 0.0  # rigid metric only within this distance of the GTV (0 = all)
    working_spacing_mm: float = 2.0  # images binned to about this voxel size first (0 = off)
    refine_sequences: bool = False  # per-sequence rigid MR-to-MR refinement (inter-sequence motion)
    refine_iterations: int = 60  # iterations of that refinement
    deformable: bool = True  # the study: deformable registration for contour propagation
    bspline_mesh_mm: float = 90.0  # B-spline control-point spacing, mm
    bspline_iterations: int = 200  # regular-step gradient descent iterations per level
    bspline_shrink_factors: tuple[int, ...] = (1,)  # pyramid of that step (working grid)
    bspline_smoothing_sigmas_mm: tuple[float, ...] = (0.0,)  # per level, mm (smoothing made MI
    # prefer wrong deformations on the synthetic cohort: the last level is best unsmoothed)
    bspline_samples: int = 20000  # random points per level for the deformable metric
    bspline_z_damping: float = 5.0  # z coefficients take this many times smaller steps
    bspline_focus_mm: float = 50.0  # metric points within this distance of the GTV (0 = all)
    roi_margin_mm: float = 30.0  # deformable step: tumour z-extent +- this margin (>= 10 mm)
    # a deformable result displacing any point by more than this (mm; the QA threshold) is
    # rejected (the rigid result kept), as is one that folds (min Jacobian <= 0)
    bspline_max_displacement_mm: float = 20.0


@dataclass(frozen=True)
class PreprocessingConfig:
    """Slice extraction and normalization (the study's image-processing slide)."""

    z_margin_mm: float = 10.0  # "a margin of 1 cm both superiorly and inferiorly"
    canvas_px: int = 512  # "resized all the multimodal images in 512 x 512 matrices"
    input_px: int = 224  # "the pre-trained network requires input images of 224 x 224 pixels"
    normalization: str = "volume"  # min-max per volume and modality over the kept slab
    max_slices_per_patient: int | None = None  # None = every tumour slice (the study)


@dataclass(frozen=True)
class TrainingConfig:
    """VGG-19 transfer learning (the study's training slide)."""

    folds: int = 10  # "ten-fold cross-validation"
    optimizer: str = "sgd"  # "SGDM optimizer"
    momentum: float = 0.9  # "momentum at 0.9"
    batch_size: int = 64  # "mini-batch size of 64"
    learning_rate: float = 0.01  # "initial learning rate of 0.01"
    max_epochs: int = 50  # "for 50 epochs"
    patience: int = 8  # "validation loss did not improve for 8 sequential epochs"
    validation_fraction: float = 0.1  # of the training patients, for early stopping (not stated)
    # cross-entropy class weights (not stated in the study): "balanced" weighs each class by
    # n / (2 n_class) of the fold's training slices, so that a head which learnt nothing sits at
    # P = 0.5 instead of the 30 % prior and a weak signal still crosses the 0.5 threshold
    # (unweighted, the heads called almost no slice positive: sensitivity 0.00-0.01 on the
    # quick profile); "none" = the plain cross-entropy.
    class_weighting: str = "balanced"
    # the FC head's learning rate on rescaled features (weights other than the study's, whose
    # features are divided by their RMS: `stsnb.training.cv.feature_scaling`), measured with
    # benchmarks/bench_fc_steps.py; None = learning_rate. The study's weights use learning_rate.
    rescaled_learning_rate: float | None = 0.001
    control_combos: tuple[int, ...] | str | None = None  # None = controls for every
    # combination; "extremes" = for the best and the worst by patient-level AUC (patient split)
    linear_pooling: str = "gtv"  # linear head: conv maps averaged inside the GTV (or "global")
    linear_inner_folds: int = 3  # linear head: inner CV over the training patients, for C
    linear_permutations: int = 1000  # permutation test of the whole CV, linear head
    fc_permutations: int = 19  # the same for the FC head, best combination (19: p can be 0.05)


@dataclass(frozen=True)
class RadiomicsConfig:
    """IBSI radiomics features of the GTV (MIRP) and the models on them (not in the study)."""

    # Moran's I and Geary's C of the CT's morphology family: MIRP estimates both by Monte Carlo
    # over 100-voxel subsets for a GTV of 1000 voxels or more, 3-17 s per patient of the
    # synthetic cohort (benchmarks/bench_radiomics.py), most of the stage's time. False leaves
    # these two features out (every other feature is unchanged); part of each patient's key.
    spatial_autocorrelation: bool = True
    inner_folds: int = 3  # models: stratified inner CV over the training patients (k and C)
    select_k: tuple[int, ...] = (5, 10, 20)  # features kept by SelectKBest(f_classif), choices
    lr_cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # L2 logistic regression, C choices
    forest_trees: int = 300  # random forest: trees (sqrt of the features tried per split)
    forest_min_leaf: tuple[int, ...] = (1, 3)  # random forest: min patients per leaf, choices
    lr_permutations: int = 1000  # permutation test of the whole nested CV, lr models


#: TrainingConfig fields that do not change an FC run's outputs (not part of its key).
NOT_FC_KEY = ("control_combos", "linear_pooling", "linear_inner_folds", "linear_permutations",
              "fc_permutations")


@dataclass(frozen=True)
class Profile:
    """A named, frozen bundle of every setting that changes results."""

    name: str
    description: str
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    radiomics: RadiomicsConfig = field(default_factory=RadiomicsConfig)
    synthetic_patients: int = 72  # the study screened 72 patients (61 complete)

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dict (for hashing, manifests and display)."""
        return asdict(self)


PAPER = Profile(
    name="paper",
    description="The study's protocol: all patients, all tumour slices, 224 px, 10 folds, "
    "SGD momentum 0.9, lr 0.01, batch 64, <= 50 epochs, patience 8.",
)

QUICK = Profile(
    name="quick",
    description="Same code path and 224 px VGG-19 on a CPU: fewer slices per patient, "
    "5 folds, fewer epochs, lighter registration, controls for the best and the worst "
    "combination, radiomics without Moran's I and Geary's C.",
    registration=RegistrationConfig(
        rigid_iterations=100,
        # 60 (the default cohort, 2 cores, against 100 iterations: bench_registration): 3.89 s
        # per patient instead of 4.45 (80 iterations), median TRE 1.46 mm (1.40 at 80, 1.36 at
        # 100), Dice 0.969, no patient's TRE worse by more than 0.38 mm
        bspline_iterations=60,
        bspline_samples=10000,
    ),
    preprocessing=PreprocessingConfig(max_slices_per_patient=6),
    training=TrainingConfig(folds=5, max_epochs=20, patience=6, control_combos="extremes",
                            linear_permutations=200, fc_permutations=0),
    # 100 trees: 8 s per feature set for the nested CV of 61 patients (300: 23 s)
    radiomics=RadiomicsConfig(spatial_autocorrelation=False, forest_trees=100,
                              lr_permutations=200),
)

SMOKE = Profile(
    name="smoke",
    description="Tests only: a tiny cohort, small input size, 2 folds, 2 epochs.",
    registration=RegistrationConfig(
        rigid_iterations=50,
        rigid_z_starts_mm=(-8.0, 8.0),
        rigid_z_rotations_deg=(-6.0, 6.0),
        bspline_iterations=20,
        bspline_samples=3000,
    ),
    preprocessing=PreprocessingConfig(canvas_px=128, input_px=64, max_slices_per_patient=4),
    training=TrainingConfig(folds=2, max_epochs=2, patience=1, batch_size=16, control_combos=(1,),
                            linear_permutations=20, fc_permutations=0),
    radiomics=RadiomicsConfig(spatial_autocorrelation=False, forest_trees=20,
                              lr_permutations=20),
    synthetic_patients=8,
)

_BY_NAME = {p.name: p for p in (PAPER, QUICK, SMOKE)}


def cuda_available() -> bool:
    """True when torch is importable and sees a CUDA device."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def resolve_profile(name: str | Profile = "auto") -> Profile:
    """Return the frozen profile for `name`; `auto` = `paper` on a GPU, `quick` otherwise."""
    if isinstance(name, Profile):
        return name
    key = str(name).strip().lower()
    if key == "auto":
        return PAPER if cuda_available() else QUICK
    if key not in _BY_NAME:
        raise ConfigError(
            f"Unknown profile {name!r}: expected one of {', '.join(PROFILES)}."
        )
    return _BY_NAME[key]


SECTIONS = ("registration", "preprocessing", "training", "radiomics")


def config_table(profile: Profile, sections: tuple[str, ...] = SECTIONS
                 ) -> list[tuple[str, str]]:
    """Flatten a profile into (setting, value) rows: every section (the first page shows the
    whole profile), or those a chapter uses."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"Unknown profile sections {unknown}: expected some of {SECTIONS}.")
    rows: list[tuple[str, str]] = [("profile", profile.name)]
    for section in sections:
        for key, value in asdict(getattr(profile, section)).items():
            rows.append((f"{section}.{key}", str(value)))
    if sections == SECTIONS:
        rows.append(("synthetic_patients", str(profile.synthetic_patients)))
    return rows
