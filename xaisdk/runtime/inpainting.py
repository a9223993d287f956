"""Removing pixels from images: the fillers of perturbation methods and the Inpainter protocol.

A *removal* replaces the pixels where ``mask == 1`` by a filler image and keeps every other pixel
bit for bit: ``composite(x, fill, mask) = x * (1 - mask) + fill * mask``. Masks are float32
``(N, 1, H, W)`` with values 0 or 1 (1 = remove), shared by all channels.

Fillers (:data:`FILLERS`): ``"gray"`` (the middle of the value range, Zeiler & Fergus's gray
patch), ``"zero"`` (the bottom of the value range), ``"blur"`` (a Gaussian blur of the image, Fong &
Vedaldi), ``"noise"`` (seeded uniform noise over the value range) and ``"inpaint"`` (an
:class:`Inpainter`'s output: the learned one of :mod:`xaisdk.models.inpainter`, its ONNX export, or
the classical :class:`OpenCVInpainter`). This module imports numpy only (OpenCV when
:class:`OpenCVInpainter` is used), so serving images can remove features without torch.

>>> x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2) / 4
>>> m = np.array([[[[1, 0], [0, 0]]]], np.float32)
>>> remove(x, m, "gray").ravel().tolist()
[0.5, 0.25, 0.5, 0.75]
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime.arrays import as_float32

__all__ = [
    "FILLERS",
    "Inpainter",
    "OpenCVInpainter",
    "check_images_and_masks",
    "composite",
    "filler_images",
    "gaussian_blur",
    "remove",
]

FILLERS = ("gray", "zero", "blur", "noise", "inpaint")


@runtime_checkable
class Inpainter(Protocol):
    """Fills the masked pixels of images with plausible content.

    ``inpaint(x, mask)`` takes images ``(N, C, H, W)`` float32 in ``value_range`` and binary masks
    ``(N, 1, H, W)`` (1 = fill) and returns images of the same shape that equal ``x`` wherever
    ``mask == 0``. Implementations batch internally and must be safe to call from many threads.
    """

    name: str
    value_range: tuple[float, float]

    def inpaint(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``x`` with the pixels under ``mask`` replaced (see the class docstring)."""
        ...


