"""DeepLIFT with the rescale rule (Shrikumar et al. 2017) and DeepSHAP (DeepLIFT averaged over baselines).

The rescale rule replaces the local derivative of every element-wise nonlinearity by
``(f(x) - f(x0)) / (x - x0)`` (the ordinary derivative where ``|x - x0| < eps``); self-gated units
(SiLU, GELU, Mish, Hardswish) count as one element-wise nonlinearity. Max pooling follows Captum's
``maxpool`` rule (each window's change goes to the maxima of the input's and the baseline's window).
Between them the network must be affine (convolutions, linear layers, batch norm in eval mode,
average pooling, flatten, dropout in eval mode), and then the attributions sum exactly to
``S(x) - S(x0)``. The forward is traced with torch.fx (:mod:`xaisdk.attribution.deeplift_trace`), so
functional nonlinearities and poolings (``torch.clamp``, ``F.relu``, ``F.silu``, ``x.sigmoid()``,
``F.max_pool2d``) are handled like modules, and models the rules do not cover (products of two
input-dependent tensors as in squeeze-excitation, attention or a gate written out as
``x * torch.sigmoid(x)``, softmax, normalization across features, forwards torch.fx cannot trace)
are refused with the sentence the ONNX builder uses (:mod:`xaisdk.methods.deeplift_rules`).
"""

from __future__ import annotations

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
)
from xaisdk.attribution.deeplift_trace import deeplift_plan, rescaled_forward
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel
from xaisdk.models.ganmex_baseline import generator_for, is_generator_name

EPS = 1e-10


def unsupported_error(reason: str) -> InputError:
    """The error raised for DeepLIFT on a model it does not cover, for the ``reason`` of :func:`deeplift_refusal`."""
    return InputError(f"deeplift: {reason}")


def deeplift_refusal(module: nn.Module) -> str | None:
    """Why DeepLIFT's rescale rule does not cover ``module``'s forward, or None when it does.

    The forward is traced with torch.fx and every op checked against the op kinds shared with the
    ONNX builder (:mod:`xaisdk.methods.deeplift_rules`): products of two input-dependent tensors
    (squeeze-excitation, attention), softmax and normalization across features are refused, as is a
    forward that cannot be traced. Self-gated modules and functions (``nn.SiLU``, ``F.gelu``...) and max
    pooling are covered; a gate written out by hand (``x * torch.sigmoid(x)``) is refused here
    although an ONNX bundle of the same model offers DeepLIFT (its builder finds the element-wise unit
    in the exported graph), so write it as ``F.silu(x)`` to get DeepLIFT from both backends. The
    analysis is cached per module until its structure, modes, hooks or parameters change.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> deeplift_refusal(net) is None
    True
    >>> class Gated(nn.Module):
    ...     def forward(self, x):
    ...         return x * torch.sigmoid(x)
    >>> deeplift_refusal(Gated()).split(" (")[0]
    "DeepLIFT's rescale rule does not cover products of two input-dependent tensors"
    >>> deeplift_refusal(nn.Sequential(nn.Conv2d(1, 2, 3), nn.SiLU(), nn.MaxPool2d(2))) is None
    True
    """
    return deeplift_plan(module).refusal


def rescale_multipliers(
    module: nn.Module, x: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Rescale-rule multipliers of ``sum_k weights[n, k] * logits_k`` for paired rows of ``x`` and ``base``.

    ``(x - base) * multipliers`` are the DeepLIFT attributions. The forward is run from its torch.fx
    trace with every element-wise nonlinearity rescaled, modules (``nn.ReLU``) and functions
    (``torch.clamp``, ``F.relu``, ``x.sigmoid()``) alike, and Captum's rule at every max pooling; the
    module itself is not modified, so calls may overlap. ``module`` should be in eval mode. Raises
    :class:`~xaisdk.InputError` when :func:`deeplift_refusal` refuses the model.

    >>> net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU()).eval()
    >>> with torch.no_grad(): _ = net[0].weight.fill_(2.0)
    >>> rescale_multipliers(net, torch.tensor([[3.0]]), torch.tensor([[-1.0]]), torch.ones(1, 1)).tolist()
    [[1.5]]
    """
    plan = deeplift_plan(module)
    if plan.refusal is not None:
        raise unsupported_error(plan.refusal)
    both = torch.cat([x, base]).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = rescaled_forward(plan, both, eps)
        scores = (logits[: len(x)] * weights).sum(dim=1)
        (grads,) = torch.autograd.grad(scores.sum(), both)
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
    activations (modules or functions), self-gated units (SiLU, GELU, Mish, Hardswish) and max pooling
    (Captum's rule); ``return_convergence_delta`` also returns that sum's error per sample. Models the
    rules do not cover raise ``InputError`` (see :func:`deeplift_refusal`): softmax, normalization
    across features, products of two input-dependent tensors.

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
