"""The relu-path of a bundle: a classifier graph that opens with Conv -> ReLU -> Conv, split for the fast IG loop.

Where the classifier graph's input feeds exactly one ``Conv`` (2-D, groups 1, dilation 1, constant
weights, symmetric explicit padding), whose output feeds exactly one ``Relu`` (a constant
``BatchNormalization`` between them is folded into the convolution), whose output feeds exactly one
such ``Conv``, the bundle also carries what follows. Per-channel constant ``Sub``/``Div``/``Mul``/``Add``
ops between the input and that ``Conv`` (a pixel pipeline's ``(x - mean) / std``; every ONNX-intake
bundle has one) are composed into ``input.scale`` / ``input.shift``, applied before the padding:

- ``relu_path.bin``: the two convolutions' weights and biases, raw little-endian float32, laid out
  as the manifest's ``relu_path.arrays`` lists them (no parser: the reader checks the byte count);
- the rest of the network ("tail", from the second convolution's output to the logits) either as
  arrays too, when it is ReLU -> Flatten -> Gemm -> ReLU -> Gemm (``tail: "dense"``, followed by hand
  at run time), or as ``relu_path_tail.onnx`` (``tail: "graph"``), the gradient graph of the tail:
  inputs ``z2`` (the second convolution's output) and ``w``, outputs ``score`` and ``grad`` (w.r.t. z2).

Each tensor that the split takes over must have no other reader, so nothing in the graph sees the
layers otherwise (a skip connection from the input or from the first ReLU leaves no split). The
loader (:mod:`xaisdk.runtime.relu_path_bundle`) proves on probe inputs that the split reproduces
``classifier.onnx`` before it uses it. Works for every intake (torch, TorchScript, ONNX from any
framework): it reads the exported classifier graph, not the torch module.

>>> import numpy as np
>>> from onnx import helper, numpy_helper, TensorProto
>>> rng = np.random.default_rng(0)
>>> inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
...          for n, s in [("w1", (4, 1, 3, 3)), ("w2", (2, 4, 3, 3)), ("w3", (5, 2 * 4 * 4))]]
>>> nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["h"]),
...          helper.make_node("Conv", ["h", "w2"], ["z"], strides=[2, 2], pads=[1, 1, 1, 1]),
...          helper.make_node("Flatten", ["z"], ["f"]), helper.make_node("Gemm", ["f", "w3"], ["logits"], transB=1)]
>>> graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
...                           [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
>>> split = split_opening(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
>>> split.hidden_shape, split.output_shape, split.tail_kind, list(split.arrays)
((4, 8, 8), (2, 4, 4), 'graph', ['first.weight', 'second.weight'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from xaisdk.deploy.grad_context import node_attrs
from xaisdk.deploy.grad_rules_layout import fold_constants
from xaisdk.deploy.graph_checks import TOLERANCE, checked_graph, random_class_pairs, relative_error
from xaisdk.deploy.onnx_grad import gradient_graph
from xaisdk.errors import InputError
from xaisdk.methods.quadrature import path_rule
from xaisdk.runtime.backend import class_weights
from xaisdk.runtime.bundle import sha256_bytes
from xaisdk.runtime.conv_numpy import conv_output_size
from xaisdk.runtime.ig_loop import integrated_gradients_loop
from xaisdk.runtime.relu_path_bundle import RELU_PATH_FILE, RELU_PATH_TAIL, TAIL_INPUT

__all__ = ["OpeningSplit", "add_relu_path", "drop_relu_path", "split_opening", "verify_relu_path"]

VERIFY_IMAGES = 4
TAIL_COMPUTES = ("the classifier from the second convolution's output z2 on: score[n] = sum_k w[n, k] * logits[n, k] "
                 "and grad = d score / d z2")


@dataclass(frozen=True)
class OpeningSplit:
    """The classifier as ``tail(second(relu(first(x))))``; shapes per image, arrays in file order."""

    arrays: dict[str, np.ndarray]
    first: dict[str, list[int]]
    second: dict[str, list[int]]
    hidden_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    tail_kind: str
    """``"dense"`` (the tail's arrays are in ``arrays``) or ``"graph"`` (``tail`` is its ONNX graph)."""
    tail: onnx.ModelProto | None


@dataclass(frozen=True)
class _Conv:
    weight: np.ndarray
    bias: np.ndarray | None
    stride: list[int]
    padding: list[int]


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in set(node.input):
            if name:
                readers.setdefault(name, []).append(node)
    return readers


def _only_reader(readers: dict, outputs: set[str], name: str, op_type: str) -> onnx.NodeProto | None:
    """The one node reading ``name``, when it is an ``op_type`` (standard domain) and ``name`` is no graph output."""
    found = readers.get(name, [])
    if len(found) != 1 or name in outputs or found[0].op_type != op_type or found[0].domain not in ("", "ai.onnx"):
        return None
    return found[0]


def _conv(node: onnx.NodeProto, consts: dict[str, np.ndarray], source: str) -> _Conv | None:
    attrs = node_attrs(node)
    if node.input[0] != source or len(node.input) < 2 or node.input[1] not in consts:
        return None
    weight = consts[node.input[1]]
    bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        return None
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    plain = (weight.ndim == 4 and weight.dtype == np.float32 and attrs.get("group", 1) == 1
             and list(attrs.get("dilations", [1, 1])) == [1, 1]
             and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
             and list(attrs.get("kernel_shape", weight.shape[2:])) == list(weight.shape[2:])
             and len(pads) == 4 and pads[:2] == pads[2:] and min(pads) >= 0
             and (bias is None or (bias.dtype == np.float32 and bias.shape == (weight.shape[0],))))
    if not plain:
        return None
    return _Conv(weight, bias, [int(s) for s in attrs.get("strides", [1, 1])], [int(p) for p in pads[:2]])


_AFFINE_OPS = ("Sub", "Div", "Mul", "Add")


def _input_affine(readers: dict, outputs: set[str], consts: dict[str, np.ndarray], x: str, channels: int):
    """Per-channel constant Sub/Div/Mul/Add ops between the input and the first convolution (a pixel pipeline's
    ``(x - mean) / std``), composed as ``scale * x + shift``: ``(tensor the first convolution reads, scale, shift,
    the nodes)``, scale and shift None when there are none; None when such an op is not per-channel or reads
    anything else."""
    scale, shift, nodes = np.ones(channels), np.zeros(channels), []
    while True:
        found = readers.get(x, [])
        if len(found) != 1 or found[0].op_type not in _AFFINE_OPS:
            break
        node = found[0]
        if x in outputs or node.domain not in ("", "ai.onnx") or len(node.input) != 2 or node.input[0] != x:
            return None
        k = consts.get(node.input[1])
        per_channel = k is not None and (k.size == 1 or (k.ndim >= 3 and k.shape[-3:] == (channels, 1, 1)
                                                        and all(d == 1 for d in k.shape[:-3])))
        if not per_channel or k.dtype != np.float32:  # a (C,) constant would broadcast along the width, not channels
            return None
        k = np.broadcast_to(k.astype(np.float64).reshape(-1), (channels,))
        if node.op_type == "Div" and not np.all(k != 0):
            return None
        if node.op_type == "Sub":
            shift = shift - k
        elif node.op_type == "Add":
            shift = shift + k
        else:
            factor = k if node.op_type == "Mul" else 1.0 / k
            scale, shift = scale * factor, shift * factor
        nodes.append(node)
        x = node.output[0]
    if not nodes:
        return x, None, None, []
    return x, scale.astype(np.float32), shift.astype(np.float32), nodes


def _fold_norm(conv: _Conv, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> _Conv | None:
    """``BatchNormalization(conv(x))`` (inference: constant statistics) as one convolution."""
    attrs = node_attrs(node)
    if len(node.input) != 5 or len([o for o in node.output if o]) != 1 or attrs.get("training_mode", 0):
        return None
    values = [consts.get(name) for name in node.input[1:]]
    channels = conv.weight.shape[0]
    if any(v is None or v.shape != (channels,) for v in values):
        return None
    scale, shift, mean, var = (v.astype(np.float64) for v in values)
    factor = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    before = np.zeros(channels) if conv.bias is None else conv.bias.astype(np.float64)
    bias = (before - mean) * factor + shift
    weight = conv.weight.astype(np.float64) * factor[:, None, None, None]
    return _Conv(weight.astype(np.float32), bias.astype(np.float32), conv.stride, conv.padding)


def _dense_tail(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray], z2: str, logits: str,
                features: int) -> dict[str, np.ndarray] | None:
    """The arrays of a tail ReLU -> Flatten -> Gemm -> ReLU -> Gemm from ``z2`` to ``logits`` (then an Identity, as
    the ONNX intake writes one to name its output), or None."""
    if nodes and nodes[-1].op_type == "Identity" and len(nodes[-1].input) == 1 and nodes[-1].output[0] == logits:
        logits, nodes = nodes[-1].input[0], nodes[:-1]
    if [n.op_type for n in nodes] != ["Relu", "Flatten", "Gemm", "Relu", "Gemm"]:
        return None
    chain = [z2] + [n.output[0] for n in nodes]
    if any(list(n.input[:1]) != [chain[i]] or len(n.output) != 1 for i, n in enumerate(nodes)) or chain[-1] != logits:
        return None
    if node_attrs(nodes[1]).get("axis", 1) != 1:
        return None
    arrays = {}
    for node, name in ((nodes[2], "hidden"), (nodes[4], "output")):
        attrs = node_attrs(node)
        if (attrs.get("transA", 0), attrs.get("transB", 0), attrs.get("alpha", 1.0), attrs.get("beta", 1.0)) != (0, 1, 1.0, 1.0):
            return None
        weight = consts.get(node.input[1])
        bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        bias_missing = len(node.input) > 2 and node.input[2] and bias is None
        if weight is None or weight.ndim != 2 or weight.dtype != np.float32 or bias_missing:
            return None
        if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != np.float32):
            return None
        arrays[f"{name}.weight"] = weight
        if bias is not None:
            arrays[f"{name}.bias"] = bias
    if arrays["hidden.weight"].shape[1] != features or arrays["output.weight"].shape[1] != arrays["hidden.weight"].shape[0]:
        return None
    return arrays


