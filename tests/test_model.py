"""The study's network: one builder, its input normalization, and where its weights come from.

ImageNet cannot be downloaded here: the loading code is torchvision's own (torch.hub's cache
under TORCH_HOME, hash convention in the file name), exercised with a state dict saved here.
"""

from __future__ import annotations

import json
import os
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import vgg19

from stsnb.core.errors import ConfigError
from stsnb.core.store import hash_file
from stsnb.training import weights as weights_module
from stsnb.training.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsError,
    build_model,
    input_transform,
)
from stsnb.training.pretrained import CaffeInput, hed_weights_path, read_hed_vgg16
from stsnb.training.weights import HED_SOURCE, describe_weights


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A VGG-19 state dict (float16 to keep it small) under torchvision's naming convention."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        state = {k: v.half() for k, v in vgg19().state_dict().items()}
    folder = tmp_path_factory.mktemp("weights")
    raw = folder / "raw.pth"
    torch.save(state, raw)
    named = folder / f"vgg19-{hash_file(raw)[:8]}.pth"
    raw.rename(named)
    return named, state


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME and no network (the download attempt fails like an offline site)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_input_transform_is_the_imagenet_normalization():
    x = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    y = input_transform()(x)
    for c in range(3):
        assert torch.allclose(y[0, c], torch.tensor(-IMAGENET_MEAN[c] / IMAGENET_STD[c]))
        assert torch.allclose(y[1, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))


def test_random_network_is_frozen_two_class_and_seeded():
    first = build_model("none", seed=4)
    net = first.model
    assert net.classifier[6].out_features == 2
    assert all(not p.requires_grad for p in net.features.parameters())
    assert all(p.requires_grad for p in net.classifier.parameters())
    assert first.weights.pretrained is False and "random" in first.weights.summary
    again = build_model("none", seed=4)
    assert torch.equal(net.features[0].weight, again.model.features[0].weight)
    assert torch.equal(net.classifier[6].weight, again.model.classifier[6].weight)
    assert first.weights.identity() == {"backbone": "vgg19", "transform": "imagenet",
                                        "weights": "random", "seed": 4}
    with torch.no_grad():
        assert net(input_transform()(torch.rand(1, 3, 32, 32))).shape == (1, 2)


def test_weights_load_from_a_path_under_torchvision_file_name(saved_weights):
    path, state = saved_weights
    bundle = build_model(str(path), seed=0)
    loaded = bundle.model.state_dict()
    assert torch.equal(loaded["features.0.weight"], state["features.0.weight"].float())
    assert torch.equal(loaded["classifier.3.weight"], state["classifier.3.weight"].float())
    assert loaded["classifier.6.weight"].shape == (2, 4096)  # the new two-class layer
    info = bundle.weights
    assert info.pretrained and info.source == "file" and info.sha256 == hash_file(path)
    assert info.file == path.name and str(path.parent) not in info.summary
    assert describe_weights(str(path)) == info


def test_imagenet_loads_from_torch_home_with_torch_hub(saved_weights, torch_home, monkeypatch):
    path, state = saved_weights
    torch_home.mkdir(parents=True)
    os.link(path, torch_home / path.name)  # the same bytes, no second copy on disk
    # Our file stands for torchvision's: same URL scheme, its own hash in the name.
    monkeypatch.setitem(weights_module.IMAGENET_URLS, "vgg19",
                        f"https://download.pytorch.org/models/{path.name}")
    bundle = build_model("imagenet", seed=0)
    assert bundle.weights.source == "imagenet" and bundle.weights.pretrained
    assert torch.equal(bundle.model.state_dict()["features.0.weight"],
                       state["features.0.weight"].float())
    assert build_model("auto", seed=0).weights.sha256 == bundle.weights.sha256


def test_a_wrong_hash_is_a_clear_error(saved_weights, torch_home, tmp_path):
    path, _ = saved_weights
    torch_home.mkdir(parents=True)
    impostor = torch_home / "vgg19-dcbb9e9d.pth"  # torchvision's real name, other content
    os.link(path, impostor)
    with pytest.raises(WeightsError, match="SHA-256 starts with .* but its name says dcbb9e9d"):
        build_model("imagenet")
    with pytest.raises(WeightsError, match="name says dcbb9e9d"):
        build_model(str(impostor))
    fallback = build_model("auto", seed=2)  # auto: the offline filters, saying why
    assert fallback.weights.source == HED_SOURCE and "dcbb9e9d" in fallback.weights.note
    with pytest.raises(WeightsError, match="name says dcbb9e9d.*backbone='vgg16'"):
        build_model("auto", seed=2, backbone="vgg19")


def test_auto_offline_resolves_to_the_offline_pretrained_filters(torch_home, tmp_path):
    bundle = build_model("auto", seed=1)
    info = bundle.weights
    assert info.pretrained is True and info.source == HED_SOURCE
    assert info.backbone == "vgg16" and info.transform == "caffe"
    assert not info.is_study_network and "not the study's" in info.summary
    assert "ImageNet VGG19 weights unavailable" in info.note
    assert json.dumps(info.manifest())  # what the manifest records
    assert info.manifest()["study_network"] is False
    with pytest.raises(WeightsError, match="could not be loaded.*TORCH_HOME"):
        build_model("imagenet")
    assert describe_weights("auto") is None  # only a download attempt could tell
    assert build_model("auto", seed=1, backbone="vgg16").weights.identity() == info.identity()


def test_explicit_vgg19_without_imagenet_names_both_ways_out(torch_home):
    with pytest.raises(WeightsError) as caught:
        build_model("auto", backbone="vgg19")
    message = str(caught.value)
    assert "backbone='vgg16'" in message and "weights='none'" in message
    with pytest.raises(ConfigError, match="do not fit backbone='vgg19'"):
        build_model(HED_SOURCE, backbone="vgg19")
    with pytest.raises(ConfigError, match="Unknown backbone 'resnet50'"):
        build_model("none", backbone="resnet50")


def test_offline_filters_load_into_vgg16_with_their_caffe_transform():
    bundle = build_model(HED_SOURCE, seed=3)
    state = read_hed_vgg16()
    loaded = bundle.model.state_dict()
    assert len(bundle.model.features) == 31  # VGG-16
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert isinstance(bundle.transform, CaffeInput)
    assert bundle.weights.identity()["backbone"] == "vgg16"
    assert bundle.weights.identity()["sha256"] == hash_file(hed_weights_path())
    again = build_model(HED_SOURCE, seed=3)  # the fully connected block: seeded
    assert torch.equal(again.model.classifier[0].weight, bundle.model.classifier[0].weight)
    other = build_model(HED_SOURCE, seed=4)
    assert not torch.equal(other.model.classifier[0].weight, bundle.model.classifier[0].weight)
    assert describe_weights(HED_SOURCE, seed=3) == bundle.weights
    assert all(not p.requires_grad for p in bundle.model.features.parameters())


def test_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="Unknown weights 'resnet'"):
        build_model("resnet")
    with pytest.raises(WeightsError, match="does not exist"):
        build_model(str(tmp_path / "missing.pth"))
    not_a_state = tmp_path / "notes.pth"
    torch.save({"epoch": 3}, not_a_state)
    with pytest.raises(WeightsError, match="not a VGG-19 state dict"):
        build_model(str(not_a_state))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="cannot be read"):
        build_model(str(garbage))
