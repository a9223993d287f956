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
from xaisdk.serve.batching import BatchingBackend, RequestAborted, RequestContext, request_context
from xaisdk.serve.observability import ServerMetrics

__all__ = ["ModelService", "Overloaded", "ServerConfig"]

_T = TypeVar("_T")


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
    max_body_bytes: int = 16 * 2**20
    max_images: int = 16
    """Images per request."""
    max_steps: int = 1024
    """Cap on n_steps (IG path points) and the other size-like options' defaults are the Limits'."""
    warmup: int = 1
    """Explanations run on a blank image before the server reports ready."""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_images", "max_steps"):
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
                                             on_batch=self.metrics.observe_batch)
            self.explainer = Explainer(self._batching, class_names=loaded.class_names, inpainter=loaded.inpainter,
                                       explaingan=loaded.explaingan, exaggeration=loaded.exaggeration, limits=limits)
            self._warm_up()
            self.ready.set()
        except Exception as err:  # reported by /v2/health/ready and every model route
            self.load_error = f"{type(err).__name__}: {err}"

    def _warm_up(self) -> None:
        blank = np.zeros(self.explainer.backend.input_shape, np.float32)
        baseline = "ganmex" if self.explainer.backend.has_generator else "zero"
        for _ in range(self.config.warmup):
            self.explainer.explain(blank, target="runner-up", method="ig", baseline=baseline, n_steps=32)

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
        future.add_done_callback(lambda _: self._release())
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
