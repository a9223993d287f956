"""Argument validators shared by the data loaders; each raises InputError naming the argument."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np

from xaisdk.errors import InputError


def describe(value: object) -> str:
    """A short description of `value` for error messages (arrays can be huge)."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value: object, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return `value` as an int, or raise InputError if it is not an integer in [minimum, maximum].

    >>> check_int("n", 3, minimum=1)
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name}: expected an integer, got {describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name}: expected an integer <= {maximum}, got {value}")
    return value


def check_seed(value: object, name: str = "seed") -> int:
    """Return a seed usable by numpy.random.default_rng (an integer >= 0).

    >>> check_seed(7)
    7
    """
    return check_int(name, value, minimum=0)


def check_real(name: str, value: object, *, low: float, high: float, open_low: bool = False,
               open_high: bool = False) -> float:
    """Return `value` as a float, or raise InputError if it is not a finite number in the given interval.

    >>> check_real("confounder", 0.5, low=0.0, high=1.0)
    0.5
    """
    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name}: expected a number in {interval}, got {describe(value)}")
    value = float(value)
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if not math.isfinite(value) or below or above:
        raise InputError(f"{name}: expected a number in {interval}, got {value}")
    return value


def check_fraction(value: object, name: str = "test_fraction") -> float:
    """Return a fraction strictly between 0 and 1.

    >>> check_fraction(0.2)
    0.2
    """
    return check_real(name, value, low=0.0, high=1.0, open_low=True, open_high=True)


def check_bool(name: str, value: object) -> bool:
    """Return `value` if it is a bool (numpy bools included).

    >>> check_bool("colors", True)
    True
    """
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {describe(value)}")
    return bool(value)


def check_names(name: str, value: object, *, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    """Return a tuple of distinct, non-empty strings (optionally restricted to `allowed`).

    >>> check_names("objects", ["circle", "square"], allowed=("circle", "square", "triangle"))
    ('circle', 'square')
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise InputError(f"{name}: expected a list of names, got {describe(value)}")
    names = tuple(value)
    if not names:
        raise InputError(f"{name}: expected at least one name, got an empty list")
    for item in names:
        if not isinstance(item, str) or not item:
            raise InputError(f"{name}: expected non-empty strings, got {describe(item)}")
        if allowed is not None and item not in allowed:
            raise InputError(f"{name}: unknown name {item!r}; expected some of {', '.join(allowed)}")
    duplicates = sorted({item for item in names if names.count(item) > 1})
    if duplicates:
        raise InputError(f"{name}: names must be distinct, got {', '.join(map(repr, duplicates))} more than once")
    return tuple(str(item) for item in names)
