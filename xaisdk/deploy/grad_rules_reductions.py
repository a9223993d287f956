"""Gradient rules for reductions and the other ops classifier files from other frameworks use: variadic
``Sum``, ``Mean``, ``Max`` and ``Min`` (numpy broadcasting), ``ReduceMax`` / ``ReduceMin``,
``ReduceL1`` / ``ReduceL2`` / ``ReduceSumSquare`` / ``ReduceLogSumExp``, ``LRN`` (AlexNet, GoogLeNet,
CaffeNet), ``Einsum``, ``SpaceToDepth`` / ``DepthToSpace`` and the element-wise ``Sin``, ``Cos``,
``Sign``, ``Floor``, ``Ceil`` and ``Round``.

Ties follow torch's autograd: ``Max`` / ``Min`` split the gradient equally between the operands that
hold the extremum (``torch.maximum`` gives each of two tied operands half), ``ReduceMax`` /
``ReduceMin`` split it evenly among the tied extrema of a slice (``torch.amax``); ``ReduceL2`` of an
all-zero slice passes no gradient, and the step functions (Sign, Floor, Ceil, Round) pass none at all.
The reduced axes come from the ``axes`` attribute (opset 17) or the constant ``axes`` input (opset 18);
an empty list reduces every axis, or none with ``noop_with_empty_axes`` (where ONNX Runtime still
applies the element-wise part: ``ReduceSumSquare`` gives ``x ** 2``, ``ReduceL1`` / ``ReduceL2`` give
``|x|``, so the same formulas hold over an empty set of axes).

``Einsum``'s gradient for each operand is an ``Einsum`` of the upstream gradient with the other
operands; ``...`` is written out with explicit letters (a dim broadcast from 1 gets a letter of its
own, summed away), so the backward equations carry no ellipsis and no broadcasting.

>>> sorted(REDUCTION_RULES)[:6]
['Ceil', 'Cos', 'DepthToSpace', 'Einsum', 'Floor', 'LRN']
>>> parse_einsum("bij,bjk->bik", [[None, 2, 3], [None, 3, 4]])
(['bij', 'bjk'], 'bik')
>>> parse_einsum("...ij,jk", [[None, 5, 2, 3], [3, 4]])
(['abij', 'jk'], 'abik')
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from xaisdk.deploy.grad_context import GradContext, Rule, node_attrs, refuse, refuse_deeplift
from xaisdk.deploy.grad_rules_layout import axis_matrix
from xaisdk.methods.deeplift_rules import ELEMENTWISE_EXTREMUM, PRODUCT

__all__ = ["REDUCTION_RULES", "lrn_window", "parse_einsum"]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _add(ctx: GradContext, grads: dict[str, str], name: str, value: str) -> None:
    """Record ``value`` as a gradient of ``name``, summed with one already there (an operand given twice)."""
    grads[name] = ctx.w.op("Add", [grads[name], value]) if name in grads else value


def _elementwise(ctx: GradContext, node: onnx.NodeProto, g: str, derivative: str) -> dict[str, str]:
    return {node.input[0]: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _zeros_like(ctx: GradContext, name: str) -> str:
    return ctx.w.op("Expand", [ctx.w.const(0.0), ctx.w.op("Shape", [name])])


# --------------------------------------------------------------------------- variadic Sum, Mean, Max, Min


def _sum_mean(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    out = node.output[0]
    part = ctx.w.op("Div", [g, ctx.w.const(float(len(node.input)))]) if node.op_type == "Mean" else g
    grads: dict[str, str] = {}
    for name in node.input:
        if name in ctx.active:
            _add(ctx, grads, name, ctx.unbroadcast(part, out, name))
    return grads


def _extremum(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """Each operand holding the extremum gets ``g / (number of operands holding it)``, as torch.maximum."""
    w, out = ctx.w, node.output[0]
    active = list(dict.fromkeys(name for name in node.input if name in ctx.active))
    if ctx.deeplift and len(active) > 1:
        raise refuse_deeplift(node, ELEMENTWISE_EXTREMUM)
    masks = [w.op("Cast", [w.op("Equal", [name, out])], to=TensorProto.FLOAT) for name in node.input]
    count = masks[0] if len(masks) == 1 else w.op("Sum", masks)
    grads: dict[str, str] = {}
    for name in active:
        parts = [w.op("Div", [mask, count]) for mask, operand in zip(masks, node.input) if operand == name]
        derivative = parts[0] if len(parts) == 1 else w.op("Sum", parts)
        # The rescale rule sees max(t, constants) as an element-wise function of the one input-dependent t.
        unit = helper.make_node(node.op_type, [name], [out], name=node.name)
        grads[name] = ctx.unbroadcast(w.op("Mul", [g, ctx.multiplier(unit, derivative)]), out, name)
    return grads


# --------------------------------------------------------------------------- ReduceMax, ReduceMin, norms, log-sum-exp


def _reduced_axes(ctx: GradContext, node: onnx.NodeProto) -> list[int]:
    """The reduced axes, sorted and non-negative; ``[]`` where ``noop_with_empty_axes`` reduces none."""
    attrs = node_attrs(node)
    rank = len(ctx.shapes.of(node.input[0]))
    if len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in np.asarray(ctx.constant(node, node.input[1], "axes")).ravel()]
    else:
        axes = [int(a) for a in attrs.get("axes", [])]
    if not axes:
        return [] if int(attrs.get("noop_with_empty_axes", 0)) else list(range(rank))
    return sorted({a % rank for a in axes})


def _kept(ctx: GradContext, node: onnx.NodeProto, tensor: str, axes: list[int]) -> str:
    """``tensor`` (shaped like the node's output) with the reduced axes as size-1 axes, broadcastable to the input."""
    if axes and not int(node_attrs(node).get("keepdims", 1)):
        return ctx.w.op("Unsqueeze", [tensor, ctx.w.ints(axes, "axes")])
    return tensor


def _reduce_extremum(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """The gradient split evenly among a slice's tied extrema (torch.amax / torch.amin)."""
    w, x = ctx.w, node.input[0]
    axes = _reduced_axes(ctx, node)
    mask = w.op("Cast", [w.op("Equal", [x, _kept(ctx, node, node.output[0], axes)])], to=TensorProto.FLOAT)
    share = mask
    if axes:
        share = w.op("Div", [mask, w.op("ReduceSum", [mask, w.ints(axes, "axes")], keepdims=1)])
    return {x: w.op("Mul", [_kept(ctx, node, g, axes), share])}


def _reduce_sum_square(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, w = node.input[0], ctx.w
    g_kept = _kept(ctx, node, g, _reduced_axes(ctx, node))
    return {x: w.op("Mul", [g_kept, w.op("Mul", [x, w.const(2.0)])])}


def _reduce_l1(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, w = node.input[0], ctx.w
    return {x: w.op("Mul", [_kept(ctx, node, g, _reduced_axes(ctx, node)), w.op("Sign", [x])])}


def _reduce_l2(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """dx = x g / y, and 0 on a slice whose norm is 0 (torch's vector_norm)."""
    x, w = node.input[0], ctx.w
    axes = _reduced_axes(ctx, node)
    y = _kept(ctx, node, node.output[0], axes)
    zero = w.op("Equal", [y, w.const(0.0)])
    ratio = w.op("Div", [_kept(ctx, node, g, axes), w.op("Where", [zero, w.const(1.0), y])])
    return {x: w.op("Mul", [x, w.op("Where", [zero, w.const(0.0), ratio])])}


def _reduce_log_sum_exp(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, w = node.input[0], ctx.w
    axes = _reduced_axes(ctx, node)
    softmax = w.op("Exp", [w.op("Sub", [x, _kept(ctx, node, node.output[0], axes)])])
    return {x: w.op("Mul", [_kept(ctx, node, g, axes), softmax])}


# --------------------------------------------------------------------------- LRN


def lrn_window(channels: int, size: int) -> np.ndarray:
    """The (C, C) 0/1 matrix of LRN's channel window: row c sums channels c - (size-1)//2 ... c + ceil((size-1)/2).

    >>> lrn_window(4, 3).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    """
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    c = np.arange(channels)
    return ((c[None, :] >= c[:, None] - before) & (c[None, :] <= c[:, None] + after)).astype(np.float32)


def _lrn(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """y = x s^-beta, s = bias + alpha / size * W x^2 (W: the channel window), so
    dx = g s^-beta - 2 alpha beta / size * x * W^T (g x s^(-beta - 1))."""
    attrs = node_attrs(node)
    size = int(attrs["size"])
    alpha, beta, bias = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
    x, w = node.input[0], ctx.w
    rank = len(ctx.shapes.of(x))
    window = lrn_window(ctx.static(node, x, [1])[0], size)
    # axis_matrix applies the transpose of the matrix it is given: W^T for the forward sum, W for its adjoint
    summed = axis_matrix(ctx, w.op("Mul", [x, x]), window.T, 1, rank)
    s = w.op("Add", [w.op("Mul", [summed, w.const(alpha / size)]), w.const(bias)])
    direct = w.op("Mul", [g, w.op("Pow", [s, w.const(-beta)])])
    inner = w.op("Mul", [w.op("Mul", [g, x]), w.op("Pow", [s, w.const(-beta - 1.0)])])
    spread = axis_matrix(ctx, inner, window, 1, rank)
    through_s = w.op("Mul", [w.op("Mul", [x, spread]), w.const(2.0 * alpha * beta / size)])
    return {x: w.op("Sub", [direct, through_s])}


# --------------------------------------------------------------------------- Einsum


_LETTERS = string.ascii_lowercase + string.ascii_uppercase


def _einsum_terms(equation: str, count: int) -> tuple[list[str], str | None]:
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    if len(terms) != count:
        raise ValueError(f"equation {equation!r} names {len(terms)} operands, the node has {count}")
    return terms, (output if arrow else None)


def _ellipsis_dims(term: str, dims: Sequence[int | None]) -> list[int | None]:
    if "..." not in term:
        return []
    before = term.index("...")
    after = len(term) - before - 3
    return list(dims[before:len(dims) - after])


def parse_einsum(equation: str, dims: Sequence[Sequence[int | None]]) -> tuple[list[str], str]:
    """The equation's operand and output subscripts with ``...`` written out as explicit letters.

    ``dims``: each operand's dims (None where symbolic). Ellipsis dims are aligned from the right, as
    numpy broadcasting; a dim of 1 broadcast against a larger (or symbolic) one gets a letter of its own,
    which no other operand and not the output has (so it is summed away). An implicit output (no ``->``)
    is the ellipsis, then the letters used once, in alphabetical order. Raises ValueError for a letter
    repeated within an operand (a diagonal), or an ellipsis in the operands but not in an explicit output.
    """
    terms, output = _einsum_terms(equation, len(dims))
    for term in [*terms, output or ""]:
        if term.count("...") > 1 or "." in term.replace("...", ""):
            raise ValueError(f"malformed subscripts {term!r}")
    used = set("".join(terms) + (output or "")) - {"."}
    pool = iter(letter for letter in _LETTERS if letter not in used)
    spans = [_ellipsis_dims(term, d) for term, d in zip(terms, dims)]
    width = max((len(span) for span in spans), default=0)
    shared = [next(pool) for _ in range(width)]
    # Position k of the broadcast ellipsis (right-aligned) is 1 only where every operand that has it is 1.
    all_one = [all(span[k - width + len(span)] == 1 for span in spans if k >= width - len(span)) for k in range(width)]
    explicit = []
    for term, span in zip(terms, spans):
        if "..." in term:
            offset = width - len(span)
            letters = [next(pool) if size == 1 and not all_one[offset + j] else shared[offset + j]
                       for j, size in enumerate(span)]
            term = term.replace("...", "".join(letters))
        if len(set(term)) != len(term):
            repeated = sorted({letter for letter in term if term.count(letter) > 1})
            raise ValueError(f"operand subscripts {term!r} repeat {repeated} (a diagonal)")
        explicit.append(term)
    if output is None:
        letters = "".join(t.replace("...", "") for t in terms)
        output = ("..." if width else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if width and "..." not in output:
        raise ValueError(f"the operands have '...' but the output {output!r} does not")
    return explicit, output.replace("...", "".join(shared))


def _einsum(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """d operand_i = Einsum(g, the other operands -> operand_i's letters); letters of operand_i found nowhere
    else (summed by the forward) are broadcast back with Unsqueeze + Expand."""
    equation = _text(node_attrs(node)["equation"])
    positions = [i for i, name in enumerate(node.input) if name in ctx.active]
    if ctx.deeplift and len(positions) > 1:
        raise refuse_deeplift(node, PRODUCT)
    try:
        terms, output = parse_einsum(equation, [ctx.shapes.of(name) for name in node.input])
    except ValueError as err:
        raise refuse(node, f"equation {equation!r}: {err}; rewrite it without that form (e.g. take a diagonal with "
                           "torch.diagonal, or sum the extra axes explicitly, before an einsum with distinct letters)") from err
    w = ctx.w
    grads: dict[str, str] = {}
    for i in positions:
        others = [j for j in range(len(node.input)) if j != i]
        available = set(output).union(*(terms[j] for j in others))
        kept = "".join(letter for letter in terms[i] if letter in available)
        grad_equation = ",".join([output, *(terms[j] for j in others)]) + "->" + kept
        grad = g if grad_equation == f"{kept}->{kept}" else w.op(
            "Einsum", [g, *(node.input[j] for j in others)], equation=grad_equation)
        missing = [k for k, letter in enumerate(terms[i]) if letter not in available]
        if missing:
            grad = w.op("Expand", [w.op("Unsqueeze", [grad, w.ints(missing, "axes")]), w.op("Shape", [node.input[i]])])
        _add(ctx, grads, node.input[i], grad)
    return grads


# --------------------------------------------------------------------------- SpaceToDepth, DepthToSpace


def _space_to_depth(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    block = int(node_attrs(node)["blocksize"])
    return {node.input[0]: ctx.w.op("DepthToSpace", [g], blocksize=block, mode="DCR")}


def _depth_to_space(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    attrs = node_attrs(node)
    block, mode = int(attrs["blocksize"]), _text(attrs.get("mode", "DCR"))
    x, w = node.input[0], ctx.w
    if mode == "DCR":  # SpaceToDepth is its exact inverse
        return {x: w.op("SpaceToDepth", [g], blocksize=block)}
    if mode != "CRD":
        raise refuse(node, f"DepthToSpace mode {mode!r} (supported: DCR, CRD)")
    # CRD: (N, C/b^2, b, b, H, W) -> transpose (0, 1, 4, 2, 5, 3) -> (N, C/b^2, H*b, W*b); back the other way
    channels, height, width = ctx.static(node, x, [1, 2, 3])
    blocks = w.op("Reshape", [g, w.ints([0, channels // (block * block), height, block, width, block])])
    moved = w.op("Transpose", [blocks], perm=[0, 1, 3, 5, 2, 4])
    return {x: w.op("Reshape", [moved, w.ints([0, channels, height, width])])}


# --------------------------------------------------------------------------- element-wise functions


def _sin(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return _elementwise(ctx, node, g, ctx.w.op("Cos", [node.input[0]]))


def _cos(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return _elementwise(ctx, node, g, ctx.w.op("Neg", [ctx.w.op("Sin", [node.input[0]])]))


def _step(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """Sign, Floor, Ceil, Round: 0 almost everywhere, and 0 at the jumps too (torch)."""
    return _elementwise(ctx, node, g, _zeros_like(ctx, node.input[0]))


REDUCTION_RULES: dict[str, Rule] = {
    "Sum": _sum_mean,
    "Mean": _sum_mean,
    "Max": _extremum,
    "Min": _extremum,
    "ReduceMax": _reduce_extremum,
    "ReduceMin": _reduce_extremum,
    "ReduceL1": _reduce_l1,
    "ReduceL2": _reduce_l2,
    "ReduceSumSquare": _reduce_sum_square,
    "ReduceLogSumExp": _reduce_log_sum_exp,
    "LRN": _lrn,
    "Einsum": _einsum,
    "SpaceToDepth": _space_to_depth,
    "DepthToSpace": _depth_to_space,
    "Sin": _sin,
    "Cos": _cos,
    "Sign": _step,
    "Floor": _step,
    "Ceil": _step,
    "Round": _step,
}
