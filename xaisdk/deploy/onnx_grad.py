"""Reverse-mode differentiation of an ONNX classifier graph into standard ONNX ops.

``torch.onnx.export`` cannot export autograd, and ONNX Runtime's training gradient builder emits
``com.microsoft`` ops (ReluGrad, ConvGrad...) that neither TensorRT nor a plain ONNX runtime runs.
This module walks a forward graph ``x -> logits`` backwards and writes, node by node, the
vector-Jacobian product with default-domain ops only (ConvTranspose for Conv, Gemm/MatMul for the
dense layers, Where/Greater masks for ReLU, an ArgMax routing for max pooling...), so the result is
an ordinary inference graph that any ONNX runtime, and TensorRT's parser, accepts.

Two graphs are built from one forward graph:

- :func:`gradient_graph`: inputs ``x`` (N, C, H, W) and ``w`` (N, K); outputs ``score`` (N,) =
  ``sum_k w[n, k] * logits[n, k]`` and ``grad`` = d score / d x. With ``w = e_source - e_target``
  one graph serves every class pair; with ``w = e_source``, one-vs-all.
- :func:`deeplift_graph`: inputs ``x``, ``baseline`` and ``w``; runs the forward pass on both and
  back-propagates DeepLIFT's rescale-rule multipliers: every element-wise nonlinearity's derivative
  is replaced by ``(f(x) - f(b)) / (x - b)`` (its derivative where ``|x - b| < eps``), exactly like
  :func:`xaisdk.attribution.deeplift`. Outputs ``multipliers`` (attributions are
  ``(x - baseline) * multipliers``), ``score`` and ``score_baseline``.

The batch dimension may stay symbolic (shapes are read with ``Shape`` where needed); spatial sizes
must be static. A forward op without a rule raises :class:`UnsupportedOpError` naming the op, the
node (whose name carries the torch layer path) and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xaisdk.errors import InputError
from xaisdk.methods.deeplift_rules import (
    DIVISION,
    NO_RULE,
    ONNX_OPS,
    ONNX_REASONS,
    PRODUCT,
    REFUSED,
    RESCALED,
    op_kind,
    refusal,
)

__all__ = [
    "DEEPLIFT_NONLINEAR",
    "GRADIENT_RULES",
    "UnsupportedOpError",
    "deeplift_graph",
    "gradient_graph",
]

DEEPLIFT_EPS = 1e-10
# Ops whose outputs are integers, booleans or shapes: they pass no gradient, even when fed by x.
NON_DIFFERENTIABLE = frozenset(
    {"Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or"}
)


class UnsupportedOpError(InputError):
    """The forward graph contains an op (or an op configuration) with no gradient rule."""


@dataclass
class _Shapes:
    """Static shape knowledge: dims are ints, or None where symbolic (the batch)."""

    dims: dict[str, list[int | None]]

    def of(self, name: str) -> list[int | None]:
        if name not in self.dims:
            raise UnsupportedOpError(f"no shape is known for tensor {name!r}; export with static image sizes")
        return self.dims[name]


def _read_shapes(model: onnx.ModelProto) -> _Shapes:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            dims[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    for init in graph.initializer:
        dims[init.name] = list(init.dims)
    return _Shapes(dims)


class _Writer:
    """Appends nodes and constants with fresh names to the graph being built."""

    def __init__(self, taken: set[str]) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = set(taken)
        self._counter = 0
        self.scope = "grad"

    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"{self.scope}/{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> str | list[str]:
        outputs = [self.fresh(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=self.fresh(op_type + "_node"), **attrs))
        return outputs[0] if n_out == 1 else outputs

    def const(self, value: np.ndarray | Sequence | float, dtype=np.float32, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(values, dtype=np.int64), np.int64, hint)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _where(node: onnx.NodeProto) -> str:
    return f"op {node.op_type} at node {node.name or '(unnamed)'!r}"


def _refuse(node: onnx.NodeProto, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"cannot differentiate {_where(node)}: {why}")


def _refuse_deeplift(node: onnx.NodeProto, reason: str) -> UnsupportedOpError:
    """DeepLIFT's refusal, in the sentence the torch reference uses (:mod:`xaisdk.methods.deeplift_rules`)."""
    return UnsupportedOpError(refusal(reason, _where(node)))


