"""Grad-CAM: maps of the right shape and range, mass shares with known answers, RGB overlay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stsnb.core.metrics import outcome_class
from stsnb.gradcam.maps import (
    gradcam_maps,
    last_conv_layer,
    mass_shares,
    overlay,
    ring_mask,
    select_slices,
)
from stsnb.training.model import build_model
from stsnb.training.weights import LAST_CONV


@pytest.fixture(scope="module")
def bundle():
    return build_model("none", seed=0)


@pytest.mark.parametrize("backbone", ["vgg19", "vgg16"])
def test_last_conv_is_the_backbones_last_convolution(backbone):
    model = build_model("none", seed=0, backbone=backbone).model
    layer = last_conv_layer(model)
    assert layer is model.features[LAST_CONV[backbone]]  # 34 for VGG-19, 28 for VGG-16
    assert (layer.in_channels, layer.out_channels) == (512, 512)


def test_maps_have_the_input_size_range_and_depend_on_the_input(bundle):
    rng = np.random.default_rng(0)
    images = rng.random((3, 3, 64, 64)).astype(np.float32)
    images[1, :, 10:30, 10:30] = 1.0
    maps = gradcam_maps(bundle, images, batch_size=2)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    assert not np.allclose(maps[0], maps[1])
    np.testing.assert_allclose(gradcam_maps(bundle, images[:1]), maps[:1], atol=1e-5)
    with pytest.raises(Exception, match="expects"):
        gradcam_maps(bundle, images[:, :2])


def test_mass_shares_known_answers():
    body = np.zeros((40, 40), bool)
    body[5:35, 5:35] = True
    gtv = np.zeros_like(body)
    gtv[15:25, 15:25] = True
    uniform = body.astype(float)
    shares = mass_shares(uniform, gtv, body, ring_px=3)
    assert shares["chance_gtv"] == pytest.approx(100 / 900)
    assert shares["share_gtv"] == pytest.approx(shares["chance_gtv"])
    assert shares["share_ring"] == pytest.approx(shares["chance_ring"])
    focused = gtv.astype(float)
    assert mass_shares(focused, gtv, body, 3)["share_gtv"] == pytest.approx(1.0)
    assert np.isnan(mass_shares(np.zeros_like(uniform), gtv, body, 3)["share_gtv"])


def test_ring_is_outside_the_gtv_and_as_wide_as_asked():
    gtv = np.zeros((30, 30), bool)
    gtv[10:20, 10:20] = True
    ring = ring_mask(gtv, 2)
    assert not (ring & gtv).any()
    assert ring[8, 15] and ring[9, 15] and not ring[7, 15]


def test_overlay_keeps_rgb_order():
    red = np.zeros((3, 16, 16), np.float32)
    red[0] = 1.0
    out = overlay(red, np.zeros((16, 16), np.float32))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out[..., 0].mean() > out[..., 2].mean()


def test_outcome_classes_and_selection_spread():
    assert [outcome_class(1, 0.9), outcome_class(1, 0.1), outcome_class(0, 0.7),
            outcome_class(0, 0.2)] == ["TP", "FN", "FP", "TN"]
    preds = pd.DataFrame({"patient_id": [f"P{i}" for i in range(40)], "slice_index": 0,
                          "fold": [i % 2 + 1 for i in range(40)],
                          "label": [i % 4 < 2 for i in range(40)],
                          "prob": np.linspace(0, 1, 40)}).astype({"label": int})
    chosen = select_slices(preds, per_fold=4)
    assert chosen.groupby("fold").size().tolist() == [4, 4]
    assert chosen["outcome"].nunique() >= 3
