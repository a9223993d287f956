"""A classifier exported to ONNX by any framework, as an xaisdk bundle, without torch.

The gradient pass works on ONNX (:mod:`xaisdk.deploy.onnx_grad`), so a model from TensorFlow
(tf2onnx), JAX, PaddlePaddle or torch gets IG, DeepLIFT and Occlusion with onnx and ONNX Runtime
alone. :func:`export_onnx_classifier`:

1. reads the file (one graph, tensors inside it; external data is refused), converts opsets below
   13 to 17, fixes the image size (``input_shape`` where the file leaves it symbolic) and makes the
   batch axis dynamic when the graph allows it (else the bundle keeps the file's fixed batch); a
   channels-last input (N, H, W, C), as TensorFlow/Keras files exported by tf2onnx have, gets a
   Transpose in front, so the bundle, its maps and ``input_shape`` are channels-first like any other;
2. puts the pixel pipeline (:class:`~xaisdk.runtime.preprocessing.Preprocessing`: channel order,
   per-channel mean/std) in front, so the bundle takes RGB pixels in [0, 1], and names the ends
   ``x`` and ``logits``;
3. builds the gradient and DeepLIFT graphs and verifies them with ONNX Runtime before anything
   reaches ``out``: the bundle's logits equal the file's on the normalised pixels; the gradient
   graph's directional derivatives match float64 central differences of the forward graph, run by
   onnx's reference evaluator (ONNX Runtime has no float64 Conv), within ``TOLERANCE``, as the torch
   intake checks against a float64 copy of the torch model; DeepLIFT attributions are complete
   (``sum = S(x) - S(baseline)`` within ``TOLERANCE`` of the scores). A DeepLIFT miss drops only the
   DeepLIFT graph, and the manifest says why.

Example (needs an ONNX file)::

    report = export_onnx_classifier("resnet.onnx", "bundle/", input_shape=(3, 224, 224),
                                    preprocessing=Preprocessing(mean=(0.485, 0.456, 0.406),
                                                                std=(0.229, 0.224, 0.225),
                                                                resize="shorter-side-crop"))
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xaisdk.deploy.bundle_folder import (
    ACTIVE_TOKENS,
    carry_user_files,
    install_bundle,
    prepare_out,
    recover_bundle_folder,
    swap_folder,
    target_folder,
)
from xaisdk.deploy.export_errors import VerificationError
from xaisdk.deploy.float64_reference import Float64Reference
from xaisdk.deploy.grad_context import UnsupportedOpError
from xaisdk.deploy.graph_checks import TOLERANCE, checked_graph, completeness_error, random_class_pairs, relative_error
from xaisdk.deploy.graph_names import rename_tensor, tensor_names, unused_name
from xaisdk.deploy.manifest import bundle_manifest, write_manifest
from xaisdk.deploy.onnx_grad import deeplift_graph, gradient_graph
from xaisdk.deploy.relu_path_export import VERIFY_IMAGES, add_relu_path, verify_relu_path
from xaisdk.errors import InputError
from xaisdk.input_files import open_regular_file
from xaisdk.runtime.atomic_files import output_error
from xaisdk.runtime.backend import class_weights
from xaisdk.runtime.bundle import MANIFEST, read_bundle, sha256_bytes
from xaisdk.runtime.bundle_integrity import MAX_GRAPH_BYTES
from xaisdk.runtime.preprocessing import Preprocessing

__all__ = ["LAYOUTS", "OnnxExportReport", "channels_last", "export_onnx_classifier", "read_onnx_classifier"]

FD_STEP = 1e-6  # float64 central differences along unit directions; small, so that few ReLUs change state
FD_IMAGES = 3
FD_DIRECTIONS = 3
TARGET_OPSET = 17


@dataclass
class OnnxExportReport:
    """What :func:`export_onnx_classifier` wrote and measured (``batch``: None for a dynamic batch)."""

    path: Path
    files: dict[str, int]
    seconds: float
    checks: dict[str, float]
    batch: int | None
    deeplift_unavailable: str | None
    kept: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    channels_last: bool = False
    """The file took (N, H, W, C) images; the bundle takes (N, C, H, W) through a Transpose."""

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def _read_model(path: str | os.PathLike) -> onnx.ModelProto:
    with open_regular_file(path, "ONNX file") as handle:
        data = handle.read(MAX_GRAPH_BYTES + 1)
    if len(data) > MAX_GRAPH_BYTES:
        raise InputError(f"{path}: larger than {MAX_GRAPH_BYTES} bytes, the most a bundle graph may hold")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf raises its own DecodeError types
        raise InputError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    if not model.graph.node:
        raise InputError(f"{path}: not an ONNX model (no graph nodes)")
    external = [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if external:
        raise InputError(f"{path}: tensors stored as external data ({external[0]!r}...); save the model with its "
                         "weights inside (onnx.save(model, path, save_as_external_data=False))")
    return model


def _opset(model: onnx.ModelProto) -> onnx.ModelProto:
    version = max((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), default=0)
    if version >= 13:
        return model
    try:
        return onnx.version_converter.convert_version(model, TARGET_OPSET)
    except Exception as err:
        raise InputError(f"the model uses ONNX opset {version}; converting it to {TARGET_OPSET} failed "
                         f"({type(err).__name__}: {err}); re-export it at opset 13 or later") from None


def _io_names(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise InputError(f"expected a classifier graph with one input (images) and one output (logits), got inputs "
                         f"{[i.name for i in inputs]} and outputs {[o.name for o in model.graph.output]}")
    if inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise InputError(f"the model's input {inputs[0].name!r} must be float32 images, got element type "
                         f"{TensorProto.DataType.Name(inputs[0].type.tensor_type.elem_type)}")
    return inputs[0], model.graph.output[0]


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


LAYOUTS = ("auto", "NCHW", "NHWC")
_IMAGE_CHANNELS = (1, 3, 4)


def channels_last(dims: list[int | None], layout: str = "auto") -> bool:
    """Whether an image input with ``dims`` is (N, H, W, C): as ``layout`` says, or with ``"auto"`` when the
    last axis is a channel count (1, 3 or 4) and the second is not (symbolic sizes count as not).

    >>> channels_last([None, 224, 224, 3]), channels_last(["N", None, None, 3]), channels_last([1, 3, 224, 224])
    (True, True, False)
    """
    if layout not in LAYOUTS:
        raise InputError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if len(dims) != 4:
        raise InputError(f"the model's input must be images (N, C, H, W) or (N, H, W, C), got rank {len(dims)} ({dims})")
    if layout != "auto":
        return layout == "NHWC"
    return dims[3] in _IMAGE_CHANNELS and dims[1] not in _IMAGE_CHANNELS


def _image_shape(given: Sequence[int] | None, dims: list[int | None]) -> tuple[int, int, int]:
    """(C, H, W) from channels-first ``dims`` and the ``input_shape`` given (needed where a size is symbolic)."""
    stated = dims[1:]
    if given is None:
        if any(d is None for d in stated):
            raise InputError(f"the model's input size is symbolic ({dims}); give --input-shape C,H,W")
        return int(stated[0]), int(stated[1]), int(stated[2])  # type: ignore[arg-type]
    shape = tuple(int(v) for v in given)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"input shape: expected three positive integers C,H,W, got {given!r}")
    clash = [(s, d) for s, d in zip(shape, stated) if d is not None and d != s]
    if clash:
        raise InputError(f"input shape {shape} (C, H, W) contradicts the model's input read as {tuple(dims[1:])}; "
                         "if the file's axes are read wrongly, give --layout NHWC or NCHW")
    return shape  # type: ignore[return-value]


def _set_dims(value: onnx.ValueInfoProto, dims: Sequence[int | str]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        entry = shape.dim.add()
        if isinstance(d, str):
            entry.dim_param = d
        else:
            entry.dim_value = int(d)


def _with_pipeline(model: onnx.ModelProto, spec: Preprocessing, shape: tuple[int, int, int], batch: int | str,
                   classes: int, last: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` taking RGB pixels ``x`` (N, C, H, W) in [0, 1] and returning ``logits``; a
    channels-last model (``last``) gets its input through a Transpose."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    image, logits = _io_names(result)
    taken = tensor_names(graph)
    # the names the pipeline writes; a tensor of the model's own with one of them moves aside
    # (a Keras model's pre-softmax "logits" beside its "probs" output)
    ours = ("x", "logits", "pixels/normalised", "pixels/mean", "pixels/std", "pixels/order", "pixels/centred",
            "pixels/ordered", "pixels/channels_last")
    for name in ours:
        if name in taken and name not in (image.name, logits.name):
            rename_tensor(graph, name, unused_name(f"user/{name}", taken))
    model_input, model_output = image.name, logits.name
    fed = "pixels/channels_last" if last else "pixels/normalised"
    rename_tensor(graph, model_input, fed)
    output = unused_name("user/logits", taken)
    rename_tensor(graph, model_output, output)
    mean, std = spec.per_channel(shape[0])
    nodes = []
    start = "x"
    if spec.channel_order == "BGR":
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "pixels/order"))
        nodes.append(helper.make_node("Gather", ["x", "pixels/order"], ["pixels/ordered"], axis=1, name="pixels/Gather"))
        start = "pixels/ordered"
    graph.initializer.extend([numpy_helper.from_array(mean.reshape(1, -1, 1, 1), "pixels/mean"),
                              numpy_helper.from_array(std.reshape(1, -1, 1, 1), "pixels/std")])
    nodes += [helper.make_node("Sub", [start, "pixels/mean"], ["pixels/centred"], name="pixels/Sub"),
              helper.make_node("Div", ["pixels/centred", "pixels/std"], ["pixels/normalised"], name="pixels/Div")]
    if last:
        nodes.append(helper.make_node("Transpose", ["pixels/normalised"], [fed], perm=[0, 2, 3, 1], name="pixels/Transpose"))
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes + [helper.make_node("Identity", [output], ["logits"], name="out/logits")])
    graph.input.remove(next(i for i in graph.input if i.name == fed))
    graph.input.insert(0, helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *shape]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes]))
    del graph.value_info[:]  # stale shapes (e.g. a fixed batch of 1); inference recomputes them
    return onnx.shape_inference.infer_shapes(result, strict_mode=True)


def _session(model: onnx.ModelProto | bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _run(session: Any, feeds: dict[str, np.ndarray], batch: int | None) -> list[np.ndarray]:
    """Run ``session``; with a fixed batch, row by row in runs of ``batch`` (the last padded)."""
    if batch is None:
        return session.run(None, feeds)
    n = len(next(iter(feeds.values())))
    parts: list[list[np.ndarray]] = []
    for start in range(0, n, batch):
        chunk = {k: v[start:start + batch] for k, v in feeds.items()}
        rows = len(next(iter(chunk.values())))
        padded = {k: np.concatenate([v, np.repeat(v[-1:], batch - rows, 0)]) for k, v in chunk.items()}
        parts.append([out[:rows] for out in session.run(None, padded)])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def read_onnx_classifier(path: str | os.PathLike, *, input_shape: Sequence[int] | None = None,
                         preprocessing: Preprocessing | None = None,
                         layout: str = "auto") -> tuple[onnx.ModelProto, onnx.ModelProto, int | None, bool]:
    """(the file's graph with fixed sizes, the bundle's classifier graph with the pixel pipeline, fixed batch
    or None, whether the file takes channels-last images); ``input_shape`` is (C, H, W) in either layout."""
    model = _opset(_read_model(path))
    image, logits = _io_names(model)
    dims = _dims(image)
    last = channels_last(dims, layout)
    if last:
        dims = [dims[0], dims[3], dims[1], dims[2]]
    shape = _image_shape(input_shape, dims)
    spec = preprocessing or Preprocessing()
    spec.check_channels(shape[0])
    out_dims = _dims(logits)
    if len(out_dims) != 2 or out_dims[1] is None or out_dims[1] < 2:
        probe = _session(_sized(model, image.name, logits.name, dims[0] or 1, shape, None, last))
        out = probe.run(None, {image.name: np.zeros((dims[0] or 1, *_file_order(shape, last)), np.float32)})[0]
        if out.ndim > 2 and all(d == 1 for d in out.shape[2:]):  # (N, K, 1, 1): a convolutional head, as SqueezeNet's
            model = _flattened_output(model)
            out = out.reshape(out.shape[:2])
        if out.ndim != 2 or out.shape[1] < 2:
            raise InputError(f"the model's output must be logits (N, K) with K >= 2, got shape {out.shape}")
        classes = int(out.shape[1])
    else:
        classes = int(out_dims[1])
    for batch in ("N", dims[0] or 1):
        sized = _sized(model, image.name, logits.name, batch, shape, classes, last)
        try:
            rows = 2 if batch == "N" else int(batch)
            _session(sized).run(None, {image.name: np.zeros((rows, *_file_order(shape, last)), np.float32)})
        except Exception as err:
            if batch == "N":
                continue  # e.g. a Reshape to a hard-coded batch of 1: keep the file's fixed batch
            raise InputError(f"the model does not run on {'channels-last' if last else 'channels-first'} images of "
                             f"{list(shape)} (C, H, W) ({type(err).__name__}: {str(err)[:300]}); check --input-shape, "
                             f"or give --layout {'NCHW' if last else 'NHWC'}") from None
        fixed = None if batch == "N" else int(batch)
        return sized, _with_pipeline(sized, spec, shape, batch, classes, last), fixed, last
    raise AssertionError("unreachable")


def _flattened_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose (N, K, 1, ...) output passes through a Flatten to (N, K), under its name."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    name = graph.output[0].name
    raw = unused_name(f"{name}/unflattened", tensor_names(graph))
    rename_tensor(graph, name, raw)
    graph.output[0].name = name
    graph.output[0].type.tensor_type.ClearField("shape")
    node_name = unused_name("out/Flatten", {n.name for n in graph.node})
    graph.node.append(helper.make_node("Flatten", [raw], [name], axis=1, name=node_name))
    return result


def _file_order(shape: tuple[int, int, int], last: bool) -> tuple[int, int, int]:
    """(C, H, W) as the file's input takes it: (H, W, C) when channels-last."""
    return (shape[1], shape[2], shape[0]) if last else shape


