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

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from xaisdk.errors import InputError

__all__ = ["ExaggerationSeries", "OnnxExaggeration", "check_series_inputs", "softmax_column", "walk"]


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
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return (e[:, column] / e.sum(1)).astype(np.float32)


def check_series_inputs(x: object, input_shape: Sequence[int], n_steps: object, n_bins: int,
                        target_class: object, trained_class: int) -> np.ndarray:
    """Validate a series request; returns ``x`` as float32 (N, C, H, W). Bad input raises InputError.

    >>> check_series_inputs(np.zeros((1, 1, 2, 2)), (1, 2, 2), 3, 10, None, 8).dtype
    dtype('float32')
    """
    if int(n_bins) < 2:
        raise InputError(f"n_bins must be >= 2, got {n_bins}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or int(n_steps) < 2:
        raise InputError(f"n_steps must be an integer >= 2, got {n_steps!r}")
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
    """Exaggeration series from an ``exaggeration.onnx`` file and a logits function, on ONNX Runtime.

    ``logits_fn(x) -> (N, K)`` gives the classifier's logits (e.g. a bundle's ``classifier.onnx`` session);
    ``target_class`` and ``n_bins`` default to the graph's metadata.

    >>> import tempfile
    >>> from xaisdk.deploy.exaggeration_export import export_exaggeration_onnx
    >>> from xaisdk.models.exaggeration import load_shipped_exaggeration
    >>> info = export_exaggeration_onnx(load_shipped_exaggeration(), tempfile.mkdtemp())
    >>> from xaisdk.data import load_digits
    >>> from xaisdk.runtime.onnxruntime_backend import _onnxruntime
    >>> import torch
    >>> clf = load_shipped_exaggeration().classifier.model
    >>> rt = OnnxExaggeration(info["path"], lambda b: clf(torch.from_numpy(b)).detach().numpy())
    >>> rt.series(load_digits().test.x[:2], 5).images.shape
    (2, 5, 1, 28, 28)
    """

    def __init__(self, onnx_path: str | os.PathLike, logits_fn: Callable[[np.ndarray], np.ndarray], *,
                 target_class: int | None = None, n_bins: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        from xaisdk.runtime.onnxruntime_backend import _onnxruntime, pick_providers

        if not os.path.isfile(onnx_path):
            raise InputError(f"{onnx_path}: no such ONNX file")
        if not callable(logits_fn):
            raise InputError("logits_fn: expected a function (x) -> logits")
        ort = _onnxruntime()
        options = ort.SessionOptions()
        self.session = ort.InferenceSession(str(onnx_path), options, providers=pick_providers(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.target_class = int(meta["xaisdk.target_class"] if target_class is None else target_class)
            self.n_bins = int(meta["xaisdk.n_bins"] if n_bins is None else n_bins)
        except KeyError as err:
            raise InputError(f"{onnx_path}: graph metadata lacks {err}; pass target_class and n_bins") from None
        if self.n_bins < 2:
            raise InputError(f"n_bins must be >= 2, got {self.n_bins}")
        shape = self.session.get_inputs()[0].shape
        self.input_shape = tuple(int(v) for v in shape[1:])
        self.logits_fn = logits_fn

    def f(self, x: np.ndarray) -> np.ndarray:
        """``f(x)``: the probability of the target class, (N,) float32."""
        return softmax_column(np.asarray(self.logits_fn(np.ascontiguousarray(x, dtype=np.float32))), self.target_class)

    def generate(self, x: np.ndarray, bins: np.ndarray) -> np.ndarray:
        """``G(E(x), bins)`` for one bin per input."""
        onehot = np.eye(self.n_bins, dtype=np.float32)[np.asarray(bins, dtype=np.int64)]
        return self.session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32), "condition": onehot})[0]

    def series(self, x: np.ndarray, n_steps: int = 10, target_class: int | None = None) -> ExaggerationSeries:
        """The walk of :func:`walk` for each input, with ``f`` of every image (see the module docstring)."""
        arr = check_series_inputs(x, self.input_shape, n_steps, self.n_bins, target_class, self.target_class)
        start = self.f(arr)
        targets, bins = walk(start, int(n_steps), self.n_bins)
        n = len(arr)
        rows = np.repeat(arr, n_steps, axis=0)
        images = self.generate(rows, bins.reshape(-1))
        outputs = self.f(images).reshape(n, n_steps)
        return ExaggerationSeries(images.reshape(n, n_steps, *arr.shape[1:]), outputs, targets, bins, start)
