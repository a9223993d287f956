"""Sliding patch (Zeiler & Fergus 2014; SP and SP-G of Agarwal & Nguyen, Sec. 3.3), against a Backend.

A patch slides over the image; at each position the patch is removed (gray, zero, blur, noise, or
inpainted: SP-G) and the attribution of that position is the score drop ``s(x) - s(x with the
patch removed)``. Positions are the valid ones only (no padding): with a 224-pixel image, a 29-pixel
patch and stride 3 the grid is 66 x 66, as in the paper. The grid is then brought to the input size
by bilinear interpolation **anchored at the patch centres**: the value of a position sits at the
centre of its patch, pixels between centres are interpolated bilinearly, and pixels beyond the
outermost centres take the nearest centre's value. (A plain resize of the 66 x 66 grid to 224 x 224
would stretch the grid over the whole image and shift every value away from the patch it measured,
by up to half a patch at the borders.)

This module imports numpy only (and the inpainter's own dependencies for ``filler="inpaint"``).

>>> import numpy as np
>>> from xaisdk.methods.drivers import _LinearBackend
>>> from xaisdk.runtime.backend import class_weights
>>> backend = _LinearBackend(np.ones((2, 16)), input_shape=(1, 4, 4))   # two identical logits
>>> x = np.zeros((1, 1, 4, 4), np.float32); x[0, 0, 0, 0] = 1
>>> attr = sliding_patch(backend, x, class_weights([0], None, 2), patch=2, filler="zero", output="logits")
>>> attr[0, 0].tolist()   # only the top-left patch (centre 0.5, 0.5) covers it
[[1.0, 0.5, 0.0, 0.0], [0.5, 0.25, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
"""

from __future__ import annotations

import numpy as np

from xaisdk.errors import InputError
from xaisdk.methods.drivers import _chunk_size, _images, _weights
from xaisdk.methods.empty_maps import check_maps
from xaisdk.methods.removal import Remover, Score, check_positive_int, input_scores, removal_scores
from xaisdk.runtime.backend import Backend
from xaisdk.runtime.inpainting import Inpainter

__all__ = ["centred_upsample", "patch_starts", "sliding_patch"]

PATCH = 5
"""Default patch side for 28-32 pixel images (see :func:`sliding_patch`)."""


def _pair(value: object, name: str) -> tuple[int, int]:
    items = value if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise InputError(f"{name}: expected a positive int or (height, width), got {value!r}")
    return check_positive_int(items[0], name), check_positive_int(items[1], name)


def patch_starts(size: int, patch: int, stride: int) -> np.ndarray:
    """First pixel of every valid patch position along an axis of ``size`` pixels (no padding).

    >>> patch_starts(224, 29, 3).shape, patch_starts(28, 5, 1)[[0, -1]].tolist()
    ((66,), [0, 23])
    """
    return np.arange(0, size - patch + 1, stride)


def _interpolation(centres: np.ndarray, size: int) -> np.ndarray:
    """(size, len(centres)) weights of linear interpolation between ``centres`` at pixels 0..size-1,
    constant beyond the first and last centre."""
    pixels = np.arange(size, dtype=np.float64)
    eye = np.eye(len(centres))
    return np.stack([np.interp(pixels, centres, eye[i]) for i in range(len(centres))], axis=1)


def centred_upsample(grid: np.ndarray, patch: int | tuple[int, int], stride: int | tuple[int, int],
                     size: tuple[int, int]) -> np.ndarray:
    """Grid values ``(N, Gh, Gw)`` of patch positions brought to images ``size = (H, W)`` (float32
    ``(N, H, W)``): each value sits at its patch's centre (``start + (patch - 1) / 2``), bilinear in
    between, constant beyond the outermost centres.

    >>> centred_upsample(np.array([[[0.0, 3.0]]]), patch=(1, 3), stride=3, size=(1, 6)).tolist()
    [[[0.0, 0.0, 1.0, 2.0, 3.0, 3.0]]]
    """
    (ph, pw), (sh, sw) = _pair(patch, "patch"), _pair(stride, "stride")
    height, width = size
    rows = _interpolation(patch_starts(height, ph, sh) + (ph - 1) / 2, height)
    cols = _interpolation(patch_starts(width, pw, sw) + (pw - 1) / 2, width)
    values = np.asarray(grid, np.float64)
    if values.ndim != 3 or values.shape[1:] != (rows.shape[1], cols.shape[1]):
        raise InputError(f"grid: expected shape (N, {rows.shape[1]}, {cols.shape[1]}) for patch {(ph, pw)}, stride "
                         f"{(sh, sw)} and size {size}, got {values.shape}")
    return np.einsum("hr,nrc,wc->nhw", rows, values, cols).astype(np.float32)


