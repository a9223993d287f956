"""xaisdk._ext.gini_rows against the numpy Gini index it replaces, and gini_index's dispatch."""

from __future__ import annotations

import numpy as np
import pytest

from xaisdk.metrics import sparsity
from xaisdk.metrics.sparsity import gini_index, gini_index_reference


def gini_by_definition(row: np.ndarray) -> float:
    """Hurley & Rickard's Gini of |row| written out term by term in float64."""
    c = np.sort(np.abs(row.astype(np.float64)))
    n = len(c)
    return sum((2 * (k + 1) - n - 1) * c[k] for k in range(n)) / (n * c.sum())


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (5, 1), (7, 3), (3, 784), (200, 301)])
def test_gini_rows_equals_the_numpy_reference(ext, shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    values = rng.normal(0, 1, shape).astype(np.float32)
    values[rng.random(shape) < 0.3] = 0  # zeros and sign flips, like attribution maps
    values[0, 0] = -1.5  # row 0 is compared with the definition, which needs a non-zero row
    out = ext.gini_rows(values)
    assert out.dtype == np.float64 and out.shape == (shape[0],)
    np.testing.assert_allclose(out, gini_index_reference(values), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out[0], gini_by_definition(values[0]), rtol=1e-12, atol=1e-14)


def test_gini_rows_special_rows(ext):
    n = 9
    values = np.zeros((6, n), np.float32)
    values[1] = -2.5  # constant: no inequality
    values[2, 4] = 3.0  # one-hot: the sparsest row
    values[3, 0] = np.nan
    values[4, 1] = np.inf
    values[5] = np.arange(n)
    out = ext.gini_rows(values)
    assert np.isnan(out[0])  # all zero: no distribution
    assert out[1] == 0.0
    assert out[2] == pytest.approx((n - 1) / n, rel=1e-15)
    assert np.isnan(out[3]) and np.isnan(out[4])  # NaN / infinity: as the numpy reference
    np.testing.assert_array_equal(np.isnan(gini_index_reference(values)), np.isnan(out))
    assert out[5] == pytest.approx(gini_by_definition(values[5]), rel=1e-14)
    assert out[5] == pytest.approx((n + 1) / (3 * n), rel=1e-14)  # the Gini of 0, 1, ..., n - 1
    assert np.isnan(ext.gini_rows(np.zeros((2, 0), np.float32))).all()
    assert ext.gini_rows(np.zeros((0, 5), np.float32)).shape == (0,)


def test_gini_rows_refuses_bad_arrays(ext):
    with pytest.raises(ValueError, match="float32"):
        ext.gini_rows(np.ones((2, 3)))
    with pytest.raises(ValueError, match="2 dimensions"):
        ext.gini_rows(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="2 dimensions"):
        ext.gini_rows(np.ones((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        ext.gini_rows(np.ones((2, 6), np.float32)[:, ::2])


def test_gini_index_sends_float32_to_the_kernel_and_float64_to_numpy(ext, monkeypatch):
    rng = np.random.default_rng(1)
    values = rng.normal(0, 1, (40, 50))
    f32 = values.astype(np.float32)
    np.testing.assert_array_equal(gini_index(f32), ext.gini_rows(f32))
    np.testing.assert_array_equal(gini_index(values), gini_index_reference(values))
    np.testing.assert_array_equal(gini_index(f32[:, ::2]), ext.gini_rows(np.ascontiguousarray(f32[:, ::2])))

    calls = []

    class Spy:
        @staticmethod
        def gini_rows(v):
            calls.append(v.dtype)
            return ext.gini_rows(v)

    monkeypatch.setattr(sparsity, "_ext", Spy)
    gini_index(f32)
    gini_index(values)
    assert calls == [np.float32]
    monkeypatch.setattr(sparsity, "_ext", None)  # extension not built: numpy for everything
    np.testing.assert_allclose(gini_index(f32), ext.gini_rows(f32), rtol=1e-12)
