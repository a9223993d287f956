"""What every checkpoint loader checks before it builds a network, shared by the classifier, GANMEX,
ExplainGAN, Exaggeration and inpainter loaders.

A checkpoint is a file from somewhere else, so nothing in it may decide alone how much memory is
allocated. The order is:

1. each config field is checked for its type (an int is an int, not a bool, float or string; a value
   range is two finite numbers with low < high) and against the bounds of :mod:`xaisdk.input_files`;
2. the network is built on torch's ``meta`` device (:func:`meta_build`), which allocates no memory, to
   count its parameters (at most ``MAX_PARAMETERS``) and to compare its state dict with the file's:
   the same keys, the same shapes, only finite floating-point values (:func:`check_state_dict`);
3. only then is the real network built and the weights copied in (:func:`build_with_weights`).

Every refusal is an :class:`xaisdk.InputError`; :func:`in_file` puts the file's path in front.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from xaisdk.data._checks import check_bool, check_int, check_names, describe
from xaisdk.errors import InputError
from xaisdk.input_files import MAX_CHANNELS, MAX_CLASSES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_IN_CHANNELS, MAX_PARAMETERS

__all__ = [
    "build_with_weights",
    "check_state_dict",
    "config_from_dict",
    "in_file",
    "meta_build",
    "require_bool",
    "require_class_names",
    "require_dict",
    "require_image_shape",
    "require_int",
    "require_value_range",
    "require_width",
]

M = TypeVar("M", bound=nn.Module)


class _Validated(Protocol):
    def validate(self) -> None: ...


C = TypeVar("C", bound=_Validated)


@contextlib.contextmanager
def in_file(path: str | os.PathLike) -> Iterator[None]:
    """Put ``path`` in front of the message of an :class:`InputError` raised inside the block.

    >>> try:
    ...     with in_file("model.pt"):
    ...         require_int("generator config", "n_res", 10**6, 1, 64)
    ... except InputError as err:
    ...     print(err)
    model.pt: generator config: n_res: expected an integer <= 64, got 1000000
    """
    prefix = f"{os.fspath(path)}: "
    try:
        yield
    except InputError as err:
        if str(err).startswith(prefix):
            raise
        raise InputError(prefix + str(err)) from None


def config_from_dict(cls: type[C], data: object, where: str) -> C:
    """``cls(**data)`` for a config dataclass read from a file, then ``validate()``: ``data`` must be a dict,
    its ``value_range`` (default (0, 1)) two finite numbers, and unknown keys are refused.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Toy:
    ...     width: int
    ...     value_range: tuple = (0.0, 1.0)
    ...     def validate(self) -> None:
    ...         require_int("toy config", "width", self.width, 1, 8)
    >>> config_from_dict(Toy, {"width": 4, "value_range": [0, 255]}, "toy config")
    Toy(width=4, value_range=(0.0, 255.0))
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a dict, got {describe(data)}")
    data = dict(data)
    data["value_range"] = require_value_range(where, data.get("value_range", (0.0, 1.0)))
    try:
        config = cls(**data)
    except TypeError as err:  # an unknown or missing field
        raise InputError(f"{where}: {err}") from None
    config.validate()
    return config