def sliding_patch(
    backend: Backend,
    x: np.ndarray,
    weights: np.ndarray,
    *,
    patch: int | tuple[int, int] = PATCH,
    stride: int | tuple[int, int] = 1,
    filler: str = "gray",
    inpainter: Inpainter | None = None,
    output: str = "probability",
    blur_sigma: float | None = None,
    chunk_size: int = 256,
    seed: int = 0,
    progress: bool = False,
    return_grid: bool = False,
    allow_empty: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Sliding-patch attribution maps, float32 ``(N, 1, H, W)`` (one value per pixel: the patch
    removes all channels), larger = the region supports the score more.

    ``A'_i = s(x) - s(x with patch i removed)`` for every valid patch position ``i`` (``patch`` and
    ``stride`` in pixels, an int or ``(height, width)``), then :func:`centred_upsample` to the input
    size (see the module docstring). ``s`` is the attributed score of
    :class:`~xaisdk.methods.removal.Score`: ``output="probability"`` (the paper's softmax
    probability; ``sigmoid(S_source - S_target)`` for one-vs-one ``weights``) or ``"logits"``.
    ``filler``: ``"gray"`` (Zeiler & Fergus), ``"zero"``, ``"blur"`` (Gaussian of ``blur_sigma``,
    default a tenth of the shorter side), ``"noise"`` (one seeded noise image per input) or
    ``"inpaint"`` (SP-G: ``inpainter`` fills each patch). The N x positions perturbed images go
    through the backend ``chunk_size`` at a time (inpainting too); ``progress`` shows a bar over the
    chunks. ``return_grid`` also returns the raw position grid ``(N, Gh, Gw)`` (float32).

    A confident classifier's probability rounds to 1 in float64 once its log-odds pass ~37 (between a
    digit and an unlike class, one-vs-one margins of 40-60 are common), so the drops are computed from
    the log-odds (:meth:`~xaisdk.methods.removal.Score.drop`): exact, if tiny (1e-20), instead of
    zeros. A map that is still all zero (no patch changes the score) raises
    :class:`~xaisdk.InputError` (see :mod:`xaisdk.methods.empty_maps`).

    Defaults are the paper's, scaled to 28-32 pixel images: its 29-pixel patch on 224 pixels is
    3.6 px at 28 px (4.1 px at 32); ``patch=5`` is the next odd size (so a patch has a centre pixel)
    and covers the 2-3 px strokes of the digits whole. The paper's stride 3 (1.3% of the side) is
    below one pixel at this size, and a dense stride costs only 24 x 24 = 576 forward passes per
    28-pixel image, so ``stride=1``.

    >>> from xaisdk.methods.drivers import _LinearBackend
    >>> from xaisdk.runtime.backend import class_weights
    >>> backend = _LinearBackend(np.eye(2, 9), input_shape=(1, 3, 3))   # class 0: pixel (0, 0); 1: (0, 1)
    >>> attr, grid = sliding_patch(backend, np.ones((1, 1, 3, 3), np.float32), class_weights([0], [1], 2),
    ...                            patch=2, filler="zero", output="logits", return_grid=True)
    >>> grid.tolist()   # one-vs-one: the left patches remove both pixels, the top-right one only class 1's
    [[[0.0, -1.0], [0.0, 0.0]]]
    """
    xs = _images(backend, x)
    w = _weights(backend, weights, len(xs))
    if xs.ndim != 4:
        raise InputError(f"x: sliding_patch needs images (N, C, H, W), got shape {xs.shape}")
    (ph, pw), (sh, sw) = _pair(patch, "patch"), _pair(stride, "stride")
    n, _, height, width = xs.shape
    if ph > height or pw > width:
        raise InputError(f"patch: {(ph, pw)} is larger than the images {(height, width)}")
    size = _chunk_size(chunk_size)
    score = Score(w, output)
    remover = Remover(xs, filler, inpainter, value_range=backend.value_range, blur_sigma=blur_sigma, seed=seed)
    rows, cols = patch_starts(height, ph, sh), patch_starts(width, pw, sw)
    row_pixels, col_pixels = np.arange(height), np.arange(width)

    def make_masks(sample: np.ndarray, index: np.ndarray) -> np.ndarray:
        top, left = rows[index // len(cols)], cols[index % len(cols)]
        in_rows = (row_pixels >= top[:, None]) & (row_pixels < top[:, None] + ph)
        in_cols = (col_pixels >= left[:, None]) & (col_pixels < left[:, None] + pw)
        return (in_rows[:, :, None] & in_cols[:, None, :]).astype(np.float32)[:, None]

    reference = input_scores(backend, xs, score, size, raw=True)
    removed = removal_scores(backend, remover, score, len(rows) * len(cols), make_masks, chunk_size=size,
                             progress=progress, desc="sliding patch", raw=True)
    grid = score.drop(reference[:, None], removed).reshape(n, len(rows), len(cols))
    check_maps(grid, "sliding_patch", allow_empty=allow_empty,
               why="no patch position changes the score (the filler equals the image there, or "
               "the model does not depend on these pixels)")
    maps = check_maps(centred_upsample(grid, (ph, pw), (sh, sw), (height, width))[:, None], "sliding_patch",
                      allow_empty=allow_empty, why="the score drops are below float32's range (about 1e-38); use output='logits'")
    return (maps, grid.astype(np.float32)) if return_grid else maps
