"""TensorRT engines for a bundle's graphs: building them, and a cache inside the bundle folder.

A TensorRT engine ("plan") only runs on the TensorRT version that built it and on GPUs of the
compute capability it was built for, and it is built for one graph and one batch range. So every
cached plan lives at::

    bundle/engines/<gpu-slug>_sm<cc>_trt<version>/<role>_b<chunk>_<graph-sha12>.plan

next to a JSON sidecar (``.json``) that records the full graph sha256 (from the bundle manifest),
the TensorRT version, the GPU, the optimization profile, the build settings, the date and the
plan's own sha256. A plan is loaded only when its sidecar matches every field of the wanted
:class:`EngineKey` and the plan file still has the recorded sha256, so an engine built for another
GPU, TensorRT version or graph (or a plan cut short by a crash) is never loaded; it is rebuilt.
Plans and sidecars are written atomically (:mod:`xaisdk.runtime.atomic_files`: a temporary file, then
``os.replace``; temporary files of a writer that was killed are removed by the next write).

Engines are built in FP32 with TF32 turned off, and without FP16/INT8: the attributions must match
the ONNX Runtime numbers of the same bundle (the tests require 1e-4 relative), and reduced precision
(TF32 rounds matmul/convolution inputs to 10 mantissa bits, FP16 likewise) would move gradients
by about 1e-3 relative and make the TensorRT attributions disagree with every other backend.

Only :func:`build_engine` needs TensorRT (imported when called); the rest is plain Python.

>>> key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", "ab" * 32, 256)
>>> engine_path("bundle", "classifier_grad", key).as_posix()
'bundle/engines/nvidia-h200_sm90_trt10.13.0.35/classifier_grad_b256_abababababab.plan'
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xaisdk.errors import InputError, OutputError
from xaisdk.runtime.atomic_files import atomic_write_bytes

__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "ENGINE_DIR",
    "SIDECAR_SCHEMA",
    "EngineKey",
    "ProfileShapes",
    "batch_profile",
    "build_engine",
    "engine_cache_key",
    "engine_for",
    "engine_path",
    "gpu_slug",
    "load_cached_engine",
    "read_sidecar",
    "sidecar_path",
    "stale_reason",
    "write_engine",
]

ENGINE_DIR = "engines"
SIDECAR_SCHEMA = "xaisdk.tensorrt_engine"
SIDECAR_VERSION = 1
DEFAULT_WORKSPACE_BYTES = 1 << 30
PRECISION = "fp32 (TF32, FP16 and INT8 off)"

ProfileShapes = Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]
"""Input name -> (min, opt, max) shape of one TensorRT optimization profile."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]*")
_CC = re.compile(r"(\d+)\.(\d+)")


def gpu_slug(gpu_name: str) -> str:
    """The GPU name as a folder-name part: lower case, runs of other characters as one ``-``.

    >>> gpu_slug("NVIDIA GeForce RTX 4090 (laptop)")
    'nvidia-geforce-rtx-4090-laptop'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", str(gpu_name).lower()).strip("-")
    if not slug:
        raise InputError(f"gpu_name: {gpu_name!r} has no letters or digits to name an engine folder with")
    return slug


def _compute_capability(value: object) -> str:
    """``"9.0"``, ``(9, 0)`` or ``9.0`` as ``"9.0"``; anything else raises InputError."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                     for v in value):
        text = f"{value[0]}.{value[1]}"
    elif isinstance(value, (str, float)) and not isinstance(value, bool):
        text = str(value)
    else:
        text = ""
    if not _CC.fullmatch(text):
        raise InputError(f"compute_capability: expected 'major.minor' such as '9.0' or a (major, minor) pair, got {value!r}")
    return text


@dataclass(frozen=True)
class EngineKey:
    """Everything a cached TensorRT plan must have been built for (see :func:`engine_cache_key`)."""

    gpu_name: str
    compute_capability: str
    trt_version: str
    graph_sha256: str
    chunk: int

    @property
    def folder(self) -> str:
        """``<gpu-slug>_sm<cc>_trt<version>``: one folder per GPU model and TensorRT version."""
        return f"{gpu_slug(self.gpu_name)}_sm{self.compute_capability.replace('.', '')}_trt{self.trt_version}"

    def fields(self) -> dict[str, Any]:
        return {"gpu_name": self.gpu_name, "compute_capability": self.compute_capability,
                "tensorrt_version": self.trt_version, "graph_sha256": self.graph_sha256, "chunk": self.chunk}


