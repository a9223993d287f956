"""Chunked Integrated Gradients over a numpy gradient function, with the per-step work in C++.

The gradient function ("numpy backend", e.g. an ONNX Runtime session wrapped to return input
gradients) is called once per chunk of ``chunk_size`` (sample, step) pairs. Building each chunk's
scaled inputs and adding up its gradients happen in ``xaisdk._ext`` (OpenMP, GIL released), so the
Python loop only runs once per chunk and memory stays bounded by one chunk.

``BACKEND`` says which implementation runs: ``"cpp"`` when the extension imports, else ``"numpy"``
(:mod:`xaisdk.runtime.ig_reference`, with a one-time warning).
"""

from __future__ import annotations

import warnings

import numpy as np

from xaisdk.runtime.ig_reference import (
    GradFn,
    IndexedGradFn,
    _call_grad_fn,
    _check_gradients,
    _chunk_starts,
    _validate_ig_inputs,
    integrated_gradients_reference,
)

try:
    from xaisdk import _ext
except ImportError:  # not built (source checkout without build_ext), or built for another Python
    _ext = None

BACKEND: str = "cpp" if _ext is not None else "numpy"

__all__ = ["BACKEND", "integrated_gradients_loop"]

_warned_fallback = False


def _warn_fallback_once() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "xaisdk._ext (the C++ extension) is not built; integrated_gradients_loop falls back to the "
            "slower numpy reference. Build it with `python setup.py build_ext --inplace` or `pip install .`.",
            RuntimeWarning,
            stacklevel=3,
        )


def integrated_gradients_loop(
    grad_fn: GradFn | IndexedGradFn,
    x: np.ndarray,
    baseline: np.ndarray | float,
    alphas: np.ndarray,
    weights: np.ndarray,
    *,
    chunk_size: int = 256,
    progress: bool = False,
    pass_sample_index: bool = False,
) -> np.ndarray:
    """Integrated Gradients of ``grad_fn``'s score for every sample of ``x``, in bounded memory.

    For sample n and path points ``alphas[s]`` with quadrature weights ``weights[s]``::

        attr[n] = (x[n] - b[n]) * sum_s weights[s] * grad_fn(b[n] + alphas[s] * (x[n] - b[n]))

    The N * S path points, ordered (sample 0, step 0), (sample 0, step 1), ..., go to ``grad_fn``
    in batches of ``chunk_size`` rows (the last one may be shorter). Everything is float32, and the
    result is the same for any ``chunk_size`` and OpenMP thread count.

    Args:
        grad_fn: maps a float32 array of shape ``(K, *x.shape[1:])`` to the gradient of a
            per-sample score with respect to it, same shape. The array it receives is a buffer that
            is overwritten for the next chunk: copy it if you keep it.
        x: inputs, shape ``(N, ...)``.
        baseline: same shape as ``x``, or anything numpy broadcasts to it (``x.shape[1:]``,
            ``(1, *x.shape[1:])``, a scalar).
        alphas: path points, shape ``(S,)``, usually in [0, 1].
        weights: quadrature weights, shape ``(S,)``.
        chunk_size: rows per ``grad_fn`` call, >= 1.
        progress: show a tqdm bar over chunks.
        pass_sample_index: call ``grad_fn(batch, sample_index)`` instead, where ``sample_index`` is
            the int64 ``(K,)`` array of the sample ``n`` each row belongs to (for per-sample class
            weights, say).

    Returns:
        float32 attributions, shaped like ``x``.

    Raises:
        InputError: mismatched shapes, empty or unequal ``alphas``/``weights``, ``chunk_size`` < 1,
            NaN/inf in the inputs, or a ``grad_fn`` result of the wrong shape or with NaN/inf.

    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    >>> S = 8
    >>> alphas = (np.arange(S) + 0.5) / S  # midpoint rule on [0, 1]
    >>> weights = np.full(S, 1.0 / S)
    >>> # grad of f(x) = 0.5 * sum(x**2) is x, so IG from baseline b is (x**2 - b**2) / 2
    >>> integrated_gradients_loop(lambda batch: batch, x, np.float32(1.0), alphas, weights, chunk_size=5)
    array([[0. , 1.5],
           [4. , 7.5]], dtype=float32)
    >>> # per-sample scores: sample n's score is (n + 1) * f, so its gradient is (n + 1) * x
    >>> scale = lambda batch, sample: (sample + 1)[:, None].astype(np.float32) * batch
    >>> integrated_gradients_loop(scale, x, np.float32(1.0), alphas, weights, chunk_size=5, pass_sample_index=True)
    array([[ 0. ,  1.5],
           [ 8. , 15. ]], dtype=float32)
    """
    if _ext is None:
        _warn_fallback_once()
        return integrated_gradients_reference(
            grad_fn, x, baseline, alphas, weights, chunk_size=chunk_size, progress=progress,
            pass_sample_index=pass_sample_index,
        )

    inp = _validate_ig_inputs(grad_fn, x, baseline, alphas, weights, chunk_size)
    n_samples, n_features = inp.x.shape
    steps = inp.alphas.size
    total = n_samples * steps
    feature_shape = inp.shape[1:]
    acc = np.zeros((n_samples, n_features), dtype=np.float32)
    buffer = np.empty((min(inp.chunk_size, total), n_features), dtype=np.float32)
    for start in _chunk_starts(total, inp.chunk_size, progress):
        rows = min(inp.chunk_size, total - start)
        batch = buffer[:rows]
        _ext.ig_fill_chunk(inp.x, inp.baseline, inp.alphas, start, batch)
        answer = _call_grad_fn(grad_fn, batch.reshape(rows, *feature_shape), start, steps, pass_sample_index)
        grads = _check_gradients(answer, (rows, *feature_shape), start, steps)
        _ext.ig_accumulate_chunk(grads, inp.weights, start, acc)
    _ext.ig_finalize(acc, inp.x, inp.baseline)
    return acc.reshape(inp.shape)
