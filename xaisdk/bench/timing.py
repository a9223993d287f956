"""Latency and throughput measurement: warm-up first, then percentiles over repeated calls."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["competing_process", "latency", "seconds_per_call"]


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


@contextlib.contextmanager
def competing_process() -> Iterator[None]:
    """Inside the block another process keeps one core busy (pure-Python arithmetic, started 0.5 s before).

    >>> with competing_process():
    ...     pass
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    worker = context.Process(target=_spin, args=(stop,), daemon=True)
    worker.start()
    try:
        time.sleep(0.5)
        yield
    finally:
        stop.set()
        worker.join(timeout=10)


def seconds_per_call(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after one warm-up call.

    >>> len(seconds_per_call(lambda: None, 3))
    3
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def latency(fn: Callable[[int], object], n_items: int, repeats: int) -> dict:
    """Per-call milliseconds of ``fn(i)`` over items ``i < n_items`` and ``repeats`` rounds (one
    warm-up call first): p50, p95, mean and the number of timed calls.

    >>> stats = latency(lambda i: None, 4, 2)
    >>> sorted(stats), stats["calls"]
    (['calls', 'mean_ms', 'p50_ms', 'p95_ms'], 8)
    """
    fn(0)
    times = []
    for _ in range(repeats):
        for i in range(n_items):
            start = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean()),
            "calls": len(times)}
