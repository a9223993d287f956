"""Seeded random weights for the zoo: variance-preserving conv/linear weights, layer-norm and
batch-norm affine parameters far from the identity, and batch-norm running statistics measured on
random images and then perturbed, so that anything that folds or fuses a norm layer is really
exercised while the network's output still depends on its input as a trained one's does."""

from __future__ import annotations

import math

import torch
from torch import nn

# Parameters that belong to no standard layer: the normal std each is drawn with. (Layer scale is far
# above torchvision's 1e-6 start so that the residual branches it scales matter in a random network.)
EXTRA_STD = {"class_token": 0.5, "pos_embedding": 0.5, "layer_scale": 0.3, "relative_position_bias_table": 0.5}


def _normal_(tensor: torch.Tensor, std: float, gen: torch.Generator) -> None:
    tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)


def _uniform_(tensor: torch.Tensor, low: float, high: float, gen: torch.Generator) -> None:
    tensor.copy_(torch.rand(tensor.shape, generator=gen) * (high - low) + low)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and batch-norm statistic of ``model`` from ``torch.Generator`` seeded
    with ``seed`` (the global RNG is untouched); returns ``model``. A parameter of an unknown kind is
    an error rather than left as it was.

    >>> net = randomize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), seed=0)
    >>> bool((net[1].running_var != 1).all()), torch.equal(net[0].weight, randomize(net, 0)[0].weight)
    (True, True)
    """
    gen = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                # He init for convolutions (ReLU-like activations follow), LeCun for linear layers.
                _normal_(module.weight, math.sqrt((2.0 if isinstance(module, nn.Conv2d) else 1.0) / fan_in), gen)
                if module.bias is not None:
                    _uniform_(module.bias, -0.1, 0.1, gen)
            elif isinstance(module, nn.MultiheadAttention):
                _normal_(module.in_proj_weight, math.sqrt(1.0 / module.embed_dim), gen)
                _uniform_(module.in_proj_bias, -0.1, 0.1, gen)
            elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                _uniform_(module.weight, 0.5, 1.5, gen)
                _uniform_(module.bias, -0.1, 0.1, gen)
                if isinstance(module, nn.BatchNorm2d):  # calibrate_batch_norms measures them on images
                    _uniform_(module.running_mean, -0.2, 0.2, gen)
                    _uniform_(module.running_var, 0.5, 1.5, gen)
            else:
                for name, param in module.named_parameters(recurse=False):
                    if name not in EXTRA_STD:
                        raise TypeError(f"no random init for parameter {name!r} of {type(module).__name__}")
                    _normal_(param, EXTRA_STD[name], gen)
                    done.add(id(param))
                continue
            done.update(id(p) for p in module.parameters(recurse=False))
    missed = [name for name, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise TypeError(f"no random init for parameters {missed[:5]}")
    return model


def calibrate_batch_norms(model: nn.Module, image_size: int, seed: int, batch: int | None = None) -> nn.Module:
    """Set every BatchNorm2d's running statistics to those of its input on ``batch`` uniform random
    images of ``image_size`` px (the batch norms alone in training mode, so dropout and stochastic
    depth draw nothing), then perturb them (mean shifted by up to 0.2 std, variance scaled by 0.7 to
    1.4). Without this, the activations of a random deep network explode (ResNet-50's residual sums)
    or fade (EfficientNet's squeeze-excitation gates halve the signal in every block). ``batch``
    defaults to enough images for 64 positions in the stride-32 maps: fewer give near-zero variances
    there, which blow the output up. Returns ``model`` in eval mode.

    >>> net = calibrate_batch_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), 8, seed=0)
    >>> bool((net[1].running_var > 0).all()), net.training
    (True, False)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model.eval()
    if not norms:
        return model
    gen = torch.Generator().manual_seed(seed + 1)
    batch = batch or max(2, math.ceil(64 / max(1, image_size // 32) ** 2))
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly its statistics
        bn.train()
    with torch.no_grad():
        model(torch.rand(batch, 3, image_size, image_size, generator=gen))
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
            var = bn.running_var.clamp_min(0.01 * float(bn.running_var.mean()) + 1e-6)
            shift = torch.rand(var.shape, generator=gen) * 0.4 - 0.2
            bn.running_mean.add_(shift * var.sqrt())
            bn.running_var.copy_(var * (torch.rand(var.shape, generator=gen) * 0.7 + 0.7))
    return model.eval()
