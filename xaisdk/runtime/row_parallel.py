"""Coarse-grained CPU parallelism for graph runs: a call's rows split into one contiguous piece per
core, each piece run by a single-threaded session on its own thread.

ONNX Runtime's own intra-op threads meet at a barrier after every operator, several hundred times per
gradient-graph run; a piece per core meets once per call. On 2 cores, IG over 27-row calls ran 1.13x
(ResNet-18) to 1.30x (MobileNetV3-small, RegNetY-400MF) faster than with one two-threaded session
(``benchmarks/results/bundle_cpu_2026-12-03_rows.md``), and nothing spins or waits at a barrier while
another process takes a core. Imports numpy only.

>>> [(piece.start, piece.stop) for piece in row_pieces(27, 2)]
[(0, 14), (14, 27)]
>>> row_pieces(1, 4)
[range(0, 1)]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["RowPool", "row_pieces", "usable_cores"]

_T = TypeVar("_T")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown).

    >>> usable_cores() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def row_pieces(total: int, pieces: int) -> list[range]:
    """``range(total)`` cut into at most ``pieces`` contiguous, non-empty pieces whose sizes differ by at most one."""
    count = max(1, min(int(pieces), int(total)))
    size, extra = divmod(int(total), count)
    out, start = [], 0
    for i in range(count):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


class RowPool:
    """Runs a list of jobs, one per piece, on ``threads`` threads: the caller's and ``threads - 1`` pool threads.

    Jobs must release the GIL for the pieces to overlap (``InferenceSession.run`` does). The first
    exception raised by a job is raised to the caller after every job has finished, so no piece is
    still running on a buffer the caller goes on to use.

    >>> pool = RowPool(2)
    >>> pool.map([lambda: 1, lambda: 2, lambda: 3])
    [1, 2, 3]
    >>> pool.close()
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, jobs: list[Callable[[], _T]]) -> list[_T]:
        """Each job's result, in order."""
        if len(jobs) <= 1 or self.threads == 1:
            return [job() for job in jobs]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="xaisdk-rows")
            pool = self._pool
        futures = [pool.submit(job) for job in jobs[1:]]
        first_error: BaseException | None = None
        results: list = []
        try:
            results.append(jobs[0]())
        except BaseException as err:  # noqa: BLE001 - re-raised below, once the pool's pieces are done
            first_error = err
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as err:  # noqa: BLE001
                first_error = first_error or err
        if first_error is not None:
            raise first_error
        return results

    def close(self) -> None:
        """Stop the pool's threads (the next :meth:`map` starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
