"""Progressive Exaggeration inference (Singla et al., ICLR 2020): a walk across the decision boundary.

One class against the rest: ``f(x) = softmax(logits(x))[target_class]`` of the model's classifier. The
explainer ``I_f(x, delta) = G(E(x), c_f(x, delta))`` conditions on the bin of ``f(x) + delta`` with [0, 1]
cut into ``n_bins`` bins. :meth:`Exaggeration.series` walks from ``f(x)`` to the centre of the far-end bin
(the last bin when ``f(x) < 0.5``, else the first) in ``n_steps`` equal steps of the desired output
(:func:`xaisdk.runtime.exaggeration_onnx.walk`); image 0 is ``I(x, 0)``. Networks run in eval mode, so the
conditional batch norms use their running statistics and each image's series is independent of its batch.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from xaisdk.errors import InputError
from xaisdk.models.exaggeration import (
    ExaggerationModel,
    bin_index,
    load_exaggeration,
    load_shipped_exaggeration,
    target_probability,
)
from xaisdk.runtime.exaggeration_onnx import ExaggerationSeries, check_series_inputs, walk

__all__ = ["Exaggeration", "ExaggerationSeries"]


class Exaggeration:
    """Series of counterfactuals from a trained :class:`ExaggerationModel`.

    >>> from xaisdk.data import load_digits
    >>> ex = Exaggeration.shipped("digits")
    >>> s = ex.series(load_digits().test.x[:2], n_steps=5)
    >>> s.images.shape, s.outputs.shape, s.targets.shape
    ((2, 5, 1, 28, 28), (2, 5), (2, 5))
    """

    def __init__(self, model: ExaggerationModel, batch_size: int = 256) -> None:
        if not isinstance(model, ExaggerationModel):
            raise InputError(f"model: expected an ExaggerationModel, got {type(model).__name__}")
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.net = model.net.eval()
        self.f_module = model.classifier.model.eval()
        self.batch_size = int(batch_size)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Exaggeration:
        """From a checkpoint written by ``train_exaggeration``."""
        return cls(load_exaggeration(path))

    @classmethod
    def shipped(cls, name: str = "digits") -> Exaggeration:
        """The shipped explainer (digits: the shipped digits classifier, class 8 against the rest)."""
        return cls(load_shipped_exaggeration(name))

    @property
    def target_class(self) -> int:
        return int(self.model.target_class)

    @property
    def n_bins(self) -> int:
        return int(self.model.n_bins)

    def _check(self, x: object, n_steps: object = 2, target_class: object = None) -> np.ndarray:
        return check_series_inputs(x, self.model.classifier.input_shape, n_steps, self.n_bins, target_class,
                                   self.target_class)

    @torch.no_grad()
    def f(self, x: np.ndarray) -> np.ndarray:
        """``f(x)``: the probability of the target class, (N,) float32.

        >>> from xaisdk.data import load_digits
        >>> Exaggeration.shipped().f(load_digits().test.x[:1]).shape
        (1,)
        """
        arr = self._check(x)
        out = [target_probability(self.f_module, torch.from_numpy(arr[s:s + self.batch_size]), self.target_class)
               for s in range(0, len(arr), self.batch_size)]
        return torch.cat(out).numpy().astype(np.float32)

    @torch.no_grad()
    def generate(self, x: np.ndarray, bins: np.ndarray) -> np.ndarray:
        """``G(E(x), bins)``: one image per input for the given bin of each (ints in [0, n_bins)).

        >>> from xaisdk.data import load_digits
        >>> Exaggeration.shipped().generate(load_digits().test.x[:2], np.array([0, 9])).shape
        (2, 1, 28, 28)
        """
        arr = self._check(x)
        b = np.asarray(bins)
        if b.shape != (len(arr),) or not np.issubdtype(b.dtype, np.integer) or b.min() < 0 or b.max() >= self.n_bins:
            raise InputError(f"bins: expected {len(arr)} integers in [0, {self.n_bins}), got {b.dtype} {b.shape}")
        bt = torch.from_numpy(b.astype(np.int64))
        out = [self.net(torch.from_numpy(arr[s:s + self.batch_size]),
                        F.one_hot(bt[s:s + self.batch_size], self.n_bins).float())
               for s in range(0, len(arr), self.batch_size)]
        return torch.cat(out).numpy().astype(np.float32)

    def explain(self, x: np.ndarray, delta: float | np.ndarray) -> np.ndarray:
        """``I_f(x, delta) = G(E(x), c_f(x, delta))``; ``delta`` one number or one per input.

        >>> from xaisdk.data import load_digits
        >>> Exaggeration.shipped().explain(load_digits().test.x[:2], 0.5).shape
        (2, 1, 28, 28)
        """
        arr = self._check(x)
        d = np.broadcast_to(np.asarray(delta, dtype=np.float64), (len(arr),))
        if not np.isfinite(d).all():
            raise InputError("delta: contains NaN or infinite values")
        bins = bin_index(torch.from_numpy(self.f(arr).astype(np.float64) + d), self.n_bins).numpy()
        return self.generate(arr, bins)

    def series(self, x: np.ndarray, n_steps: int = 10, target_class: int | None = None) -> ExaggerationSeries:
        """The walk from ``f(x)`` across the boundary to the far end (module docstring), with ``f`` of each image.

        ``target_class``, if given, must be the class the explainer was trained for.
        """
        arr = self._check(x, n_steps, target_class)
        start = self.f(arr)
        targets, bins = walk(start, int(n_steps), self.n_bins)
        rows = np.repeat(arr, n_steps, axis=0)
        images = self.generate(rows, bins.reshape(-1))
        outputs = self.f(images).reshape(len(arr), n_steps)
        return ExaggerationSeries(images.reshape(len(arr), n_steps, *arr.shape[1:]), outputs, targets, bins, start)
