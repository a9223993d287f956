"""The ONNX ops TensorRT's ONNX parser accepts, and a check that a graph uses nothing else.

The exported graphs are meant to become TensorRT engines later, so every node must be a
default-domain ONNX op on this list (taken from the parser's operator support table, TensorRT 10),
with the attribute restrictions below. ONNX Runtime's contrib ops (``com.microsoft``: ReluGrad,
ConvGrad, FusedConv...) are refused by construction.

>>> import onnx
>>> from onnx import helper, TensorProto
>>> io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in "xy"]
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="act")], "g", io[:1], io[1:])
>>> disallowed_nodes(helper.make_model(g))
[]
"""

from __future__ import annotations

import onnx
from onnx import helper

TENSORRT_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
    Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace Div Dropout Einsum
    Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalMaxPool Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity InstanceNormalization
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LRN MatMul Max MaxPool Mean Min Mod Mul Neg Not
    OneHot Or Pad Pow PRelu Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape
    Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Unsqueeze Where Xor
    """.split()
)


def _attribute_problem(node: onnx.NodeProto) -> str | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("ScatterND", "ScatterElements") and attrs.get("reduction", b"none") not in (b"none", "none"):
        return f"{node.op_type} with reduction={attrs['reduction']!r}"
    if node.op_type == "Pad" and attrs.get("mode", b"constant") not in (b"constant", "constant", b"reflect", "reflect"):
        return f"Pad mode {attrs['mode']!r}"
    if node.op_type == "LRN":
        return _lrn_problem(attrs)
    return None


def _lrn_problem(attrs: dict) -> str | None:
    """The parser hands LRN to ``INetworkDefinition::addLRN``, whose ILRNLayer takes an odd window of 1 to 15
    channels, alpha in [-1e20, 1e20], beta in [0.01, 1e5] and k (ONNX's bias) in [1e-5, 1e10]."""
    size = int(attrs.get("size", 0))
    if size % 2 == 0 or not 1 <= size <= 15:
        return f"LRN size {size} (TensorRT: odd, 1 to 15)"
    for name, default, low, high in (("alpha", 1e-4, -1e20, 1e20), ("beta", 0.75, 0.01, 1e5), ("bias", 1.0, 1e-5, 1e10)):
        value = float(attrs.get(name, default))
        if not low <= value <= high:
            return f"LRN {name}={value:g} (TensorRT: {low:g} to {high:g})"
    return None


def disallowed_nodes(model: onnx.ModelProto) -> list[str]:
    """Descriptions of the nodes (op, node name, reason) outside TensorRT's accepted set; empty if none."""
    problems = []
    for node in model.graph.node:
        where = f"{node.op_type} at node {node.name or '(unnamed)'!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: domain {node.domain!r} is not the default ONNX domain")
        elif node.op_type not in TENSORRT_OPS:
            problems.append(f"{where}: not an op TensorRT's ONNX parser accepts")
        elif (why := _attribute_problem(node)) is not None:
            problems.append(f"{where}: {why}")
    return problems
