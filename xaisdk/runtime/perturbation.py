"""Batched perturbation loops: rank pixels by saliency, then score chunks of perturbed images.

Perturbation metrics (pixel flipping / AOPC, deletion and insertion, AOSPC, faithfulness,
monotonicity) all evaluate images of the form "``base`` with some pixels taken from ``substrate``".
Row ``(n, j)`` of a run is ``base[n]`` with the pixels ``order[n, lo[n, j]:hi[n, j]]`` replaced, in
every channel, by ``substrate[n]``'s. The rows are built in fixed-size chunks by the C++ extension
(``xaisdk._ext.perturb_fill_chunk``, OpenMP, GIL released) into one reused buffer and scored by one
call per chunk, so memory stays bounded and Python runs once per chunk, never once per step.
Without the extension the numpy reference builds the same rows. Imports numpy only.

>>> import numpy as np
>>> base = np.zeros((1, 1, 1, 3), np.float32); substrate = np.ones_like(base)
>>> order = descending_order(np.array([[0.1, 0.9, 0.5]]))
>>> lo = np.zeros((1, 4), np.int64); hi = np.arange(4)[None]     # flip 0, 1, 2, 3 pixels
>>> perturbation_scores(lambda imgs, n: imgs.sum(axis=(1, 2, 3)), base, substrate, order, lo, hi).tolist()
[[0.0, 1.0, 2.0, 3.0]]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xaisdk.errors import InputError

try:
    from xaisdk import _ext
except ImportError:  # not built: the numpy reference below does the same work
    _ext = None

__all__ = ["ScoreFn", "descending_order", "perturbed_rows_reference", "perturbation_scores", "cumulative_bounds"]

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``score_fn(images (K, C, H, W) float32, sample (K,) int64) -> (K,)`` scores; ``sample[i]`` is the
index of the input that row i perturbs. ``images`` is a reused buffer: copy it to keep it."""


def descending_order(saliency: np.ndarray) -> np.ndarray:
    """Pixel indices of each row of ``saliency`` (N, P) by descending value, int64 (N, P); ties keep
    increasing pixel order (``np.argsort(-saliency, axis=1, kind="stable")``).

    >>> descending_order(np.array([[1.0, 3.0, 3.0, 2.0]])).tolist()
    [[1, 2, 3, 0]]
    """
    array = np.asarray(saliency)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"saliency: expected a real (N, P) array, got shape {array.shape} of {array.dtype}")
    if np.isnan(array).any():
        raise InputError("saliency: contains NaN, so no pixel order is defined")
    if _ext is None or array.dtype != np.float32:
        # float64 saliency is ranked in float64: casting to float32 could merge distinct values into ties.
        return np.argsort(-array, axis=1, kind="stable").astype(np.int64)
    return _ext.perturb_order(np.ascontiguousarray(array))


