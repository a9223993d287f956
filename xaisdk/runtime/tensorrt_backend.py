"""The TensorRT backend: an exported bundle's graphs compiled to TensorRT engines, on one GPU.

Needs TensorRT >= 10, cuda-python and an NVIDIA GPU (``pip install 'xaisdk[tensorrt]'``); all three
are imported only when a :class:`TensorRTBackend` is created, and a missing one raises
:class:`xaisdk.InputError` naming it. Engines are built once per GPU model, TensorRT version, graph
and chunk size, and cached inside the bundle folder (:mod:`xaisdk.runtime.engines`: FP32, TF32 off,
so the numbers match ONNX Runtime's). The bundle's classifier, gradient graph, DeepLIFT graph (when
exported) and GANMEX generator each get an engine, an execution context and one device buffer per
input/output sized for ``chunk_size`` rows; all work runs on one CUDA stream, and the
:class:`~xaisdk.runtime.backend.Backend` methods feed their rows through in chunks of at most
``chunk_size``.

:meth:`TensorRTBackend.fused_integrated_gradients` runs the whole Integrated Gradients loop on the
GPU: the ``xaisdk._ext_cuda`` kernels write each chunk's path points straight into the gradient
engine's input buffer (and the class-weight rows into its ``w`` buffer), the engine runs, and the
accumulate kernel adds its gradient output into a device accumulator; the only copy back to the
host is the finished attribution. Where ``xaisdk._ext_cuda`` is not built (no nvcc when xaisdk was
installed) the loop falls back to :func:`xaisdk.runtime.integrated_gradients_loop`: the path points
are made on the host by ``xaisdk._ext`` and copied to the GPU chunk by chunk, and the gradients come
back each chunk to be added up on the host (same numbers, more copies).

Usage (on a machine with TensorRT and a GPU)::

    with TensorRTBackend("bundle/", chunk_size=256) as backend:
        logits = backend.logits(images)                                # (N, num_classes)
        attr = backend.fused_integrated_gradients(images, baselines, weights, alphas, quadrature)
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime.arrays import as_float32
from xaisdk.runtime.bundle import Bundle, GraphSpec, read_bundle
from xaisdk.runtime.bundle_graphs import BundleGraphs
from xaisdk.runtime.engines import DEFAULT_WORKSPACE_BYTES, engine_cache_key, engine_for
from xaisdk.runtime.ig_loop import integrated_gradients_loop

__all__ = ["ENGINE_ROLES", "INSTALL_HINT", "CudaRuntime", "TensorRTBackend", "import_cudart", "row_shapes"]

INSTALL_HINT = "pip install 'xaisdk[tensorrt]'"
ENGINE_ROLES = ("classifier", "classifier_grad", "deeplift_grad", "generator_ganmex")
"""The bundle graphs that get an engine (the inpainter runs on ONNX Runtime, see xaisdk.runtime.onnx_inpainter)."""


def row_shapes(input_shape: Sequence[int], num_classes: int) -> dict[str, tuple[int, ...]]:
    """The shape of one row of every graph input/output name a bundle uses.

    >>> row_shapes((1, 28, 28), 10)["w"], row_shapes((1, 28, 28), 10)["score"]
    ((10,), ())
    """
    image = tuple(int(d) for d in input_shape)
    k = (int(num_classes),)
    return {"x": image, "baseline": image, "grad": image, "multipliers": image, "image": image,
            "w": k, "target": k, "logits": k, "score": (), "score_baseline": ()}


def import_cudart() -> Any | None:
    """cuda-python's CUDA runtime module, or None when cuda-python is not installed.

    >>> import_cudart() is None or hasattr(import_cudart(), "cudaMalloc")
    True
    """
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 (the only layout in 13)
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


def _error_text(cudart: Any, err: Any) -> str:
    def text(result: Any) -> str:
        value = result[1] if isinstance(result, tuple) and len(result) > 1 else result
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    try:
        return f"{text(cudart.cudaGetErrorName(err))} ({text(cudart.cudaGetErrorString(err))})"
    except Exception:  # the error lookup itself failing must not hide the original error
        return f"CUDA error {int(err)}"


class CudaRuntime:
    """The CUDA runtime calls the backend makes, through cuda-python, each checked: cuda-python
    returns ``(err, value...)`` tuples, and an error here raises RuntimeError naming the call and
    the CUDA error. Pointers and streams are plain ints.

    >>> cudart = import_cudart()
    >>> cudart is None or isinstance(CudaRuntime(cudart).device_count(), tuple)
    True
    """

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def _call(self, what: str, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA {what} failed: {_error_text(self.rt, err)}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    def device_count(self) -> tuple[int, str | None]:
        """(number of GPUs, None), or (0, why) when the runtime cannot see any (no driver, too old a driver)."""
        err, count = self.rt.cudaGetDeviceCount()
        if int(err) != 0:
            return 0, f"cudaGetDeviceCount: {_error_text(self.rt, err)}"
        return int(count), None

    def set_device(self, device: int) -> None:
        self._call(f"cudaSetDevice({device})", self.rt.cudaSetDevice(int(device)))

    def device_properties(self, device: int) -> tuple[str, str]:
        """The GPU's name and compute capability ``"major.minor"``."""
        prop = self._call(f"cudaGetDeviceProperties({device})", self.rt.cudaGetDeviceProperties(int(device)))
        name = prop.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return str(name).strip(), f"{int(prop.major)}.{int(prop.minor)}"

    def malloc(self, nbytes: int) -> int:
        # At least one float, so that a zero-size request still yields a distinct, freeable pointer.
        return int(self._call(f"cudaMalloc({nbytes})", self.rt.cudaMalloc(max(int(nbytes), 4))))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", self.rt.cudaFree(int(ptr)))

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        self._call("cudaMemsetAsync", self.rt.cudaMemsetAsync(int(ptr), 0, int(nbytes), int(stream)))

    def h2d(self, ptr: int, array: np.ndarray, stream: int) -> None:
        """Copy the C-contiguous ``array`` to device memory at ``ptr``."""
        if not array.flags.c_contiguous:
            raise ValueError("h2d: the host array must be C-contiguous")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync (host to device)",
                   self.rt.cudaMemcpyAsync(int(ptr), array.ctypes.data, array.nbytes, kind, int(stream)))

    def d2h(self, array: np.ndarray, ptr: int, stream: int) -> None:
        """Copy ``array.nbytes`` bytes from device memory at ``ptr`` into the C-contiguous ``array``."""
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError("d2h: the host array must be C-contiguous and writeable")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync (device to host)",
                   self.rt.cudaMemcpyAsync(array.ctypes.data, int(ptr), array.nbytes, kind, int(stream)))

    def create_stream(self) -> int:
        return int(self._call("cudaStreamCreate", self.rt.cudaStreamCreate()))

    def destroy_stream(self, stream: int) -> None:
        self._call("cudaStreamDestroy", self.rt.cudaStreamDestroy(int(stream)))

    def synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(int(stream)))


