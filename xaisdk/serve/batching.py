"""Cross-request batching: a Backend proxy whose calls from many request threads share backend calls.

Every attribution method is a driver over the Backend primitives (``logits``, ``score_gradient``,
``deeplift_multipliers``, ``generate``), and each row carries its own class weights, so rows of
different requests (IG path points, occlusion windows, predict inputs) can go to the model in one
call. Request threads hand their rows to :class:`BatchingBackend`; each of ``workers`` dispatcher
threads takes the waiting calls of one primitive, up to ``max_batch`` rows or ``max_wait_ms`` after the
first arrived (no wait when no other request could add rows), runs the real backend once and hands
each caller its slice. Several workers keep every core busy while merged calls run.

Each request thread runs under a :class:`RequestContext` (deadline, cancellation); a call made
after the deadline, or after the client went away, raises :class:`RequestAborted` instead of using
the model, so an abandoned request stops at its next backend call. Imports numpy only.

>>> import numpy as np
>>> class Doubling:
...     name, input_shape, num_classes, value_range = "demo", (1, 1, 2), 2, (0.0, 1.0)
...     supports_deeplift = has_generator = False
...     def logits(self, x):
...         return 2 * x.reshape(len(x), -1)
>>> with BatchingBackend(Doubling(), max_batch=8, max_wait_ms=1) as backend:
...     backend.logits(np.ones((3, 1, 1, 2), np.float32)).tolist()
[[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaisdk.errors import InputError

__all__ = ["BatchingBackend", "RequestAborted", "RequestContext", "request_context"]

_PASSED_THROUGH = ("name", "input_shape", "num_classes", "value_range", "supports_deeplift", "has_generator",
                   "class_names", "deeplift_unavailable", "bundle", "preprocessing")


class RequestAborted(Exception):
    """A request's deadline passed or its client disconnected; ``reason`` is ``"deadline"`` or ``"cancelled"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"request {reason}")
        self.reason = reason


