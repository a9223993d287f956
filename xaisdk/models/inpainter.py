"""The learned inpainter of the generative removal methods (SP-G, LIME-G, MP-G): a gated-convolution U-Net.

The network sees the image with its holes set to the middle gray of the value range, plus the mask,
and predicts every pixel; the result is composited with the input, so pixels outside the mask come
back bit for bit. Gated convolutions (Yu et al. 2019, DeepFill v2) compute
``ELU(features) * sigmoid(gate)``: each layer learns, per pixel and channel, how much to trust what
it sees, which is what lets a plain convolution stack handle free-form holes. The encoder halves the
resolution ``n_down`` times with stride-2 gated convolutions, a few dilated gated convolutions at the
bottom widen the receptive field over the whole image, and the decoder comes back up with
nearest-neighbour up-sampling + a gated convolution over the skip connection (no transposed
convolutions: slow in ONNX Runtime and prone to checkerboards). Sizes that ``2**n_down`` does not
divide are padded inside ``forward`` (with gray and mask 1: outside the image is unknown) and cropped.

``xaisdk train inpainter`` / :func:`xaisdk.train.train_inpainter` train it; the shipped models
(``load_shipped_inpainter("digits")``, ``"shapes"``) come from ``export/train_inpainters.py``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaisdk.errors import InputError
from xaisdk.input_files import MAX_BLOCKS, MAX_IMAGE_SIDE
from xaisdk.models.checkpoint import atomic_torch_save, read_torch_file
from xaisdk.models.config_checks import (
    build_with_weights,
    config_from_dict,
    in_file,
    require_dict,
    require_image_shape,
    require_int,
    require_value_range,
    require_width,
)
from xaisdk.runtime.arrays import as_float32
from xaisdk.runtime.inpainting import check_images_and_masks, composite

__all__ = [
    "INPAINTER_KIND",
    "SHIPPED_INPAINTERS",
    "GatedConv2d",
    "GatedUNet",
    "InpainterConfig",
    "LearnedInpainter",
    "load_inpainter",
    "load_shipped_inpainter",
    "read_inpainter_file",
    "save_inpainter",
    "shipped_inpainter_path",
]

INPAINTER_KIND = "xaisdk.inpainter"
INPAINTER_FORMAT_VERSION = 1
SHIPPED_INPAINTERS = {"digits": "digits_inpainter.pt", "shapes": "shapes_inpainter.pt"}


@dataclass(frozen=True)
class InpainterConfig:
    """Shape and width of a :class:`GatedUNet`.

    ``n_down`` stride-2 stages take ``base_channels`` to ``base_channels * 2**n_down`` channels, where
    one gated convolution per entry of ``dilations`` runs; :meth:`for_input` picks ``n_down`` from the
    image size (2 for 28x28 and 32x32).
    """

    in_channels: int
    height: int
    width: int
    value_range: tuple[float, float] = (0.0, 1.0)
    base_channels: int = 16
    n_down: int = 2
    dilations: tuple[int, ...] = (2, 4)

    @classmethod
    def for_input(cls, input_shape: tuple[int, int, int], **overrides: Any) -> InpainterConfig:
        """A config sized for images of ``input_shape`` (C, H, W).

        >>> InpainterConfig.for_input((1, 28, 28)).n_down
        2
        >>> InpainterConfig.for_input((3, 6, 6), base_channels=8).n_down
        1
        """
        channels, height, width = (int(v) for v in input_shape)
        n_down = 0
        while n_down < 2 and min(height, width) // 2 ** (n_down + 1) >= 3:
            n_down += 1
        config: dict[str, Any] = {"in_channels": channels, "height": height, "width": width, "n_down": n_down}
        config.update(overrides)
        return cls.from_dict(config)

    def validate(self) -> None:
        """Check every field's type and bounds (:mod:`xaisdk.models.config_checks`); runs before any network is built.

        >>> InpainterConfig(1, 28, 28, dilations=(2, 10**6)).validate()
        Traceback (most recent call last):
        ...
        xaisdk.errors.InputError: inpainter config: dilations[1]: expected an integer <= 8192, got 1000000
        """
        where = "inpainter config"
        require_image_shape(where, self.in_channels, self.height, self.width)
        n_down = require_int(where, "n_down", self.n_down, 0, MAX_BLOCKS)
        require_width(where, "base_channels", self.base_channels, n_down)
        if not isinstance(self.dilations, tuple) or len(self.dilations) > MAX_BLOCKS:
            raise InputError(f"{where}: dilations: expected a list of at most {MAX_BLOCKS} integers, got {self.dilations!r}")
        for i, d in enumerate(self.dilations):
            require_int(where, f"dilations[{i}]", d, 1, MAX_IMAGE_SIDE)
        require_value_range(where, self.value_range)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["value_range"] = list(self.value_range)
        data["dilations"] = list(self.dilations)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InpainterConfig:
        """The config saved by :meth:`to_dict` (lists back to tuples), validated.

        >>> InpainterConfig.from_dict({"in_channels": 3, "height": 32, "width": 32}).dilations
        (2, 4)
        """
        if isinstance(data, dict) and isinstance(data.get("dilations"), list):  # saved as a list
            data = {**data, "dilations": tuple(data["dilations"])}
        return config_from_dict(cls, data, "inpainter config")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.height, self.width)

    @property
    def fill_value(self) -> float:
        """The middle gray of the value range: what the network sees inside the holes."""
        return (self.value_range[0] + self.value_range[1]) / 2


class GatedConv2d(nn.Module):
    """``ELU(conv_f(x)) * sigmoid(conv_g(x))`` with both convolutions in one (split along channels).

    >>> GatedConv2d(2, 4, 3, stride=2)(torch.zeros(1, 2, 8, 8)).shape
    torch.Size([1, 4, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride=stride,
                              padding=dilation * (kernel_size - 1) // 2, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, gate = self.conv(x).chunk(2, dim=1)
        return F.elu(features) * torch.sigmoid(gate)


class GatedUNet(nn.Module):
    """``forward(x, mask)``: ``x`` with the pixels where ``mask`` is 1 inpainted (``x`` elsewhere).

    ``raw(x, mask)`` is the network's prediction for every pixel before compositing. Both take x
    ``(N, C, H, W)`` and a mask ``(N, 1, H, W)``; the mask may be soft (the composite is linear in it).

    >>> net = GatedUNet(InpainterConfig.for_input((1, 10, 10), base_channels=4))
    >>> x, m = torch.rand(2, 1, 10, 10), (torch.rand(2, 1, 10, 10) > 0.5).float()
    >>> out = net(x, m)
    >>> tuple(out.shape), bool(torch.equal(out[m == 0], x[m == 0]))
    ((2, 1, 10, 10), True)
    """

    def __init__(self, config: InpainterConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        width = config.base_channels
        self.stem = GatedConv2d(config.in_channels + 1, width, 5)
        self.down = nn.ModuleList()
        for _ in range(config.n_down):
            self.down.append(nn.Sequential(GatedConv2d(width, 2 * width, 3, stride=2), GatedConv2d(2 * width, 2 * width, 3)))
            width *= 2
        self.bottleneck = nn.Sequential(*[GatedConv2d(width, width, 3, dilation=d) for d in config.dilations])
        self.up = nn.ModuleList()
        for _ in range(config.n_down):
            self.up.append(GatedConv2d(width + width // 2, width // 2, 3))
            width //= 2
        self.head = nn.Conv2d(width, config.in_channels, 3, padding=1)
        low, high = config.value_range
        self.register_buffer("low", torch.tensor(float(low)), persistent=False)
        self.register_buffer("span", torch.tensor(float(high - low)), persistent=False)
        self.register_buffer("fill", torch.tensor(config.fill_value), persistent=False)

    def _check(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        c, h, w = self.config.input_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise InputError(f"inpainter input x: expected (N, {c}, {h}, {w}), got {tuple(x.shape)}")
        if mask.ndim != 4 or tuple(mask.shape) != (x.shape[0], 1, h, w):
            raise InputError(f"inpainter input mask: expected ({x.shape[0]}, 1, {h}, {w}), got {tuple(mask.shape)}")

    def raw(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The network's prediction for every pixel, in the value range (not composited)."""
        self._check(x, mask)
        height, width = self.config.height, self.config.width
        holed = x * (1 - mask) + self.fill * mask
        factor = 2 ** self.config.n_down
        pad_h, pad_w = -height % factor, -width % factor
        if pad_h or pad_w:  # static sizes: the exported graph has a fixed Pad, or none
            holed = F.pad(holed, (0, pad_w, 0, pad_h), value=self.config.fill_value)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=1.0)
        h = self.stem(torch.cat([holed, mask], dim=1))
        skips = []
        for block in self.down:
            skips.append(h)
            h = block(h)
        h = self.bottleneck(h)
        for block, skip in zip(self.up, reversed(skips)):
            h = F.interpolate(h, size=tuple(skip.shape[-2:]), mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        out = self.low + self.span * torch.sigmoid(self.head(h))
        return out[:, :, :height, :width] if pad_h or pad_w else out

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x * 1 + y * 0 is x exactly for finite y, so binary masks keep the input bit for bit
        return x * (1 - mask) + self.raw(x, mask) * mask


def _check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InputError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    return int(chunk_size)


@dataclass
class LearnedInpainter:
    """A trained :class:`GatedUNet` behind the :class:`~xaisdk.runtime.inpainting.Inpainter` protocol.

    ``inpaint`` runs numpy batches through the network in chunks of ``chunk_size`` under
    ``torch.no_grad``; the network stays in eval mode and is never modified, so one instance can
    serve many threads. ``data`` is the dataset spec it was trained on, ``training`` the
    hyper-parameters and final statistics.

    >>> inp = load_shipped_inpainter("digits")
    >>> x = np.zeros((2, 1, 28, 28), np.float32); m = np.zeros((2, 1, 28, 28), np.float32); m[..., 5:15, 5:15] = 1
    >>> out = inp.inpaint(x, m)
    >>> out.shape, bool((out[m == 0] == 0).all()), inp.name
    ((2, 1, 28, 28), True, 'learned-digits')
    """

    network: GatedUNet
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.network, GatedUNet):
            raise InputError(f"network: expected a GatedUNet, got {type(self.network).__name__}")
        self.chunk_size = _check_chunk_size(self.chunk_size)
        self.network.eval()
        self.network.requires_grad_(False)

    @property
    def config(self) -> InpainterConfig:
        return self.network.config

    @property
    def name(self) -> str:
        return f"learned-{self.data.get('name', 'custom')}"

    @property
    def value_range(self) -> tuple[float, float]:
        return self.config.value_range

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.config.input_shape

    def inpaint(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``x`` float32 (N, C, H, W) with the pixels where the binary ``mask`` (N, 1, H, W) is 1 inpainted."""
        images, masks = check_images_and_masks(x, mask, image_shape=self.input_shape)
        images, masks = (np.require(a, requirements=["C", "W"]) for a in (images, masks))  # torch wants writable
        with torch.no_grad():
            out = [self.network(torch.from_numpy(images[s:s + self.chunk_size]),
                                torch.from_numpy(masks[s:s + self.chunk_size])).numpy()
                   for s in range(0, len(images), self.chunk_size)]
        return composite(images, np.concatenate(out), masks)

    def mask_vjp(self, x: np.ndarray, mask: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        """``d/d mask`` of ``sum(cotangent * network(x, mask))``, float32 (N, 1, H, W).

        The mask is a continuous input here (values in [0, 1]): it enters the network both as the
        mask channel and through the composite ``x * (1 - mask) + raw * mask``. Meaningful
        perturbation with a learned filler (MP-G) uses it as the straight-through gradient of a
        thresholded mask.

        >>> inp = load_shipped_inpainter("digits")
        >>> x = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
        >>> m = np.zeros((1, 1, 28, 28), np.float32)
        >>> inp.mask_vjp(x, m, np.ones_like(x)).shape
        (1, 1, 28, 28)
        """
        images = as_float32(x, "x")
        c, h, w = self.input_shape
        if images.ndim != 4 or images.shape[1:] != (c, h, w) or len(images) == 0:
            raise InputError(f"x: expected a non-empty batch (N, {c}, {h}, {w}), got shape {images.shape}")
        masks = as_float32(mask, "mask")
        if masks.shape != (len(images), 1, h, w):
            raise InputError(f"mask: expected shape ({len(images)}, 1, {h}, {w}), got {masks.shape}")
        if masks.min() < 0 or masks.max() > 1:
            raise InputError(f"mask: expected values in [0, 1], got [{masks.min():.3g}, {masks.max():.3g}]")
        cot = as_float32(cotangent, "cotangent")
        if cot.shape != images.shape:
            raise InputError(f"cotangent: expected the shape of x {images.shape}, got {cot.shape}")
        grads = []
        with torch.enable_grad():
            for s in range(0, len(images), self.chunk_size):
                m = torch.from_numpy(masks[s:s + self.chunk_size]).requires_grad_(True)
                out = self.network(torch.from_numpy(images[s:s + self.chunk_size]), m)
                (grad,) = torch.autograd.grad(out, m, grad_outputs=torch.from_numpy(cot[s:s + self.chunk_size]))
                grads.append(grad.numpy())
        return np.concatenate(grads).astype(np.float32, copy=False)


def inpainter_payload(model: LearnedInpainter, training_state: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = {
        "kind": INPAINTER_KIND,
        "format_version": INPAINTER_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.network.state_dict().items()},
        "data": dict(model.data),
        "training": dict(model.training),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    return payload


def save_inpainter(path: str | os.PathLike, model: LearnedInpainter,
                   training_state: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and, for ``--resume``, ``training_state``) to ``path`` atomically.

    >>> import tempfile
    >>> net = GatedUNet(InpainterConfig.for_input((1, 8, 8), base_channels=4))
    >>> path = save_inpainter(Path(tempfile.mkdtemp()) / "inp.pt", LearnedInpainter(net, {"name": "toy"}))
    >>> load_inpainter(path).name
    'learned-toy'
    """
    return atomic_torch_save(inpainter_payload(model, training_state), path)


def read_inpainter_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload of an inpainter checkpoint, format-checked (used by ``--resume``)."""
    payload = read_torch_file(path, INPAINTER_KIND, "inpainter")
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise InputError(f"{path}: inpainter checkpoint without a format version")
    if version > INPAINTER_FORMAT_VERSION:
        raise InputError(f"{path}: inpainter format {version} is newer than this xaisdk reads ({INPAINTER_FORMAT_VERSION})")
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise InputError(f"{path}: inpainter checkpoint needs 'config' and 'state_dict'")
    return payload


def inpainter_from_payload(payload: dict[str, Any], path: str | os.PathLike) -> LearnedInpainter:
    """Rebuild a :class:`LearnedInpainter` from :func:`inpainter_payload`'s dict; ``path`` names it in errors.

    The config is checked before the network is built, and the weights before they are loaded
    (:mod:`xaisdk.models.config_checks`).
    """
    with in_file(path):
        config = InpainterConfig.from_dict(payload["config"])
        data = require_dict("inpainter checkpoint", "data", payload.get("data", {}))
        training = require_dict("inpainter checkpoint", "training", payload.get("training", {}))
        network = build_with_weights(lambda: GatedUNet(config), payload["state_dict"], "inpainter")
    return LearnedInpainter(network, data, training)


def load_inpainter(path: str | os.PathLike) -> LearnedInpainter:
    """Load an inpainter checkpoint written by ``xaisdk train inpainter`` (CPU, eval mode).

    Missing files, files of another kind and weights that do not fit the config raise
    :class:`xaisdk.InputError`.

    >>> load_inpainter(shipped_inpainter_path("shapes")).input_shape
    (3, 32, 32)
    """
    return inpainter_from_payload(read_inpainter_file(path), path)


def shipped_inpainter_path(name: str = "digits") -> Path:
    """Path of an inpainter shipped inside the package (``"digits"`` or ``"shapes"``).

    >>> shipped_inpainter_path("shapes").name
    'shapes_inpainter.pt'
    """
    if name not in SHIPPED_INPAINTERS:
        raise InputError(f"no shipped inpainter {name!r}; shipped: {', '.join(sorted(SHIPPED_INPAINTERS))}")
    return Path(str(resources.files("xaisdk") / "weights" / SHIPPED_INPAINTERS[name]))


def load_shipped_inpainter(name: str = "digits") -> LearnedInpainter:
    """The shipped inpainter for ``"digits"`` (1x28x28) or ``"shapes"`` (3x32x32), trained by
    ``export/train_inpainters.py``.

    >>> load_shipped_inpainter("digits").input_shape
    (1, 28, 28)
    """
    return load_inpainter(shipped_inpainter_path(name))
