"""Baselines against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xaisdk import InputError
from xaisdk.baselines import MDTS, Blur, TargetClassSample, UniformNoise, make_baseline, nearest_by_l2


def test_named_constant_baselines(rng):
    x = rng.random((3, 1, 5, 5)).astype(np.float32)
    assert make_baseline("zero", x, None).max() == 0.0
    assert make_baseline("max", x, None).min() == 1.0
    np.testing.assert_array_equal(make_baseline(0.25, x, None), np.float32(0.25))


def test_blur_matches_a_per_channel_gaussian(rng):
    x = rng.random((2, 3, 16, 16)).astype(np.float32)
    ours = Blur(sigma=1.5)(x, None)
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(ours[n, c], ndimage.gaussian_filter(x[n, c], 1.5, mode="reflect"), rtol=1e-5, atol=1e-6)
    # a blur keeps the mean (reflecting borders) and lowers the variance
    np.testing.assert_allclose(ours.mean(), x.mean(), rtol=1e-3)
    assert ours.std() < 0.5 * x.std()


def test_noise_is_seeded_and_uniform():
    x = np.zeros((8, 1, 28, 28), np.float32)
    a, b, c = UniformNoise(seed=3)(x, None), UniformNoise(seed=3)(x, None), UniformNoise(seed=4)(x, None)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert abs(a.mean() - 0.5) < 0.01 and abs(a.var() - 1 / 12) < 0.005


def test_nearest_by_l2_equals_brute_force(rng):
    q = rng.random((37, 50))
    c = rng.random((101, 50))
    brute = ((q[:, None, :] - c[None, :, :]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest_by_l2(q, c, block=8), brute)


def test_mdts_is_the_nearest_training_image_of_the_target_class(digits):
    x = digits.test.x[:10]
    target = (digits.test.y[:10] + 3) % 10
    base = MDTS(digits.train)(x, target)
    train_x, train_y = digits.train.x, digits.train.y
    for n in range(10):
        pool = train_x[train_y == target[n]]
        distances = ((pool - x[n]) ** 2).reshape(len(pool), -1).sum(1)
        np.testing.assert_array_equal(base[n], pool[distances.argmin()])


def test_target_class_samples_come_from_the_target_class(digits):
    sampler = TargetClassSample(digits.train, seed=5)
    target = np.array([0, 7, 7, 2])
    refs = sampler.references(target, per_input=6)
    assert refs.shape == (4, 6, 1, 28, 28)
    index = sampler.indices(target, 6)
    assert np.all(digits.train.y[index] == target[:, None])
    np.testing.assert_array_equal(refs, TargetClassSample(digits.train, seed=5).references(target, 6))


def test_callable_baseline_gets_inputs_and_targets():
    seen = {}

    def half_of_input(x, target):
        seen["target"] = target
        return x / 2

    x = np.ones((2, 1, 2, 2), np.float32)
    np.testing.assert_array_equal(make_baseline(half_of_input, x, np.array([1, 2])), x / 2)
    assert seen["target"].tolist() == [1, 2]


def test_baseline_errors(digits):
    x = digits.test.x[:2]
    with pytest.raises(InputError, match="target"):
        MDTS(digits.train)(x, None)
    with pytest.raises(InputError, match="no reference image of target class 9"):
        MDTS(digits.train.x[digits.train.y != 9], digits.train.y[digits.train.y != 9])(x, np.array([9, 9]))
    with pytest.raises(InputError, match="shape"):
        MDTS(digits.train)(np.zeros((2, 1, 8, 8), np.float32), np.array([1, 2]))
    with pytest.raises(InputError, match="sigma"):
        Blur(sigma=0)
    with pytest.raises(InputError, match="returned None"):
        make_baseline(lambda x, t: None, x, None)
    with pytest.raises(InputError, match="labels"):
        MDTS(np.zeros((3, 4)), np.zeros(2, dtype=int))