def _sized(model: onnx.ModelProto, image: str, logits: str, batch: int | str, shape: tuple[int, int, int],
           classes: int | None, last: bool = False) -> onnx.ModelProto:
    sized = onnx.ModelProto()
    sized.CopyFrom(model)
    _set_dims(next(i for i in sized.graph.input if i.name == image), [batch, *_file_order(shape, last)])
    if classes is not None:
        _set_dims(sized.graph.output[0], [batch, classes])
    else:
        sized.graph.output[0].type.tensor_type.ClearField("shape")
    del sized.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(sized, strict_mode=True)
    except Exception as err:
        raise InputError(f"ONNX shape inference fails on the model at input size {list(shape)}: {err}") from None


def _fd_error(forward_graph: onnx.ModelProto, x: np.ndarray, w: np.ndarray, grad: np.ndarray, rng: np.random.Generator,
              batch: int | None) -> float:
    """Largest gap between the gradient graph's directional derivatives and float64 central differences
    of the forward graph (:class:`~xaisdk.deploy.float64_reference.Float64Reference`), relative to the
    largest difference quotient, over ``FD_DIRECTIONS`` random unit directions of the first
    ``FD_IMAGES`` images: the check the torch intake runs with a float64 copy of the torch model."""
    reference = Float64Reference(forward_graph, batch)
    x, w, grad = x[:FD_IMAGES], w[:FD_IMAGES].astype(np.float64), grad[:FD_IMAGES].astype(np.float64)
    fd, analytic = [], []
    for _ in range(FD_DIRECTIONS):
        v = rng.standard_normal(x.shape)
        v /= np.sqrt((v ** 2).reshape(len(x), -1).sum(1)).reshape(-1, *([1] * (x.ndim - 1)))
        plus = (reference(x + FD_STEP * v) * w).sum(1)
        minus = (reference(x - FD_STEP * v) * w).sum(1)
        fd.append((plus - minus) / (2 * FD_STEP))
        analytic.append((grad * v).reshape(len(x), -1).sum(1))
    return relative_error(np.concatenate(analytic), np.concatenate(fd))