class _Runner(Protocol):
    """One graph ready to run on the device: a buffer per input/output (``address``) for ``rows`` rows."""

    rows: int
    address: dict[str, int]

    def run(self, used: int) -> None:
        """Enqueue the graph on the backend's stream for the first ``used`` rows of the buffers."""
        ...

    def close(self) -> None:
        ...


def _device_kernels() -> Any | None:
    """``xaisdk._ext_cuda`` when it is built and sees a GPU, else None (the host fallback runs)."""
    try:
        from xaisdk import _ext_cuda
    except ImportError:
        return None
    try:
        return _ext_cuda if _ext_cuda.device_count() > 0 else None
    except Exception:  # a broken driver reads as "no kernels": the host path still works
        return None


class _DeviceBackend(BundleGraphs):
    """The Backend over graphs that run on device buffers: chunking, copies, the fused IG loop and
    cleanup. :class:`TensorRTBackend` gives it TensorRT engines; it takes anything with the
    :class:`_Runner` and :class:`CudaRuntime` methods."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, rows: int, cuda: CudaRuntime, stream: int, runners: Mapping[str, _Runner],
                 kernels: Any | None, device: int = 0) -> None:
        self.bundle = bundle
        self.input_shape = bundle.input_shape
        self.num_classes = bundle.num_classes
        self.value_range = bundle.value_range
        self.class_names = bundle.class_names
        self.preprocessing = bundle.preprocessing
        self.rows = int(rows)
        self.device = int(device)
        self._cuda = cuda
        self._stream = stream
        self._runners = dict(runners)
        self._kernels = kernels
        self._rows = row_shapes(self.input_shape, self.num_classes)
        self.supports_deeplift = "deeplift_grad" in self._runners
        self.deeplift_unavailable = None if self.supports_deeplift else bundle.deeplift_unavailable
        self.has_generator = "generator_ganmex" in self._runners
        self._lock = threading.Lock()
        self._closed = False

    @property
    def fused_on_device(self) -> bool:
        """Whether :meth:`fused_integrated_gradients` runs on the GPU (``xaisdk._ext_cuda`` built)."""
        return self._kernels is not None

    # --- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Free every device buffer, the engines and the stream; safe to call twice. Later calls raise."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        with self._lock:
            try:
                self._cuda.synchronize(self._stream)
            except Exception:  # a failed earlier launch: free what we can anyway
                pass
            for runner in self._runners.values():
                try:
                    runner.close()
                except Exception:
                    pass
            self._runners = {}
            try:
                self._cuda.destroy_stream(self._stream)
            except Exception:
                pass
            self._release()

    def _release(self) -> None:
        """Drop what a subclass holds beyond the runners (called by :meth:`close`)."""

    def __enter__(self) -> _DeviceBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise InputError("this TensorRT backend is closed")

    # --- chunked runs -----------------------------------------------------------------------------

    def _run(self, role: str, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Run ``role`` over the rows of ``feeds`` in chunks of ``self.rows``: copy a chunk in, run,
        copy the outputs straight into the result arrays."""
        self._check_open()
        runner = self._runners[role]
        total = len(next(iter(feeds.values())))
        results = {name: np.empty((total, *self._rows[name]), np.float32) for name in outputs}
        with self._lock:
            self._check_open()
            self._cuda.set_device(self.device)
            for start in range(0, total, self.rows):
                used = min(self.rows, total - start)
                # The chunk copies are kept alive until the stream has consumed them.
                chunk = {k: np.ascontiguousarray(v[start:start + used], dtype=np.float32) for k, v in feeds.items()}
                for name, values in chunk.items():
                    self._cuda.h2d(runner.address[name], values, self._stream)
                runner.run(used)
                for name in outputs:
                    self._cuda.d2h(results[name][start:start + used], runner.address[name], self._stream)
                self._cuda.synchronize(self._stream)
        return [results[name] for name in outputs]

    # --- fused Integrated Gradients ----------------------------------------------------------------

    def fused_integrated_gradients(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray, alphas: np.ndarray,
                                   quadrature: np.ndarray) -> np.ndarray:
        """Integrated Gradients ``(x - b) * sum_s quadrature[s] * dScore/dx(b + alphas[s] (x - b))``
        with ``Score_n = sum_k weights[n, k] logits[n, k]``, float32 shaped like ``x``; on the GPU
        when ``xaisdk._ext_cuda`` is built (see the module docstring), else by the host loop."""
        self._check_open()
        xs = self._check(as_float32(x, "x"))
        base = as_float32(baseline, "baseline")
        try:
            base = np.ascontiguousarray(np.broadcast_to(base, xs.shape))
        except ValueError:
            raise InputError(f"baseline: expected the shape of x {xs.shape} (or one that broadcasts to it), "
                             f"got {base.shape}") from None
        w = self._weights(as_float32(weights, "weights"), len(xs))
        a32, q32 = as_float32(alphas, "alphas"), as_float32(quadrature, "quadrature")
        if a32.ndim != 1 or q32.ndim != 1 or a32.size == 0 or a32.shape != q32.shape:
            raise InputError(f"alphas and quadrature: expected two 1-D arrays of the same non-zero length, got shapes "
                             f"{a32.shape} and {q32.shape}")
        if len(xs) == 0:
            return np.zeros_like(xs)
        if self._kernels is None:
            def grad_fn(batch: np.ndarray, sample: np.ndarray) -> np.ndarray:
                return self.score_gradient(batch, w[sample])[1]

            return integrated_gradients_loop(grad_fn, xs, base, a32, q32, chunk_size=self.rows, pass_sample_index=True)
        return self._fused_on_device(xs, base, w, a32, q32)

    def _fused_on_device(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray, alphas: np.ndarray,
                         quadrature: np.ndarray) -> np.ndarray:
        n, s, k = len(x), len(alphas), self.num_classes
        d = math.prod(self.input_shape)
        host = {"x": np.ascontiguousarray(x.reshape(n, d)), "baseline": np.ascontiguousarray(baseline.reshape(n, d)),
                "weights": np.ascontiguousarray(weights), "alphas": np.ascontiguousarray(alphas),
                "quadrature": np.ascontiguousarray(quadrature)}
        out = np.empty((n, d), np.float32)
        runner = self._runners["classifier_grad"]
        kern, cuda, stream = self._kernels, self._cuda, self._stream
        dev: dict[str, int] = {}
        with self._lock:
            self._check_open()
            cuda.set_device(self.device)
            try:
                for name, array in host.items():
                    dev[name] = cuda.malloc(array.nbytes)
                    cuda.h2d(dev[name], array, stream)
                dev["acc"] = cuda.malloc(out.nbytes)
                cuda.memset(dev["acc"], out.nbytes, stream)
                total = n * s
                for start in range(0, total, self.rows):
                    used = min(self.rows, total - start)
                    kern.ig_fill_chunk(dev["x"], dev["baseline"], dev["alphas"], n, d, s, start, used,
                                       runner.address["x"], stream)
                    # Row k's class weights are weights[n] for its sample n: the fill kernel with x = baseline
                    # = weights writes weights[n] + alpha * 0 = weights[n] exactly, with no extra kernel.
                    kern.ig_fill_chunk(dev["weights"], dev["weights"], dev["alphas"], n, k, s, start, used,
                                       runner.address["w"], stream)
                    runner.run(used)
                    kern.ig_accumulate_chunk(runner.address["grad"], dev["quadrature"], n, d, s, start, used, dev["acc"],
                                             stream)
                kern.ig_finalize(dev["acc"], dev["x"], dev["baseline"], n, d, stream)
                cuda.d2h(out, dev["acc"], stream)
                cuda.synchronize(stream)
            except BaseException:
                try:
                    cuda.synchronize(stream)  # queued work must finish before its memory is freed
                except Exception:
                    pass
                raise
            finally:
                _free_all(cuda, list(dev.values()))
        if not np.isfinite(out).all():
            raise RuntimeError("the TensorRT gradient engine returned NaN or infinite gradients")
        return out.reshape(x.shape)


