"""The TensorRT backend and its engine cache.

Three kinds of test:

- everywhere: the engine cache (keys, paths, sidecars, stale plans are refused), argument and bundle
  errors, and the error that names a missing tensorrt / cuda-python / GPU;
- everywhere: the backend's device-side logic (chunking, padding of fixed batches, buffer sizes, the
  fused Integrated Gradients loop with its pointer arguments, freeing) run with host memory standing
  in for GPU memory (``HostMemory``, with the same methods as ``CudaRuntime``), ONNX Runtime running
  each graph on those buffers in place of a TensorRT engine, and the ``_ext_cuda`` pointer API served
  by the CPU kernels of ``xaisdk._ext`` (``HostKernels``, same semantics by contract);
- only where tensorrt imports and a CUDA GPU exists: the real engines against ONNX Runtime.
"""

from __future__ import annotations

import ctypes
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from xaisdk.deploy.export import export_bundle
from xaisdk.errors import InputError
from xaisdk.methods import drivers
from xaisdk.methods.quadrature import path_rule
from xaisdk.models import shipped_ganmex_path
from xaisdk.runtime import engines
from xaisdk.runtime.backend import class_weights
from xaisdk.runtime.bundle import read_bundle
from xaisdk.runtime.engines import (
    EngineKey,
    build_engine,
    engine_cache_key,
    engine_for,
    engine_path,
    load_cached_engine,
    read_sidecar,
    sidecar_path,
    stale_reason,
    write_engine,
)
from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend
from xaisdk.runtime.tensorrt_backend import (
    ENGINE_ROLES,
    CudaRuntime,
    TensorRTBackend,
    _DeviceBackend,
    _free_all,
    import_cudart,
    row_shapes,
)

CPU = ["CPUExecutionProvider"]
SHA_A, SHA_B = "a" * 64, "b" * 64


def _tensorrt_gpu_missing() -> str | None:
    """Why the real-engine tests cannot run here (None when they can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "needs TensorRT and a CUDA GPU: tensorrt is not importable"
    cudart = import_cudart()
    if cudart is None:
        return "needs TensorRT and a CUDA GPU: cuda-python is not importable"
    count, _ = CudaRuntime(cudart).device_count()
    return None if count > 0 else "needs TensorRT and a CUDA GPU: no GPU"


TRT_MISSING = _tensorrt_gpu_missing()
needs_trt = pytest.mark.skipif(TRT_MISSING is not None, reason=TRT_MISSING or "")


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference relative to the largest reference magnitude (as export verifies)."""
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return export_bundle(shipped_ganmex_path("digits"), tmp_path_factory.mktemp("trt") / "bundle").path


@pytest.fixture(scope="module")
def fixed_bundle_dir(tmp_path_factory) -> Path:
    return export_bundle(shipped_ganmex_path("digits"), tmp_path_factory.mktemp("trt") / "fixed", batch=4).path


@pytest.fixture(scope="module")
def ort(bundle_dir) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(bundle_dir, providers=CPU)


@pytest.fixture(scope="module")
def images(digits) -> np.ndarray:
    """Seven real test digits (7 rows: chunks of 3 and 4 leave a short last chunk)."""
    return np.ascontiguousarray(digits.test.x[:7], dtype=np.float32)


# --- engine cache: keys, paths, sidecars ---------------------------------------------------------


def test_cache_path_changes_with_every_key_field(tmp_path):
    base = dict(gpu_name="NVIDIA H200", compute_capability="9.0", trt_version="10.13.0.35", graph_sha256=SHA_A, chunk=256)
    path = engine_path(tmp_path, "classifier_grad", engine_cache_key(**base))
    assert path == tmp_path / "engines" / "nvidia-h200_sm90_trt10.13.0.35" / "classifier_grad_b256_aaaaaaaaaaaa.plan"
    assert engine_path(tmp_path, "classifier_grad", engine_cache_key(**base)) == path
    assert engine_path(tmp_path, "classifier_grad", engine_cache_key(**{**base, "compute_capability": (9, 0)})) == path
    changes = {"gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "trt_version": "10.3.0",
               "graph_sha256": SHA_B, "chunk": 128}
    others = {field: engine_path(tmp_path, "classifier_grad", engine_cache_key(**{**base, field: value}))
              for field, value in changes.items()}
    assert len({path, *others.values()}) == 1 + len(changes), others
    assert engine_path(tmp_path, "classifier", engine_cache_key(**base)) != path


