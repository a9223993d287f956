"""Progressive Exaggeration on ONNX Runtime, without torch: the series of an ``exaggeration.onnx`` graph.

The graph (written by :func:`xaisdk.deploy.exaggeration_export.export_exaggeration_onnx`) maps
``(x, condition)`` to ``G(E(x), c)``, where ``condition`` is the one-hot bin (N, n_bins); its model metadata
carries ``xaisdk.target_class``, ``xaisdk.n_bins`` and ``xaisdk.value_range``. The classifier output
``f(x) = softmax(logits(x))[target_class]`` comes from a caller-supplied logits function (for a bundle,
its ``classifier.onnx``), so this module needs neither torch nor the bundle code.

The walk (shared with :class:`xaisdk.counterfactual.exaggeration.Exaggeration`): from ``f(x)`` to the centre
of the far-end bin (the last bin if ``f(x) < 0.5``, else the first), in ``n_steps`` equal steps of the
desired output, ``t_j = f(x) + j / (n_steps - 1) * (end - f(x))``; image ``j`` is ``G(E(x), bin(t_j))``, so
image 0 is ``I(x, 0)`` and the last image is the far end of the classifier's range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xaisdk.errors import InputError
from xaisdk.limits import check_size
from xaisdk.runtime.arrays import softmax
from xaisdk.runtime.explaingan_onnx import fixed_dims, graph_source
from xaisdk.runtime.onnxruntime_backend import load_session, pick_providers, run_session

__all__ = ["ExaggerationSeries", "OnnxExaggeration", "check_series_inputs", "softmax_column", "walk"]

SERIES_ROWS = 64  # series images per generator / classifier call


@dataclass
class ExaggerationSeries:
    """A walk across the decision boundary for each input.

    ``images`` (N, n_steps, C, H, W): image 0 is ``I(x, 0)``, the last the far end;
    ``outputs`` (N, n_steps): ``f`` of each image; ``targets`` (N, n_steps): the desired ``f(x) + delta``;
    ``bins`` (N, n_steps): the condition given to the generator; ``start`` (N,): ``f(x)`` of the inputs.
    """

    images: np.ndarray
    outputs: np.ndarray
    targets: np.ndarray
    bins: np.ndarray
    start: np.ndarray

    def saliency(self) -> np.ndarray:
        """``|last - first|`` summed over channels: where the walk changed the image, (N, H, W).

        >>> s = ExaggerationSeries(np.zeros((1, 2, 1, 2, 2)), np.zeros((1, 2)), np.zeros((1, 2)),
        ...                        np.zeros((1, 2), int), np.zeros(1))
        >>> s.saliency().shape
        (1, 2, 2)
        """
        return np.abs(self.images[:, -1] - self.images[:, 0]).sum(1)


def bins_of(p: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each probability with [0, 1] cut into ``n_bins`` equal bins (1.0 goes to the last).

    >>> bins_of(np.array([0.0, 0.1, 1.0]), 10).tolist()
    [0, 1, 9]
    """
    return np.clip(np.floor(np.clip(p, 0.0, 1.0) * n_bins), 0, n_bins - 1).astype(np.int64)


def walk(start: np.ndarray, n_steps: int, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Desired outputs (N, n_steps) and their bins for walks from ``start = f(x)`` to the far end.

    >>> t, b = walk(np.array([0.02]), 4, 10)
    >>> np.round(t.astype(np.float64), 2).tolist(), b.tolist()
    ([[0.02, 0.33, 0.64, 0.95]], [[0, 3, 6, 9]])
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.where(start < 0.5, 1.0 - 0.5 / n_bins, 0.5 / n_bins)
    frac = np.linspace(0.0, 1.0, n_steps)[None, :]
    targets = start[:, None] + frac * (end - start)[:, None]
    return targets.astype(np.float32), bins_of(targets, n_bins)


def softmax_column(logits: np.ndarray, column: int) -> np.ndarray:
    """``softmax(logits)[:, column]`` computed stably in float64.

    >>> float(softmax_column(np.array([[0.0, 0.0]]), 1)[0])
    0.5
    """
    return softmax(logits)[:, column].astype(np.float32)


MAX_BINS = 10_000
"""Most output bins an Exaggeration graph may declare (the papers use 10)."""


def _metadata_int(meta: dict[str, str], key: str, given: int | None, where: Path) -> int:
    """``given``, else the graph's metadata ``key`` as an integer; InputError when absent or not an integer."""
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, (int, np.integer)):
            raise InputError(f"{key.split('.')[-1]}: expected an integer, got {given!r}")
        return int(given)
    if key not in meta:
        raise InputError(f"{where}: graph metadata lacks {key!r}; pass target_class and n_bins")
    try:
        return int(meta[key])
    except ValueError:
        raise InputError(f"{where}: graph metadata {key} is {meta[key][:40]!r}, not an integer") from None


