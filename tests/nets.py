"""Helpers shared by test modules for building the small torch models they test on."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batch_norms(net: nn.Module) -> nn.Module:
    """Give every BatchNorm2d non-trivial running statistics and affine weights (from torch's global
    RNG, so seed it first), so that a test cannot pass with batch norm acting as the identity."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return net


class Fn(nn.Module):
    """A function of one tensor as a module, to put torch functions into nn.Sequential layouts."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)