def _tail_graph(model: onnx.ModelProto, nodes: list[onnx.NodeProto], z2: str, output_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The classifier graph from ``z2`` (renamed :data:`TAIL_INPUT`) to its logits."""
    graph = model.graph
    used = {name for node in nodes for name in node.input}
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    dims = [batch.dim_value if batch.HasField("dim_value") else (batch.dim_param or "N"), *output_shape]
    renamed = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            if name == z2:
                copy.input[i] = TAIL_INPUT
        renamed.append(copy)
    tail = helper.make_graph(renamed, "relu_path_tail", [helper.make_tensor_value_info(TAIL_INPUT, onnx.TensorProto.FLOAT, dims)],
                             list(graph.output), [init for init in graph.initializer if init.name in used])
    return helper.make_model(tail, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def split_opening(model: onnx.ModelProto) -> OpeningSplit | None:
    """The relu-path split of a classifier graph ``x -> logits`` (see the module docstring), or None."""
    model = fold_constants(model)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        return None
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or min(dims[1:]) < 1:
        return None
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    readers, outputs = _readers(graph), {o.name for o in graph.output}
    affine = _input_affine(readers, outputs, consts, inputs[0].name, dims[1])
    if affine is None:
        return None
    x, scale, shift, taken = affine
    first_node = _only_reader(readers, outputs, x, "Conv")
    first = None if first_node is None else _conv(first_node, consts, x)
    if first is None or first.weight.shape[1] != dims[1]:
        return None
    taken = [*taken, first_node]
    after = first_node.output[0]
    norm = (readers.get(after) or [None])[0]
    if norm is not None and norm.op_type == "BatchNormalization" and _only_reader(readers, outputs, after, "BatchNormalization"):
        first = _fold_norm(first, norm, consts)
        if first is None:
            return None
        taken.append(norm)
        after = norm.output[0]
    relu = _only_reader(readers, outputs, after, "Relu")
    if relu is None:
        return None
    second_node = _only_reader(readers, outputs, relu.output[0], "Conv")
    second = None if second_node is None else _conv(second_node, consts, relu.output[0])
    if second is None or second.weight.shape[1] != first.weight.shape[0]:
        return None
    taken += [relu, second_node]
    z2 = second_node.output[0]
    if z2 in outputs:
        return None
    hidden = _out_shape(first, dims[2:])
    output = _out_shape(second, hidden[1:])
    if min(hidden + output) < 1:
        return None
    rest = [node for node in graph.node if all(node is not t for t in taken)]
    arrays = {} if scale is None else {"input.scale": scale, "input.shift": shift}
    arrays["first.weight"] = first.weight
    if first.bias is not None:
        arrays["first.bias"] = first.bias
    arrays["second.weight"] = second.weight
    if second.bias is not None:
        arrays["second.bias"] = second.bias
    dense = _dense_tail(rest, consts, z2, graph.output[0].name, int(np.prod(output)))
    geometry = {"first": {"stride": first.stride, "padding": first.padding},
                "second": {"stride": second.stride, "padding": second.padding}}
    if dense is not None:
        return OpeningSplit({**arrays, **dense}, **geometry, hidden_shape=hidden, output_shape=output, tail_kind="dense",
                            tail=None)
    return OpeningSplit(arrays, **geometry, hidden_shape=hidden, output_shape=output, tail_kind="graph",
                        tail=_tail_graph(model, rest, z2, output))


def _out_shape(conv: _Conv, size: list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    kh, kw = conv.weight.shape[2:]
    return (int(conv.weight.shape[0]), conv_output_size(size[0], kh, conv.stride[0], conv.padding[0]),
            conv_output_size(size[1], kw, conv.stride[1], conv.padding[1]))


def add_relu_path(staging: Path, manifest: dict[str, Any], classifier: bytes) -> None:
    """Write the relu-path files of the classifier graph (its bytes) into the bundle being built in ``staging`` and
    describe them in ``manifest``; when there is no split, ``manifest["relu_path_unavailable"]`` says why."""
    split = split_opening(onnx.load_from_string(classifier))
    if split is None:
        manifest["relu_path_unavailable"] = ("the classifier graph does not open with Conv -> ReLU -> Conv (groups 1, "
                                             "dilation 1, constant weights, nothing else reading those layers)")
        return
    entry: dict[str, Any] = {"file": RELU_PATH_FILE, "tail": split.tail_kind, "first": split.first, "second": split.second,
                             "hidden_shape": list(split.hidden_shape), "output_shape": list(split.output_shape),
                             "arrays": [[name, list(array.shape)] for name, array in split.arrays.items()]}
    if split.tail is not None:
        try:
            data = checked_graph(gradient_graph(split.tail), RELU_PATH_TAIL)
        except InputError as err:  # cannot happen when the whole graph has one; the plain path stays either way
            manifest["relu_path_unavailable"] = f"the tail's gradient graph could not be built ({err})"
            return
        rows = manifest["input"]["batch"] or "N"
        name = f"{RELU_PATH_TAIL}.onnx"
        (staging / name).write_bytes(data)
        manifest["files"][name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        classes = len(manifest["class_names"])
        manifest["graphs"][RELU_PATH_TAIL] = {"file": name, "computes": TAIL_COMPUTES,
                                             "inputs": {TAIL_INPUT: [rows, *split.output_shape], "w": [rows, classes]},
                                             "outputs": {"score": [rows], "grad": [rows, *split.output_shape]}}
    blob = b"".join(np.ascontiguousarray(a, "<f4").tobytes() for a in split.arrays.values())
    (staging / RELU_PATH_FILE).write_bytes(blob)
    manifest["files"][RELU_PATH_FILE] = {"sha256": sha256_bytes(blob), "bytes": len(blob)}
    manifest["relu_path"] = entry


def drop_relu_path(staging: Path, manifest: dict[str, Any], why: str) -> None:
    """Take the relu-path out of the bundle being built (its files and manifest entries), saying ``why``."""
    for name in (RELU_PATH_FILE, f"{RELU_PATH_TAIL}.onnx"):
        manifest["files"].pop(name, None)
        (staging / name).unlink(missing_ok=True)
    manifest["graphs"].pop(RELU_PATH_TAIL, None)
    manifest.pop("relu_path", None)
    manifest["relu_path_unavailable"] = why


def verify_relu_path(staging: Path, manifest: dict[str, Any], x: np.ndarray, seed: int, steps: int = 16) -> dict[str, float]:
    """IG by the bundle's relu-path against IG by its plain gradient graph on ``x`` (a few rows), both through ONNX
    Runtime; a split that disagrees beyond :data:`~xaisdk.deploy.graph_checks.TOLERANCE` (relative to the
    largest attribution) is dropped from the bundle, which keeps the plain path. Returns the check
    (``relu_path_ig_rel_err``), or nothing when the bundle has no relu-path or the C++ kernels are not built."""
    from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

    if "relu_path" not in manifest:
        return {}
    try:
        backend = OnnxRuntimeBackend(staging, providers=["CPUExecutionProvider"], warmup=False)
    except InputError as err:
        drop_relu_path(staging, manifest, f"the split did not load: {err}")
        return {}
    if not backend.uses_relu_path:
        return {}
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x[:VERIFY_IMAGES], np.float32)
    source, target = random_class_pairs(rng, len(x), backend.num_classes)
    weights = class_weights(source, target, backend.num_classes)
    baseline = np.roll(x, 1, axis=0) if len(x) > 1 else np.zeros_like(x)
    alphas, quadrature = path_rule("riemann_middle", steps)
    fast = backend.fused_integrated_gradients(x, baseline, weights, alphas, quadrature)

    def grad_fn(batch: np.ndarray, sample: np.ndarray) -> np.ndarray:
        return backend.score_gradient(batch, weights[sample])[1]

    plain = integrated_gradients_loop(grad_fn, x, baseline, alphas, quadrature, pass_sample_index=True)
    err = relative_error(fast, plain)
    if not err <= TOLERANCE:
        drop_relu_path(staging, manifest, f"its IG differed from the plain gradient graph's by {err:.3g} (relative) at export")
        return {}
    return {"relu_path_ig_rel_err": err}