def check_series_inputs(x: object, input_shape: Sequence[int], n_steps: object, n_bins: int,
                        target_class: object, trained_class: int) -> np.ndarray:
    """Validate a series request; returns ``x`` as float32 (N, C, H, W). Bad input raises InputError.

    ``n_steps`` is an integer in [2, ``Limits.series_steps``] (:func:`xaisdk.limits.check_size`).

    >>> check_series_inputs(np.zeros((1, 1, 2, 2)), (1, 2, 2), 3, 10, None, 8).dtype
    dtype('float32')
    """
    if int(n_bins) < 2:
        raise InputError(f"n_bins must be >= 2, got {n_bins}")
    check_size(n_steps, "n_steps", cap="series_steps", minimum=2)
    if target_class is not None and (isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer))
                                     or int(target_class) != int(trained_class)):
        raise InputError(f"target_class {target_class!r}: this explainer was trained for class {trained_class} "
                         "only; train one for another class with `xaisdk train exaggeration --target-class K`")
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"x: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(int(v) for v in input_shape) or len(arr) == 0:
        raise InputError(f"x: expected a non-empty batch of shape (N, {', '.join(str(int(v)) for v in input_shape)}), "
                         f"got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("x: contains NaN or infinite values")
    return arr


class OnnxExaggeration:
    """Exaggeration series from an ``exaggeration`` graph and a logits function, on ONNX Runtime.

    ``source``: a bundle (:class:`~xaisdk.runtime.bundle.Bundle` or folder) with an ``exaggeration`` graph,
    whose verified bytes are run, or an ``exaggeration.onnx`` file (or a folder holding it) on its own.
    ``logits_fn(x) -> (N, K)`` gives the classifier's logits (e.g. a bundle's ``classifier.onnx`` session);
    ``target_class`` and ``n_bins`` default to the graph's metadata.

    >>> import tempfile
    >>> from xaisdk.deploy.exaggeration_export import export_exaggeration_onnx
    >>> from xaisdk.models.exaggeration import load_shipped_exaggeration
    >>> info = export_exaggeration_onnx(load_shipped_exaggeration(), tempfile.mkdtemp())
    >>> from xaisdk.data import load_digits
    >>> import torch
    >>> clf = load_shipped_exaggeration().classifier.model
    >>> rt = OnnxExaggeration(info["path"], lambda b: clf(torch.from_numpy(b)).detach().numpy())
    >>> rt.series(load_digits().test.x[:2], 5).images.shape
    (2, 5, 1, 28, 28)
    """

    def __init__(self, source: Any, logits_fn: Callable[[np.ndarray], np.ndarray], *,
                 target_class: int | None = None, n_bins: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        if not callable(logits_fn):
            raise InputError("logits_fn: expected a function (x) -> logits")
        data, path, bundle = graph_source(source, "exaggeration", "OnnxExaggeration")
        self.session = load_session(data, path, providers=pick_providers(providers))
        self.path = path
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != ["condition", "x"] or outputs != ["image"]:
            raise InputError(f"{path}: not an Exaggeration graph (inputs {sorted(inputs)}, outputs {outputs}; expected "
                             "inputs x, condition and output image)")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.target_class = _metadata_int(meta, "xaisdk.target_class", target_class, path)
        self.n_bins = _metadata_int(meta, "xaisdk.n_bins", n_bins, path)
        if not 2 <= self.n_bins <= MAX_BINS:
            raise InputError(f"n_bins must be in [2, {MAX_BINS}], got {self.n_bins}")
        self.input_shape = fixed_dims(inputs["x"].shape, path, "x")
        condition = list(inputs["condition"].shape)
        if len(condition) != 2 or condition[1] not in (self.n_bins, None) and isinstance(condition[1], int):
            raise InputError(f"{path}: input 'condition' is {condition} in the graph; expected [N, {self.n_bins}]")
        if bundle is not None:
            if self.input_shape != tuple(bundle.input_shape):
                raise InputError(f"{path}: takes {self.input_shape} images but the bundle's images are {bundle.input_shape}")
            if not 0 <= self.target_class < bundle.num_classes:
                raise InputError(f"{path}: target class {self.target_class} is not one of the bundle's "
                                 f"{bundle.num_classes} classes")
        self.logits_fn = logits_fn

    def f(self, x: np.ndarray) -> np.ndarray:
        """``f(x)``: the probability of the target class, (N,) float32."""
        return softmax_column(np.asarray(self.logits_fn(np.ascontiguousarray(x, dtype=np.float32))), self.target_class)

    def generate(self, x: np.ndarray, bins: np.ndarray) -> np.ndarray:
        """``G(E(x), bins)`` for one bin per input."""
        onehot = np.eye(self.n_bins, dtype=np.float32)[np.asarray(bins, dtype=np.int64)]
        feeds = {"x": np.ascontiguousarray(x, dtype=np.float32), "condition": onehot}
        return run_session(self.session, ["image"], feeds, self.path)[0]

    def series(self, x: np.ndarray, n_steps: int = 10, target_class: int | None = None) -> ExaggerationSeries:
        """The walk of :func:`walk` for each input, with ``f`` of every image (see the module docstring)."""
        arr = check_series_inputs(x, self.input_shape, n_steps, self.n_bins, target_class, self.target_class)
        start = self.f(arr)
        n, steps = len(arr), int(n_steps)
        targets, bins = walk(start, steps, self.n_bins)
        flat_bins = bins.reshape(-1)
        images = np.empty((n * steps, *arr.shape[1:]), np.float32)
        outputs = np.empty(n * steps, np.float32)
        # Bounded batches: ONNX Runtime's arena keeps the memory of the largest batch it has run.
        for first in range(0, n * steps, SERIES_ROWS):
            rows = slice(first, min(first + SERIES_ROWS, n * steps))
            images[rows] = self.generate(arr[np.arange(rows.start, rows.stop) // steps], flat_bins[rows])
            outputs[rows] = self.f(images[rows])
        return ExaggerationSeries(images.reshape(n, steps, *arr.shape[1:]), outputs.reshape(n, steps), targets, bins, start)