@pytest.mark.parametrize("field, value, match", [
    ("gpu_name", "  ", "gpu_name"),
    ("gpu_name", "???", "no letters or digits"),
    ("compute_capability", "sm90", "compute_capability"),
    ("compute_capability", (9,), "compute_capability"),
    ("trt_version", "10/3", "trt_version"),
    ("trt_version", "", "trt_version"),
    ("graph_sha256", "A" * 64, "64 lower-case hex"),
    ("graph_sha256", "a" * 63, "64 lower-case hex"),
    ("chunk", 0, "chunk"),
    ("chunk", True, "chunk"),
    ("chunk", 2.0, "chunk"),
])
def test_cache_key_rejects_bad_fields(field, value, match):
    base = dict(gpu_name="NVIDIA H200", compute_capability="9.0", trt_version="10.13.0.35", graph_sha256=SHA_A, chunk=8)
    with pytest.raises(InputError, match=match):
        engine_cache_key(**{**base, field: value})


def test_engine_path_rejects_odd_roles(tmp_path):
    key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", SHA_A, 8)
    for role in ("../classifier", "Classifier", "", "a/b"):
        with pytest.raises(InputError, match="graph_role"):
            engine_path(tmp_path, role, key)


def _key(**change) -> EngineKey:
    fields = dict(gpu_name="NVIDIA H200", compute_capability="9.0", trt_version="10.13.0.35", graph_sha256=SHA_A, chunk=8)
    return engine_cache_key(**{**fields, **change})


def test_sidecar_round_trip(tmp_path):
    key = _key()
    plan = engine_path(tmp_path, "classifier_grad", key)
    profile = {"x": ((1, 1, 28, 28), (8, 1, 28, 28), (8, 1, 28, 28)), "w": ((1, 10), (8, 10), (8, 10))}
    side = write_engine(plan, b"\x00plan-bytes\xff", key, "classifier_grad", profile, workspace_bytes=1 << 20)
    assert side == sidecar_path(plan) and side.suffix == ".json"
    data = read_sidecar(plan)
    assert data == json.loads(side.read_text())
    assert {k: data[k] for k in ("gpu_name", "compute_capability", "tensorrt_version", "graph_sha256", "chunk")} == {
        "gpu_name": "NVIDIA H200", "compute_capability": "9.0", "tensorrt_version": "10.13.0.35",
        "graph_sha256": SHA_A, "chunk": 8}
    assert data["graph_role"] == "classifier_grad"
    assert data["profile"]["x"] == {"min": [1, 1, 28, 28], "opt": [8, 1, 28, 28], "max": [8, 1, 28, 28]}
    assert data["workspace_bytes"] == 1 << 20 and data["plan_bytes"] == 12
    assert "TF32" in data["precision"] and data["created"].endswith("+00:00")
    assert stale_reason(plan, key, "classifier_grad") is None
    assert load_cached_engine(plan, key, "classifier_grad") == b"\x00plan-bytes\xff"
    assert sorted(p.name for p in plan.parent.iterdir()) == sorted([plan.name, side.name])  # no temporary files left


