"""The benchmark workload: the shipped digits GANMEX model, test digits, their one-vs-one pairs and baselines."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

__all__ = ["Workload"]


@dataclass
class Workload:
    """``n_images`` test digits, each explained as predicted class vs runner-up from its GANMEX baseline.

    Everything a contender needs is made here once (the baselines too), so contenders time the same
    work. ``bundle`` exports the model to ONNX on first use (into a temporary folder).

    >>> w = Workload(n_images=2)
    >>> w.x.shape, w.baseline.shape, w.weights.shape
    ((2, 1, 28, 28), (2, 1, 28, 28), (2, 10))
    """

    n_images: int = 16
    steps: int = 200
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @cached_property
    def model(self):
        from xaisdk.models import load_shipped_ganmex

        return load_shipped_ganmex("digits")

    @cached_property
    def module(self):
        return self.model.classifier.model.eval()

    @cached_property
    def x(self) -> np.ndarray:
        from xaisdk.data import load_digits

        test = load_digits().test.x
        reps = -(-self.n_images // len(test))
        return np.ascontiguousarray(np.concatenate([test] * reps)[: self.n_images])

    @cached_property
    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.no_grad():
            logits = self.module(torch.from_numpy(self.x)).numpy()
        order = np.argsort(logits, 1)
        return order[:, -1], order[:, -2]

    @property
    def source(self) -> np.ndarray:
        return self._pairs[0]

    @property
    def target(self) -> np.ndarray:
        return self._pairs[1]

    @cached_property
    def weights(self) -> np.ndarray:
        from xaisdk.runtime.backend import class_weights

        return class_weights(self.source, self.target, 10)

    @cached_property
    def baseline(self) -> np.ndarray:
        return np.ascontiguousarray(self.model.baseline(self.x, self.target), np.float32)

    @cached_property
    def bundle(self) -> Path:
        from xaisdk.deploy.export import export_bundle
        from xaisdk.models import shipped_ganmex_path

        self._tmp = tempfile.TemporaryDirectory(prefix="xaisdk-bench-")
        path = Path(self._tmp.name) / "bundle"
        export_bundle(shipped_ganmex_path("digits"), path)
        return path
