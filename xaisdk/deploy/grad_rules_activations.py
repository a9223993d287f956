"""Gradient rules for element-wise activations and functions: the hard, exponential and smooth units
(HardSwish, HardSigmoid, Elu, Selu, Celu, PRelu, Softplus, Softsign, Mish, Gelu) and the elementary
functions decomposed activations are built from (Erf, Exp, Log, Sqrt, Reciprocal, Pow with a
constant exponent, Abs).

Each rule writes the local derivative ``f'(x)`` with default-domain ops and hands it to
:meth:`GradContext.multiplier <xaisdk.deploy.grad_context.GradContext.multiplier>`, so the DeepLIFT
graph replaces it by the rescale ratio ``(f(x) - f(b)) / (x - b)``. The derivatives follow torch's
autograd, also at the kinks (HardSwish at -3 and 3, HardSigmoid at its clamps, Elu/Selu/Celu/PRelu at 0).

>>> sorted(ACTIVATION_RULES)[:4]
['Abs', 'Celu', 'Elu', 'Erf']
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from xaisdk.deploy.grad_context import GradContext, Rule, node_attrs, refuse

__all__ = ["ACTIVATION_RULES"]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_GAMMA = 1.0507009873554804934193349852946
GELU_TANH_C = 0.044715  # the cubic coefficient of GELU's tanh approximation


def _apply(ctx: GradContext, node: onnx.NodeProto, g: str, derivative: str) -> dict[str, str]:
    """Chain the upstream gradient through an element-wise op of ``node.input[0]``."""
    return {node.input[0]: ctx.w.op("Mul", [g, ctx.multiplier(node, derivative)])}


def _positive(ctx: GradContext, x: str) -> str:
    return ctx.w.op("Greater", [x, ctx.w.const(0.0)])


def _exponential_branch(ctx: GradContext, node: onnx.NodeProto, slope_pos: float, negative: str) -> str:
    """``slope_pos`` where x > 0, ``negative`` elsewhere (Elu, Selu, Celu)."""
    return ctx.w.op("Where", [_positive(ctx, node.input[0]), ctx.w.const(slope_pos), negative])


def _elu(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    alpha = float(node_attrs(node).get("alpha", 1.0))  # y = alpha (e^x - 1) below 0, so y' = y + alpha
    negative = ctx.w.op("Add", [node.output[0], ctx.w.const(alpha)])
    return _apply(ctx, node, g, _exponential_branch(ctx, node, 1.0, negative))


def _selu(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    attrs = node_attrs(node)
    alpha, gamma = float(attrs.get("alpha", SELU_ALPHA)), float(attrs.get("gamma", SELU_GAMMA))
    negative = ctx.w.op("Add", [node.output[0], ctx.w.const(alpha * gamma)])
    return _apply(ctx, node, g, _exponential_branch(ctx, node, gamma, negative))


def _celu(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    alpha = float(node_attrs(node).get("alpha", 1.0))  # below 0, y' = exp(x / alpha) = y / alpha + 1
    negative = ctx.w.op("Add", [ctx.w.op("Div", [node.output[0], ctx.w.const(alpha)]), ctx.w.const(1.0)])
    return _apply(ctx, node, g, _exponential_branch(ctx, node, 1.0, negative))


def _prelu(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    slope = node.input[1]
    if slope in ctx.active:
        raise refuse(node, "its slope depends on the input")
    derivative = ctx.w.op("Where", [_positive(ctx, node.input[0]), ctx.w.const(1.0), slope])
    return _apply(ctx, node, g, derivative)


def _hard_sigmoid(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    alpha = float(node_attrs(node).get("alpha", 0.2))
    y = node.output[0]
    inside = ctx.w.op("And", [ctx.w.op("Greater", [y, ctx.w.const(0.0)]), ctx.w.op("Less", [y, ctx.w.const(1.0)])])
    derivative = ctx.w.op("Mul", [ctx.w.op("Cast", [inside], to=TensorProto.FLOAT), ctx.w.const(alpha)])
    return _apply(ctx, node, g, derivative)


def _hard_swish(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, w = node.input[0], ctx.w  # y = x * clamp(x / 6 + 1/2, 0, 1): y' = 0 below -3, x / 3 + 1/2 up to 3, 1 above
    # as masks cast to float (bit for bit the same values): ONNX Runtime's CPU Where is about 3x slower
    # than these element-wise ops, and MobileNetV3's gradient spent a fifth of its time in it
    middle = w.op("Add", [w.op("Div", [x, w.const(3.0)]), w.const(0.5)])
    inside = w.op("Cast", [w.op("LessOrEqual", [w.op("Abs", [x]), w.const(3.0)])], to=TensorProto.FLOAT)
    above = w.op("Cast", [w.op("Greater", [x, w.const(3.0)])], to=TensorProto.FLOAT)
    derivative = w.op("Add", [w.op("Mul", [middle, inside]), above])
    return _apply(ctx, node, g, derivative)


def _softplus(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return _apply(ctx, node, g, ctx.w.op("Sigmoid", [node.input[0]]))


def _softsign(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    w = ctx.w  # y = x / (1 + |x|): y' = 1 / (1 + |x|)^2
    denominator = w.op("Add", [w.op("Abs", [node.input[0]]), w.const(1.0)])
    return _apply(ctx, node, g, w.op("Reciprocal", [w.op("Mul", [denominator, denominator])]))


def _mish(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, w = node.input[0], ctx.w  # y = x tanh(sp(x)): y' = tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2)
    t = w.op("Tanh", [w.op("Softplus", [x])])
    sech2 = w.op("Sub", [w.const(1.0), w.op("Mul", [t, t])])
    derivative = w.op("Add", [t, w.op("Mul", [w.op("Mul", [x, w.op("Sigmoid", [x])]), sech2])])
    return _apply(ctx, node, g, derivative)


def _gelu(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, w = node.input[0], ctx.w
    approximate = node_attrs(node).get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    if approximate == "tanh":
        # y = x/2 (1 + tanh(u)), u = c (x + k x^3): y' = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 k x^2)
        c = math.sqrt(2.0 / math.pi)
        x2 = w.op("Mul", [x, x])
        u = w.op("Mul", [w.op("Mul", [x, w.op("Add", [w.const(1.0), w.op("Mul", [x2, w.const(GELU_TANH_C)])])]), w.const(c)])
        t = w.op("Tanh", [u])
        du = w.op("Mul", [w.op("Add", [w.const(1.0), w.op("Mul", [x2, w.const(3.0 * GELU_TANH_C)])]), w.const(c)])
        sech2 = w.op("Sub", [w.const(1.0), w.op("Mul", [t, t])])
        first = w.op("Mul", [w.op("Add", [w.const(1.0), t]), w.const(0.5)])
        second = w.op("Mul", [w.op("Mul", [w.op("Mul", [x, w.const(0.5)]), sech2]), du])
        return _apply(ctx, node, g, w.op("Add", [first, second]))
    if approximate != "none":
        raise refuse(node, f"Gelu with approximate={approximate!r}")
    # y = x Phi(x): y' = Phi(x) + x phi(x)
    cdf = w.op("Mul", [w.op("Add", [w.const(1.0), w.op("Erf", [w.op("Mul", [x, w.const(1.0 / math.sqrt(2.0))])])]), w.const(0.5)])
    pdf = w.op("Mul", [w.op("Exp", [w.op("Mul", [w.op("Mul", [x, x]), w.const(-0.5)])]), w.const(1.0 / math.sqrt(2.0 * math.pi))])
    return _apply(ctx, node, g, w.op("Add", [cdf, w.op("Mul", [x, pdf])]))


def _erf(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, w = node.input[0], ctx.w  # erf'(x) = 2 / sqrt(pi) exp(-x^2)
    gauss = w.op("Exp", [w.op("Neg", [w.op("Mul", [x, x])])])
    return _apply(ctx, node, g, w.op("Mul", [gauss, w.const(2.0 / math.sqrt(math.pi))]))


def _exp(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return _apply(ctx, node, g, node.output[0])


def _log(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return _apply(ctx, node, g, ctx.w.op("Reciprocal", [node.input[0]]))


def _sqrt(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return _apply(ctx, node, g, ctx.w.op("Div", [ctx.w.const(0.5), node.output[0]]))


def _reciprocal(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    y = node.output[0]
    return _apply(ctx, node, g, ctx.w.op("Neg", [ctx.w.op("Mul", [y, y])]))


def _abs(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    return _apply(ctx, node, g, ctx.w.op("Sign", [node.input[0]]))


def _pow(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    if node.input[1] in ctx.active:
        raise refuse(node, "an input-dependent exponent (only a constant exponent is supported)")
    p = ctx.constant(node, node.input[1], "exponent").astype(np.float64)
    x, w = node.input[0], ctx.w
    if np.all(p == 1.0):
        return _apply(ctx, node, g, w.const(1.0))
    if np.all(p == 2.0):  # the common case (variances): 2x, without a Pow in the backward graph
        derivative = w.op("Mul", [x, w.const(2.0)])
    else:
        derivative = w.op("Mul", [w.op("Pow", [x, w.const(p - 1.0)]), w.const(p)])
    return _apply(ctx, node, g, derivative)


ACTIVATION_RULES: dict[str, Rule] = {
    "Abs": _abs,
    "Celu": _celu,
    "Elu": _elu,
    "Erf": _erf,
    "Exp": _exp,
    "Gelu": _gelu,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Log": _log,
    "Mish": _mish,
    "PRelu": _prelu,
    "Pow": _pow,
    "Reciprocal": _reciprocal,
    "Selu": _selu,
    "Softplus": _softplus,
    "Softsign": _softsign,
    "Sqrt": _sqrt,
}
