"""ROAR (xaisdk.metrics.roar): removal, the AORoarC formula, an analytic case with an oracle map,
worker-count invariance and input checks. Synthetic 8x8 images and a tiny CNN keep each retraining
well under a second."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xaisdk import InputError
from xaisdk.data import Dataset, Split
from xaisdk.metrics.roar import (
    DEFAULT_FRACTIONS,
    aoroarc,
    default_pairs,
    pair_maps,
    remove_top_pixels,
    retraining_config,
    roar,
)

REGION = (0, 1, 8, 9)  # flat indices of the 2x2 top-left block that decides the class
TINY = retraining_config(epochs=15, batch_size=32, learning_rate=5e-3,
                         arch_config={"channels": (4, 8), "hidden": 16, "dropout": 0.0})


def _region_part(n: int, seed: int) -> Dataset:
    """Classes 0/1, 8x8: background uniform in [0.3, 0.7], the 2x2 region 0 (class 0) or 1 (class 1)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % 2
    x = rng.uniform(0.3, 0.7, (n, 1, 64)).astype(np.float32)
    x[:, 0, list(REGION)] = y[:, None].astype(np.float32)
    return Dataset(x.reshape(n, 1, 8, 8), y, ("zero", "one"), "region")


@pytest.fixture(scope="module")
def region_data() -> Split:
    return Split(_region_part(200, 1), _region_part(200, 2))


