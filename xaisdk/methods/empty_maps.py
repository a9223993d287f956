"""Refusing empty attribution maps: an all-zero, constant or non-finite map is not an explanation.

Every method here returns a map in which some pixels matter more than others. When a map comes out
all zero, the method found nothing to attribute: the model does not depend on the input (or on the
pixels a baseline or filler changes), the baseline or filler equals the input, or an optimisation
settled on removing nothing. Returning those zeros would present "nothing" as an answer, so the
drivers and :meth:`xaisdk.Explainer.explain` raise :class:`~xaisdk.InputError` instead, naming the
image and the likely cause. A map with NaN or infinite values (non-finite model outputs) is refused
the same way. Meaningful perturbation also refuses a constant non-zero mask (everything removed):
it localises nothing either.

This module imports numpy only.

>>> import numpy as np
>>> maps = np.zeros((2, 1, 4, 4), np.float32); maps[0, 0, 1, 1] = 0.5
>>> try:
...     check_maps(maps, "sliding_patch", why="no patch changes the score")
... except ValueError as err:
...     print(err)
sliding_patch: the map of image 1 is all zero: no patch changes the score
"""

from __future__ import annotations

import numpy as np

from xaisdk.errors import InputError

__all__ = ["check_explanation", "check_maps", "empty_images"]

_BASELINE_METHODS = ("ig", "deeplift", "deepshap", "occlusion")
_REASONS = {
    "gradient": "the score's gradient is exactly zero at this input (the model is constant around it)",
    "grad_x_input": "the gradient times the input is zero everywhere (the model is constant around the input, or the "
                    "input is zero wherever the gradient is not)",
    "expected_gradients": "the score does not change between the input and the references drawn for it",
}
_BASELINE_REASON = ("the score is the same all the way from the baseline to the input: the model does not depend on the "
                    "pixels in which they differ; choose another baseline or check the model")


def empty_images(maps: np.ndarray, *, constant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the images (axis 0) whose maps are all zero (or constant when ``constant``) and of
    those with a NaN or infinite value.

    >>> maps = np.stack([np.ones((1, 2, 2)), np.zeros((1, 2, 2)), np.full((1, 2, 2), np.nan)])
    >>> [a.tolist() for a in empty_images(maps)], [a.tolist() for a in empty_images(maps, constant=True)]
    ([[1], [2]], [[0, 1], [2]])
    """
    flat = np.asarray(maps).reshape(len(maps), -1)
    finite = np.isfinite(flat).all(1)
    if constant:
        empty = finite & (np.ptp(flat, axis=1) == 0) if flat.shape[1] else finite
    else:
        empty = finite & ~flat.any(1)
    return np.flatnonzero(empty), np.flatnonzero(~finite)


def check_maps(maps: np.ndarray, method: str, *, why: str, constant: bool = False, allow_empty: bool = False) -> np.ndarray:
    """``maps`` (N, ...) unchanged, or :class:`~xaisdk.InputError` naming the first image whose map is
    all zero (constant, when ``constant``) with the cause ``why``, or the first one with a NaN or
    infinite value. ``allow_empty`` lets empty maps through (an evaluation that counts them, e.g. the
    removal study, where they score NaN); non-finite maps are refused either way.

    >>> check_maps(np.eye(2)[None], "lime", why="-").shape
    (1, 2, 2)
    """
    empty, broken = empty_images(maps, constant=constant)
    if len(broken):
        raise InputError(f"{method}: the map of image {int(broken[0])} has NaN or infinite values (the model's outputs "
                         "are not finite for this input or its perturbations)")
    if len(empty) and not allow_empty:
        i = int(empty[0])
        flat = np.asarray(maps)[i].ravel()
        what = "all zero" if not flat.any() else f"constant ({float(flat[0]):g} everywhere)"
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise InputError(f"{method}: the map of image {i}{more} is {what}: {why}")
    return maps


def check_explanation(maps: np.ndarray, method: str, x: np.ndarray, baseline: np.ndarray | None) -> np.ndarray:
    """:func:`check_maps` for :meth:`xaisdk.Explainer.explain`: ``maps`` (N, ...) of inputs ``x``
    (N, C, H, W) with ``baseline`` (N, C, H, W), a baseline set (N, M, C, H, W), or None; the cause
    named is the method's (an input equal to its baseline is named as such).

    >>> x = np.ones((1, 1, 2, 2), np.float32)
    >>> try:
    ...     check_explanation(np.zeros((1, 1, 2, 2)), "ig", x, x.copy())
    ... except ValueError as err:
    ...     print(str(err)[:111] + "...")
    ig: the map of image 0 is all zero: the baseline equals the input, so there is no score difference to attribute...
    """
    empty, _ = empty_images(maps)
    why = _REASONS.get(method, "the method found no pixel that changes the score")
    if method in _BASELINE_METHODS and baseline is not None:
        why = _BASELINE_REASON
        if len(empty):
            base = np.asarray(baseline)[empty[0]]
            base = base.reshape(-1, *np.shape(x)[1:])
            if all(np.array_equal(b, x[empty[0]]) for b in base):
                why = "the baseline equals the input, so there is no score difference to attribute; choose another baseline"
    return check_maps(maps, method, why=why)
