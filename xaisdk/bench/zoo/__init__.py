"""The mainstream ImageNet classifier layouts, rebuilt in plain torch with seeded random weights.

Each family follows the module structure and op patterns of torchvision's implementation in eval
mode (its ``state_dict`` keys too) and has exactly torchvision's parameter count at 1,000 classes,
so an explanation method can be checked on the layouts production models use without downloading
weights. :func:`build` gives a model in eval mode whose weights come from a seeded
``torch.Generator`` and whose batch norms carry non-trivial running statistics and affine
parameters. ``width`` (channel multiplier) and ``image_size`` give the same layout at a fraction of
the cost; :attr:`ZooEntry.small_width` and :attr:`ZooEntry.small_size` name a cheap setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from xaisdk.bench.zoo.convnext import convnext_tiny
from xaisdk.bench.zoo.densenet import densenet121
from xaisdk.bench.zoo.efficientnet import efficientnet_b0
from xaisdk.bench.zoo.init import calibrate_batch_norms, randomize
from xaisdk.bench.zoo.mobilenet import mobilenet_v3_small
from xaisdk.bench.zoo.regnet import regnet_y_400mf
from xaisdk.bench.zoo.resnet import resnet
from xaisdk.bench.zoo.swin import swin_t
from xaisdk.bench.zoo.vgg import vgg11_bn
from xaisdk.bench.zoo.vit import vit_b_16
from xaisdk.errors import InputError

__all__ = ["ZOO", "ZooEntry", "build"]


@dataclass(frozen=True)
class ZooEntry:
    """One layout: ``builder(num_classes, width, image_size)`` makes the (unseeded) module;
    ``parameters`` is torchvision's count at width 1 and 1,000 classes; ``size_step`` is what
    ``image_size`` must be a multiple of."""

    name: str
    builder: Callable[[int, float, int], nn.Module]
    parameters: int
    notes: str
    input_shape: tuple[int, int, int] = (3, 224, 224)
    size_step: int = 1
    small_width: float = 0.25
    small_size: int = 32


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("resnet18", lambda n, w, s: resnet(18, num_classes=n, width=w), 11_689_512,
             "basic blocks 2-2-2-2, conv/BN/ReLU, max pool stem, 1x1 projection shortcuts"),
    ZooEntry("resnet50", lambda n, w, s: resnet(50, num_classes=n, width=w), 25_557_032,
             "bottlenecks 3-4-6-3 (stride on the 3x3)"),
    ZooEntry("mobilenet_v3_small", lambda n, w, s: mobilenet_v3_small(num_classes=n, width=w), 2_542_856,
             "depthwise convs, ReLU/Hardswish, Hardsigmoid squeeze-excitation, BN eps 1e-3, Hardswish MLP head"),
    ZooEntry("efficientnet_b0", lambda n, w, s: efficientnet_b0(num_classes=n, width=w), 5_288_548,
             "MBConv with SiLU, sigmoid squeeze-excitation, stochastic depth (identity in eval)"),
    ZooEntry("convnext_tiny", lambda n, w, s: convnext_tiny(num_classes=n, width=w), 28_589_128,
             "7x7 depthwise convs, channels-last LayerNorm via permute, GELU, layer scale, stochastic depth",
             small_width=0.125),
    ZooEntry("regnet_y_400mf", lambda n, w, s: regnet_y_400mf(num_classes=n, width=w), 4_344_144,
             "grouped 3x3 convs (group width 8), ReLU/sigmoid squeeze-excitation"),
    ZooEntry("densenet121", lambda n, w, s: densenet121(num_classes=n, width=w), 7_978_856,
             "pre-activation dense layers reading the concatenation of all earlier maps, average-pool transitions"),
    ZooEntry("vgg11_bn", lambda n, w, s: vgg11_bn(num_classes=n, width=w), 132_868_840,
             "3x3 conv/BN/ReLU, max pools, 7x7 adaptive average pool, 4096-4096 MLP head with dropout",
             small_width=0.125),
    ZooEntry("vit_b_16", lambda n, w, s: vit_b_16(num_classes=n, width=w, image_size=s), 86_567_656,
             "16-px conv patch embedding, class token, position embedding, 12 pre-norm blocks of "
             "nn.MultiheadAttention + GELU MLP, LayerNorm eps 1e-6", size_step=16, small_width=0.125),
    ZooEntry("swin_t", lambda n, w, s: swin_t(num_classes=n, width=w, image_size=s), 28_288_354,
             "4-px patch embedding, (shifted) window attention with torch.roll, attention masks and a relative "
             "position bias table, patch merging, LayerNorm, GELU, stochastic depth; window = image_size / 32",
             size_step=32, small_width=0.125, small_size=64),
)}


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name}: expected a positive integer, got {value!r}")
    return value


def build(name: str, *, num_classes: int = 1000, seed: int = 0, image_size: int | None = None,
          width: float = 1.0) -> nn.Module:
    """The ``name`` layout in eval mode with weights drawn from ``torch.Generator().manual_seed(seed)``
    (torch's global RNG is left as it was) and batch-norm statistics measured on seeded random images
    of ``image_size`` px, then perturbed (see :func:`~xaisdk.bench.zoo.init.calibrate_batch_norms`).

    ``image_size`` (default 224) is the side of the square images the model will take: ViT sizes its
    position embedding from it (a multiple of 16), Swin its window (a multiple of 32: window
    ``image_size / 32``); the convolutional layouts take any size from 32 px. ``width`` multiplies the
    channel counts (0 < width <= 1).

    >>> net = build("resnet18", num_classes=10, width=0.25)
    >>> net(torch.zeros(1, 3, 32, 32)).shape, net.training
    (torch.Size([1, 10]), False)
    >>> build("alexnet")
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: name: unknown 'alexnet'; choose from resnet18, resnet50, mobilenet_v3_small, \
efficientnet_b0, convnext_tiny, regnet_y_400mf, densenet121, vgg11_bn, vit_b_16, swin_t
    """
    entry = ZOO.get(name) if isinstance(name, str) else None
    if entry is None:
        raise InputError(f"name: unknown {name!r}; choose from {', '.join(ZOO)}")
    num_classes = _positive_int(num_classes, "num_classes")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed: expected a non-negative integer, got {seed!r}")
    size = entry.input_shape[-1] if image_size is None else _positive_int(image_size, "image_size")
    if size < 32 or size % entry.size_step:
        step = f" and a multiple of {entry.size_step}" if entry.size_step > 1 else ""
        raise InputError(f"image_size: {name} takes images of at least 32 px{step}, got {size}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise InputError(f"width: expected a number in (0, 1], got {width!r}")
    with torch.random.fork_rng(devices=[]):  # construction draws torch's default init; keep the caller's RNG
        model = entry.builder(num_classes, float(width), size)
    return calibrate_batch_norms(randomize(model, seed), size, seed)
