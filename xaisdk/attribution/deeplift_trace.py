"""The torch side of DeepLIFT's op check: trace the forward with torch.fx, classify every op, and run
the traced graph with the rescale rule applied to each element-wise nonlinearity and Captum's rule
to each max pooling.

Module hooks only see ``nn.Module`` calls; a forward that calls ``torch.clamp``, ``F.relu`` or
multiplies two input-dependent tensors (a squeeze-excitation gate, attention) is invisible to them.
The traced graph shows every op, so the model is checked against the op kinds of
:mod:`xaisdk.methods.deeplift_rules` (the table the ONNX builder uses too) and refused, with the
same sentence, when an op is not covered; functional nonlinearities are rescaled like modules.

Self-gated units (``nn.SiLU``, ``nn.GELU`` in both ``approximate`` modes, ``nn.Mish``,
``nn.Hardswish`` and ``F.silu``, ``F.gelu``, ``F.mish``, ``F.hardswish`` on their first argument) are
rescaled as one element-wise unit, as the ONNX builder rescales the products they export to
(:mod:`xaisdk.deploy.deeplift_islands`). A gate written out by hand (``x * torch.sigmoid(x)``) is
still a product of two input-dependent tensors here and is refused, although the ONNX builder
recognises the same product in an exported graph and rescales it: for such a model the torch
backend refuses DeepLIFT that an ONNX bundle offers. Use the module or the ``F`` function to get
DeepLIFT on both.

Max pooling (``nn.MaxPool1d/2d/3d``, ``nn.AdaptiveMaxPool1d/2d/3d``, ``F.max_pool*d``,
``F.adaptive_max_pool*d``, ``torch.max_pool*d``; any kernel, stride, padding, dilation, ceil mode)
follows Captum's ``maxpool`` rule as the ONNX graph computes it: with ``top = max(y, y_ref)`` per
window, the window sends ``g * (top - y_ref)`` to the first maximum of the input's window and
``g * (y - top)`` to the first maximum of the baseline's window; a cell's multiplier is the sum of
what it receives, over all windows that pick it (overlapping windows add up), divided by
``x - x_ref`` (the plain max-pool gradient where ``|x - x_ref| < eps``). The attributions of a
window's cells add up to ``g * (y - y_ref)``, so completeness holds. The pooling indices may be
returned but must not be used.

A forward that torch.fx cannot trace (data-dependent control flow, TorchScript) or a model with hooks
(which the traced graph would not run as the model does) is refused: there is no slower generic
DeepLIFT to fall back to.

>>> from torch import nn
>>> class Clamped(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc = nn.Linear(2, 2)
...     def forward(self, x):
...         return self.fc(x).clamp(-1, 1)
>>> plan = deeplift_plan(Clamped())
>>> plan.refusal, sorted(plan.rescaled)
(None, ['clamp'])
>>> plan = deeplift_plan(nn.Sequential(nn.Conv2d(1, 2, 3), nn.SiLU(), nn.MaxPool2d(3, 2)))
>>> sorted(plan.rescaled), sorted(plan.max_pools)  # the SiLU, the overlapping max pooling
(['_1'], ['_2'])
"""

from __future__ import annotations

import inspect
import operator
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from xaisdk.methods.deeplift_rules import (
    DIVISION,
    ELEMENTWISE_EXTREMUM,
    EXTREMUM_REDUCTION,
    MAX_POOL,
    MAX_POOLING,
    NO_RULE,
    NONLINEAR_REDUCTION,
    NORMALIZATION,
    PRODUCT,
    SOFTMAX,
    refusal,
    untraceable,
)
from xaisdk.models.module_state import FX_TRACING, hooked_module, module_state

__all__ = ["ELEMENTWISE_MODULES", "REFUSED_MODULES", "SELF_GATED_MODULES", "Plan", "deeplift_plan", "rescaled_forward"]

# --- the torch ops, by kind -----------------------------------------------------------------------

ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink,
)  # fmt: skip
# x * gate(x), rescaled as one element-wise unit; an ONNX export writes some of them as products
# (SiLU as Mul(x, Sigmoid(x))), which the ONNX builder rescales as the same unit.
SELF_GATED_MODULES = (nn.SiLU, nn.Mish, nn.GELU, nn.Hardswish)
_SELF_GATED = {F.silu, F.mish, F.gelu, F.hardswish}
# Max pooling (Captum's rule): each module and function, and its form that also returns the indices.
_MAX_POOL_MODULES = {nn.MaxPool1d: F.max_pool1d_with_indices, nn.MaxPool2d: F.max_pool2d_with_indices,
                     nn.MaxPool3d: F.max_pool3d_with_indices, nn.AdaptiveMaxPool1d: F.adaptive_max_pool1d_with_indices,
                     nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d_with_indices,
                     nn.AdaptiveMaxPool3d: F.adaptive_max_pool3d_with_indices}
