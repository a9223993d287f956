"""Gradient rules for pooling: average pooling as a grouped ConvTranspose, max pooling as a routing.

>>> sorted(POOLING_RULES)
['AveragePool', 'MaxPool']
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from xaisdk.deploy.grad_context import GradContext, conv_transpose_padding, node_attrs, refuse, window_geometry

__all__ = ["POOLING_RULES"]


def _pool_window(node: onnx.NodeProto, ctx: GradContext) -> tuple[list[int], list[int], list[int], list[int]]:
    attrs = node_attrs(node)
    kernel = list(attrs["kernel_shape"])
    strides, pads, dilations = window_geometry(node, ctx, kernel)
    if any(d != 1 for d in dilations):
        raise refuse(node, f"dilated pooling (dilations {dilations})")
    return kernel, strides, pads, dilations


def _ceil_is_floor(node: onnx.NodeProto, ctx: GradContext, kernel, strides, pads) -> None:
    if not int(node_attrs(node).get("ceil_mode", 0)):
        return
    sizes = ctx.static(node, node.input[0], range(2, 2 + len(kernel)))
    for i, size in enumerate(sizes):
        span = size + pads[i] + pads[i + len(kernel)] - kernel[i]
        if span % strides[i]:
            raise refuse(node, "ceil_mode with a partial last window")


def _average_pool(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    kernel, strides, pads, dilations = _pool_window(node, ctx)
    _ceil_is_floor(node, ctx, kernel, strides, pads)
    if any(pads) and not int(node_attrs(node).get("count_include_pad", 0)):
        raise refuse(node, "padded average pooling that excludes the padding from the count")
    x = node.input[0]
    channels = ctx.static(node, x, [1])[0]
    weight = np.full((channels, 1, *kernel), 1.0 / float(np.prod(kernel)), dtype=np.float32)
    extra = conv_transpose_padding(node, ctx, x, node.output[0], kernel, strides, pads, dilations)
    grad = ctx.w.op("ConvTranspose", [g, ctx.w.const(weight, hint="avgpool_weight")], strides=strides, pads=pads,
                    group=channels, output_padding=extra, kernel_shape=kernel)
    return {x: grad}


def _max_pool(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """Route each window's gradient to its first maximum (row-major), as torch's max-pool backward.

    Windows must not overlap (kernel == stride, no padding): the input is cropped to the covered
    area, cut into (Ho, Wo, kh*kw) windows, and ``ArgMax`` (first index on ties) picks the cell.
    """
    if len(node.output) > 1 and node.output[1]:
        raise refuse(node, "max pooling whose indices output is used")
    kernel, strides, pads, _ = _pool_window(node, ctx)
    if len(kernel) != 2 or kernel != strides or any(pads):
        raise refuse(node, f"max pooling with overlapping or padded windows (kernel {kernel}, stride {strides}, "
                            f"pads {pads}); supported: non-overlapping windows, kernel == stride, no padding")
    _ceil_is_floor(node, ctx, kernel, strides, pads)
    x = node.input[0]
    height, width = ctx.static(node, x, [2, 3])
    out_h, out_w = ctx.static(node, node.output[0], [2, 3])
    kh, kw = kernel
    w = ctx.w
    covered = x
    if (out_h * kh, out_w * kw) != (height, width):
        covered = w.op("Slice", [x, w.ints([0, 0]), w.ints([out_h * kh, out_w * kw]), w.ints([2, 3])])
    windows = w.op("Reshape", [covered, w.ints([0, 0, out_h, kh, out_w, kw])])
    windows = w.op("Transpose", [windows], perm=[0, 1, 2, 4, 3, 5])
    windows = w.op("Reshape", [windows, w.ints([0, 0, out_h, out_w, kh * kw])])
    first_max = w.op("ArgMax", [windows], axis=-1, keepdims=1, select_last_index=0)
    onehot = w.op("Cast", [w.op("Equal", [first_max, w.ints(np.arange(kh * kw))])], to=TensorProto.FLOAT)
    routed = w.op("Mul", [onehot, w.op("Unsqueeze", [g, w.ints([-1])])])
    routed = w.op("Reshape", [routed, w.ints([0, 0, out_h, out_w, kh, kw])])
    routed = w.op("Transpose", [routed], perm=[0, 1, 2, 4, 3, 5])
    routed = w.op("Reshape", [routed, w.ints([0, 0, out_h * kh, out_w * kw])])
    if (out_h * kh, out_w * kw) != (height, width):
        pad = [0, 0, 0, 0, 0, 0, height - out_h * kh, width - out_w * kw]
        routed = w.op("Pad", [routed, w.ints(pad)], mode="constant")
    return {x: routed}


POOLING_RULES = {"AveragePool": _average_pool, "MaxPool": _max_pool}
