"""The classifiers of the GANMEX paper (appendix A), as torch modules.

Every activation is an ``nn.ReLU`` module (never ``F.relu``) so that DeepLIFT's rescale rule can
hook it, and every module instance runs once per forward pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from xaisdk.data._checks import check_real, describe
from xaisdk.errors import InputError
from xaisdk.input_files import MAX_CLASSES, MAX_HIDDEN, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_IN_CHANNELS
from xaisdk.models.config_checks import meta_build, require_int, require_width


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class MnistCNN(nn.Module):
    """GANMEX's MNIST/SVHN classifier: two 6x6 stride-2 convolutions (32, 64 channels), FC 256,
    dropout 0.5, linear outputs (logits).

    Padding 2 keeps TensorFlow's "same" geometry of the paper (28 -> 14 -> 7).

    >>> import torch
    >>> MnistCNN(in_channels=1, image_size=28, num_classes=10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 256,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        side = _conv_out(_conv_out(image_size, 6, 2, 2), 6, 2, 2)
        if side < 1:
            raise InputError(f"image_size={image_size} is too small for MnistCNN (needs >= 6)")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], kernel_size=6, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], kernel_size=6, stride=2, padding=2),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[1] * side * side, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CifarCNN(nn.Module):
    """GANMEX's CIFAR-10 classifier: 4 units of (3x3 conv + batch norm + ReLU) x 2, then 2x2 average
    pooling; a linear layer on the flattened features gives the logits.

    The paper does not state the widths; ``widths`` defaults to (32, 64, 128, 256).

    >>> import torch
    >>> CifarCNN(in_channels=3, image_size=32, num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64, 128, 256),
    ) -> None:
        super().__init__()
        if image_size % (2 ** len(widths)) != 0:
            raise InputError(
                f"image_size={image_size} must be divisible by {2 ** len(widths)} for {len(widths)} pooling units"
            )
        layers: list[nn.Module] = []
        previous = in_channels
        for width in widths:
            for _ in range(2):
                layers += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                previous = width
            layers.append(nn.AvgPool2d(2))
        self.features = nn.Sequential(*layers)
        side = image_size // (2 ** len(widths))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(previous * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ARCHITECTURES: dict[str, type[nn.Module]] = {"mnist_cnn": MnistCNN, "cifar_cnn": CifarCNN}


# The longest ``widths`` of CifarCNN: each unit halves the image, 8 units need a multiple of 256 pixels.
MAX_CIFAR_UNITS = 8


def _widths(where: str, name: str, value: object, low: int, high: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not low <= len(value) <= high:
        raise InputError(f"{where}: {name}: expected {low}{'' if low == high else f' to {high}'} channel counts, "
                         f"got {describe(value)}")
    return tuple(require_width(where, f"{name}[{i}]", v) for i, v in enumerate(value))


def _image_size(where: str, name: str, value: object) -> int:
    side = require_int(where, name, value, 1, MAX_IMAGE_SIDE)
    if side * side > MAX_IMAGE_PIXELS:
        raise InputError(f"{where}: {name}={side} gives {side * side} pixels, above the limit of {MAX_IMAGE_PIXELS}")
    return side


# Type and bounds of every config field of the architectures above (documented in xaisdk.input_files).
_FIELDS: dict[str, Callable[[str, str, object], Any]] = {
    "in_channels": lambda where, name, v: require_int(where, name, v, 1, MAX_IN_CHANNELS),
    "image_size": _image_size,
    "num_classes": lambda where, name, v: require_int(where, name, v, 1, MAX_CLASSES),
    "hidden": lambda where, name, v: require_int(where, name, v, 1, MAX_HIDDEN),
    "channels": lambda where, name, v: _widths(where, name, v, 2, 2),
    "widths": lambda where, name, v: _widths(where, name, v, 1, MAX_CIFAR_UNITS),
    "dropout": lambda where, name, v: check_real(f"{where}: {name}", v, low=0.0, high=1.0, open_high=True),
}


def check_classifier_config(arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` checked field by field for ``arch`` (types and the bounds of :mod:`xaisdk.input_files`),
    before anything is built; unknown fields are refused.

    >>> check_classifier_config("mnist_cnn", {"image_size": 28, "hidden": 128})
    {'image_size': 28, 'hidden': 128}
    >>> check_classifier_config("mnist_cnn", {"hidden": 10**7})
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: config for architecture 'mnist_cnn': hidden: expected an integer <= 65536, got 10000000
    """
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    if not isinstance(config, dict):
        raise InputError(f"config for architecture {arch!r}: expected a dict, got {describe(config)}")
    accepted = list(inspect.signature(ARCHITECTURES[arch]).parameters)
    unknown = sorted(str(k) for k in config if k not in accepted)
    if unknown:
        raise InputError(f"bad config for architecture {arch!r}: unknown field {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted)}")
    where = f"config for architecture {arch!r}"
    return {name: _FIELDS[name](where, name, value) for name, value in config.items()}


def classifier_skeleton(arch: str, config: dict[str, Any]) -> nn.Module:
    """The classifier ``arch`` with ``config`` built on the meta device (no memory), after
    :func:`check_classifier_config` and the parameter limit: its shapes, without its weights.

    >>> sum(p.numel() for p in classifier_skeleton("mnist_cnn", {"num_classes": 10}).parameters())
    880618
    """
    checked = check_classifier_config(arch, config)
    return meta_build(lambda: ARCHITECTURES[arch](**checked), f"classifier {arch!r}")


def build_classifier(arch: str, **config) -> nn.Module:
    """Instantiate a classifier by architecture name and keyword config.

    The config is checked first (:func:`check_classifier_config`) and the network's size counted on the
    meta device, so a config that would need more than ``MAX_PARAMETERS`` weights is refused before
    any memory is allocated.

    >>> build_classifier("mnist_cnn", in_channels=1, image_size=28, num_classes=10).__class__.__name__
    'MnistCNN'
    """
    classifier_skeleton(arch, config)
    return ARCHITECTURES[arch](**check_classifier_config(arch, config))
