"""Building blocks shared by several families of the model zoo (the ops torchvision's layouts use)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``min_value``, default
    ``divisor``), never more than 10 % below ``value``: how MobileNet and EfficientNet scale widths.

    >>> make_divisible(16 * 0.25), make_divisible(91), make_divisible(36)
    (8, 88, 40)
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias when a norm follows), then a norm layer, then an activation: ``0``, ``1``, ``2``.

    >>> ConvNormAct(3, 8, 3, stride=2)(torch.zeros(1, 3, 8, 8)).shape
    torch.Size([1, 8, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 norm: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
                 activation: Callable[[], nn.Module] | None = nn.ReLU) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                                             groups=groups, bias=norm is None)]
        if norm is not None:
            layers.append(norm(out_channels))
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """``x * gate(fc2(act(fc1(mean_hw(x)))))`` with 1x1 convolutions (Hu et al. 2018).

    >>> se = SqueezeExcitation(8, 2)
    >>> se(torch.ones(1, 8, 4, 4)).shape
    torch.Size([1, 8, 4, 4])
    """

    def __init__(self, channels: int, squeeze: int, activation: Callable[[], nn.Module] = nn.ReLU,
                 gate: Callable[[], nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = activation()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class StochasticDepth(nn.Module):
    """Drops the whole residual branch of a random subset of rows with probability ``p`` while
    training (Huang et al. 2016), rescaling the kept rows by ``1 / (1 - p)``; the identity in eval mode.

    >>> sd = StochasticDepth(0.5).eval()
    >>> bool((sd(torch.ones(4, 3)) == 1).all())
    True
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module (channels-first <-> channels-last).

    >>> Permute((0, 2, 3, 1))(torch.zeros(1, 3, 4, 5)).shape
    torch.Size([1, 4, 5, 3])
    """

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (permuted to channels-last and back).

    >>> LayerNorm2d(3)(torch.rand(2, 3, 4, 4)).mean(1).abs().max().item() < 1e-5
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MLP(nn.Sequential):
    """``Linear, GELU, Dropout, Linear, Dropout`` (the transformer feed-forward block: ``0`` and ``3``
    are the linear layers).

    >>> MLP(4, 16)(torch.zeros(2, 4)).shape
    torch.Size([2, 4])
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))
