"""Reverse-mode differentiation of an ONNX classifier graph into standard ONNX ops.

``torch.onnx.export`` cannot export autograd, and ONNX Runtime's training gradient builder emits
``com.microsoft`` ops (ReluGrad, ConvGrad...) that neither TensorRT nor a plain ONNX runtime runs.
This module walks a forward graph ``x -> logits`` backwards and writes, node by node, the
vector-Jacobian product with default-domain ops only (for Conv a transposed convolution, written as
a ``Conv`` where its strides are 1; Gemm/MatMul for the dense layers, Where/Greater masks for ReLU,
an ArgMax routing for max pooling...), so the result is
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

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xaisdk.deploy.deeplift_islands import Islands, island_gradient
from xaisdk.deploy.grad_context import (
    GradContext,
    GraphWriter,
    Rule,
    UnsupportedOpError,
    conv_transpose_padding,
    node_attrs,
    read_shapes,
    refuse,
    refuse_deeplift,
    window_geometry,
)
from xaisdk.deploy.grad_conv_transpose import transposed_convolution
from xaisdk.deploy.grad_rules_activations import ACTIVATION_RULES
from xaisdk.deploy.grad_rules_layout import LAYOUT_RULES, fold_constants
from xaisdk.deploy.grad_rules_normalization import NORMALIZATION_RULES
from xaisdk.deploy.grad_rules_pooling import POOLING_RULES
from xaisdk.deploy.grad_rules_reductions import REDUCTION_RULES
from xaisdk.deploy.graph_names import rename_tensor, tensor_names, unused_name
from xaisdk.errors import InputError
from xaisdk.methods.deeplift_rules import (
    DIVISION,
    ELEMENTWISE_EXTREMUM,
    NO_RULE,
    ONNX_OPS,
    ONNX_REASONS,
    PRODUCT,
    REFUSED,
    RESCALED,
    op_kind,
)

__all__ = [
    "DEEPLIFT_NONLINEAR",
    "GRADIENT_RULES",
    "UnsupportedOpError",
    "deeplift_graph",
    "gradient_graph",
]

# Ops whose outputs are integers, booleans or shapes: they pass no gradient, even when fed by x.
NON_DIFFERENTIABLE = frozenset(
    {"Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or"}
)


def _conv(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, weight = node.input[0], node.input[1]
    if weight in ctx.active or (len(node.input) > 2 and node.input[2] in ctx.active):
        raise refuse(node, "its weights depend on the input")
    kernel = ctx.static(node, weight, range(2, len(ctx.shapes.of(weight))))
    strides, pads, dilations = window_geometry(node, ctx, kernel)
    extra = conv_transpose_padding(node, ctx, x, node.output[0], kernel, strides, pads, dilations)
    group = int(node_attrs(node).get("group", 1))
    grad = transposed_convolution(ctx.w, g, weight, weight_shape=ctx.static(node, weight, range(2 + len(kernel))),
                                  strides=strides, pads=pads, dilations=dilations, output_padding=extra, group=group)
    return {x: grad}


def _gemm(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    a, b = node.input[0], node.input[1]
    if b in ctx.active or (len(node.input) > 2 and node.input[2] in ctx.active):
        raise refuse(node, "only its first operand may depend on the input")
    attrs = node_attrs(node)
    alpha, trans_a, trans_b = float(attrs.get("alpha", 1.0)), int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    if trans_a:  # dA = alpha * B' g^T
        grad = ctx.w.op("Gemm", [b, g], alpha=alpha, transA=trans_b, transB=1)
    else:  # dA = alpha * g B'^T
        grad = ctx.w.op("Gemm", [g, b], alpha=alpha, transB=1 - trans_b)
    return {a: grad}


def _add_grad(ctx: GradContext, grads: dict[str, str], name: str, value: str) -> None:
    """Record ``value`` as a gradient of ``name``, summed with one already there (``Mul(x, x)``)."""
    grads[name] = ctx.w.op("Add", [grads[name], value]) if name in grads else value


def _swap_last_axes(ctx: GradContext, name: str) -> str:
    rank = len(ctx.shapes.of(name))
    return ctx.w.op("Transpose", [name], perm=[*range(rank - 2), rank - 1, rank - 2])


def _matmul_unbroadcast(ctx: GradContext, grad: str, out_name: str, in_name: str) -> str:
    """Sum a (batched) MatMul operand's gradient over the batch axes that broadcasting added to it."""
    out_dims, in_dims = ctx.shapes.of(out_name), ctx.shapes.of(in_name)
    lead = len(out_dims) - len(in_dims)
    axes = [*range(lead), *(lead + i for i, d in enumerate(in_dims[:-2]) if d == 1 and out_dims[lead + i] != 1)]
    if not axes:
        return grad
    return ctx.reshape_like(ctx.w.op("ReduceSum", [grad, ctx.w.ints(axes, "axes")], keepdims=1), in_name)


