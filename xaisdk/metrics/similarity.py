"""How alike two sets of attribution maps are, sample by sample (Adebayo et al., 2018's measures).

Every function compares ``a[i]`` with ``b[i]`` for each sample ``i`` and returns a
:class:`~xaisdk.metrics._common.MetricResult` with one value per sample. Maps are (N, C, H, W) or
(N, H, W); channels are first reduced to one (H, W) map per sample with
:func:`~xaisdk.metrics._common.pixel_saliency` (``"abs"``: sum of absolute values, for the
``absolute=True`` variants; ``"sum"``: the signed channel sum otherwise).

* :func:`ssim_similarity`: structural similarity of the two maps after the normalization of
  :func:`normalize_maps` (the saliency library's grayscale visualisation that Adebayo et al. compare).
* :func:`spearman_similarity`: Spearman rank correlation of the flattened (un-normalized) maps.
* :func:`hog_pearson_similarity`: Pearson correlation of the HOG features of the normalized maps.
* :func:`consistency`: the same measures averaged over every pair of several runs (seeds,
  hyper-parameters), e.g. the sensitivity of SP-G to its patch size.

A map that is constant (all its pixels equal after the channel reduction) has no ranks, no
structure and no gradients to compare: every measure is NaN for a pair in which either map is
constant (undefined, not 0), and ``MetricResult.mean`` skips it. This module imports numpy, scipy
and scikit-image only.

>>> rng = np.random.default_rng(0)
>>> a = rng.normal(size=(3, 1, 28, 28))
>>> [round(r.mean, 6) for r in similarities(a, 2 * a).values()]
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from skimage.feature import hog
from skimage.metrics import structural_similarity

from xaisdk.errors import InputError
from xaisdk.metrics._common import MetricResult, as_maps, pearson_rows, pixel_saliency, spearman_rows

__all__ = [
    "SIMILARITY_METRICS",
    "consistency",
    "hog_pearson_similarity",
    "normalize_maps",
    "similarities",
    "spearman_similarity",
    "ssim_similarity",
]

DEFAULT_PERCENTILE = 99.0
"""Upper clipping percentile of :func:`normalize_maps` (the saliency library's and Adebayo et al.'s value)."""


# --- inputs -------------------------------------------------------------------------------------


def _maps(value: Any, name: str) -> np.ndarray:
    """``value`` as float64 (N, C, H, W) maps, checked non-empty and finite."""
    try:
        array = np.asarray(value)
    except Exception:
        raise InputError(f"{name}: cannot be read as an array") from None
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or 0 in array.shape:
        raise InputError(f"{name}: expected non-empty maps (N, C, H, W) or (N, H, W), got shape {np.shape(value)}")
    return as_maps(array, np.broadcast_to(np.float32(0), array.shape), name)


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    ma, mb = _maps(a, "a"), _maps(b, "b")
    if ma.shape != mb.shape:
        raise InputError(f"a and b: expected maps of the same shape, got {np.shape(a)} and {np.shape(b)}")
    return ma, mb


def _percentile(value: float) -> float:
    if not 0 < value <= 100:
        raise InputError(f"percentile: expected a number in (0, 100], got {value!r}")
    return float(value)


def _reduced(maps: np.ndarray, absolute: bool) -> np.ndarray:
    """The (N, H, W) pixel saliency of (N, C, H, W) maps: channel sum of ``|maps|`` or of ``maps``."""
    n, _, h, w = maps.shape
    return pixel_saliency(maps, "abs" if absolute else "sum").reshape(n, h, w)


def _constant(reduced: np.ndarray) -> np.ndarray:
    """Which of the (N, H, W) maps have all their pixels equal."""
    flat = reduced.reshape(len(reduced), -1)
    return flat.max(1) == flat.min(1)


# --- normalization ------------------------------------------------------------------------------


def normalize_maps(maps: Any, absolute: bool = True, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """Each map as an (H, W) image in a fixed range, as the saliency library's visualisations do.

    * ``absolute=True`` (``VisualizeImageGrayscale``): ``s = sum_c |m_c|``; ``(s - min s) / (p - min s)``
      clipped to [0, 1], where ``p`` is the ``percentile``-th percentile of ``s`` (so the brightest 1%
      saturate); values in [0, 1].
    * ``absolute=False`` (``VisualizeImageDiverging``): ``s = sum_c m_c``; ``s / p`` clipped to [-1, 1],
      where ``p`` is the ``percentile``-th percentile of ``|s|``; values in [-1, 1], 0 stays 0.

    When ``p`` does not exceed the lower end (a map with fewer than 1% non-minimal pixels), the map's
    maximum is used instead, so that a sparse map is not blown up to all ones. Constant maps (for
    which the scale is undefined) come out as all NaN. ``percentile=100`` is plain min-max scaling.

    >>> normalize_maps(np.array([[[0.0, -2.0], [1.0, 4.0]]]), percentile=100).tolist()
    [[[0.0, 0.5], [0.25, 1.0]]]
    >>> normalize_maps(np.array([[[0.0, -2.0], [1.0, 4.0]]]), absolute=False, percentile=100).tolist()
    [[[0.0, -0.5], [0.25, 1.0]]]
    """
    reduced = _reduced(_maps(maps, "maps"), absolute)
    q = _percentile(percentile)
    flat = reduced.reshape(len(reduced), -1)
    if absolute:
        low, high = flat.min(1), np.percentile(flat, q, axis=1)
        high = np.where(high > low, high, flat.max(1))
        lo_clip = 0.0
    else:
        low = np.zeros(len(flat))
        high = np.percentile(np.abs(flat), q, axis=1)
        high = np.where(high > 0, high, np.abs(flat).max(1))
        lo_clip = -1.0
    span = (high - low)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.clip((reduced - low[:, None, None]) / span, lo_clip, 1.0)
    out[_constant(reduced)] = np.nan
    return out


# --- per-sample measures ------------------------------------------------------------------------


def ssim_similarity(a: Any, b: Any, absolute: bool = True, percentile: float = DEFAULT_PERCENTILE) -> MetricResult:
    """Structural similarity (``skimage.metrics.structural_similarity``) of each pair of maps.

    Both maps are first normalized *each on its own* by :func:`normalize_maps` (``absolute=True``:
    to [0, 1] after taking absolute values, as Adebayo et al. do; ``absolute=False``: signed, to
    [-1, 1]), then compared with scikit-image's defaults (7x7 uniform window, K1=0.01, K2=0.03) and
    ``data_range`` given explicitly: 1 for absolute maps, 2 for signed ones. Because each map is
    normalized on its own, the value is invariant to multiplying either map by a positive number
    (and, with ``absolute=True``, to flipping its sign). NaN when either map is constant.
    Caveat of the signed variant: SSIM is not sign-aware (its luminance and structure terms both
    change sign when one map is negated), so a map and its negation can score well above 0; use
    ``spearman_similarity(absolute=False)`` to detect sign flips.

    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(2, 1, 28, 28))
    >>> ssim_similarity(a, 3 * a).per_sample.round(6).tolist()
    [1.0, 1.0]
    >>> bool(ssim_similarity(a, rng.normal(size=a.shape)).mean < 0.5)
    True
    """
    ma, mb = _pair(a, b)
    na, nb = normalize_maps(ma, absolute, percentile), normalize_maps(mb, absolute, percentile)
    data_range = 1.0 if absolute else 2.0
    _, _, h, w = ma.shape
    if min(h, w) < 7:
        raise InputError(f"ssim: maps of {h}x{w} pixels are smaller than SSIM's 7x7 window")
    values = np.full(len(ma), np.nan)
    for i in range(len(ma)):
        if np.isfinite(na[i]).all() and np.isfinite(nb[i]).all():
            values[i] = structural_similarity(na[i], nb[i], data_range=data_range)
    return MetricResult("ssim" if absolute else "ssim_signed", values,
                        details={"absolute": absolute, "percentile": percentile, "data_range": data_range,
                                 "win_size": 7, "undefined": int(np.isnan(values).sum())})


def spearman_similarity(a: Any, b: Any, absolute: bool = True) -> MetricResult:
    """Spearman rank correlation of each pair of flattened maps (ties get their average rank).

    ``absolute=True`` ranks ``sum_c |m_c|`` (Adebayo et al.'s "ABS" variant); ``absolute=False``
    ranks the signed channel sum, so a map and its negation give -1. The maps are not normalized
    (ranks do not change under the normalization, and its clipping would only add ties): the value
    is invariant to any strictly increasing transformation of either (reduced) map. NaN when either
    map is constant.

    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(2, 28, 28))
    >>> spearman_similarity(a, -a, absolute=False).per_sample.tolist()
    [-1.0, -1.0]
    >>> spearman_similarity(a, -a).per_sample.tolist()
    [1.0, 1.0]
    """
    ma, mb = _pair(a, b)
    reduce = "abs" if absolute else "sum"
    values = spearman_rows(pixel_saliency(ma, reduce), pixel_saliency(mb, reduce))
    return MetricResult("spearman" if absolute else "spearman_signed", values,
                        details={"absolute": absolute, "undefined": int(np.isnan(values).sum())})


def _hog_features(image: np.ndarray, pixels_per_cell: tuple[int, int], cells_per_block: tuple[int, int],
                  orientations: int) -> np.ndarray:
    return hog(image, orientations=orientations, pixels_per_cell=pixels_per_cell, cells_per_block=cells_per_block,
               block_norm="L2-Hys", feature_vector=True)


def hog_pearson_similarity(
    a: Any,
    b: Any,
    absolute: bool = True,
    pixels_per_cell: tuple[int, int] = (4, 4),
    cells_per_block: tuple[int, int] = (2, 2),
    orientations: int = 9,
    percentile: float = DEFAULT_PERCENTILE,
) -> MetricResult:
    """Pearson correlation of the HOG features (``skimage.feature.hog``) of each pair of maps.

    Each map is normalized by :func:`normalize_maps` first (so the value is invariant to multiplying
    either map by a positive number). Defaults, chosen for 28x28 maps: 4x4-pixel cells tile 28 pixels
    exactly (7x7 cells; scikit-image's 8x8 default would drop the last 4 rows and columns and leave
    only 3x3 cells, too coarse for strokes 2-4 pixels wide), 2x2-cell blocks give 6x6 overlapping
    blocks (the default 3x3 is meant for 64x128 pedestrians), 9 orientations and L2-Hys block
    normalization as in Dalal and Triggs: 1296 features per map. Maps must span at least one block.
    NaN when either map is constant.

    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(2, 1, 28, 28))
    >>> hog_pearson_similarity(a, 0.5 * a).per_sample.round(6).tolist()
    [1.0, 1.0]
    >>> hog_pearson_similarity(a, a).details["features"]
    1296
    """
    ma, mb = _pair(a, b)
    cell, block = _pair_of_ints(pixels_per_cell, "pixels_per_cell"), _pair_of_ints(cells_per_block, "cells_per_block")
    if isinstance(orientations, bool) or not isinstance(orientations, (int, np.integer)) or orientations < 1:
        raise InputError(f"orientations: expected a positive integer, got {orientations!r}")
    _, _, h, w = ma.shape
    if h // cell[0] < block[0] or w // cell[1] < block[1]:
        raise InputError(f"hog: {h}x{w} maps hold fewer than one block of {block[0]}x{block[1]} cells of "
                         f"{cell[0]}x{cell[1]} pixels; use smaller pixels_per_cell / cells_per_block")
    na, nb = normalize_maps(ma, absolute, percentile), normalize_maps(mb, absolute, percentile)
    n_features = (h // cell[0] - block[0] + 1) * (w // cell[1] - block[1] + 1) * block[0] * block[1] * orientations
    fa, fb = np.full((len(ma), n_features), np.nan), np.full((len(ma), n_features), np.nan)
    for i in range(len(ma)):
        if np.isfinite(na[i]).all() and np.isfinite(nb[i]).all():
            fa[i] = _hog_features(na[i], cell, block, orientations)
            fb[i] = _hog_features(nb[i], cell, block, orientations)
    values = pearson_rows(fa, fb)
    return MetricResult("hog_pearson" if absolute else "hog_pearson_signed", values,
                        details={"absolute": absolute, "pixels_per_cell": list(cell), "cells_per_block": list(block),
                                 "orientations": orientations, "features": n_features, "percentile": percentile,
                                 "undefined": int(np.isnan(values).sum())})


def _pair_of_ints(value: Any, name: str) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected two positive integers, got {value!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise InputError(f"{name}: expected two positive integers, got {value!r}")
    return pair  # type: ignore[return-value]


# --- several measures, several runs -------------------------------------------------------------

SIMILARITY_METRICS: dict[str, Callable[[Any, Any], MetricResult]] = {
    "ssim": lambda a, b: ssim_similarity(a, b, absolute=True),
    "ssim_signed": lambda a, b: ssim_similarity(a, b, absolute=False),
    "spearman": lambda a, b: spearman_similarity(a, b, absolute=True),
    "spearman_signed": lambda a, b: spearman_similarity(a, b, absolute=False),
    "hog_pearson": lambda a, b: hog_pearson_similarity(a, b, absolute=True),
}
"""The measures by name, each with its default options (``spearman``, ``ssim`` and ``hog_pearson``
use absolute values, as Adebayo et al.'s main figures; the ``_signed`` variants keep the sign)."""

DEFAULT_METRICS = ("ssim", "spearman", "hog_pearson")


def _metric_names(metrics: Sequence[str]) -> tuple[str, ...]:
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in names if m not in SIMILARITY_METRICS]
    if unknown or not names:
        raise InputError(f"metrics: unknown {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose among {', '.join(SIMILARITY_METRICS)}")
    return names


