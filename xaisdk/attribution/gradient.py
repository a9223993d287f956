"""Plain gradient and gradient x input of the (one-vs-one) score."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xaisdk.attribution._inputs import (
    ClassSpec,
    as_batch,
    as_module,
    chunks,
    eval_mode,
    input_gradient,
    score_spec,
    to_numpy,
)
from xaisdk.models.checkpoint import Classifier


def gradient(
    model: nn.Module | Classifier,
    x: np.ndarray | torch.Tensor,
    *,
    source: ClassSpec = None,
    target: ClassSpec = None,
    output: str = "logits",
    batch_size: int | None = None,
) -> np.ndarray:
    """Gradient of ``S_source - S_target`` (``S_source`` when ``target`` is None) w.r.t. the input.

    >>> import torch
    >>> lin = torch.nn.Linear(3, 2, bias=False)
    >>> with torch.no_grad(): _ = lin.weight.copy_(torch.tensor([[1., 2., 3.], [0., 1., 0.]]))
    >>> gradient(lin, np.ones((1, 3), np.float32), source=0, target=1).tolist()
    [[1.0, 1.0, 3.0]]
    """
    module = as_module(model)
    xt = as_batch(x)
    with eval_mode(module):
        spec = score_spec(module, xt, source, target, output)
        grads = torch.empty_like(xt)
        for sl in chunks(len(xt), batch_size):
            grads[sl] = input_gradient(module, xt[sl], spec.select(np.arange(sl.start, sl.stop)))[1]
    return to_numpy(grads)


def grad_x_input(
    model: nn.Module | Classifier,
    x: np.ndarray | torch.Tensor,
    *,
    source: ClassSpec = None,
    target: ClassSpec = None,
    output: str = "logits",
    batch_size: int | None = None,
) -> np.ndarray:
    """Input times the gradient of the score (Shrikumar et al. 2016).

    >>> import torch
    >>> lin = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad(): _ = lin.weight.copy_(torch.tensor([[2., 0.], [0., 1.]]))
    >>> grad_x_input(lin, np.array([[3., 4.]], np.float32), source=0, target=1).tolist()
    [[6.0, -4.0]]
    """
    grads = gradient(model, x, source=source, target=target, output=output, batch_size=batch_size)
    return to_numpy(as_batch(x)) * grads
