"""The study's network, built in one place: torchvision VGG-19, a two-class last layer.

`build_model` is the only code that constructs VGG-19. It returns the model, its input transform
and a record of the weights used. The study's transfer learning: ImageNet weights
(`VGG19_Weights.IMAGENET1K_V1`), the last fully connected layer replaced by a two-class one, the
three fully connected layers (`model.classifier`) trained, every convolution frozen.

Input normalization: the slice store gives float32 (n, 3, H, W) in [0, 1] (three images as
R, G, B). The transform subtracts the ImageNet mean (0.485, 0.456, 0.406) and divides by the
ImageNet standard deviation (0.229, 0.224, 0.225), channel by channel: the normalization the
ImageNet weights were trained with (`VGG19_Weights.IMAGENET1K_V1.transforms()`), without its
resize to 256 px and centre crop, since the slices are already square at the input size.

Weights: `imagenet` (torchvision's file, from the torch hub cache `$TORCH_HOME/hub/checkpoints/`
or downloaded), `none` (random initialisation, seeded), a path to a state dict, or `auto`
(ImageNet when it can be loaded, else random with a loud warning recorded in every output).
A file named like torchvision's (`<name>-<hex>.pth`) must have a SHA-256 that starts with that
hex: torchvision publishes the first 8 hex digits of each file's SHA-256 in its name.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import VGG19_Weights, vgg19
from torchvision.transforms import Normalize

from .errors import ConfigError
from .store import hash_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's file for VGG19_Weights.IMAGENET1K_V1 (its name carries its SHA-256 prefix).
IMAGENET_URL = VGG19_Weights.IMAGENET1K_V1.url
#: torch.hub's convention: the hex after the last '-' of a file name is its SHA-256 prefix.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.[A-Za-z0-9]+$")
WEIGHT_CHOICES = ("auto", "imagenet", "none")
#: Seconds before an attempted download of the ImageNet weights gives up (offline sites).
DOWNLOAD_TIMEOUT_S = 20.0
N_FEATURES = 512 * 7 * 7  # VGG-19 convolutional features after its 7x7 average pool
N_CLASSES = 2


#: SHA-256 of weights files already read in this process, by (path, size, mtime).
_DIGESTS: dict[tuple[str, int, int], str] = {}


class WeightsError(ConfigError):
    """Weights that cannot be used: missing file, wrong hash, not a VGG-19 state dict."""


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights the network started from, as recorded in every output."""

    source: str  # imagenet | file | random
    pretrained: bool
    summary: str
    sha256: str | None = None  # of the weights file; None for random weights
    file: str | None = None  # the file's name (never a full path of the user's machine)
    seed: int = 0  # initialises the random layers (all of them for random weights)
    warning: str | None = None

    def identity(self) -> dict[str, Any]:
        """What the network's numbers depend on (part of the feature and run keys)."""
        if self.sha256 is None:
            return {"weights": "random", "seed": self.seed}
        return {"weights": "file", "sha256": self.sha256, "head_seed": self.seed}

    def manifest(self) -> dict[str, Any]:
        """The manifest's `weights` entry (pretrained and summary are what the book reads)."""
        return {"pretrained": self.pretrained, "summary": self.summary, "source": self.source,
                "sha256": self.sha256, "file": self.file, "warning": self.warning}


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


def input_transform() -> nn.Module:
    """ImageNet per-channel normalization of [0, 1] inputs (module docstring)."""
    return Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block under torch's CPU generator seeded with `seed`, then restore its state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _hash_prefix(name: str) -> str | None:
    match = HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def check_weights_file(path: str | Path) -> str:
    """SHA-256 of a weights file; WeightsError when its name's hash prefix does not match."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist. Fix: give the path of a VGG-19 state dict "
            f"(torchvision's is {Path(IMAGENET_URL).name}), or weights='none'."
        )
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(cache_key) or hash_file(path)
    _DIGESTS[cache_key] = digest
    prefix = _hash_prefix(path.name)
    if prefix is not None and not digest.startswith(prefix):
        raise WeightsError(
            f"Weights file {path.name}: its SHA-256 starts with {digest[:len(prefix)]}, but its "
            f"name says {prefix} (torchvision's convention). The file is corrupt or not the one "
            "it is named after. Fix: copy it again from a trusted source."
        )
    return digest


def hub_weights_path() -> Path:
    """Where torch.hub keeps torchvision's ImageNet file (`$TORCH_HOME/hub/checkpoints/`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_URL).name