def oracle(x: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Ranks the region first (every other pixel ties at 0, so the rest go in index order)."""
    maps = np.zeros((len(x), 64))
    maps[:, list(REGION)] = 1.0
    return maps.reshape(len(x), 8, 8)


FRACTIONS = (0.0, 0.1, 0.5)


@pytest.fixture(scope="module")
def oracle_result(region_data):
    return roar(region_data, oracle, fractions=FRACTIONS, training=TINY, workers=1, seed=3, progress=False)


# ------------------------------------------------------------------------------ removal


def test_remove_top_pixels_hand_computed():
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
    # Per-channel maps; the per-pixel saliency is the channel sum.
    maps = np.zeros((2, 2, 3, 3))
    maps[0, 0] = [[0, 5, 0], [2, 0, 0], [0, 0, -1]]
    maps[0, 1] = [[0, -1, 0], [2, 0, 0], [4, 0, 0]]   # sums: pixel 1 -> 4, pixel 3 -> 4, pixel 6 -> 4, 8 -> -1
    maps[1, 0] = [[1, 1, 1], [1, 1, 1], [1, 1, 9]]    # pixel 8 first, then ties 0, 1, 2 ...
    out = remove_top_pixels(x, maps, 0.3, fill=[-1.0, -2.0])  # round(0.3 * 9) = 3 pixels
    removed = (out != x).all(axis=1).reshape(2, -1)
    assert np.flatnonzero(removed[0]).tolist() == [1, 3, 6]   # three-way tie at 4: index order
    assert np.flatnonzero(removed[1]).tolist() == [0, 1, 8]   # 8 (top), then the ties 0 and 1
    assert (out[:, 0].reshape(2, -1)[removed] == -1.0).all()
    assert (out[:, 1].reshape(2, -1)[removed] == -2.0).all()
    assert np.array_equal(out.reshape(2, 2, -1)[~np.repeat(removed[:, None], 2, 1)],
                          x.reshape(2, 2, -1)[~np.repeat(removed[:, None], 2, 1)])
    assert x[0, 0, 0, 1] == 1.0  # input untouched


def test_remove_top_pixels_signed_and_rounding():
    x = np.zeros((1, 1, 2, 2), np.float32)
    maps = np.array([[[-5.0, 1.0], [0.5, -0.1]]])          # signed: -5 is the least salient
    assert remove_top_pixels(x, maps, 0.5, 1.0)[0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert (remove_top_pixels(x, maps, 0.0, 1.0) == 0).all()
    assert remove_top_pixels(x, maps, 0.125, 1.0).sum() == 1.0   # 0.5 pixel rounds half up to 1
    assert remove_top_pixels(x, maps, 0.1, 1.0).sum() == 0.0     # 0.4 pixel rounds to 0


# ------------------------------------------------------------------------------ AORoarC


def test_aoroarc_formula():
    table = np.array([[1.0, 0.9, 0.6, 0.5], [0.8, 0.8, 0.9, 0.5], [1.0, 1.0, 1.0, 1.0]])
    expected = [(0 + 0.1 + 0.4 + 0.5) / 4, (0 + 0 - 0.1 + 0.3) / 4, 0.0]
    assert np.allclose(aoroarc(table), expected)
    assert np.allclose(aoroarc(table[0]), expected[:1])


# ------------------------------------------------------------------------------ analytic case


def test_oracle_map_destroys_the_class_random_does_not(oracle_result):
    res = oracle_result
    assert res.fractions.tolist() == list(FRACTIONS)
    assert res.pairs == ((0, 1),)
    assert res.details["removed_pixels"] == [0, 6, 32]
    acc, rnd = res.accuracy[0], res.random_accuracy[0]
    assert acc[0] >= 0.95 and rnd[0] == acc[0]          # fraction 0 is one shared training
    assert acc[1] <= 0.7 and acc[2] <= 0.7               # region removed: chance (0.5) for 200 test images
    assert rnd[1] >= 0.9 and rnd[2] >= 0.85              # random removal rarely takes the whole region
    assert np.allclose(res.aoroarc.per_sample, aoroarc(res.accuracy))
    assert res.aoroarc.mean > 0.2 > res.random_aoroarc.mean
    assert res.excess > 0.15
    assert np.allclose(res.aoroarc.mean_curve(), acc) and res.aoroarc.steps.tolist() == list(FRACTIONS)
    out = json.loads(json.dumps(res.to_dict()))
    assert out["aoroarc"]["per_sample"] == pytest.approx(res.aoroarc.per_sample.tolist())
    assert np.allclose(out["random"]["accuracy"], res.random_accuracy)
    assert out["fractions"] == list(FRACTIONS) and out["pairs"] == [[0, 1]]


def test_two_workers_and_precomputed_maps_give_identical_numbers(region_data, oracle_result):
    maps = pair_maps(region_data, oracle, progress=False)
    assert maps[0].shape == (200, 1, 8, 8)
    res = roar(region_data, maps=maps, fractions=FRACTIONS, training=TINY, workers=2, seed=3, progress=False)
    assert np.array_equal(res.accuracy, oracle_result.accuracy)
    assert np.array_equal(res.random_accuracy, oracle_result.random_accuracy)


def test_pair_maps_sources_and_targets():
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 3, 4, 3, 2, 1, 0, 4], np.int64)
    part = Dataset(rng.random((10, 1, 6, 6)).astype(np.float32), y, tuple("abcde"), "five")
    seen: list[tuple[int, int]] = []

    def attribute(x, source, target):
        seen.extend(zip(source.tolist(), target.tolist()))
        return np.broadcast_to((10 * source + target)[:, None, None, None], x.shape).astype(np.float64)

    train_maps, _ = pair_maps(Split(part, part), attribute, chunk_size=3, progress=False)
    assert default_pairs(5) == ((0, 1), (2, 3))
    assert len(seen) == 2 * 8 and set(seen) == {(0, 1), (1, 0), (2, 3), (3, 2)}
    assert train_maps[:, 0, 0, 0].tolist() == [1, 10, 23, 32, 0, 32, 23, 10, 1, 0]  # class 4: no pair, zero map


def test_fraction_zero_is_added(region_data):
    res = roar(region_data, oracle, fractions=(0.5,), training=retraining_config(epochs=1, arch_config=TINY.arch_config),
               random_baseline=False, workers=1, progress=False)
    assert res.fractions.tolist() == [0.0, 0.5] and res.random_accuracy is None and res.random_aoroarc is None
    assert np.isnan(res.excess) and json.loads(json.dumps(res.to_dict()))["random"] is None


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fractions": (0.0, 1.0)}, "fractions"),
        ({"fractions": (-0.1, 0.5)}, "fractions"),
        ({"fractions": (0.0, 0.5, 0.3)}, "increasing"),
        ({"fractions": (0.0, 0.5, 0.5)}, "increasing"),
        ({"fractions": ()}, "fractions"),
        ({"pairs": [(0, 0)]}, "two different"),
        ({"pairs": [(0, 2)]}, "class 2"),
        ({"pairs": [(0, 1), (1, 0)]}, "more than one pair"),
        ({"pairs": [(0, 1.5)]}, "integer pairs"),
        ({"pairs": []}, "pairs"),
        ({"workers": 0}, "workers"),
        ({"workers": 1.5}, "workers"),
        ({"fill": 2.0}, "fill"),
        ({"fill": "gray"}, "fill"),
        ({"seed": -1}, "seed"),
        ({"maps": (np.zeros((200, 8, 8)), np.zeros((200, 8, 8)))}, "not both"),
    ],
)
def test_bad_input(region_data, kwargs, message):
    with pytest.raises(InputError, match=message):
        roar(region_data, oracle, **{"workers": 1, "progress": False, **kwargs})


def test_bad_maps(region_data):
    with pytest.raises(InputError, match="maps"):
        roar(region_data, maps=(np.zeros((200, 8, 8)), np.zeros((199, 8, 8))), progress=False)
    with pytest.raises(InputError, match="maps"):
        roar(region_data, maps=(np.zeros((200, 7, 8)), np.zeros((200, 7, 8))), progress=False)
    with pytest.raises(InputError, match="maps"):
        roar(region_data, maps=np.zeros((200, 8, 8)), progress=False)
    with pytest.raises(InputError, match="attribute"):
        roar(region_data, lambda x, s, t: np.zeros((len(x), 4, 4)), progress=False)
    with pytest.raises(InputError, match="either"):
        roar(region_data, progress=False)


def test_class_without_images():
    part = _region_part(10, 0)
    three = Dataset(part.x, part.y, ("zero", "one", "two"), "region")
    with pytest.raises(InputError, match="no images"):
        roar(Split(three, three), oracle, pairs=[(1, 2)], progress=False)


def test_default_fractions_are_documented():
    assert DEFAULT_FRACTIONS == (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)


def test_retraining_config_takes_the_models_architecture():
    from xaisdk.models import build_classifier
    from xaisdk.models.checkpoint import Classifier

    cfg = {"in_channels": 1, "image_size": 8, "num_classes": 10, "channels": (4, 8), "hidden": 16}
    clf = Classifier(build_classifier("mnist_cnn", **cfg), "mnist_cnn", cfg, tuple("0123456789"), (1, 8, 8))
    config = retraining_config(clf, epochs=2)
    assert config.arch == "mnist_cnn" and config.epochs == 2 and config.max_shift == 0
    assert config.arch_config == {"channels": (4, 8), "hidden": 16}   # shape and class count come from the data
    with pytest.raises(InputError, match="retraining_config"):
        retraining_config(epoch=3)