def check_images_and_masks(x: object, mask: object, *,
                           image_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float32 ``(N, C, H, W)`` and ``mask`` as float32 ``(N, 1, H, W)`` of 0/1 values.

    ``mask`` may also be ``(N, H, W)``, ``(H, W)`` or ``(1, 1, H, W)`` (one mask for every image); a
    boolean mask is accepted. ``image_shape`` (C, H, W), when given, is what ``x`` must match.
    Anything else raises :class:`~xaisdk.InputError` naming the problem.

    >>> xs, ms = check_images_and_masks(np.zeros((2, 3, 4, 4), np.float32), np.ones((4, 4), bool))
    >>> ms.shape, ms.dtype
    ((2, 1, 4, 4), dtype('float32'))
    """
    images = as_float32(x, "x")
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(f"x: expected a non-empty batch of images (N, C, H, W), got shape {images.shape}")
    if image_shape is not None and images.shape[1:] != tuple(image_shape):
        raise InputError(f"x: expected images of shape {tuple(image_shape)}, got {images.shape[1:]}")
    raw = np.asarray(mask)
    if raw.dtype == np.bool_:
        raw = raw.astype(np.float32)
    masks = as_float32(raw, "mask")
    n, _, height, width = images.shape
    if masks.ndim == 2:
        masks = masks[None, None]
    elif masks.ndim == 3:
        masks = masks[:, None]
    if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[2:] != (height, width) or masks.shape[0] not in (1, n):
        raise InputError(f"mask: expected shape ({n}, 1, {height}, {width}) (or (H, W) / (N, H, W)) for images "
                         f"{images.shape}, got {np.asarray(mask).shape}")
    if not np.all((masks == 0) | (masks == 1)):
        raise InputError("mask: expected binary values (0 = keep, 1 = remove); threshold a soft mask first")
    return images, np.ascontiguousarray(np.broadcast_to(masks, (n, 1, height, width)))


def composite(x: np.ndarray, fill: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x * (1 - mask) + fill * mask`` as float32, for binary or soft masks in [0, 1]; ``x`` exactly
    where ``mask == 0`` (and ``fill`` exactly where ``mask == 1``).

    >>> composite(np.zeros((1, 1, 1, 2), np.float32), np.ones((1, 1, 1, 2), np.float32),
    ...           np.array([[[[0.0, 1.0]]]], np.float32)).ravel().tolist()
    [0.0, 1.0]
    """
    blended = x * (1 - mask) + fill * mask
    # x * 1 + fill * 0 can differ from x in the last bit only through -0.0 / rounding; pin the ends exactly
    return np.where(mask == 0, x, np.where(mask == 1, fill, blended)).astype(np.float32, copy=False)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's default truncation
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Images ``(..., H, W)`` blurred by a Gaussian of ``sigma`` pixels over the last two axes, borders
    mirrored (the numbers of ``scipy.ndimage.gaussian_filter(mode="reflect")``, in numpy only).

    >>> x = np.zeros((1, 1, 9, 9), np.float32); x[0, 0, 4, 4] = 1
    >>> b = gaussian_blur(x, 1.0)
    >>> round(float(b.sum()), 4), bool(b[0, 0, 4, 4] < 1)
    (1.0, True)
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) or not sigma > 0:
        raise InputError(f"blur sigma: expected a number > 0, got {sigma!r}")
    kernel = _gaussian_kernel(float(sigma))
    radius = len(kernel) // 2
    out = np.asarray(x, np.float64)
    for axis in (-2, -1):
        size = out.shape[axis]
        # "symmetric" padding repeated as often as the kernel needs (scipy's reflect mode, any radius)
        index = np.arange(-radius, size + radius)
        period = 2 * size
        index = np.mod(index, period)
        index = np.where(index >= size, period - 1 - index, index)
        padded = np.take(out, index, axis=axis)
        windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=axis)
        out = windows @ kernel
    return out.astype(np.float32)


def filler_images(x: np.ndarray, filler: str, *, value_range: tuple[float, float] = (0.0, 1.0),
                  blur_sigma: float | None = None, seed: int = 0) -> np.ndarray:
    """The filler image of each input for the classic fillers ``"gray"``, ``"zero"``, ``"blur"``, ``"noise"``.

    ``blur_sigma`` defaults to a tenth of the shorter image side (2.8 px at 28x28), the same blur as
    the evaluation's blur substrate.

    >>> filler_images(np.zeros((1, 1, 1, 2), np.float32), "gray", value_range=(0.0, 2.0)).ravel().tolist()
    [1.0, 1.0]
    """
    low, high = (float(v) for v in value_range)
    if filler == "gray":
        return np.full(x.shape, (low + high) / 2, np.float32)
    if filler == "zero":
        return np.full(x.shape, low, np.float32)
    if filler == "blur":
        return gaussian_blur(x, blur_sigma if blur_sigma is not None else min(x.shape[-2:]) / 10)
    if filler == "noise":
        return np.random.default_rng(seed).uniform(low, high, size=x.shape).astype(np.float32)
    if filler == "inpaint":
        raise InputError("filler 'inpaint' needs an inpainter; use remove(x, mask, 'inpaint', inpainter=...)")
    raise InputError(f"filler: unknown {filler!r}; expected one of {', '.join(FILLERS)}")