def _matmul(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """Matrices or broadcast batches of matrices, either or both operands input-dependent (attention's
    Q K^T and A V): dA = g B^T, dB = A^T g, each summed over the batch axes it was broadcast along."""
    a, b = node.input[0], node.input[1]
    if ctx.deeplift and a in ctx.active and b in ctx.active:
        raise refuse_deeplift(node, PRODUCT)
    if min(len(ctx.shapes.of(a)), len(ctx.shapes.of(b))) < 2:
        raise refuse(node, f"a 1-D operand (shapes {ctx.shapes.of(a)} and {ctx.shapes.of(b)}); "
                           "supported: matrices and batches of matrices")
    out, grads = node.output[0], {}
    if a in ctx.active:
        grads[a] = _matmul_unbroadcast(ctx, ctx.w.op("MatMul", [g, _swap_last_axes(ctx, b)]), out, a)
    if b in ctx.active:
        _add_grad(ctx, grads, b, _matmul_unbroadcast(ctx, ctx.w.op("MatMul", [_swap_last_axes(ctx, a), g]), out, b))
    return grads


def _add_sub(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    out = node.output[0]
    grads = {}
    for i, name in enumerate(node.input[:2]):
        if name in ctx.active:
            part = g if (i == 0 or node.op_type == "Add") else ctx.w.op("Neg", [g])
            _add_grad(ctx, grads, name, ctx.unbroadcast(part, out, name))  # x + x: both parts
    return grads


def _island(ctx: GradContext, node: onnx.NodeProto, g: str, reason: str) -> dict[str, str]:
    """DeepLIFT through a product or quotient of input-dependent tensors: only as part of an element-wise
    unit (SiLU, GELU, Mish, softsign...), rescaled as one nonlinearity (:mod:`xaisdk.deploy.deeplift_islands`)."""
    island = ctx.islands.of(node) if ctx.islands is not None else None
    if island is None:
        raise refuse_deeplift(node, reason)
    return island_gradient(ctx, island, g, GRADIENT_RULES)


def _mul(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    a, b = node.input[0], node.input[1]
    if a in ctx.active and b in ctx.active and ctx.deeplift:
        return _island(ctx, node, g, PRODUCT)
    out = node.output[0]
    grads: dict[str, str] = {}
    if a in ctx.active:
        grads[a] = ctx.unbroadcast(ctx.w.op("Mul", [g, b]), out, a)
    if b in ctx.active:
        _add_grad(ctx, grads, b, ctx.unbroadcast(ctx.w.op("Mul", [g, a]), out, b))
    return grads


def _div(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    a, b = node.input[0], node.input[1]
    if b in ctx.active and ctx.deeplift:
        return _island(ctx, node, g, DIVISION)
    out, grads = node.output[0], {}
    if a in ctx.active:
        grads[a] = ctx.unbroadcast(ctx.w.op("Div", [g, b]), out, a)
    if b in ctx.active:  # d(a / b) / db = -(a / b) / b
        _add_grad(ctx, grads, b, ctx.unbroadcast(ctx.w.op("Neg", [ctx.w.op("Mul", [g, ctx.w.op("Div", [out, b])])]), out, b))
    return grads


def _passthrough(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return {node.input[0]: g}


def _reshape_back(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return {node.input[0]: ctx.reshape_like(g, node.input[0])}


def _transpose(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    rank = len(ctx.shapes.of(node.input[0]))
    perm = list(node_attrs(node).get("perm", list(reversed(range(rank)))))
    return {node.input[0]: ctx.w.op("Transpose", [g], perm=list(np.argsort(perm)))}


def _relu(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    # [x > 0] read as [relu(x) > 0] (the same set): nothing in the backward pass reads x, so ONNX Runtime fuses the
    # producing Conv with the Relu (ResNet-18's gradient graph at 224 px, 27 rows: 1.30 s -> 1.23 s on 2 cores)
    x = node.input[0]
    positive = ctx.w.op("Greater", [node.output[0], ctx.w.const(0.0)])
    derivative = ctx.w.op("Cast", [positive], to=TensorProto.FLOAT)
    return {x: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _leaky_relu(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x = node.input[0]
    alpha = float(node_attrs(node).get("alpha", 0.01))
    positive = ctx.w.op("Greater", [x, ctx.w.const(0.0)])
    derivative = ctx.w.op("Where", [positive, ctx.w.const(1.0), ctx.w.const(alpha)])
    return {x: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _clip(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x = node.input[0]
    bounds = [name for name in node.input[1:3]]
    if any(name and name in ctx.active for name in bounds):
        raise refuse(node, "input-dependent clip bounds")
    inside = None
    for name, op in zip(bounds, ("Greater", "Less")):
        if name:
            test = ctx.w.op(op, [x, name])
            inside = test if inside is None else ctx.w.op("And", [inside, test])
    if inside is None:
        return _passthrough(ctx, node, g)
    derivative = ctx.w.op("Cast", [inside], to=TensorProto.FLOAT)
    return {x: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _sigmoid(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    y = node.output[0]
    derivative = ctx.w.op("Mul", [y, ctx.w.op("Sub", [ctx.w.const(1.0), y])])
    return {node.input[0]: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _tanh(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    y = node.output[0]
    derivative = ctx.w.op("Sub", [ctx.w.const(1.0), ctx.w.op("Mul", [y, y])])
    return {node.input[0]: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _softmax_axis(ctx: GradContext, node: onnx.NodeProto) -> int:
    """The normalized axis (opset >= 13, which :func:`_prepare` requires: one axis, not a flattened block)."""
    rank = len(ctx.shapes.of(node.input[0]))
    return int(node_attrs(node).get("axis", -1)) % rank


def _softmax(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    axis = _softmax_axis(ctx, node)
    y = node.output[0]
    inner = ctx.w.op("ReduceSum", [ctx.w.op("Mul", [g, y]), ctx.w.ints([axis])], keepdims=1)
    return {node.input[0]: ctx.w.op("Mul", [y, ctx.w.op("Sub", [g, inner])])}


def _log_softmax(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    axis = _softmax_axis(ctx, node)
    total = ctx.w.op("ReduceSum", [g, ctx.w.ints([axis])], keepdims=1)
    return {node.input[0]: ctx.w.op("Sub", [g, ctx.w.op("Mul", [ctx.w.op("Exp", [node.output[0]]), total])])}


def _batch_norm(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    if int(node_attrs(node).get("training_mode", 0)):
        raise refuse(node, "batch normalization in training mode (export the model in eval mode)")
    scale = ctx.constant(node, node.input[1], "scale")
    var = ctx.constant(node, node.input[4], "running variance")
    eps = float(node_attrs(node).get("epsilon", 1e-5))
    rank = len(ctx.shapes.of(node.input[0]))
    factor = (scale / np.sqrt(var + eps)).astype(np.float32).reshape(-1, *([1] * (rank - 2)))
    return {node.input[0]: ctx.w.op("Mul", [g, ctx.w.const(factor, hint="bn_factor")])}


def _spread(ctx: GradContext, node: onnx.NodeProto, g: str, axes: list[int], keepdims: bool, mean: bool) -> dict[str, str]:
    x = node.input[0]
    if not keepdims:
        g = ctx.w.op("Unsqueeze", [g, ctx.w.ints(axes)])
    if mean:
        count = int(np.prod(ctx.static(node, x, axes)))
        g = ctx.w.op("Div", [g, ctx.w.const(float(count))])
    return {x: ctx.w.op("Expand", [g, ctx.w.op("Shape", [x])])}


def _global_average_pool(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    rank = len(ctx.shapes.of(node.input[0]))
    return _spread(ctx, node, g, list(range(2, rank)), keepdims=True, mean=True)


def _reduce(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    attrs = node_attrs(node)
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


def _concat(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """Slice each input's part of ``g`` back out; sizes unknown before run time (a class token
    ``expand``-ed to the batch) are read with ``Shape`` in the graph."""
    rank = len(ctx.shapes.of(node.output[0]))
    axis = int(node_attrs(node)["axis"]) % rank
    sizes: list[int | None] = [ctx.shapes.of(name)[axis] if len(ctx.shapes.of(name)) == rank else None
                               for name in node.input]
    w = ctx.w
    grads: dict[str, str] = {}
    start: int | str = 0
    for name, size in zip(node.input, sizes):
        if size is None:
            size_name = w.op("Gather", [w.op("Shape", [name]), w.ints([axis])], axis=0)
            end: int | str = w.op("Add", [start if isinstance(start, str) else w.ints([start]), size_name])
        else:
            end = start + size if isinstance(start, int) else w.op("Add", [start, w.ints([size])])
        if name in ctx.active:
            starts = start if isinstance(start, str) else w.ints([start])
            ends = end if isinstance(end, str) else w.ints([end])
            _add_grad(ctx, grads, name, w.op("Slice", [g, starts, ends, w.ints([axis])]))  # cat([a, a]): both pieces
        start = end
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
    "GlobalAveragePool": _global_average_pool,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "Concat": _concat,
    **POOLING_RULES,
    **LAYOUT_RULES,
    **ACTIVATION_RULES,
    **NORMALIZATION_RULES,
    **REDUCTION_RULES,
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
    kinds first, then products and quotients of input-dependent tensors, and element-wise maxima or minima
    of several of them)."""
    x_name, _ = _single_io(model)
    active = _active_tensors(model.graph, x_name)
    nodes = [node for node in model.graph.node
             if node.op_type not in NON_DIFFERENTIABLE and any(name in active for name in node.input)]
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            raise refuse(node, f"it is in the non-standard domain {node.domain!r}")
        if node.op_type not in GRADIENT_RULES:
            raise refuse(node, f"no gradient rule for {node.op_type}; the nearest alternatives: write that layer with "
                               f"supported ops ({', '.join(sorted(GRADIENT_RULES))}), or explain the model on torch "
                               "(xaisdk.Explainer(model): every method, no export needed)")
        if deeplift and op_kind(node.op_type) == REFUSED:
            raise refuse_deeplift(node, ONNX_REASONS.get(node.op_type, NO_RULE))
    islands: Islands | None = None  # products inside element-wise units (SiLU, GELU...) are rescaled as units
    for node in nodes if deeplift else []:
        if node.op_type in ("Max", "Min") and len({name for name in node.input if name in active}) > 1:
            raise refuse_deeplift(node, ELEMENTWISE_EXTREMUM)
        product = (node.op_type in ("Mul", "MatMul") and all(name in active for name in node.input[:2])
                   or node.op_type == "Einsum" and sum(name in active for name in node.input) > 1)
        quotient = node.op_type == "Div" and node.input[1] in active
        if not (product or quotient):
            continue
        if node.op_type not in ("MatMul", "Einsum"):
            islands = islands or Islands(model.graph, active, read_shapes(model).dims)
            if islands.of(node) is not None:
                continue
        raise refuse_deeplift(node, PRODUCT if product else DIVISION)


SHAPE_ONLY = frozenset({"Shape", "Size"})


def _baseline_pass(graph: onnx.GraphProto, active: set[str], x_name: str, baseline_name: str) -> tuple[list, dict[str, str]]:
    """A copy of the forward nodes that depend on x, run on the baseline; returns (nodes, renaming).

    Every value computed from x gets its baseline twin, also through non-differentiable ops (a comparison
    feeding a Where), except ``Shape`` / ``Size``: x and the baseline have one shape, so the shape
    arithmetic of ``x.view(x.size(0), -1)`` is shared (a copy would write its outputs a second time).
    """
    rename = {name: (baseline_name if name == x_name else f"ref/{name}") for name in active}
    nodes = []
    for node in graph.node:
        if node.op_type in SHAPE_ONLY or not any(name in rename for name in node.input):
            continue
        rename.update({name: f"ref/{name}" for name in node.output if name and name not in rename})
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"ref/{node.name}" if node.name else ""  # unnamed nodes (valid ONNX) stay unnamed: no clashes
        del copy.input[:]
        copy.input.extend(rename.get(name, name) for name in node.input)
        del copy.output[:]
        copy.output.extend(rename.get(name, name) if name else "" for name in node.output)
        nodes.append(copy)
    return nodes, rename


def _backward(model: onnx.ModelProto, writer: GraphWriter, x_name: str, logits: str, w_name: str,
              reference: dict[str, str] | None) -> str:
    graph = model.graph
    shapes = read_shapes(model)
    active = _active_tensors(graph, x_name)
    ctx = GradContext(writer, shapes, _constants(graph), active, reference)
    ctx.islands = Islands(graph, active, shapes.dims) if reference is not None else None
    pending: dict[str, list[str]] = {logits: [w_name]}
    for node in reversed(graph.node):
        if node.op_type in NON_DIFFERENTIABLE or not any(name in active for name in node.input):
            continue
        writer.scope = f"grad{node.name}" if node.name.startswith("/") else f"grad/{node.name}"
        # Every output's summed gradient; a multi-output rule (Split) reads them all from ctx.output_grads.
        ctx.output_grads = {}
        for out in node.output:
            parts = pending.pop(out, None) if out else None
            if parts:
                ctx.output_grads[out] = parts[0]
                for extra in parts[1:]:
                    ctx.output_grads[out] = writer.op("Add", [ctx.output_grads[out], extra])
        if not ctx.output_grads:
            continue  # does not reach the logits
        grad = ctx.output_grads.get(node.output[0])
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


def _score(writer: GraphWriter, logits: str, w_name: str) -> str:
    return writer.op("ReduceSum", [writer.op("Mul", [logits, w_name]), writer.ints([1])], keepdims=0)


def _io(name: str, dims: list[int | None] | list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [d if d is not None else "N" for d in dims])


def _finish(model: onnx.ModelProto, nodes: list, writer: GraphWriter, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes + writer.nodes, name, inputs, outputs,
                              initializer=list(model.graph.initializer) + writer.initializers)
    result = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="xaisdk")
    result.ir_version = model.ir_version
    onnx.checker.check_model(result, full_check=True)
    return result


# The inputs and outputs the gradient and DeepLIFT graphs add to the forward graph's x and logits.
GRAPH_IO = ("w", "baseline", "score", "score_baseline", "grad", "multipliers")


def _clear_io_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy whose tensors named like :data:`GRAPH_IO` are renamed (a torch parameter
    ``self.w`` exports as an initializer ``w``, which would collide with the weights input)."""
    x_name, logits = _single_io(model)
    if {x_name, logits} & set(GRAPH_IO):
        raise InputError(f"the classifier graph's input and output are named {x_name!r} and {logits!r}; "
                         f"{', '.join(GRAPH_IO)} are the gradient graphs' own names: rename them (e.g. x, logits)")
    taken = tensor_names(model.graph)
    clashes = [name for name in GRAPH_IO if name in taken]
    if not clashes:
        return model
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    for name in clashes:
        rename_tensor(renamed.graph, name, unused_name(f"model/{name}", taken))
    return renamed


def _prepare(model: onnx.ModelProto, deeplift: bool) -> tuple[str, str, list, list]:
    if not any(op.domain in ("", "ai.onnx") and op.version >= 13 for op in model.opset_import):
        raise InputError("gradient graphs need ONNX opset >= 13")
    check_differentiable(model, deeplift=deeplift)
    x_name, logits = _single_io(model)
    shapes = read_shapes(model)
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
    model = _clear_io_names(fold_constants(model))
    x_name, logits, x_dims, logit_dims = _prepare(model, deeplift=False)
    writer = GraphWriter({n for node in model.graph.node for n in [*node.input, *node.output]} | {"w", "score", "grad"})
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
    :class:`UnsupportedOpError` for ops the rescale rule does not cover (softmax, normalisation, products
    such as squeeze-excitation or attention).

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
    model = _clear_io_names(fold_constants(model))
    x_name, logits, x_dims, logit_dims = _prepare(model, deeplift=True)
    taken = {n for node in model.graph.node for n in [*node.input, *node.output]}
    writer = GraphWriter(taken | {"w", "baseline", "multipliers", "score", "score_baseline"} | {f"ref/{n}" for n in taken})
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
