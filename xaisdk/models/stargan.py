"""StarGAN networks for GANMEX: the class-conditional generator ``G(x, c)`` and the PatchGAN realism critic.

The generator follows StarGAN (Choi et al., 2018): the target class, one-hot, is tiled onto the input
channels; a 7x7 stem, stride-2 down-sampling convolutions with instance norm and ReLU, residual blocks,
then up-sampling back to the exact input size and a 7x7 output convolution squashed into the data
range. Two deliberate differences from the GANMEX authors' TensorFlow code:

* every down-sampling block *uses* its instance norm and ReLU (their last block computed and dropped them);
* with ``input_skip`` the output is ``sigmoid(head + logit(x))`` (x clipped to [0.05, 0.95] of the range)
  instead of ``sigmoid(head)``: the network learns a change to its input rather than a whole image.
  Without it, on images that are mostly at the ends of the range (digits: 0 background, one colour
  channel), the sigmoid saturates at 0 early in training, the similarity gradient through it vanishes,
  and the generator collapses to input-independent class prototypes (seen on coloured digits: 100% of
  baselines in one colour). Off in configs saved before it existed;
* up-sampling is nearest-neighbour resize to the matching encoder size + 3x3 convolution instead of a
  transposed convolution, so odd sizes (e.g. 7 -> 14 -> 28 and 25 -> 12 -> 6 -> 12 -> 25) come back
  exactly and there are no checkerboard artefacts.

The critic ``D_src`` is a PatchGAN (one realism score per receptive-field patch) with spectral norm on
every convolution, trained with the hinge loss (see :mod:`xaisdk.train.ganmex`). With
``num_classes`` set it also carries StarGAN's own class head ``D_cls``; that head is only used by the
``--standalone-classifier`` ablation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from xaisdk.errors import InputError
from xaisdk.input_files import MAX_BLOCKS, MAX_CLASSES
from xaisdk.models.config_checks import (
    config_from_dict,
    require_bool,
    require_image_shape,
    require_int,
    require_value_range,
    require_width,
)


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape and width of a :class:`StarGenerator`.

    ``n_down`` stride-2 stages take ``base_channels`` to ``base_channels * 2**n_down`` channels;
    :meth:`for_input` picks it from the image size (2 stages for 28x28 and 32x32, fewer for tiny images).
    """

    in_channels: int
    num_classes: int
    height: int
    width: int
    value_range: tuple[float, float] = (0.0, 1.0)
    base_channels: int = 32
    n_down: int = 2
    n_res: int = 4
    input_skip: bool = False

    @classmethod
    def for_input(cls, input_shape: tuple[int, int, int], num_classes: int, **overrides) -> GeneratorConfig:
        """A config sized for images of ``input_shape`` (C, H, W).

        >>> GeneratorConfig.for_input((1, 28, 28), 10).n_down
        2
        >>> GeneratorConfig.for_input((3, 6, 6), 2).n_down
        1
        """
        channels, height, width = (int(v) for v in input_shape)
        n_down = 0
        while n_down < 2 and min(height, width) // 2 ** (n_down + 1) >= 3:
            n_down += 1
        config = {"in_channels": channels, "num_classes": int(num_classes), "height": height, "width": width,
                  "n_down": n_down}
        config.update(overrides)
        return cls.from_dict(config)

    def validate(self) -> None:
        """Check every field's type and bounds (:mod:`xaisdk.models.config_checks`); runs before any network is built.

        >>> GeneratorConfig(1, 10, 28, 28, n_res=10**6).validate()
        Traceback (most recent call last):
        ...
        xaisdk.errors.InputError: generator config: n_res: expected an integer <= 64, got 1000000
        """
        where = "generator config"
        require_image_shape(where, self.in_channels, self.height, self.width)
        if require_int(where, "num_classes", self.num_classes, 1, MAX_CLASSES) < 2:
            raise InputError(f"{where}: needs at least 2 classes, got {self.num_classes}")
        n_down = require_int(where, "n_down", self.n_down, 0, MAX_BLOCKS)
        require_width(where, "base_channels", self.base_channels, n_down)
        require_int(where, "n_res", self.n_res, 1, MAX_BLOCKS)
        require_bool(where, "input_skip", self.input_skip)
        if min(self.height, self.width) // 2**n_down < 1:
            raise InputError(f"{where}: {n_down} down-sampling stages do not fit {self.height}x{self.width} images")
        require_value_range(where, self.value_range)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["value_range"] = list(self.value_range)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> GeneratorConfig:
        """The config :meth:`to_dict` wrote, validated (value_range back to a tuple of floats).

        >>> GeneratorConfig.from_dict({"in_channels": 1, "num_classes": 2, "height": 8, "width": 8}).value_range
        (0.0, 1.0)
        """
        return config_from_dict(cls, data, "generator config")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.height, self.width)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _norm_relu(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(channels, affine=True), nn.ReLU(inplace=True)]


