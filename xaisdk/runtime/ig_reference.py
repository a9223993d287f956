"""Integrated Gradients over a numpy gradient function, written plainly in numpy.

This is the fallback of :func:`xaisdk.runtime.integrated_gradients_loop` when the C++ extension is
not built, and the independent reference its tests compare against. It also holds the input checks
that both implementations share.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime.arrays import as_float32

GradFn = Callable[[np.ndarray], np.ndarray]
IndexedGradFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""A gradient function that also takes the int64 sample index of every row (``pass_sample_index=True``)."""

__all__ = ["GradFn", "IndexedGradFn", "integrated_gradients_reference"]


class _IGInputs(NamedTuple):
    """Validated inputs, float32 and C-contiguous, flattened to (N, D)."""

    x: np.ndarray  # (N, D)
    baseline: np.ndarray  # (N, D)
    alphas: np.ndarray  # (S,)
    weights: np.ndarray  # (S,)
    chunk_size: int
    shape: tuple[int, ...]  # x's original shape (N, ...)


def _validate_ig_inputs(
    grad_fn: object, x: object, baseline: object, alphas: object, weights: object, chunk_size: object
) -> _IGInputs:
    """Check and convert the arguments of an IG run; raise InputError naming the culprit."""
    if not callable(grad_fn):
        raise InputError(f"grad_fn: expected a callable mapping a float32 batch to its gradient, got {type(grad_fn).__name__}")
    if isinstance(chunk_size, (bool, np.bool_)):
        raise InputError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    try:
        chunk = operator.index(chunk_size)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"chunk_size: expected a positive integer, got {chunk_size!r}") from None
    if chunk < 1:
        raise InputError(f"chunk_size: expected a positive integer, got {chunk}")

    x32 = as_float32(x, "x")
    if x32.ndim < 1:
        raise InputError("x: expected an array of shape (N, ...) with a leading batch dimension, got a scalar")
    b32 = as_float32(baseline, "baseline")
    try:
        b32 = np.broadcast_to(b32, x32.shape)
    except ValueError:
        feat = x32.shape[1:]
        raise InputError(
            f"baseline: shape {b32.shape} cannot be broadcast to the shape of x {x32.shape}; "
            f"expected {x32.shape}, {feat} or {(1, *feat)}"
        ) from None
    b32 = np.ascontiguousarray(b32)

    a32 = as_float32(alphas, "alphas")
    w32 = as_float32(weights, "weights")
    for arr, name in ((a32, "alphas"), (w32, "weights")):
        if arr.ndim != 1:
            raise InputError(f"{name}: expected a 1-D array of path points, got shape {arr.shape}")
        if arr.size == 0:
            raise InputError(f"{name}: is empty; need at least one path point")
    if a32.shape != w32.shape:
        raise InputError(f"alphas and weights must have the same length, got {a32.size} alphas and {w32.size} weights")

    flat_shape = (x32.shape[0], math.prod(x32.shape[1:]))  # not reshape(n, -1): N may be 0
    return _IGInputs(x32.reshape(flat_shape), b32.reshape(flat_shape), a32, w32, chunk, x32.shape)


def _check_gradients(grads: object, batch_shape: tuple[int, ...], start: int, steps: int) -> np.ndarray:
    """Return grad_fn's answer for the chunk at flat index ``start`` as float32 (K, D), or raise InputError."""
    where = f"for the chunk of samples {start // steps}..{(start + batch_shape[0] - 1) // steps}"
    try:
        arr = np.asarray(grads)
    except Exception as err:  # anything numpy cannot turn into an array
        raise InputError(f"grad_fn: returned a {type(grads).__name__} that is not convertible to an array {where}") from err
    if arr.shape != batch_shape:
        raise InputError(f"grad_fn: returned shape {arr.shape}, expected {batch_shape} (the shape of its input) {where}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"grad_fn: returned dtype {arr.dtype}, expected a real-valued (float) array {where}")
    arr = np.ascontiguousarray(arr, dtype=np.float32).reshape(batch_shape[0], -1)
    if not np.isfinite(arr).all():
        raise InputError(f"grad_fn: returned NaN or infinite gradients {where}")
    return arr


def _call_grad_fn(
    grad_fn: GradFn | IndexedGradFn, batch: np.ndarray, start: int, steps: int, pass_sample_index: bool
) -> object:
    """``grad_fn(batch)``, or ``grad_fn(batch, sample_index)`` with the int64 sample of every row of
    the chunk that starts at flat index ``start``."""
    if not pass_sample_index:
        return grad_fn(batch)  # type: ignore[call-arg]
    return grad_fn(batch, np.arange(start, start + len(batch), dtype=np.int64) // steps)  # type: ignore[call-arg]


def _chunk_starts(total: int, chunk_size: int, progress: bool) -> Iterator[int]:
    """Flat start index of every chunk, wrapped in a tqdm bar over chunks when ``progress``."""
    starts = range(0, total, chunk_size)
    if not progress:
        yield from starts
        return
    from tqdm import tqdm

    with tqdm(total=len(starts), desc="integrated gradients", unit="chunk") as bar:
        for start in starts:
            yield start
            bar.update(1)


def integrated_gradients_reference(
    grad_fn: GradFn | IndexedGradFn,
    x: np.ndarray,
    baseline: np.ndarray,
    alphas: np.ndarray,
    weights: np.ndarray,
    *,
    chunk_size: int = 256,
    progress: bool = False,
    pass_sample_index: bool = False,
) -> np.ndarray:
    """Integrated Gradients in plain numpy: same arguments and result as ``integrated_gradients_loop``.

    ``attr[n] = (x[n] - b[n]) * sum_s weights[s] * grad_fn(b[n] + alphas[s] * (x[n] - b[n]))``,
    with the N * S path points fed to ``grad_fn`` in batches of ``chunk_size`` rows, in the order
    (sample 0, step 0), (sample 0, step 1), ... Computed in float32. With ``pass_sample_index``,
    ``grad_fn(batch, sample_index)`` also gets the int64 sample index ``n`` of every row.

    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0], [3.0, -1.0]], dtype=np.float32)
    >>> S = 4
    >>> alphas = (np.arange(S) + 0.5) / S  # midpoint rule on [0, 1]
    >>> weights = np.full(S, 1.0 / S)
    >>> # grad of f(x) = 0.5 * sum(x**2) is x, so IG from a zero baseline is x**2 / 2
    >>> integrated_gradients_reference(lambda batch: batch, x, 0.0, alphas, weights, chunk_size=3)
    array([[0.5, 2. ],
           [4.5, 0.5]], dtype=float32)
    """
    inp = _validate_ig_inputs(grad_fn, x, baseline, alphas, weights, chunk_size)
    n_samples, n_features = inp.x.shape
    steps = inp.alphas.size
    total = n_samples * steps
    feature_shape = inp.shape[1:]
    delta = inp.x - inp.baseline
    acc = np.zeros((n_samples, n_features), dtype=np.float32)
    for start in _chunk_starts(total, inp.chunk_size, progress):
        flat = np.arange(start, min(start + inp.chunk_size, total))
        n, s = flat // steps, flat % steps
        batch = inp.baseline[n] + inp.alphas[s, None] * delta[n]
        answer = _call_grad_fn(grad_fn, batch.reshape(flat.size, *feature_shape), start, steps, pass_sample_index)
        grads = _check_gradients(answer, (flat.size, *feature_shape), start, steps)
        # ufunc.at adds repeated indices one after the other, in row order.
        np.add.at(acc, n, inp.weights[s, None] * grads)
    acc *= delta
    return acc.reshape(inp.shape)
