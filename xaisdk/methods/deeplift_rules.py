"""What DeepLIFT's rescale rule covers: one table for the torch reference and the ONNX graph builder.

The rescale rule (:mod:`xaisdk.attribution.deeplift`, :func:`xaisdk.deploy.onnx_grad.deeplift_graph`)
gives exact completeness, ``sum(attributions) = S(x) - S(baseline)``, for networks in which every
op is either affine in the input-dependent tensors or an element-wise nonlinearity (whose derivative
is replaced by ``(f(x) - f(b)) / (x - b)``). Both backends map their own ops (torch modules, functions
and tensor methods; ONNX node types) onto the op kinds below and refuse DeepLIFT with the same
sentence, from :func:`refusal`, for anything else. This module imports nothing, so a serving image
can read it without torch or onnx.

>>> op_kind("Clip"), op_kind("Mul"), op_kind("MaxPool")
('rescaled', 'bilinear', 'refused')
>>> refusal(PRODUCT, "op Mul at node '/se/Mul'").split("; ")[0]
"DeepLIFT's rescale rule does not cover products of two input-dependent tensors (op Mul at node '/se/Mul')"
"""

from __future__ import annotations

__all__ = [
    "AFFINE",
    "BILINEAR",
    "DIVISION",
    "ONNX_OPS",
    "ONNX_REASONS",
    "PRODUCT",
    "REFUSED",
    "RESCALED",
    "op_kind",
    "refusal",
    "untraceable",
]

# Op kinds.
AFFINE = "affine"  # affine in its input-dependent operands: multipliers pass through as gradients
BILINEAR = "bilinear"  # Mul / MatMul / Div: affine only while at most one operand (Div: the numerator) depends on x
RESCALED = "rescaled"  # element-wise nonlinearity: the rescale rule replaces its derivative
REFUSED = "refused"  # not affine and not element-wise: no DeepLIFT

# Why an op is refused (the words after "does not cover").
PRODUCT = "products of two input-dependent tensors"
DIVISION = "division by an input-dependent tensor"
MAX_POOLING = "max pooling"
SOFTMAX = "softmax"
NORMALIZATION = "normalization across features"
NO_RULE = "this op (it is neither affine nor an element-wise nonlinearity)"

# ONNX op type -> kind. Ops missing here have no DeepLIFT rule; ops with no gradient rule at all
# are refused earlier by the gradient builder.
ONNX_OPS: dict[str, str] = {
    **dict.fromkeys(
        ["Conv", "Gemm", "Add", "Sub", "Neg", "Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
         "Transpose", "BatchNormalization", "AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "Concat"],
        AFFINE),
    **dict.fromkeys(["Mul", "MatMul", "Div"], BILINEAR),
    **dict.fromkeys(["Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh"], RESCALED),
    **dict.fromkeys(["MaxPool", "GlobalMaxPool", "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization",
                     "InstanceNormalization"], REFUSED),
}
ONNX_REASONS: dict[str, str] = {
    "MaxPool": MAX_POOLING, "GlobalMaxPool": MAX_POOLING, "Softmax": SOFTMAX, "LogSoftmax": SOFTMAX,
    "LayerNormalization": NORMALIZATION, "GroupNormalization": NORMALIZATION, "InstanceNormalization": NORMALIZATION,
}


def op_kind(onnx_op: str) -> str:
    """The kind of an ONNX op type for DeepLIFT (``REFUSED`` for ops not in :data:`ONNX_OPS`)."""
    return ONNX_OPS.get(onnx_op, REFUSED)


def refusal(reason: str, where: str) -> str:
    """The sentence both backends give when DeepLIFT is refused: ``reason`` (e.g. :data:`PRODUCT`) at ``where``."""
    return f"DeepLIFT's rescale rule does not cover {reason} ({where}); use integrated gradients instead"


def untraceable(why: str) -> str:
    """The sentence given when a torch model's forward cannot be analysed for DeepLIFT."""
    return (f"DeepLIFT could not analyse the model: {why}; DeepLIFT is refused rather than risk a wrong answer, "
            "use integrated gradients instead")
