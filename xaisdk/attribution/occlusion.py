"""Occlusion (Zeiler & Fergus 2014) of the one-vs-one score: slide a window, replace it by a
baseline, attribute the score drop to the occluded pixels."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from xaisdk.attribution._inputs import (
    AUTO_ROWS,
    ClassSpec,
    as_batch,
    as_module,
    attributed_score,
    baseline_batch,
    chunks,
    eval_mode,
    score_spec,
    to_numpy,
)
from xaisdk.errors import InputError
from xaisdk.methods.common import batch_rows, occlusion_covers, window_starts
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel

__all__ = ["occlusion", "window_starts"]


def occlusion(
    model: nn.Module | Classifier | GanmexModel,
    x: np.ndarray | torch.Tensor,
    *,
    source: ClassSpec = None,
    target: ClassSpec = None,
    window: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    baseline: object = 0.0,
    generator: object = None,
    output: str = "logits",
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Occlusion: each pixel gets the mean, over the windows covering it, of ``S(x) - S(x with the
    window replaced by the baseline)``; all channels are occluded together. ``window=1`` is the
    GANMEX paper's Occlusion-1. Equals Captum's ``Occlusion`` with sliding window (C, h, w) and
    strides (C, sh, sw). ``window`` and ``stride`` are positive integers (one, or (height, width));
    ``batch_size`` (rows per pass; None: up to 1,024) is bounded by the :class:`~xaisdk.limits.Limits`
    in force.

    >>> import torch
    >>> lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    >>> with torch.no_grad(): _ = lin[1].weight.copy_(torch.tensor([[1., 2., 3., 4.], [0., 0., 0., 0.]]))
    >>> occlusion(lin, np.ones((1, 1, 2, 2), np.float32), source=0, target=1).ravel().tolist()
    [1.0, 2.0, 3.0, 4.0]
    """
    rows = batch_rows(batch_size, AUTO_ROWS)
    module = as_module(model)
    xt = as_batch(x)
    if xt.ndim != 4:
        raise InputError(f"x: occlusion needs images (N, C, H, W), got shape {tuple(xt.shape)}")
    height, width = xt.shape[2:]
    rows_in, cols_in = map(torch.from_numpy, occlusion_covers(height, width, window, stride))  # (positions, H), (positions, W)
    n_pos = len(rows_in) * len(cols_in)
    with eval_mode(module), torch.no_grad():
        spec = score_spec(module, xt, source, target, output)
        base = baseline_batch(baseline, xt, spec, model, generator)
        reference = attributed_score(module, xt, spec)
        total = torch.zeros(len(xt), 1, height, width)
        pieces = list(chunks(len(xt) * n_pos, rows))
        for sl in tqdm(pieces, desc="occlusion", unit="chunk", disable=not progress or len(pieces) < 2):
            flat = torch.arange(sl.start, sl.stop)
            sample, pos = flat // n_pos, flat % n_pos
            masks = (rows_in[pos // len(cols_in)][:, :, None] * cols_in[pos % len(cols_in)][:, None, :]).unsqueeze(1)
            occluded = xt[sample] * (1 - masks) + base[sample] * masks
            drop = reference[sample] - attributed_score(module, occluded, spec.select(sample.numpy()))
            total.index_add_(0, sample, drop.view(-1, 1, 1, 1) * masks)
        counts = rows_in.sum(0)[:, None] * cols_in.sum(0)[None, :]  # windows covering each pixel
    return to_numpy((total / counts).expand_as(xt).contiguous())