def test_stale_or_mismatching_plans_are_not_loaded(tmp_path):
    key = _key()
    plan = engine_path(tmp_path, "classifier", key)
    assert stale_reason(plan, key) == "no cached plan"
    write_engine(plan, b"plan", key, "classifier", {"x": ((1, 3), (8, 3), (8, 3))})
    assert load_cached_engine(plan, key, "classifier") == b"plan"

    # Same file name (first 12 sha digits equal), other graph: the sidecar's full sha256 refuses it.
    other_graph = _key(graph_sha256="a" * 12 + "c" * 52)
    assert engine_path(tmp_path, "classifier", other_graph) == plan
    assert "graph_sha256" in stale_reason(plan, other_graph) and load_cached_engine(plan, other_graph) is None
    assert "graph 'classifier'" in stale_reason(plan, key, "classifier_grad")

    # A sidecar edited to another TensorRT version / GPU.
    for field, value in (("tensorrt_version", "10.0.1"), ("gpu_name", "NVIDIA L4"), ("chunk", 16)):
        side = json.loads(sidecar_path(plan).read_text())
        sidecar_path(plan).write_text(json.dumps({**side, field: value}))
        assert field in stale_reason(plan, key) and load_cached_engine(plan, key) is None
        sidecar_path(plan).write_text(json.dumps(side))
    assert load_cached_engine(plan, key) == b"plan"

    plan.write_bytes(b"pla")  # cut short after the sidecar was written
    assert "sha256" in stale_reason(plan, key) and load_cached_engine(plan, key) is None
    plan.write_bytes(b"plan")
    sidecar_path(plan).write_text("{not json")
    assert "no readable sidecar" in stale_reason(plan, key) and load_cached_engine(plan, key) is None
    sidecar_path(plan).unlink()
    assert load_cached_engine(plan, key) is None


def test_engine_for_uses_a_matching_cached_plan_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it would fail: a cache hit must not try
    key = _key()
    path = engine_path(tmp_path, "classifier", key)
    write_engine(path, b"cached plan", key, "classifier", {"x": ((1, 3), (8, 3), (8, 3))})
    mtime = path.stat().st_mtime_ns
    plan, where, built = engine_for(tmp_path, "classifier", b"graph", {"x": (3,)}, key)
    assert (plan, where, built) == (b"cached plan", path, False) and path.stat().st_mtime_ns == mtime

    with pytest.raises(InputError, match=r"needs TensorRT >= 10"):  # rebuild ignores even a matching plan
        engine_for(tmp_path, "classifier", b"graph", {"x": (3,)}, key, rebuild=True)
    stale = _key(trt_version="10.0.1")
    with pytest.raises(InputError, match="no cached plan; create the backend with build=True"):
        engine_for(tmp_path, "classifier", b"graph", {"x": (3,)}, stale, build=False)
    with pytest.raises(InputError, match=r"needs TensorRT >= 10 .*pip install 'xaisdk\[tensorrt\]'"):
        engine_for(tmp_path, "classifier", b"graph", {"x": (3,)}, stale, build=True)


def test_build_engine_checks_arguments_before_importing_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    good = {"x": ((1, 3), (4, 3), (4, 3))}
    cases = [
        ({"x": ((1, 3), (4, 3))}, 1, "expected \\(min, opt, max\\)"),
        ({"x": ((1, 3), (4,), (4, 3))}, 1, "different ranks"),
        ({"x": ((1, 0), (4, 0), (4, 0))}, 1, "positive integers"),
        ({"x": ((5, 3), (4, 3), (8, 3))}, 1, "min <= opt <= max"),
        ({}, 1, "profile_shapes"),
        (good, 0, "workspace_bytes"),
    ]
    for profile, workspace, match in cases:
        with pytest.raises(InputError, match=match):
            build_engine(b"graph", profile, workspace)
    with pytest.raises(InputError, match="no such ONNX file"):
        build_engine(tmp_path / "missing.onnx", good)
    with pytest.raises(InputError, match="empty ONNX graph"):
        build_engine(b"", good)
    with pytest.raises(InputError, match=r"TensorRT >= 10.*xaisdk\[tensorrt\]"):
        build_engine(b"graph", good)


def test_batch_profile():
    assert engines.batch_profile({"x": (1, 2), "w": (3,)}, 4) == {"x": ((1, 1, 2), (4, 1, 2), (4, 1, 2)),
                                                                  "w": ((1, 3), (4, 3), (4, 3))}
    assert engines.batch_profile({"w": (3,)}, 4, min_batch=4)["w"] == ((4, 3), (4, 3), (4, 3))
    with pytest.raises(InputError, match="min_batch"):
        engines.batch_profile({"w": (3,)}, 4, min_batch=5)


# --- backend errors before any GPU work -------------------------------------------------------------


