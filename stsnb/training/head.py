"""The trained part of VGG-19 (its classifier: three fully connected layers) in two exact forms.

`PrimalHead` is the classifier as torchvision defines it, fed by any function of the slice
positions: cached features, or the naive full forward pass through the frozen convolutions.

`DualHead` trains the same classifier with the same SGD, faster. Its first layer (25088 -> 4096,
103 M weights, most of the cost of a step) sees only the frozen features x, with no dropout in
front of it, so every SGD-with-momentum update of its weight is a sum of outer products
g x_j^T over training slices j: the weight always equals W0 + A X_train, where X_train holds
the training slices' features (n_train x 25088) and A is 4096 x n_train. The head keeps A and
computes the layer as W0 x + A (X_train x) + b from two tables made once per combination:
W0 x for every slice, and the Gram matrix X X^T. Giving A the gradient g e_j^T (the primal
gradient in these coordinates) makes torch's SGD update A exactly as it would update the weight
(momentum included, no weight decay). Same numbers as the primal form up to float rounding; a
test checks it against the naive loop. A fold's trained head is stored as A, the training rows
and the other layers (a few MB plus 67 MB), and `dense_classifier_state` rebuilds the weight.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: Keys of the classifier's state that train in place in the dual form (the first weight is
#: represented by the coefficients instead).
DUAL_TRAINED = ("0.bias", "3.weight", "3.bias", "6.weight", "6.bias")


class PrimalHead:
    """The classifier (nn.Sequential of VGG-19) applied to `inputs(positions)` (float32)."""

    form = "primal"

    def __init__(self, classifier: nn.Sequential,
                 inputs: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.classifier = classifier
        self.inputs = inputs

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.classifier.parameters()

    def train(self, mode: bool = True) -> None:
        self.classifier.train(mode)

    def __call__(self, positions: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(positions, torch.Tensor):
            positions = positions.cpu().numpy()
        return self.classifier(self.inputs(positions))

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.classifier.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.classifier.load_state_dict(state)


class _DualFirstLayer(torch.autograd.Function):
    """h = W0 x + A k + b, where k = X_train x; dA is the primal gradient in A's coordinates."""

    @staticmethod
    def forward(ctx, base, kernel, coef, bias, columns):  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(columns)
        ctx.coef_shape = coef.shape
        return torch.addmm(base + bias, kernel, coef.t())

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (columns,) = ctx.saved_tensors
        grad_coef = grad.new_zeros(ctx.coef_shape).index_add_(1, columns, grad.t())
        return None, None, grad_coef, grad.sum(0), None


class DualTables:
    """Per combination: W0 x for every slice and the Gram matrix of the features (on device).

    Both are summed in float64 (25088 terms each) and rounded once to the head's dtype, so the
    dual form's first layer is at least as accurate as the ordinary one.
    """

    def __init__(self, features: torch.Tensor, first_weight: torch.Tensor) -> None:
        wide = features.double()
        self.wide_base = wide @ first_weight.double().t()  # (n, 4096), W0 x, float64
        self.wide_gram = wide @ wide.t()  # (n, n), x_i . x_j, float64
        self.base = self.wide_base.to(features.dtype)
        self.gram = self.wide_gram.to(features.dtype)

    def scaled(self, factor: float) -> DualTables:
        """The tables of the features times `factor` (c W0 x and c^2 X X^T), from the float64
        products: a uniform scaling ('rms') needs no new products over 25088 features."""
        tables = object.__new__(DualTables)
        tables.wide_base, tables.wide_gram = self.wide_base * factor, self.wide_gram * factor ** 2
        tables.base = tables.wide_base.to(self.base.dtype)
        tables.gram = tables.wide_gram.to(self.gram.dtype)
        return tables

    @property
    def n(self) -> int:
        return int(self.gram.shape[0])


class DualHead:
    """The classifier with its first weight held as W0 + A X_train (module docstring)."""

    form = "dual"

    def __init__(self, classifier: nn.Sequential, tables: DualTables,
                 train_positions: np.ndarray) -> None:
        self.classifier = classifier
        device = tables.base.device
        self.train_positions = np.asarray(train_positions, dtype=np.int64)
        self.kernel = tables.gram[:, torch.from_numpy(self.train_positions).to(device)]
        self.base = tables.base
        column = np.full(tables.n, -1, dtype=np.int64)
        column[self.train_positions] = np.arange(len(self.train_positions))
        self.column = torch.from_numpy(column).to(device)
        width = classifier[0].out_features
        self.coef = nn.Parameter(torch.zeros(width, len(self.train_positions), device=device,
                                             dtype=tables.base.dtype))

    def parameters(self) -> Iterator[nn.Parameter]:
        yield self.coef
        for name, parameter in self.classifier.named_parameters():
            if name != "0.weight":
                yield parameter

    def train(self, mode: bool = True) -> None:
        self.classifier.train(mode)

    def __call__(self, positions: np.ndarray | torch.Tensor) -> torch.Tensor:
        if not isinstance(positions, torch.Tensor):
            positions = torch.from_numpy(np.asarray(positions, dtype=np.int64))
        index = positions.to(self.base.device)
        hidden = _DualFirstLayer.apply(self.base[index], self.kernel[index], self.coef,
                                       self.classifier[0].bias, self.column[index])
        return self.classifier[1:](hidden)

    def state(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().clone() for k, v in self.classifier.state_dict().items()
                 if k in DUAL_TRAINED}
        state["coef"] = self.coef.detach().clone()
        return state

    def load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.coef.copy_(state["coef"])
            current = self.classifier.state_dict()
            current.update({k: state[k] for k in DUAL_TRAINED})
            self.classifier.load_state_dict(current)