def cumulative_bounds(n: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``lo``/``hi`` (n, J) for a cumulative curve replacing ``counts[j]`` top-ranked pixels at step j.

    >>> lo, hi = cumulative_bounds(2, np.array([0, 2, 4]))
    >>> lo.tolist(), hi.tolist()
    ([[0, 0, 0], [0, 0, 0]], [[0, 2, 4], [0, 2, 4]])
    """
    counts = np.asarray(counts, dtype=np.int64)
    hi = np.broadcast_to(counts, (n, counts.shape[-1])).copy()
    return np.zeros_like(hi), hi


def _checked(base: np.ndarray, substrate: np.ndarray, order: np.ndarray, lo: np.ndarray,
             hi: np.ndarray) -> tuple[np.ndarray, ...]:
    base = np.ascontiguousarray(base, dtype=np.float32)
    if base.ndim != 4:
        raise InputError(f"base: expected images (N, C, H, W), got shape {base.shape}")
    n, c, h, w = base.shape
    substrate = np.ascontiguousarray(np.broadcast_to(np.asarray(substrate, dtype=np.float32), base.shape))
    order = np.ascontiguousarray(order, dtype=np.int64)
    lo = np.ascontiguousarray(lo, dtype=np.int64)
    hi = np.ascontiguousarray(hi, dtype=np.int64)
    if order.shape != (n, h * w):
        raise InputError(f"order: expected ({n}, {h * w}) pixel indices, got {order.shape}")
    if lo.ndim != 2 or lo.shape != hi.shape or lo.shape[0] != n or lo.shape[1] == 0:
        raise InputError(f"lo, hi: expected two (N, J) arrays with N = {n}, J >= 1; got {lo.shape} and {hi.shape}")
    if (lo < 0).any() or (lo > hi).any() or (hi > h * w).any():
        raise InputError(f"lo, hi: need 0 <= lo <= hi <= {h * w} (pixels per image)")
    if order.size and (order.min() < 0 or order.max() >= h * w):
        raise InputError(f"order: pixel indices must lie in [0, {h * w})")
    return base, substrate, order, lo, hi


def perturbed_rows_reference(base: np.ndarray, substrate: np.ndarray, order: np.ndarray, lo: np.ndarray,
                             hi: np.ndarray, rows: range | np.ndarray) -> np.ndarray:
    """The perturbed images of the given flat rows ``n * J + j``, built with plain numpy (the
    extension's reference).

    >>> base = np.zeros((1, 2, 1, 2), np.float32)
    >>> perturbed_rows_reference(base, base + 7, np.array([[1, 0]]), np.array([[0]]), np.array([[1]]), [0]).tolist()
    [[[[0.0, 7.0]], [[0.0, 7.0]]]]
    """
    base, substrate, order, lo, hi = _checked(base, substrate, order, lo, hi)
    n_img, c, h, w = base.shape
    steps = lo.shape[1]
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), c, h * w), np.float32)
    for k, flat in enumerate(rows):
        n, j = divmod(int(flat), steps)
        out[k] = base[n].reshape(c, -1)
        pixels = order[n, lo[n, j]:hi[n, j]]
        out[k][:, pixels] = substrate[n].reshape(c, -1)[:, pixels]
    return out.reshape(len(rows), c, h, w)


def perturbation_scores(
    score_fn: ScoreFn,
    base: np.ndarray,
    substrate: np.ndarray | float,
    order: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    chunk_size: int = 256,
    progress: bool = False,
    desc: str = "perturbations",
) -> np.ndarray:
    """Scores (N, J) float64 of every perturbed row ``(n, j)`` (see the module docstring).

    ``base`` (N, C, H, W); ``substrate`` broadcasts to it; ``order`` (N, H*W) pixel ranking (see
    :func:`descending_order`); ``lo``/``hi`` (N, J). ``chunk_size`` rows are built and scored at a time.
    """
    base, substrate, order, lo, hi = _checked(base, substrate, order, lo, hi)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InputError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    n, c, h, w = base.shape
    steps = lo.shape[1]
    total = n * steps
    scores = np.empty(total, dtype=np.float64)
    flat_base, flat_sub = base.reshape(n, c, h * w), substrate.reshape(n, c, h * w)
    buffer = np.empty((min(int(chunk_size), total), c, h * w), np.float32)
    starts = range(0, total, int(chunk_size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="chunk", leave=False)
    for start in starts:
        k = min(int(chunk_size), total - start)
        out = buffer[:k]
        if _ext is not None:
            _ext.perturb_fill_chunk(flat_base, flat_sub, order, lo, hi, start, out)
        else:
            out[:] = perturbed_rows_reference(base, substrate, order, lo, hi, range(start, start + k)).reshape(k, c, -1)
        sample = np.arange(start, start + k, dtype=np.int64) // steps
        values = np.asarray(score_fn(out.reshape(k, c, h, w), sample), dtype=np.float64)
        if values.shape != (k,):
            raise InputError(f"score_fn: expected {k} scores for a chunk of {k} images, got shape {values.shape}")
        scores[start:start + k] = values
    return scores.reshape(n, steps)
