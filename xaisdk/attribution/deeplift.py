"""DeepLIFT with the rescale rule (Shrikumar et al. 2017) and DeepSHAP (DeepLIFT averaged over baselines).

The rescale rule replaces the local derivative of every element-wise nonlinearity by
``(f(x) - f(x0)) / (x - x0)`` (the ordinary derivative where ``|x - x0| < eps``). Between them the
network must be affine (convolutions, linear layers, batch norm in eval mode, average pooling,
flatten, dropout in eval mode), and then the attributions sum exactly to ``S(x) - S(x0)``.
Nonlinearities are found as ``nn.Module`` instances; a model that calls ``F.relu`` directly is
not rescaled there, which the convergence delta reveals.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from xaisdk.attribution._inputs import (
    ClassSpec,
    ScoreSpec,
    as_batch,
    as_module,
    attributed_score,
    baseline_batch,
    chunks,
    eval_mode,
    score_spec,
    to_numpy,
    weighted_score,
)
from xaisdk.baselines.generated import generator_for, is_generator_name
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel

ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
    nn.LogSigmoid, nn.Tanhshrink,
)  # fmt: skip
UNSUPPORTED = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.LayerNorm, nn.GroupNorm,
    nn.LocalResponseNorm, nn.MultiheadAttention, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)  # fmt: skip
EPS = 1e-10


class _RescaleHooks:
    """Forward hooks that give each element-wise nonlinearity the rescale-rule gradient.

    The batch holds the inputs in its first half and their baselines in its second; each hook
    returns ``out.detach() + (inp - inp.detach()) * m`` so the value is unchanged and the gradient
    w.r.t. ``inp`` is the multiplier ``m`` (the same for both halves). The hooks act only on forward
    passes of the thread that activated them, so other threads may run the module meanwhile.
    """

    def __init__(self, module: nn.Module, eps: float = EPS) -> None:
        self.module = module
        self.eps = eps
        self._busy = False
        self._thread: int | None = None

    def _local_derivative(self, mod: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        self._busy = True  # the module is called again below: its own hook must pass through
        try:
            with torch.enable_grad():
                probe = inp.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(mod(probe).sum(), probe)
        finally:
            self._busy = False
        return grad

    def _hook(self, mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor | None:
        if self._busy or threading.get_ident() != self._thread:
            return None
        inp = inputs[0]
        half = inp.shape[0] // 2
        d_in = inp[:half] - inp[half:]
        d_out = out[:half] - out[half:]
        near = d_in.abs() < self.eps
        ratio = d_out / torch.where(near, torch.ones_like(d_in), d_in)
        multiplier = ratio
        if near.any():
            multiplier = torch.where(near, self._local_derivative(mod, inp[:half]), ratio)
        multiplier = multiplier.detach()
        multiplier = torch.cat([multiplier, multiplier])
        return out.detach() + (inp - inp.detach()) * multiplier

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        handles, inplace = [], []
        layer = unsupported_layer(self.module)
        if layer is not None:
            raise unsupported_error(layer)
        self._thread = threading.get_ident()
        try:
            for sub in self.module.modules():
                if isinstance(sub, ELEMENTWISE):
                    if getattr(sub, "inplace", False):
                        sub.inplace = False  # an in-place op would overwrite the input the hook compares
                        inplace.append(sub)
                    handles.append(sub.register_forward_hook(self._hook))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for sub in inplace:
                sub.inplace = True
            self._thread = None


def unsupported_layer(module: nn.Module) -> nn.Module | None:
    """The first submodule of ``module`` that the rescale rule does not cover (see ``UNSUPPORTED``), or None."""
    return next((sub for sub in module.modules() if isinstance(sub, UNSUPPORTED)), None)


def unsupported_error(layer: nn.Module) -> InputError:
    """The error raised for DeepLIFT on a model containing ``layer``."""
    return InputError(
        f"deeplift: the model contains {type(layer).__name__}, which the rescale rule does not cover "
        "(supported: affine layers and element-wise activations); use integrated_gradients instead"
    )


def rescale_multipliers(
    module: nn.Module, x: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Rescale-rule multipliers of ``sum_k weights[n, k] * logits_k`` for paired rows of ``x`` and ``base``.

    ``(x - base) * multipliers`` are the DeepLIFT attributions. Forward hooks are registered on
    ``module`` for the duration of the call (they act on this thread's forward passes only), so two
    calls on one module must not overlap; ``module`` should be in eval mode.

    >>> net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU()).eval()
    >>> with torch.no_grad(): _ = net[0].weight.fill_(2.0)
    >>> rescale_multipliers(net, torch.tensor([[3.0]]), torch.tensor([[-1.0]]), torch.ones(1, 1)).tolist()
    [[1.5]]
    """
    hooks = _RescaleHooks(module, eps)
    both = torch.cat([x, base]).requires_grad_(True)
    with hooks.active(), torch.enable_grad():
        scores = weighted_score(module, both, torch.cat([weights, weights]))
        (grads,) = torch.autograd.grad(scores[: len(x)].sum(), both)
    return grads[: len(x)]


def _deeplift_rows(module: nn.Module, x: torch.Tensor, base: torch.Tensor, spec: ScoreSpec, eps: float) -> torch.Tensor:
    """Rescale-rule attributions for paired rows of ``x`` and ``base`` (logits only, see ``_check_output``)."""
    return (x - base) * rescale_multipliers(module, x, base, spec.weights, eps)


