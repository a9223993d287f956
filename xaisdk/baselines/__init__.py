"""Baselines for path and reference attribution methods.

A baseline is given as a name (``"zero"``, ``"max"``, ``"blur"``, ``"noise"``), a number, an array
(one image or one per sample), or a callable ``(x, target) -> array`` such as :class:`MDTS`,
:class:`TargetClassSample`, :class:`Blur` or :class:`UniformNoise` with chosen parameters, or the
GANMEX generator's image :class:`xaisdk.models.GanmexBaseline`. Attribution functions also take
``baseline="ganmex"`` with a GANMEX model (see :func:`xaisdk.attribution.integrated_gradients`).
This package is part of the torch-free core: it imports numpy (and the C++ extension for MDTS).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xaisdk.baselines.data_driven import MDTS, TargetClassSample, nearest_by_l2
from xaisdk.baselines.simple import Blur, Constant, UniformNoise
from xaisdk.errors import InputError

NAMED: dict[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]] = {
    "zero": Constant(0.0),
    "max": Constant(1.0),
    "blur": Blur(),
    "noise": UniformNoise(),
}
NEEDS_DATA = {"mdts": "MDTS", "target_sample": "TargetClassSample"}

BaselineSpec = str | float | int | np.ndarray | Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
def make_baseline(spec: BaselineSpec, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    """The baseline array for inputs ``x`` (N, C, H, W) and per-sample ``target`` (or None).

    >>> float(make_baseline("zero", np.ones((2, 1, 3, 3), np.float32), None).sum())
    0.0
    >>> make_baseline(0.5, np.ones((1, 1, 2, 2), np.float32), None).ravel().tolist()
    [0.5, 0.5, 0.5, 0.5]
    """
    if isinstance(spec, str):
        key = spec.lower()
        if key in NAMED:
            return NAMED[key](x, target)
        if key == "ganmex":
            raise InputError("baseline 'ganmex' needs a generator: pass baseline=xaisdk.models.GanmexBaseline("
                             "gm) or, in attribution functions, the GANMEX model as the model or generator=gm")
        if key in NEEDS_DATA:
            raise InputError(
                f"baseline {spec!r} needs training data: pass baseline=xaisdk.baselines.{NEEDS_DATA[key]}(train_x, train_y)"
            )
        raise InputError(f"unknown baseline {spec!r}; named baselines: {', '.join(list(NAMED) + list(NEEDS_DATA) + ['ganmex'])}")
    if isinstance(spec, (int, float, np.ndarray)) or hasattr(spec, "__array__"):
        value = np.asarray(spec, dtype=np.float32)
    elif callable(spec):
        value = spec(x, target)
        if value is None:
            raise InputError("baseline callable returned None")
        value = np.asarray(value, dtype=np.float32)
    else:
        raise InputError(f"baseline: expected a name, number, array or callable, got {type(spec).__name__}")
    try:
        return np.broadcast_to(value, np.shape(x)).copy()
    except ValueError:
        raise InputError(
            f"baseline: shape {value.shape} does not match the inputs {np.shape(x)} "
            "(expected a scalar, one image, or one per sample)"
        ) from None


__all__ = [
    "MDTS",
    "NAMED",
    "Blur",
    "Constant",
    "TargetClassSample",
    "UniformNoise",
    "make_baseline",
    "nearest_by_l2",
]
