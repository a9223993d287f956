"""Sparsity of attribution maps: the Gini index (GANMEX appendix C.3).

Chalasani et al. (2018) score a map's sparsity with the Gini index in Hurley & Rickard's (2009)
form, over the absolute attribution values: with ``c_1 <= ... <= c_n`` the sorted ``|a|``,

    G = 1 - 2 * sum_k (c_k / ||c||_1) * (n - k + 1/2) / n   ( = sum_k (2k - n - 1) c_k / (n ||c||_1) ).

G is 0 for a uniform map, ``1 - 1/n`` for a one-hot map, and does not change when the map is
scaled or its signs are flipped. Larger is sparser. This module imports numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaisdk.metrics._common import MetricResult, check_maps, pixel_saliency

try:
    from xaisdk import _ext
except ImportError:  # not built: gini_index stays in numpy
    _ext = None

__all__ = ["gini", "gini_index", "gini_index_reference"]


def gini_index(values: np.ndarray) -> np.ndarray:
    """Gini index of each row of ``values`` (N, n), over the rows' absolute values, as float64; NaN for an
    all-zero row (and for a row holding NaN or infinity).

    float32 rows go to ``xaisdk._ext.gini_rows`` (sorting and float64 sums in C++, OpenMP over rows);
    everything else, float64 included, is computed here in float64 numpy, so float64 input is never
    rounded to float32. Both give the same numbers up to float64 summation order.

    >>> gini_index(np.array([[0.0, 0.0, 0.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 2.0, 3.0, 4.0]])).tolist()
    [0.75, 0.0, 0.25]
    >>> gini_index(np.array([[0.0, 2.0], [0.0, 0.0]], np.float32)).tolist()
    [0.5, nan]
    """
    values = np.asarray(values)
    if _ext is not None and values.dtype == np.float32 and values.ndim == 2:
        return _ext.gini_rows(np.ascontiguousarray(values))
    return gini_index_reference(values)


def gini_index_reference(values: np.ndarray) -> np.ndarray:
    """The numpy form of :func:`gini_index` (float64 throughout), also the reference its kernel is tested against.

    >>> gini_index_reference(np.array([[0.0, 0.0, 0.0, 1.0]])).tolist()
    [0.75]
    """
    c = np.sort(np.abs(np.asarray(values, dtype=np.float64)), axis=1)
    n = c.shape[1]
    total = c.sum(1)
    weights = 2.0 * np.arange(1, n + 1) - n - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (c @ weights) / (n * total)
    return np.where(total > 0, out, np.nan)


def gini(attributions: Any, reduce: str | None = None) -> MetricResult:
    """Per-sample Gini index (sparsity, higher = sparser) of attribution maps (N, C, H, W) or (N, H, W).

    ``reduce=None`` (default) takes all C*H*W values as they are, as Chalasani et al. and Quantus'
    ``Sparseness`` do; ``"sum"``, ``"abs"`` or ``"max_abs"`` first reduce the channels to one
    saliency per pixel (:func:`~xaisdk.metrics._common.pixel_saliency`), then take ``|.|``.
    An all-zero map has no distribution to measure and scores NaN (left out of ``mean``).

    >>> r = gini(np.array([[[0.0, 0.0], [0.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]]))
    >>> r.per_sample.tolist(), r.details
    ([0.75, 0.0], {'reduce': None, 'features': 4})
    >>> gini(np.zeros((1, 2, 2))).per_sample.tolist()
    [nan]
    """
    maps = check_maps(attributions)
    values = maps.reshape(len(maps), -1) if reduce is None else pixel_saliency(maps, reduce)
    return MetricResult("gini", gini_index(values), details={"reduce": reduce, "features": values.shape[1]})