def engine_cache_key(gpu_name: str, compute_capability: str | tuple[int, int], trt_version: str, graph_sha256: str,
                     chunk: int) -> EngineKey:
    """The cache key of a plan built on ``gpu_name`` (compute capability ``"major.minor"``) by
    TensorRT ``trt_version`` from the graph with sha256 ``graph_sha256``, for batches of 1..``chunk``.

    >>> key = engine_cache_key("NVIDIA A100-SXM4-80GB", (8, 0), "10.3.0", "0" * 64, 64)
    >>> key.folder, key.chunk
    ('nvidia-a100-sxm4-80gb_sm80_trt10.3.0', 64)
    >>> engine_cache_key("NVIDIA A100", "8.0", "10.3.0", "not a sha", 64)
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: graph_sha256: expected 64 lower-case hex digits, got 'not a sha'
    """
    if not isinstance(gpu_name, str) or not gpu_name.strip():
        raise InputError(f"gpu_name: expected the GPU's name, got {gpu_name!r}")
    gpu_slug(gpu_name)
    cc = _compute_capability(compute_capability)
    if not isinstance(trt_version, str) or not _VERSION.fullmatch(trt_version):
        raise InputError(f"trt_version: expected a TensorRT version such as '10.13.0.35', got {trt_version!r}")
    if not isinstance(graph_sha256, str) or not _SHA256.fullmatch(graph_sha256):
        raise InputError(f"graph_sha256: expected 64 lower-case hex digits, got {graph_sha256!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk: expected a positive integer (the engine's largest batch), got {chunk!r}")
    return EngineKey(gpu_name.strip(), cc, trt_version, graph_sha256, int(chunk))


