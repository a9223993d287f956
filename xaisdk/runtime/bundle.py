"""The bundle format written by ``xaisdk export``: a folder of ONNX graphs and ``manifest.json``.

The manifest states the schema version, the input (shape, layout, dtype, value range, batch), the
pixel pipeline of models that take normalised tensors (``preprocessing``, optional: see
:mod:`xaisdk.runtime.preprocessing`),
the class names, every graph with what it computes and its input/output names, the opset, the
sha256 of every file and the xaisdk version that wrote it. Only the classifier and its gradient
graph are required; the DeepLIFT graph, the GANMEX generator and the learned inpainter
(``inpainter``: x, mask -> image; see :mod:`xaisdk.runtime.onnx_inpainter`) are optional.
:func:`read_bundle` checks all of it and returns the graphs' bytes, already hashed, so a file
swapped between the check and its use cannot slip through: every runtime (ONNX Runtime, TensorRT, the
inpainter, ExplainGAN and Exaggeration loaders) runs these bytes and never reopens a file by path.
What a manifest can make a process do is bounded before anything is allocated (see
:mod:`xaisdk.runtime.bundle_integrity`): its own size and nesting, every graph's recorded byte size
(checked against the file before it is read), the input shape, a fixed batch and the class names
(unique). Files must be regular files whose resolved path lies inside the bundle folder; graphs with
tensors stored as external data or nodes outside the default ONNX domain are refused (the exporter
writes neither). This module imports only the standard library and numpy: a serving process reads
bundles without torch or onnx.

>>> import json, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> (folder / "manifest.json").write_text(json.dumps({"schema": "something else"}))
28
>>> read_bundle(folder)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
xaisdk.errors.InputError: ...manifest.json: not an xaisdk bundle manifest (schema 'something else')
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xaisdk.errors import InputError
from xaisdk.runtime.bundle_integrity import MAX_GRAPH_BYTES, MAX_MANIFEST_BYTES, load_json, read_inside, scan_onnx
from xaisdk.runtime.preprocessing import Preprocessing
from xaisdk.runtime.relu_path_bundle import RELU_PATH_FILE, RELU_PATH_TAIL, TAIL_INPUT, ReluPathSpec, parse_relu_path

__all__ = ["MANIFEST", "SCHEMA", "SCHEMA_VERSION", "Bundle", "GraphSpec", "read_bundle", "sha256_bytes"]

SCHEMA = "xaisdk.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# Graph roles and the I/O names the runtime relies on.
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "classifier": (("x",), ("logits",)),
    "classifier_grad": (("x", "w"), ("score", "grad")),
    "deeplift_grad": (("x", "baseline", "w"), ("multipliers", "score", "score_baseline")),
    "generator_ganmex": (("x", "target"), ("image",)),
    "inpainter": (("x", "mask"), ("image",)),  # optional: bundles without it (and older ones) stay valid
    # optional counterfactual generators, served by xaisdk.runtime.explaingan_onnx / exaggeration_onnx
    "explaingan": (("x",), ("transformed", "mask", "composite", "source", "flipped_prob")),
    "exaggeration": (("x", "condition"), ("image",)),
    # optional: the gradient of the classifier from its second convolution on (see xaisdk.runtime.relu_path_bundle)
    RELU_PATH_TAIL: ((TAIL_INPUT, "w"), ("score", "grad")),
}
REQUIRED_ROLES = ("classifier", "classifier_grad")
# Bounds on what a manifest may ask a process to allocate (checked before any graph is read).
MAX_IMAGE_VALUES = 1 << 26
"""Most values (C x H x W) of one input image: 64 Mi (e.g. 3 x 4096 x 4096 fits)."""
MAX_BATCH = 4096
"""Largest fixed batch a bundle may declare."""
MAX_RUN_VALUES = 1 << 28
"""Most values of one padded run of a fixed-batch bundle: batch x max(C x H x W, classes), 1 GiB of float32."""
MAX_CLASSES = 100_000
MAX_NAME_CHARS = 200
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``.

    >>> sha256_bytes(b"")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class GraphSpec:
    """One graph of a bundle: its role, file, the verified bytes, and its I/O names."""

    role: str
    file: str
    data: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    computes: str
    sha256: str = ""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: input spec, class names and graphs (see :func:`read_bundle`)."""

    path: Path
    manifest: dict[str, Any]
    input_shape: tuple[int, int, int]
    value_range: tuple[float, float]
    class_names: tuple[str, ...]
    batch: int | None
    graphs: dict[str, GraphSpec]
    preprocessing: Preprocessing | None = None
    """The model's pixel pipeline (manifest ``"preprocessing"``), None for bundles that take model-range inputs."""
    relu_path: ReluPathSpec | None = None
    """The opening Conv -> ReLU -> Conv split for the fast IG loop (manifest ``"relu_path"``), when exported."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def deeplift_unavailable(self) -> str | None:
        """Why the bundle has no DeepLIFT graph (None when it has one)."""
        return None if "deeplift_grad" in self.graphs else str(self.manifest.get("deeplift_unavailable", "not exported"))


def _field(manifest: dict, key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in manifest:
        raise InputError(f"{where}: manifest is missing {key!r}")
    value = manifest[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InputError(f"{where}: manifest field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_manifest(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise InputError(f"{folder}: no such bundle folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: not a bundle (no {MANIFEST}); make one with `xaisdk export`")
    manifest = load_json(folder, MANIFEST, limit=MAX_MANIFEST_BYTES)
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise InputError(f"{path}: not an xaisdk bundle manifest (schema {found!r})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{path}: bundle schema version {version!r}; this xaisdk reads version {SCHEMA_VERSION} "
                         "(re-export the model with this xaisdk version)")
    return manifest


def _input_spec(manifest: dict, where: Path) -> tuple[tuple[int, int, int], tuple[float, float], int | None]:
    spec = _field(manifest, "input", dict, where)
    shape = _field(spec, "shape", list, where)
    if len(shape) != 3 or not all(_is_int(d) and d > 0 for d in shape):
        raise InputError(f"{where}: input shape must be three positive integers (C, H, W), got {shape}")
    if shape[0] * shape[1] * shape[2] > MAX_IMAGE_VALUES:
        raise InputError(f"{where}: input shape {shape} has more than {MAX_IMAGE_VALUES} values per image")
    if spec.get("layout") != "NCHW" or spec.get("dtype") != "float32":
        raise InputError(f"{where}: unsupported input layout/dtype {spec.get('layout')!r}/{spec.get('dtype')!r}")
    value_range = _field(spec, "value_range", list, where)
    numbers = len(value_range) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                            for v in value_range)
    if not numbers or not value_range[0] < value_range[1]:
        raise InputError(f"{where}: value_range must be [low, high] with low < high, got {value_range}")
    batch = spec.get("batch")
    if batch is not None and (not _is_int(batch) or batch < 1):
        raise InputError(f"{where}: input batch must be a positive integer or null, got {batch!r}")
    if batch is not None and batch > MAX_BATCH:
        raise InputError(f"{where}: input batch {batch} is more than the {MAX_BATCH} rows a bundle may fix")
    return (shape[0], shape[1], shape[2]), (float(value_range[0]), float(value_range[1])), batch


def _class_names(manifest: dict, where: Path) -> tuple[str, ...]:
    names = _field(manifest, "class_names", list, where)
    if len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise InputError(f"{where}: class_names must list at least two names")
    if len(names) > MAX_CLASSES:
        raise InputError(f"{where}: class_names lists {len(names)} names; at most {MAX_CLASSES} are allowed")
    bad = next((n for n in names if not n.strip() or len(n) > MAX_NAME_CHARS), None)
    if bad is not None:
        raise InputError(f"{where}: class name {bad[:40]!r} must be non-blank and at most {MAX_NAME_CHARS} characters")
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise InputError(f"{where}: class_names must be unique; {twice[:5]} appear more than once")
    return tuple(names)


def _check_sizes(input_shape: tuple[int, int, int], num_classes: int, batch: int | None, where: Path) -> None:
    """One padded run of a fixed-batch bundle holds ``batch`` images and ``batch`` rows of class
    weights; bound it before any backend allocates it."""
    if batch is None:
        return
    values = batch * max(math.prod(input_shape), num_classes)
    if values > MAX_RUN_VALUES:
        raise InputError(f"{where}: input batch {batch} of {list(input_shape)} images and {num_classes} classes needs "
                         f"{values} values per run; at most {MAX_RUN_VALUES} are allowed")


def _file_record(files: dict, name: str, where: Path) -> tuple[str, int | None]:
    """The recorded sha256 and byte size of ``name`` (bundles written before sizes were recorded: None)."""
    record = files.get(name)
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise InputError(f"{where}: no sha256 recorded for {name}")
    if not _SHA256.fullmatch(record["sha256"]):
        raise InputError(f"{where}: the sha256 recorded for {name} is not 64 hex digits")
    size = record.get("bytes")
    if size is not None and (not _is_int(size) or not 0 <= size <= MAX_GRAPH_BYTES):
        raise InputError(f"{where}: the size recorded for {name} must be an integer in [0, {MAX_GRAPH_BYTES}] "
                         f"bytes, got {size!r}")
    return record["sha256"], size


def _read_graph(folder: Path, role: str, entry: Any, files: dict, where: Path) -> GraphSpec:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: graph {role!r} must be an object")
    name = _field(entry, "file", str, where)
    if Path(name).name != name or name in ("", ".", ".."):
        raise InputError(f"{where}: graph file {name!r} must be a plain file name inside the bundle")
    expected_inputs, expected_outputs = ROLES[role]
    inputs = tuple(_field(entry, "inputs", dict, where))
    outputs = tuple(_field(entry, "outputs", dict, where))
    if inputs != expected_inputs or outputs != expected_outputs:
        raise InputError(f"{where}: graph {role!r} must have inputs {list(expected_inputs)} and outputs "
                         f"{list(expected_outputs)}, got {list(inputs)} and {list(outputs)}")
    sha256, size = _file_record(files, name, where)
    data = read_inside(folder, name, limit=MAX_GRAPH_BYTES, size=size)
    if sha256_bytes(data) != sha256:
        raise InputError(f"{folder / name}: sha256 does not match the manifest (file changed or truncated after export; "
                         "re-export the bundle)")
    scan_onnx(data, folder / name)
    return GraphSpec(role, name, data, inputs, outputs, str(entry.get("computes", "")), sha256)


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle folder: manifest schema and version, input spec, class names, and the
    sha256 of every graph file. Any problem raises :class:`xaisdk.InputError` naming the file.

    Example (needs an exported bundle)::

        bundle = read_bundle("bundle/")
        bundle.input_shape, sorted(bundle.graphs)
    """
    folder = Path(path)
    manifest = _read_manifest(folder)
    where = folder / MANIFEST
    input_shape, value_range, batch = _input_spec(manifest, where)
    names = _class_names(manifest, where)
    _check_sizes(input_shape, len(names), batch, where)
    graphs_entry = _field(manifest, "graphs", dict, where)
    files = _field(manifest, "files", dict, where)
    unknown = sorted(set(graphs_entry) - set(ROLES))
    if unknown:
        raise InputError(f"{where}: unknown graph roles {unknown}; known: {sorted(ROLES)}")
    missing = [role for role in REQUIRED_ROLES if role not in graphs_entry]
    if missing:
        raise InputError(f"{where}: the bundle lacks the required graphs {missing}")
    graphs = {role: _read_graph(folder, role, entry, files, where) for role, entry in graphs_entry.items()}
    relu_path = _read_relu_path(folder, manifest, files, input_shape, len(names), graphs, where)
    preprocessing = None
    if manifest.get("preprocessing") is not None:
        preprocessing = Preprocessing.from_manifest(manifest["preprocessing"], f"{where}: preprocessing")
        preprocessing.check_channels(input_shape[0])
        if value_range != (0.0, 1.0):
            raise InputError(f"{where}: a bundle with a pixel pipeline takes [0, 1] pixels, but its value_range is "
                             f"{list(value_range)}")
    return Bundle(folder, manifest, input_shape, value_range, names, batch, graphs, preprocessing, relu_path)


def _read_relu_path(folder: Path, manifest: dict, files: dict, input_shape: tuple[int, int, int], num_classes: int,
                    graphs: dict[str, GraphSpec], where: Path) -> ReluPathSpec | None:
    """The manifest's ``relu_path`` with its file read, hashed and checked (None when the bundle has none)."""
    entry = manifest.get("relu_path")
    if entry is None:
        return None
    sha256, size = _file_record(files, RELU_PATH_FILE, where)
    data = read_inside(folder, RELU_PATH_FILE, limit=MAX_GRAPH_BYTES, size=size)
    if sha256_bytes(data) != sha256:
        raise InputError(f"{folder / RELU_PATH_FILE}: sha256 does not match the manifest (file changed or truncated after "
                         "export; re-export the bundle)")
    spec = parse_relu_path(entry, data, input_shape, num_classes, str(where))
    if spec.tail == "graph" and RELU_PATH_TAIL not in graphs:
        raise InputError(f"{where}: relu_path has a graph tail, but the bundle has no {RELU_PATH_TAIL!r} graph")
    return spec
