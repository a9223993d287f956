"""The attribution methods written once against the :class:`~xaisdk.runtime.backend.Backend` protocol.

Each driver takes a backend (:class:`~xaisdk.torch_runtime.torch_backend.TorchBackend`, an ONNX Runtime
session, ...) and already-resolved numpy inputs: ``x`` (N, C, H, W) float32, per-sample class
weights ``weights`` (N, K) from :func:`~xaisdk.runtime.backend.class_weights` (``e_source - e_target``
attributes ``S_source - S_target``; ``e_source`` attributes ``S_source``) and baselines shaped like
``x`` (or anything that broadcasts to it). With the same arguments they return the numbers of the
torch reference methods in :mod:`xaisdk.attribution` (same defaults, quadrature and random draws).
At most ``chunk_size`` rows go to the backend per call, so memory does not grow with ``n_steps`` or
``n_samples``. Size-like options (``n_steps``, ``n_samples``, ``chunk_size``, ``window``, ``stride``,
the number of DeepSHAP baselines) are integers bounded by the :class:`~xaisdk.limits.Limits` in force
(:func:`xaisdk.limits.check_size`). This module does not import torch.

>>> import numpy as np
>>> from xaisdk.runtime.backend import class_weights
>>> backend = _LinearBackend(np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 0.0]]), input_shape=(1, 2, 2))
>>> x = np.ones((1, 1, 2, 2), np.float32)
>>> gradient(backend, x, class_weights([0], [1], 2)).ravel().tolist()
[1.0, 1.0, 3.0, 4.0]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np

from xaisdk.errors import InputError
from xaisdk.limits import check_size, current_limits
from xaisdk.methods.adaptive_quadrature import (
    AUTO,
    DEFAULT_MAX_STEPS,
    DEFAULT_TOLERANCE,
    AdaptiveIG,
    adaptive_integrated_gradients,
)
from xaisdk.methods.common import chunks, default_occlusion_window, occlusion_covers, reference_indices
from xaisdk.methods.quadrature import path_rule
from xaisdk.runtime import integrated_gradients_loop
from xaisdk.runtime.arrays import as_float32
from xaisdk.runtime.backend import Backend

__all__ = [
    "convergence_delta",
    "deeplift",
    "deepshap",
    "expected_gradients",
    "grad_x_input",
    "gradient",
    "integrated_gradients",
    "integrated_gradients_adaptive",
    "occlusion",
    "score",
]

Attribution = np.ndarray | tuple[np.ndarray, np.ndarray]
_T = TypeVar("_T")


# --- argument checks ----------------------------------------------------------------------------


def _images(backend: Backend, x: object, name: str = "x") -> np.ndarray:
    """``x`` as a finite float32 batch shaped ``(N, *backend.input_shape)``, N >= 1."""
    array = as_float32(x, name)
    shape = tuple(backend.input_shape)
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape:
        raise InputError(f"{name}: expected shape (N, {', '.join(map(str, shape))}) for this model, got {array.shape}")
    if len(array) == 0:
        raise InputError(f"{name}: the batch is empty")
    return array


def _weights(backend: Backend, weights: object, n: int) -> np.ndarray:
    array = as_float32(weights, "weights")
    if array.shape != (n, backend.num_classes):
        raise InputError(
            f"weights: expected shape ({n}, {backend.num_classes}) (one class-weight row per input, see "
            f"xaisdk.runtime.backend.class_weights), got {array.shape}"
        )
    return array


def _baseline(baseline: object, x: np.ndarray, name: str = "baseline") -> np.ndarray:
    array = as_float32(baseline, name)
    try:
        return np.ascontiguousarray(np.broadcast_to(array, x.shape))
    except ValueError:
        raise InputError(f"{name}: expected the shape of x {x.shape} (or one that broadcasts to it), got {array.shape}") from None


def _chunk_size(value: object) -> int:
    """Rows per backend call: an integer in [1, ``Limits.chunk_size``] (see :func:`xaisdk.limits.check_size`)."""
    return check_size(value, "chunk_size")


def _resolve(backend: Backend, x: object, weights: object, baseline: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = _images(backend, x)
    return xs, _weights(backend, weights, len(xs)), _baseline(baseline, xs)


def _bar(pieces: Sequence[_T], desc: str, progress: bool) -> Iterable[_T]:
    """``pieces``, under a tqdm bar when ``progress`` and there is more than one (as the torch methods)."""
    if not progress or len(pieces) < 2:
        return pieces
    from tqdm.auto import tqdm

    return tqdm(pieces, desc=desc, unit="chunk")


def _per_sample(index: np.ndarray, ndim: int) -> np.ndarray:
    """``index`` shaped to broadcast over the image axes of a batch with ``ndim`` dimensions."""
    return index.reshape((-1,) + (1,) * (ndim - 1))


# --- scores and completeness ---------------------------------------------------------------------


def score(backend: Backend, x: np.ndarray, weights: np.ndarray, *, chunk_size: int = 256) -> np.ndarray:
    """The attributed score ``S(x[n]) = sum_k weights[n, k] * logits[n, k]`` per input, float32 ``(N,)``.

    >>> backend = _LinearBackend(np.array([[1.0, 1.0], [0.0, 2.0]]))
    >>> score(backend, np.array([[[[1.0, 3.0]]]], np.float32), np.array([[1.0, -1.0]], np.float32)).tolist()
    [-2.0]
    """
    xs = _images(backend, x)
    w = _weights(backend, weights, len(xs))
    out = np.empty(len(xs), np.float32)
    for sl in chunks(len(xs), _chunk_size(chunk_size)):
        out[sl] = (np.asarray(backend.logits(xs[sl]), np.float32) * w[sl]).sum(axis=1)
    return out


def convergence_delta(
    backend: Backend, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray, attr: np.ndarray, *, chunk_size: int = 256
) -> np.ndarray:
    """Completeness error per input: ``sum(attr[n]) - (S(x[n]) - S(baseline[n]))``, float32 ``(N,)``.

    >>> backend = _LinearBackend(np.array([[1.0, 2.0], [0.0, 0.0]]))
    >>> x, w = np.ones((1, 1, 1, 2), np.float32), np.array([[1.0, 0.0]], np.float32)
    >>> convergence_delta(backend, x, 0.0, w, np.array([[[[1.0, 1.5]]]], np.float32)).tolist()
    [-0.5]
    """
    xs, w, base = _resolve(backend, x, weights, baseline)
    attr = as_float32(attr, "attr")
    if attr.shape != xs.shape:
        raise InputError(f"attr: expected the shape of x {xs.shape}, got {attr.shape}")
    total = attr.reshape(len(xs), -1).sum(axis=1)
    return total - (score(backend, xs, w, chunk_size=chunk_size) - score(backend, base, w, chunk_size=chunk_size))


def _with_delta(
    attr: np.ndarray, backend: Backend, x: np.ndarray, base: np.ndarray, w: np.ndarray, chunk_size: int, wanted: bool
) -> Attribution:
    return (attr, convergence_delta(backend, x, base, w, attr, chunk_size=chunk_size)) if wanted else attr


# --- gradients ----------------------------------------------------------------------------------


def gradient(backend: Backend, x: np.ndarray, weights: np.ndarray, *, chunk_size: int = 256) -> np.ndarray:
    """Gradient of the weighted score w.r.t. the input (as :func:`xaisdk.attribution.gradient`).

    >>> backend = _LinearBackend(np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]))
    >>> gradient(backend, np.ones((1, 1, 1, 3), np.float32), np.array([[1.0, -1.0]], np.float32)).ravel().tolist()
    [1.0, 1.0, 3.0]
    """
    xs = _images(backend, x)
    w = _weights(backend, weights, len(xs))
    grads = np.empty_like(xs)
    for sl in chunks(len(xs), _chunk_size(chunk_size)):
        grads[sl] = backend.score_gradient(xs[sl], w[sl])[1]
    return grads


def grad_x_input(backend: Backend, x: np.ndarray, weights: np.ndarray, *, chunk_size: int = 256) -> np.ndarray:
    """Input times the gradient of the weighted score (as :func:`xaisdk.attribution.grad_x_input`).

    >>> backend = _LinearBackend(np.array([[2.0, 0.0], [0.0, 1.0]]))
    >>> grad_x_input(backend, np.array([[[[3.0, 4.0]]]], np.float32), np.array([[1.0, -1.0]], np.float32)).ravel().tolist()
    [6.0, -4.0]
    """
    xs = _images(backend, x)
    return xs * gradient(backend, xs, weights, chunk_size=chunk_size)


def integrated_gradients(
    backend: Backend,
    x: np.ndarray,
    weights: np.ndarray,
    baseline: np.ndarray | float,
    *,
    n_steps: int | str = 200,
    rule: str | None = None,
    tolerance: float | None = None,
    max_steps: int | None = None,
    chunk_size: int = 256,
    progress: bool = False,
    return_convergence_delta: bool = False,
) -> Attribution:
    """Integrated Gradients from ``baseline`` to ``x`` (as :func:`xaisdk.attribution.integrated_gradients`).

    ``attr = (x - b) * sum_s w_s dS/dx(b + a_s (x - b))`` with the quadrature ``rule`` of
    :func:`~xaisdk.methods.quadrature.path_rule` (default ``"riemann_middle"``), run by the chunked loop of
    :func:`xaisdk.runtime.integrated_gradients_loop` (``chunk_size`` path points per backend call).
    ``n_steps="auto"`` instead refines each input until its completeness error is within
    ``tolerance`` (default 1%) of ``|S(x) - S(b)|`` or ``max_steps`` (default 512) points are used
    (:func:`integrated_gradients_adaptive`, which also says how many points each input took).
    With ``return_convergence_delta`` also returns ``sum(attr) - (S(x) - S(b))`` per input.

    >>> backend = _LinearBackend(np.array([[1.0, 2.0], [0.0, 0.0]]))
    >>> x, w = np.array([[[[2.0, 1.0]]]], np.float32), np.array([[1.0, 0.0]], np.float32)
    >>> attr, delta = integrated_gradients(backend, x, w, 0.0, n_steps=8, return_convergence_delta=True)
    >>> attr.ravel().tolist(), delta.tolist()
    ([2.0, 2.0], [0.0])
    >>> integrated_gradients(backend, x, w, 0.0, n_steps="auto").ravel().tolist()
    [2.0, 2.0]
    """
    if isinstance(n_steps, str) and n_steps == AUTO:
        if rule is not None:
            raise InputError(f"rule: n_steps='auto' places its own points (nested trapezoid pieces); rule={rule!r} "
                             "applies to a fixed n_steps")
        result = integrated_gradients_adaptive(backend, x, weights, baseline, tolerance=tolerance, max_steps=max_steps,
                                               chunk_size=chunk_size, progress=progress)
        return (result.attributions, result.convergence_delta) if return_convergence_delta else result.attributions
    for name, value in (("tolerance", tolerance), ("max_steps", max_steps)):
        if value is not None:
            raise InputError(f"{name}: applies to n_steps='auto' only (got n_steps={n_steps!r})")
    xs, w, base = _resolve(backend, x, weights, baseline)
    alphas, quadrature = path_rule("riemann_middle" if rule is None else rule, n_steps)
    fused = getattr(backend, "fused_integrated_gradients", None)
    if fused is not None and len(xs):
        # A backend's fused path (relu-path kernels, GPU loops) does all steps of a group of images in
        # one call; it answers None for models it cannot take, and the chunked loop below runs instead.
        group = max(1, _chunk_size(chunk_size) // 4)
        pieces = [fused(xs[sl], base[sl], w[sl], alphas, quadrature) for sl in _bar(list(chunks(len(xs), group)), "IG", progress)]
        if all(piece is not None for piece in pieces):
            return _with_delta(np.concatenate(pieces), backend, xs, base, w, chunk_size, return_convergence_delta)

    def grad_fn(batch: np.ndarray, sample: np.ndarray) -> np.ndarray:
        return backend.score_gradient(batch, w[sample])[1]

    attr = integrated_gradients_loop(
        grad_fn, xs, base, alphas, quadrature, chunk_size=_chunk_size(chunk_size), progress=progress, pass_sample_index=True
    )
    return _with_delta(attr, backend, xs, base, w, chunk_size, return_convergence_delta)


def integrated_gradients_adaptive(
    backend: Backend,
    x: np.ndarray,
    weights: np.ndarray,
    baseline: np.ndarray | float,
    *,
    tolerance: float | None = None,
    max_steps: int | None = None,
    chunk_size: int = 256,
    progress: bool = False,
) -> AdaptiveIG:
    """Integrated Gradients with as many path points per input as ``tolerance`` needs (see
    :mod:`xaisdk.methods.adaptive_quadrature`): the attributions, the points used, ``S(x)`` and
    ``S(b)`` (from the path's ends, so no extra forward pass), the error bound reached and whether
    it met ``tolerance`` (default 0.01) within ``max_steps`` points (default 512, or ``Limits.n_steps`` when lower).

    The points go to ``backend.score_gradient`` in batches of ``chunk_size`` rows (each round's points of
    all inputs together). A backend's fused IG path (the relu-path kernels) is not used: it pays off
    when one call covers many points of one image (IG-200), while a round here adds a few points per
    image, where one batched gradient call is faster (digits CNN, 16 images to 1%: 1.8 ms per image
    this way, 4.1 ms through the kernels one point at a time).

    >>> backend = _LinearBackend(np.array([[1.0, 2.0], [0.0, 0.0]]))
    >>> x, w = np.array([[[[2.0, 1.0]]]], np.float32), np.array([[1.0, 0.0]], np.float32)
    >>> result = integrated_gradients_adaptive(backend, x, w, 0.0)
    >>> result.attributions.ravel().tolist(), result.steps.tolist(), result.baseline_scores.tolist()
    ([2.0, 2.0], [5], [0.0])
    """
    xs, w, base = _resolve(backend, x, weights, baseline)

    def score_grad(batch: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return backend.score_gradient(batch, w[sample])

    return adaptive_integrated_gradients(
        score_grad, xs, base, tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
        max_steps=min(DEFAULT_MAX_STEPS, current_limits().n_steps) if max_steps is None else max_steps,
        chunk_size=_chunk_size(chunk_size),
        progress=progress,
    )


def expected_gradients(
    backend: Backend,
    x: np.ndarray,
    weights: np.ndarray,
    references: np.ndarray,
    reference_labels: np.ndarray | None = None,
    target: np.ndarray | None = None,
    *,
    n_samples: int = 200,
    seed: int = 0,
    chunk_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Expected Gradients ``E_{r, a ~ U(0,1)} [(x - r) * dS/dx(r + a (x - r))]`` by Monte Carlo
    (as :func:`xaisdk.attribution.expected_gradients`, with the same draws for the same ``seed``).

    ``references`` (M, C, H, W); when ``reference_labels`` (M,) and the inputs' ``target`` classes
    (N,) are both given, each input's references come from its target class only.

    >>> backend = _LinearBackend(np.array([[1.0, -1.0], [0.0, 0.0]]))
    >>> x, w = np.array([[[[1.0, 2.0]]]], np.float32), np.array([[1.0, 0.0]], np.float32)
    >>> expected_gradients(backend, x, w, np.zeros((3, 1, 1, 2), np.float32), n_samples=10).ravel().tolist()
    [1.0, -2.0]
    """
    xs = _images(backend, x)
    w = _weights(backend, weights, len(xs))
    refs = _images(backend, references, "references")
    labels = _labels(reference_labels, len(refs), "reference_labels")
    targets = _labels(target, len(xs), "target")
    n_samples = check_size(n_samples, "n_samples")
    rng = np.random.default_rng(seed)
    ref_index = reference_indices(labels, targets, len(xs), len(refs), n_samples, rng)
    alphas = rng.uniform(0.0, 1.0, size=(len(xs), n_samples)).astype(np.float32)
    acc = np.zeros_like(xs)
    pieces = list(chunks(len(xs) * n_samples, _chunk_size(chunk_size)))
    for sl in _bar(pieces, "expected gradients", progress):
        sample, k = np.divmod(np.arange(sl.start, sl.stop), n_samples)
        start = refs[ref_index[sample, k]]
        diff = xs[sample] - start
        grads = backend.score_gradient(start + _per_sample(alphas[sample, k], xs.ndim) * diff, w[sample])[1]
        np.add.at(acc, sample, diff * grads)
    return acc / np.float32(n_samples)


def _labels(value: object, n: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name}: expected {n} integer class indices, got {array.dtype} of shape {array.shape}")
    return array.astype(np.int64)


# --- DeepLIFT -----------------------------------------------------------------------------------


def _deeplift_pairs(
    backend: Backend, x: np.ndarray, base: np.ndarray, w: np.ndarray, chunk_size: int, progress: bool, desc: str
) -> np.ndarray:
    """Rescale-rule attributions ``(x - base) * m`` for paired rows of ``x`` and ``base``."""
    if not backend.supports_deeplift:
        reason = getattr(backend, "deeplift_unavailable", None)  # the backend's own account of why, if it has one
        why = reason or ("the model has layers the rescale rule does not cover "
                         "(max pooling, softmax, normalization across features)")
        hint = "" if "integrated" in why else "; use integrated_gradients instead"
        raise InputError(f"{desc}: the {backend.name} backend offers no DeepLIFT: {why}{hint}")
    attr = np.empty_like(x)
    pieces = list(chunks(len(x), _chunk_size(chunk_size)))
    for sl in _bar(pieces, desc, progress):
        attr[sl] = (x[sl] - base[sl]) * backend.deeplift_multipliers(x[sl], base[sl], w[sl])
    return attr


def deeplift(
    backend: Backend,
    x: np.ndarray,
    weights: np.ndarray,
    baseline: np.ndarray | float,
    *,
    chunk_size: int = 256,
    progress: bool = False,
    return_convergence_delta: bool = False,
) -> Attribution:
    """DeepLIFT (rescale rule) relative to ``baseline`` (as :func:`xaisdk.attribution.deeplift`):
    ``(x - b) * backend.deeplift_multipliers(x, b, weights)``. Raises :class:`~xaisdk.InputError` when
    the backend's model has no DeepLIFT (``backend.supports_deeplift`` is False).

    >>> backend = _LinearBackend(np.array([[1.0, 2.0], [0.0, 0.0]]))
    >>> x, w = np.array([[[[2.0, 1.0]]]], np.float32), np.array([[1.0, 0.0]], np.float32)
    >>> deeplift(backend, x, w, 0.0).ravel().tolist()
    [2.0, 2.0]
    """
    xs, w, base = _resolve(backend, x, weights, baseline)
    attr = _deeplift_pairs(backend, xs, base, w, chunk_size, progress, "deeplift")
    return _with_delta(attr, backend, xs, base, w, chunk_size, return_convergence_delta)


def deepshap(
    backend: Backend,
    x: np.ndarray,
    weights: np.ndarray,
    baselines: np.ndarray,
    *,
    chunk_size: int = 256,
    progress: bool = False,
    return_convergence_delta: bool = False,
) -> Attribution:
    """DeepSHAP: DeepLIFT averaged over baselines ``(N, M, C, H, W)`` per input or ``(M, C, H, W)``
    shared (as :func:`xaisdk.attribution.deepshap`). The convergence delta is the mean over the M
    baselines of each pair's completeness error.

    >>> backend = _LinearBackend(np.array([[1.0, 1.0], [0.0, 0.0]]))
    >>> x, w = np.ones((1, 1, 1, 2), np.float32), np.array([[1.0, 0.0]], np.float32)
    >>> deepshap(backend, x, w, np.array([[[[0.0, 0.0]]], [[[0.5, 1.0]]]], np.float32)).ravel().tolist()
    [0.75, 0.5]
    """
    xs = _images(backend, x)
    w = _weights(backend, weights, len(xs))
    refs = as_float32(baselines, "baselines")
    if refs.ndim == xs.ndim:
        refs = np.broadcast_to(refs[None], (len(xs), *refs.shape))
    if refs.ndim != xs.ndim + 1 or refs.shape[0] != len(xs) or refs.shape[2:] != xs.shape[1:] or refs.shape[1] == 0:
        image = ", ".join(map(str, xs.shape[1:]))
        raise InputError(f"baselines: expected (M, {image}) or ({len(xs)}, M, {image}) with M >= 1, got {refs.shape}")
    n_refs = check_size(refs.shape[1], "baselines (per input)", cap="n_baselines")
    flat_x = np.repeat(xs, n_refs, axis=0)
    flat_b = np.ascontiguousarray(refs.reshape(-1, *xs.shape[1:]))
    flat_w = np.repeat(w, n_refs, axis=0)
    attr = _deeplift_pairs(backend, flat_x, flat_b, flat_w, chunk_size, progress, "deepshap")
    per_input = attr.reshape(len(xs), n_refs, *xs.shape[1:]).mean(axis=1)
    if not return_convergence_delta:
        return per_input
    delta = convergence_delta(backend, flat_x, flat_b, flat_w, attr, chunk_size=chunk_size)
    return per_input, delta.reshape(len(xs), n_refs).mean(axis=1)


# --- occlusion ----------------------------------------------------------------------------------


def occlusion(
    backend: Backend,
    x: np.ndarray,
    weights: np.ndarray,
    baseline: np.ndarray | float,
    *,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    chunk_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Occlusion (as :func:`xaisdk.attribution.occlusion`): each pixel gets the mean, over the windows
    covering it, of ``S(x) - S(x with the window replaced by the baseline)``; all channels together.
    Without ``window``, :func:`~xaisdk.methods.common.default_occlusion_window` sizes it to the image
    and its stride (window 1 is the GANMEX paper's Occlusion-1); a given window without ``stride`` slides by 1.

    >>> backend = _LinearBackend(np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]), input_shape=(1, 2, 2))
    >>> x, w = np.ones((1, 1, 2, 2), np.float32), np.array([[1.0, -1.0]], np.float32)
    >>> occlusion(backend, x, w, 0.0).ravel().tolist()
    [1.0, 2.0, 3.0, 4.0]
    >>> occlusion(backend, x, w, 0.0, window=(1, 2)).ravel().tolist()  # each row's window drops its sum
    [3.0, 3.0, 7.0, 7.0]
    """
    xs, w, base = _resolve(backend, x, weights, baseline)
    if xs.ndim != 4:
        raise InputError(f"x: occlusion needs images (N, C, H, W), got shape {xs.shape}")
    if window is None:
        window, default_stride = default_occlusion_window(*xs.shape[2:])
        stride = default_stride if stride is None else stride
    elif stride is None:
        stride = 1
    rows_in, cols_in = occlusion_covers(*xs.shape[2:], window, stride)  # (positions, H), (positions, W)
    n_pos = len(rows_in) * len(cols_in)
    size = _chunk_size(chunk_size)
    reference = score(backend, xs, w, chunk_size=size)
    drops = np.empty(len(xs) * n_pos, np.float32)  # flat (sample, position)
    occluded = getattr(backend, "occluded_scores", None)  # a backend's own fast path, None when it has none
    fast = occluded(xs, base, w, rows_in, cols_in) if occluded is not None and len(xs) else None
    if fast is not None:
        drops[:] = (reference[:, None] - fast.reshape(len(xs), n_pos)).ravel()
    for sl in [] if fast is not None else _bar(list(chunks(len(drops), size)), "occlusion", progress):
        sample, pos = np.divmod(np.arange(sl.start, sl.stop), n_pos)
        masks = (rows_in[pos // len(cols_in)][:, :, None] * cols_in[pos % len(cols_in)][:, None, :])[:, None]
        occluded = xs[sample] * (1 - masks) + base[sample] * masks
        drops[sl] = reference[sample] - score(backend, occluded, w[sample], chunk_size=size)
    # sum over positions of drop * mask: the masks are outer products of a row and a column cover
    total = np.einsum("rh,nrc,cw->nhw", rows_in, drops.reshape(len(xs), len(rows_in), len(cols_in)), cols_in)
    counts = rows_in.sum(0)[:, None] * cols_in.sum(0)[None, :]  # windows covering each pixel
    return np.ascontiguousarray(np.broadcast_to((total / counts)[:, None], xs.shape), dtype=np.float32)


# --- a tiny torch-free backend for the examples above -------------------------------------------


class _LinearBackend:
    """``logits = x.reshape(N, -1) @ matrix.T`` (images (1, 1, D) by default): a numpy Backend for the examples."""

    name = "linear"
    value_range = (0.0, 1.0)
    supports_deeplift = True
    has_generator = False

    def __init__(self, matrix: np.ndarray, input_shape: tuple[int, ...] | None = None) -> None:
        self.matrix = np.asarray(matrix, np.float32)
        self.num_classes, features = self.matrix.shape
        self.input_shape = (1, 1, features) if input_shape is None else tuple(input_shape)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ self.matrix.T

    def score_gradient(self, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = (self.logits(x) * weights).sum(1)
        return scores, (weights @ self.matrix).reshape(x.shape).astype(np.float32)

    def deeplift_multipliers(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self.score_gradient(x, weights)[1]  # for a linear model the multipliers are the gradient

    def generate(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        raise InputError("no generator")
