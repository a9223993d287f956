"""The machinery shared by the ONNX gradient rules: shapes, a node writer, refusals, the rule context.

A gradient rule (see :mod:`xaisdk.deploy.onnx_grad`) receives a :class:`GradContext`, the forward
node and the name of the gradient of the node's (first) output, and returns ``{input name: gradient
name}`` for the input-dependent inputs, writing its nodes with ``ctx.w`` (a :class:`GraphWriter`).

>>> w = GraphWriter(taken={"x"})
>>> w.op("Relu", ["x"]).startswith("grad/Relu_")
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from xaisdk.errors import InputError
from xaisdk.methods.deeplift_rules import refusal

__all__ = [
    "DEEPLIFT_EPS",
    "GradContext",
    "GraphWriter",
    "Rule",
    "Shapes",
    "UnsupportedOpError",
    "conv_transpose_padding",
    "node_attrs",
    "read_shapes",
    "refuse",
    "refuse_deeplift",
    "where",
    "window_geometry",
]

DEEPLIFT_EPS = 1e-10
class UnsupportedOpError(InputError):
    """The forward graph contains an op (or an op configuration) with no gradient rule."""


@dataclass
class Shapes:
    """Static shape knowledge: dims are ints, or None where symbolic (the batch)."""

    dims: dict[str, list[int | None]]

    def of(self, name: str) -> list[int | None]:
        if name not in self.dims:
            raise UnsupportedOpError(f"no shape is known for tensor {name!r}; export with static image sizes")
        return self.dims[name]


def _inferred_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    dims: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            dims[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    for init in graph.initializer:
        dims[init.name] = list(init.dims)
    return dims


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    inits = {t.name for t in fixed.graph.initializer}
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in inits and dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return fixed


def read_shapes(model: onnx.ModelProto) -> Shapes:
    """Static shapes of every tensor (None where a size depends on the batch).

    Symbolic inference loses the rank of tensors reshaped to sizes computed at run time from the
    batch (``nn.MultiheadAttention`` folds batch and heads into one axis). So shapes are inferred with
    two concrete batches, 7 and 11, with data propagation: a size that differs between them depends on
    the batch and is None; a size that agrees is static.
    """
    symbolic = _inferred_dims(model)
    inputs = [v for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}]
    if not any(v.type.tensor_type.shape.dim and not v.type.tensor_type.shape.dim[0].HasField("dim_value") for v in inputs):
        return Shapes(symbolic)
    try:
        seven, eleven = _inferred_dims(_with_batch(model, 7)), _inferred_dims(_with_batch(model, 11))
    except Exception:  # inference with a concrete batch can fail where the symbolic one did not
        return Shapes(symbolic)
    dims = dict(symbolic)
    for name, a in seven.items():
        b = eleven.get(name)
        if b is not None and len(a) == len(b):
            dims[name] = [x if x == y else None for x, y in zip(a, b)]
    return Shapes(dims)


class GraphWriter:
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


def node_attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def where(node: onnx.NodeProto) -> str:
    return f"op {node.op_type} at node {node.name or '(unnamed)'!r}"


def refuse(node: onnx.NodeProto, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"cannot differentiate {where(node)}: {why}")


def refuse_deeplift(node: onnx.NodeProto, reason: str) -> UnsupportedOpError:
    """DeepLIFT's refusal, in the sentence the torch reference uses (:mod:`xaisdk.methods.deeplift_rules`)."""
    return UnsupportedOpError(refusal(reason, where(node)))


class GradContext:
    """What a gradient rule may use: the writer, shapes, constants, and the DeepLIFT reference pass."""

    def __init__(self, writer: GraphWriter, shapes: Shapes, constants: dict[str, np.ndarray], active: set[str],
                 reference: dict[str, str] | None) -> None:
        self.w = writer
        self.shapes = shapes
        self.constants = constants
        self.active = active
        self.reference = reference  # tensor -> its name in the baseline pass (DeepLIFT only)
        self.output_grads: dict[str, str] = {}  # the node being differentiated: each output's summed gradient
        self.islands: Any = None  # DeepLIFT only: the element-wise units (xaisdk.deploy.deeplift_islands.Islands)

    @property
    def deeplift(self) -> bool:
        return self.reference is not None

    def static(self, node: onnx.NodeProto, name: str, axes: Sequence[int]) -> list[int]:
        dims = self.shapes.of(name)
        picked = [dims[a] for a in axes]
        if any(d is None for d in picked):
            raise refuse(node, f"tensor {name!r} needs static sizes on axes {list(axes)}, got {dims}")
        return [int(d) for d in picked]

    def constant(self, node: onnx.NodeProto, name: str, what: str) -> np.ndarray:
        if name not in self.constants:
            raise refuse(node, f"its {what} ({name!r}) must be a constant")
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


Rule = Callable[[GradContext, onnx.NodeProto, str], dict[str, str]]


def conv_transpose_padding(node, ctx: GradContext, in_name: str, out_name: str, kernel, strides, pads, dilations) -> list[int]:
    in_sizes = ctx.static(node, in_name, range(2, len(ctx.shapes.of(in_name))))
    out_sizes = ctx.static(node, out_name, range(2, len(ctx.shapes.of(out_name))))
    spatial = len(in_sizes)
    extra = []
    for i in range(spatial):
        produced = strides[i] * (out_sizes[i] - 1) + (kernel[i] - 1) * dilations[i] + 1 - pads[i] - pads[i + spatial]
        extra.append(in_sizes[i] - produced)
        if not 0 <= extra[-1] < max(strides[i], dilations[i]):
            raise refuse(node, f"cannot map output size {out_sizes[i]} back to input size {in_sizes[i]}")
    return extra


def window_geometry(node: onnx.NodeProto, ctx: GradContext, kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
    attrs = node_attrs(node)
    spatial = len(kernel)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    strides = list(attrs.get("strides", [1] * spatial))
    pads = list(attrs.get("pads", [0] * (2 * spatial)))
    dilations = list(attrs.get("dilations", [1] * spatial))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):  # padding="same": the explicit pads ONNX defines for it
        sizes = ctx.static(node, node.input[0], range(2, 2 + spatial))
        pads = [0] * (2 * spatial)
        for i, size in enumerate(sizes):
            total = max((-(-size // strides[i]) - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads[i], pads[i + spatial] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad not in ("NOTSET", "VALID"):
        raise refuse(node, f"auto_pad={auto_pad!r} (export with explicit pads)")
    return strides, pads, dilations
