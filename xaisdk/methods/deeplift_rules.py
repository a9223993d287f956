"""What DeepLIFT's rescale rule covers: one table for the torch reference and the ONNX graph builder.

The rescale rule (:mod:`xaisdk.attribution.deeplift`, :func:`xaisdk.deploy.onnx_grad.deeplift_graph`)
gives exact completeness, ``sum(attributions) = S(x) - S(baseline)``, for networks in which every
op is either affine in the input-dependent tensors or an element-wise nonlinearity (whose derivative
is replaced by ``(f(x) - f(b)) / (x - b)``). Both backends map their own ops (torch modules, functions
and tensor methods; ONNX node types) onto the op kinds below and refuse DeepLIFT with the same
sentence, from :func:`refusal`, for anything else. This module imports nothing, so a serving image
can read it without torch or onnx.

>>> op_kind("Clip"), op_kind("Mul"), op_kind("MaxPool"), op_kind("Softmax")
('rescaled', 'bilinear', 'max_pool', 'refused')
>>> refusal(PRODUCT, "op Mul at node '/se/Mul'").split("; ")[0]
"DeepLIFT's rescale rule does not cover products of two input-dependent tensors (op Mul at node '/se/Mul')"
"""

from __future__ import annotations

__all__ = [
    "AFFINE",
    "BILINEAR",
    "DIVISION",
    "ELEMENTWISE_EXTREMUM",
    "EXTREMUM_REDUCTION",
    "INPUT_CONDITION",
    "MAX_POOL",
    "NONLINEAR_REDUCTION",
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
BILINEAR = "bilinear"  # Mul / MatMul / Einsum / Div: affine only while at most one operand (Div: the numerator) depends on x
RESCALED = "rescaled"  # element-wise nonlinearity: the rescale rule replaces its derivative (Max / Min: of one operand)
REFUSED = "refused"  # not affine and not element-wise: no DeepLIFT
MAX_POOL = "max_pool"  # Captum's max-pooling rule: window differences routed to the maxima of input and baseline

# Why an op is refused (the words after "does not cover").
PRODUCT = "products of two input-dependent tensors"
DIVISION = "division by an input-dependent tensor"
MAX_POOLING = "max pooling"
SOFTMAX = "softmax"
NORMALIZATION = "normalization across features"
INPUT_CONDITION = "a selection whose condition depends on the input"
ELEMENTWISE_EXTREMUM = "element-wise maxima or minima of several input-dependent tensors"
EXTREMUM_REDUCTION = "max and min reductions"
NONLINEAR_REDUCTION = "non-linear reductions (norms, sums of squares, log-sum-exp)"
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
    **dict.fromkeys(["Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization",
                     "InstanceNormalization"], REFUSED),
}
# Layout ops, and max pooling under Captum's rule (overlapping windows add); the torch reference
# (xaisdk.attribution.deeplift_trace) applies the same max-pool rule to its own ops.
_LAYOUT_OPS: dict[str, str] = {
    **dict.fromkeys(["Pad", "Slice", "Gather", "Split", "Expand", "Tile", "Where", "Cast", "Resize"], AFFINE),
    **dict.fromkeys(["MaxPool", "GlobalMaxPool"], MAX_POOL),
}
ONNX_OPS = {**ONNX_OPS, **_LAYOUT_OPS}
# Element-wise activations and functions: rescaled. The ONNX builder rescales a product or quotient of
# functions of one tensor (SiLU as Mul(t, Sigmoid(t)), GELU, Mish, softsign) as one element-wise unit.
_ACTIVATION_OPS: dict[str, str] = dict.fromkeys(
    ["HardSwish", "HardSigmoid", "Elu", "Selu", "Celu", "PRelu", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp",
     "Log", "Sqrt", "Reciprocal", "Pow", "Abs"],
    RESCALED)
ONNX_OPS = {**ONNX_OPS, **_ACTIVATION_OPS}
# Reductions and the ops of other frameworks' files (xaisdk.deploy.grad_rules_reductions). Max and Min are
# element-wise in their one input-dependent operand; with two or more the builder refuses them (ELEMENTWISE_EXTREMUM).
_REDUCTION_OPS: dict[str, str] = {
    **dict.fromkeys(["Sum", "Mean", "SpaceToDepth", "DepthToSpace"], AFFINE),
    "Einsum": BILINEAR,
    **dict.fromkeys(["Max", "Min", "Sin", "Cos", "Sign", "Floor", "Ceil", "Round"], RESCALED),
    **dict.fromkeys(["ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "LRN"],
                    REFUSED),
}
ONNX_OPS = {**ONNX_OPS, **_REDUCTION_OPS}
ONNX_REASONS: dict[str, str] = {
    "Softmax": SOFTMAX, "LogSoftmax": SOFTMAX,
    "LayerNormalization": NORMALIZATION, "GroupNormalization": NORMALIZATION, "InstanceNormalization": NORMALIZATION,
    "LRN": NORMALIZATION,
    "ReduceMax": EXTREMUM_REDUCTION, "ReduceMin": EXTREMUM_REDUCTION,
    **dict.fromkeys(["ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"], NONLINEAR_REDUCTION),
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
