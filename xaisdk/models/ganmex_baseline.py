"""Generator-made baselines: GANMEX's closest realistic image of the target class, ``G(x, c_t)``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch import nn

from xaisdk.errors import InputError
from xaisdk.models.ganmex import GanmexModel, generate_baselines, load_ganmex

GENERATOR_NAMES = ("ganmex",)


def resolve_generator(generator: Any) -> nn.Module:
    """The ``G(x, target)`` module behind a GANMEX model, a path to ``ganmex.pt``, or a module itself."""
    if isinstance(generator, GanmexModel):
        return generator.generator
    if isinstance(generator, (str, os.PathLike)):
        return load_ganmex(generator).generator
    if isinstance(generator, nn.Module):
        devices = {p.device.type for p in generator.parameters()}
        if devices - {"cpu"}:
            raise InputError("generator: its weights are not on the CPU; pass generator.cpu()")
        return generator
    raise InputError("generator: expected a GanmexModel (xaisdk.load_ganmex), a path to a GANMEX checkpoint or a "
                     f"torch module G(x, target); got {type(generator).__name__}")


class GanmexBaseline:
    """Baseline callable ``(x, target) -> G(x, target)``; pass it (or ``baseline="ganmex"``) to attribution methods.

    >>> from xaisdk.data import load_digits
    >>> from xaisdk.models import load_shipped_ganmex
    >>> baseline = GanmexBaseline(load_shipped_ganmex())
    >>> baseline(load_digits().test.x[:3], np.array([1, 2, 3])).shape
    (3, 1, 28, 28)
    """

    def __init__(self, generator: Any, batch_size: int = 256) -> None:
        self.generator = resolve_generator(generator)
        self.batch_size = int(batch_size)

    def __call__(self, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        if target is None:
            raise InputError("baseline 'ganmex' is the input moved into the target class: pass target= "
                             "(the class to explain against)")
        config = getattr(self.generator, "config", None)
        if config is not None and tuple(np.shape(x)[1:]) != tuple(config.input_shape):
            raise InputError(f"baseline 'ganmex': the generator makes {tuple(config.input_shape)} images, "
                             f"the inputs are {tuple(np.shape(x)[1:])}")
        return generate_baselines(self.generator, x, np.asarray(target, dtype=np.int64), self.batch_size)


def generator_for(spec: str, model: Any, generator: Any) -> GanmexBaseline:
    """The baseline named ``spec`` ("ganmex") from ``generator``, or from ``model`` when it is a GANMEX model."""
    source = generator if generator is not None else model
    if not isinstance(source, GanmexModel) and generator is None:
        raise InputError(f"baseline {spec!r} needs a generator: pass the GANMEX model as the model "
                         "(xaisdk.load_ganmex('ganmex.pt') or xaisdk.load_shipped_ganmex()), or generator=...")
    return GanmexBaseline(source)


def is_generator_name(spec: Any) -> bool:
    return isinstance(spec, str) and spec.lower() in GENERATOR_NAMES
