"""xaisdk._ext.nearest_l2 (the MDTS nearest-neighbour kernel) against a float64 numpy brute force,
and nearest_by_l2 / MDTS on top of it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from xaisdk.baselines import MDTS, data_driven, nearest_by_l2
from xaisdk.errors import InputError


def isas() -> list[str]:
    """The micro-kernels this CPU runs (for parametrizing); "auto" when the extension is not built,
    so that the `ext` fixture reports the missing build."""
    try:
        from xaisdk import _ext
    except ImportError:
        return ["auto"]
    return _ext.nearest_l2_isas()


def exact_distances(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(Q, R) squared distances in float64, summed from the differences (no norm expansion)."""
    q, r = q.astype(np.float64), r.astype(np.float64)
    return ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)


def assert_nearest(q, r, index, distance, rtol=1e-5):
    """index is a true minimum up to float32 rounding, and distance is its distance up to the same."""
    exact = exact_distances(q, r)
    rows = np.arange(len(q))
    assert index.dtype == np.int64 and distance.dtype == np.float32
    assert index.shape == distance.shape == (len(q),)
    assert ((index >= 0) & (index < len(r))).all()
    # float32 products lose ~eps * (||q||^2 + ||r||^2) in the expanded distance.
    scale = (q.astype(np.float64) ** 2).sum(1) + (r.astype(np.float64) ** 2).sum(1).max() + 1e-6
    np.testing.assert_array_less(exact[rows, index] - exact.min(1), rtol * scale)
    np.testing.assert_array_less(np.abs(distance - exact[rows, index]), rtol * scale)
    assert (distance >= 0).all()


SHAPES = [
    (1, 1, 1),  # everything one
    (4, 1, 9),  # R = 1
    (9, 13, 1),  # D = 1
    (5, 40, 33),  # Q below every micro-tile height and block
    (37, 101, 300),  # D past one feature block (256), nothing a multiple of a tile
    (131, 97, 257),  # Q past the default query block (120), D one past a feature block
    (3, 5003, 300),  # few queries, many references: panels split between threads
]


@pytest.mark.parametrize("shape", SHAPES)
def test_nearest_equals_float64_brute_force_on_every_isa(ext, shape):
    q_n, r_n, d = shape
    rng = np.random.default_rng(q_n * 7919 + r_n * 31 + d)
    q = rng.random((q_n, d), dtype=np.float32)
    r = rng.random((r_n, d), dtype=np.float32)
    for isa in ext.nearest_l2_isas():
        index, distance = ext.nearest_l2(q, r, isa=isa)
        assert_nearest(q, r, index, distance)


@pytest.mark.parametrize("isa", isas())
def test_well_separated_data_gives_exactly_the_brute_force_index(ext, isa):
    rng = np.random.default_rng(5)
    r = rng.random((203, 130), dtype=np.float32)
    pick = rng.integers(0, 203, 61)
    q = r[pick] + rng.normal(0, 0.01, (61, 130)).astype(np.float32)
    index, distance = ext.nearest_l2(q, r, 7, 19, isa)
    np.testing.assert_array_equal(index, exact_distances(q, r).argmin(1))
    np.testing.assert_array_equal(index, pick)
    assert_nearest(q, r, index, distance)  # distances near 0 carry the rounding of the ~43 squared norms


@pytest.mark.parametrize("isa", isas())
def test_block_sizes_do_not_change_the_answer(ext, isa):
    rng = np.random.default_rng(2)
    q = rng.random((53, 270), dtype=np.float32)
    r = rng.random((211, 270), dtype=np.float32)
    index, distance = ext.nearest_l2(q, r, 120, 4096, isa)
    for block_q, block_r in [(1, 1), (2, 3), (13, 17), (53, 211), (1000, 100000)]:
        i, d = ext.nearest_l2(q, r, block_q, block_r, isa)
        np.testing.assert_array_equal(i, index)
        np.testing.assert_array_equal(d, distance)


@pytest.mark.parametrize("isa", isas())
def test_ties_go_to_the_lowest_reference_index(ext, isa):
    rng = np.random.default_rng(3)
    r = rng.random((300, 40), dtype=np.float32)
    r[150] = r[37]  # same values, hence the same float32 distance to any query
    r[299] = r[37]
    q = r[[37, 37]] + np.float32(0.001) * rng.random((2, 40), dtype=np.float32)
    for block_q, block_r in [(120, 4096), (1, 16), (1, 1)]:
        index, _ = ext.nearest_l2(q, r, block_q, block_r, isa)
        np.testing.assert_array_equal(index, [37, 37])


@pytest.mark.parametrize("isa", isas())
def test_distances_are_clamped_at_zero(ext, isa):
    # Large norms with tiny differences: ||q||^2 + ||r||^2 - 2 q.r cancels and can round below 0.
    rng = np.random.default_rng(4)
    r = (1000 + rng.random((64, 100))).astype(np.float32)
    index, distance = ext.nearest_l2(r.copy(), r, isa=isa)
    assert (distance >= 0).all()
    assert_nearest(r, r, index, distance)


