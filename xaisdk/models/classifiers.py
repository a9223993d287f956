"""The classifiers of the GANMEX paper (appendix A), as torch modules.

Every activation is an ``nn.ReLU`` module (never ``F.relu``) so that DeepLIFT's rescale rule can
hook it, and every module instance runs once per forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from xaisdk.errors import InputError


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


def build_classifier(arch: str, **config) -> nn.Module:
    """Instantiate a classifier by architecture name and keyword config.

    >>> build_classifier("mnist_cnn", in_channels=1, image_size=28, num_classes=10).__class__.__name__
    'MnistCNN'
    """
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[arch](**config)
    except TypeError as err:
        raise InputError(f"bad config for architecture {arch!r}: {err}") from None
