"""Expected Gradients (Erion et al. 2019), one-vs-one: references from the target class."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from xaisdk.attribution._inputs import (
    AUTO_ROWS,
    ClassSpec,
    as_batch,
    as_module,
    chunks,
    eval_mode,
    input_gradient,
    score_spec,
    to_numpy,
)
from xaisdk.errors import InputError
from xaisdk.limits import check_size
from xaisdk.methods.common import batch_rows, reference_indices
from xaisdk.models.checkpoint import Classifier


def expected_gradients(
    model: nn.Module | Classifier,
    x: np.ndarray | torch.Tensor,
    *,
    references: Any,
    reference_labels: np.ndarray | None = None,
    source: ClassSpec = None,
    target: ClassSpec = None,
    n_samples: int = 200,
    seed: int = 0,
    output: str = "logits",
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Expected Gradients: ``E_{r, a ~ U(0,1)} [(x - r) * dS/dx(r + a (x - r))]`` by Monte Carlo.

    ``references`` are reference images (M, C, H, W), or a dataset with ``.x`` and ``.y``. When their
    labels are known (``reference_labels`` or the dataset's ``.y``) and ``target`` is given, each
    input's references are drawn from its *target* class only: the one-vs-one variant of the GANMEX
    paper. Otherwise they are drawn from all references. Draws are reproducible by ``seed``.
    ``n_samples`` and ``batch_size`` (rows per pass; None: up to 1,024) are integers bounded by the
    :class:`~xaisdk.limits.Limits` in force; memory does not grow with ``n_samples``.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> refs = np.zeros((3, 2), np.float32)
    >>> x = np.array([[1.0, -1.0]], np.float32)
    >>> eg = expected_gradients(lin, x, references=refs, source=0, target=1, n_samples=10)
    >>> bool(np.allclose(eg, x * (lin.weight[0] - lin.weight[1]).detach().numpy(), atol=1e-6))
    True
    """
    if hasattr(references, "x") and hasattr(references, "y"):
        references, reference_labels = references.x, references.y if reference_labels is None else reference_labels
    refs = as_batch(references, "references")
    labels = None if reference_labels is None else np.asarray(reference_labels)
    if labels is not None and labels.shape != (len(refs),):
        raise InputError(f"reference_labels: expected shape ({len(refs)},), got {labels.shape}")
    n_samples = check_size(n_samples, "n_samples")
    rows = batch_rows(batch_size, AUTO_ROWS)
    module = as_module(model)
    xt = as_batch(x)
    if refs.shape[1:] != xt.shape[1:]:
        raise InputError(f"references: image shape {tuple(refs.shape[1:])} differs from inputs {tuple(xt.shape[1:])}")
    with eval_mode(module):
        spec = score_spec(module, xt, source, target, output)
        rng = np.random.default_rng(seed)
        ref_index = torch.from_numpy(reference_indices(labels, spec.target, len(xt), len(refs), n_samples, rng))
        alphas = torch.from_numpy(rng.uniform(0.0, 1.0, size=(len(xt), n_samples)).astype(np.float32))
        acc = torch.zeros_like(xt)
        view = (-1,) + (1,) * (xt.ndim - 1)
        pieces = list(chunks(len(xt) * n_samples, rows))
        for sl in tqdm(pieces, desc="expected gradients", unit="chunk", disable=not progress or len(pieces) < 2):
            flat = torch.arange(sl.start, sl.stop)
            sample, k = flat // n_samples, flat % n_samples
            start = refs[ref_index[sample, k]]
            diff = xt[sample] - start
            _, grads = input_gradient(module, start + alphas[sample, k].view(view) * diff, spec.select(sample.numpy()))
            acc.index_add_(0, sample, diff * grads)
    return to_numpy(acc / n_samples)
