"""A stride-1 transposed convolution written as a plain ``Conv``, for gradient graphs that run fast.

The gradient of a convolution with respect to its input is a transposed convolution, and so is the
routing of max and average pooling. ONNX Runtime's CPU ``ConvTranspose`` is a GEMM followed by a
col2im pass, while its ``Conv`` runs blocked (NCHWc) kernels: a 3x3 stride-1 gradient of 64 channels
at 56 px (batch 27) takes 28 ms as ``ConvTranspose`` and 18.5 ms as ``Conv``. With stride 1 along
every axis the two are the same sum: the ``Conv`` takes the kernel flipped along every axis, its
input and output channels swapped within each group, and the padding mirrored (any dilation).

Strided transposed convolutions keep ``ConvTranspose``. Their sub-pixel form (one stride-1 ``Conv``
per output phase, stacked as channels and interleaved by ``DepthToSpace``) was measured slower on
ONNX Runtime's CPU provider: the interleave alone costs more than the whole ``ConvTranspose``
(ResNet's 1x1 stride-2 shortcut gradient: 4.3 ms as ``ConvTranspose``, 31.7 ms in sub-pixel form).

The new kernel is built from the original weight by ``Reshape``/``Gather``/``Transpose`` on the
weight tensor, constant-folded by the runtime when the session loads, so the bundle does not store a
second copy of the weights.

>>> conv_padding(kernel=3, dilation=1, pad_begin=1, pad_end=1, output_padding=0)
(1, 1)
>>> conv_padding(kernel=3, dilation=2, pad_begin=5, pad_end=0, output_padding=0) is None  # padding past the kernel
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xaisdk.deploy.grad_context import GraphWriter

__all__ = ["conv_padding", "transposed_convolution"]


def conv_padding(*, kernel: int, dilation: int, pad_begin: int, pad_end: int, output_padding: int) -> tuple[int, int] | None:
    """The (begin, end) padding of the ``Conv`` that equals a stride-1 ``ConvTranspose`` along one axis, or
    None when the transposed convolution crops more than the kernel spans (a negative padding).

    ``ConvTranspose`` computes ``out[l] = sum_u g[l + b - d u] W[u]``; with ``u = k - 1 - j`` that is a
    correlation of ``g`` with the flipped kernel, shifted by ``d (k - 1) - b``.
    """
    span = dilation * (kernel - 1)
    pads = (span - pad_begin, span + output_padding - pad_end)
    return None if min(pads) < 0 else pads


def transposed_convolution(w: GraphWriter, g: str, weight: str, *, weight_shape: Sequence[int], strides: Sequence[int],
                           pads: Sequence[int], dilations: Sequence[int], output_padding: Sequence[int], group: int) -> str:
    """``ConvTranspose(g, weight)`` (no bias): a ``Conv`` where every stride is 1, else ``ConvTranspose`` itself.

    ``weight_shape``: the static ``(C_in, C_out / group, *kernel)`` of ``weight``; the other arguments
    are ``ConvTranspose``'s attributes.

    >>> w = GraphWriter({"g", "weight"})
    >>> args = dict(weight_shape=(4, 3, 3, 3), pads=[1, 1, 1, 1], dilations=[1, 1], output_padding=[0, 0], group=1)
    >>> _ = transposed_convolution(w, "g", "weight", strides=[1, 1], **args)
    >>> [n.op_type for n in w.nodes][-1]
    'Conv'
    >>> _ = transposed_convolution(w, "g", "weight", strides=[2, 2], **args)
    >>> [n.op_type for n in w.nodes][-1]
    'ConvTranspose'
    """
    kernel = [int(k) for k in weight_shape[2:]]
    rank = len(kernel)
    conv_pads = [conv_padding(kernel=kernel[a], dilation=int(dilations[a]), pad_begin=int(pads[a]),
                              pad_end=int(pads[a + rank]), output_padding=int(output_padding[a])) for a in range(rank)]
    if any(int(s) != 1 for s in strides) or any(p is None for p in conv_pads):
        return w.op("ConvTranspose", [g, weight], strides=list(strides), pads=list(pads), dilations=list(dilations),
                    group=group, output_padding=list(output_padding), kernel_shape=kernel)
    c_in, c_out_group = int(weight_shape[0]), int(weight_shape[1])
    cells = int(np.prod(kernel))
    flat = w.op("Reshape", [weight, w.ints([c_in, c_out_group, cells])])
    flipped = w.op("Gather", [flat, w.const(np.arange(cells - 1, -1, -1), np.int64, "flip")], axis=2)
    grouped = w.op("Reshape", [flipped, w.ints([group, c_in // group, c_out_group, *kernel])])
    swapped = w.op("Transpose", [grouped], perm=[0, 2, 1, *range(3, 3 + rank)])
    new_weight = w.op("Reshape", [swapped, w.ints([c_out_group * group, c_in // group, *kernel])])
    return w.op("Conv", [g, new_weight], group=group, kernel_shape=kernel, strides=[1] * rank,
                dilations=[int(d) for d in dilations], pads=[*(p[0] for p in conv_pads), *(p[1] for p in conv_pads)])