def engine_path(bundle_dir: str | os.PathLike, graph_role: str, key: EngineKey) -> Path:
    """Where the plan of ``graph_role`` for ``key`` is cached inside the bundle folder.

    >>> key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", "12" * 32, 32)
    >>> engine_path("/srv/bundle", "classifier", key).name
    'classifier_b32_121212121212.plan'
    """
    if not isinstance(graph_role, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", graph_role):
        raise InputError(f"graph_role: expected a bundle graph role such as 'classifier_grad', got {graph_role!r}")
    return Path(bundle_dir) / ENGINE_DIR / key.folder / f"{graph_role}_b{key.chunk}_{key.graph_sha256[:12]}.plan"


def sidecar_path(plan_path: str | os.PathLike) -> Path:
    """The JSON sidecar next to a plan.

    >>> sidecar_path("engines/x/classifier_b8_0123456789ab.plan").name
    'classifier_b8_0123456789ab.json'
    """
    return Path(plan_path).with_suffix(".json")


def _profile_json(profile: ProfileShapes) -> dict[str, dict[str, list[int]]]:
    return {name: {"min": [int(d) for d in lo], "opt": [int(d) for d in opt], "max": [int(d) for d in hi]}
            for name, (lo, opt, hi) in profile.items()}


def write_engine(path: str | os.PathLike, plan: bytes, key: EngineKey, graph_role: str, profile: ProfileShapes,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> Path:
    """Store ``plan`` at ``path`` and its sidecar next to it, each atomically; returns the sidecar path.

    The plan goes first: a crash between the two leaves a plan without a (matching) sidecar, which
    :func:`load_cached_engine` refuses, so the engine is rebuilt rather than trusted.

    >>> import tempfile
    >>> key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", "ab" * 32, 4)
    >>> plan = engine_path(tempfile.mkdtemp(), "classifier", key)
    >>> side = write_engine(plan, b"plan bytes", key, "classifier", {"x": ((1, 3), (4, 3), (4, 3))})
    >>> load_cached_engine(plan, key)
    b'plan bytes'
    """
    plan_file = Path(path)
    data = bytes(plan)
    if not data:
        raise InputError(f"{plan_file}: refusing to cache an empty TensorRT plan")
    from xaisdk import __version__

    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "schema_version": SIDECAR_VERSION,
        "graph_role": graph_role,
        **key.fields(),
        "profile": _profile_json(profile),
        "precision": PRECISION,
        "workspace_bytes": int(workspace_bytes),
        "plan_sha256": hashlib.sha256(data).hexdigest(),
        "plan_bytes": len(data),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "xaisdk_version": __version__,
    }
    atomic_write_bytes(plan_file, data)
    side = sidecar_path(plan_file)
    atomic_write_bytes(side, (json.dumps(sidecar, indent=2) + "\n").encode("utf-8"))
    return side


def read_sidecar(plan_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of a plan as a dict, or None when it is missing or not an engine sidecar.

    >>> read_sidecar("/nonexistent/classifier_b1_000000000000.plan") is None
    True
    """
    try:
        data = json.loads(sidecar_path(plan_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA or data.get("schema_version") != SIDECAR_VERSION:
        return None
    return data


def stale_reason(plan_path: str | os.PathLike, key: EngineKey, graph_role: str | None = None) -> str | None:
    """Why the cached plan at ``plan_path`` must not be used for ``key`` (None when it may).

    >>> key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", "ab" * 32, 4)
    >>> stale_reason("/nonexistent/x.plan", key)
    'no cached plan'
    """
    plan_file = Path(plan_path)
    if not plan_file.is_file():
        return "no cached plan"
    sidecar = read_sidecar(plan_file)
    if sidecar is None:
        return f"no readable sidecar {sidecar_path(plan_file).name}"
    for field, want in key.fields().items():
        if sidecar.get(field) != want:
            return f"built for {field} {sidecar.get(field)!r}, need {want!r}"
    if graph_role is not None and sidecar.get("graph_role") != graph_role:
        return f"built for graph {sidecar.get('graph_role')!r}, need {graph_role!r}"
    data = plan_file.read_bytes()
    if len(data) != sidecar.get("plan_bytes") or hashlib.sha256(data).hexdigest() != sidecar.get("plan_sha256"):
        return "the plan file does not match the sha256 in its sidecar (changed or cut short)"
    return None


def load_cached_engine(plan_path: str | os.PathLike, key: EngineKey, graph_role: str | None = None) -> bytes | None:
    """The cached plan's bytes when its sidecar matches ``key`` (and ``graph_role``) and the file is
    intact; None otherwise (see :func:`stale_reason` for why).

    >>> key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", "ab" * 32, 4)
    >>> load_cached_engine("/nonexistent/x.plan", key) is None
    True
    """
    if stale_reason(plan_path, key, graph_role) is not None:
        return None
    return Path(plan_path).read_bytes()


def _shape(value: Sequence[int], what: str) -> tuple[int, ...]:
    try:
        dims = tuple(value)
    except TypeError:
        raise InputError(f"{what}: expected a shape (sequence of positive integers), got {value!r}") from None
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise InputError(f"{what}: expected a shape of positive integers, got {value!r}")
    return dims


def _check_profile(profile: ProfileShapes) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``profile`` with every (min, opt, max) checked: same rank, min <= opt <= max in every dimension."""
    if not isinstance(profile, Mapping) or not profile:
        raise InputError(f"profile_shapes: expected a dict of input name -> (min, opt, max) shapes, got {profile!r}")
    checked = {}
    for name, triple in profile.items():
        if not isinstance(triple, (tuple, list)) or len(triple) != 3:
            raise InputError(f"profile_shapes[{name!r}]: expected (min, opt, max) shapes, got {triple!r}")
        lo, opt, hi = (_shape(s, f"profile_shapes[{name!r}][{i}]") for i, s in enumerate(triple))
        if not len(lo) == len(opt) == len(hi):
            raise InputError(f"profile_shapes[{name!r}]: min, opt and max have different ranks: {lo}, {opt}, {hi}")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise InputError(f"profile_shapes[{name!r}]: need min <= opt <= max in every dimension, got {lo}, {opt}, {hi}")
        checked[str(name)] = (lo, opt, hi)
    return checked


def batch_profile(inputs: Mapping[str, Sequence[int]], chunk: int, min_batch: int = 1) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The one optimization profile used for every bundle graph: batch ``min_batch`` (1; the fixed
    batch for bundles exported with one) at least, ``chunk`` as both the optimum and the maximum, for
    every input (``inputs`` maps a name to its per-row shape).

    >>> batch_profile({"x": (1, 28, 28), "w": (10,)}, 256)["w"]
    ((1, 10), (256, 10), (256, 10))
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk: expected a positive integer, got {chunk!r}")
    if isinstance(min_batch, bool) or not isinstance(min_batch, int) or not 1 <= min_batch <= chunk:
        raise InputError(f"min_batch: expected an integer in [1, chunk={chunk}], got {min_batch!r}")
    return {name: ((min_batch, *row), (chunk, *row), (chunk, *row)) for name, row in inputs.items()}


def engine_for(bundle_dir: str | os.PathLike, graph_role: str, graph: bytes, row_shapes: Mapping[str, Sequence[int]],
               key: EngineKey, *, fixed_batch: bool = False, build: bool = True, rebuild: bool = False,
               workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> tuple[bytes, Path, bool]:
    """The plan of one bundle graph for ``key``: loaded from the bundle's engine cache when a matching
    one is there, else built (:func:`build_engine`, batch 1..``key.chunk``, or exactly ``key.chunk``
    with ``fixed_batch``) and cached. Returns ``(plan, path, built)``. With ``build=False`` a missing
    or stale plan raises InputError saying why; ``rebuild=True`` ignores the cached plan (for one that
    TensorRT itself refused to load). A bundle folder that cannot be written to only costs a warning:
    the plan is then built again by the next process.

    >>> key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", "ab" * 32, 4)
    >>> engine_for("/nonexistent", "classifier", b"", {"x": (3,)}, key, build=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: /nonexistent/engines/.../classifier_b4_abababababab.plan: no cached plan; ...
    """
    path = engine_path(bundle_dir, graph_role, key)
    reason = "TensorRT could not load the cached plan" if rebuild else stale_reason(path, key, graph_role)
    if reason is None:
        return path.read_bytes(), path, False
    if not build:
        raise InputError(f"{path}: {reason}; create the backend with build=True to build this TensorRT engine")
    profile = batch_profile(row_shapes, key.chunk, key.chunk if fixed_batch else 1)
    plan = build_engine(graph, profile, workspace_bytes)
    try:
        write_engine(path, plan, key, graph_role, profile, workspace_bytes)
    except OutputError as err:
        warnings.warn(f"could not cache the TensorRT engine at {path} ({err}); it will be built again next time",
                      RuntimeWarning, stacklevel=2)
    return plan, path, True


def _trt_dims(shape: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def build_engine(onnx_model: bytes | str | os.PathLike, profile_shapes: ProfileShapes,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> bytes:
    """Build a serialized TensorRT plan from an ONNX graph (bytes, or a file path), FP32 with TF32
    off (see the module docstring for why), with one optimization profile: ``profile_shapes`` maps
    every graph input to its (min, opt, max) shape. Inputs whose shape is fixed in the graph must be
    given exactly that shape as min, opt and max. Needs TensorRT >= 10 and a GPU; the arguments are
    checked before TensorRT is imported.

    Usage (on a machine with TensorRT and a GPU)::

        plan = build_engine("bundle/classifier.onnx", {"x": ((1, 1, 28, 28), (256, 1, 28, 28), (256, 1, 28, 28))})

    >>> build_engine(b"", {"x": ((2, 3), (1, 3), (4, 3))})
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: profile_shapes['x']: need min <= opt <= max in every dimension, got (2, 3), (1, 3), (4, 3)
    """
    profile = _check_profile(profile_shapes)
    if isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int) or workspace_bytes < 1:
        raise InputError(f"workspace_bytes: expected a positive integer, got {workspace_bytes!r}")
    if isinstance(onnx_model, (bytes, bytearray, memoryview)):
        data, where = bytes(onnx_model), "ONNX graph"
    else:
        path = Path(onnx_model)
        if not path.is_file():
            raise InputError(f"{path}: no such ONNX file")
        data, where = path.read_bytes(), str(path)
    if not data:
        raise InputError(f"{where}: empty ONNX graph")
    trt = _import_tensorrt()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: every network has an explicit batch dimension
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise InputError(f"{where}: TensorRT's ONNX parser rejects this graph ({errors[:600]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:
        config.clear_flag(tf32)  # on by default on Ampere and newer; see the module docstring

    names = [network.get_input(i).name for i in range(network.num_inputs)]
    missing = [n for n in names if n not in profile]
    unknown = [n for n in profile if n not in names]
    if missing or unknown:
        raise InputError(f"{where}: profile_shapes must name exactly the graph inputs {names} "
                         f"(missing {missing}, unknown {unknown})")
    optimization = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = _trt_dims(tensor.shape)
        lo, opt, hi = profile[tensor.name]
        if len(dims) != len(lo):
            raise InputError(f"{where}: input {tensor.name!r} has rank {len(dims)} {dims}, the profile gives {lo}")
        fixed = [d for d in dims if d >= 0]
        if len(fixed) == len(dims):
            if not lo == opt == hi == dims:
                raise InputError(f"{where}: input {tensor.name!r} has the fixed shape {dims}; its profile must be "
                                 f"that shape, got {lo}, {opt}, {hi}")
            continue
        if any(d >= 0 and not lo[j] == opt[j] == hi[j] == d for j, d in enumerate(dims)):
            raise InputError(f"{where}: input {tensor.name!r} is {dims} (-1: dynamic); the profile {lo}, {opt}, {hi} "
                             "must keep its fixed dimensions")
        optimization.set_shape(tensor.name, lo, opt, hi)
        dynamic = True
    if dynamic:
        config.add_optimization_profile(optimization)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InputError(f"{where}: TensorRT could not build an engine from this graph (see TensorRT's log above)")
    return bytes(plan)


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as err:
        raise InputError(f"building TensorRT engines needs TensorRT >= 10 ({err}); install it with "
                         "pip install 'xaisdk[tensorrt]' on a machine with an NVIDIA GPU") from None
    major = str(getattr(trt, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 10:
        raise InputError(f"TensorRT {getattr(trt, '__version__', '?')} is too old: xaisdk uses the TensorRT 10 API "
                         "(pip install 'xaisdk[tensorrt]')")
    return trt
