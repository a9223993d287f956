"""ConvNeXt-T (Liu et al. 2022), torchvision's layout: 4x4 patchify stem, blocks of a 7x7 depthwise
conv, channels-last LayerNorm (permute), an inverted GELU MLP, layer scale and stochastic depth; a
LayerNorm + 2x2 conv between stages; LayerNorm, flatten and linear in the head."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from xaisdk.bench.zoo.blocks import LayerNorm2d, Permute, StochasticDepth

NORM2D = partial(LayerNorm2d, eps=1e-6)


class CNBlock(nn.Module):
    def __init__(self, dim: int, drop: float, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute((0, 2, 3, 1)),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute((0, 3, 1, 2)),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stochastic_depth(self.layer_scale * self.block(x)) + x


class ConvNeXt(nn.Module):
    """ConvNeXt with ``depths`` blocks per stage of widths ``dims`` (scaled by ``width``).

    >>> net = ConvNeXt(num_classes=4, width=0.125).eval()
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 4])
    """

    def __init__(self, depths: tuple[int, ...] = (3, 3, 9, 3), dims: tuple[int, ...] = (96, 192, 384, 768),
                 num_classes: int = 1000, width: float = 1.0, stochastic_depth: float = 0.1) -> None:
        super().__init__()
        dims = tuple(max(8, round(d * width)) for d in dims)
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), NORM2D(dims[0]))]
        total, index = sum(depths), 0
        for stage, (depth, dim) in enumerate(zip(depths, dims)):
            blocks = []
            for _ in range(depth):
                blocks.append(CNBlock(dim, stochastic_depth * index / (total - 1.0)))
                index += 1
            layers.append(nn.Sequential(*blocks))
            if stage + 1 < len(dims):
                layers.append(nn.Sequential(NORM2D(dim), nn.Conv2d(dim, dims[stage + 1], 2, 2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(NORM2D(dims[-1]), nn.Flatten(1), nn.Linear(dims[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def convnext_tiny(*, num_classes: int = 1000, width: float = 1.0) -> ConvNeXt:
    """ConvNeXt-T: depths 3-3-9-3, widths 96-192-384-768.

    >>> sum(p.numel() for p in convnext_tiny().parameters())
    28589128
    """
    return ConvNeXt(num_classes=num_classes, width=width)