def _verify(user: onnx.ModelProto, graphs: dict[str, bytes], spec: Preprocessing, shape: tuple[int, int, int],
            classes: int, batch: int | None, extra: np.ndarray | None, seed: int,
            last: bool = False) -> tuple[dict[str, float], str | None]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (6, *shape)).astype(np.float32)
    if extra is not None:
        x = np.concatenate([np.asarray(extra, np.float32).reshape(-1, *shape), x])
    forward, grad_session = _session(graphs["classifier"]), _session(graphs["classifier_grad"])
    forward_graph = onnx.load_from_string(graphs["classifier"])
    mean, std = spec.per_channel(shape[0])
    ordered = x[:, ::-1] if spec.channel_order == "BGR" else x
    normalised = ((ordered - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)).astype(np.float32)
    if last:
        normalised = np.ascontiguousarray(normalised.transpose(0, 2, 3, 1))
    user_session = _session(user)
    want = _run(user_session, {user_session.get_inputs()[0].name: normalised}, batch)[0]
    logits = _run(forward, {"x": x}, batch)[0]
    w = class_weights(*random_class_pairs(rng, len(x), classes), classes)
    score, grad = _run(grad_session, {"x": x, "w": w}, batch)
    checks = {"logits_rel_err": relative_error(logits, want), "score_rel_err": relative_error(score, (logits * w).sum(1)),
              "grad_fd_rel_err": _fd_error(forward_graph, x, w, grad, rng, batch)}
    failed = {k: v for k, v in checks.items() if not v <= TOLERANCE}
    if failed:
        raise VerificationError(f"the exported graphs disagree with the ONNX model (tolerance {TOLERANCE:g}): "
                                f"{failed}")
    if "deeplift_grad" not in graphs:
        return checks, None
    base = np.roll(x, 1, axis=0)
    multipliers, s_x, s_b = _run(_session(graphs["deeplift_grad"]), {"x": x, "baseline": base, "w": w}, batch)
    checks["deeplift_completeness_rel_err"] = completeness_error((x - base) * multipliers, s_x, s_b)
    if not checks["deeplift_completeness_rel_err"] <= TOLERANCE:
        return checks, (f"the DeepLIFT graph failed verification: completeness error "
                        f"{checks['deeplift_completeness_rel_err']:.3g} > {TOLERANCE:g}; use integrated gradients")
    return checks, None


