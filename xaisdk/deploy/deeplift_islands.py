"""Element-wise "islands": products of functions of one tensor that DeepLIFT rescales as one unit.

Exported graphs write SiLU as ``Mul(t, Sigmoid(t))``, Mish as ``Mul(t, Tanh(Softplus(t)))``, GELU
as ``Mul(t, Add(Erf(Div(t, c)), 1))`` (then ``Mul(., 0.5)``) and softsign as ``Div(t, Add(Abs(t), 1))``:
products or quotients of two input-dependent tensors, which the rescale rule applied op by op does
not cover. Each of these is an element-wise function ``y = f(t)`` of a single tensor ``t``, though,
and DeepLIFT treats such a unit as one nonlinearity (as the torch reference treats ``nn.SiLU``): its
multiplier is ``(y(x) - y(b)) / (t(x) - t(b))``, the unit's derivative where ``|t(x) - t(b)| < eps``.

An island ends at a product (``Mul`` of two input-dependent tensors) or quotient (``Div`` by one);
its root ``t`` is the nearest tensor through which every input-dependent path into the product
passes, and every node between them must be element-wise (unary functions, or binary ops whose
other operands are constants or members of the island) and keep ``t``'s shape; no tensor inside may
be used outside the island. The derivative of the island is built by running the ordinary gradient
rules over its nodes with a seed of ones.

>>> import onnx
>>> from onnx import helper, TensorProto
>>> io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("x", "y")]
>>> nodes = [helper.make_node("Relu", ["x"], ["t"], name="relu"), helper.make_node("Sigmoid", ["t"], ["s"], name="sig"),
...          helper.make_node("Mul", ["t", "s"], ["y"], name="silu")]
>>> graph = helper.make_graph(nodes, "g", io[:1], io[1:])
>>> shapes = {"x": [None, 3], "t": [None, 3], "s": [None, 3], "y": [None, 3]}
>>> island = Islands(graph, {"x", "t", "s", "y"}, shapes).of(nodes[2])
>>> island.root, [n.name for n in island.nodes]
('t', ['sig', 'silu'])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx
from onnx import helper

from xaisdk.deploy.grad_context import GradContext, Rule

__all__ = ["ELEMENTWISE_BINARY", "ELEMENTWISE_UNARY", "Island", "Islands", "island_gradient"]

# Ops element-wise in their first input (any other inputs must be constants).
ELEMENTWISE_UNARY = frozenset(
    {"Abs", "Celu", "Clip", "Dropout", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu",
     "Log", "Mish", "Neg", "Pow", "PRelu", "Reciprocal", "Relu", "Selu", "Sigmoid", "Softplus", "Softsign", "Sqrt", "Tanh"}
)
# Ops element-wise in every operand (operands of the output's shape, or constants broadcast into it).
ELEMENTWISE_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
MAX_ISLAND_NODES = 64  # far above any activation unit; bounds the search on large element-wise regions


@dataclass(frozen=True)
class Island:
    """An element-wise function ``output = f(root)``: its nodes in graph order, the last one producing ``output``."""

    root: str
    output: str
    nodes: tuple[onnx.NodeProto, ...]


class Islands:
    """Finds the island ending at a product or quotient node of a graph (``None`` where there is none)."""

    def __init__(self, graph: onnx.GraphProto, active: set[str], shapes: Mapping[str, list[int | None]]) -> None:
        self.active = active
        self.shapes = shapes
        self.order = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[int]] = {}
        self.nodes = list(graph.node)
        for index, node in enumerate(self.nodes):
            for name in node.output:
                self.producer[name] = node
                self.order[name] = index
            for name in node.input:
                self.consumers.setdefault(name, []).append(index)
        self.outputs = {out.name for out in graph.output}

    def _active_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [name for name in node.input if name and name in self.active]

    def _elementwise(self, node: onnx.NodeProto) -> bool:
        """Element-wise in its input-dependent operands, each shaped like the (first) output."""
        if node.domain not in ("", "ai.onnx"):
            return False
        inputs = self._active_inputs(node)
        if node.op_type in ELEMENTWISE_UNARY:
            if inputs != [node.input[0]]:
                return False
        elif node.op_type not in ELEMENTWISE_BINARY:
            return False
        out = self.shapes.get(node.output[0])
        return out is not None and all(self.shapes.get(name) == out for name in inputs)

    def _members(self, product: onnx.NodeProto, root: str) -> list[onnx.NodeProto] | None:
        """The nodes between ``root`` and ``product`` if every input-dependent path into it starts at ``root``."""
        seen: dict[int, onnx.NodeProto] = {}
        stack = self._active_inputs(product)
        while stack:
            name = stack.pop()
            if name == root:
                continue
            node = self.producer.get(name)
            if node is None or not self._elementwise(node):
                return None
            index = self.order[name]
            if index not in seen:
                seen[index] = node
                if len(seen) > MAX_ISLAND_NODES:
                    return None
                stack.extend(self._active_inputs(node))
        return [seen[i] for i in sorted(seen)]

    def _candidates(self, product: onnx.NodeProto) -> list[str]:
        """Input-dependent tensors reachable backwards through element-wise nodes, latest first."""
        found, stack = set(), self._active_inputs(product)
        while stack and len(found) <= MAX_ISLAND_NODES:
            name = stack.pop()
            if name in found:
                continue
            found.add(name)
            node = self.producer.get(name)
            if node is not None and self._elementwise(node):
                stack.extend(self._active_inputs(node))
        return sorted(found, key=lambda name: self.order.get(name, -1), reverse=True)

    def of(self, product: onnx.NodeProto) -> Island | None:
        if not self._elementwise(product):
            return None
        for root in self._candidates(product):
            members = self._members(product, root)
            if members is None:
                continue
            inside = {self.order[name] for node in members for name in node.output if name in self.order}
            own = self.order[product.output[0]]
            escapes = any(
                name in self.outputs or any(c not in inside and c != own for c in self.consumers.get(name, []))
                for node in members for name in node.output if name
            )
            if not escapes:
                return Island(root, product.output[0], (*members, product))
        return None


def island_gradient(ctx: GradContext, island: Island, g: str, rules: Mapping[str, Rule]) -> dict[str, str]:
    """``{root: g * multiplier}``: the island's rescale multiplier in DeepLIFT, its derivative otherwise.

    The derivative is the island's vector-Jacobian product with a seed of ones, written by the
    ordinary (non-DeepLIFT) ``rules``: the island is element-wise, so that product is its diagonal.
    """
    w = ctx.w
    plain = GradContext(w, ctx.shapes, ctx.constants, ctx.active, None)
    pending: dict[str, list[str]] = {island.output: [w.op("Expand", [w.const(1.0), w.op("Shape", [island.output])])]}
    for node in reversed(island.nodes):
        parts = pending.pop(node.output[0], None)
        if parts is None:
            continue
        seed = parts[0]
        for extra in parts[1:]:
            seed = w.op("Add", [seed, extra])
        for name, value in rules[node.op_type](plain, node, seed).items():
            pending.setdefault(name, []).append(value)
    parts = pending.pop(island.root)
    derivative = parts[0]
    for extra in parts[1:]:
        derivative = w.op("Add", [derivative, extra])
    unit = helper.make_node("Island", [island.root], [island.output], name=island.nodes[-1].name)
    return {island.root: w.op("Mul", [g, ctx.multiplier(unit, derivative)])}
