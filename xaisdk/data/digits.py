"""scikit-learn's bundled handwritten digits, upsampled to a model-friendly size."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from xaisdk.data._checks import check_fraction, check_int, check_seed
from xaisdk.data._resize import resize_bilinear
from xaisdk.data.dataset import Dataset, Split, split_dataset
from xaisdk.errors import InputError

DIGIT_CLASS_NAMES = tuple(str(d) for d in range(10))


def load_digits(*, size: int = 28, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """The 1,797 real 8x8 handwritten digits of sklearn.datasets.load_digits, split train/test.

    Pixel values 0..16 are divided by 16, then each image is resized to size x size (4..256) with
    bilinear interpolation (torch interpolate, align_corners=False; antialiased if size < 8)
    and clipped to [0, 1]. x is float32 (N, 1, size, size); classes "0".."9". The split is
    `stratified_split(y, test_fraction, seed)`; the same call gives the same arrays.
    Needs no download: the data ship with scikit-learn.

    >>> split = load_digits(size=16)
    >>> split.train.x.shape[1:], len(split.train) + len(split.test), split.train.num_classes
    ((1, 16, 16), 1797, 10)
    """
    size = check_int("size", size, minimum=4, maximum=256)
    test_fraction = check_fraction(test_fraction)
    seed = check_seed(seed)
    images, labels = _bundled_digits()
    x = resize_bilinear(images[:, None] / np.float32(16.0), (size, size))
    full = Dataset(x, labels.copy(), DIGIT_CLASS_NAMES, "digits")
    return split_dataset(full, test_fraction, seed)


def binary_digits_split(first: int = 3, second: int = 8, *, seed: int = 0) -> Split:
    """``load_digits(seed=seed)`` restricted to digits ``first`` and ``second``, relabelled 0 / 1 (class
    names ``(str(first), str(second))``): the data of the shipped 3-vs-8 ExplainGAN.

    >>> split = binary_digits_split(3, 8)
    >>> split.train.class_names, sorted(set(split.train.y.tolist())), len(split.train), len(split.test)
    (('3', '8'), [0, 1], 285, 72)
    """
    if first == second or not (0 <= first <= 9 and 0 <= second <= 9):
        raise InputError(f"expected two different digits in 0..9, got {first} and {second}")
    digits = load_digits(seed=seed)
    parts = []
    for part in (digits.train, digits.test):
        keep = (part.y == first) | (part.y == second)
        parts.append(Dataset(part.x[keep], (part.y[keep] == second).astype(np.int64), (str(first), str(second)),
                             f"digits_{first}v{second}"))
    return Split(*parts)


DIGIT_COLORS = ("red", "green", "blue")


def load_colored_digits(*, size: int = 28, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """:func:`load_digits` with each digit drawn in red, green or blue at random; labels unchanged.

    The GANMEX paper's colored-MNIST ablation: colour is a mode of the data that is irrelevant to the
    label, so a good class-targeted baseline keeps the input's colour. The split is the same as
    ``load_digits(size=size, test_fraction=test_fraction, seed=seed)``; colours are drawn with ``seed``.
    An image's colour index is :func:`dominant_channel`.

    >>> split = load_colored_digits(size=8)
    >>> split.train.x.shape[1:], sorted(set(dominant_channel(split.train.x).tolist()))
    ((3, 8, 8), [0, 1, 2])
    """
    split = load_digits(size=size, test_fraction=test_fraction, seed=seed)
    rng = np.random.default_rng(check_seed(seed) + 1)

    def colour(ds: Dataset) -> Dataset:
        channel = rng.integers(0, 3, len(ds))
        x = np.zeros((len(ds), 3, *ds.x.shape[2:]), np.float32)
        x[np.arange(len(ds)), channel] = ds.x[:, 0]
        return Dataset(x, ds.y, ds.class_names, "colored_digits")

    return Split(colour(split.train), colour(split.test))


def dominant_channel(x: np.ndarray) -> np.ndarray:
    """Index of the channel holding most of each image's intensity (its colour in colored digits).

    >>> dominant_channel(np.stack([np.zeros((3, 2, 2)), np.ones((3, 2, 2)) * [[[0]], [[0]], [[1]]]])).tolist()
    [0, 2]
    """
    x = np.asarray(x)
    return x.reshape(len(x), x.shape[1], -1).sum(-1).argmax(1)


@lru_cache(maxsize=1)
def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn takes a while to import and only this loader needs it.
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.astype(np.float32)
    labels = bunch.target.astype(np.int64)
    images.flags.writeable = False  # cached: callers get derived arrays, never these
    labels.flags.writeable = False
    return images, labels