def require_int(where: str, name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in [low, high]: Python or numpy integers only (no bool, float or string).

    >>> require_int("config", "hidden", 256, 1, 65536)
    256
    """
    return check_int(f"{where}: {name}", value, minimum=low, maximum=high)


def require_bool(where: str, name: str, value: object) -> bool:
    """``value`` if it is True or False (not a string such as ``"False"``, not 0/1).

    >>> require_bool("config", "input_skip", True)
    True
    """
    return check_bool(f"{where}: {name}", value)


def require_dict(where: str, name: str, value: object) -> dict[str, Any]:
    """A copy of ``value`` if it is a dict (checkpoints store ``metadata``, ``data``, ``training`` so).

    >>> require_dict("classifier checkpoint", "metadata", {"seed": 0})
    {'seed': 0}
    """
    if not isinstance(value, dict):
        raise InputError(f"{where}: {name}: expected a dict, got {describe(value)}")
    return dict(value)


def require_value_range(where: str, value: object) -> tuple[float, float]:
    """``(low, high)`` as floats: two real numbers (not strings or bools), finite, low < high, finite span.

    >>> require_value_range("config", [0, 1])
    (0.0, 1.0)
    >>> require_value_range("config", ["0", "1"])
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: config: value_range: expected two finite numbers (low, high) with low < high, got ['0', '1']
    """
    pair = tuple(value) if isinstance(value, (list, tuple)) else ()
    numeric = len(pair) == 2 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair)
    low, high = (float(pair[0]), float(pair[1])) if numeric else (math.nan, math.nan)
    if not (math.isfinite(low) and math.isfinite(high) and low < high and math.isfinite(high - low)):
        raise InputError(f"{where}: value_range: expected two finite numbers (low, high) with low < high, "
                         f"got {describe(value)}")
    return low, high


def require_image_shape(where: str, channels: object, height: object, width: object) -> tuple[int, int, int]:
    """``(C, H, W)`` as ints within ``MAX_IN_CHANNELS``, ``MAX_IMAGE_SIDE`` and ``MAX_IMAGE_PIXELS``.

    >>> require_image_shape("config", 3, 224, 224)
    (3, 224, 224)
    """
    c = require_int(where, "channels", channels, 1, MAX_IN_CHANNELS)
    h = require_int(where, "height", height, 1, MAX_IMAGE_SIDE)
    w = require_int(where, "width", width, 1, MAX_IMAGE_SIDE)
    if h * w > MAX_IMAGE_PIXELS:
        raise InputError(f"{where}: {h} x {w} = {h * w} pixels is above the limit of {MAX_IMAGE_PIXELS} pixels")
    return c, h, w


def require_input_shape(where: str, value: object) -> tuple[int, int, int]:
    """A (C, H, W) list or tuple of ints, checked by :func:`require_image_shape`.

    >>> require_input_shape("checkpoint", [1, 28, 28])
    (1, 28, 28)
    """
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise InputError(f"{where}: input_shape: expected (C, H, W), got {describe(value)}")
    return require_image_shape(f"{where}: input_shape", *value)


def require_width(where: str, name: str, base: object, doublings: int = 0) -> int:
    """``base`` as an int >= 1 whose ``base * 2**doublings`` (the widest layer) is at most ``MAX_CHANNELS``.

    >>> require_width("generator config", "base_channels", 32, 2)
    32
    """
    value = require_int(where, name, base, 1, MAX_CHANNELS)
    if value * 2**doublings > MAX_CHANNELS:
        raise InputError(f"{where}: {name}={value} doubled {doublings} times gives {value * 2**doublings} channels, "
                         f"above the limit of {MAX_CHANNELS}")
    return value


def require_class_names(where: str, value: object) -> tuple[str, ...]:
    """Distinct non-empty strings, at most ``MAX_CLASSES`` of them.

    >>> require_class_names("checkpoint", ["cat", "dog"])
    ('cat', 'dog')
    """
    names = check_names(f"{where}: class_names", value)
    if len(names) > MAX_CLASSES:
        raise InputError(f"{where}: class_names: {len(names)} classes, above the limit of {MAX_CLASSES}")
    return names


def meta_build(build: Callable[[], M], what: str, max_parameters: int = MAX_PARAMETERS) -> M:
    """Run ``build()`` on the meta device (no memory allocated) and refuse more than ``max_parameters``.

    Returns the skeleton in eval mode: its state dict has the real keys and shapes, and it can run a
    forward pass on meta tensors to learn output shapes.

    >>> meta_build(lambda: nn.Linear(3, 2), "probe").weight.device.type
    'meta'
    >>> try:
    ...     meta_build(lambda: nn.Linear(100_000, 100_000), "layer")
    ... except InputError as err:
    ...     print(err)
    layer: the config asks for 10,000,100,000 parameters, above the limit of 500,000,000
    """
    try:
        with torch.device("meta"):
            skeleton = build()
    except InputError:
        raise
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{what}: cannot build from its config: {err}") from None
    count = sum(t.numel() for t in skeleton.state_dict().values())
    if count > max_parameters:
        raise InputError(f"{what}: the config asks for {count:,} parameters, above the limit of {max_parameters:,}")
    return skeleton.eval()


def check_state_dict(skeleton: nn.Module, state: object, what: str) -> dict[str, torch.Tensor]:
    """Refuse ``state`` unless it has exactly ``skeleton``'s keys and shapes, dense tensors, and only finite floats.

    >>> net = nn.Linear(2, 1)
    >>> bad = {"weight": torch.tensor([[1.0, float("nan")]]), "bias": torch.zeros(1)}
    >>> try:
    ...     check_state_dict(meta_build(lambda: nn.Linear(2, 1), "probe"), bad, "probe")
    ... except InputError as err:
    ...     print(err)
    probe weights: 'weight' holds 1 non-finite value (NaN or infinite); the file is damaged or training diverged
    """
    if not isinstance(state, dict):
        raise InputError(f"{what} weights: expected a dict of tensors, got {describe(state)}")
    expected = skeleton.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{label} {_few(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise InputError(f"{what} weights do not fit its config: {'; '.join(parts)}")
    for key, reference in expected.items():
        _check_tensor(state[key], key, tuple(reference.shape), what)
    return state  # type: ignore[return-value]


def _few(keys: list[str]) -> str:
    return ", ".join(map(repr, keys[:3])) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _check_tensor(value: object, key: str, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided or value.device.type == "meta":
        raise InputError(f"{what} weights: {key!r} is {describe(value)}, not a dense tensor")
    if tuple(value.shape) != shape:
        raise InputError(f"{what} weights do not fit its config: {key!r} has shape {tuple(value.shape)}, "
                         f"the config needs {shape}")
    if value.is_complex():
        value = torch.view_as_real(value)
    if value.is_floating_point() and value.numel() and not _all_finite(value):
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise InputError(f"{what} weights: {key!r} holds {bad} non-finite value{'s' if bad > 1 else ''} "
                             "(NaN or infinite); the file is damaged or training diverged")


def _all_finite(value: torch.Tensor) -> bool:
    """One pass without a tensor-sized temporary: NaN propagates through min/max, and inf is the max or min."""
    low, high = torch.aminmax(value.detach())
    return bool(torch.isfinite(low) and torch.isfinite(high))


def build_with_weights(build: Callable[[], M], state: object, what: str, skeleton: nn.Module | None = None) -> M:
    """Build the network ``build()`` makes and load ``state`` into it, after :func:`meta_build` and
    :func:`check_state_dict` (pass ``skeleton`` when it was built already). Returned in eval mode.

    >>> net = nn.Linear(2, 1)
    >>> copy = build_with_weights(lambda: nn.Linear(2, 1), net.state_dict(), "probe")
    >>> bool(torch.equal(copy.weight, net.weight))
    True
    """
    skeleton = skeleton if skeleton is not None else meta_build(build, what)
    checked = check_state_dict(skeleton, state, what)
    module = build()
    try:
        module.load_state_dict(checked)
    except RuntimeError as err:  # e.g. a dtype torch cannot copy into the parameter
        raise InputError(f"{what} weights do not fit its config: {str(err).strip().splitlines()[0]}") from None
    return module.eval()
