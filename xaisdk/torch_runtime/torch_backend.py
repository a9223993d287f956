"""The torch implementation of the :class:`~xaisdk.runtime.backend.Backend` protocol (the reference).

Imported only explicitly (``from xaisdk.torch_runtime.torch_backend import TorchBackend``): the rest of
:mod:`xaisdk.runtime` stays torch-free. Gradients come from autograd, DeepLIFT multipliers from the
rescale hooks of :mod:`xaisdk.attribution.deeplift`, GANMEX baselines from the model's generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from xaisdk.attribution._inputs import as_module, weighted_gradient
from xaisdk.attribution.deeplift import EPS, deeplift_refusal, rescale_multipliers, unsupported_error
from xaisdk.errors import InputError
from xaisdk.methods.common import chunks
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel, generate_baselines
from xaisdk.models.module_state import FX_TRACING
from xaisdk.runtime.backend import Backend
from xaisdk.runtime.preprocessing import Preprocessing
from xaisdk.torch_runtime.memory_layout import ChannelsLastChoice
from xaisdk.torch_runtime.model_spec import model_generator, model_input_shape, model_value_range
from xaisdk.torch_runtime.relu_path_ig import (
    ReluConvPrefix,
    ReluPathGate,
    relu_path_integrated_gradients,
    relu_path_occluded_scores,
    relu_path_perturbed_scores,
)

__all__ = ["TorchBackend", "as_backend"]


class TorchBackend:
    """A torch classifier (and optionally its GANMEX generator) behind the Backend protocol.

    ``model`` is a ``torch.nn.Module``, a loaded :class:`~xaisdk.models.Classifier` or a
    :class:`~xaisdk.models.GanmexModel` (whose generator then serves :meth:`generate`). The module is
    put in eval mode once, here, and must stay on the CPU. ``input_shape`` (C, H, W) and
    ``value_range`` default to the checkpoint's metadata; a plain module needs ``input_shape`` and
    defaults to the range (0, 1). ``generator`` (a GANMEX model, a path to one, or a module
    ``G(x, target)``) supplies or replaces the generator. With ``fast_ig`` (default) models that open
    with conv -> ReLU -> conv get Integrated Gradients, Occlusion and perturbation rows from
    :mod:`xaisdk.torch_runtime.relu_path_ig` (the same sums, those layers not re-run per step), but only
    while that split provably is the model's own function: it is re-checked at every call
    (:class:`~xaisdk.torch_runtime.relu_path_ig.ReluPathGate`), so a hook, a swapped layer or ``train()``
    after construction sends the call to the plain loop. Convolutional models with 3+ input channels
    get their batches channels-last (faster oneDNN convolutions) once that is proven to give the same
    answer for the model as it is (:mod:`xaisdk.torch_runtime.memory_layout`). At most ``max_batch`` rows go through the
    model in one pass. Calls are thread-safe and run concurrently. DeepLIFT runs the model's
    torch.fx graph with the rescale rule (:mod:`xaisdk.attribution.deeplift_trace`), never touching
    the module; the graph is traced here, and again only if the model changes. Tracing replaces
    ``nn.Module.__call__`` process-wide for a moment, so it waits for this backend's forward passes
    (and theirs for it: :data:`~xaisdk.models.module_state.FX_TRACING`); other torch code running on
    other threads of the process at that moment is not covered.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> backend = TorchBackend(net, input_shape=(1, 2, 2))
    >>> backend.num_classes, backend.supports_deeplift, backend.has_generator
    (3, True, False)
    >>> x = np.ones((2, 1, 2, 2), np.float32)
    >>> scores, grads = backend.score_gradient(x, np.eye(3, dtype=np.float32)[[0, 2]])
    >>> grads.shape, grads.dtype
    ((2, 1, 2, 2), dtype('float32'))
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module | Classifier | GanmexModel,
        *,
        input_shape: tuple[int, ...] | None = None,
        value_range: tuple[float, float] | None = None,
        generator: Any = None,
        max_batch: int = 256,
        eps: float = EPS,
        fast_ig: bool = True,
    ) -> None:
        self.module = as_module(model)
        self.module.eval()
        classifier = model.classifier if isinstance(model, GanmexModel) else model
        meta = classifier if isinstance(classifier, Classifier) else None
        self.input_shape = model_input_shape(input_shape, meta)
        self.value_range = model_value_range(value_range, meta)
        pipeline = meta.metadata.get("preprocessing") if meta is not None else None
        self.preprocessing = Preprocessing.from_manifest(pipeline) if pipeline is not None else None
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise InputError(f"max_batch: expected a positive integer, got {max_batch!r}")
        self.max_batch = int(max_batch)
        self.eps = float(eps)
        self.num_classes = meta.num_classes if meta is not None else self._probe_num_classes()
        self.deeplift_unavailable = deeplift_refusal(self.module)  # traced here, before any serving thread runs
        self.supports_deeplift = self.deeplift_unavailable is None
        self._generator = model_generator(generator, model, self.input_shape)
        self.has_generator = self._generator is not None
        self._relu_gate = ReluPathGate(self.module, self.input_shape, self.value_range) if fast_ig else None
        self._layout = ChannelsLastChoice(self.module, self.input_shape)

    def __repr__(self) -> str:
        return (
            f"TorchBackend({type(self.module).__name__}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, generator={self.has_generator})"
        )

    def relu_path(self) -> ReluConvPrefix | None:
        """The relu-path split the fast paths would use for the model as it is now, or None (plain loops)."""
        if self._relu_gate is None:
            return None
        with FX_TRACING.shared():  # a new proof runs the model on probe inputs
            return self._relu_gate.prefix()

    def _probe_num_classes(self) -> int:
        with torch.no_grad():
            out = self.module(torch.zeros(1, *self.input_shape))
        if out.ndim != 2:
            raise InputError(f"model: expected logits of shape (N, classes), got {tuple(out.shape)} for one input")
        return int(out.shape[1])

    def _batch(self, x: np.ndarray, name: str = "x") -> torch.Tensor:
        array = np.ascontiguousarray(x, dtype=np.float32)
        if array.shape[1:] != self.input_shape or array.ndim != len(self.input_shape) + 1:
            raise InputError(f"{name}: expected shape (N, {', '.join(map(str, self.input_shape))}), got {array.shape}")
        return torch.from_numpy(array if array.flags.writeable else array.copy())  # torch wants writable memory

    def _weights(self, weights: np.ndarray, n: int) -> torch.Tensor:
        array = np.ascontiguousarray(weights, dtype=np.float32)
        if array.shape != (n, self.num_classes):
            raise InputError(f"weights: expected shape ({n}, {self.num_classes}), got {array.shape}")
        return torch.from_numpy(array if array.flags.writeable else array.copy())

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, num_classes)`` of ``x`` ``(N, C, H, W)``."""
        xt = self._batch(x)
        with torch.no_grad(), FX_TRACING.shared():
            out = [self._layout.run(lambda t: (self.module(t),), xt[sl])[0] for sl in chunks(len(xt), self.max_batch)]
        return _numpy(torch.cat(out)) if out else np.zeros((0, self.num_classes), np.float32)

    def score_gradient(self, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``sum_k weights[n, k] * logits[n, k]`` ``(N,)`` and their input gradients ``(N, C, H, W)``."""
        xt = self._batch(x)
        wt = self._weights(weights, len(xt))
        scores, grads = np.empty(len(xt), np.float32), np.empty(xt.shape, np.float32)
        with FX_TRACING.shared():
            for sl in chunks(len(xt), self.max_batch):
                score, grad = self._layout.run(lambda t, w=wt[sl]: weighted_gradient(self.module, t, w), xt[sl])
                scores[sl], grads[sl] = _numpy(score), _numpy(grad)
        return scores, grads

    def deeplift_multipliers(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Rescale-rule multipliers ``(N, C, H, W)``: ``(x - baseline) * m`` are the DeepLIFT attributions."""
        refusal = deeplift_refusal(self.module)  # re-checked: the model may have changed since construction
        if refusal is not None:
            raise unsupported_error(refusal)
        xt, bt = self._batch(x), self._batch(baseline, "baseline")
        if bt.shape != xt.shape:
            raise InputError(f"baseline: expected the shape of x {tuple(xt.shape)}, got {tuple(bt.shape)}")
        wt = self._weights(weights, len(xt))
        out = np.empty(xt.shape, np.float32)
        with FX_TRACING.shared():
            for sl in chunks(len(xt), max(1, self.max_batch // 2)):  # x and baseline go through together
                out[sl] = _numpy(rescale_multipliers(self.module, xt[sl], bt[sl], wt[sl], self.eps))
        return out

    def fused_integrated_gradients(
        self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray, alphas: np.ndarray, quadrature: np.ndarray
    ) -> np.ndarray | None:
        """IG ``(x - b) * sum_s quadrature[s] dScore/dx(b + alphas[s] (x - b))`` in one call, by
        :mod:`xaisdk.torch_runtime.relu_path_ig` when the model opens with conv -> ReLU -> conv (and
        ``fast_ig`` is on); None otherwise, and the driver runs its chunked loop over :meth:`score_gradient`."""
        prefix = self.relu_path()
        if prefix is None:
            return None
        xt, bt = self._batch(x), self._batch(baseline, "baseline")
        if bt.shape != xt.shape:
            raise InputError(f"baseline: expected the shape of x {tuple(xt.shape)}, got {tuple(bt.shape)}")
        wt = self._weights(weights, len(xt))
        with torch.no_grad(), FX_TRACING.shared():
            return relu_path_integrated_gradients(prefix, xt.numpy(), bt.numpy(), wt.numpy(), alphas, quadrature)

    def occluded_scores(
        self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray, row_cover: np.ndarray, col_cover: np.ndarray
    ) -> np.ndarray | None:
        """Scores (N, R, Cc) of ``x`` with each window ``row_cover[r] x col_cover[c]`` taken from ``baseline``,
        by :func:`~xaisdk.torch_runtime.relu_path_ig.relu_path_occluded_scores` when the model opens with
        conv -> ReLU -> conv (and ``fast_ig`` is on); None otherwise (the driver then scores occluded images)."""
        prefix = self.relu_path()
        if prefix is None:
            return None
        xt, bt = self._batch(x), self._batch(baseline, "baseline")
        wt = self._weights(weights, len(xt))
        with FX_TRACING.shared():
            return relu_path_occluded_scores(prefix, xt.numpy(), bt.numpy(), wt.numpy(), row_cover, col_cover)

    def perturbed_scores(self, base: np.ndarray, substrate: np.ndarray, order: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                         weights: np.ndarray) -> np.ndarray | None:
        """Scores (N, J) of the perturbation rows of :func:`xaisdk.runtime.perturbation.perturbation_scores`
        ("``base[n]`` with pixels ``order[n, lo:hi]`` from ``substrate[n]``"), by
        :func:`~xaisdk.torch_runtime.relu_path_ig.relu_path_perturbed_scores` when the model opens with
        conv -> ReLU -> conv (and ``fast_ig`` is on); None otherwise."""
        prefix = self.relu_path()
        if prefix is None:
            return None
        bt = self._batch(base, "base")
        sub = np.broadcast_to(np.asarray(substrate, np.float32), bt.shape)
        wt = self._weights(weights, len(bt)).numpy()
        with FX_TRACING.shared():
            return relu_path_perturbed_scores(prefix, bt.numpy(), sub, np.asarray(order, np.int64),
                                              np.asarray(lo, np.int64), np.asarray(hi, np.int64), wt)

    def generate(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The GANMEX generator's image of each ``x[n]`` moved into class ``target[n]`` (float32, like ``x``)."""
        if self._generator is None:
            raise InputError("this backend has no GANMEX generator: pass a GanmexModel as the model, or generator=")
        xt = self._batch(x)
        with FX_TRACING.shared():
            return generate_baselines(self._generator, xt, np.asarray(target), self.max_batch)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32, copy=False)


def as_backend(model: object, **torch_options: object) -> Backend:
    """``model`` itself when it already is a :class:`Backend`, else a
    :class:`TorchBackend` around it (torch module, ``Classifier`` or
    ``GanmexModel``; ``torch_options`` go to its constructor).

    >>> import torch
    >>> as_backend(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), input_shape=(1, 2, 2)).num_classes
    3
    """
    if isinstance(model, Backend):
        if torch_options:
            raise TypeError(f"as_backend: options {sorted(torch_options)} apply to torch models, not to a ready backend")
        return model
    return TorchBackend(model, **torch_options)  # type: ignore[arg-type]
