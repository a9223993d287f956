"""Integrated Gradients through a CNN that opens with conv -> ReLU -> conv, without running those layers per step.

On the straight path ``x(a) = b + a (x - b)`` the first convolution's output is affine in ``a``, so
every unit of the first ReLU is on for one interval of the path points, and the second convolution
changes only where a unit switches (each unit at most once along the whole path). The C++ kernels of
``xaisdk._ext`` (``csrc/relu_path.h``) follow those switches: the second layer's pre-activations at
all S steps cost about two convolutions plus one column of the second layer per switching unit, and
going back, the gradients of all steps reach the first layer through one transposed convolution plus
one row per switching unit. Only the rest of the network (the "tail") runs once per path point.

This module is the loop itself, over an :class:`OpeningLayers` that says how to run the two
convolutions, their transposes and the tail's gradient: torch modules
(:mod:`xaisdk.torch_runtime.relu_path_ig`) or a bundle's arrays and ONNX Runtime graph
(:mod:`xaisdk.runtime.relu_path_bundle`). It imports numpy and the extension only.

>>> import numpy as np
>>> from xaisdk.runtime.conv_numpy import conv2d, conv2d_input
>>> class Tiny:  # conv(1 -> 2, 3x3) -> ReLU -> conv(2 -> 1, 3x3) -> sum (a linear tail)
...     input_shape, hidden_shape, output_shape = (1, 5, 5), (2, 3, 3), (1, 1, 1)
...     second_weight = np.ones((1, 2, 3, 3), np.float32); second_bias = None
...     second_stride, second_padding = (1, 1), (0, 0)
...     w1 = np.stack([np.ones((1, 3, 3)), -np.ones((1, 3, 3))]).astype(np.float32)
...     def first(self, images): return conv2d(images, self.w1, None, (1, 1), (0, 0)).reshape(len(images), -1)
...     def second_linear(self, hidden): return conv2d(hidden, self.second_weight, None, (1, 1), (0, 0)).reshape(len(hidden), -1)
...     def second_transpose(self, g):
...         return conv2d_input(g.reshape(-1, 1, 1, 1), self.second_weight, (3, 3), (1, 1), (0, 0)).reshape(len(g), -1)
...     def first_transpose(self, g): return conv2d_input(g.reshape(-1, 2, 3, 3), self.w1, (5, 5), (1, 1), (0, 0))
...     def tail_gradient(self, z2, weights): return np.broadcast_to(weights[:, None, :1], z2.shape).astype(np.float32)
>>> x, b = np.ones((1, 1, 5, 5), np.float32), np.zeros((1, 1, 5, 5), np.float32)
>>> attr = path_integrated_gradients(Tiny(), x, b, np.ones((1, 1), np.float32), np.array([0.5]), np.array([1.0]))
>>> float(attr.sum())  # S(x) - S(b) = 9 positions x 9 ones of the first unit (the second is off): 81
81.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

try:
    from xaisdk import _ext
except ImportError:  # not built: callers check `available()` and keep their plain loops
    _ext = None

__all__ = ["PASS_BYTES", "OpeningLayers", "available", "dense_backward", "dense_tail_gradient", "path_integrated_gradients",
           "rows_per_pass"]

PASS_BYTES = 64 << 20
"""About how many bytes of per-row buffers one kernel call holds (rows are chunked to fit)."""


def available() -> bool:
    """Whether the C++ kernels are built (without them there is no relu-path, only the plain loops)."""
    return _ext is not None


class OpeningLayers(Protocol):
    """A model split as ``tail(second(relu(first(x))))``; shapes are per image ``(C, H, W)``, arrays float32."""

    input_shape: tuple[int, int, int]
    hidden_shape: tuple[int, int, int]
    """The first layer's output (= the second's input)."""
    output_shape: tuple[int, int, int]
    """The second layer's output (= the tail's input)."""
    second_weight: np.ndarray
    """(C2, C1, KH, KW), C-contiguous."""
    second_bias: np.ndarray | None
    second_stride: tuple[int, int]
    second_padding: tuple[int, int]

    def first(self, images: np.ndarray) -> np.ndarray:
        """The first layer's pre-activations ``(N, E)`` of images ``(N, C, H, W)``."""
        ...

    def second_linear(self, hidden: np.ndarray) -> np.ndarray:
        """The second convolution without its bias, ``(M, F)``, of ``hidden`` ``(M, E)``."""
        ...

    def second_transpose(self, grad: np.ndarray) -> np.ndarray:
        """The second convolution's transpose ``(N, E)`` applied to ``grad`` ``(N, F)``."""
        ...

    def first_transpose(self, grad: np.ndarray) -> np.ndarray:
        """The first convolution's transpose ``(N, C, H, W)`` applied to ``grad`` ``(N, E)``."""
        ...

    def tail_gradient(self, z2: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Gradient ``(N, S, F)`` of ``weights[n] . tail(z2[n, s])`` w.r.t. ``z2`` ``(N, S, F)``."""
        ...


def rows_per_pass(requested: int, *row_sizes: int) -> int:
    """Rows (path points, window positions, curve rows) per kernel call: ``requested``, fewer when one
    row's buffers are large, so that memory stays about :data:`PASS_BYTES` whatever the step count,
    window count or image size.

    >>> rows_per_pass(2048, 10), rows_per_pass(2048, 1 << 20)
    (2048, 16)
    """
    per_row = 4 * max(1, *row_sizes)
    return max(1, min(int(requested), PASS_BYTES // per_row))


def dense_tail_gradient(z2: np.ndarray, weights: np.ndarray, hidden_weight: np.ndarray, hidden_bias: np.ndarray | None,
                        output_weight: np.ndarray) -> np.ndarray:
    """The gradient ``(N, S, F)`` w.r.t. ``z2`` of ``weights[n] . (W4 relu(W3 relu(z2) + b3) + b4)``, the tail
    ReLU -> Flatten -> Linear -> ReLU -> Linear, followed by hand: the hidden layer's mask changes only
    where a unit switches between consecutive steps (``_ext.relu_dense_backward``).

    >>> z2 = np.array([[[1.0, -1.0], [2.0, 1.0]]], np.float32)  # one image, two steps, F = 2
    >>> w3, w4 = np.eye(2, dtype=np.float32), np.array([[1.0, 2.0]], np.float32)
    >>> dense_tail_gradient(z2, np.ones((1, 1), np.float32), w3, None, w4).tolist()
    [[[1.0, 0.0], [1.0, 2.0]]]
    """
    n, steps, features = z2.shape
    z3 = np.maximum(z2.reshape(n * steps, features), 0.0) @ hidden_weight.T
    if hidden_bias is not None:
        z3 += hidden_bias
    u = np.asarray(weights, np.float32) @ output_weight  # d score / d relu(z3), the same at every step
    return dense_backward(z2, z3.reshape(n, steps, -1), u, hidden_weight)


def dense_backward(z2: np.ndarray, z3: np.ndarray, u: np.ndarray, hidden_weight: np.ndarray) -> np.ndarray:
    """``g2 = [z2 > 0] * W3^T ([z3 > 0] * u)`` (N, S, F) at every step, given the hidden pre-activations ``z3``
    (N, S, H) however they were computed (numpy here, torch's GEMM on the torch side) and ``u`` (N, H)."""
    return _ext.relu_dense_backward(z2, np.ascontiguousarray(z3, np.float32), np.ascontiguousarray(u, np.float32),
                                    np.ascontiguousarray(hidden_weight, np.float32))


def path_integrated_gradients(
    opening: OpeningLayers,
    x: np.ndarray,
    baseline: np.ndarray,
    weights: np.ndarray,
    alphas: np.ndarray,
    quadrature: np.ndarray,
    *,
    rows_per_pass_requested: int = 2048,
    checkpoint: Callable[[], None] | None = None,
) -> np.ndarray:
    """``(x - b) * sum_s quadrature[s] * dScore/dx(b + alphas[s] (x - b))`` for ``Score_n = weights[n] . logits``.

    ``x``, ``baseline``: float32 (N, C, H, W); ``weights``: (N, classes); ``alphas``, ``quadrature``:
    (S,) in any order. Images go through in groups of about ``rows_per_pass_requested`` path points; a
    path longer than that goes through in pieces of consecutive points whose sums add up, so memory
    does not grow with S. ``checkpoint``, if given, is called before every pass; what it raises stops the
    loop (a server's deadline or a client that went away stops a long path within one pass).
    """
    order = np.argsort(alphas, kind="stable")
    a_all = np.ascontiguousarray(np.asarray(alphas, np.float32)[order])
    w_all = np.ascontiguousarray(np.asarray(quadrature, np.float32)[order])
    units = int(np.prod(opening.hidden_shape))
    features = int(np.prod(opening.output_shape))
    rows = rows_per_pass(rows_per_pass_requested, units, features)
    steps_per_pass = max(1, min(len(a_all), rows))
    group = max(1, rows // steps_per_pass)
    out = np.empty(x.shape, np.float32)
    for start in range(0, len(x), group):
        sl = slice(start, min(start + group, len(x)))
        n = sl.stop - sl.start
        xs, bs = np.ascontiguousarray(x[sl], np.float32), np.ascontiguousarray(baseline[sl], np.float32)
        hidden = opening.first(np.concatenate([bs, xs]))
        z0 = np.ascontiguousarray(hidden[:n])
        dz = np.ascontiguousarray(hidden[n:] - hidden[:n])
        grad_sum = np.zeros(xs.shape, np.float32)
        for s0 in range(0, len(a_all), steps_per_pass):
            if checkpoint is not None:
                checkpoint()
            piece = slice(s0, s0 + steps_per_pass)
            grad_sum += _path_gradient_sum(opening, z0, dz, np.asarray(weights[sl], np.float32), a_all[piece], w_all[piece])
        out[sl] = (xs - bs) * grad_sum
    return out


def _path_gradient_sum(opening: OpeningLayers, z0: np.ndarray, dz: np.ndarray, weights: np.ndarray, a: np.ndarray,
                       w: np.ndarray) -> np.ndarray:
    """``sum_s w[s] dScore/dx`` at the path points ``a`` (sorted) for first-layer outputs ``z0 + a dz`` (N, E)."""
    n, steps = len(z0), len(a)
    geometry = (opening.hidden_shape, opening.output_shape, tuple(opening.second_stride), tuple(opening.second_padding))
    lo, hi = _ext.relu_active_ranges(z0, dz, a)
    on_at_start = ((lo == 0) & (hi > 0)).astype(np.float32)
    bases = opening.second_linear(np.concatenate([z0 * on_at_start, dz * on_at_start]).reshape(2 * n, *opening.hidden_shape))
    base_p, base_q = np.ascontiguousarray(bases[:n], np.float32), np.ascontiguousarray(bases[n:], np.float32)
    z2 = _ext.relu_conv_forward(z0, dz, lo, hi, a, opening.second_weight, opening.second_bias, base_p, base_q, *geometry)
    g2 = np.ascontiguousarray(opening.tail_gradient(z2, weights), np.float32)
    partial, total = _ext.relu_conv_backward(lo, hi, g2, w, opening.second_weight, *geometry)
    dense = opening.second_transpose(total)
    on_at_end = (hi == steps) & (lo < hi)
    unit_grad = partial + np.where(on_at_end, dense, np.float32(0.0))
    return opening.first_transpose(np.ascontiguousarray(unit_grad, np.float32))
