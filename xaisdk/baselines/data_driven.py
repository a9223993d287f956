"""Baselines drawn from training data of the target class: MDTS and random target-class samples."""

from __future__ import annotations

from typing import Any

import numpy as np

from xaisdk.errors import InputError

try:
    from xaisdk import _ext
except ImportError:  # not built: nearest_by_l2 falls back to numpy
    _ext = None


def _labelled_images(data: Any, labels: np.ndarray | None, who: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) from a Dataset-like object (``.x``, ``.y``) or two arrays."""
    if labels is None:
        if not (hasattr(data, "x") and hasattr(data, "y")):
            raise InputError(f"{who}: pass a dataset with .x and .y, or images and labels")
        data, labels = data.x, data.y
    images = np.asarray(data, dtype=np.float32)
    labels = np.asarray(labels)
    if images.ndim < 2 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(f"{who}: need images (M, ...) and labels (M,), got {images.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{who}: labels must be integers, got {labels.dtype}")
    if len(images) == 0:
        raise InputError(f"{who}: no reference images")
    return images, labels.astype(np.int64)


def _need_targets(target: np.ndarray | None, who: str) -> np.ndarray:
    if target is None:
        raise InputError(f"{who} baseline needs a target class (one-vs-one); got target=None")
    return np.asarray(target, dtype=np.int64)


def _as_rows(array: np.ndarray, dtype: type) -> np.ndarray:
    """``array`` (M, ...) as (M, features) of ``dtype`` (also for M = 0, where reshape(0, -1) fails)."""
    array = np.asarray(array, dtype=dtype)
    return array.reshape(len(array), int(np.prod(array.shape[1:], dtype=np.int64)))


def nearest_by_l2(queries: np.ndarray, candidates: np.ndarray, block: int = 1024) -> np.ndarray:
    """Index of each query's nearest candidate by squared L2 distance (ties: the lowest index),
    computed blockwise from norms and matrix products, never holding the full distance matrix.

    Rows are flattened and compared in float32 by ``xaisdk._ext.nearest_l2`` (a packed SGEMM-style
    kernel fused with the running minimum, OpenMP); without the extension, a numpy float64 version
    takes ``block`` queries per matrix product (the compiled kernel picks its own cache-sized blocks).
    Candidates nearly tied (within float32 rounding of the distances) may be resolved differently
    by the two paths. NaN or infinite values raise :class:`~xaisdk.errors.InputError`.

    >>> nearest_by_l2(np.array([[0.0], [0.9]]), np.array([[1.0], [0.1], [5.0]])).tolist()
    [1, 0]
    """
    if len(candidates) == 0:
        raise InputError("nearest_by_l2: no candidates")
    if _ext is not None:
        q = np.ascontiguousarray(_as_rows(queries, np.float32))
        c = np.ascontiguousarray(_as_rows(candidates, np.float32))
        try:
            return _ext.nearest_l2(q, c)[0]
        except ValueError as err:
            raise InputError(str(err)) from None
    q = _as_rows(queries, np.float64)
    c = _as_rows(candidates, np.float64)
    if q.shape[1] != c.shape[1]:
        raise InputError(f"nearest_by_l2: queries {q.shape} and candidates {c.shape} differ in the number of features")
    if not (np.isfinite(q).all() and np.isfinite(c).all()):
        raise InputError("nearest_by_l2: queries and candidates must be finite (no NaN or infinity)")
    c_norms = (c * c).sum(1)
    best = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), block):
        qb = q[start : start + block]
        # ||q||^2 is constant per query, so argmin over ||c||^2 - 2 q.c is the nearest candidate.
        best[start : start + block] = np.argmin(c_norms[None, :] - 2.0 * qb @ c.T, axis=1)
    return best


class MDTS:
    """Minimum Distance Training Sample: for each input, the training image of its target class
    nearest in L2 (GANMEX's non-generative one-vs-one baseline).

    >>> ref_x = np.stack([np.full((1, 2, 2), v, np.float32) for v in (0.0, 0.2, 0.9)])
    >>> mdts = MDTS(ref_x, np.array([1, 1, 0]))
    >>> round(mdts(np.full((1, 1, 2, 2), 0.3, np.float32), np.array([1]))[0, 0, 0, 0].item(), 6)
    0.2
    """

    def __init__(self, data: Any, labels: np.ndarray | None = None) -> None:
        self.images, self.labels = _labelled_images(data, labels, "MDTS")

    def indices(self, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        """Index into the reference images of each input's MDTS."""
        target = _need_targets(target, "MDTS")
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self.images.shape[1:]:
            raise InputError(f"MDTS: inputs {x.shape[1:]} and reference images {self.images.shape[1:]} differ in shape")
        chosen = np.empty(len(x), dtype=np.int64)
        for cls in np.unique(target):
            pool = np.flatnonzero(self.labels == cls)
            if len(pool) == 0:
                raise InputError(f"MDTS: no reference image of target class {cls}")
            rows = np.flatnonzero(target == cls)
            chosen[rows] = pool[nearest_by_l2(x[rows], self.images[pool])]
        return chosen

    def __call__(self, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        return self.images[self.indices(x, target)].copy()


class TargetClassSample:
    """For each input, a training image of its target class drawn at random (seeded).

    >>> ref_x = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1)
    >>> pick = TargetClassSample(ref_x, np.array([0, 1, 1, 0]), seed=0)
    >>> set(pick(np.zeros((5, 1, 1, 1), np.float32), np.array([1] * 5)).ravel().tolist()) <= {1.0, 2.0}
    True
    """

    def __init__(self, data: Any, labels: np.ndarray | None = None, seed: int = 0) -> None:
        self.images, self.labels = _labelled_images(data, labels, "TargetClassSample")
        self.seed = seed

    def indices(self, target: np.ndarray, per_input: int = 1) -> np.ndarray:
        """(N, per_input) indices of random reference images of each target class."""
        rng = np.random.default_rng(self.seed)
        chosen = np.empty((len(target), per_input), dtype=np.int64)
        for n, cls in enumerate(np.asarray(target)):
            pool = np.flatnonzero(self.labels == cls)
            if len(pool) == 0:
                raise InputError(f"TargetClassSample: no reference image of target class {cls}")
            chosen[n] = rng.choice(pool, size=per_input, replace=len(pool) < per_input)
        return chosen

    def __call__(self, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        target = _need_targets(target, "TargetClassSample")
        return self.images[self.indices(target)[:, 0]].copy()

    def references(self, target: np.ndarray | None, per_input: int) -> np.ndarray:
        """(N, per_input, C, H, W) target-class images per input, e.g. DeepSHAP baselines."""
        target = _need_targets(target, "TargetClassSample")
        return self.images[self.indices(target, per_input)]