def similarities(a: Any, b: Any, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, MetricResult]:
    """Several measures of :data:`SIMILARITY_METRICS` for the same pairs of maps, by name.

    >>> a = np.arange(2 * 28 * 28, dtype=float).reshape(2, 28, 28)
    >>> {k: round(r.mean, 3) for k, r in similarities(a, a, ["spearman", "spearman_signed"]).items()}
    {'spearman': 1.0, 'spearman_signed': 1.0}
    """
    names = _metric_names(metrics)
    ma, mb = _pair(a, b)
    return {name: SIMILARITY_METRICS[name](ma, mb) for name in names}


def consistency(runs: Sequence[Any], metrics: Sequence[str] = ("ssim", "hog_pearson", "spearman")) -> dict[str, MetricResult]:
    """How stable maps are across runs (seeds, hyper-parameters): every pair of runs compared.

    ``runs`` are two or more sets of maps of the same shape, all for the same N samples. For each
    metric, ``per_sample[i]`` is the mean over the ``R (R - 1) / 2`` pairs of runs of the measure of
    sample ``i`` (pairs where it is undefined are skipped; NaN if it is undefined for every pair).
    ``details`` holds ``runs``, ``pairs`` (the count), ``pair_index`` (the pairs, in order) and
    ``pair_means`` (each pair's mean over samples).

    >>> rng = np.random.default_rng(0)
    >>> base = rng.normal(size=(4, 28, 28))
    >>> runs = [base + 0.1 * rng.normal(size=base.shape) for _ in range(3)]
    >>> out = consistency(runs, metrics=["spearman"])
    >>> out["spearman"].details["pairs"], bool(out["spearman"].mean > 0.9)
    (3, True)
    """
    names = _metric_names(metrics)
    if isinstance(runs, np.ndarray) or len(runs) < 2:
        count = "an array" if isinstance(runs, np.ndarray) else f"{len(runs)}"
        raise InputError(f"runs: expected a sequence of at least 2 sets of maps, got {count}")
    maps = [_maps(run, f"runs[{i}]") for i, run in enumerate(runs)]
    for i, m in enumerate(maps[1:], 1):
        if m.shape != maps[0].shape:
            raise InputError(f"runs[{i}]: shape {m.shape} differs from runs[0]'s {maps[0].shape}")
    pairs = list(itertools.combinations(range(len(maps)), 2))
    out = {}
    for name in names:
        table = np.stack([SIMILARITY_METRICS[name](maps[i], maps[j]).per_sample for i, j in pairs], axis=1)
        out[name] = MetricResult(name, _nanmean_rows(table), details={
            "runs": len(maps), "pairs": len(pairs), "pair_index": [list(p) for p in pairs],
            "pair_means": [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in table.T]})
    return out


def _nanmean_rows(table: np.ndarray) -> np.ndarray:
    defined = np.isfinite(table)
    counts = defined.sum(1)
    sums = np.where(defined, table, 0.0).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)