_MAX_POOL_FUNCTIONS = {
    **{f: F.max_pool1d_with_indices for f in (F.max_pool1d, F.max_pool1d_with_indices, torch.max_pool1d)},
    **{f: F.max_pool2d_with_indices for f in (F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d)},
    **{f: F.max_pool3d_with_indices for f in (F.max_pool3d, F.max_pool3d_with_indices, torch.max_pool3d)},
    **{f: F.adaptive_max_pool1d_with_indices for f in (F.adaptive_max_pool1d, F.adaptive_max_pool1d_with_indices)},
    **{f: F.adaptive_max_pool2d_with_indices for f in (F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices)},
    **{f: F.adaptive_max_pool3d_with_indices for f in (F.adaptive_max_pool3d, F.adaptive_max_pool3d_with_indices)},
}
# Spatial axes of each pooling (its indices are flat over them; an unbatched call has no channel axis).
_POOL_RANK = {F.max_pool1d_with_indices: 1, F.max_pool2d_with_indices: 2, F.max_pool3d_with_indices: 3,
              F.adaptive_max_pool1d_with_indices: 1, F.adaptive_max_pool2d_with_indices: 2,
              F.adaptive_max_pool3d_with_indices: 3}
AFFINE_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.ZeroPad2d, nn.ConstantPad1d,
    nn.ConstantPad2d, nn.ConstantPad3d, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)  # fmt: skip
REFUSED_MODULES = {
    nn.FractionalMaxPool2d: MAX_POOLING,
    nn.FractionalMaxPool3d: MAX_POOLING,
    **dict.fromkeys((nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d), SOFTMAX),
    **dict.fromkeys((nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
                     nn.InstanceNorm3d), NORMALIZATION),
    nn.MultiheadAttention: PRODUCT,
    nn.Bilinear: PRODUCT,
}

# Functions and tensor methods (by name) that are affine in every input-dependent argument.
_AFFINE_ANY = {operator.add, operator.sub, operator.neg, operator.pos, operator.getitem, torch.add, torch.sub,
               torch.neg, torch.cat, torch.concat, torch.stack, torch.flatten, torch.reshape, torch.transpose,
               torch.permute, torch.squeeze, torch.unsqueeze, torch.mean, torch.sum, torch.chunk, torch.split,
               torch.narrow, torch.movedim, torch.swapaxes, torch.clone, F.pad, F.avg_pool1d, F.avg_pool2d,
               F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.interpolate,
               F.pixel_shuffle, F.pixel_unshuffle}
_AFFINE_METHODS = {"add", "sub", "neg", "view", "reshape", "flatten", "unflatten", "permute", "transpose", "squeeze",
                   "unsqueeze", "contiguous", "mean", "sum", "expand", "expand_as", "view_as", "reshape_as", "repeat",
                   "chunk", "split", "narrow", "clone", "float", "to", "type_as", "movedim", "swapaxes", "__getitem__"}
# Affine only in the first argument (weights, statistics and the like must not depend on x).
_AFFINE_FIRST = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear}
_BILINEAR = {operator.mul, operator.matmul, torch.mul, torch.matmul, torch.mm, torch.bmm}
_BILINEAR_METHODS = {"mul", "matmul", "mm", "bmm"}
_DIVISIONS = {operator.truediv, torch.div, torch.true_divide}
_DIVISION_METHODS = {"div", "true_divide"}
# Element-wise nonlinearities (rescaled); the input-dependent tensor must be the first argument.
_ELEMENTWISE = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.hardtanh, torch.clamp, torch.clip, torch.clamp_min,
                torch.clamp_max, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.elu, F.selu, F.celu, F.softplus,
                F.softsign, F.hardsigmoid, F.logsigmoid, F.tanhshrink, torch.relu_, F.relu_, F.leaky_relu_,
                F.hardtanh_, torch.clamp_, torch.clip_}
_ELEMENTWISE_METHODS = {"relu", "relu_", "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_max", "sigmoid",
                        "sigmoid_", "tanh", "tanh_"}
