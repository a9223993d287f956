"""The pixel pipeline of a user's model: resize policy, channel order, per-channel mean and std.

Production classifiers take normalised tensors, ``(pixels - mean) / std`` per channel, often in
BGR order, at a fixed size reached by resizing and cropping. xaisdk keeps the explanation in
**pixel space**: the exported graph starts with the normalisation (and the channel swap), so a
bundle's input is an RGB image in [0, 1] at the model's size, and every map is w.r.t. those pixels.
For the path methods this costs nothing: with ``z = (x - m) / s`` applied per element,
``(x - b) * integral dF/dx = (z_x - z_b) * integral dF/dz``, so IG, DeepLIFT and Occlusion maps
(and their completeness) are the same in both spaces; plain gradients differ by the factor 1/s.

:class:`Preprocessing` is what the bundle manifest records under ``"preprocessing"``;
:func:`fit_images` is what :class:`xaisdk.Explainer` does to an image of any size before
explaining it. Torch-free (numpy and Pillow), so a serving process has it.

>>> spec = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="shorter-side-crop")
>>> batch, single = fit_images(np.zeros((300, 400, 3), np.uint8), (3, 224, 224), spec)
>>> batch.shape, batch.dtype, single
((1, 3, 224, 224), dtype('float32'), True)
>>> Preprocessing.from_manifest(spec.to_manifest()) == spec
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from xaisdk.errors import InputError
from xaisdk.runtime.images import as_model_batch

__all__ = ["CHANNEL_ORDERS", "RESIZE_POLICIES", "Preprocessing", "fit_images", "model_batch", "resizes_any_size"]

RESIZE_POLICIES = ("none", "stretch", "shorter-side-crop")
"""``none``: images must already have the model's size. ``stretch``: resized to (H, W), aspect not
kept. ``shorter-side-crop``: the shorter side resized to ``resize_shorter_to`` (default H * 256 / 224,
the ImageNet recipe) keeping the aspect, then the centre (H, W) cropped."""
CHANNEL_ORDERS = ("RGB", "BGR")


def _numbers(value: Any, name: str, channels: int | None, positive: bool = False) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected one number per channel, got {value!r}") from None
    if not numbers or (channels is not None and len(numbers) not in (1, channels)):
        raise InputError(f"{name}: expected 1 or {channels} numbers (one per channel), got {len(numbers)}")
    if not all(math.isfinite(v) for v in numbers) or (positive and not all(v > 0 for v in numbers)):
        raise InputError(f"{name}: expected finite{' positive' if positive else ''} numbers, got {list(numbers)}")
    return numbers


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's input (see the module docstring).

    ``mean`` / ``std``: per channel (or one value for all), applied to [0, 1] pixels, as in
    ``torchvision.transforms.Normalize``; None means the model takes [0, 1] pixels as they are.
    ``channel_order``: the order the model expects; images are always given as RGB.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = "none"
    resize_shorter_to: int | None = None
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise InputError("mean and std: give both (per-channel normalisation) or neither")
        if self.mean is not None:
            object.__setattr__(self, "mean", _numbers(self.mean, "mean", None))
            object.__setattr__(self, "std", _numbers(self.std, "std", None, positive=True))
            if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
                raise InputError(f"mean and std: {len(self.mean)} and {len(self.std)} values; give one per channel")
        if self.resize not in RESIZE_POLICIES:
            raise InputError(f"resize: expected one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}")
        shorter = self.resize_shorter_to
        if shorter is not None and (isinstance(shorter, bool) or not isinstance(shorter, int) or shorter < 1):
            raise InputError(f"resize_shorter_to: expected a positive integer, got {shorter!r}")
        if shorter is not None and self.resize != "shorter-side-crop":
            raise InputError("resize_shorter_to applies to resize='shorter-side-crop' only")
        if self.channel_order not in CHANNEL_ORDERS:
            raise InputError(f"channel_order: expected 'RGB' or 'BGR', got {self.channel_order!r}")

    def check_channels(self, channels: int) -> None:
        """InputError unless mean/std and the channel order fit a model with ``channels`` input channels."""
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                raise InputError(f"{name}: {len(values)} values for a model with {channels} input channels")
        if self.channel_order == "BGR" and channels != 3:
            raise InputError(f"channel_order 'BGR' needs 3 input channels, the model has {channels}")

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 arrays of ``channels`` values (zeros and ones without normalisation)."""
        self.check_channels(channels)
        if self.mean is None or self.std is None:
            return np.zeros(channels, np.float32), np.ones(channels, np.float32)
        return (np.broadcast_to(np.asarray(self.mean, np.float32), channels).copy(),
                np.broadcast_to(np.asarray(self.std, np.float32), channels).copy())

    @property
    def is_identity(self) -> bool:
        return self.mean is None and self.resize == "none" and self.channel_order == "RGB"

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``"preprocessing"`` entry (``in_graph``: the exported graph applies mean/std and order)."""
        return {"pixels": "RGB in [0, 1]", "in_graph": True, "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std), "channel_order": self.channel_order,
                "resize": self.resize, "resize_shorter_to": self.resize_shorter_to}

    @classmethod
    def from_manifest(cls, entry: Any, where: str = "preprocessing") -> Preprocessing:
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object, got {type(entry).__name__}")
        known = {"pixels", "in_graph", "mean", "std", "channel_order", "resize", "resize_shorter_to"}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise InputError(f"{where}: unknown keys {unknown}")
        if entry.get("in_graph", True) is not True:
            raise InputError(f"{where}: only in-graph normalisation is supported (in_graph: true)")
        try:
            return cls(mean=entry.get("mean"), std=entry.get("std"), resize=entry.get("resize", "none"),
                       resize_shorter_to=entry.get("resize_shorter_to"), channel_order=entry.get("channel_order", "RGB"))
        except InputError as err:
            raise InputError(f"{where}: {err}") from None


def _layout(shape: tuple[int, ...], channels: int) -> tuple[str, bool]:
    """('NCHW' | 'NHWC', single) for an image or batch of any spatial size with ``channels`` channels."""
    if len(shape) == 2 and channels == 1:
        return "NHW", True
    if len(shape) == 3:
        if channels == 1 and shape[0] != 1 and shape[-1] != 1:
            return "NHW", False
        if shape[0] == channels:
            return "NCHW", True
        if shape[-1] == channels:
            return "NHWC", True
    if len(shape) == 4:
        if shape[1] == channels:
            return "NCHW", False
        if shape[-1] == channels:
            return "NHWC", False
    raise InputError(f"x: cannot read an image with {channels} channels from shape {shape}; give (H, W, C), (C, H, W) "
                     "or a batch of either")


def _resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One float32 channel resized to (H, W) with Pillow's antialiased bilinear filter."""
    image = Image.fromarray(np.ascontiguousarray(plane, np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), np.float32)


