"""The model behind ``xaisdk serve``: a bundle loaded in the background, warmed up, wrapped in the
cross-request batcher, and run request by request in worker threads with admission control (a
bounded number of requests in the house), per-request deadlines and cancellation.

>>> ServerConfig(bundle="bundle/").max_queue
64
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from xaisdk.errors import InputError
from xaisdk.limits import Limits
from xaisdk.runtime.backend import class_weights
from xaisdk.serve.batching import BatchingBackend, RequestAborted, RequestContext, request_context
from xaisdk.serve.observability import ServerMetrics

__all__ = ["ModelService", "Overloaded", "ServerConfig"]

_T = TypeVar("_T")
# benchmarks/results/serve_*.md: on a CPU the gradient graph costs the same per row from ~50 rows up
CPU_DIRECT_ROWS = 64


@dataclass
class ServerConfig:
    """Settings of one server (the ``xaisdk serve`` options)."""

    bundle: str | Path
    name: str | None = None
    max_batch: int = 512
    """Rows per merged backend call."""
    max_wait_ms: float = 2.0
    """How long the batcher waits for more rows after the first."""
    max_queue: int = 64
    """Requests admitted at once (running or waiting); more get 503 with Retry-After."""
    timeout_s: float = 30.0
    """Per-request deadline; past it the answer is 504 and the request's work stops."""
    threads: int | None = None
    """ONNX Runtime intra-op threads (default: its own choice, all cores)."""
    batching: bool = True
    batch_workers: int = 2
    direct_rows: int | None = None
    """Calls with this many rows or more skip the batcher (default: 64 on a CPU, where bigger calls cost
    the same per row, else ``max_batch``)."""
    """Merged backend calls that run at once (keep the cores busy; ONNX Runtime splits each call too)."""
    max_body_bytes: int = 16 * 2**20
    max_images: int = 16
    """Images per request."""
    max_steps: int = 1024
    """Cap on n_steps (IG path points); the other size-like options keep the Limits' defaults."""
    warmup: int = 1
    """Passes over every graph (logits, an IG chunk's gradient, DeepLIFT, generator) before the server reports ready."""

    def __post_init__(self) -> None:
        if self.direct_rows is not None and (not isinstance(self.direct_rows, int) or self.direct_rows < 1):
            raise InputError(f"direct_rows: expected an integer >= 1, got {self.direct_rows!r}")
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_images", "max_steps", "batch_workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name}: expected an integer >= 1, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise InputError(f"warmup: expected an integer >= 0, got {self.warmup!r}")
        if not (self.timeout_s > 0 and self.max_wait_ms >= 0):
            raise InputError("timeout_s must be > 0 and max_wait_ms >= 0")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"threads: expected an integer >= 1, got {self.threads!r}")
        self.bundle = Path(self.bundle)
        if self.name is None:
            self.name = self.bundle.resolve().name or "model"


class Overloaded(Exception):
    """The server holds ``max_queue`` requests already; the client should retry later."""