# Ops whose outputs are shapes, metadata or constants of the input's shape: never input-dependent values.
_SHAPE_METHODS = {"size", "dim", "numel", "new_zeros", "new_ones", "new_full", "new_empty"}
_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim"}
_SHAPE_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}
# Refused ops with a specific reason (others get NO_RULE), the sentences the ONNX builder gives for the ops
# they export to; matched on the op's name, first match wins (``vector_norm`` before ``norm``).
_NAMED_REASONS = (("max_pool", MAX_POOLING), ("softmax", SOFTMAX), ("softmin", SOFTMAX), ("vector_norm", NONLINEAR_REDUCTION),
                  ("logsumexp", NONLINEAR_REDUCTION), ("norm", NORMALIZATION), ("attention", PRODUCT), ("bilinear", PRODUCT),
                  ("maximum", ELEMENTWISE_EXTREMUM), ("minimum", ELEMENTWISE_EXTREMUM), ("amax", EXTREMUM_REDUCTION),
                  ("amin", EXTREMUM_REDUCTION))


@dataclass(frozen=True)
class Plan:
    """The outcome of analysing a module: its traced graph, the nodes to rescale and the max poolings
    (Captum's rule), or why DeepLIFT is refused."""

    graph: fx.GraphModule | None
    rescaled: frozenset[str]
    refusal: str | None
    max_pools: frozenset[str] = frozenset()


class _Refused(Exception):
    def __init__(self, message: str, operands: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.operands = operands  # refused for which operands depend on x (reported after refused op kinds)


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_module":
        return str(node.target)
    return re.sub(r"_\d+$", "", node.name)


def _where(node: fx.Node, module: nn.Module | None = None) -> str:
    stack = list(node.meta.get("nn_module_stack", {}).keys())
    if node.op == "call_module":
        return f"{type(module).__name__} module {node.target!r}"
    inside = f" in module {stack[-1]!r}" if stack else " in the model's forward"
    return f"op {_op_name(node)} at node {node.name!r}{inside}"


def _named_reason(name: str) -> str:
    return next((reason for key, reason in _NAMED_REASONS if key in name.lower()), NO_RULE)


def _flat(values: Any) -> Iterable[Any]:
    if isinstance(values, (tuple, list)):
        for value in values:
            yield from _flat(value)
    elif isinstance(values, dict):
        for value in values.values():
            yield from _flat(value)
    else:
        yield values


def _active_args(node: fx.Node, active: set[fx.Node]) -> list[int]:
    """Positions (in ``args``, then ``kwargs`` in order) whose value depends on the input."""
    values = [*node.args, *node.kwargs.values()]
    return [i for i, value in enumerate(values) if any(isinstance(v, fx.Node) and v in active for v in _flat(value))]


def _inplace(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return bool(getattr(module, "inplace", False))
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return bool(node.kwargs.get("inplace", False)) or str(name).endswith("_")


def _classify(node: fx.Node, module: nn.Module | None, positions: list[int]) -> str:
    """"affine", "rescaled", "max_pool" or "shape"; raises :class:`_Refused` for an op DeepLIFT does not cover."""
    target = node.target
    if node.op == "call_module":
        if isinstance(module, (*ELEMENTWISE_MODULES, *SELF_GATED_MODULES)):
            return "rescaled"
        if isinstance(module, AFFINE_MODULES):
            return "affine"
        if _module_pool(module) is not None:
            return MAX_POOL
        reason = next((why for kind, why in REFUSED_MODULES.items() if isinstance(module, kind)), NO_RULE)
        raise _Refused(refusal(reason, _where(node, module)))
    if node.op == "call_method":
        if target in _SHAPE_METHODS:
            return "shape"
        if target in _AFFINE_METHODS:
            return "affine"
        bilinear, division, elementwise = target in _BILINEAR_METHODS, target in _DIVISION_METHODS, target in _ELEMENTWISE_METHODS
    else:
        if target in _SHAPE_FUNCTIONS or (target is getattr and node.args[1] in _SHAPE_ATTRS):
            return "shape"
        if target in _AFFINE_ANY:
            return "affine"
        if target in _MAX_POOL_FUNCTIONS and positions == [0]:
            return MAX_POOL
        if target in _AFFINE_FIRST:
            if positions != [0]:
                raise _Refused(refusal(PRODUCT, _where(node)), operands=True)
            return "affine"
        bilinear, division = target in _BILINEAR, target in _DIVISIONS
        elementwise = target in _ELEMENTWISE or target in _SELF_GATED
    if bilinear:
        if len(positions) > 1:
            raise _Refused(refusal(PRODUCT, _where(node)), operands=True)
        return "affine"
    if division:
        if any(p != 0 for p in positions):
            raise _Refused(refusal(DIVISION, _where(node)), operands=True)
        return "affine"
    if elementwise:
        if positions != [0]:
            raise _Refused(refusal("input-dependent bounds or parameters of an element-wise op", _where(node)))
        return "rescaled"
    raise _Refused(refusal(_named_reason(_op_name(node)), _where(node)))


def _check_indices_unused(node: fx.Node, module: nn.Module | None) -> None:
    """A max pooling's indices carry no DeepLIFT multiplier: refused when anything reads them."""
    if not _returns_indices(node, module):
        return
    for user in node.users:
        if user.op == "call_function" and user.target is operator.getitem and user.args[1] in (0, -2):
            continue
        if user.op == "call_function" and user.target is operator.getitem and not user.users:
            continue  # the indices, unpacked and never used
        raise _Refused(refusal(MAX_POOLING, f"{_where(node, module)}, whose indices output is used"))


def _analyse(module: nn.Module) -> Plan:
    hooked = hooked_module(module)
    if hooked is not None:
        where = hooked or "(the model itself)"
        return Plan(None, frozenset(), untraceable(f"module {where} has hooks, which can change what it computes"))
    if isinstance(module, torch.jit.ScriptModule):
        return Plan(None, frozenset(), untraceable("it is a TorchScript module, whose ops torch.fx cannot see"))
    try:
        with FX_TRACING.exclusive():  # fx patches nn.Module.__call__ process-wide while it traces
            graph = fx.symbolic_trace(module)
    except Exception as err:  # fx raises many types for forwards it cannot trace
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return Plan(None, frozenset(), untraceable(f"torch.fx cannot trace its forward ({type(err).__name__}: {first})"))
    try:
        rescaled, max_pools = _special_nodes(graph)
    except _Refused as err:
        return Plan(None, frozenset(), err.message)
    return Plan(graph, rescaled, None, max_pools)


def _special_nodes(graph: fx.GraphModule) -> tuple[frozenset[str], frozenset[str]]:
    """Names of the nodes to rescale and of the max poolings; raises :class:`_Refused` for the first op
    kind DeepLIFT does not cover, else for the first product or quotient of input-dependent tensors
    (the ONNX builder's order)."""
    modules = dict(graph.named_modules())
    active: set[fx.Node] = set()
    rescaled = set()
    max_pools = set()
    operands: _Refused | None = None
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            active.add(node)
            continue
        if node.op in ("get_attr", "output"):
            continue
        positions = _active_args(node, active)
        if not positions:
            continue  # a constant of the forward (weights, shapes): any op is fine
        module = modules.get(node.target) if node.op == "call_module" else None
        try:
            kind = _classify(node, module, positions)
        except _Refused as err:
            if not err.operands:
                raise
            operands, kind = operands or err, "affine"
        if kind == "shape":
            continue
        active.add(node)
        if kind == MAX_POOL:
            _check_indices_unused(node, module)
            max_pools.add(node.name)
        if kind == "rescaled":
            source = node.args[0]
            if _inplace(node, module) and isinstance(source, fx.Node) and len(source.users) > 1:
                raise _Refused(refusal("an in-place nonlinearity whose input is used again", _where(node, module)))
            rescaled.add(node.name)
    if operands is not None:
        raise operands
    return frozenset(rescaled), frozenset(max_pools)


_plans: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Plan]] = weakref.WeakKeyDictionary()
_plans_lock = threading.Lock()