class _Context:
    """What a gradient rule may use: the writer, shapes, constants, and the DeepLIFT reference pass."""

    def __init__(self, writer: _Writer, shapes: _Shapes, constants: dict[str, np.ndarray], active: set[str],
                 reference: dict[str, str] | None) -> None:
        self.w = writer
        self.shapes = shapes
        self.constants = constants
        self.active = active
        self.reference = reference  # tensor -> its name in the baseline pass (DeepLIFT only)

    @property
    def deeplift(self) -> bool:
        return self.reference is not None

    def static(self, node: onnx.NodeProto, name: str, axes: Sequence[int]) -> list[int]:
        dims = self.shapes.of(name)
        picked = [dims[a] for a in axes]
        if any(d is None for d in picked):
            raise _refuse(node, f"tensor {name!r} needs static sizes on axes {list(axes)}, got {dims}")
        return [int(d) for d in picked]

    def constant(self, node: onnx.NodeProto, name: str, what: str) -> np.ndarray:
        if name not in self.constants:
            raise _refuse(node, f"its {what} ({name!r}) must be a constant")
        return self.constants[name]

    def reshape_like(self, grad: str, like: str) -> str:
        return self.w.op("Reshape", [grad, self.w.op("Shape", [like])])

    def unbroadcast(self, grad: str, out_name: str, in_name: str) -> str:
        """Sum ``grad`` (shaped like ``out_name``) over the axes that broadcasting added to ``in_name``."""
        out_dims, in_dims = self.shapes.of(out_name), self.shapes.of(in_name)
        lead = len(out_dims) - len(in_dims)
        axes = list(range(lead))
        for i, d in enumerate(in_dims):
            if d == 1 and out_dims[lead + i] != 1:
                axes.append(lead + i)
        if not axes:
            return grad
        summed = self.w.op("ReduceSum", [grad, self.w.ints(axes, "axes")], keepdims=1)
        return self.reshape_like(summed, in_name)

    def multiplier(self, node: onnx.NodeProto, derivative: str) -> str:
        """The local factor of an element-wise op: its derivative, or DeepLIFT's rescale ratio."""
        if not self.deeplift:
            return derivative
        x_in, y_out = node.input[0], node.output[0]
        d_in = self.w.op("Sub", [x_in, self.reference[x_in]])
        d_out = self.w.op("Sub", [y_out, self.reference[y_out]])
        near = self.w.op("Less", [self.w.op("Abs", [d_in]), self.w.const(DEEPLIFT_EPS)])
        safe = self.w.op("Where", [near, self.w.const(1.0), d_in])
        return self.w.op("Where", [near, derivative, self.w.op("Div", [d_out, safe])])


Rule = Callable[[_Context, onnx.NodeProto, str], dict[str, str]]


def _conv_transpose_padding(node, ctx: _Context, in_name: str, out_name: str, kernel, strides, pads, dilations) -> list[int]:
    in_sizes = ctx.static(node, in_name, range(2, len(ctx.shapes.of(in_name))))
    out_sizes = ctx.static(node, out_name, range(2, len(ctx.shapes.of(out_name))))
    spatial = len(in_sizes)
    extra = []
    for i in range(spatial):
        produced = strides[i] * (out_sizes[i] - 1) + (kernel[i] - 1) * dilations[i] + 1 - pads[i] - pads[i + spatial]
        extra.append(in_sizes[i] - produced)
        if not 0 <= extra[-1] < max(strides[i], dilations[i]):
            raise _refuse(node, f"cannot map output size {out_sizes[i]} back to input size {in_sizes[i]}")
    return extra


