"""Seeded random hole masks for training and evaluating inpainters.

Three kinds, each made of random components added until the hole covers a coverage drawn uniformly
from ``coverage``:

* ``"box"``: axis-aligned rectangles, each side 15-55% of the image side;
* ``"brush"``: free-form brush strokes in the style of DeepFill v2 (Yu et al. 2019): random walks of
  4-12 vertices with alternating turns, drawn as round-capped lines 5-16% of the image side wide;
  lengths and widths scale with the image;
* ``"superpixel"``: a union of Voronoi cells of 8-40 random seeds, the kind of region LIME removes.

A component that would push the hole past the upper coverage bound is skipped; if the components
run out below the lower bound, pixels on the hole's border are added one by one, so every mask's
coverage lies inside ``coverage`` (to the pixel). Masks are float32 ``(N, 1, H, W)``, 1 = hole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from xaisdk.data._checks import check_int, check_names, check_seed, describe
from xaisdk.errors import InputError

__all__ = ["MASK_KINDS", "random_masks"]

MASK_KINDS = ("box", "brush", "superpixel")
_MAX_COMPONENTS = 64  # proposals per mask before topping up border pixels


def random_masks(n: int, height: int, width: int, *, kinds: Sequence[str] = MASK_KINDS,
                 coverage: tuple[float, float] = (0.05, 0.7), seed: int = 0) -> np.ndarray:
    """``n`` random binary hole masks, float32 ``(n, 1, height, width)``, 1 = hole.

    Each mask's kind is drawn uniformly from ``kinds`` (see :data:`MASK_KINDS`) and its hole
    fraction lies in ``coverage`` = (low, high). The same arguments give the same masks.

    >>> m = random_masks(4, 28, 28, seed=1)
    >>> m.shape, m.dtype, bool(((m == 0) | (m == 1)).all())
    ((4, 1, 28, 28), dtype('float32'), True)
    >>> cover = m.mean(axis=(1, 2, 3))
    >>> bool((cover >= 0.05).all() and (cover <= 0.7).all())
    True
    """
    n = check_int("n", n, minimum=1)
    height = check_int("height", height, minimum=4)
    width = check_int("width", width, minimum=4)
    kinds = check_names("kinds", kinds, allowed=MASK_KINDS)
    low_count, high_count = _coverage_counts(coverage, height * width)
    rng = np.random.default_rng(check_seed(seed))
    grid = np.stack(np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij"), -1)
    makers: dict[str, Callable[[np.random.Generator], Iterator[np.ndarray]]] = {
        "box": lambda r: _boxes(r, height, width),
        "brush": lambda r: _strokes(r, grid),
        "superpixel": lambda r: _cells(r, grid),
    }
    out = np.zeros((n, 1, height, width), np.float32)
    for i, kind in enumerate(rng.choice(len(kinds), size=n)):
        target = int(rng.integers(low_count, high_count + 1))
        out[i, 0] = _grow(rng, makers[kinds[kind]](rng), target, low_count, high_count)
    return out


def _coverage_counts(coverage: object, pixels: int) -> tuple[int, int]:
    """The range of hole pixel counts that ``coverage`` allows on an image of ``pixels`` pixels."""
    try:
        low, high = (float(v) for v in coverage)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"coverage: expected (low, high) fractions, got {describe(coverage)}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high <= 1):
        raise InputError(f"coverage: expected 0 < low <= high <= 1, got ({low}, {high})")
    low_count, high_count = math.ceil(low * pixels - 1e-9), math.floor(high * pixels + 1e-9)
    if low_count > high_count:
        raise InputError(f"coverage: ({low}, {high}) holds no whole number of the image's {pixels} pixels; widen it")
    return low_count, high_count


def _grow(rng: np.random.Generator, components: Iterator[np.ndarray], target: int, low: int, high: int) -> np.ndarray:
    """Union of components until ``target`` pixels (skipping any that pass ``high``), topped up to ``low``."""
    mask = None
    count = 0
    for _, part in zip(range(_MAX_COMPONENTS), components):
        grown = part if mask is None else mask | part
        grown_count = int(grown.sum())
        if grown_count > high:
            continue
        mask, count = grown, grown_count
        if count >= target:
            return mask
    if mask is None:
        mask = np.zeros_like(part)
    while count < low:  # dilate by randomly chosen border pixels, never past `low`
        border = _dilate(mask) & ~mask if count else np.ones_like(mask)
        candidates = np.flatnonzero(border)
        chosen = rng.choice(candidates, size=min(low - count, len(candidates)), replace=False)
        mask.flat[chosen] = True
        count += len(chosen)
    return mask


def _dilate(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _boxes(rng: np.random.Generator, height: int, width: int) -> Iterator[np.ndarray]:
    while True:
        h = max(1, round(rng.uniform(0.15, 0.55) * height))
        w = max(1, round(rng.uniform(0.15, 0.55) * width))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        box = np.zeros((height, width), bool)
        box[top:top + h, left:left + w] = True
        yield box


def _strokes(rng: np.random.Generator, grid: np.ndarray) -> Iterator[np.ndarray]:
    """DeepFill v2's free-form strokes, with its 256-pixel constants expressed as fractions of the image."""
    height, width = grid.shape[:2]
    side = min(height, width)
    radius = math.hypot(height, width) / 8  # mean segment length
    mean_angle, spread = 2 * math.pi / 5, 2 * math.pi / 15
    while True:
        vertices = int(rng.integers(4, 13))
        half_width = max(1.5, rng.uniform(0.05, 0.16) * side) / 2
        angles = rng.uniform(mean_angle - spread, mean_angle + spread, vertices - 1)
        angles[::2] = 2 * math.pi - angles[::2]  # turn left and right in turn
        lengths = np.clip(rng.normal(radius, radius / 2, vertices - 1), 0, 2 * radius)
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        points = [(y, x)]
        for angle, length in zip(angles, lengths):
            y = min(max(y + length * math.sin(angle), 0.0), height - 1.0)
            x = min(max(x + length * math.cos(angle), 0.0), width - 1.0)
            points.append((y, x))
        yield _squared_distance_to_polyline(grid, np.array(points)) <= half_width ** 2


def _squared_distance_to_polyline(grid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Squared distance of every pixel centre in ``grid`` (H, W, 2) to the polyline through ``points`` (K, 2)."""
    # one (segments, pixels) array per coordinate: several times faster than a trailing axis of 2
    rel_y = grid[..., 0].ravel() - points[:-1, :1]
    rel_x = grid[..., 1].ravel() - points[:-1, 1:]
    step_y, step_x = np.diff(points[:, :1], axis=0), np.diff(points[:, 1:], axis=0)
    t = np.clip((rel_y * step_y + rel_x * step_x) / np.maximum(step_y ** 2 + step_x ** 2, 1e-12), 0, 1)
    gap_y, gap_x = rel_y - t * step_y, rel_x - t * step_x
    return (gap_y * gap_y + gap_x * gap_x).min(0).reshape(grid.shape[:2])


def _cells(rng: np.random.Generator, grid: np.ndarray) -> Iterator[np.ndarray]:
    height, width = grid.shape[:2]
    k = int(rng.integers(8, 41))
    seeds = rng.uniform(0, 1, (k, 2)) * [height, width]
    label = ((grid[None] - seeds[:, None, None]) ** 2).sum(-1).argmin(0)
    for cell in rng.permutation(k):
        part = label == cell
        if part.any():
            yield part