class _EngineRunner:
    """A deserialized TensorRT engine, its execution context and one device buffer per I/O tensor,
    sized for ``rows`` rows and bound to the context once."""

    def __init__(self, trt: Any, runtime: Any, plan: bytes, spec: GraphSpec, shapes: Mapping[str, tuple[int, ...]],
                 rows: int, cuda: CudaRuntime, stream: int, where: Path) -> None:
        self.rows = int(rows)
        self.address: dict[str, int] = {}
        self._cuda, self._stream, self._where = cuda, stream, where
        self._context = None
        self._engine = runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise _UnloadablePlan(f"{where}: TensorRT cannot load this engine; delete it (and its .json) to rebuild it")
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.outputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        if set(self.inputs) != set(spec.inputs) or set(self.outputs) != set(spec.outputs):
            raise InputError(f"{where}: engine I/O {(self.inputs, self.outputs)} differs from the manifest "
                             f"{(spec.inputs, spec.outputs)}")
        for name in names:
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise InputError(f"{where}: tensor {name!r} is {engine.get_tensor_dtype(name)}, expected float32")
        self._shapes = {name: shapes[name] for name in names}
        self.dynamic = False
        for name in self.inputs:
            dims = tuple(int(v) for v in engine.get_tensor_shape(name))
            want = (self.rows, *self._shapes[name])
            if len(dims) != len(want) or any(g >= 0 and g != w for g, w in zip(dims, want)):
                raise InputError(f"{where}: input {name!r} is {dims} in the engine (-1: dynamic), the bundle needs {want}")
            self.dynamic = self.dynamic or any(g < 0 for g in dims)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"{where}: TensorRT could not create an execution context (out of GPU memory?)")
        try:
            self._current = -1
            self._set_rows(self.rows)
            for name in self.outputs:
                got = tuple(int(v) for v in self._context.get_tensor_shape(name))
                if got != (self.rows, *self._shapes[name]):
                    raise InputError(f"{where}: output {name!r} is {got} for {self.rows} rows, the bundle needs "
                                     f"{(self.rows, *self._shapes[name])}")
            for name in names:
                nbytes = 4 * self.rows * math.prod(self._shapes[name])
                self.address[name] = cuda.malloc(nbytes)
                cuda.memset(self.address[name], nbytes, stream)  # rows past a short chunk stay finite
                if not self._context.set_tensor_address(name, self.address[name]):
                    raise RuntimeError(f"{where}: TensorRT refused the device buffer of {name!r}")
        except BaseException:
            self.close()
            raise

    def _set_rows(self, rows: int) -> None:
        for name in self.inputs:
            if not self._context.set_input_shape(name, (rows, *self._shapes[name])):
                raise RuntimeError(f"{self._where}: TensorRT refused the input shape {(rows, *self._shapes[name])} "
                                   f"of {name!r}")
        self._current = rows

    def run(self, used: int) -> None:
        rows = used if self.dynamic else self.rows  # a fixed-batch engine always runs all rows
        if rows != self._current:
            self._set_rows(rows)
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError(f"{self._where}: TensorRT failed to enqueue the engine (see TensorRT's log)")

    def close(self) -> None:
        self._context = None  # contexts go before their engine, and both before their memory
        self._engine = None
        addresses, self.address = list(self.address.values()), {}
        _free_all(self._cuda, addresses)