def export_onnx_classifier(path: str | os.PathLike, out: str | os.PathLike, *, input_shape: Sequence[int] | None = None,
                           class_names: Sequence[str] | None = None, preprocessing: Preprocessing | None = None,
                           force: bool = False, verify_inputs: np.ndarray | None = None, seed: int = 0,
                           layout: str = "auto") -> OnnxExportReport:
    """Export the ONNX classifier at ``path`` as a verified bundle in ``out`` (see the module docstring).

    ``layout``: the file's image axes, ``"NCHW"``, ``"NHWC"`` or ``"auto"`` (:func:`channels_last`); the
    bundle takes channels-first pixels either way and ``input_shape`` is always (C, H, W).

    ``verify_inputs``: extra RGB pixel images in [0, 1], (N, C, H, W), for the checks. Errors as
    :func:`xaisdk.deploy.export_bundle`: :class:`~xaisdk.InputError` (including
    :class:`UnsupportedOpError` naming op and node) or :class:`VerificationError`.
    """
    started = time.perf_counter()
    out = target_folder(out)
    try:
        recovered = recover_bundle_folder(out)
        prepare_out(out, force)
    except OSError as err:
        raise output_error(err, out) from None
    spec = preprocessing or Preprocessing()
    user, forward, batch, last = read_onnx_classifier(path, input_shape=input_shape, preprocessing=spec, layout=layout)
    shape = tuple(d.dim_value for d in forward.graph.input[0].type.tensor_type.shape.dim[1:])
    classes = forward.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    names = tuple(str(n) for n in class_names) if class_names is not None else tuple(str(i) for i in range(classes))
    if len(names) != classes:
        raise InputError(f"class names: {len(names)} given for a model with {classes} outputs")
    graphs = {"classifier": checked_graph(forward, "classifier"),
              "classifier_grad": checked_graph(gradient_graph(forward), "classifier_grad")}
    deeplift_unavailable = None
    try:
        graphs["deeplift_grad"] = checked_graph(deeplift_graph(forward), "deeplift_grad")
    except UnsupportedOpError as err:
        deeplift_unavailable = str(err)
    checks, miss = _verify(user, graphs, spec, shape, classes, batch, verify_inputs, seed, last)
    if miss:
        graphs.pop("deeplift_grad")
        deeplift_unavailable = miss
    token = uuid.uuid4().hex[:12]
    ACTIVE_TOKENS.add(token)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = swap_folder(out, "new", token)
        staging.mkdir()
        try:
            files = {}
            for role, data in graphs.items():
                (staging / f"{role}.onnx").write_bytes(data)
                files[f"{role}.onnx"] = {"sha256": sha256_bytes(data), "bytes": len(data)}
            manifest = bundle_manifest(input_shape=shape, value_range=(0.0, 1.0), class_names=names, arch="onnx",
                                       roles=list(graphs), files=files, opset=_opset_of(forward), batch=batch,
                                       source=str(path), deeplift_unavailable=deeplift_unavailable,
                                       preprocessing=None if spec.is_identity else spec.to_manifest())
            manifest["model"]["source_layout"] = "NHWC" if last else "NCHW"  # the file's; the bundle's graphs take NCHW
            add_relu_path(staging, manifest, graphs["classifier"])
            write_manifest(staging, manifest)
            probes = np.random.default_rng(seed).random((VERIFY_IMAGES, *shape), dtype=np.float32)
            checks = {**checks, **verify_relu_path(staging, manifest, probes, seed)}
            manifest["verification"] = {"tolerance": TOLERANCE, "fd_reference": "float64 onnx.reference", **checks}
            write_manifest(staging, manifest)
            read_bundle(staging)
            kept = carry_user_files(out, staging)
            install_bundle(staging, out, token)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        sizes = {name: (out / name).stat().st_size for name in [*files, MANIFEST]}
    except OSError as err:
        raise output_error(err, out) from None
    finally:
        ACTIVE_TOKENS.discard(token)
    return OnnxExportReport(path=Path(out), files=sizes, seconds=time.perf_counter() - started, checks=checks, batch=batch,
                            deeplift_unavailable=deeplift_unavailable, kept=kept, recovered=recovered, channels_last=last)



def _opset_of(model: onnx.ModelProto) -> int:
    return max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))
