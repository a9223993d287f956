"""Torch-free helpers shared by the torch reference methods and the Backend drivers
(:mod:`xaisdk.attribution.drivers`): batching, occlusion windows and Expected Gradients draws.

One copy serves both, so the two implementations cut batches, place windows and draw references
identically. This module imports numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from xaisdk.errors import InputError


def chunks(total: int, size: int | None) -> Iterator[slice]:
    """Consecutive slices of ``range(total)`` with at most ``size`` items (all at once for None).

    >>> [(s.start, s.stop) for s in chunks(5, 2)]
    [(0, 2), (2, 4), (4, 5)]
    """
    if size is not None and int(size) < 1:
        raise InputError(f"batch_size must be >= 1 or None, got {size}")
    step = total if size is None else int(size)
    for start in range(0, total, max(step, 1)):
        yield slice(start, min(start + step, total))


def pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """``value`` as ``(height, width)``: one positive int for both, or two of them.

    >>> pair(3, "window"), pair((2, 4), "stride")
    ((3, 3), (2, 4))
    """
    items = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(items) != 2 or any(int(v) != v or v < 1 for v in items):
        raise InputError(f"{name}: expected a positive int or (height, width), got {value!r}")
    return int(items[0]), int(items[1])


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride`` pixels, with a last window clipped at the
    border when ``stride`` does not divide ``size - window`` (so every pixel is covered).

    >>> window_starts(5, 2, 2)
    [0, 2, 4]
    """
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


def window_cover(size: int, window: int, stride: int) -> np.ndarray:
    """(positions, size) float32 0/1 matrix: which pixels along one axis each window position covers.

    >>> window_cover(3, 2, 1).tolist()
    [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    """
    starts = np.asarray(window_starts(size, window, stride))[:, None]
    pixel = np.arange(size)[None, :]
    return ((pixel >= starts) & (pixel < starts + window)).astype(np.float32)


def occlusion_covers(
    height: int, width: int, window: int | tuple[int, int], stride: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The checked occlusion windows of an image: row covers (positions along H, H) and column covers
    (positions along W, W); a window position's mask is the outer product of one of each.

    >>> rows, cols = occlusion_covers(4, 3, window=(2, 3), stride=2)
    >>> rows.shape, cols.shape
    ((2, 4), (1, 3))
    """
    (kh, kw), (sh, sw) = pair(window, "window"), pair(stride, "stride")
    if kh > height or kw > width:
        raise InputError(f"window {(kh, kw)} is larger than the image {(height, width)}")
    if sh > kh or sw > kw:  # the pixels between windows would never be occluded and get no value (0/0)
        raise InputError(f"stride {(sh, sw)} is larger than the window {(kh, kw)}: some pixels would never be occluded")
    return window_cover(height, kh, sh), window_cover(width, kw, sw)


def reference_indices(
    labels: np.ndarray | None, target: np.ndarray | None, n_inputs: int, n_refs: int, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """(N, n_samples) reference indices: from the sample's target class when labels and targets are known.

    >>> rng = np.random.default_rng(0)
    >>> idx = reference_indices(np.array([0, 1, 0, 1]), np.array([1]), 1, 4, 5, rng)
    >>> sorted(set(idx.ravel().tolist()))  # only the references of class 1
    [1, 3]
    """
    if labels is None or target is None:
        return rng.integers(0, n_refs, size=(n_inputs, n_samples))
    chosen = np.empty((n_inputs, n_samples), dtype=np.int64)
    for n, cls in enumerate(target):
        pool = np.flatnonzero(labels == cls)
        if len(pool) == 0:
            raise InputError(f"references: no reference image of target class {cls}")
        chosen[n] = pool[rng.integers(0, len(pool), size=n_samples)]
    return chosen
