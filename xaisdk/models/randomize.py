"""Model randomization for sanity checks (Adebayo et al., 2018), as the GANMEX paper does it."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from xaisdk.errors import InputError


def weighted_layers(module: nn.Module) -> list[str]:
    """Names of the sub-modules that own weights directly (convolutions, linear layers, norms), input to output.

    >>> weighted_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    ['0', '2']
    """
    return [name for name, sub in module.named_modules() if any(True for _ in sub.parameters(recurse=False))]


def randomized_copy(module: nn.Module, layers: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """A copy of ``module`` whose weights in ``layers`` (default: all) are Gaussian, each tensor rescaled
    to the norm of the weights it replaces; the original is untouched.

    >>> net = nn.Linear(4, 2)
    >>> rand = randomized_copy(net, seed=1)
    >>> bool(torch.isclose(rand.weight.norm(), net.weight.norm())), bool(torch.equal(rand.weight, net.weight))
    (True, False)
    """
    names = weighted_layers(module) if layers is None else list(layers)
    known = dict(module.named_modules())
    missing = [n for n in names if n not in known]
    if missing:
        raise InputError(f"randomize: no layer named {', '.join(missing)}; layers: {', '.join(weighted_layers(module))}")
    copied = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(seed)
    subs = dict(copied.named_modules())
    with torch.no_grad():
        for name in names:
            for param in subs[name].parameters(recurse=False):
                noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
                norm = param.norm()
                param.copy_(noise * (norm / noise.norm()) if norm > 0 else noise * 0)
    return copied