class ModelService:
    """Loads the bundle (in a background thread: :meth:`start`), then runs requests.

    ``ready`` is set once the Explainer is loaded and warmed up; ``load_error`` says why it never
    will be. :meth:`run` executes a function of the Explainer in a worker thread under the request's
    deadline, refusing it with :class:`Overloaded` when ``max_queue`` requests are already in.
    """

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.explainer: Any = None
        self._batching: BatchingBackend | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=config.max_queue,
                                                               thread_name_prefix="xaisdk-request")
        self._active = 0
        self._lock = threading.Lock()

    # --- loading ------------------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._load, name="xaisdk-load", daemon=True).start()

    def _load(self) -> None:
        try:
            from xaisdk.explainer import Explainer

            limits = Limits(n_steps=self.config.max_steps)
            loaded = Explainer.load(self.config.bundle, intra_op_threads=self.config.threads, limits=limits)
            self._batching = BatchingBackend(loaded.backend, max_batch=self.config.max_batch,
                                             max_wait_ms=self.config.max_wait_ms, enabled=self.config.batching,
                                             workers=self.config.batch_workers, callers=lambda: self._active,
                                             direct_rows=self._direct_rows(loaded.backend),
                                             on_batch=self.metrics.observe_batch)
            self.explainer = Explainer(self._batching, class_names=loaded.class_names, inpainter=loaded.inpainter,
                                       explaingan=loaded.explaingan, exaggeration=loaded.exaggeration, limits=limits)
            self._warm_up()
            self.ready.set()
        except Exception as err:  # reported by /v2/health/ready and every model route
            self.load_error = f"{type(err).__name__}: {err}"

    def _direct_rows(self, backend: Any) -> int:
        if self.config.direct_rows is not None:
            return self.config.direct_rows
        providers = getattr(backend, "providers", None)
        on_cpu = bool(providers) and providers[0] == "CPUExecutionProvider"
        return CPU_DIRECT_ROWS if on_cpu else self.config.max_batch

    def _warm_up(self) -> None:
        """Run every graph a request uses (logits, the gradient at an IG chunk's size, DeepLIFT, the
        generator) on seeded noise in the model's range: the primitives, not an explanation, which
        could be refused for its content (an all-zero map of a blank image, say)."""
        backend = self.explainer.backend
        low, high = backend.value_range
        rng = np.random.default_rng(0)
        for _ in range(self.config.warmup):
            x = (low + (high - low) * rng.random((1, *backend.input_shape))).astype(np.float32)
            source = backend.logits(x).argmax(1)
            weights = class_weights(source, (source + 1) % backend.num_classes, backend.num_classes)
            rows = np.repeat(x, 32, axis=0)
            backend.score_gradient(rows, np.repeat(weights, 32, axis=0))
            if backend.supports_deeplift:
                backend.deeplift_multipliers(x, np.zeros_like(x), weights)
            if backend.has_generator:
                backend.generate(x, (source + 1) % backend.num_classes)

    def close(self) -> None:
        """Wait for the requests in flight, then stop the batcher."""
        self._executor.shutdown(wait=True)
        if self._batching is not None:
            self._batching.close()

    # --- requests -----------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return self._active

    def _admit(self) -> None:
        with self._lock:
            if self._active >= self.config.max_queue:
                self.metrics.rejected.labels(reason="queue_full").inc()
                raise Overloaded(f"the server holds {self._active} requests (max_queue {self.config.max_queue})")
            self._active += 1
            self.metrics.queue_depth.set(self._active)

    def _finished(self, future: asyncio.Future) -> None:
        """A request's work ended: free its place, and take its outcome (an abandoned request's
        RequestAborted is expected, not an unretrieved error to log)."""
        self._release()
        if not future.cancelled():
            future.exception()

    def _release(self) -> None:
        with self._lock:
            self._active -= 1
            self.metrics.queue_depth.set(self._active)

    async def run(self, work: Callable[[Any], _T], disconnected: Callable[[], Any] | None = None) -> _T:
        """``work(explainer)`` in a worker thread; raises :class:`Overloaded`, :class:`RequestAborted`
        (``"deadline"`` after ``timeout_s``, ``"cancelled"`` when ``disconnected()`` turned true) or
        whatever ``work`` raised."""
        self._admit()
        context = RequestContext(deadline=time.monotonic() + self.config.timeout_s)

        def job() -> _T:
            with request_context(context):
                context.check()
                return work(self.explainer)

        try:
            future = asyncio.wrap_future(self._executor.submit(job))
        except RuntimeError:  # the executor is shutting down
            self._release()
            raise Overloaded("the server is shutting down") from None
        future.add_done_callback(self._finished)
        watcher = asyncio.ensure_future(_watch(disconnected)) if disconnected is not None else None
        try:
            waiting = {future} if watcher is None else {future, watcher}
            done, _ = await asyncio.wait(waiting, timeout=self.config.timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if future in done:
                return future.result()
            context.cancelled.set()
            if watcher is not None and watcher in done:
                self.metrics.rejected.labels(reason="client_gone").inc()
                raise RequestAborted("cancelled")
            self.metrics.rejected.labels(reason="deadline").inc()
            raise RequestAborted("deadline")
        finally:
            if watcher is not None:
                watcher.cancel()


async def _watch(disconnected: Callable[[], Any]) -> None:
    """Return once ``await disconnected()`` is true (polled every 50 ms)."""
    while not await disconnected():
        await asyncio.sleep(0.05)
