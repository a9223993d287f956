"""Array helpers of the core: the one conversion every numeric entry point applies to caller arrays
(real-valued, float32, C-contiguous, finite, with an InputError naming the argument otherwise) and a
stable softmax. Imports numpy only."""

from __future__ import annotations

import numpy as np

from xaisdk.errors import InputError

__all__ = ["as_float32", "softmax"]


def as_float32(value: object, name: str) -> np.ndarray:
    """``value`` as a C-contiguous float32 array (0-d stays 0-d); booleans, non-numeric dtypes and
    NaN or infinite values (after the conversion) are an InputError naming ``name``.

    >>> as_float32([1, 2], "x").dtype, as_float32(3.0, "x").shape
    (dtype('float32'), ())
    >>> as_float32([1.0, float("nan")], "weights")
    Traceback (most recent call last):
        ...
    xaisdk.errors.InputError: weights: contains 1 NaN or infinite value(s) (after conversion to float32)
    """
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name}: expected a real-valued (float) array, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float32, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise InputError(f"{name}: contains {bad} NaN or infinite value(s) (after conversion to float32)")
    return arr


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (N, K), computed stably in float64.

    >>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(3).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    """
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