def _geometry(node: onnx.NodeProto, ctx: _Context, kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
    attrs = _attrs(node)
    spatial = len(kernel)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise _refuse(node, f"auto_pad={attrs['auto_pad']!r} (export with explicit pads)")
    strides = list(attrs.get("strides", [1] * spatial))
    pads = list(attrs.get("pads", [0] * (2 * spatial)))
    dilations = list(attrs.get("dilations", [1] * spatial))
    return strides, pads, dilations


def _conv(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, weight = node.input[0], node.input[1]
    if weight in ctx.active or (len(node.input) > 2 and node.input[2] in ctx.active):
        raise _refuse(node, "its weights depend on the input")
    kernel = ctx.static(node, weight, range(2, len(ctx.shapes.of(weight))))
    strides, pads, dilations = _geometry(node, ctx, kernel)
    extra = _conv_transpose_padding(node, ctx, x, node.output[0], kernel, strides, pads, dilations)
    group = int(_attrs(node).get("group", 1))
    grad = ctx.w.op("ConvTranspose", [g, weight], strides=strides, pads=pads, dilations=dilations,
                    group=group, output_padding=extra, kernel_shape=kernel)
    return {x: grad}


def _gemm(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    a, b = node.input[0], node.input[1]
    if b in ctx.active or (len(node.input) > 2 and node.input[2] in ctx.active):
        raise _refuse(node, "only its first operand may depend on the input")
    attrs = _attrs(node)
    alpha, trans_a, trans_b = float(attrs.get("alpha", 1.0)), int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    if trans_a:  # dA = alpha * B' g^T
        grad = ctx.w.op("Gemm", [b, g], alpha=alpha, transA=trans_b, transB=1)
    else:  # dA = alpha * g B'^T
        grad = ctx.w.op("Gemm", [g, b], alpha=alpha, transB=1 - trans_b)
    return {a: grad}


def _matmul(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    a, b = node.input[0], node.input[1]
    if b in ctx.active or len(ctx.shapes.of(b)) != 2:
        raise _refuse(node, "supported only as (input-dependent tensor) x (2-D constant matrix)")
    return {a: ctx.w.op("MatMul", [g, ctx.w.op("Transpose", [b], perm=[1, 0])])}


def _add_sub(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    out = node.output[0]
    grads = {}
    for i, name in enumerate(node.input[:2]):
        if name in ctx.active:
            part = g if (i == 0 or node.op_type == "Add") else ctx.w.op("Neg", [g])
            grads[name] = ctx.unbroadcast(part, out, name)
    return grads


def _mul(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    a, b = node.input[0], node.input[1]
    if a in ctx.active and b in ctx.active and ctx.deeplift:
        raise _refuse_deeplift(node, PRODUCT)
    out = node.output[0]
    grads = {}
    if a in ctx.active:
        grads[a] = ctx.unbroadcast(ctx.w.op("Mul", [g, b]), out, a)
    if b in ctx.active:
        grads[b] = ctx.unbroadcast(ctx.w.op("Mul", [g, a]), out, b)
    return grads


def _div(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    a, b = node.input[0], node.input[1]
    if b in ctx.active:
        raise _refuse_deeplift(node, DIVISION) if ctx.deeplift else _refuse(node, "division by an input-dependent tensor")
    return {a: ctx.unbroadcast(ctx.w.op("Div", [g, b]), node.output[0], a)}


def _passthrough(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return {node.input[0]: g}


def _reshape_back(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return {node.input[0]: ctx.reshape_like(g, node.input[0])}


def _transpose(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    rank = len(ctx.shapes.of(node.input[0]))
    perm = list(_attrs(node).get("perm", list(reversed(range(rank)))))
    return {node.input[0]: ctx.w.op("Transpose", [g], perm=list(np.argsort(perm)))}


def _relu(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x = node.input[0]
    positive = ctx.w.op("Greater", [x, ctx.w.const(0.0)])
    derivative = ctx.w.op("Cast", [positive], to=TensorProto.FLOAT)
    return {x: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _leaky_relu(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x = node.input[0]
    alpha = float(_attrs(node).get("alpha", 0.01))
    positive = ctx.w.op("Greater", [x, ctx.w.const(0.0)])
    derivative = ctx.w.op("Where", [positive, ctx.w.const(1.0), ctx.w.const(alpha)])
    return {x: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _clip(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x = node.input[0]
    bounds = [name for name in node.input[1:3]]
    if any(name and name in ctx.active for name in bounds):
        raise _refuse(node, "input-dependent clip bounds")
    inside = None
    for name, op in zip(bounds, ("Greater", "Less")):
        if name:
            test = ctx.w.op(op, [x, name])
            inside = test if inside is None else ctx.w.op("And", [inside, test])
    if inside is None:
        return _passthrough(ctx, node, g)
    derivative = ctx.w.op("Cast", [inside], to=TensorProto.FLOAT)
    return {x: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _sigmoid(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    y = node.output[0]
    derivative = ctx.w.op("Mul", [y, ctx.w.op("Sub", [ctx.w.const(1.0), y])])
    return {node.input[0]: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _tanh(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    y = node.output[0]
    derivative = ctx.w.op("Sub", [ctx.w.const(1.0), ctx.w.op("Mul", [y, y])])
    return {node.input[0]: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _softmax_axis(ctx: _Context, node: onnx.NodeProto) -> int:
    rank = len(ctx.shapes.of(node.input[0]))
    axis = int(_attrs(node).get("axis", -1))
    if axis % rank != rank - 1:
        raise _refuse(node, f"softmax over axis {axis} (only the last axis is supported)")
    return -1


def _softmax(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    axis = _softmax_axis(ctx, node)
    y = node.output[0]
    inner = ctx.w.op("ReduceSum", [ctx.w.op("Mul", [g, y]), ctx.w.ints([axis])], keepdims=1)
    return {node.input[0]: ctx.w.op("Mul", [y, ctx.w.op("Sub", [g, inner])])}


def _log_softmax(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    axis = _softmax_axis(ctx, node)
    total = ctx.w.op("ReduceSum", [g, ctx.w.ints([axis])], keepdims=1)
    return {node.input[0]: ctx.w.op("Sub", [g, ctx.w.op("Mul", [ctx.w.op("Exp", [node.output[0]]), total])])}


def _batch_norm(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    if int(_attrs(node).get("training_mode", 0)):
        raise _refuse(node, "batch normalization in training mode (export the model in eval mode)")
    scale = ctx.constant(node, node.input[1], "scale")
    var = ctx.constant(node, node.input[4], "running variance")
    eps = float(_attrs(node).get("epsilon", 1e-5))
    rank = len(ctx.shapes.of(node.input[0]))
    factor = (scale / np.sqrt(var + eps)).astype(np.float32).reshape(-1, *([1] * (rank - 2)))
    return {node.input[0]: ctx.w.op("Mul", [g, ctx.w.const(factor, hint="bn_factor")])}


def _pool_window(node: onnx.NodeProto, ctx: _Context) -> tuple[list[int], list[int], list[int], list[int]]:
    attrs = _attrs(node)
    kernel = list(attrs["kernel_shape"])
    strides, pads, dilations = _geometry(node, ctx, kernel)
    if any(d != 1 for d in dilations):
        raise _refuse(node, f"dilated pooling (dilations {dilations})")
    return kernel, strides, pads, dilations


def _ceil_is_floor(node: onnx.NodeProto, ctx: _Context, kernel, strides, pads) -> None:
    if not int(_attrs(node).get("ceil_mode", 0)):
        return
    sizes = ctx.static(node, node.input[0], range(2, 2 + len(kernel)))
    for i, size in enumerate(sizes):
        span = size + pads[i] + pads[i + len(kernel)] - kernel[i]
        if span % strides[i]:
            raise _refuse(node, "ceil_mode with a partial last window")


def _average_pool(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    kernel, strides, pads, dilations = _pool_window(node, ctx)
    _ceil_is_floor(node, ctx, kernel, strides, pads)
    if any(pads) and not int(_attrs(node).get("count_include_pad", 0)):
        raise _refuse(node, "padded average pooling that excludes the padding from the count")
    x = node.input[0]
    channels = ctx.static(node, x, [1])[0]
    weight = np.full((channels, 1, *kernel), 1.0 / float(np.prod(kernel)), dtype=np.float32)
    extra = _conv_transpose_padding(node, ctx, x, node.output[0], kernel, strides, pads, dilations)
    grad = ctx.w.op("ConvTranspose", [g, ctx.w.const(weight, hint="avgpool_weight")], strides=strides, pads=pads,
                    group=channels, output_padding=extra, kernel_shape=kernel)
    return {x: grad}


def _spread(ctx: _Context, node: onnx.NodeProto, g: str, axes: list[int], keepdims: bool, mean: bool) -> dict[str, str]:
    x = node.input[0]
    if not keepdims:
        g = ctx.w.op("Unsqueeze", [g, ctx.w.ints(axes)])
    if mean:
        count = int(np.prod(ctx.static(node, x, axes)))
        g = ctx.w.op("Div", [g, ctx.w.const(float(count))])
    return {x: ctx.w.op("Expand", [g, ctx.w.op("Shape", [x])])}


def _global_average_pool(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    rank = len(ctx.shapes.of(node.input[0]))
    return _spread(ctx, node, g, list(range(2, rank)), keepdims=True, mean=True)


def _reduce(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    attrs = _attrs(node)
    rank = len(ctx.shapes.of(node.input[0]))
    if len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in ctx.constant(node, node.input[1], "axes").ravel()]
    else:
        axes = list(attrs.get("axes", []))
    if not axes:
        if int(attrs.get("noop_with_empty_axes", 0)):
            return _passthrough(ctx, node, g)
        axes = list(range(rank))
    axes = sorted(a % rank for a in axes)
    return _spread(ctx, node, g, axes, bool(attrs.get("keepdims", 1)), node.op_type == "ReduceMean")


def _max_pool(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """Route each window's gradient to its first maximum (row-major), as torch's max-pool backward.

    Windows must not overlap (kernel == stride, no padding): the input is cropped to the covered
    area, cut into (Ho, Wo, kh*kw) windows, and ``ArgMax`` (first index on ties) picks the cell.
    """
    if len(node.output) > 1 and node.output[1]:
        raise _refuse(node, "max pooling whose indices output is used")
    kernel, strides, pads, _ = _pool_window(node, ctx)
    if len(kernel) != 2 or kernel != strides or any(pads):
        raise _refuse(node, f"max pooling with overlapping or padded windows (kernel {kernel}, stride {strides}, "
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


def _concat(ctx: _Context, node: onnx.NodeProto, g: str) -> dict[str, str]:
    rank = len(ctx.shapes.of(node.output[0]))
    axis = int(_attrs(node)["axis"]) % rank
    sizes = [ctx.static(node, name, [axis])[0] for name in node.input]
    grads, start = {}, 0
    for name, size in zip(node.input, sizes):
        if name in ctx.active:
            piece = ctx.w.op("Slice", [g, ctx.w.ints([start]), ctx.w.ints([start + size]), ctx.w.ints([axis])])
            grads[name] = piece
        start += size
    return grads


GRADIENT_RULES: dict[str, Rule] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _add_sub,
    "Sub": _add_sub,
    "Mul": _mul,
    "Div": _div,
    "Neg": lambda ctx, node, g: {node.input[0]: ctx.w.op("Neg", [g])},
    "Identity": _passthrough,
    "Dropout": _passthrough,
    "Flatten": _reshape_back,
    "Reshape": _reshape_back,
    "Squeeze": _reshape_back,
    "Unsqueeze": _reshape_back,
    "Transpose": _transpose,
    "Relu": _relu,
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "Sigmoid": _sigmoid,
    "Tanh": _tanh,
    "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
    "BatchNormalization": _batch_norm,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "MaxPool": _max_pool,
    "Concat": _concat,
}
# Element-wise nonlinearities that DeepLIFT rescales (their rules call ``ctx.multiplier``), and the ops
# it refuses: both from the table the torch reference uses too (:mod:`xaisdk.methods.deeplift_rules`).
DEEPLIFT_NONLINEAR = frozenset(op for op, kind in ONNX_OPS.items() if kind == RESCALED)
DEEPLIFT_UNSUPPORTED = frozenset(op for op in GRADIENT_RULES if op_kind(op) == REFUSED)


def _active_tensors(graph: onnx.GraphProto, x_name: str) -> set[str]:
    active = {x_name}
    for node in graph.node:
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        if any(name in active for name in node.input):
            active.update(name for name in node.output if name)
    return active


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _single_io(model: onnx.ModelProto) -> tuple[str, str]:
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InputError(f"expected a graph with one input and one output (logits), got inputs {inputs} and "
                         f"outputs {[o.name for o in graph.output]}")
    return inputs[0], graph.output[0].name


def check_differentiable(model: onnx.ModelProto, *, deeplift: bool = False) -> None:
    """Raise :class:`UnsupportedOpError` (naming the op and node) if a node on the path from the input
    to the logits has no rule (or, with ``deeplift``, is not covered by the rescale rule: refused op
    kinds first, then products and quotients of input-dependent tensors)."""
    x_name, _ = _single_io(model)
    active = _active_tensors(model.graph, x_name)
    nodes = [node for node in model.graph.node
             if node.op_type not in NON_DIFFERENTIABLE and any(name in active for name in node.input)]
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            raise _refuse(node, f"it is in the non-standard domain {node.domain!r}")
        if node.op_type not in GRADIENT_RULES:
            raise _refuse(node, f"no gradient rule for {node.op_type}; supported ops: {', '.join(sorted(GRADIENT_RULES))}")
        if deeplift and op_kind(node.op_type) == REFUSED:
            raise _refuse_deeplift(node, ONNX_REASONS.get(node.op_type, NO_RULE))
    for node in nodes if deeplift else []:
        if node.op_type in ("Mul", "MatMul") and all(name in active for name in node.input[:2]):
            raise _refuse_deeplift(node, PRODUCT)
        if node.op_type == "Div" and node.input[1] in active:
            raise _refuse_deeplift(node, DIVISION)


def _baseline_pass(graph: onnx.GraphProto, active: set[str], x_name: str, baseline_name: str) -> tuple[list, dict[str, str]]:
    """A copy of the forward nodes that depend on x, run on the baseline; returns (nodes, renaming)."""
    rename = {name: (baseline_name if name == x_name else f"ref/{name}") for name in active}
    nodes = []
    for node in graph.node:
        if not any(name in active for name in node.input):
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"ref/{node.name}"
        del copy.input[:]
        copy.input.extend(rename.get(name, name) for name in node.input)
        del copy.output[:]
        copy.output.extend(rename.get(name, name) if name else "" for name in node.output)
        nodes.append(copy)
    return nodes, rename


def _backward(model: onnx.ModelProto, writer: _Writer, x_name: str, logits: str, w_name: str,
              reference: dict[str, str] | None) -> str:
    graph = model.graph
    shapes = _read_shapes(model)
    active = _active_tensors(graph, x_name)
    ctx = _Context(writer, shapes, _constants(graph), active, reference)
    pending: dict[str, list[str]] = {logits: [w_name]}
    for node in reversed(graph.node):
        if node.op_type in NON_DIFFERENTIABLE or not any(name in active for name in node.input):
            continue
        parts = pending.pop(node.output[0], None)
        if parts is None:
            continue  # does not reach the logits
        writer.scope = f"grad{node.name}" if node.name.startswith("/") else f"grad/{node.name}"
        grad = parts[0]
        for extra in parts[1:]:
            grad = writer.op("Add", [grad, extra])
        for name, value in GRADIENT_RULES[node.op_type](ctx, node, grad).items():
            if name in active:
                pending.setdefault(name, []).append(value)
    writer.scope = "grad"
    parts = pending.pop(x_name, None)
    if parts is None:  # the logits do not depend on x
        return writer.op("Mul", [x_name, writer.const(0.0)])
    grad = parts[0]
    for extra in parts[1:]:
        grad = writer.op("Add", [grad, extra])
    return grad


def _score(writer: _Writer, logits: str, w_name: str) -> str:
    return writer.op("ReduceSum", [writer.op("Mul", [logits, w_name]), writer.ints([1])], keepdims=0)


def _io(name: str, dims: list[int | None] | list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [d if d is not None else "N" for d in dims])


def _finish(model: onnx.ModelProto, nodes: list, writer: _Writer, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes + writer.nodes, name, inputs, outputs,
                              initializer=list(model.graph.initializer) + writer.initializers)
    result = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="xaisdk")
    result.ir_version = model.ir_version
    onnx.checker.check_model(result, full_check=True)
    return result


def _prepare(model: onnx.ModelProto, deeplift: bool) -> tuple[str, str, list, list]:
    if not any(op.domain in ("", "ai.onnx") and op.version >= 13 for op in model.opset_import):
        raise InputError("gradient graphs need ONNX opset >= 13")
    check_differentiable(model, deeplift=deeplift)
    x_name, logits = _single_io(model)
    shapes = _read_shapes(model)
    x_dims, logit_dims = shapes.of(x_name), shapes.of(logits)
    if len(logit_dims) != 2:
        raise InputError(f"the graph's output must be logits (N, K), got shape {logit_dims}")
    return x_name, logits, x_dims, logit_dims


def gradient_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The input-gradient graph of a classifier graph ``x -> logits`` (see the module docstring).

    >>> import numpy as np, onnx
    >>> from onnx import helper, numpy_helper, TensorProto
    >>> W = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)  # logits = relu(x) @ W
    >>> g = helper.make_graph(
    ...     [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "W"], ["logits"])], "net",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
    ...     [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], [numpy_helper.from_array(W, "W")])
    >>> grad_model = gradient_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    >>> [i.name for i in grad_model.graph.input], [o.name for o in grad_model.graph.output]
    (['x', 'w'], ['score', 'grad'])
    """
    x_name, logits, x_dims, logit_dims = _prepare(model, deeplift=False)
    writer = _Writer({n for node in model.graph.node for n in [*node.input, *node.output]} | {"w", "score", "grad"})
    grad = _backward(model, writer, x_name, logits, "w", None)
    score = _score(writer, logits, "w")
    writer.nodes += [helper.make_node("Identity", [score], ["score"], name="out/score"),
                     helper.make_node("Identity", [grad], ["grad"], name="out/grad")]
    return _finish(model, list(model.graph.node), writer,
                   [_io(x_name, x_dims), _io("w", logit_dims)],
                   [_io("score", logit_dims[:1]), _io("grad", x_dims)], "classifier_grad")


def deeplift_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The DeepLIFT (rescale rule) multiplier graph of a classifier graph ``x -> logits``.

    Inputs ``x``, ``baseline`` (both shaped like the classifier's input) and ``w`` (N, K); outputs
    ``multipliers`` (shaped like x), ``score`` and ``score_baseline`` (N,). Raises
    :class:`UnsupportedOpError` for ops the rescale rule does not cover (max pooling, softmax).

    >>> import numpy as np, onnx
    >>> from onnx import helper, numpy_helper, TensorProto
    >>> g = helper.make_graph(
    ...     [helper.make_node("Relu", ["x"], ["logits"])], "net",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
    ...     [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])])
    >>> dl = deeplift_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    >>> [o.name for o in dl.graph.output]
    ['multipliers', 'score', 'score_baseline']
    """
    x_name, logits, x_dims, logit_dims = _prepare(model, deeplift=True)
    taken = {n for node in model.graph.node for n in [*node.input, *node.output]}
    writer = _Writer(taken | {"w", "baseline", "multipliers", "score", "score_baseline"} | {f"ref/{n}" for n in taken})
    active = _active_tensors(model.graph, x_name)
    ref_nodes, rename = _baseline_pass(model.graph, active, x_name, "baseline")
    grad = _backward(model, writer, x_name, logits, "w", rename)
    score = _score(writer, logits, "w")
    score_ref = _score(writer, rename[logits], "w")
    writer.nodes += [helper.make_node("Identity", [grad], ["multipliers"], name="out/multipliers"),
                     helper.make_node("Identity", [score], ["score"], name="out/score"),
                     helper.make_node("Identity", [score_ref], ["score_baseline"], name="out/score_baseline")]
    return _finish(model, list(model.graph.node) + ref_nodes, writer,
                   [_io(x_name, x_dims), _io("baseline", x_dims), _io("w", logit_dims)],
                   [_io("multipliers", x_dims), _io("score", logit_dims[:1]), _io("score_baseline", logit_dims[:1])],
                   "deeplift_grad")
