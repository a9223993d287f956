"""What removed pixels are replaced with in perturbation metrics (the "substrate").

Names: ``"flip"`` (``low + high - x``: Bach et al.'s ``1 - x`` for images in [0, 1], GANMEX §4.1),
``"baseline"`` (the caller's baseline images, e.g. the explanation's own baseline), ``"zero"``,
``"mean"`` (each image's per-channel mean), ``"blur"`` (Gaussian blur of the image) and
``"uniform"`` (seeded uniform noise over the model's value range); or an array broadcasting to x.
Imports numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime.inpainting import gaussian_blur

__all__ = ["SUBSTRATES", "make_substrate", "blurred"]

SUBSTRATES = ("flip", "baseline", "zero", "mean", "blur", "uniform")


def blurred(x: np.ndarray, sigma: float) -> np.ndarray:
    """``x`` (N, C, H, W) blurred by a Gaussian of ``sigma`` pixels over H and W (borders reflected).

    >>> x = np.zeros((1, 1, 5, 5), np.float32); x[0, 0, 2, 2] = 1
    >>> round(float(blurred(x, 1.0).sum()), 4)
    1.0
    """
    return gaussian_blur(np.asarray(x, np.float32), sigma)


def make_substrate(kind: Any, x: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0), *,
                   baseline: Any = None, blur_sigma: float | None = None, seed: int = 0) -> np.ndarray:
    """The substrate images (N, C, H, W) float32 for images ``x`` (see the module docstring).

    ``blur_sigma`` defaults to a tenth of the shorter image side (2.8 px at 28x28): enough that a
    blurred digit is no longer readable.

    >>> x = np.array([[[[0.0, 0.25, 1.0]]]], np.float32)
    >>> make_substrate("flip", x).tolist()
    [[[[1.0, 0.75, 0.0]]]]
    """
    low, high = value_range
    if isinstance(kind, str):
        if kind == "flip":
            return (np.float32(low + high) - x).astype(np.float32)
        if kind == "zero":
            return np.zeros_like(x, dtype=np.float32)
        if kind == "mean":
            return np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), x.shape).astype(np.float32)
        if kind == "blur":
            return blurred(x, blur_sigma if blur_sigma is not None else min(x.shape[2:]) / 10)
        if kind == "uniform":
            return np.random.default_rng(seed).uniform(low, high, size=x.shape).astype(np.float32)
        if kind == "baseline":
            if baseline is None:
                raise InputError("substrate 'baseline' needs baseline= images (one per input, or one for all)")
            return _as_images(baseline, x, "baseline")
        raise InputError(f"substrate: unknown {kind!r}; expected one of {', '.join(SUBSTRATES)} or an array")
    return _as_images(kind, x, "substrate")


def _as_images(value: Any, x: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name}: expected numeric images, got {array.dtype}")
    try:
        out = np.broadcast_to(array.astype(np.float32), x.shape)
    except ValueError:
        raise InputError(f"{name}: shape {array.shape} does not broadcast to the inputs {x.shape}") from None
    if not np.isfinite(out).all():
        raise InputError(f"{name}: expected finite values")
    return np.ascontiguousarray(out)
