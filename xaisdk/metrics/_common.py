"""What every metric shares: the result type, model and class-pair resolution, map checks.

Metrics take a *model* (any :class:`~xaisdk.runtime.backend.Backend`, or a torch module /
``Classifier`` / ``GanmexModel``, run on the torch backend), images ``x`` (N, C, H, W) float32,
``source`` classes (default: the model's prediction) and ``target`` classes (one-vs-one: the score
is ``S_source - S_target``; ``None``: one-vs-all, ``S_source``), and attribution maps shaped like
``x`` or ``(N, H, W)``. This module imports numpy only.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime.backend import Backend, class_weights

__all__ = [
    "MetricResult", "Pairs", "resolve_pairs", "as_maps", "check_maps", "pixel_saliency", "batched_scores",
    "pearson_rows", "spearman_rows",
]


@dataclass(frozen=True)
class MetricResult:
    """One metric's numbers: ``per_sample`` (N,), optional per-sample ``curve`` (N, T) over ``steps`` (T,).

    ``mean`` / ``std`` aggregate ``per_sample`` ignoring NaN (a correlation over a constant map is
    undefined and is NaN, not 0). ``details`` holds metric-specific extras (thresholds, options).

    >>> r = MetricResult("gini", np.array([0.5, 0.7, np.nan]))
    >>> round(r.mean, 3), round(r.std, 3), r.count
    (0.6, 0.1, 2)
    """

    name: str
    per_sample: np.ndarray
    curve: np.ndarray | None = None
    steps: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """How many samples have a defined (non-NaN) value."""
        return int(np.isfinite(self.per_sample).sum())

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.per_sample)) if self.count else float("nan")

    @property
    def std(self) -> float:
        return float(np.nanstd(self.per_sample)) if self.count else float("nan")

    @property
    def sem(self) -> float:
        """Standard error of the mean."""
        return self.std / np.sqrt(self.count) if self.count > 1 else float("nan")

    def mean_curve(self) -> np.ndarray | None:
        return None if self.curve is None else np.nanmean(self.curve, axis=0)

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-ready summary (mean, std, sem, count, details; the mean curve; per-sample values if asked)."""
        out: dict[str, Any] = {"name": self.name, "mean": _plain(self.mean), "std": _plain(self.std),
                               "sem": _plain(self.sem), "count": self.count, "details": _plain(self.details)}
        if self.curve is not None:
            out["steps"] = _plain(self.steps)
            out["mean_curve"] = _plain(self.mean_curve())
        if per_sample:
            out["per_sample"] = _plain(self.per_sample)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass(frozen=True)
class Pairs:
    """Resolved inputs of a metric: the backend, the images and each image's class pair.

    ``weights`` (N, K) are the class-weight rows of the attributed score (``e_source - e_target``,
    or ``e_source`` when ``target`` is None), so ``score = (logits * weights).sum(1)``.
    """

    backend: Backend
    x: np.ndarray
    source: np.ndarray
    target: np.ndarray | None
    weights: np.ndarray

    def scores(self, images: np.ndarray, sample: np.ndarray | None = None, chunk_size: int = 256) -> np.ndarray:
        """The attributed score of each image; ``sample[i]`` says whose class pair image i uses (default: i)."""
        rows = self.weights if sample is None else self.weights[sample]
        return batched_scores(self.backend, images, rows, chunk_size)


def batched_scores(backend: Backend, images: np.ndarray, weights: np.ndarray, chunk_size: int = 256) -> np.ndarray:
    """``sum_k weights[i, k] * logits(images)[i, k]`` for each image, ``chunk_size`` images per backend call."""
    out = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), chunk_size):
        part = slice(start, start + chunk_size)
        out[part] = (backend.logits(images[part]).astype(np.float64) * weights[part]).sum(1)
    return out


def _class_vector(value: Any, n: int, num_classes: int, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 0:
        array = np.full(n, array)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name}: expected one integer class or one per image ({n}), got {np.shape(value)} "
                         f"of {array.dtype}")
    if len(array) and (array.min() < 0 or array.max() >= num_classes):
        raise InputError(f"{name}: classes must lie in [0, {num_classes - 1}]")
    return array.astype(np.int64)


