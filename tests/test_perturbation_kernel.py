"""The perturbation kernels of xaisdk._ext against their numpy references, and the chunked driver."""

from __future__ import annotations

import numpy as np
import pytest

from xaisdk.errors import InputError
from xaisdk.runtime import perturbation
from xaisdk.runtime.perturbation import (
    cumulative_bounds,
    descending_order,
    perturbation_scores,
    perturbed_rows_reference,
)


def random_run(n=3, c=2, h=5, w=7, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((n, c, h, w), dtype=np.float32)
    substrate = rng.random((n, c, h, w), dtype=np.float32) + 2
    order = np.stack([rng.permutation(h * w) for _ in range(n)]).astype(np.int64)
    lo = rng.integers(0, h * w, (n, steps))
    hi = np.minimum(lo + rng.integers(0, 9, (n, steps)), h * w)
    return base, substrate, order, lo.astype(np.int64), hi.astype(np.int64)


@pytest.mark.parametrize("shape", [(1, 1), (4, 1), (3, 35), (17, 784), (2, 1000)])
def test_order_equals_stable_numpy_argsort_with_ties(ext, shape):
    rng = np.random.default_rng(1)
    saliency = rng.integers(-3, 4, shape).astype(np.float32)  # many ties
    saliency[0, 0] = -0.0
    assert np.array_equal(ext.perturb_order(saliency), np.argsort(-saliency, axis=1, kind="stable"))


def test_order_refuses_nan_and_non_contiguous(ext):
    with pytest.raises(ValueError, match="NaN"):
        ext.perturb_order(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        ext.perturb_order(np.ones((4, 4), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="float32"):
        ext.perturb_order(np.ones((4, 4)))


@pytest.mark.parametrize("chunk", [(0, 1), (0, 18), (5, 7), (17, 1)])
def test_fill_chunk_equals_numpy_reference(ext, chunk):
    base, substrate, order, lo, hi = random_run()
    start, k = chunk
    out = np.full((k, 2, 35), -1, np.float32)
    ext.perturb_fill_chunk(base.reshape(3, 2, 35), substrate.reshape(3, 2, 35), order, lo, hi, start, out)
    expected = perturbed_rows_reference(base, substrate, order, lo, hi, range(start, start + k))
    assert np.array_equal(out.reshape(expected.shape), expected)


def test_fill_chunk_checks_its_arguments(ext):
    base, substrate, order, lo, hi = random_run()
    b, s = base.reshape(3, 2, 35), substrate.reshape(3, 2, 35)
    out = np.empty((4, 2, 35), np.float32)
    with pytest.raises(ValueError, match="run past"):
        ext.perturb_fill_chunk(b, s, order, lo, hi, 16, out)
    bad = hi.copy()
    bad[0, 0] = 36
    with pytest.raises(ValueError, match="lo <= hi <= P"):
        ext.perturb_fill_chunk(b, s, order, lo, bad, 0, out)
    wrong = order.copy()
    wrong[0, 3] = 35
    with pytest.raises(ValueError, match="not a pixel index"):
        ext.perturb_fill_chunk(b, s, wrong, lo, hi, 0, out)
    with pytest.raises(ValueError, match="share memory"):
        ext.perturb_fill_chunk(b, s, order, lo, hi, 0, b[:1])
    with pytest.raises(ValueError, match="C-contiguous"):
        ext.perturb_fill_chunk(b, s, order[:, ::-1], lo, hi, 0, out)
    with pytest.raises(ValueError, match="int64"):
        ext.perturb_fill_chunk(b, s, order.astype(np.int32), lo, hi, 0, out)


@pytest.mark.parametrize("chunk_size", [1, 5, 18, 1000])
def test_scores_do_not_depend_on_chunking_and_see_the_right_samples(chunk_size):
    base, substrate, order, lo, hi = random_run()
    seen = []

    def score_fn(images, sample):
        seen.append(sample.copy())
        return images.reshape(len(images), -1).sum(1) + 1000 * sample

    scores = perturbation_scores(score_fn, base, substrate, order, lo, hi, chunk_size=chunk_size)
    rows = perturbed_rows_reference(base, substrate, order, lo, hi, range(18))
    expected = rows.reshape(18, -1).sum(1).astype(np.float64) + 1000 * (np.arange(18) // 6)
    np.testing.assert_allclose(scores.ravel(), expected, rtol=1e-6)
    assert np.array_equal(np.concatenate(seen), np.arange(18) // 6)
    assert max(len(s) for s in seen) <= chunk_size


def test_numpy_fallback_gives_the_same_scores(monkeypatch):
    base, substrate, order, lo, hi = random_run(seed=3)
    score_fn = lambda images, sample: images.reshape(len(images), -1).sum(1)  # noqa: E731
    with_ext = perturbation_scores(score_fn, base, substrate, order, lo, hi, chunk_size=4)
    monkeypatch.setattr(perturbation, "_ext", None)
    without = perturbation_scores(score_fn, base, substrate, order, lo, hi, chunk_size=4)
    assert np.array_equal(with_ext, without)
    saliency = np.random.default_rng(0).random((3, 10)).astype(np.float32)
    assert np.array_equal(descending_order(saliency), np.argsort(-saliency, axis=1, kind="stable"))


def test_cumulative_curve_by_hand():
    base = np.zeros((1, 1, 2, 2), np.float32)
    order = descending_order(np.array([[0.1, 0.4, 0.3, 0.2]]))
    lo, hi = cumulative_bounds(1, np.arange(5))
    scores = perturbation_scores(lambda im, s: im.reshape(len(im), -1) @ np.array([1.0, 10, 100, 1000]),
                                 base, 1.0, order, lo, hi)
    assert scores.tolist() == [[0.0, 10.0, 110.0, 1110.0, 1111.0]]


def test_driver_input_errors():
    base, substrate, order, lo, hi = random_run()
    ok = lambda im, s: np.zeros(len(im))  # noqa: E731
    with pytest.raises(InputError, match="order"):
        perturbation_scores(ok, base, substrate, order[:, :5], lo, hi)
    with pytest.raises(InputError, match="lo <= hi"):
        perturbation_scores(ok, base, substrate, order, hi + 1, hi)
    with pytest.raises(InputError, match="chunk_size"):
        perturbation_scores(ok, base, substrate, order, lo, hi, chunk_size=0)
    with pytest.raises(InputError, match="expected 4 scores"):
        perturbation_scores(lambda im, s: np.zeros(1), base, substrate, order, lo, hi, chunk_size=4)
    with pytest.raises(InputError, match="NaN"):
        descending_order(np.array([[np.nan, 1.0]]))
