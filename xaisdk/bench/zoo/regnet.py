"""RegNetY-400MF (Radosavovic et al. 2020), torchvision's layout: a 3x3 stem, four stages of
bottleneck blocks with grouped 3x3 convs (group width 8) and ReLU/sigmoid squeeze-excitation, whose
widths come from RegNet's quantised linear rule."""

from __future__ import annotations

import math

import torch
from torch import nn

from xaisdk.bench.zoo.blocks import ConvNormAct, SqueezeExcitation, make_divisible


def regnet_stages(depth: int, w_0: float, w_a: float, w_m: float, group_width: int) -> list[tuple[int, int]]:
    """(width, depth) of each stage: block i gets ``w_0 * w_m^round(log_{w_m}(1 + i w_a / w_0))``
    rounded to a multiple of 8; runs of equal widths form the stages.

    >>> regnet_stages(16, 48, 27.89, 2.09, 8)
    [(48, 1), (104, 3), (208, 6), (440, 6)]
    """
    widths = []
    for i in range(depth):
        exponent = round(math.log((i * w_a + w_0) / w_0) / math.log(w_m))
        widths.append(int(round(w_0 * w_m**exponent / 8) * 8))
    stages: list[tuple[int, int]] = []
    for w in widths:
        if stages and stages[-1][0] == w:
            stages[-1] = (w, stages[-1][1] + 1)
        else:
            stages.append((w, 1))
    return [(make_divisible(w, min(group_width, w)), d) for w, d in stages]


class ResBottleneckBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, group_width: int, se_ratio: float) -> None:
        super().__init__()
        self.proj = None
        if in_channels != out_channels or stride != 1:
            self.proj = ConvNormAct(in_channels, out_channels, 1, stride, activation=None)
        groups = out_channels // min(group_width, out_channels)
        self.f = nn.Sequential()
        self.f.add_module("a", ConvNormAct(in_channels, out_channels, 1))
        self.f.add_module("b", ConvNormAct(out_channels, out_channels, 3, stride, groups=groups))
        self.f.add_module("se", SqueezeExcitation(out_channels, int(round(se_ratio * in_channels))))
        self.f.add_module("c", ConvNormAct(out_channels, out_channels, 1, activation=None))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class RegNet(nn.Module):
    """A RegNetY from the width rule's parameters; ``width`` scales the stage widths (multiples of 8).

    >>> net = RegNet(num_classes=4, width=0.25).eval()
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 4])
    """

    def __init__(self, depth: int = 16, w_0: float = 48, w_a: float = 27.89, w_m: float = 2.09, group_width: int = 8,
                 se_ratio: float = 0.25, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, 32, 3, 2)
        self.trunk_output = nn.Sequential()
        channels = 32
        for index, (stage_width, stage_depth) in enumerate(regnet_stages(depth, w_0, w_a, w_m, group_width)):
            out = make_divisible(stage_width * width, group_width)
            stage = nn.Sequential()
            for i in range(stage_depth):
                stage.add_module(f"block{index + 1}-{i}",
                                 ResBottleneckBlock(channels, out, 2 if i == 0 else 1, group_width, se_ratio))
                channels = out
            self.trunk_output.add_module(f"block{index + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.trunk_output(self.stem(x))), 1))


def regnet_y_400mf(*, num_classes: int = 1000, width: float = 1.0) -> RegNet:
    """RegNetY-400MF: depth 16, w_0 48, w_a 27.89, w_m 2.09, group width 8, squeeze ratio 0.25.

    >>> sum(p.numel() for p in regnet_y_400mf().parameters())
    4344144
    """
    return RegNet(num_classes=num_classes, width=width)