def _check_output(output: str) -> None:
    if output != "logits":
        raise InputError(
            "deeplift/deepshap: only output='logits' is supported; the rescale rule does not cover the "
            "softmax across classes"
        )


def _delta(module: nn.Module, x: torch.Tensor, base: torch.Tensor, spec: ScoreSpec, attr: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        expected = attributed_score(module, x, spec) - attributed_score(module, base, spec)
    return attr.flatten(1).sum(1) - expected


def deeplift(
    model: nn.Module | Classifier | GanmexModel,
    x: np.ndarray | torch.Tensor,
    *,
    source: ClassSpec = None,
    target: ClassSpec = None,
    baseline: object = "zero",
    generator: object = None,
    output: str = "logits",
    batch_size: int | None = None,
    eps: float = EPS,
    return_convergence_delta: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """DeepLIFT (rescale rule) of ``S_source - S_target`` relative to ``baseline``.

    Attributions sum to ``S(x) - S(baseline)`` for networks of affine layers and element-wise
    activation modules; ``return_convergence_delta`` also returns that sum's error per sample.
    Models with max pooling, softmax or normalization across features raise ``InputError``.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> x = np.array([[0.5, -1.0]], np.float32)
    >>> attr, delta = deeplift(net, x, source=0, target=1, return_convergence_delta=True)
    >>> attr.shape, bool(abs(delta[0]) < 1e-5)
    ((1, 2), True)
    """
    _check_output(output)
    module = as_module(model)
    xt = as_batch(x)
    with eval_mode(module):
        spec = score_spec(module, xt, source, target, output)
        base = baseline_batch(baseline, xt, spec, model, generator)
        attr = torch.empty_like(xt)
        for sl in chunks(len(xt), batch_size):
            rows = np.arange(sl.start, sl.stop)
            attr[sl] = _deeplift_rows(module, xt[sl], base[sl], spec.select(rows), eps)
        if not return_convergence_delta:
            return to_numpy(attr)
        return to_numpy(attr), to_numpy(_delta(module, xt, base, spec, attr))


def deepshap(
    model: nn.Module | Classifier | GanmexModel,
    x: np.ndarray | torch.Tensor,
    *,
    baselines: Any,
    generator: object = None,
    source: ClassSpec = None,
    target: ClassSpec = None,
    output: str = "logits",
    batch_size: int | None = None,
    eps: float = EPS,
    return_convergence_delta: bool = False,
    progress: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """DeepSHAP: DeepLIFT averaged over a set of baselines (as SHAP's DeepExplainer and Captum's
    DeepLiftShap), attributing ``S_source - S_target``.

    ``baselines``: (M, C, H, W) shared by every input, (N, M, C, H, W) per input (e.g.
    ``TargetClassSample(...).references(target, M)`` for target-class baselines), or a callable
    ``(x, target) -> (N, M, C, H, W)``, or ``"ganmex"`` for the one GANMEX baseline per input (from
    ``generator`` or the GANMEX model passed as ``model``). The convergence delta compares the sum of attributions with
    ``S(x) - mean_m S(b_m)``.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> attr = deepshap(net, np.ones((2, 2), np.float32), baselines=np.zeros((4, 2), np.float32), source=0)
    >>> attr.shape
    (2, 2)
    """
    _check_output(output)
    module = as_module(model)
    xt = as_batch(x)
    with eval_mode(module):
        spec = score_spec(module, xt, source, target, output)
        if is_generator_name(baselines):
            baselines = generator_for(str(baselines), model, generator)(to_numpy(xt), spec.target)[:, None]
        elif generator is not None:
            raise InputError("generator= is used only with baselines='ganmex'")
        elif callable(baselines):
            baselines = baselines(to_numpy(xt), spec.target)
        refs = torch.as_tensor(np.asarray(baselines, dtype=np.float32))
        if refs.ndim == xt.ndim:
            refs = refs.unsqueeze(0).expand(len(xt), *refs.shape)
        if refs.ndim != xt.ndim + 1 or refs.shape[0] != len(xt) or refs.shape[2:] != xt.shape[1:]:
            raise InputError(
                f"baselines: expected (M, {', '.join(map(str, xt.shape[1:]))}) or "
                f"({len(xt)}, M, ...), got {tuple(refs.shape)}"
            )
        if not torch.isfinite(refs).all():
            raise InputError("baselines: contains NaN or infinite values")
        n_refs = refs.shape[1]
        flat_x = xt.repeat_interleave(n_refs, dim=0)
        flat_b = refs.reshape(-1, *xt.shape[1:]).contiguous()
        flat_spec = spec.repeat(n_refs)
        attr = torch.empty_like(flat_x)
        pieces = list(chunks(len(flat_x), batch_size))
        for sl in tqdm(pieces, desc="deepshap", unit="chunk", disable=not progress or len(pieces) < 2):
            rows = np.arange(sl.start, sl.stop)
            attr[sl] = _deeplift_rows(module, flat_x[sl], flat_b[sl], flat_spec.select(rows), eps)
        per_input = attr.view(len(xt), n_refs, *xt.shape[1:]).mean(1)
        if not return_convergence_delta:
            return to_numpy(per_input)
        delta = _delta(module, flat_x, flat_b, flat_spec, attr).view(len(xt), n_refs).mean(1)
    return to_numpy(per_input), to_numpy(delta)