def dense_classifier_state(stored: dict[str, torch.Tensor], first_weight: torch.Tensor,
                           train_features: torch.Tensor) -> dict[str, torch.Tensor]:
    """The classifier's ordinary state dict from a stored dual head: W = W0 + A X_train."""
    state = {k: stored[k].float() for k in DUAL_TRAINED}
    state["0.weight"] = torch.addmm(first_weight.float(), stored["coef"].float(),
                                    train_features.float())
    return state


#: How the frozen features are scaled before the head: 'none' keeps them as they are (the
#: study's ImageNet VGG-19, the study's settings untouched); 'rms' divides every feature by one
#: factor, the root mean square of the fold's training features (other weight sources, whose
#: features differ from ImageNet VGG's in scale by orders of magnitude: see `feature_scale`),
#: keeping their relative sizes; 'standardize' z-scores each feature on the fold's training
#: slices (measured worse: it lifts near-constant background features to unit variance).
SCALINGS = ("none", "standardize", "rms")


@dataclass(frozen=True)
class InputScaling:
    """x' = (x - mean) * scale per feature, fitted on one fold's training slices only."""

    mean: torch.Tensor | None = None  # (25088,) feature units; None = identity
    scale: torch.Tensor | None = None  # (25088,) 1 / SD, 0 where the SD is 0 in training
    factor: float | None = None  # 'rms': the one factor every feature is multiplied by

    @classmethod
    def fit(cls, train_features: torch.Tensor, mode: str) -> InputScaling:
        """The scaling `mode` fitted on the training rows (n_train, 25088)."""
        if mode == "none":
            return cls()
        if mode not in SCALINGS:
            raise ValueError(f"Unknown feature scaling {mode!r}: expected one of {SCALINGS}.")
        wide = train_features.double()
        if mode == "rms":  # one factor for every feature: their relative sizes are kept
            rms = float(wide.square().mean().sqrt())
            factor = 1.0 / rms if rms > 0 else 0.0
            return cls(torch.zeros(wide.shape[1], dtype=train_features.dtype),
                       torch.full((wide.shape[1],), factor, dtype=train_features.dtype),
                       factor)
        mean = wide.mean(0)
        sd = wide.std(0, unbiased=False)
        scale = torch.where(sd > 1e-12 * (1.0 + mean.abs()), 1.0 / sd, torch.zeros_like(sd))
        return cls(mean.to(train_features.dtype), scale.to(train_features.dtype))

    @property
    def identity(self) -> bool:
        return self.mean is None

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """The scaled features (same shape and dtype)."""
        if self.identity:
            return features
        return (features - self.mean.to(features)) * self.scale.to(features)

    def fold_into(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A classifier state for raw features: W diag(scale), b - W (mean * scale)."""
        if self.identity:
            return state
        weight = state["0.weight"]
        scale = self.scale.to(weight)
        shift = (self.mean.to(weight) * scale)
        return {**state, "0.weight": weight * scale, "0.bias": state["0.bias"] - weight @ shift}

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.identity else {"mean": self.mean.cpu(), "scale": self.scale.cpu()}

    @classmethod
    def from_dict(cls, stored: dict[str, torch.Tensor] | None) -> InputScaling:
        if not stored:
            return cls()
        return cls(stored["mean"], stored["scale"])


def feature_scale(features: np.ndarray) -> dict[str, float]:
    """Scale of cached features (n, 25088): mean value, mean L2 norm per slice, zero share."""
    values = np.asarray(features, dtype=np.float64)
    return {"mean": float(values.mean()), "norm": float(np.linalg.norm(values, axis=1).mean()),
            "zero_fraction": float(np.mean(values == 0.0))}


#: glibc's mallopt parameters (malloc.h) and the size kept on the heap (bytes).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _KEPT_BYTES = -1, -3, 1 << 30


@functools.cache
def reuse_freed_memory() -> bool:
    """Let glibc keep freed buffers (up to 1 GiB) for the next step instead of unmapping them.

    By default glibc maps every buffer above 32 MB afresh and returns it to the system when
    freed, so each SGD step of the head page-faults and zeroes its 64 MB gradient of the
    4096 x 4096 layer again: about a fifth of a fold's time on a 2-core CPU
    (`benchmarks/README.md`). Numbers are unchanged. Once per process; False where the C
    library is not glibc (the setting then stays the system's).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEPT_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _KEPT_BYTES))
