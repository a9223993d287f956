"""Localization of attribution maps: GANMEX's inverse localization, and scores against ground-truth masks.

- :func:`inverse_localization` (GANMEX appendix C.5) needs no mask: for centred, narrower-than-tall
  objects (SVHN, MNIST digits) the vertical edge bands hold background, so the ratio of mean
  ``|A|`` on the edges to mean ``|A|`` in the centre should be small (lower = better).
- :func:`pointing_game` (Zhang et al. 2016), :func:`mask_iou` and :func:`energy_in_mask`
  (the energy-based pointing game of Wang et al. 2020) score maps against masks (N, H, W) or
  (N, 1, H, W) of bool or 0/1 values, e.g. ``xaisdk.data.shapes``' ``Dataset.masks``.

Mask metrics take one saliency per pixel, ``reduce="sum"`` by default: the signed sum of the
channels, i.e. the positive *evidence for the source class against the target* in a one-vs-one
map; ``"abs"`` / ``"max_abs"`` score the magnitude instead (any evidence, for or against).
Undefined cases are NaN and left out of ``MetricResult.mean``: an empty mask, and a map without
the thing the metric looks for (a constant map has no maximum point; no positive saliency has no
energy). This module imports numpy and scipy only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from xaisdk.errors import InputError
from xaisdk.metrics._common import MetricResult, check_maps, pixel_saliency

__all__ = ["inverse_localization", "pointing_game", "mask_iou", "energy_in_mask", "DEFAULT_THRESHOLDS", "BOX_ALPHAS",
           "box_iou", "box_localization_error", "mask_boxes", "saliency_boxes"]

# mask_iou's default thresholds per mode: kept fractions of the pixels (shapes' objects cover
# about 5-25 % of the image), and fractions of the map's maximum.
DEFAULT_THRESHOLDS = {"top_fraction": (0.05, 0.1, 0.2, 0.3, 0.5), "relative_max": (0.1, 0.25, 0.5, 0.75)}


def inverse_localization(attributions: Any, edge_fraction: float = 0.25) -> MetricResult:
    """GANMEX's inverse localization: mean ``|A|`` over the left and right edge bands divided by
    mean ``|A|`` over the centre columns (lower = better localized). Lower is better.

    Each band is ``max(1, round(edge_fraction * W))`` columns wide, over the full height; the
    centre is every other column. Channels are summed in absolute value (the ratio equals the
    paper's per-feature ratio, both areas having C channels). Default 1/4: in SVHN's 32x32 crops
    a digit (aspect ratio < 1, full height) takes about the middle half, and in 28x28 MNIST the
    digit's 20x20 box is centred, so the outer quarters hold mostly background and stroke ends;
    pass ``edge_fraction=4/28`` for MNIST's always-empty 4-pixel margin. A map living only on the
    edges scores ``inf`` (the ratio is unbounded; one such map makes ``mean`` inf, ``count``
    leaves it out); an all-zero map scores NaN.

    >>> a = np.zeros((2, 4, 8)); a[0, :, 3:5] = 1.0; a[1, :, 0] = -2.0; a[1, :, 4] = 1.0
    >>> r = inverse_localization(a)
    >>> r.per_sample.tolist(), r.details["edge_columns"]
    ([0.0, 2.0], 2)
    """
    maps = check_maps(attributions)
    width = maps.shape[3]
    band = _band_width(edge_fraction, width)
    saliency = pixel_saliency(maps, "abs").reshape(len(maps), maps.shape[2], width)
    edge = np.concatenate([saliency[:, :, :band], saliency[:, :, width - band:]], axis=2).mean((1, 2))
    centre = saliency[:, :, band:width - band].mean((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = edge / centre
    return MetricResult("inverse_localization", ratio,
                        details={"edge_fraction": float(edge_fraction), "edge_columns": band})


def _band_width(edge_fraction: Any, width: int) -> int:
    if isinstance(edge_fraction, bool) or not isinstance(edge_fraction, (int, float, np.floating, np.integer)) \
            or not 0.0 < float(edge_fraction) < 0.5:
        raise InputError(f"edge_fraction: expected a number in (0, 0.5), got {edge_fraction!r}")
    band = max(1, int(round(float(edge_fraction) * width)))
    if 2 * band >= width:
        raise InputError(f"edge_fraction={edge_fraction}: two bands of {band} columns leave no centre "
                         f"in maps {width} pixels wide")
    return band


def check_masks(masks: Any, maps: np.ndarray) -> np.ndarray:
    """Ground-truth masks as bool (N, H*W) for maps (N, C, H, W): (N, H, W) or (N, 1, H, W),
    bool or numbers that are all 0 or 1.

    >>> check_masks(np.ones((1, 1, 2, 2), np.float32), np.zeros((1, 3, 2, 2))).tolist()
    [[True, True, True, True]]
    """
    array = np.asarray(masks)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    n, _, h, w = maps.shape
    if array.shape != (n, h, w):
        raise InputError(f"masks: expected (N, H, W) or (N, 1, H, W) = ({n}, {h}, {w}) like the maps, "
                         f"got {np.shape(masks)}")
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.number) or not np.isin(array, (0, 1)).all():
            raise InputError("masks: expected bool or 0/1 values")
        array = array == 1
    return array.reshape(n, h * w)


def _disk(tolerance: float) -> np.ndarray:
    r = int(np.floor(tolerance))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    return (dy ** 2 + dx ** 2 <= tolerance ** 2)[None]


def pointing_game(attributions: Any, masks: Any, tolerance: float = 0.0, reduce: str = "sum") -> MetricResult:
    """Pointing game: 1 if the map's maximum point lies within ``tolerance`` pixels (Euclidean) of
    the mask, else 0.

    Zhang et al. used a 15-pixel tolerance at 224x224; the default 0 suits small images (scale
    15/224 of the side otherwise). Where several pixels share the maximum, the score is the
    fraction of them that hit (the expected hit under a random tie-break), so it stays 0/1 for a
    unique maximum. A constant map or an empty mask scores NaN. ``reduce``: see the module doc.

    >>> a = np.zeros((2, 4, 4)); a[0, 1, 1] = 3.0; a[1, 3, 3] = 3.0
    >>> m = np.zeros((2, 4, 4), bool); m[:, :2, :2] = True
    >>> pointing_game(a, m).per_sample.tolist(), pointing_game(a, m, tolerance=2.9).per_sample.tolist()
    ([1.0, 0.0], [1.0, 1.0])
    """
    maps = check_maps(attributions)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)) \
            or not 0 <= float(tolerance) <= max(maps.shape[2:]):
        raise InputError(f"tolerance: expected pixels in [0, {max(maps.shape[2:])}], got {tolerance!r}")
    mask = check_masks(masks, maps)
    n, _, h, w = maps.shape
    hit_zone = ndimage.binary_dilation(mask.reshape(n, h, w), _disk(float(tolerance))).reshape(n, -1)
    saliency = pixel_saliency(maps, reduce)
    top = saliency == saliency.max(1, keepdims=True)
    score = (top & hit_zone).sum(1) / top.sum(1)
    undefined = ~mask.any(1) | (saliency.min(1) == saliency.max(1))
    return MetricResult("pointing_game", np.where(undefined, np.nan, score),
                        details={"tolerance": float(tolerance), "reduce": reduce})


def _binarize(saliency: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    """Kept pixels (N, P) and NaN-rows: the top ``threshold`` fraction (ties at the cut kept),
    or pixels >= threshold * max (rows without a positive maximum are undefined)."""
    if mode == "top_fraction":
        k = max(1, int(round(threshold * saliency.shape[1])))
        cut = -np.partition(-saliency, k - 1, axis=1)[:, k - 1:k]
        return saliency >= cut
    peak = saliency.max(1, keepdims=True)
    return (saliency >= threshold * peak) & (peak > 0)


def _check_thresholds(thresholds: Sequence[float] | None, mode: str) -> np.ndarray:
    if mode not in DEFAULT_THRESHOLDS:
        raise InputError(f"mode: expected 'top_fraction' or 'relative_max', got {mode!r}")
    try:
        values = np.asarray(DEFAULT_THRESHOLDS[mode] if thresholds is None else thresholds, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.ndim != 1 or len(values) == 0 or not np.all((values > 0) & (values <= 1)):
        raise InputError(f"thresholds: expected a non-empty sequence of numbers in (0, 1], got {thresholds!r}")
    return values


def mask_iou(attributions: Any, masks: Any, thresholds: Sequence[float] | None = None,
             mode: str = "top_fraction", reduce: str = "sum") -> MetricResult:
    """IoU between the binarized map and the mask, one value per threshold.

    ``mode="top_fraction"``: keep the top ``t`` fraction of the pixels (``round(t * H * W)``, at
    least 1; pixels tied with the last kept value are kept too), whatever their sign.
    ``mode="relative_max"``: keep pixels with saliency ``>= t * max``; a map whose maximum is not
    positive has nothing to keep and is NaN. ``thresholds`` default: ``DEFAULT_THRESHOLDS[mode]``.
    Result: ``curve`` (N, T) holds the IoU per threshold over ``steps`` = the thresholds, and
    ``per_sample`` its mean over the defined thresholds (the normalised area under that curve).
    An empty mask is NaN.

    >>> a = np.zeros((1, 4, 4)); a[0, :2, :2] = [[4.0, 3.0], [2.0, 1.0]]
    >>> m = np.zeros((1, 4, 4), bool); m[0, :2, :2] = True
    >>> r = mask_iou(a, m, thresholds=(0.125, 0.25))
    >>> r.curve.tolist(), r.per_sample.tolist()
    ([[0.5, 1.0]], [0.75])
    >>> mask_iou(a, m, thresholds=(0.5,), mode="relative_max").curve.tolist()
    [[0.75]]
    """
    steps = _check_thresholds(thresholds, mode)
    maps = check_maps(attributions)
    mask = check_masks(masks, maps)
    saliency = pixel_saliency(maps, reduce)
    curve = np.empty((len(maps), len(steps)))
    for j, threshold in enumerate(steps):
        kept = _binarize(saliency, float(threshold), mode)
        with np.errstate(invalid="ignore", divide="ignore"):
            curve[:, j] = (kept & mask).sum(1) / (kept | mask).sum(1)
        curve[~kept.any(1), j] = np.nan
    curve[~mask.any(1)] = np.nan
    defined = np.isfinite(curve).any(1)
    per_sample = np.full(len(maps), np.nan)
    per_sample[defined] = np.nanmean(curve[defined], axis=1)
    return MetricResult("mask_iou", per_sample, curve=curve, steps=steps, details={"mode": mode, "reduce": reduce})


def energy_in_mask(attributions: Any, masks: Any, reduce: str = "sum") -> MetricResult:
    """Energy-based pointing game: the fraction of the positive saliency that falls inside the mask.

    Negative saliency is dropped (``max(s, 0)``); with ``reduce="abs"`` every pixel counts. A map
    without positive saliency or an empty mask is NaN. ``details["chance"]`` is the mean mask
    area fraction over the defined samples: what a uniform map scores.

    >>> a = np.zeros((1, 2, 2)); a[0] = [[3.0, -5.0], [1.0, 0.0]]
    >>> m = np.array([[[True, True], [False, False]]])
    >>> r = energy_in_mask(a, m)
    >>> r.per_sample.tolist(), r.details["chance"]
    ([0.75], 0.5)
    """
    maps = check_maps(attributions)
    mask = check_masks(masks, maps)
    energy = np.clip(pixel_saliency(maps, reduce), 0.0, None)
    total = energy.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = (energy * mask).sum(1) / total
    defined = (total > 0) & mask.any(1)
    chance = float(mask[defined].mean()) if defined.any() else float("nan")
    return MetricResult("energy_in_mask", np.where(defined, score, np.nan), details={"reduce": reduce, "chance": chance})


# --- bounding-box localization (Zhou et al. 2016 / Fong & Vedaldi 2017, paper 004's Table 2) ------

BOX_ALPHAS = tuple(np.round(np.arange(0.0, 1.0, 0.05), 2))
"""Paper 004's grid of thresholds ``t = alpha * max`` (alpha in 0:0.05:0.95)."""


def mask_boxes(masks: Any) -> np.ndarray:
    """The tight bounding box ``(top, left, bottom, right)`` (inclusive rows / columns) of each mask;
    an empty mask gives ``(-1, -1, -1, -1)``.

    >>> m = np.zeros((1, 5, 5), bool); m[0, 1:3, 2:5] = True
    >>> mask_boxes(m).tolist()
    [[1, 2, 2, 4]]
    """
    array = np.asarray(masks)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise InputError(f"masks: expected (N, H, W) or (N, 1, H, W), got shape {np.shape(masks)}")
    boxes = np.full((len(array), 4), -1, np.int64)
    for i, mask in enumerate(array.astype(bool)):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            boxes[i] = rows[0], cols[0], rows[-1], cols[-1]
    return boxes


def saliency_boxes(attributions: Any, alpha: float, reduce: str = "sum") -> np.ndarray:
    """One box per map: pixels with saliency ``>= alpha * max`` are kept, and the box is the tight box
    of their largest 8-connected component (CAM's rule, Zhou et al. 2016). A map whose maximum is not
    positive keeps nothing: ``(-1, -1, -1, -1)``.

    >>> a = np.zeros((1, 6, 6)); a[0, 1:3, 1:3] = 1.0; a[0, 5, 5] = 0.9
    >>> saliency_boxes(a, 0.5).tolist()
    [[1, 1, 2, 2]]
    """
    maps = check_maps(attributions)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) or not 0 <= alpha < 1:
        raise InputError(f"alpha: expected a number in [0, 1), got {alpha!r}")
    n, _, h, w = maps.shape
    saliency = pixel_saliency(maps, reduce).reshape(n, h, w)
    kept = _binarize(saliency.reshape(n, -1), float(alpha), "relative_max").reshape(n, h, w)
    boxes = np.full((n, 4), -1, np.int64)
    for i in range(n):
        labels, count = ndimage.label(kept[i], structure=np.ones((3, 3)))
        if count:
            largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))))
            boxes[i] = mask_boxes((labels == largest)[None])[0]
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of pairs of inclusive pixel boxes ``(top, left, bottom, right)``; 0 where either box is empty.

    >>> box_iou(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 3, 1]])).tolist()
    [0.5]
    """
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    top, left = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    bottom, right = np.minimum(a[:, 2], b[:, 2]), np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(bottom - top + 1, 0, None) * np.clip(right - left + 1, 0, None)

    def area(box: np.ndarray) -> np.ndarray:
        return (box[:, 2] - box[:, 0] + 1) * (box[:, 3] - box[:, 1] + 1)

    valid = (a[:, 0] >= 0) & (b[:, 0] >= 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, inter / (area(a) + area(b) - inter), 0.0)


def box_localization_error(attributions: Any, masks: Any, *, held_out: Any = None, held_out_masks: Any = None,
                           alphas: Sequence[float] = BOX_ALPHAS, iou_threshold: float = 0.5,
                           reduce: str = "sum") -> MetricResult:
    """Object-localization error (paper 004's Table 2, after Fong & Vedaldi): a map's box (see
    :func:`saliency_boxes`) misses when its IoU with the mask's tight box is below ``iou_threshold``.
    ``alpha`` is chosen as the one with the lowest error on the held-out maps and masks (when given;
    otherwise on the evaluated maps themselves, which flatters the method: ``details["alpha_from"]``
    says which). ``per_sample`` is 1 for a miss and 0 for a hit at that alpha, so ``mean`` is the
    error rate; ``curve`` (N, A) holds the misses at every alpha; ``details`` the chosen alpha and
    the error of the whole-image box (the paper's "baseline" column).

    >>> a = np.zeros((2, 8, 8)); a[:, 2:5, 2:5] = 1.0; a[:, 0, 7] = 0.6
    >>> m = np.zeros((2, 8, 8), bool); m[:, 2:5, 2:5] = True
    >>> r = box_localization_error(a, m, alphas=(0.5, 0.7))
    >>> r.mean, r.details["alpha"]
    (0.0, 0.5)
    """
    if not 0 < iou_threshold <= 1:
        raise InputError(f"iou_threshold: expected a number in (0, 1], got {iou_threshold!r}")
    steps = np.asarray(alphas, dtype=np.float64)
    if steps.ndim != 1 or len(steps) == 0 or not np.all((steps >= 0) & (steps < 1)):
        raise InputError(f"alphas: expected a non-empty sequence of numbers in [0, 1), got {alphas!r}")
    maps = check_maps(attributions)
    truth = mask_boxes(check_masks(masks, maps).reshape(maps.shape[0], *maps.shape[2:]))

    def misses(values: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return np.stack([box_iou(saliency_boxes(values, float(a), reduce), boxes) < iou_threshold for a in steps], 1)

    curve = misses(maps, truth).astype(np.float64)
    if held_out is not None:
        if held_out_masks is None:
            raise InputError("held_out_masks: needed with held_out maps")
        held_maps = check_maps(held_out, "held_out")
        held_truth = mask_boxes(check_masks(held_out_masks, held_maps).reshape(held_maps.shape[0], *held_maps.shape[2:]))
        choice, source = int(np.argmin(misses(held_maps, held_truth).mean(0))), "held_out"
    else:
        choice, source = int(np.argmin(curve.mean(0))), "evaluated"
    h, w = maps.shape[2:]
    whole = np.tile(np.array([[0, 0, h - 1, w - 1]]), (len(maps), 1))
    per_sample = curve[:, choice].copy()
    per_sample[truth[:, 0] < 0] = np.nan  # an empty mask has no box to find
    whole_error = float(np.mean(box_iou(whole, truth)[truth[:, 0] >= 0] < iou_threshold))
    return MetricResult("box_localization_error", per_sample, curve=curve, steps=steps, details={
        "alpha": float(steps[choice]), "alpha_from": source, "iou_threshold": float(iou_threshold),
        "whole_image_error": whole_error, "reduce": reduce})