@dataclass
class RequestContext:
    """What the backend proxy checks before each call of a request: its deadline (``time.monotonic()``
    seconds, None for none) and whether it was cancelled."""

    deadline: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise RequestAborted("cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RequestAborted("deadline")


_current = threading.local()


@contextlib.contextmanager
def request_context(context: RequestContext) -> Iterator[RequestContext]:
    """Run the calls made by this thread inside the block under ``context``."""
    previous = getattr(_current, "context", None)
    _current.context = context
    try:
        yield context
    finally:
        _current.context = previous


def _check_current() -> None:
    context = getattr(_current, "context", None)
    if context is not None:
        context.check()


@dataclass
class _Call:
    primitive: str
    arrays: tuple[np.ndarray, ...]
    rows: int
    context: RequestContext | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[np.ndarray, ...] | None = None
    error: BaseException | None = None


class BatchingBackend:
    """A Backend whose primitive calls from concurrent threads are merged into shared backend calls.

    ``max_batch``: the most rows one merged call takes (a single larger call runs alone, whole);
    ``max_wait_ms``: how long the dispatcher waits for more calls after the first one arrived.
    ``workers`` merged calls run at once. A call of ``direct_rows`` rows or more (default: ``max_batch``)
    runs at once from its own thread, unmerged: on a CPU a 50-row gradient call already costs as much
    per row as an 800-row one, so big calls gain nothing from company and lose the wait.
    ``callers()``, if given, says how many requests are in the
    house, so the dispatcher does not wait for rows that cannot come. With ``enabled=False`` calls go
    straight to the backend from the caller's thread (no merging), still checked against the request's
    deadline: the unbatched server. ``on_batch(primitive, rows,
    calls)`` is told about every backend call (for metrics). Use as a context manager or call
    :meth:`close` to stop the dispatcher.
    """

    def __init__(self, backend: Any, *, max_batch: int = 512, max_wait_ms: float = 2.0, enabled: bool = True,
                 workers: int = 2, direct_rows: int | None = None, callers: Callable[[], int] | None = None,
                 on_batch: Callable[[str, int, int], None] | None = None) -> None:
        if int(max_batch) < 1:
            raise InputError(f"max_batch: expected an integer >= 1, got {max_batch!r}")
        if int(workers) < 1:
            raise InputError(f"workers: expected an integer >= 1, got {workers!r}")
        if not float(max_wait_ms) >= 0:
            raise InputError(f"max_wait_ms: expected a number >= 0, got {max_wait_ms!r}")
        self.backend = backend
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.enabled = bool(enabled)
        self.direct_rows = self.max_batch if direct_rows is None else int(direct_rows)
        self._on_batch = on_batch
        self._pending: deque[_Call] = deque()
        self._lock = threading.Condition()
        self._closed = False
        for name in _PASSED_THROUGH:
            if hasattr(backend, name):
                setattr(self, name, getattr(backend, name))
        self._callers = callers
        self._running = 0  # calls taken by a worker and not yet answered
        self._threads = [threading.Thread(target=self._dispatch, name=f"xaisdk-batcher-{i}", daemon=True)
                         for i in range(int(workers) if self.enabled else 0)]
        for thread in self._threads:
            thread.start()

    # --- the Backend protocol -----------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._call("logits", x)[0]

    def score_gradient(self, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, grad = self._call("score_gradient", x, weights)
        return score, grad

    def deeplift_multipliers(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self._call("deeplift_multipliers", x, baseline, weights)[0]

    def generate(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        return self._call("generate", x, target)[0]

    def fused_integrated_gradients(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray, alphas: np.ndarray,
                                   quadrature: np.ndarray) -> np.ndarray | None:
        """The backend's relu-path IG (all path points of the images in one call, CPU kernels whose work is per
        image), run from the caller's thread and unmerged, so a request gets the library's own numbers; None
        where the backend has no relu-path for its model, and the driver's path points then go through
        :meth:`score_gradient`, merged with other requests' rows. The request's deadline and cancellation are
        checked before every pass of the loop, not only before the call: one call can hold a whole long path."""
        if not getattr(self.backend, "uses_relu_path", False):
            return None
        _check_current()
        out = self.backend.fused_integrated_gradients(x, baseline, weights, alphas, quadrature, checkpoint=_check_current)
        if out is not None and self._on_batch is not None:
            self._on_batch("fused_integrated_gradients", len(x), 1)
        return out

    # --- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the dispatcher after the calls already queued have run."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> BatchingBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------
    def _run(self, primitive: str, arrays: tuple[np.ndarray, ...], calls: int) -> tuple[np.ndarray, ...]:
        out = getattr(self.backend, primitive)(*arrays)
        if self._on_batch is not None:
            self._on_batch(primitive, len(arrays[0]), calls)
        return out if isinstance(out, tuple) else (out,)

    def _call(self, primitive: str, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        _check_current()
        arrays = tuple(np.asarray(a) for a in arrays)
        if not self.enabled or len(arrays[0]) >= self.direct_rows:
            return self._run(primitive, arrays, 1)
        call = _Call(primitive, arrays, len(arrays[0]), getattr(_current, "context", None))
        with self._lock:
            if self._closed:
                raise RequestAborted("cancelled")
            self._pending.append(call)
            self._lock.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _take(self) -> list[_Call] | None:
        """The next group of calls of one primitive, waiting up to max_wait for more; None when closed."""
        with self._lock:
            while True:
                while not self._pending:
                    if self._closed:
                        return None
                    self._lock.wait()
                first = self._pending.popleft()
                if _still_wanted(first):
                    break
            group, rows = [first], first.rows
            waited_until = time.monotonic() + self.max_wait
            while rows < self.max_batch:
                match = next((c for c in self._pending if c.primitive == first.primitive
                              and rows + c.rows <= self.max_batch), None)
                if match is not None:
                    self._pending.remove(match)
                    if _still_wanted(match):
                        group.append(match)
                        rows += match.rows
                    continue
                remaining = waited_until - time.monotonic()
                if remaining <= 0 or self._closed or not self._more_may_come(len(group)):
                    break
                self._lock.wait(remaining)
            self._running += len(group)
            return group

    def _more_may_come(self, grouped: int) -> bool:
        """Whether waiting can bring more calls: with ``callers`` (the requests in the house), only if
        more of them exist than calls already grouped or running (one request makes one call at a time)."""
        return self._callers is None or self._callers() > grouped + self._running

    def _dispatch(self) -> None:
        while (group := self._take()) is not None:
            try:
                self._execute(group)
            finally:
                with self._lock:
                    self._running -= len(group)
                    self._lock.notify_all()

    def _execute(self, group: list[_Call]) -> None:
        primitive = group[0].primitive
        try:
            if len(group) == 1:
                results = [self._run(primitive, group[0].arrays, 1)]
            else:
                joined = tuple(np.concatenate([c.arrays[i] for c in group]) for i in range(len(group[0].arrays)))
                out = self._run(primitive, joined, len(group))
                bounds = np.cumsum([0] + [c.rows for c in group])
                results = [tuple(o[bounds[i]:bounds[i + 1]] for o in out) for i in range(len(group))]
        except Exception as err:
            if len(group) == 1:
                group[0].error = err
                group[0].done.set()
                return
            for call in group:  # one request's bad rows must not fail the others: run each alone
                self._execute([call])
            return
        for call, result in zip(group, results):
            call.result = result
            call.done.set()


def _still_wanted(call: _Call) -> bool:
    """False (and the caller told why) when the call's request expired or was cancelled while it waited."""
    if call.context is None:
        return True
    try:
        call.context.check()
    except RequestAborted as err:
        call.error = err
        call.done.set()
        return False
    return True
