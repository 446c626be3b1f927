"""The network, built in one place: torchvision VGG-19 (the study's) or VGG-16, two classes.

`build_model` is the only code that constructs the network. It returns the model, its input
transform and a record of the backbone and weights used. The study's transfer learning: ImageNet
weights (`VGG19_Weights.IMAGENET1K_V1`), the last fully connected layer replaced by a two-class
one, the three fully connected layers (`model.classifier`) trained, every convolution frozen.

Where the weights come from, and the record of them: `stsnb.training.weights`. The input
transform travels with the weights (`ModelBundle.transform`): no caller normalizes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import Normalize

from stsnb.core.errors import ConfigError, WeightsError
from stsnb.training.weights import BUILDERS, WeightsInfo, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


N_FEATURES = 512 * 7 * 7  # VGG convolutional features after the 7x7 average pool (both backbones)


N_CLASSES = 2


#: Input conversions, by name (recorded in every key).
TRANSFORMS = ("imagenet", "caffe")




@dataclass
class ModelBundle:
    """The network, its input transform, the weights used and the untrained head's state."""

    model: nn.Module
    transform: nn.Module
    weights: WeightsInfo
    initial_head: dict[str, torch.Tensor] = field(repr=False)

    def reset_head(self, keys: tuple[str, ...] | None = None) -> None:
        """Put the classifier (or only the named entries of its state) back to before training."""
        state = self.model.classifier.state_dict()
        with torch.no_grad():
            for key in keys or tuple(self.initial_head):
                state[key].copy_(self.initial_head[key])


def input_transform(kind: str = "imagenet") -> nn.Module:
    """The conversion of [0, 1] RGB inputs that weights of this `kind` were trained with.

    'imagenet': per-channel ImageNet mean/std (`VGG19_Weights.IMAGENET1K_V1.transforms()`
    without its resize and crop: the slices are already square at the input size); 'caffe':
    BGR order, 0-255 scale, BGR mean subtracted (`stsnb.training.pretrained.CaffeInput`).
    """
    if kind == "caffe":
        from stsnb.training.pretrained import CaffeInput

        return CaffeInput()
    if kind != "imagenet":
        raise ConfigError(f"Unknown input transform {kind!r}: expected one of "
                          f"{', '.join(TRANSFORMS)}.")
    return Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block under torch's CPU generator seeded with `seed`, then restore its state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def build_model(weights: str | Path = "auto", seed: int = 0, num_classes: int = N_CLASSES,
                backbone: str = "auto") -> ModelBundle:
    """The network for the study: chosen backbone and weights, `num_classes` outputs, convolutions
    frozen.

    The random layers (the new last layer; the fully connected block for the offline filters;
    every layer for weights='none') are initialised from `seed` without touching torch's global
    generator. Only `model.classifier` trains.
    """
    state, info = resolve_weights(weights, seed, backbone)
    builder = BUILDERS[info.backbone][0]
    with _seeded(seed):
        model = builder(weights=None)
        last = model.classifier[6]
        out_features = (int(state["classifier.6.weight"].shape[0])
                        if state and "classifier.6.weight" in state else last.out_features)
        if out_features != last.out_features:  # a state dict saved from this two-class network
            model.classifier[6] = nn.Linear(last.in_features, out_features)
        if state is not None:
            only_features = not any(k.startswith("classifier.") for k in state)
            try:
                missing, unexpected = model.load_state_dict(state, strict=not only_features)
            except RuntimeError as exc:
                raise WeightsError(
                    f"Weights {info.file} do not fit {info.backbone} "
                    f"({str(exc).splitlines()[0]}). Fix: give torchvision's {info.backbone} "
                    "state dict."
                ) from exc
            if only_features and (unexpected or any(k.startswith("features.")
                                                    for k in missing)):
                raise WeightsError(f"Weights {info.file} do not fit {info.backbone}'s "
                                   f"convolutions (missing {missing[:3]}, unexpected "
                                   f"{unexpected[:3]}).")
        if model.classifier[6].out_features != num_classes:
            model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
    for parameter in model.features.parameters():
        parameter.requires_grad_(False)
    model.eval()
    initial = {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}
    return ModelBundle(model=model, transform=input_transform(info.transform), weights=info,
                       initial_head=initial)


def backbone_forward(bundle: ModelBundle, images: torch.Tensor, precision: str) -> torch.Tensor:
    """The frozen part: [0, 1] images -> transform, VGG features + 7x7 average pool, flattened.

    float32 (n, 25088). Under precision 'bf16' the convolutions run in bfloat16 autocast with
    channels_last memory and the result is the bfloat16 values widened to float32 (exact).
    """
    model = bundle.model
    x = bundle.transform(images)
    with torch.no_grad():
        if precision == "bf16":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                out = model.avgpool(model.features(x))
            return torch.flatten(out.to(torch.bfloat16), 1).float()
        return torch.flatten(model.avgpool(model.features(x)), 1)


def prepare_backbone(bundle: ModelBundle, device: torch.device, precision: str) -> None:
    """Move the network to `device`; channels_last memory for the bf16 fast path."""
    bundle.model.to(device)
    bundle.transform.to(device)
    if precision == "bf16":
        bundle.model.features.to(memory_format=torch.channels_last)


def backbone_name(backbone: str) -> str:
    """'vgg19' -> 'VGG-19' (for text)."""
    return str(backbone).upper().replace("VGG", "VGG-")


def network_sentence(weights: dict[str, Any]) -> str:
    """One line on which network a result comes from (a weights manifest entry, WeightsInfo's)."""
    backbone = backbone_name(weights.get("backbone", "vgg19"))
    summary = weights.get("summary", "unknown weights")
    if not weights.get("pretrained", False):
        return (f"Network: {backbone} with **random weights** ({summary}): not transfer "
                "learning, not the study's network.")
    if weights.get("study_network", False):
        return f"Network: the study's {backbone} ({summary})."
    return (f"Network: {backbone} with pretrained filters that are **not the study's** "
            f"ImageNet VGG-19 ({summary}).")
