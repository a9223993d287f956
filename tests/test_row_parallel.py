"""Row-parallel bundle runs: a call's rows cut into one piece per thread, each piece run by a single-threaded
session of the bundle's checked graph bytes (xaisdk.runtime.row_parallel, OnnxRuntimeBackend(row_parallel=))."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
import torch

from xaisdk.deploy.export import export_bundle
from xaisdk.models import load_shipped_ganmex, shipped_ganmex_path
from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend
from xaisdk.runtime.row_parallel import RowPool, row_pieces

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("row_parallel")
    dynamic = export_bundle(shipped_ganmex_path("digits"), folder / "dynamic").path
    fixed = export_bundle(shipped_ganmex_path("digits"), folder / "fixed", batch=3).path
    return {"dynamic": dynamic, "fixed": fixed}


@pytest.fixture(scope="module")
def digits_net():
    return load_shipped_ganmex("digits").classifier.model.eval()


def _autograd(net, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xt = torch.from_numpy(x).double().requires_grad_(True)
    score = (copy.deepcopy(net).double()(xt) * torch.from_numpy(w).double()).sum(1)
    grad, = torch.autograd.grad(score.sum(), xt)
    return score.detach().numpy(), grad.numpy()


def _threads_used(backend: OnnxRuntimeBackend) -> list[int]:
    """Record the thread of every piece the backend runs (instrumentation around the real runs)."""
    seen: list[int] = []
    real = backend._run_rows

    def recording(*args, **kwargs):
        seen.append(threading.get_ident())
        return real(*args, **kwargs)

    backend._run_rows = recording
    return seen


@pytest.mark.parametrize("total,pieces", [(0, 2), (1, 2), (2, 2), (27, 2), (27, 4), (5, 16), (100, 7)])
def test_row_pieces_cover_every_row_once_in_order_with_even_sizes(total, pieces):
    got = row_pieces(total, pieces)
    assert [i for piece in got for i in piece] == list(range(total))
    assert len(got) == max(1, min(pieces, total))
    sizes = [len(piece) for piece in got]
    assert max(sizes) - min(sizes) <= 1 and (total == 0 or min(sizes) >= 1)


def test_the_pool_runs_pieces_on_separate_threads_and_reports_a_failure_after_all_finished():
    pool = RowPool(3)
    try:
        barrier = threading.Barrier(3, timeout=10)  # passes only if three jobs run at the same time

        def job(i):
            barrier.wait()
            return i, threading.get_ident()

        out = pool.map([lambda i=i: job(i) for i in range(3)])
        assert [i for i, _ in out] == [0, 1, 2] and len({ident for _, ident in out}) == 3
        finished = threading.Event()

        def slow():
            time.sleep(0.2)
            finished.set()

        def failing():
            raise ValueError("piece failed")

        with pytest.raises(ValueError, match="piece failed"):
            pool.map([failing, slow])
        assert finished.is_set()  # the caller got the error only once the other piece was done with its buffers
    finally:
        pool.close()


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_split_calls_match_float64_autograd_and_the_unsplit_backend(bundles, digits_net, kind):
    split = OnnxRuntimeBackend(bundles[kind], providers=CPU, intra_op_threads=2)
    whole = OnnxRuntimeBackend(bundles[kind], providers=CPU, intra_op_threads=2, row_parallel=False)
    assert split.row_threads == 2 and whole.row_threads == 1
    rng = np.random.default_rng(0)
    x = rng.random((11, 1, 28, 28), dtype=np.float32)
    w = rng.standard_normal((11, 10)).astype(np.float32)
    seen = _threads_used(split)
    score, grad = split.score_gradient(x, w)
    assert len(set(seen)) == 2  # the call really ran as two pieces on two threads
    want_score, want_grad = _autograd(digits_net, x, w)
    np.testing.assert_allclose(score, want_score, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max())
    np.testing.assert_allclose(grad, whole.score_gradient(x, w)[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(split.logits(x), whole.logits(x), rtol=1e-5, atol=1e-6)
    base = np.zeros_like(x)
    np.testing.assert_allclose(split.deeplift_multipliers(x, base, w), whole.deeplift_multipliers(x, base, w),
                               rtol=1e-5, atol=1e-7)
    seen.clear()
    split.score_gradient(x[:1], w[:1])
    assert len(seen) == 1  # one row: the multi-threaded session, in the caller's thread


def test_one_thread_or_false_never_splits(bundles):
    x = np.zeros((8, 1, 28, 28), np.float32)
    for backend in (OnnxRuntimeBackend(bundles["dynamic"], providers=CPU, intra_op_threads=1),
                    OnnxRuntimeBackend(bundles["dynamic"], providers=CPU, row_parallel=False)):
        seen = _threads_used(backend)
        backend.logits(x)
        assert seen == [threading.get_ident()] and backend._single_sessions == {}


def test_split_sessions_run_the_checked_bytes_not_the_file_on_disk(bundles, tmp_path):
    """A single-threaded session made after load (on a graph's first split call) must not read a file swapped
    on disk since: it is made from the bytes that were hashed and checked at load."""
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(bundles["dynamic"], folder)
    backend = OnnxRuntimeBackend(folder, providers=CPU, intra_op_threads=2, warmup=False)
    reference = OnnxRuntimeBackend(bundles["dynamic"], providers=CPU, row_parallel=False)
    assert not {"classifier", "deeplift_grad"} & set(backend._single_sessions)
    for name in ("classifier.onnx", "deeplift_grad.onnx"):
        (folder / name).write_bytes(b"not the graph that was checked")
    rng = np.random.default_rng(1)
    x, w = rng.random((6, 1, 28, 28), dtype=np.float32), np.eye(10, dtype=np.float32)[rng.integers(0, 10, 6)]
    np.testing.assert_allclose(backend.logits(x), reference.logits(x), rtol=1e-5, atol=1e-6)
    base = np.zeros_like(x)
    np.testing.assert_allclose(backend.deeplift_multipliers(x, base, w), reference.deeplift_multipliers(x, base, w),
                               rtol=1e-5, atol=1e-7)
    assert {"classifier", "deeplift_grad"} <= set(backend._single_sessions)
