"""2-D convolution and its transpose in numpy (groups 1, dilation 1, zero padding), for torch-free runtimes.

The relu-path of a bundle (:mod:`xaisdk.runtime.relu_path_bundle`) runs its two opening
convolutions a few times per request (not once per path point), so a window view and one matrix
product (BLAS) per call are enough. Both functions match ``torch.nn.functional.conv2d`` and
``torch.nn.grad.conv2d_input`` (tested against them).

>>> import numpy as np
>>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
>>> w = np.ones((1, 1, 2, 2), np.float32)
>>> conv2d(x, w, None, (2, 2), (0, 0))[0, 0].tolist()
[[10.0, 18.0], [42.0, 50.0]]
>>> conv2d_input(np.ones((1, 1, 2, 2), np.float32), w, (4, 4), (2, 2), (0, 0))[0, 0].tolist()[0]
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["PIECE_BYTES", "conv2d", "conv2d_input", "conv_output_size"]


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis.

    >>> conv_output_size(28, 6, 2, 2)
    14
    """
    return (size + 2 * padding - kernel) // stride + 1


PIECE_BYTES = 64 << 20
"""About how many bytes of window matrix one step of :func:`conv2d` / :func:`conv2d_input` holds (images in pieces)."""


def _images_per_piece(window_values: int, accumulate: type) -> int:
    return max(1, PIECE_BYTES // max(1, window_values * np.dtype(accumulate).itemsize))


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
           padding: tuple[int, int], *, accumulate: type = np.float32) -> np.ndarray:
    """``conv2d(x, weight, bias)`` for ``x`` (N, C, H, W) and ``weight`` (O, C, KH, KW): float32 (N, O, Ho, Wo),
    its sums taken in ``accumulate`` (``np.float64``: correctly rounded but for a last rounding to float32)."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    group = _images_per_piece(ho * wo * c * kh * kw, accumulate)
    if n > group:  # the window matrix of all images at once could be large: a few images at a time
        return np.concatenate([conv2d(x[i:i + group], weight, bias, stride, padding, accumulate=accumulate)
                               for i in range(0, n, group)])
    padded = np.pad(np.asarray(x, accumulate), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :ho, :wo]
    cols = np.ascontiguousarray(windows.transpose(0, 2, 3, 1, 4, 5)).reshape(n * ho * wo, c * kh * kw)
    out = cols @ np.asarray(weight, accumulate).reshape(o, -1).T
    if bias is not None:
        out += bias
    return np.ascontiguousarray(out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2), np.float32)


def conv2d_input(grad: np.ndarray, weight: np.ndarray, input_size: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], *, accumulate: type = np.float32) -> np.ndarray:
    """The transpose of :func:`conv2d` (its gradient w.r.t. the input): ``grad`` (N, O, Ho, Wo) to float32 (N, C, H, W),
    with ``(H, W) = input_size`` (a strided convolution may have dropped the last rows or columns), its sums
    taken in ``accumulate``."""
    n, o, ho, wo = grad.shape
    _, c, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    h, w = input_size
    group = _images_per_piece(ho * wo * c * kh * kw, accumulate)
    if n > group:
        return np.concatenate([conv2d_input(grad[i:i + group], weight, input_size, stride, padding, accumulate=accumulate)
                               for i in range(0, n, group)])
    cols = (np.ascontiguousarray(np.asarray(grad, accumulate).transpose(0, 2, 3, 1)).reshape(n * ho * wo, o)
            @ np.asarray(weight, accumulate).reshape(o, c * kh * kw))
    cols = cols.reshape(n, ho, wo, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)  # (N, C, KH, KW, Ho, Wo)
    padded = np.zeros((n, c, max(h + 2 * ph, (ho - 1) * sh + kh), max(w + 2 * pw, (wo - 1) * sw + kw)), accumulate)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cols[:, :, i, j]
    return np.ascontiguousarray(padded[:, :, ph:ph + h, pw:pw + w], np.float32)
