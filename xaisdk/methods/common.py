"""Torch-free helpers shared by the torch reference methods and the Backend drivers
(:mod:`xaisdk.methods.drivers`): batching, occlusion windows and Expected Gradients draws.

One copy serves both, so the two implementations cut batches, place windows and draw references
identically. This module imports numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from xaisdk.errors import InputError
from xaisdk.limits import check_size, current_limits


def chunks(total: int, size: int | None) -> Iterator[slice]:
    """Consecutive slices of ``range(total)`` with at most ``size`` items (all at once for None).

    ``size`` must be a positive integer (see :func:`xaisdk.limits.check_size`), else
    :class:`~xaisdk.InputError`; a caller's request is bounded by :func:`batch_rows` first.

    >>> [(s.start, s.stop) for s in chunks(5, 2)]
    [(0, 2), (2, 4), (4, 5)]
    """
    step = total if size is None else check_size(size, "batch_size")
    for start in range(0, total, max(step, 1)):
        yield slice(start, min(start + step, total))


def batch_rows(batch_size: int | None, default: int) -> int:
    """Rows per forward/backward pass: ``batch_size`` checked against ``Limits.chunk_size`` (see
    :func:`xaisdk.limits.check_size`), or ``default`` lowered to that limit when ``batch_size`` is None.

    >>> batch_rows(None, 1024), batch_rows(64, 1024)
    (1024, 64)
    """
    if batch_size is None:
        return min(int(default), current_limits().chunk_size)
    return check_size(batch_size, "batch_size", cap="chunk_size")


def pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """``value`` as ``(height, width)``: one positive int for both, or two of them (integers only:
    ``2.0``, ``"2"`` or ``True`` are refused, not converted).

    >>> pair(3, "window"), pair((2, 4), "stride")
    ((3, 3), (2, 4))
    """
    items = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value, value)
    if len(items) != 2:
        raise InputError(f"{name}: expected a positive int or (height, width), got {value!r}")
    return check_size(items[0], name), check_size(items[1], name)


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


def default_occlusion_window(height: int, width: int) -> tuple[int, int]:
    """(window, stride) when the caller gives none: a window of about 1/14 of the shorter side (16 px at
    224 px, the patch size of ViT-B/16; 2 px on 28 px digits), half-overlapping. About 730 occluded
    passes per image at any size, where a 1-pixel window would cost H * W (50,176 at 224 px).

    >>> default_occlusion_window(224, 224), default_occlusion_window(28, 28), default_occlusion_window(5, 9)
    ((16, 8), (2, 1), (1, 1))
    """
    window = max(1, round(min(height, width) / 14))
    return window, max(1, window // 2)


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
