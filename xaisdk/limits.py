"""Resource caps: upper bounds on the size-like options of one request, so that no single call can take
a service down (memory, or hours of compute).

Every option that sets how much work a call does (path points, samples, optimisation steps, rows per
backend call, ...) goes through :func:`check_size`: a real integer (Python or numpy int; not bool,
float or str: nothing is converted silently) between a minimum and the cap of the :class:`Limits` in
force. The caps in force are :data:`DEFAULT_LIMITS` unless an :class:`~xaisdk.Explainer` built with
``limits=`` is running the call, or the caller raised them for a block of code with
``with Limits(...).applied():``. The caps are per request; memory does not grow with them beyond
the arrays a method returns (the loops run in fixed-size chunks).

Torch-free: imports numpy and :mod:`xaisdk.errors` only, so the serving core can use it.

>>> check_size(200, "n_steps")
200
>>> check_size(10_000, "n_steps")
Traceback (most recent call last):
...
xaisdk.errors.InputError: n_steps: 10000 is above the limit of 4096 per request; raise it with Explainer(..., limits=xaisdk.Limits(n_steps=10000)) or `with xaisdk.Limits(n_steps=10000).applied():`
>>> with Limits(n_steps=10_000).applied():
...     check_size(10_000, "n_steps")
10000
"""  # noqa: E501

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields

from xaisdk.data._checks import check_int
from xaisdk.errors import InputError

__all__ = ["DEFAULT_LIMITS", "GAUSS_LEGENDRE_MAX_NODES", "Limits", "check_size", "current_limits"]

# numpy's leggauss solves an n x n eigenproblem: 0.14 s and 9 MB at 1,024 nodes, 10 s and 134 MB at
# 4,096. 1,024 nodes integrate polynomials up to degree 2,047 exactly, far beyond what a ReLU network's
# piecewise path needs, so this bound of the "gausslegendre" rule does not follow Limits.n_steps upwards.
GAUSS_LEGENDRE_MAX_NODES = 1024


@dataclass(frozen=True)
class Limits:
    """The largest value each size-like option may take in one call (all positive integers).

    Defaults, chosen so that one request on a 224-px ImageNet model stays within minutes and a few GB:

    - ``n_steps=4096``: Integrated Gradients path points per input (default 200; Captum's 50). Past a
      few hundred steps the completeness error of a ReLU network no longer shrinks much; 4,096 steps
      of a ResNet-50 are ~4,096 backward passes per image.
    - ``n_samples=4096``: Expected Gradients draws and LIME perturbed images per input (defaults 200
      and 1,000, the LIME paper's).
    - ``steps=4096``: meaningful-perturbation optimisation steps (default 300, the paper's).
    - ``n_jitter=256``: meaningful-perturbation jittered copies per step.
    - ``n_segments=4096``: LIME superpixels per image.
    - ``n_baselines=1024``: DeepSHAP baselines per input (one backward pass each).
    - ``series_steps=256``: images of a Progressive Exaggeration series (``counterfactual(n_steps=)``;
      default 10); the generator has only ``n_bins`` (10) conditions, so longer walks repeat images,
      and the series is returned whole (256 images of 224 x 224 x 3 are 150 MB per input).
    - ``chunk_size=1024``: rows per backend call (``chunk_size`` of the drivers, ``batch_size`` of
      the torch methods); one chunk's activations are the peak memory of a call.

    >>> Limits(n_steps=20_000).n_steps, Limits().chunk_size
    (20000, 1024)
    >>> Limits(n_steps=0)
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: Limits.n_steps: expected an integer >= 1, got 0
    """

    n_steps: int = 4096
    n_samples: int = 4096
    steps: int = 4096
    n_jitter: int = 256
    n_segments: int = 4096
    n_baselines: int = 1024
    series_steps: int = 256
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        for field in fields(self):
            check_size(getattr(self, field.name), f"Limits.{field.name}", cap=math.inf)

    @contextmanager
    def applied(self) -> Iterator[Limits]:
        """Make these the caps in force for the calls inside the ``with`` block (this thread or task only).

        >>> with Limits(n_samples=8).applied():
        ...     current_limits().n_samples
        8
        >>> current_limits().n_samples
        4096
        """
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)


def current_limits() -> Limits:
    """The :class:`Limits` in force: the innermost ``Limits.applied()`` block's, else the defaults.

    >>> current_limits() == DEFAULT_LIMITS
    True
    """
    return _CURRENT.get()


def check_size(value: object, name: str, *, cap: str | float | None = None, minimum: int = 1) -> int:
    """``value`` as an int in ``[minimum, cap]``, else :class:`~xaisdk.InputError` naming ``name``.

    Only real integers pass (``int`` or a numpy integer; not ``bool``, ``float``, ``str``, NaN or
    inf). ``cap`` is the :class:`Limits` field that bounds ``value`` (default: the field called
    ``name``, if there is one, else no bound) or a number; the field's value in force is read from
    :func:`current_limits`, and the message says how to raise it.

    >>> import numpy as np
    >>> check_size(np.int64(3), "chunk_size")
    3
    >>> check_size(2.5, "n_steps")
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: n_steps: expected an integer, got 2.5
    >>> check_size(True, "n_samples")
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: n_samples: expected an integer, got True
    >>> check_size(1, "n_steps", minimum=2)
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: n_steps: expected an integer >= 2, got 1
    """
    number = check_int(name, value, minimum=minimum)
    field = name if cap is None else cap
    if isinstance(field, str):
        if field not in _FIELDS:
            return number
        bound = getattr(current_limits(), field)
        if number > bound:
            raised = f"xaisdk.Limits({field}={number})"
            raise InputError(f"{name}: {number} is above the limit of {bound} per request; raise it with "
                             f"Explainer(..., limits={raised}) or `with {raised}.applied():`")
    elif number > field:
        raise InputError(f"{name}: {number} is above the limit of {field:g}")
    return number


_FIELDS = frozenset(field.name for field in fields(Limits))
DEFAULT_LIMITS = Limits()
_CURRENT: ContextVar[Limits] = ContextVar("xaisdk_limits", default=DEFAULT_LIMITS)