def _load_imagenet() -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's ImageNet state dict (hub cache, else download) and its file's SHA-256."""
    cached = hub_weights_path()
    # torch.hub checks the hash only when it downloads: check a cached copy here.
    digest = check_weights_file(cached) if cached.exists() else None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # What VGG19_Weights.IMAGENET1K_V1.get_state_dict() does, for the (patchable) URL.
        extra = {"weights_only": True} if "weights_only" in inspect.signature(
            torch.hub.load_state_dict_from_url).parameters else {}  # absent in older torch
        # torch.hub announces the download with the cache's absolute path: keep that
        # path out of executed notebooks (the book shows no path of the user's machine).
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = torch.hub.load_state_dict_from_url(IMAGENET_URL, progress=False,
                                                       check_hash=True, map_location="cpu",
                                                       **extra)
    except WeightsError:
        raise
    except Exception as exc:  # offline, proxy, disk full, corrupt file: all reported alike
        raise WeightsError(
            f"ImageNet weights could not be loaded ({type(exc).__name__}: {exc}). Fix (offline "
            f"sites): copy torchvision's {cached.name} to $TORCH_HOME/hub/checkpoints/ or pass "
            "its path as weights (WEIGHTS=...)."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return state, digest or check_weights_file(cached)


def _load_file(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    digest = check_weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"Weights file {path.name} cannot be read as a state dict ({exc}). Fix: save it "
            "with torch.save(model.state_dict(), path)."
        ) from exc
    if not isinstance(state, dict) or "features.0.weight" not in state:
        raise WeightsError(
            f"Weights file {path.name} is not a VGG-19 state dict (no 'features.0.weight'). "
            "Fix: give torchvision's vgg19 file or a state dict saved from this network."
        )
    return state, digest


def _summary(source: str, file: str | None, digest: str | None, seed: int) -> str:
    if source == "random":
        return f"random initialisation (seed {seed}), not ImageNet: not transfer learning"
    official = file == Path(IMAGENET_URL).name
    what = "ImageNet (torchvision VGG19_Weights.IMAGENET1K_V1)" if official else "state dict"
    return f"{what}, file {file}, SHA-256 {digest[:16]}...; two-class last layer (seed {seed})"


def resolve_weights(weights: str | Path, seed: int = 0) -> tuple[dict | None, WeightsInfo]:
    """Load the state dict that `weights` names (None for random) and describe it."""
    spec = str(weights).strip()
    key = spec.lower()
    if key == "none":
        return None, WeightsInfo("random", False, _summary("random", None, None, seed), seed=seed)
    if key in ("auto", "imagenet"):
        try:
            state, digest = _load_imagenet()
        except WeightsError as exc:
            if key == "imagenet":
                raise
            message = (f"WARNING: the network starts from RANDOM weights, not ImageNet: {exc} "
                       "Results of this run are not transfer learning.")
            warnings.warn(message, stacklevel=3)
            info = WeightsInfo("random", False, _summary("random", None, None, seed) +
                               f"; ImageNet weights unavailable: {exc}", seed=seed,
                               warning=message)
            return None, info
        name = Path(IMAGENET_URL).name
        return state, WeightsInfo("imagenet", True, _summary("imagenet", name, digest, seed),
                                  sha256=digest, file=name, seed=seed)
    path = Path(spec).expanduser()
    if not (path.suffix or path.exists() or "/" in spec or "\\" in spec):
        raise ConfigError(
            f"Unknown weights {weights!r}: expected one of {', '.join(WEIGHT_CHOICES)} or the "
            "path of a state dict file."
        )
    state, digest = _load_file(path)
    return state, WeightsInfo("file", True, _summary("file", path.name, digest, seed),
                              sha256=digest, file=path.name, seed=seed)


def describe_weights(weights: str | Path, seed: int = 0) -> WeightsInfo | None:
    """What `build_model(weights, seed)` would record, without loading the network.

    None when only an attempt to download could tell (ImageNet not in the hub cache).
    """
    key = str(weights).strip().lower()
    if key in ("auto", "imagenet"):
        cached = hub_weights_path()
        try:
            digest = check_weights_file(cached) if cached.exists() else None
        except WeightsError:
            return None
        if digest is None:
            return None
        return WeightsInfo("imagenet", True, _summary("imagenet", cached.name, digest, seed),
                           sha256=digest, file=cached.name, seed=seed)
    if key == "none":
        return resolve_weights("none", seed)[1]
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        return None
    digest = check_weights_file(path)
    return WeightsInfo("file", True, _summary("file", path.name, digest, seed), sha256=digest,
                       file=path.name, seed=seed)


def build_model(weights: str | Path = "auto", seed: int = 0,
                num_classes: int = N_CLASSES) -> ModelBundle:
    """VGG-19 for the study: chosen weights, `num_classes` outputs, convolutions frozen.

    The random layers (the new last layer; every layer for weights='none') are initialised from
    `seed` without touching torch's global generator. Only `model.classifier` trains.
    """
    state, info = resolve_weights(weights, seed)
    with _seeded(seed):
        model = vgg19(weights=None)
        last = model.classifier[6]
        out_features = int(state["classifier.6.weight"].shape[0]) if state else last.out_features
        if out_features != last.out_features:  # a state dict saved from this two-class network
            model.classifier[6] = nn.Linear(last.in_features, out_features)
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise WeightsError(
                    f"Weights {info.file} do not fit VGG-19 ({str(exc).splitlines()[0]}). Fix: "
                    "give torchvision's vgg19 state dict."
                ) from exc
        if model.classifier[6].out_features != num_classes:
            model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
    for parameter in model.features.parameters():
        parameter.requires_grad_(False)
    model.eval()
    initial = {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}
    return ModelBundle(model=model, transform=input_transform(), weights=info,
                       initial_head=initial)


def backbone_forward(bundle: ModelBundle, images: torch.Tensor, precision: str) -> torch.Tensor:
    """The frozen part: normalized [0, 1] images -> VGG features + 7x7 average pool, flattened.

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