def deeplift_plan(module: nn.Module) -> Plan:
    """The DeepLIFT analysis of ``module`` (cached until its structure, modes, hooks or parameters change)."""
    key = module_state(module)
    with _plans_lock:
        cached = _plans.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    plan = _analyse(module)
    with _plans_lock:
        _plans[module] = (key, plan)
    return plan


def _rescale(f: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor, out: torch.Tensor, eps: float) -> torch.Tensor:
    """``out`` with the gradient w.r.t. ``inp`` replaced by the rescale multiplier (rows: inputs, then baselines)."""
    half = inp.shape[0] // 2
    d_in = inp[:half] - inp[half:]
    d_out = out[:half] - out[half:]
    near = d_in.abs() < eps
    multiplier = d_out / torch.where(near, torch.ones_like(d_in), d_in)
    if near.any():
        with torch.enable_grad():
            probe = inp[:half].detach().clone().requires_grad_(True)
            (derivative,) = torch.autograd.grad(f(probe.clone()).sum(), probe)
        multiplier = torch.where(near, derivative, multiplier)
    multiplier = torch.cat([multiplier, multiplier]).detach()
    return out.detach() + (inp - inp.detach()) * multiplier


def _returns_indices(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return bool(getattr(module, "return_indices", False))
    if getattr(node.target, "__name__", "").endswith("_with_indices"):
        return True  # the F.*_with_indices functions return (values, indices) whatever return_indices says
    return bool(_bind_pool_call(node.target, node.args, node.kwargs).arguments.get("return_indices", False))


def _module_pool(module: nn.Module | None) -> Callable[..., Any] | None:
    return next((function for kind, function in _MAX_POOL_MODULES.items() if isinstance(module, kind)), None)


def _bind_pool_call(target: Any, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    return inspect.signature(_MAX_POOL_FUNCTIONS[target]).bind(*args, **kwargs)


def _pool_with_indices(
    node: fx.Node, module: nn.Module | None, args: tuple, kwargs: dict
) -> tuple[Callable[[torch.Tensor], Any], int]:
    """The max pooling of ``node`` as ``t -> (values, indices)``, and the number of spatial axes the indices are flat over."""
    if module is None:
        function = _MAX_POOL_FUNCTIONS[node.target]
        bound = _bind_pool_call(node.target, args, kwargs)
        options = {name: value for name, value in list(bound.arguments.items())[1:] if name != "return_indices"}
    else:
        function = _module_pool(module)
        adaptive = isinstance(module, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d))
        names = ("output_size",) if adaptive else ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
        options = {name: getattr(module, name) for name in names}
    return (lambda t: function(t, **options)), _POOL_RANK[function]


def _max_pool_rule(
    pool: Callable[[torch.Tensor], Any], rank: int, inp: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the max pooling ``pool`` with Captum's rule as the gradient (rows: inputs, then baselines).

    The values are ``pool(inp)`` plus a linear map ``T`` of ``inp - inp.detach()`` (zero, but it carries
    the gradient): per window, ``T(u) = u[m] * near[m] + (top - y_ref) * u[m] / d[m] + (y - top) * u[m_ref] / d[m_ref]``
    with ``m`` and ``m_ref`` the window's first maximum in the input and in the baseline, ``d = x - x_ref``,
    ``near = |d| < eps`` and ``1 / d`` taken as 0 where near. Its transpose, the backward, sends
    ``g * (top - y_ref)`` to ``m`` and ``g * (y - top)`` to ``m_ref`` (``g`` to ``m`` where near) and divides
    by ``d``; ``gather``'s backward adds up what overlapping windows send to one cell.
    """
    half = inp.shape[0] // 2
    values = inp.detach()
    out, indices = pool(values)
    y, y_ref = out[:half], out[half:]
    top = torch.maximum(y, y_ref)
    d = values[:half] - values[half:]
    near = d.abs() < eps
    inverse = torch.where(near, torch.zeros_like(d), 1.0 / torch.where(near, torch.ones_like(d), d))
    at_x, at_ref = indices[:half].flatten(-rank), indices[half:].flatten(-rank)

    def pick(u: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        return u.flatten(-rank).gather(-1, at).view_as(y)

    change = inp - values
    parts = [pick(u * near, at_x) + (top - y_ref) * pick(u * inverse, at_x) + (y - top) * pick(u * inverse, at_ref)
             for u in (change[:half], change[half:])]
    return out + torch.cat(parts), indices


class _RescaleInterpreter(fx.Interpreter):
    def __init__(self, plan: Plan, eps: float) -> None:
        super().__init__(plan.graph)
        self.rescaled = plan.rescaled
        self.max_pools = plan.max_pools
        self.modules = dict(plan.graph.named_modules()) if plan.max_pools else {}
        self.eps = eps

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.max_pools:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            module = self.modules.get(n.target) if n.op == "call_module" else None
            values, indices = _max_pool_rule(*_pool_with_indices(n, module, args, kwargs), args[0], self.eps)
            return (values, indices) if _returns_indices(n, module) else values
        if n.name not in self.rescaled:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        call = getattr(self, n.op)

        def f(t: torch.Tensor) -> torch.Tensor:
            return call(n.target, (t, *args[1:]), kwargs)

        inp = args[0]
        return _rescale(f, inp, f(inp.clone()), self.eps)  # the clone keeps in-place ops off the compared input


def rescaled_forward(plan: Plan, both: torch.Tensor, eps: float) -> torch.Tensor:
    """The model's output on ``both`` (inputs, then their baselines) with rescale-rule gradients
    (Captum's rule at max poolings)."""
    if plan.graph is None:
        raise ValueError("rescaled_forward needs a plan without a refusal")
    return _RescaleInterpreter(plan, eps).run(both)
