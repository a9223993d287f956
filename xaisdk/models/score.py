"""A classifier wrapped to output one weighted score per sample, e.g. ``S_source - S_target``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class WeightedScore(nn.Module):
    """``forward(x, w) = sum_k w[n, k] * logits(x)[n, k]``: with ``w = e_source - e_target`` the
    one-vs-one score delta, with ``w = e_source`` the one-vs-all score. One module serves every
    class pair, which is how other attribution libraries (Captum's ``additional_forward_args``) and
    exported gradient graphs take the class choice.

    >>> lin = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad(): _ = lin.weight.copy_(torch.tensor([[1., 0.], [0., 1.], [1., 1.]]))
    >>> WeightedScore(lin)(torch.tensor([[2., 5.]]), class_weights([0], [1], 3)).tolist()
    [-3.0]
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (self.model(x) * w).sum(dim=1)


def class_weights(source, target, num_classes: int) -> torch.Tensor:
    """(N, num_classes) weights ``e_source - e_target`` (``e_source`` where ``target`` is None).

    >>> class_weights([2], None, 3).tolist()
    [[0.0, 0.0, 1.0]]
    """
    source = np.asarray(source, dtype=np.int64)
    w = torch.zeros(len(source), num_classes)
    w[torch.arange(len(source)), torch.from_numpy(source)] = 1.0
    if target is not None:
        w[torch.arange(len(source)), torch.from_numpy(np.asarray(target, dtype=np.int64))] -= 1.0
    return w
