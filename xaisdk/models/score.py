"""A classifier wrapped to output one weighted score per sample, e.g. ``S_source - S_target``."""

from __future__ import annotations

import torch
from torch import nn

from xaisdk.runtime.backend import class_weights as numpy_class_weights


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
    """(N, num_classes) weights ``e_source - e_target`` (``e_source`` where ``target`` is None), as a
    tensor; see :func:`xaisdk.runtime.backend.class_weights`.

    >>> class_weights([2], None, 3).tolist()
    [[0.0, 0.0, 1.0]]
    """
    return torch.from_numpy(numpy_class_weights(source, target, num_classes))
