"""Checks of the trainers' config fields, with the messages the CLI prints, and reading a config back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np

from xaisdk.errors import InputError

__all__ = ["check_counts", "check_rates", "check_weights", "config_from_dict"]

C = TypeVar("C")


def check_counts(config: object, names: Iterable[str]) -> None:
    """Each named field (steps, sizes, cadences) is at least 1.

    >>> from types import SimpleNamespace
    >>> check_counts(SimpleNamespace(steps=0), ["steps"])
    Traceback (most recent call last):
    xaisdk.errors.InputError: steps must be >= 1, got 0
    """
    for name in names:
        if int(getattr(config, name)) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(config, name)}")


def check_rates(config: object, names: Iterable[str]) -> None:
    """Each named field (learning rates) is above 0.

    >>> from types import SimpleNamespace
    >>> check_rates(SimpleNamespace(lr=-1.0), ["lr"])
    Traceback (most recent call last):
    xaisdk.errors.InputError: lr must be > 0, got -1.0
    """
    for name in names:
        if not getattr(config, name) > 0:
            raise InputError(f"{name} must be > 0, got {getattr(config, name)}")


def check_weights(config: object, names: Iterable[str]) -> None:
    """Each named field (loss weights) is a finite number >= 0.

    >>> from types import SimpleNamespace
    >>> check_weights(SimpleNamespace(lambda_rec=float("nan")), ["lambda_rec"])
    Traceback (most recent call last):
    xaisdk.errors.InputError: lambda_rec must be a finite number >= 0, got nan
    """
    for name in names:
        value = getattr(config, name)
        if not np.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a finite number >= 0, got {value}")


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """``cls`` (a dataclass) from ``data``, ignoring keys it has no field for (a newer or older file's).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Config:
    ...     steps: int = 1
    >>> config_from_dict(Config, {"steps": 5, "gone": True})
    Config(steps=5)
    """
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})
