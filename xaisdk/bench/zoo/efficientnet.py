"""EfficientNet-B0 (Tan & Le 2019), torchvision's layout: MBConv blocks with SiLU, sigmoid-gated
squeeze-excitation and stochastic depth rising linearly to 0.2, a 1280-wide 1x1 head conv."""

from __future__ import annotations

import torch
from torch import nn

from xaisdk.bench.zoo.blocks import ConvNormAct, SqueezeExcitation, StochasticDepth, make_divisible

# expand ratio, kernel, stride, in, out, repeats
B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3),
      (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class MBConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int, drop: float) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expanded = make_divisible(in_channels * expand)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormAct(in_channels, expanded, 1, activation=nn.SiLU))
        layers += [ConvNormAct(expanded, expanded, kernel, stride, groups=expanded, activation=nn.SiLU),
                   SqueezeExcitation(expanded, max(1, in_channels // 4), activation=nn.SiLU),
                   ConvNormAct(expanded, out_channels, 1, activation=None)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


class EfficientNet(nn.Module):
    """EfficientNet-B0; ``width`` scales every channel count (rounded to multiples of 8).

    >>> net = EfficientNet(num_classes=4, width=0.25).eval()
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 4])
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, stochastic_depth: float = 0.2) -> None:
        super().__init__()
        first = make_divisible(32 * width)
        layers: list[nn.Module] = [ConvNormAct(3, first, 3, 2, activation=nn.SiLU)]
        total = sum(row[-1] for row in B0)
        index = 0
        channels = first
        for expand, kernel, stride, _, out, repeats in B0:
            out = make_divisible(out * width)
            stage = []
            for i in range(repeats):
                stage.append(MBConv(channels, out, expand, kernel, stride if i == 0 else 1, stochastic_depth * index / total))
                channels = out
                index += 1
            layers.append(nn.Sequential(*stage))
        head = 4 * make_divisible(320 * width)
        layers.append(ConvNormAct(channels, head, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet_b0(*, num_classes: int = 1000, width: float = 1.0) -> EfficientNet:
    """EfficientNet-B0.

    >>> sum(p.numel() for p in efficientnet_b0().parameters())
    5288548
    """
    return EfficientNet(num_classes, width)
