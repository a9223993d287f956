"""What both torch backends settle before they run a model: one input's shape, the pixel range and
the GANMEX generator, from the options given and the checkpoint's metadata."""

from __future__ import annotations

from typing import Any

from torch import nn

from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel
from xaisdk.models.ganmex_baseline import resolve_generator

__all__ = ["model_generator", "model_input_shape", "model_value_range"]


def model_input_shape(given: tuple[int, ...] | None, meta: Classifier | None) -> tuple[int, ...]:
    """One input's shape: ``given``, else the checkpoint's; both given must agree.

    >>> model_input_shape((1, 28, 28), None)
    (1, 28, 28)
    """
    if given is None:
        if meta is None:
            raise InputError("input_shape: required for a plain torch module, e.g. input_shape=(1, 28, 28)")
        return tuple(int(v) for v in meta.input_shape)
    shape = tuple(int(v) for v in given)
    if not shape or min(shape) < 1:
        raise InputError(f"input_shape: expected positive sizes such as (C, H, W), got {given!r}")
    if meta is not None and shape != tuple(meta.input_shape):
        raise InputError(f"input_shape: {shape} differs from the checkpoint's {tuple(meta.input_shape)}")
    return shape


def model_value_range(given: tuple[float, float] | None, meta: Classifier | None) -> tuple[float, float]:
    """The pixel range: ``given``, else the checkpoint's, else (0, 1).

    >>> model_value_range(None, None)
    (0.0, 1.0)
    """
    value = given if given is not None else (meta.value_range if meta is not None else (0.0, 1.0))
    low, high = (float(v) for v in value)
    if not low < high:
        raise InputError(f"value_range: expected (low, high) with low < high, got {value!r}")
    return low, high


def model_generator(generator: Any, model: Any, input_shape: tuple[int, ...]) -> nn.Module | None:
    """The generator module: ``generator`` when given, else the GANMEX model's own, else None."""
    if generator is None:
        if not isinstance(model, GanmexModel):
            return None
        generator = model
    module = resolve_generator(generator)
    config = getattr(module, "config", None)
    if config is not None and tuple(config.input_shape) != input_shape:
        raise InputError(f"generator: makes {tuple(config.input_shape)} images, the classifier takes {input_shape}")
    module.eval()
    return module