class _UnloadablePlan(InputError):
    """TensorRT refused a plan (a cached one may have been built by an incompatible setup)."""


def _free_all(cuda: CudaRuntime, pointers: Sequence[int]) -> None:
    """Free every pointer, even when one cudaFree fails; then raise the first failure."""
    first: Exception | None = None
    for ptr in pointers:
        try:
            cuda.free(ptr)
        except Exception as err:
            first = first or err
    if first is not None:
        raise first


def _load_runtime(device: int) -> tuple[Any, CudaRuntime]:
    """TensorRT and cuda-python, checked together, with a GPU numbered ``device``; InputError lists
    everything that is missing and how to install it."""
    problems = []
    try:
        import tensorrt as trt
    except ImportError as err:
        trt = None
        problems.append(f"tensorrt is not importable ({err})")
    if trt is not None:
        major = str(getattr(trt, "__version__", "0")).split(".")[0]
        if not major.isdigit() or int(major) < 10:
            problems.append(f"TensorRT {getattr(trt, '__version__', '?')} is too old (need >= 10)")
    cudart = import_cudart()
    cuda = None
    if cudart is None:
        problems.append("cuda-python is not importable")
    else:
        cuda = CudaRuntime(cudart)
        count, why = cuda.device_count()
        if why is not None:
            problems.append(f"no usable CUDA GPU ({why}; the NVIDIA driver must support the CUDA version of the "
                            "installed cuda-python, e.g. 'cuda-python<13' for a CUDA 12 driver)")
        elif count == 0:
            problems.append("no CUDA GPU")
        elif device >= count:
            raise InputError(f"device: {device} is out of range, this machine has {count} CUDA GPU(s) (0..{count - 1})")
    if problems:
        raise InputError("the TensorRT backend needs TensorRT >= 10, cuda-python and an NVIDIA GPU: "
                         + "; ".join(problems) + f". Install the packages with {INSTALL_HINT} on a machine with an "
                         "NVIDIA GPU and driver (or use the onnxruntime backend)")
    assert cuda is not None
    return trt, cuda


