"""What every backend that runs a bundle's exported graphs shares: the argument checks and the four
Backend primitives, each one run of a graph. A subclass supplies ``_run(role, feeds, outputs)``
(ONNX Runtime sessions, TensorRT engines) and the attributes ``bundle``, ``input_shape``,
``num_classes``, ``supports_deeplift`` and ``has_generator``. Imports numpy only.

>>> import numpy as np
>>> class Doubling(BundleGraphs):
...     input_shape, num_classes, supports_deeplift, has_generator = (1, 1, 2), 2, False, False
...     def _run(self, role, feeds, outputs):
...         return [2 * feeds["x"].reshape(len(feeds["x"]), -1)]
>>> Doubling().logits(np.ones((1, 1, 1, 2), np.float32)).tolist()
[[2.0, 2.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xaisdk.errors import InputError

__all__ = ["BundleGraphs"]


class BundleGraphs:
    """The Backend primitives over a bundle's graphs ``classifier``, ``classifier_grad``,
    ``deeplift_grad`` and ``generator_ganmex``; see the module docstring."""

    bundle: Any
    input_shape: tuple[int, ...]
    num_classes: int
    supports_deeplift: bool
    has_generator: bool

    def _run(self, role: str, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        raise TypeError(f"{type(self).__name__} does not say how to run a graph (define _run)")

    def _check(self, x: np.ndarray, name: str = "x") -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.input_shape:
            raise InputError(f"{name}: expected shape (N, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        return x

    def _weights(self, weights: np.ndarray, n: int) -> np.ndarray:
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != (n, self.num_classes):
            raise InputError(f"weights: expected shape ({n}, {self.num_classes}), got {weights.shape}")
        return weights

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, num_classes)`` of a batch ``(N, C, H, W)``."""
        x = self._check(x)
        return self._run("classifier", {"x": x}, ["logits"])[0]

    def score_gradient(self, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``sum_k weights[n, k] * logits[n, k]`` and their input gradients."""
        x = self._check(x)
        score, grad = self._run("classifier_grad", {"x": x, "w": self._weights(weights, len(x))}, ["score", "grad"])
        return score, grad

    def deeplift_multipliers(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """DeepLIFT rescale-rule multipliers of the weighted score for each pair (x[n], baseline[n])."""
        if not self.supports_deeplift:
            raise InputError(f"this bundle has no DeepLIFT graph: {self.bundle.deeplift_unavailable}")
        x, baseline = self._check(x), self._check(baseline, "baseline")
        if baseline.shape != x.shape:
            raise InputError(f"baseline: expected shape {x.shape}, got {baseline.shape}")
        feeds = {"x": x, "baseline": baseline, "w": self._weights(weights, len(x))}
        return self._run("deeplift_grad", feeds, ["multipliers"])[0]

    def generate(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The GANMEX generator's image of each ``x[n]`` turned into class ``target[n]``."""
        if not self.has_generator:
            raise InputError("this bundle has no GANMEX generator (it was exported from a classifier checkpoint, "
                             "not a GANMEX one)")
        x = self._check(x)
        target = np.asarray(target)
        if target.shape != (len(x),) or not np.issubdtype(target.dtype, np.integer):
            raise InputError(f"target: expected {len(x)} integer classes, got {target.dtype} {target.shape}")
        if len(target) and (target.min() < 0 or target.max() >= self.num_classes):
            raise InputError(f"target: class index out of range [0, {self.num_classes})")
        onehot = np.eye(self.num_classes, dtype=np.float32)[target]
        return self._run("generator_ganmex", {"x": x, "target": onehot}, ["image"])[0]
