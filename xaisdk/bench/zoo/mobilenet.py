"""MobileNetV3-Small (Howard et al. 2019), torchvision's layout: inverted residuals with ReLU or
Hardswish, Hardsigmoid-gated squeeze-excitation, batch norm with eps 1e-3, and a Hardswish MLP head."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from xaisdk.bench.zoo.blocks import ConvNormAct, SqueezeExcitation, make_divisible

# kernel, expanded, out, squeeze-excite, activation ("RE" ReLU, "HS" Hardswish), stride
SMALL = [
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
]
NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, kernel: int, expanded: int, out_channels: int, se: bool, activation: str,
                 stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormAct(in_channels, expanded, 1, norm=NORM, activation=act))
        layers.append(ConvNormAct(expanded, expanded, kernel, stride, groups=expanded, norm=NORM, activation=act))
        if se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8), gate=nn.Hardsigmoid))
        layers.append(ConvNormAct(expanded, out_channels, 1, norm=NORM, activation=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """MobileNetV3-Small; ``width`` scales every channel count (rounded to multiples of 8).

    >>> net = MobileNetV3(num_classes=4, width=0.25).eval()
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 4])
    >>> sum(p.numel() for p in MobileNetV3().parameters())
    2542856
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, last_channel: int = 1024) -> None:
        super().__init__()
        first = make_divisible(16 * width)
        layers: list[nn.Module] = [ConvNormAct(3, first, 3, 2, norm=NORM, activation=nn.Hardswish)]
        channels = first
        for kernel, expanded, out, se, act, stride in SMALL:
            block = InvertedResidual(channels, kernel, make_divisible(expanded * width), make_divisible(out * width), se,
                                     act, stride)
            layers.append(block)
            channels = block.out_channels
        last_conv = 6 * channels
        layers.append(ConvNormAct(channels, last_conv, 1, norm=NORM, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_conv, last_channel), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_small(*, num_classes: int = 1000, width: float = 1.0) -> MobileNetV3:
    """MobileNetV3-Small (the 1,024-wide head scales with ``width`` too).

    >>> mobilenet_v3_small(num_classes=3, width=0.25).classifier[-1].out_features
    3
    """
    return MobileNetV3(num_classes, width, make_divisible(1024 * width))