def remove(x: object, mask: object, filler: str = "gray", *, inpainter: Inpainter | None = None,
           value_range: tuple[float, float] = (0.0, 1.0), blur_sigma: float | None = None, seed: int = 0) -> np.ndarray:
    """``x`` with the pixels under ``mask`` replaced by ``filler`` (see the module docstring).

    ``filler="inpaint"`` asks ``inpainter`` (any :class:`Inpainter`) for the content; the result is
    composited again so that unmasked pixels are ``x`` exactly whatever the inpainter returns.

    >>> x = np.ones((1, 1, 2, 2), np.float32)
    >>> remove(x, np.eye(2), "zero").ravel().tolist()
    [0.0, 1.0, 1.0, 0.0]
    """
    if not isinstance(filler, str) or filler not in FILLERS:
        raise InputError(f"filler: unknown {filler!r}; expected one of {', '.join(FILLERS)}")
    images, masks = check_images_and_masks(x, mask)
    if filler == "inpaint":
        if inpainter is None or not isinstance(inpainter, Inpainter):
            raise InputError("filler 'inpaint' needs inpainter= (xaisdk.models.inpainter, an ONNX inpainter or "
                             "OpenCVInpainter)")
        fill = np.asarray(inpainter.inpaint(images, masks), np.float32)
        if fill.shape != images.shape:
            raise InputError(f"inpainter {inpainter.name!r} returned shape {fill.shape} for images {images.shape}")
    else:
        fill = filler_images(images, filler, value_range=value_range, blur_sigma=blur_sigma, seed=seed)
    return composite(images, fill, masks)


class OpenCVInpainter:
    """Classical, non-learned inpainting with OpenCV (``cv2.inpaint``): ``method="telea"`` (fast
    marching, Telea 2004) or ``"ns"`` (Navier-Stokes, Bertalmio et al. 2001), filling from a
    ``radius``-pixel neighbourhood. Works for any image size and channel count (each channel is
    inpainted separately, in 16-bit levels). Needs ``opencv-python-headless`` (the ``torch`` and ``inpaint`` extras).

    >>> x = np.full((1, 1, 6, 6), 0.25, np.float32); m = np.zeros((1, 1, 6, 6), np.float32); m[..., 2:4, 2:4] = 1
    >>> out = OpenCVInpainter().inpaint(np.where(m > 0, 1.0, x).astype(np.float32), m)
    >>> bool(np.allclose(out, 0.25, atol=1e-4))
    True
    """

    METHODS = ("telea", "ns")

    def __init__(self, method: str = "telea", radius: int = 3, value_range: tuple[float, float] = (0.0, 1.0)) -> None:
        if method not in self.METHODS:
            raise InputError(f"OpenCV inpainting method: expected one of {', '.join(self.METHODS)}, got {method!r}")
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
            raise InputError(f"OpenCV inpainting radius: expected an integer >= 1, got {radius!r}")
        try:
            import cv2
        except ImportError:
            raise InputError("OpenCVInpainter needs OpenCV: pip install opencv-python-headless "
                             "(or xaisdk[torch] / xaisdk[inpaint])") from None
        self._cv2 = cv2
        self.method = method
        self.radius = int(radius)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.name = f"opencv-{method}"

    def inpaint(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        images, masks = check_images_and_masks(x, mask)
        flag = self._cv2.INPAINT_TELEA if self.method == "telea" else self._cv2.INPAINT_NS
        low, high = self.value_range
        # cv2.inpaint's Telea gives wrong pixels (stuck at 0 or 1) on float32 images; 16-bit integers
        # work for both methods and keep the values to 1/65535 of the range.
        scale = 65535.0 / (high - low)
        levels = np.round((np.clip(images, low, high) - low) * scale).astype(np.uint16)
        out = images.copy()
        holes = masks[:, 0].astype(np.uint8)
        for n in np.flatnonzero(holes.reshape(len(holes), -1).any(axis=1)):  # cv2.inpaint takes one image
            for c in range(images.shape[1]):
                filled = self._cv2.inpaint(np.ascontiguousarray(levels[n, c]), holes[n], self.radius, flag)
                out[n, c] = filled.astype(np.float32) / scale + low
        return composite(images, out, masks)