def test_thread_count_does_not_change_the_answer(ext, tmp_path):
    # Large enough for the parallel path, with query blocks and reference panels split between threads.
    rng = np.random.default_rng(8)
    q = rng.random((150, 100), dtype=np.float32)
    r = rng.random((400, 100), dtype=np.float32)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "r.npy", r)
    script = (
        "import numpy as np, sys; from xaisdk import _ext; d = sys.argv[1]; "
        "i, dist = _ext.nearest_l2(np.load(d + '/q.npy'), np.load(d + '/r.npy'), 120, 64); "
        "np.save(d + '/i.npy', i); np.save(d + '/d.npy', dist)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env)
    index, distance = ext.nearest_l2(q, r, 120, 64)
    np.testing.assert_array_equal(np.load(tmp_path / "i.npy"), index)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), distance)


def test_no_queries_gives_empty_results(ext):
    index, distance = ext.nearest_l2(np.zeros((0, 5), np.float32), np.ones((3, 5), np.float32))
    assert index.shape == distance.shape == (0,)


def test_bad_arguments_are_refused(ext):
    q = np.ones((4, 6), np.float32)
    r = np.ones((5, 6), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        ext.nearest_l2(np.ones((4, 12), np.float32)[:, ::2], r)
    with pytest.raises(ValueError, match="C-contiguous"):
        ext.nearest_l2(q, np.ones((5, 12), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="float32"):
        ext.nearest_l2(q.astype(np.float64), r)
    with pytest.raises(ValueError, match="float32"):
        ext.nearest_l2(q, r.astype(np.float16))
    with pytest.raises(ValueError, match="2 dimensions"):
        ext.nearest_l2(q[0], r)
    with pytest.raises(ValueError, match="2 dimensions"):
        ext.nearest_l2(q, r[None])
    with pytest.raises(ValueError, match="number of features"):
        ext.nearest_l2(q, np.ones((5, 7), np.float32))
    with pytest.raises(ValueError, match="empty"):
        ext.nearest_l2(q, np.ones((0, 6), np.float32))
    with pytest.raises(ValueError, match="D = 0"):
        ext.nearest_l2(np.ones((4, 0), np.float32), np.ones((5, 0), np.float32))
    with pytest.raises(ValueError, match="block_q and block_r"):
        ext.nearest_l2(q, r, 0, 16)
    with pytest.raises(ValueError, match="block_q and block_r"):
        ext.nearest_l2(q, r, 16, -1)
    with pytest.raises(ValueError, match="isa must be"):
        ext.nearest_l2(q, r, isa="sse9")


def test_nan_infinity_and_overflowing_values_are_refused(ext):
    q = np.ones((4, 6), np.float32)
    r = np.ones((5, 6), np.float32)
    bad_q = q.copy()
    bad_q[2, 3] = np.nan
    with pytest.raises(ValueError, match="queries contain NaN or infinity"):
        ext.nearest_l2(bad_q, r)
    bad_r = r.copy()
    bad_r[4, 0] = -np.inf
    with pytest.raises(ValueError, match="refs contain NaN or infinity"):
        ext.nearest_l2(q, bad_r)
    with pytest.raises(ValueError, match="overflow"):
        ext.nearest_l2(q, np.full((5, 6), 1e19, np.float32))


def test_nearest_by_l2_uses_the_kernel_and_keeps_its_fallback(ext, monkeypatch):
    rng = np.random.default_rng(6)
    r = rng.random((90, 1, 5, 5), dtype=np.float32)
    q = r[[3, 80, 41]] + np.float32(0.01) * rng.random((3, 1, 5, 5), dtype=np.float32)
    kernel_index, _ = ext.nearest_l2(q.reshape(3, -1), r.reshape(90, -1))
    np.testing.assert_array_equal(nearest_by_l2(q, r), kernel_index)
    np.testing.assert_array_equal(nearest_by_l2(q, r), [3, 80, 41])
    assert nearest_by_l2(q[:0], r).shape == (0,)
    with pytest.raises(InputError, match="NaN or infinity"):
        nearest_by_l2(np.full((1, 1, 5, 5), np.nan), r)
    with pytest.raises(InputError, match="no candidates"):
        nearest_by_l2(q, r[:0])

    monkeypatch.setattr(data_driven, "_ext", None)
    np.testing.assert_array_equal(nearest_by_l2(q, r, block=2), [3, 80, 41])
    assert nearest_by_l2(q[:0], r).shape == (0,)
    with pytest.raises(InputError, match="finite"):
        nearest_by_l2(np.full((1, 1, 5, 5), np.nan), r)
    with pytest.raises(InputError, match="number of features"):
        nearest_by_l2(q, r[:, :, :4])


def test_mdts_picks_the_exact_nearest_image_of_the_target_class():
    rng = np.random.default_rng(7)
    images = rng.random((60, 1, 6, 6), dtype=np.float32)
    labels = np.arange(60) % 3
    x = rng.random((8, 1, 6, 6), dtype=np.float32)
    target = rng.integers(0, 3, 8)
    chosen = MDTS(images, labels).indices(x, target)
    exact = exact_distances(x.reshape(8, -1), images.reshape(60, -1))
    exact[labels[None, :] != target[:, None]] = np.inf
    np.testing.assert_array_equal(chosen, exact.argmin(1))
