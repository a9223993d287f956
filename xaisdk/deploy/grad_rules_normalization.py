"""Gradient rules for normalization across features: LayerNormalization (opset 17),
InstanceNormalization (which torch's exporter also uses for GroupNorm, on a reshaped tensor) and
GroupNormalization (opset 21, per-channel scale and bias; ONNX's checker rejects opset 18's
per-group version as deprecated).

Both normalize ``x`` over a set of axes, ``xhat = (x - mean) / sqrt(var + eps)``, then scale (and
shift) it with constants. With ``gh = g * scale`` the input gradient is

``dx = (gh - mean(gh) - xhat * mean(gh * xhat)) / sqrt(var + eps)``

(means over the normalized axes); the statistics are recomputed in the backward graph with
``ReduceSum`` (its axes are an input from opset 13 on, unlike ``ReduceMean``'s before opset 18).
Scale and bias must be constants: the gradient is taken with respect to ``x`` only. DeepLIFT's
rescale rule does not cover these ops (the table in :mod:`xaisdk.methods.deeplift_rules` refuses them).

>>> sorted(NORMALIZATION_RULES)
['GroupNormalization', 'InstanceNormalization', 'LayerNormalization']
"""

from __future__ import annotations

import numpy as np
import onnx

from xaisdk.deploy.grad_context import GradContext, Rule, node_attrs, refuse

__all__ = ["NORMALIZATION_RULES"]


def _normalized_grad(ctx: GradContext, x: str, gh: str, axes: list[int], count: int, eps: float) -> str:
    """The input gradient of ``(x - mean) / sqrt(var + eps)`` over ``axes`` (``count`` elements) for ``gh``."""
    w = ctx.w
    axes_name = w.ints(axes, "axes")

    def mean(t: str) -> str:
        return w.op("Div", [w.op("ReduceSum", [t, axes_name], keepdims=1), w.const(count)])

    centred = w.op("Sub", [x, mean(x)])
    inv_std = w.op("Reciprocal", [w.op("Sqrt", [w.op("Add", [mean(w.op("Mul", [centred, centred])), w.const(eps)])])])
    xhat = w.op("Mul", [centred, inv_std])
    inner = w.op("Sub", [w.op("Sub", [gh, mean(gh)]), w.op("Mul", [xhat, mean(w.op("Mul", [gh, xhat]))])])
    return w.op("Mul", [inner, inv_std])


def _constant_params(ctx: GradContext, node: onnx.NodeProto) -> None:
    if any(name and name in ctx.active for name in node.input[1:3]):
        raise refuse(node, "its scale or bias depends on the input (only the gradient with respect to x is built)")


def _layer_norm(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    if any(node.output[1:]):
        raise refuse(node, "layer normalization whose mean or inverse standard deviation output is used")
    _constant_params(ctx, node)
    attrs = node_attrs(node)
    rank = len(ctx.shapes.of(node.input[0]))
    axis = int(attrs.get("axis", -1)) % rank
    gh = ctx.w.op("Mul", [g, node.input[1]])
    axes = list(range(axis, rank))
    count = int(np.prod(ctx.static(node, node.input[0], axes)))
    return {node.input[0]: _normalized_grad(ctx, node.input[0], gh, axes, count, float(attrs.get("epsilon", 1e-5)))}


def _instance_norm(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    _constant_params(ctx, node)
    rank = len(ctx.shapes.of(node.input[0]))
    scale = ctx.constant(node, node.input[1], "scale").astype(np.float32).reshape(-1, *([1] * (rank - 2)))
    gh = ctx.w.op("Mul", [g, ctx.w.const(scale, hint="instance_norm_scale")])
    eps = float(node_attrs(node).get("epsilon", 1e-5))
    axes = list(range(2, rank))
    count = int(np.prod(ctx.static(node, node.input[0], axes)))
    return {node.input[0]: _normalized_grad(ctx, node.input[0], gh, axes, count, eps)}


def _group_norm(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """x (N, C, ...) normalized per group of C / G channels: the gradient on the (N, G, C / G * ...) view."""
    _constant_params(ctx, node)
    attrs = node_attrs(node)
    groups = int(attrs["num_groups"])
    x, w = node.input[0], ctx.w
    dims = ctx.shapes.of(x)
    sizes = ctx.static(node, x, range(1, len(dims)))
    channels = sizes[0]
    scale = ctx.constant(node, node.input[1], "scale").astype(np.float32).ravel()
    if channels % groups or len(scale) != channels:
        raise refuse(node, f"{channels} channels in {groups} groups with a scale of {len(scale)} values "
                           "(supported: one scale per channel, opset 21)")
    gh = w.op("Mul", [g, w.const(scale.reshape(-1, *([1] * (len(dims) - 2))), hint="group_norm_scale")])
    view = w.ints([0, groups, -1], "group_view")
    grad = _normalized_grad(ctx, w.op("Reshape", [x, view]), w.op("Reshape", [gh, view]), [2],
                            int(np.prod(sizes)) // groups, float(attrs.get("epsilon", 1e-5)))
    return {x: ctx.reshape_like(grad, x)}


NORMALIZATION_RULES: dict[str, Rule] = {
    "GroupNormalization": _group_norm,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
}
