"""The Dataset container, the train/test Split, and a seeded stratified splitter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xaisdk.data._checks import check_fraction, check_int, check_names, check_seed, describe
from xaisdk.errors import InputError


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Labelled images: x float32 (N, C, H, W) in [0, 1], y int64 (N,) in [0, num_classes).

    `masks`, when present, is float32 (N, 1, H, W) in {0, 1} and marks the pixels that truly
    discriminate the class (the ground truth an attribution should find). A dataset may be empty
    (N = 0), e.g. `of_class` of a class without samples. Arrays are not copied.

    >>> import numpy as np
    >>> ds = Dataset(np.zeros((4, 1, 8, 8), np.float32), np.array([0, 1, 0, 1]), ("a", "b"), "toy")
    >>> len(ds), ds.input_shape, ds.num_classes
    (4, (1, 8, 8), 2)
    >>> len(ds.of_class(1))
    2
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    name: str
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_images(self.x)
        names = check_names("class_names", self.class_names)
        object.__setattr__(self, "class_names", names)
        _check_labels(self.y, len(self.x), len(names))
        if not isinstance(self.name, str):
            raise InputError(f"name: expected a string, got {describe(self.name)}")
        if self.masks is not None:
            _check_masks(self.masks, self.x.shape)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        masks = "yes" if self.masks is not None else "no"
        return (f"Dataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}, masks={masks})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.x.shape
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        """Number of classes, i.e. len(class_names) (some may have no samples)."""
        return len(self.class_names)

    def subset(self, index: np.ndarray) -> "Dataset":
        """The samples selected by `index` (integer positions in [0, N) or a boolean mask of length N).

        Masks are kept; the arrays are copies.

        >>> import numpy as np
        >>> ds = Dataset(np.zeros((3, 1, 8, 8), np.float32), np.array([0, 1, 1]), ("a", "b"), "toy")
        >>> ds.subset(np.array([2, 0])).y.tolist(), len(ds.subset(ds.y == 1))
        ([1, 0], 2)
        """
        rows = _as_positions(index, len(self))
        masks = None if self.masks is None else self.masks[rows]
        return Dataset(self.x[rows], self.y[rows], self.class_names, self.name, masks)

    def of_class(self, c: int) -> "Dataset":
        """The samples of class `c` (0 <= c < num_classes).

        >>> import numpy as np
        >>> ds = Dataset(np.zeros((3, 1, 8, 8), np.float32), np.array([0, 1, 1]), ("a", "b"), "toy")
        >>> len(ds.of_class(0))
        1
        """
        c = check_int("c", c, minimum=0, maximum=self.num_classes - 1)
        return self.subset(self.y == c)


@dataclass(frozen=True, eq=False)
class Split:
    """A train part and a test part with the same classes and image shape.

    >>> import numpy as np
    >>> part = Dataset(np.zeros((2, 1, 8, 8), np.float32), np.array([0, 1]), ("a", "b"), "toy")
    >>> Split(part, part).test.num_classes
    2
    """

    train: Dataset
    test: Dataset

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            if not isinstance(getattr(self, part), Dataset):
                raise InputError(f"{part}: expected a Dataset, got {describe(getattr(self, part))}")
        if self.train.class_names != self.test.class_names:
            raise InputError("train and test: expected the same class_names, got "
                             f"{self.train.class_names} and {self.test.class_names}")
        if self.train.input_shape != self.test.input_shape:
            raise InputError("train and test: expected the same image shape (C, H, W), got "
                             f"{self.train.input_shape} and {self.test.input_shape}")


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of sample positions into (train_idx, test_idx), both sorted int64.

    Each class with k >= 2 samples puts round(k * test_fraction), clipped to [1, k - 1], of its
    samples (chosen at random) in the test part, so it appears in both parts; a class with a
    single sample goes to train. Same arguments, same result.

    >>> import numpy as np
    >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> train, test = stratified_split(y, 0.25, seed=0)
    >>> len(train), len(test), np.bincount(y[test]).tolist()
    (6, 2, [1, 1])
    """
    labels = _integer_labels(y)
    fraction = check_fraction(test_fraction)
    rng = np.random.default_rng(check_seed(seed))
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = len(members)
        n_test = 0 if k < 2 else min(max(int(np.floor(k * fraction + 0.5)), 1), k - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    train_idx = np.sort(np.concatenate(train)).astype(np.int64)
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    if len(test_idx) == 0:
        raise InputError(f"y: cannot make a test part from {len(labels)} samples: "
                         "no class has 2 or more samples")
    return train_idx, test_idx


def split_dataset(dataset: Dataset, test_fraction: float, seed: int) -> Split:
    """Split `dataset` with `stratified_split` into a Split.

    >>> import numpy as np
    >>> ds = Dataset(np.zeros((10, 1, 8, 8), np.float32), np.arange(10) % 2, ("a", "b"), "toy")
    >>> split = split_dataset(ds, 0.2, seed=0)
    >>> len(split.train), len(split.test)
    (8, 2)
    """
    train_idx, test_idx = stratified_split(dataset.y, test_fraction, seed)
    return Split(dataset.subset(train_idx), dataset.subset(test_idx))


def _check_images(x: object) -> None:
    if not isinstance(x, np.ndarray):
        raise InputError(f"x: expected a numpy array, got {describe(x)}")
    if x.dtype != np.float32:
        raise InputError(f"x: expected dtype float32, got {x.dtype}")
    if x.ndim != 4:
        raise InputError(f"x: expected 4 dimensions (N, C, H, W), got shape {x.shape}")
    if min(x.shape[1:]) < 1:
        raise InputError(f"x: expected non-empty images (C, H, W >= 1), got shape {x.shape}")
    if x.size:
        low, high = float(x.min()), float(x.max())
        if np.isnan(low) or np.isnan(high):
            raise InputError("x: contains NaN; expected values in [0, 1]")
        if low < 0.0 or high > 1.0:
            raise InputError(f"x: expected values in [0, 1], got min {low:g} and max {high:g}")


def _check_labels(y: object, n: int, num_classes: int) -> None:
    if not isinstance(y, np.ndarray):
        raise InputError(f"y: expected a numpy array, got {describe(y)}")
    if y.dtype != np.int64:
        raise InputError(f"y: expected dtype int64, got {y.dtype}")
    if y.shape != (n,):
        raise InputError(f"y: expected shape ({n},) to match the {n} images in x, got {y.shape}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"y: expected labels in [0, {num_classes}) for {num_classes} class names, "
                         f"got min {y.min()} and max {y.max()}")


def _check_masks(masks: object, x_shape: tuple[int, ...]) -> None:
    if not isinstance(masks, np.ndarray):
        raise InputError(f"masks: expected a numpy array or None, got {describe(masks)}")
    expected = (x_shape[0], 1, x_shape[2], x_shape[3])
    if masks.dtype != np.float32 or masks.shape != expected:
        raise InputError(f"masks: expected float32 of shape {expected}, got {masks.dtype} of shape {masks.shape}")
    if not np.all((masks == 0) | (masks == 1)):
        raise InputError("masks: expected values 0 or 1 only")


def _as_positions(index: object, n: int) -> np.ndarray:
    rows = np.asarray(index)
    if rows.dtype == np.bool_:
        if rows.shape != (n,):
            raise InputError(f"index: a boolean mask must have shape ({n},), got {rows.shape}")
        return np.flatnonzero(rows)
    if rows.size == 0 and rows.ndim == 1:
        return np.zeros(0, np.int64)
    if not np.issubdtype(rows.dtype, np.integer) or rows.ndim != 1:
        raise InputError(f"index: expected a 1-D array of integer positions or a boolean mask, got {describe(index)}")
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise InputError(f"index: expected positions in [0, {n}), got min {rows.min()} and max {rows.max()}")
    return rows


def _integer_labels(y: object) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.size == 0:
        raise InputError(f"y: expected a non-empty 1-D array of labels, got {describe(y)}")
    if np.issubdtype(labels.dtype, np.integer):
        return labels
    if np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        return labels.astype(np.int64)
    raise InputError(f"y: expected integer class labels, got dtype {labels.dtype}")