def test_missing_packages_are_named_with_the_extra(bundle_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(InputError) as info:
        TensorRTBackend(bundle_dir)
    message = str(info.value)
    assert "tensorrt is not importable" in message and "cuda-python is not importable" in message
    assert "pip install 'xaisdk[tensorrt]'" in message and "NVIDIA GPU" in message


@pytest.mark.skipif(import_cudart() is None, reason="cuda-python is not importable, so its no-GPU answer cannot be read")
def test_no_gpu_is_named_when_cuda_python_is_there(bundle_dir, monkeypatch):
    count, why = CudaRuntime(import_cudart()).device_count()
    if count > 0:
        pytest.skip("a CUDA GPU is present, so the no-GPU error cannot be provoked")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(InputError, match="no (usable )?CUDA GPU") as info:
        TensorRTBackend(bundle_dir)
    assert "cuda-python is not importable" not in str(info.value)
    assert why is None or why.split(":")[0] in str(info.value)


def test_too_old_tensorrt_is_named(bundle_dir, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(InputError, match=r"TensorRT 8\.6\.1 is too old \(need >= 10\)"):
        TensorRTBackend(bundle_dir)


@pytest.mark.parametrize("kwargs, match", [
    ({"chunk_size": 0}, "chunk_size: expected a positive integer, got 0"),
    ({"chunk_size": -3}, "chunk_size"),
    ({"chunk_size": True}, "chunk_size"),
    ({"chunk_size": 2.5}, "chunk_size"),
    ({"device": -1}, "device: expected a CUDA device number"),
    ({"device": "0"}, "device"),
    ({"build": "yes"}, "build: expected True or False"),
])
def test_bad_arguments_before_tensorrt(bundle_dir, monkeypatch, kwargs, match):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(InputError, match=match):
        TensorRTBackend(bundle_dir, **kwargs)


def test_bad_bundle_before_tensorrt(tmp_path, bundle_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(InputError, match="no such bundle folder"):
        TensorRTBackend(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a bundle"):
        TensorRTBackend(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("manifest.json", "classifier.onnx", "classifier_grad.onnx"):
        (broken / name).write_bytes((bundle_dir / name).read_bytes())
    (broken / "classifier.onnx").write_bytes(b"tampered")
    with pytest.raises(InputError, match="the file is 8 bytes but the manifest records"):
        TensorRTBackend(broken)


# --- device-side logic on host memory (runs everywhere) ---------------------------------------------


class HostMemory:
    """``CudaRuntime``'s methods over host memory. Fresh blocks are filled with NaN bytes, like
    uninitialized GPU memory could be; every copy must lie inside one live block."""

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.streams: set[int] = set()

    def malloc(self, nbytes: int) -> int:
        block = np.full(max(int(nbytes), 4), 0xFF, np.uint8)
        self.blocks[block.ctypes.data] = block
        return block.ctypes.data

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]

    def _inside(self, ptr: int, nbytes: int) -> None:
        for start, block in self.blocks.items():
            if start <= ptr and ptr + nbytes <= start + block.nbytes:
                return
        raise AssertionError(f"{nbytes} bytes at {ptr:#x} are not inside one allocated block")

    def view(self, ptr: int, count: int) -> np.ndarray:
        self._inside(ptr, 4 * count)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (count,))

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        self._inside(ptr, nbytes)
        ctypes.memset(ptr, 0, nbytes)

    def h2d(self, ptr: int, array: np.ndarray, stream: int) -> None:
        assert array.flags.c_contiguous
        self._inside(ptr, array.nbytes)
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)

    def d2h(self, array: np.ndarray, ptr: int, stream: int) -> None:
        assert array.flags.c_contiguous and array.flags.writeable
        self._inside(ptr, array.nbytes)
        ctypes.memmove(array.ctypes.data, ptr, array.nbytes)

    def set_device(self, device: int) -> None:
        assert device == 0

    def create_stream(self) -> int:
        self.streams.add(len(self.streams) + 1)
        return len(self.streams)

    def destroy_stream(self, stream: int) -> None:
        self.streams.remove(stream)

    def synchronize(self, stream: int) -> None:
        assert stream in self.streams


class OrtRunner:
    """A bundle graph run by ONNX Runtime in and out of ``HostMemory`` buffers, as _EngineRunner runs
    a TensorRT engine: buffers for ``rows`` rows, zeroed once; fixed-batch graphs always run all rows."""

    def __init__(self, session, spec, shapes, rows: int, mem: HostMemory, fixed: bool) -> None:
        self.session, self.spec, self.rows, self.mem, self.fixed = session, spec, rows, mem, fixed
        self.shapes = {name: shapes[name] for name in (*spec.inputs, *spec.outputs)}
        self.address = {}
        for name, shape in self.shapes.items():
            nbytes = 4 * rows * math.prod(shape)
            self.address[name] = mem.malloc(nbytes)
            mem.memset(self.address[name], nbytes, 0)
        self.used: list[int] = []

    def _array(self, name: str, rows: int) -> np.ndarray:
        return self.mem.view(self.address[name], rows * math.prod(self.shapes[name])).reshape(rows, *self.shapes[name])

    def run(self, used: int) -> None:
        assert 1 <= used <= self.rows
        self.used.append(used)
        rows = self.rows if self.fixed else used
        feeds = {name: self._array(name, rows).copy() for name in self.spec.inputs}
        for name, value in zip(self.spec.outputs, self.session.run(list(self.spec.outputs), feeds)):
            self._array(name, rows)[...] = value

    def close(self) -> None:
        for ptr in self.address.values():
            self.mem.free(ptr)
        self.address = {}


class HostKernels:
    """The ``xaisdk._ext_cuda`` pointer API (api.md) over HostMemory, served by the CPU kernels of
    ``xaisdk._ext``, whose semantics the CUDA kernels share by contract."""

    def __init__(self, mem: HostMemory) -> None:
        from xaisdk import _ext

        self.ext, self.mem, self.calls = _ext, mem, []

    def _m(self, ptr: int, rows: int, cols: int | None = None) -> np.ndarray:
        flat = self.mem.view(ptr, rows * (cols or 1))
        return flat if cols is None else flat.reshape(rows, cols)

    def ig_fill_chunk(self, x, baseline, alphas, N, D, S, start, K, out, stream):
        self.calls.append(("fill", start, K))
        self.ext.ig_fill_chunk(self._m(x, N, D), self._m(baseline, N, D), self._m(alphas, S), start, self._m(out, K, D))

    def ig_accumulate_chunk(self, grads, weights, N, D, S, start, K, acc, stream):
        self.calls.append(("accumulate", start, K))
        self.ext.ig_accumulate_chunk(self._m(grads, K, D), self._m(weights, S), start, self._m(acc, N, D))

    def ig_finalize(self, acc, x, baseline, N, D, stream):
        self.calls.append(("finalize", N, D))
        self.ext.ig_finalize(self._m(acc, N, D), self._m(x, N, D), self._m(baseline, N, D))


def host_backend(folder: Path, rows: int, kernels: bool) -> tuple[_DeviceBackend, HostMemory]:
    import onnxruntime

    bundle = read_bundle(folder)
    mem = HostMemory()
    shapes = row_shapes(bundle.input_shape, bundle.num_classes)
    runners = {role: OrtRunner(onnxruntime.InferenceSession(spec.data, providers=CPU), spec, shapes,
                               bundle.batch or rows, mem, bundle.batch is not None)
               for role, spec in bundle.graphs.items() if role in ENGINE_ROLES}
    backend = _DeviceBackend(bundle, bundle.batch or rows, mem, mem.create_stream(), runners,
                             HostKernels(mem) if kernels else None)
    return backend, mem


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic-batch", "fixed-batch"])
def test_device_logic_matches_onnxruntime(bundle_dir, fixed_bundle_dir, ort, images, fixed):
    folder = fixed_bundle_dir if fixed else bundle_dir
    backend, mem = host_backend(folder, rows=3, kernels=False)
    rng = np.random.default_rng(3)
    w = class_weights(rng.integers(0, 10, len(images)), rng.integers(0, 10, len(images)), 10)
    baseline = images[::-1].copy()
    target = rng.integers(0, 10, len(images))
    assert rel_err(backend.logits(images), ort.logits(images)) < 1e-5
    score, grad = backend.score_gradient(images, w)
    ref_score, ref_grad = ort.score_gradient(images, w)
    assert rel_err(score, ref_score) < 1e-5 and rel_err(grad, ref_grad) < 1e-5
    assert rel_err(backend.deeplift_multipliers(images, baseline, w), ort.deeplift_multipliers(images, baseline, w)) < 1e-5
    assert rel_err(backend.generate(images, target), ort.generate(images, target)) < 1e-5
    assert backend._runners["classifier"].used == ([4, 3] if fixed else [3, 3, 1])  # 7 rows in chunks
    assert backend.logits(images[:0]).shape == (0, 10)
    with pytest.raises(InputError, match="weights: expected shape"):
        backend.score_gradient(images, w[:2])
    with pytest.raises(InputError, match="target: class index out of range"):
        backend.generate(images, np.full(len(images), 10))
    backend.close()
    assert mem.blocks == {} and mem.streams == set()


@pytest.mark.parametrize("kernels", [True, False], ids=["device-kernels", "host-fallback"])
@pytest.mark.parametrize("rows", [5, 64])
def test_fused_integrated_gradients_matches_the_driver(bundle_dir, ort, images, kernels, rows):
    backend, mem = host_backend(bundle_dir, rows=rows, kernels=kernels)
    rng = np.random.default_rng(4)
    w = class_weights(rng.integers(0, 10, len(images)), rng.integers(0, 10, len(images)), 10)
    baseline = np.clip(images + rng.normal(0, 0.2, images.shape), 0, 1).astype(np.float32)
    for rule, n_steps in (("riemann_middle", 9), ("gausslegendre", 6)):
        alphas, quadrature = path_rule(rule, n_steps)
        got = backend.fused_integrated_gradients(images, baseline, w, alphas, quadrature)
        want = drivers.integrated_gradients(ort, images, w, baseline, n_steps=n_steps, rule=rule)
        assert got.shape == images.shape and got.dtype == np.float32
        assert rel_err(got, want) < 1e-5, rule
    if kernels:
        total = len(images) * n_steps
        fills = [c for c in backend._kernels.calls if c[0] == "fill"]
        assert fills[-2:] == [("fill", (total - 1) // rows * rows, total - (total - 1) // rows * rows)] * 2
        assert backend._kernels.calls[-1] == ("finalize", len(images), 28 * 28)
    # a scalar baseline broadcasts; completeness holds as for the driver
    alphas, quadrature = path_rule("riemann_middle", 16)
    got = backend.fused_integrated_gradients(images[:2], 0.0, w[:2], alphas, quadrature)
    want = drivers.integrated_gradients(ort, images[:2], w[:2], 0.0, n_steps=16)
    assert rel_err(got, want) < 1e-5
    backend.close()
    assert mem.blocks == {}  # the loop's temporary buffers were freed too


def test_driver_takes_the_fused_path(bundle_dir, ort, images):
    """drivers.integrated_gradients hands a backend with fused_integrated_gradients whole groups of images."""
    backend, mem = host_backend(bundle_dir, rows=8, kernels=True)
    w = class_weights(np.arange(len(images)) % 10, (np.arange(len(images)) + 3) % 10, 10)
    got, delta = drivers.integrated_gradients(backend, images, w, 0.0, n_steps=12, chunk_size=8,
                                              return_convergence_delta=True)
    want = drivers.integrated_gradients(ort, images, w, 0.0, n_steps=12, chunk_size=8)
    assert any(call[0] == "finalize" for call in backend._kernels.calls)
    assert rel_err(got, want) < 1e-5 and delta.shape == (len(images),)
    backend.close()


def test_fused_integrated_gradients_rejects_bad_input(bundle_dir, images):
    backend, mem = host_backend(bundle_dir, rows=4, kernels=True)
    w = class_weights(np.zeros(len(images), np.int64), None, 10)
    alphas, quadrature = path_rule("riemann_middle", 4)
    cases = [
        ((images[:, :, :5], images, w, alphas, quadrature), "x: expected shape"),
        ((images, images[:2], w, alphas, quadrature), "baseline: expected the shape of x"),
        ((images, images, w[:3], alphas, quadrature), "weights: expected shape"),
        ((images, images, w, alphas, quadrature[:2]), "alphas and quadrature"),
        ((images, images, w, alphas[:0], quadrature[:0]), "alphas and quadrature"),
        ((np.where(images > 0.5, np.nan, images), images, w, alphas, quadrature), "x: contains"),
    ]
    for args, match in cases:
        with pytest.raises(InputError, match=match):
            backend.fused_integrated_gradients(*args)
    backend.close()
    backend.close()  # twice is fine
    assert mem.blocks == {}
    with pytest.raises(InputError, match="closed"):
        backend.logits(images)
    with pytest.raises(InputError, match="closed"):
        backend.fused_integrated_gradients(images, images, w, alphas, quadrature)


def test_free_all_frees_every_buffer_before_raising():
    mem = HostMemory()
    pointers = [mem.malloc(16), 12345, mem.malloc(8)]
    with pytest.raises(KeyError):
        _free_all(mem, pointers)
    assert mem.blocks == {}


def test_context_manager_frees_device_memory(bundle_dir, images):
    backend, mem = host_backend(bundle_dir, rows=4, kernels=True)
    with backend as same:
        assert same is backend and same.fused_on_device
        assert same.logits(images).shape == (7, 10)
    assert mem.blocks == {} and mem.streams == set()


# --- real TensorRT engines (only with tensorrt and a GPU) ---------------------------------------------


@pytest.fixture(scope="module")
def trt_bundle(bundle_dir, tmp_path_factory) -> Path:
    """A private copy, so that the engines built into it do not leak into other tests' bundle."""
    import shutil

    folder = tmp_path_factory.mktemp("trt-engines") / "bundle"
    shutil.copytree(bundle_dir, folder)
    return folder


@needs_trt
def test_tensorrt_matches_onnxruntime(trt_bundle, ort, images):
    rng = np.random.default_rng(5)
    w = class_weights(rng.integers(0, 10, len(images)), rng.integers(0, 10, len(images)), 10)
    baseline = images[::-1].copy()
    target = rng.integers(0, 10, len(images))
    with TensorRTBackend(trt_bundle, chunk_size=4) as backend:
        assert backend.name == "tensorrt" and backend.supports_deeplift and backend.has_generator
        assert rel_err(backend.logits(images), ort.logits(images)) < 1e-4
        score, grad = backend.score_gradient(images, w)
        ref_score, ref_grad = ort.score_gradient(images, w)
        assert rel_err(score, ref_score) < 1e-4 and rel_err(grad, ref_grad) < 1e-4
        assert rel_err(backend.deeplift_multipliers(images, baseline, w),
                       ort.deeplift_multipliers(images, baseline, w)) < 1e-4
        assert rel_err(backend.generate(images, target), ort.generate(images, target)) < 1e-4


@needs_trt
def test_tensorrt_fused_integrated_gradients(trt_bundle, ort, images):
    rng = np.random.default_rng(6)
    w = class_weights(rng.integers(0, 10, len(images)), rng.integers(0, 10, len(images)), 10)
    baseline = np.clip(images + rng.normal(0, 0.2, images.shape), 0, 1).astype(np.float32)
    alphas, quadrature = path_rule("riemann_middle", 32)
    with TensorRTBackend(trt_bundle, chunk_size=4) as backend:
        got = backend.fused_integrated_gradients(images, baseline, w, alphas, quadrature)
    want = drivers.integrated_gradients(ort, images, w, baseline, n_steps=32)
    assert rel_err(got, want) < 1e-4


@needs_trt
def test_tensorrt_second_construction_loads_cached_engines(trt_bundle, images):
    with TensorRTBackend(trt_bundle, chunk_size=4) as first:
        paths = dict(first.engine_paths)
        logits = first.logits(images)
    assert set(paths) == set(ENGINE_ROLES) & set(read_bundle(trt_bundle).graphs)
    mtimes = {role: (p.stat().st_mtime_ns, sidecar_path(p).stat().st_mtime_ns) for role, p in paths.items()}
    with TensorRTBackend(trt_bundle, chunk_size=4, build=False) as second:
        assert second.built == {role: False for role in paths}
        assert np.array_equal(second.logits(images), logits)
    assert {role: (p.stat().st_mtime_ns, sidecar_path(p).stat().st_mtime_ns) for role, p in paths.items()} == mtimes
    for role, path in paths.items():
        side = read_sidecar(path)
        assert side["graph_role"] == role and side["chunk"] == 4
        assert side["graph_sha256"] == read_bundle(trt_bundle).manifest["files"][f"{role}.onnx"]["sha256"]
