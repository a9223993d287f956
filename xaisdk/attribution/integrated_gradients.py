"""Integrated Gradients (Sundararajan et al. 2017) of the one-vs-one score delta."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from xaisdk.attribution._inputs import (
    AUTO_ROWS,
    ClassSpec,
    ScoreSpec,
    as_batch,
    as_module,
    attributed_score,
    baseline_batch,
    chunks,
    eval_mode,
    input_gradient,
    score_spec,
    to_numpy,
)
from xaisdk.methods.common import batch_rows
from xaisdk.methods.quadrature import path_rule
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel


def path_gradient_sum(
    module: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    spec: ScoreSpec,
    alphas: np.ndarray,
    weights: np.ndarray,
    batch_size: int | None,
    progress: bool = False,
) -> torch.Tensor:
    """``sum_s w_s * grad S(b + a_s (x - b))`` per sample, over (sample, step) pairs in fixed-size chunks."""
    n_steps = len(alphas)
    alpha_t = torch.as_tensor(alphas, dtype=torch.float32)
    weight_t = torch.as_tensor(weights, dtype=torch.float32)
    acc = torch.zeros_like(x)
    view = (-1,) + (1,) * (x.ndim - 1)
    pieces = list(chunks(len(x) * n_steps, batch_rows(batch_size, AUTO_ROWS)))
    for sl in tqdm(pieces, desc="integrated gradients", unit="chunk", disable=not progress or len(pieces) < 2):
        flat = torch.arange(sl.start, sl.stop)
        sample, step = flat // n_steps, flat % n_steps
        points = baseline[sample] + alpha_t[step].view(view) * (x[sample] - baseline[sample])
        _, grads = input_gradient(module, points, spec.select(sample.numpy()))
        acc.index_add_(0, sample, grads * weight_t[step].view(view))
    return acc


def integrated_gradients(
    model: nn.Module | Classifier | GanmexModel,
    x: np.ndarray | torch.Tensor,
    *,
    source: ClassSpec = None,
    target: ClassSpec = None,
    baseline: object = "zero",
    generator: object = None,
    n_steps: int = 200,
    rule: str = "riemann_middle",
    output: str = "logits",
    batch_size: int | None = None,
    return_convergence_delta: bool = False,
    progress: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Integrated Gradients of ``S_source - S_target`` along the straight path from ``baseline`` to ``x``.

    ``attr = (x - b) * sum_s w_s dS/dx(b + a_s (x - b))`` with the quadrature ``rule`` (see
    :func:`~xaisdk.methods.quadrature.path_rule`). ``source`` defaults to the predicted class;
    ``target=None`` attributes ``S_source`` alone (one-vs-all). ``source``, ``target`` and ``baseline``
    may be given per sample. ``batch_size`` bounds the rows of one forward/backward pass (None: up to
    1,024), so memory does not grow with ``n_steps``; ``n_steps`` and ``batch_size`` are integers
    bounded by the :class:`~xaisdk.limits.Limits` in force. With ``return_convergence_delta`` also
    returns, per sample, ``sum(attr) - (S(x) - S(b))`` (the completeness error).

    >>> import torch
    >>> class Square(torch.nn.Module):
    ...     def forward(self, x): return torch.stack([(x ** 2).sum(1), torch.zeros(len(x))], 1)
    >>> attr, delta = integrated_gradients(Square(), np.array([[1.0, 2.0]], np.float32), source=0,
    ...                                    n_steps=50, return_convergence_delta=True)
    >>> np.round(attr, 4).tolist(), abs(float(delta[0])) < 1e-4
    ([[1.0, 4.0]], True)
    """
    alphas, weights = path_rule(rule, n_steps)
    rows = batch_rows(batch_size, AUTO_ROWS)
    module = as_module(model)
    xt = as_batch(x)
    with eval_mode(module):
        spec = score_spec(module, xt, source, target, output)
        base = baseline_batch(baseline, xt, spec, model, generator)
        attr = (xt - base) * path_gradient_sum(module, xt, base, spec, alphas, weights, rows, progress)
        if not return_convergence_delta:
            return to_numpy(attr)
        with torch.no_grad():
            expected = attributed_score(module, xt, spec) - attributed_score(module, base, spec)
    delta = attr.flatten(1).sum(1) - expected
    return to_numpy(attr), to_numpy(delta)