class StarGenerator(nn.Module):
    """``G(x, target)``: an image of the same shape as ``x`` that the classifier should call ``target``.

    ``target`` is a (N,) tensor of class indices or a (N, num_classes) one-hot / soft label tensor.

    >>> g = StarGenerator(GeneratorConfig.for_input((1, 28, 28), 10, base_channels=8, n_res=1))
    >>> out = g(torch.rand(2, 1, 28, 28), torch.tensor([3, 5]))
    >>> tuple(out.shape), bool(out.min() >= 0 and out.max() <= 1)
    ((2, 1, 28, 28), True)
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        width = config.base_channels
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels + config.num_classes, width, 7, padding=3, bias=False), *_norm_relu(width)
        )
        self.down = nn.ModuleList()
        for _ in range(config.n_down):
            self.down.append(nn.Sequential(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=False),
                                           *_norm_relu(2 * width)))
            width *= 2
        self.res = nn.Sequential(*[ResidualBlock(width) for _ in range(config.n_res)])
        self.up = nn.ModuleList()
        for _ in range(config.n_down):
            self.up.append(nn.Sequential(nn.Conv2d(width, width // 2, 3, padding=1, bias=False), *_norm_relu(width // 2)))
            width //= 2
        self.head = nn.Conv2d(width, config.in_channels, 7, padding=3)
        low, high = config.value_range
        self.register_buffer("low", torch.tensor(float(low)), persistent=False)
        self.register_buffer("span", torch.tensor(float(high - low)), persistent=False)

    def condition(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The (N, num_classes) label tensor for ``target`` given as indices or one-hot rows."""
        k = self.config.num_classes
        if target.ndim == 1:
            if target.dtype.is_floating_point:
                raise InputError("generator target: class indices must be integers")
            if len(target) and (int(target.min()) < 0 or int(target.max()) >= k):
                raise InputError(f"generator target: class indices must be in [0, {k - 1}]")
            return F.one_hot(target.long(), k).to(x.dtype)
        if target.ndim != 2 or target.shape[1] != k:
            raise InputError(f"generator target: expected (N,) indices or (N, {k}) labels, got {tuple(target.shape)}")
        return target.to(x.dtype)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.config.input_shape:
            raise InputError(f"generator input: expected (N, {', '.join(map(str, self.config.input_shape))}), "
                             f"got {tuple(x.shape)}")
        label = self.condition(x, target)
        if len(label) != len(x):
            raise InputError(f"generator: {len(x)} images but {len(label)} targets")
        tiled = label[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        h = self.stem(torch.cat([x, tiled], dim=1))
        sizes = []
        for block in self.down:
            sizes.append(h.shape[-2:])
            h = block(h)
        h = self.res(h)
        for block, size in zip(self.up, reversed(sizes)):
            h = block(F.interpolate(h, size=tuple(size), mode="nearest"))
        logits = self.head(h)
        if self.config.input_skip:
            logits = logits + torch.logit(((x - self.low) / self.span).clamp(0.05, 0.95))
        return self.low + self.span * torch.sigmoid(logits)


@dataclass(frozen=True)
class CriticConfig:
    """Shape of a :class:`PatchCritic`; ``num_classes`` > 0 adds the stand-alone class head."""

    in_channels: int
    height: int
    width: int
    base_channels: int = 32
    n_layers: int = 3
    num_classes: int = 0

    @classmethod
    def for_input(cls, input_shape: tuple[int, int, int], num_classes: int = 0, **overrides) -> CriticConfig:
        """A critic sized for ``input_shape``: stride-2 layers while the map stays at least 3 pixels wide.

        >>> CriticConfig.for_input((1, 28, 28)).n_layers
        3
        """
        channels, height, width = (int(v) for v in input_shape)
        n_layers = 1
        while n_layers < 3 and min(height, width) // 2 ** (n_layers + 1) >= 3:
            n_layers += 1
        config = {"in_channels": channels, "height": height, "width": width, "n_layers": n_layers,
                  "num_classes": int(num_classes)}
        config.update(overrides)
        return cls(**config)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CriticConfig:
        try:
            return cls(**data)
        except TypeError as err:
            raise InputError(f"critic config: {err}") from None


class PatchCritic(nn.Module):
    """PatchGAN realism critic ``D_src`` (spectral-normalised, LeakyReLU), optionally with a class head.

    ``forward`` returns the (N, 1, h, w) patch scores and, when the config has classes, (N, K) logits.

    >>> d = PatchCritic(CriticConfig.for_input((1, 28, 28), num_classes=10, base_channels=8))
    >>> src, cls = d(torch.rand(2, 1, 28, 28))
    >>> tuple(src.shape), tuple(cls.shape)
    ((2, 1, 3, 3), (2, 10))
    """

    def __init__(self, config: CriticConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels, width = config.in_channels, config.base_channels
        size = (config.height, config.width)
        for _ in range(config.n_layers):
            layers += [spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
            channels, width = width, width * 2
            size = (size[0] // 2, size[1] // 2)
        self.body = nn.Sequential(*layers)
        self.src = spectral_norm(nn.Conv2d(channels, 1, 3, padding=1))
        self.cls = nn.Conv2d(channels, config.num_classes, size, bias=False) if config.num_classes else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.body(x)
        logits = None if self.cls is None else self.cls(h).flatten(1)
        return self.src(h), logits
