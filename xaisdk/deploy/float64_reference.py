"""A float64 copy of an ONNX graph, run by onnx's reference evaluator: the finite-difference reference
for graphs that arrive without torch (ONNX Runtime has no float64 kernels for Conv and others).

The copy computes the same function as the float32 graph with float64 arithmetic (its constants are the
float32 values, widened), so central differences with a tiny step see the graph's own derivative, not
float32 rounding, and rarely cross a ReLU or max-pool kink.

>>> from onnx import TensorProto, helper, numpy_helper
>>> g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g",
...                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
...                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
...                       [numpy_helper.from_array(np.array([3.0, -1.0], np.float32), "k")])
>>> Float64Reference(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))(np.ones((1, 2))).dtype
dtype('float64')
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops._op import OpRunUnaryNum

__all__ = ["Float64Reference", "float64_graph"]

# Inputs that the ONNX spec types as float32 whatever the data type (Resize's roi and scales).
_FLOAT32_ONLY = {("Resize", 1), ("Resize", 2)}


def _erf64(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:  # exact too, one element at a time
        import math

        return np.vectorize(math.erf, otypes=[np.float64])(x)
    return erf(x)


class Erf(OpRunUnaryNum):
    """onnx's reference Erf rounds to float32 (``np.vectorize(erf, otypes=["f"])``): a float64 Erf, so that
    GELU's differences at a 1e-6 step are not float32 rounding (seen: 0.23 relative on a ViT)."""

    def _run(self, x):
        return (_erf64(x).astype(x.dtype),)


class Gelu(OpRun):
    """Gelu (opset 20) in float64: the reference runs it through its function body, whose Erf is float32."""

    def _run(self, x, approximate="none"):
        if approximate == "tanh":
            y = 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
        else:
            y = 0.5 * x * (1.0 + _erf64(x / np.sqrt(2.0)))
        return (y.astype(x.dtype),)


class LRN(OpRun):
    """LRN in float64 over the channel axis (onnx 1.23's reference loops over the batch axis instead), with
    the spec's window: channels c - floor((size - 1) / 2) ... c + ceil((size - 1) / 2)."""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        alpha = 1e-4 if alpha is None else alpha
        beta = 0.75 if beta is None else beta
        bias = 1.0 if bias is None else bias
        before, after = (size - 1) // 2, size // 2
        squares = np.stack([(x[:, max(c - before, 0):c + after + 1] ** 2).sum(1) for c in range(x.shape[1])], 1)
        return ((x / (bias + alpha / size * squares) ** beta).astype(x.dtype),)


def _widen(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def float64_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float32 tensor (inputs, outputs, constants, casts) made float64."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    graph = wide.graph
    keep = {node.input[i] for node in graph.node for op, i in _FLOAT32_ONLY if node.op_type == op and len(node.input) > i}
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in keep:
            graph.initializer[i].CopyFrom(_widen(tensor))
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT and not (
                    node.op_type == "Constant" and node.output[0] in keep):
                attr.t.CopyFrom(_widen(attr.t))
    return wide


class Float64Reference:
    """Call with a float64 batch; returns the graph's first output in float64, row by row for a fixed batch."""

    def __init__(self, model: onnx.ModelProto, fixed_batch: int | None = None) -> None:
        self._evaluator = ReferenceEvaluator(float64_graph(model), new_ops=[Erf, Gelu, LRN])
        self._input = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
        self._fixed = fixed_batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._fixed is None:
            return np.asarray(self._evaluator.run(None, {self._input: x})[0], np.float64)
        rows = []
        for start in range(0, len(x), self._fixed):
            chunk = x[start:start + self._fixed]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self._fixed - len(chunk), 0)])
            rows.append(np.asarray(self._evaluator.run(None, {self._input: padded})[0], np.float64)[:len(chunk)])
        return np.concatenate(rows)