def resolve_pairs(model: Any, x: Any, source: Any = None, target: Any = None) -> Pairs:
    """Check ``x`` against the model and resolve the class pair of each image.

    ``source=None`` takes the model's predicted class; ``target=None`` means one-vs-all.

    >>> import torch
    >>> from xaisdk.torch_runtime import as_backend
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> p = resolve_pairs(as_backend(net, input_shape=(1, 2, 2)), np.zeros((2, 1, 2, 2), np.float32), 0, [1, 2])
    >>> p.weights.tolist()
    [[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]
    """
    if isinstance(model, Backend):
        backend = model
    else:
        from xaisdk.torch_runtime.torch_backend import as_backend  # torch models only: bundles stay torch-free

        backend = as_backend(model)
    array = np.asarray(x)
    shape = tuple(backend.input_shape)
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape:
        raise InputError(f"x: expected shape (N, {', '.join(map(str, shape))}) for this model, got {array.shape}")
    if len(array) == 0:
        raise InputError("x: the batch is empty")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise InputError("x: expected finite real numbers")
    images = np.ascontiguousarray(array, dtype=np.float32)
    n = len(images)
    if source is None:
        src = np.concatenate([backend.logits(images[s:s + 256]).argmax(1) for s in range(0, n, 256)]).astype(np.int64)
    else:
        src = _class_vector(source, n, backend.num_classes, "source")
    tgt = None if target is None else _class_vector(target, n, backend.num_classes, "target")
    if tgt is not None and np.any(tgt == src):
        raise InputError(f"target equals source for image {int(np.flatnonzero(tgt == src)[0])}: a one-vs-one "
                         "score needs two different classes")
    return Pairs(backend, images, src, tgt, class_weights(src, tgt, backend.num_classes))


def check_maps(attributions: Any, name: str = "attributions") -> np.ndarray:
    """Attribution maps as float64 (N, C, H, W); (N, H, W) maps get one channel. An empty batch
    and non-finite values are refused. (The shape-only sibling of :func:`as_maps`, for metrics that
    need no images.)

    >>> check_maps(np.ones((2, 3, 3))).shape
    (2, 1, 3, 3)
    """
    array = np.asarray(attributions)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or 0 in array.shape:
        raise InputError(f"{name}: expected a non-empty batch of maps (N, C, H, W) or (N, H, W), "
                         f"got shape {np.shape(attributions)}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or not np.isfinite(array).all():
        raise InputError(f"{name}: expected finite real numbers")
    return array.astype(np.float64)


def as_maps(attributions: Any, x: np.ndarray, name: str = "attributions") -> np.ndarray:
    """Attribution maps as float64 (N, C, H, W) for images ``x`` (N, C, H, W); (N, H, W) maps are
    given one channel. Non-finite values are refused.

    >>> as_maps(np.ones((2, 3, 3)), np.zeros((2, 1, 3, 3))).shape
    (2, 1, 3, 3)
    """
    array = np.asarray(attributions)
    n, _, h, w = x.shape
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[0] != n or array.shape[2:] != (h, w) or array.shape[1] not in (1, x.shape[1]):
        raise InputError(f"{name}: expected maps (N, C, H, W) or (N, H, W) matching x {x.shape}, got {np.shape(attributions)}")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise InputError(f"{name}: expected finite real numbers")
    return array.astype(np.float64)


def pixel_saliency(maps: np.ndarray, reduce: str = "sum") -> np.ndarray:
    """Per-pixel saliency (N, H*W) of maps (N, C, H, W): the channels' ``"sum"`` (signed, the
    attributions' own convention: a pixel's attribution is what its channels add up to),
    ``"abs"`` (sum of absolute values) or ``"max_abs"``.

    >>> pixel_saliency(np.array([[[[1.0, -2.0]], [[1.0, 1.0]]]])).tolist()
    [[2.0, -1.0]]
    """
    if reduce == "sum":
        out = maps.sum(1)
    elif reduce == "abs":
        out = np.abs(maps).sum(1)
    elif reduce == "max_abs":
        out = np.abs(maps).max(1)
    else:
        raise InputError(f"reduce: expected 'sum', 'abs' or 'max_abs', got {reduce!r}")
    return out.reshape(len(maps), -1)


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``; NaN for a constant row.

    >>> pearson_rows(np.array([[1.0, 2, 3], [1, 1, 1]]), np.array([[2.0, 4, 7], [1, 2, 3]])).round(4).tolist()
    [0.9934, nan]
    """
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    denominator = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        # Rows whose spread is rounding noise count as constant.
        scale = np.maximum(np.abs(a).max(1), 1e-300) * np.maximum(np.abs(b).max(1), 1e-300)
        r = np.where(denominator > 1e-12 * scale * a.shape[1], (a * b).sum(1) / denominator, np.nan)
    return np.clip(r, -1.0, 1.0)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank) of each row, as scipy.stats.rankdata."""
    from scipy.stats import rankdata

    return rankdata(values, axis=1)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row pair (Pearson of average ranks); NaN for a constant row.

    >>> spearman_rows(np.array([[1.0, 2, 3]]), np.array([[1.0, 4, 9]])).tolist()
    [1.0]
    """
    return pearson_rows(_ranks(a), _ranks(b))


def run_environment(command: str = "") -> dict[str, Any]:
    """Where and how a report was made: xaisdk version, UTC date, command, Python, platform, CPU count."""
    import xaisdk

    return {"xaisdk": xaisdk.__version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command, "python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count()}
