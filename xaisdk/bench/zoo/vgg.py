"""VGG-11 with batch norm (Simonyan & Zisserman 2015), torchvision's layout: 3x3 conv/BN/ReLU
stacks with max pools, a 7x7 adaptive average pool and a 4096-4096 MLP head with dropout."""

from __future__ import annotations

import torch
from torch import nn

CONFIG_A = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """VGG with batch norm for ``config`` (channel counts and "M" pools); ``width`` scales the
    channels and the head.

    >>> net = VGG(num_classes=4, width=0.125).eval()
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 4])
    """

    def __init__(self, config: tuple = CONFIG_A, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = max(8, round(item * width))
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        hidden = max(16, round(4096 * width))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(channels * 49, hidden), nn.ReLU(True), nn.Dropout(0.5),
                                        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg11_bn(*, num_classes: int = 1000, width: float = 1.0) -> VGG:
    """VGG-11 (configuration A) with batch norm.

    >>> VGG(num_classes=2, width=0.125).classifier[-1].out_features
    2
    """
    return VGG(CONFIG_A, num_classes, width)
