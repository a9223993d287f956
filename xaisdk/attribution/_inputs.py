"""Argument handling shared by every attribution method: inputs, classes, the attributed score."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xaisdk.errors import InputError
from xaisdk.methods.common import chunks
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel
from xaisdk.models.score import class_weights

ClassSpec = int | Sequence[int] | np.ndarray | None
OUTPUTS = ("logits", "probabilities")
AUTO_ROWS = 1024  # rows per forward/backward pass when a method's batch_size is None


def as_module(model: nn.Module | Classifier | GanmexModel) -> nn.Module:
    """The torch module behind ``model`` (a module, a loaded :class:`Classifier` or a GANMEX model's classifier)."""
    if isinstance(model, GanmexModel):
        model = model.classifier
    module = model.model if isinstance(model, Classifier) else model
    if not isinstance(module, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, xaisdk Classifier or GanmexModel, got {type(model).__name__}")
    devices = {t.device.type for t in list(module.parameters()) + list(module.buffers())}
    if devices - {"cpu"}:
        raise InputError(
            f"model: its weights are on {', '.join(sorted(devices - {'cpu'}))}; the torch reference backend "
            "runs on the CPU, so pass model.cpu()"
        )
    return module


def as_batch(x: np.ndarray | torch.Tensor, name: str = "x") -> torch.Tensor:
    """``x`` as a float32 CPU tensor of shape (N, C, H, W) (or (N, D) for flat models), checked finite."""
    if isinstance(x, torch.Tensor):
        tensor = x.detach().to(device="cpu", dtype=torch.float32)
    else:
        try:
            array = np.asarray(x)
        except Exception:
            raise InputError(f"{name}: cannot be read as an array") from None
        if array.dtype == object or not np.issubdtype(array.dtype, np.number):
            raise InputError(f"{name}: expected a numeric array, got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tensor.ndim < 2:
        raise InputError(f"{name}: expected a batch (N, C, H, W), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise InputError(f"{name}: the batch is empty")
    if not torch.isfinite(tensor).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return tensor.contiguous()


def _class_vector(value: ClassSpec, n: int, num_classes: int, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 0:
        array = np.full(n, array)
    if array.ndim != 1 or len(array) != n:
        raise InputError(f"{name}: expected one class index or one per sample ({n}), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0):
            array = array.astype(np.int64)
        else:
            raise InputError(f"{name}: class indices must be integers, got {array.dtype}")
    if array.min() < 0 or array.max() >= num_classes:
        raise InputError(f"{name}: class index out of range [0, {num_classes}): {array.tolist()}")
    return array.astype(np.int64)


@dataclass(frozen=True)
class ScoreSpec:
    """The attributed score ``sum_k w[n, k] * out_k(x_n)``: ``w = e_source - e_target`` (one-vs-one)
    or ``e_source`` (one-vs-all), on logits or on softmax probabilities."""

    source: np.ndarray
    target: np.ndarray | None
    weights: torch.Tensor
    output: str

    def repeat(self, counts: int) -> "ScoreSpec":
        """The same spec for a batch where every sample is repeated ``counts`` times consecutively."""
        return ScoreSpec(
            np.repeat(self.source, counts),
            None if self.target is None else np.repeat(self.target, counts),
            self.weights.repeat_interleave(counts, dim=0),
            self.output,
        )

    def select(self, index: torch.Tensor | np.ndarray) -> "ScoreSpec":
        """The spec restricted to the samples ``index`` (rows of the weight matrix)."""
        index = np.asarray(index)
        return ScoreSpec(
            self.source[index],
            None if self.target is None else self.target[index],
            self.weights[torch.as_tensor(index)],
            self.output,
        )


def score_spec(
    module: nn.Module, x: torch.Tensor, source: ClassSpec, target: ClassSpec, output: str = "logits"
) -> ScoreSpec:
    """Resolve ``source`` (default: the predicted class) and ``target`` (None: one-vs-all) for ``x``."""
    if output not in OUTPUTS:
        raise InputError(f"output: expected one of {OUTPUTS}, got {output!r}")
    # The whole batch goes through the model only when the prediction is needed; otherwise one
    # sample tells the number of classes.
    probe = x if source is None else x[:1]
    with torch.no_grad():
        logits = torch.cat([module(probe[sl]) for sl in chunks(len(probe), AUTO_ROWS)])
    if logits.ndim != 2:
        raise InputError(f"model: expected logits of shape (N, classes), got {tuple(logits.shape)}")
    n, num_classes = len(x), logits.shape[1]
    src = logits.argmax(1).numpy() if source is None else _class_vector(source, n, num_classes, "source")
    tgt = None
    if target is not None:
        tgt = _class_vector(target, n, num_classes, "target")
        same = np.flatnonzero(tgt == src)
        if len(same):
            raise InputError(
                f"target equals source for sample(s) {same.tolist()} (class {int(src[same[0]])}): "
                "a one-vs-one score S_source - S_target needs two different classes"
            )
    return ScoreSpec(src, tgt, class_weights(src, tgt, num_classes), output)


def weighted_score(module: nn.Module, x: torch.Tensor, weights: torch.Tensor, output: str = "logits") -> torch.Tensor:
    """Per-sample score ``sum_k weights[n, k] * out_k(x_n)`` on logits or probabilities; differentiable."""
    out = module(x)
    if output == "probabilities":
        out = torch.softmax(out, dim=1)
    return (out * weights).sum(dim=1)


def attributed_score(module: nn.Module, x: torch.Tensor, spec: ScoreSpec) -> torch.Tensor:
    """Per-sample score ``S_source - S_target`` (or ``S_source``) of ``x`` under ``spec``; differentiable."""
    return weighted_score(module, x, spec.weights, spec.output)


def weighted_gradient(
    module: nn.Module, x: torch.Tensor, weights: torch.Tensor, output: str = "logits"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`weighted_score` and its gradient w.r.t. ``x`` (one backward pass for the batch)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        score = weighted_score(module, xg, weights, output)
        (grad,) = torch.autograd.grad(score.sum(), xg)
    return score.detach(), grad


def input_gradient(module: nn.Module, x: torch.Tensor, spec: ScoreSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Score and its gradient w.r.t. ``x`` (one backward pass for the batch)."""
    return weighted_gradient(module, x, spec.weights, spec.output)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run with dropout and batch norm in inference mode, restoring the caller's mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32, copy=False)


BaselineFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def baseline_batch(baseline: object, x: torch.Tensor, spec: ScoreSpec, model: object = None,
                   generator: object = None) -> torch.Tensor:
    """Resolve a baseline spec (name, number, array, callable) to a finite tensor shaped like ``x``.

    ``baseline="ganmex"`` runs ``generator`` (or, when that is None, the generator of ``model`` if it
    is a :class:`~xaisdk.models.GanmexModel`) on ``x`` and the per-sample target classes.
    """
    from xaisdk.baselines import make_baseline
    from xaisdk.models.ganmex_baseline import generator_for, is_generator_name

    if is_generator_name(baseline):
        baseline = generator_for(str(baseline), model, generator)
    elif generator is not None:
        raise InputError(f"generator= is used only with baseline='ganmex' (the baseline given is {baseline!r})")
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.detach().cpu().numpy()
    value = make_baseline(baseline, to_numpy(x), spec.target)  # type: ignore[arg-type]
    if not np.isfinite(value).all():
        raise InputError("baseline: contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
