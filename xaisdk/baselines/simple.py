"""Baselines that need no data: constant images, a blurred input, uniform noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime.inpainting import gaussian_blur


@dataclass(frozen=True)
class Constant:
    """Every pixel at ``value`` (0 is the "zero" baseline, 1 the "max" baseline of images in [0, 1]).

    >>> Constant(0.5)(np.zeros((1, 1, 2, 2), np.float32), None).ravel().tolist()
    [0.5, 0.5, 0.5, 0.5]
    """

    value: float = 0.0

    def __call__(self, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        return np.full_like(x, self.value, dtype=np.float32)


@dataclass(frozen=True)
class Blur:
    """The input blurred by a Gaussian of standard deviation ``sigma`` pixels over height and width
    (channels separately; borders reflected), as in the blurred baseline of the IG literature.

    >>> x = np.zeros((1, 1, 9, 9), np.float32); x[0, 0, 4, 4] = 1
    >>> b = Blur(sigma=1.0)(x, None)
    >>> round(float(b.sum()), 4), bool(b[0, 0, 4, 4] < 1)
    (1.0, True)
    """

    sigma: float = 3.0

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise InputError(f"blur baseline: sigma must be > 0, got {self.sigma}")

    def __call__(self, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        return gaussian_blur(np.asarray(x, np.float32), self.sigma)


@dataclass(frozen=True)
class UniformNoise:
    """Independent uniform noise in [low, high) per pixel, reproducible by ``seed``.

    >>> b = UniformNoise(seed=1)(np.zeros((2, 1, 4, 4), np.float32), None)
    >>> b.shape, bool((b >= 0).all() and (b < 1).all())
    ((2, 1, 4, 4), True)
    """

    low: float = 0.0
    high: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise InputError(f"noise baseline: high ({self.high}) must exceed low ({self.low})")

    def __call__(self, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.uniform(self.low, self.high, size=x.shape).astype(np.float32)