class TensorRTBackend(_DeviceBackend):
    """The :class:`~xaisdk.runtime.backend.Backend` of an exported bundle, run by TensorRT on one GPU.

    Args:
        bundle: a bundle folder (``xaisdk export --out``) or a :class:`~xaisdk.runtime.bundle.Bundle`.
        chunk_size: rows per engine run: the engines are built for batches 1..chunk_size (bundles
            exported with a fixed batch use that batch instead, padding short chunks).
        device: the CUDA device number.
        build: build (and cache in ``bundle/engines/``) engines that are missing or were made for
            another GPU, TensorRT version or graph; with False such an engine raises InputError.

    Usage (on a machine with TensorRT and a GPU)::

        backend = TensorRTBackend("bundle/", chunk_size=256)
        backend.logits(np.zeros((1, *backend.input_shape), np.float32)).shape
        backend.close()  # or use it as a context manager

    Arguments are checked before TensorRT is imported:

    >>> TensorRTBackend("bundle/", chunk_size=0)
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: chunk_size: expected a positive integer, got 0
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, *, chunk_size: int = 256, device: int = 0,
                 build: bool = True) -> None:
        self._closed = True  # until fully built, so that __del__ of a half-made backend frees nothing twice
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise InputError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
        if isinstance(device, bool) or not isinstance(device, (int, np.integer)) or device < 0:
            raise InputError(f"device: expected a CUDA device number >= 0, got {device!r}")
        if not isinstance(build, bool):
            raise InputError(f"build: expected True or False, got {build!r}")
        bundle = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
        trt, cuda = _load_runtime(int(device))
        cuda.set_device(int(device))
        self.gpu_name, self.compute_capability = cuda.device_properties(int(device))
        self.trt_version = str(trt.__version__)
        rows = bundle.batch or int(chunk_size)
        shapes = row_shapes(bundle.input_shape, bundle.num_classes)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        stream = cuda.create_stream()
        runners: dict[str, _EngineRunner] = {}
        self.engine_paths: dict[str, Path] = {}
        self.built: dict[str, bool] = {}
        try:
            for role in ENGINE_ROLES:
                spec = bundle.graphs.get(role)
                if spec is None:
                    continue
                sha = spec.sha256  # of spec.data, the bytes read_bundle verified and scanned
                key = engine_cache_key(self.gpu_name, self.compute_capability, self.trt_version, sha, rows)
                inputs = {n: shapes[n] for n in spec.inputs}
                options = dict(fixed_batch=bundle.batch is not None, workspace_bytes=DEFAULT_WORKSPACE_BYTES)
                plan, path, built = engine_for(bundle.path, role, spec.data, inputs, key, build=build, **options)
                try:
                    runners[role] = _EngineRunner(trt, runtime, plan, spec, shapes, rows, cuda, stream, path)
                except _UnloadablePlan:
                    if built or not build:
                        raise
                    plan, path, built = engine_for(bundle.path, role, spec.data, inputs, key, rebuild=True, **options)
                    runners[role] = _EngineRunner(trt, runtime, plan, spec, shapes, rows, cuda, stream, path)
                self.engine_paths[role], self.built[role] = path, built
        except BaseException:
            for runner in runners.values():
                runner.close()
            cuda.destroy_stream(stream)
            raise
        self._trt = (logger, runtime)  # the runtime must outlive the engines it deserialized
        super().__init__(bundle, rows, cuda, stream, runners, _device_kernels(), int(device))
        self.chunk_size = rows

    def _release(self) -> None:
        self._trt = None

