"""The Backend protocol: the few numerical primitives every attribution driver is written against.

A backend owns a classifier (and, optionally, a GANMEX generator) and answers batched numpy
queries; it never sees class names, baselines or methods. Implementations: ``TorchBackend``
(:mod:`xaisdk.torch_runtime.torch_backend`, the reference, in the torch layer) and ``OnnxRuntimeBackend``
(:mod:`xaisdk.runtime.onnxruntime_backend`, torch-free, runs an exported bundle). Every array is
float32 NCHW in the model's value range; ``weights`` are per-sample class-weight rows, so the
attributed score of sample n is ``sum_k weights[n, k] * logits[n, k]`` (``e_source - e_target`` for
one-vs-one, ``e_source`` for one-vs-all). Implementations must be safe to call from many threads.
This module imports numpy only.

>>> import numpy as np
>>> class_weights(np.array([2, 0]), np.array([1, 2]), 3).tolist()
[[0.0, -1.0, 1.0], [1.0, 0.0, -1.0]]
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend", "class_weights"]


@runtime_checkable
class Backend(Protocol):
    """What attribution drivers need from a model runtime (see the module docstring)."""

    name: str
    """Short identifier, e.g. ``"torch"`` or ``"onnxruntime"``."""
    input_shape: tuple[int, ...]
    """One input's shape, ``(C, H, W)``."""
    num_classes: int
    value_range: tuple[float, float]
    """The range of pixel values the model was trained on, e.g. ``(0.0, 1.0)``."""
    supports_deeplift: bool
    """Whether :meth:`deeplift_multipliers` is available (models with max pooling have none)."""
    has_generator: bool
    """Whether :meth:`generate` is available (a GANMEX generator came with the model)."""

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, num_classes)`` of a batch ``(N, C, H, W)``."""
        ...

    def score_gradient(self, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(N,)`` = ``sum_k weights[n, k] * logits[n, k]`` and their gradients w.r.t. ``x``,
        ``(N, C, H, W)``; ``weights`` is ``(N, num_classes)``."""
        ...

    def deeplift_multipliers(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """DeepLIFT rescale-rule multipliers ``m`` ``(N, C, H, W)`` of the weighted score for each
        pair ``(x[n], baseline[n])``, so that ``(x - baseline) * m`` are the DeepLIFT attributions."""
        ...

    def generate(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The GANMEX generator's image of each ``x[n]`` turned into class ``target[n]`` (int64 ``(N,)``)."""
        ...


def class_weights(source: np.ndarray, target: np.ndarray | None, num_classes: int) -> np.ndarray:
    """Per-sample class-weight rows ``e_source - e_target`` (``e_source`` when ``target`` is None), float32."""
    source = np.asarray(source, dtype=np.int64)
    rows = np.arange(len(source))
    weights = np.zeros((len(source), num_classes), dtype=np.float32)
    weights[rows, source] = 1.0
    if target is not None:
        weights[rows, np.asarray(target, dtype=np.int64)] -= 1.0
    return weights