def _fit_one(image: np.ndarray, height: int, width: int, spec: Preprocessing) -> np.ndarray:
    """A (C, h, w) float image in [0, 1] brought to (C, height, width) by the spec's resize policy."""
    h, w = image.shape[1:]
    if (h, w) == (height, width):
        return image
    if spec.resize == "stretch":
        return np.stack([_resize_plane(p, (height, width)) for p in image])
    shorter = spec.resize_shorter_to or max(height, width) * 256 // 224
    scale = shorter / min(h, w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    resized = np.stack([_resize_plane(p, size) for p in image])
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return resized[:, top:top + height, left:left + width]


def fit_images(x: Any, input_shape: Sequence[int], spec: Preprocessing) -> tuple[np.ndarray, bool]:
    """Images of any size (uint8 0-255 or float in [0, 1]; HWC or CHW; one or a batch) as a float32
    batch (N, C, H, W) in [0, 1] at ``input_shape``, by the spec's resize policy, and whether one image
    (no batch axis) was given.

    Images already of the model's size pass through unchanged (as float32); with ``resize="none"`` any
    other size is an :class:`~xaisdk.InputError`. Float pixels outside [0, 1] are refused: the model's
    normalisation is part of the bundle, so give pixels, not normalised tensors.

    >>> batch, single = fit_images(np.full((2, 8, 6), 255, np.uint8), (2, 4, 4), Preprocessing(resize="stretch"))
    >>> batch.shape, float(batch.min()), single
    ((1, 2, 4, 4), 1.0, True)
    """
    channels, height, width = (int(v) for v in input_shape)
    array = np.asarray(x)
    if array.dtype == np.uint8:
        pixels = array.astype(np.float32) / 255.0
    elif array.dtype.kind == "f":
        pixels = array.astype(np.float32)
        finite = np.isfinite(pixels)
        if not finite.all():
            raise InputError(f"x: {int((~finite).sum())} non-finite values")
        if pixels.size and (pixels.min() < 0.0 or pixels.max() > 1.0):
            raise InputError(f"x: float pixels must lie in [0, 1] (the model's normalisation is applied inside the bundle), "
                             f"got [{float(pixels.min()):.4g}, {float(pixels.max()):.4g}]; give uint8 or [0, 1] images")
    else:
        raise InputError(f"x: expected uint8 or float pixels, got dtype {array.dtype}")
    layout, single = _layout(pixels.shape, channels)
    if single:
        pixels = pixels[None]
    if layout == "NHW":
        pixels = pixels[:, None]
    elif layout == "NHWC":
        pixels = np.moveaxis(pixels, -1, 1)
    if pixels.shape[2:] != (height, width) and spec.resize == "none":
        raise InputError(f"x: images are {pixels.shape[2]}x{pixels.shape[3]}, the model takes {height}x{width} and its "
                         "bundle has no resize policy; resize the images or export with --resize")
    if min(pixels.shape[2:], default=0) < 1:
        raise InputError(f"x: empty image of shape {pixels.shape[1:]}")
    batch = np.stack([_fit_one(image, height, width, spec) for image in pixels]).astype(np.float32, copy=False)
    return batch, single


def model_batch(x: Any, backend: Any) -> tuple[np.ndarray, bool]:
    """Images as ``backend`` takes them, and whether one image (no batch axis) was given: through the
    bundle's pixel pipeline (:func:`fit_images`, any size) when it has one, else mapped to its value range
    at its own size (:func:`xaisdk.runtime.images.as_model_batch`). The Explainer and the server share it.

    >>> class Plain:
    ...     input_shape, value_range = (1, 2, 2), (0.0, 1.0)
    >>> batch, single = model_batch(np.full((2, 2), 255, np.uint8), Plain())
    >>> batch.shape, float(batch.max()), single
    ((1, 1, 2, 2), 1.0, True)
    """
    pipeline = getattr(backend, "preprocessing", None)
    if pipeline is not None:
        return fit_images(x, backend.input_shape, pipeline)
    return as_model_batch(x, backend.input_shape, backend.value_range)


def resizes_any_size(backend: Any) -> bool:
    """Whether ``backend``'s pixel pipeline brings images of any size to its input size (a resize policy)."""
    pipeline = getattr(backend, "preprocessing", None)
    return pipeline is not None and pipeline.resize != "none"
