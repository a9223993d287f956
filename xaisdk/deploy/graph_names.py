"""Tensor names in an ONNX graph: renaming one everywhere it appears, and picking names nobody uses.

The graphs xaisdk writes have fixed input and output names (``x``, ``logits``, ``w``, ``baseline``,
``score``, ``grad``...), and models bring names of their own: a parameter ``self.w`` of a torch module
exports as an initializer called ``w``, a Keras file has a pre-softmax tensor called ``logits``. A
model's tensor that holds one of ours is moved aside before the graphs are built.

>>> from onnx import TensorProto, helper, numpy_helper
>>> import numpy as np
>>> g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
...                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
...                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
...                       [numpy_helper.from_array(np.ones(2, np.float32), "w")])
>>> taken = tensor_names(g)
>>> rename_tensor(g, "w", unused_name("model/w", taken))
>>> list(g.node[0].input), g.initializer[0].name
(['x', 'model/w'], 'model/w')
"""

from __future__ import annotations

import onnx

__all__ = ["rename_tensor", "tensor_names", "unused_name"]


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name of ``graph``: node inputs and outputs, initializers, graph inputs and outputs."""
    names = {n for node in graph.node for n in [*node.input, *node.output] if n}
    return names | {t.name for t in graph.initializer} | {v.name for v in [*graph.input, *graph.output]}


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Call the tensor ``old`` ``new`` in every node, initializer, value_info and graph input/output."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new


def unused_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``... the first not in ``taken``; it is added to ``taken``."""
    chosen, i = name, 0
    while chosen in taken:
        i += 1
        chosen = f"{name}_{i}"
    taken.add(chosen)
    return chosen
