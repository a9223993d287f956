"""Single-feature metrics: faithfulness (Alvarez-Melis & Jaakkola 2018) and monotonicity (Nguyen &
Martinez 2020), as the GANMEX appendix §C.4 reports them.

Both perturb one group of ``features_in_step`` pixels at a time (groups taken in the map's
descending order, as Quantus does; one pixel by default), never cumulatively, and correlate what
each group's perturbation does to the model with the attribution the group received. All perturbed
images go through the model in batches (C++ row construction). A correlation over a constant map
or a constant response is undefined and is NaN, not 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaisdk.errors import InputError
from xaisdk.metrics._common import MetricResult, as_maps, pearson_rows, pixel_saliency, resolve_pairs, spearman_rows
from xaisdk.metrics.perturbation import row_scores, score_function
from xaisdk.metrics.substrates import make_substrate
from xaisdk.runtime.perturbation import descending_order, perturbation_scores

__all__ = ["faithfulness", "monotonicity"]


def _groups(maps: np.ndarray, features_in_step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order, group bounds lo/hi (N, G) and each group's summed attribution (N, G)."""
    saliency = pixel_saliency(maps)
    n, pixels = saliency.shape
    if isinstance(features_in_step, bool) or not isinstance(features_in_step, (int, np.integer)) or features_in_step < 1:
        raise InputError(f"features_in_step: expected a positive integer, got {features_in_step!r}")
    order = descending_order(saliency)
    starts = np.arange(0, pixels, features_in_step, dtype=np.int64)
    ends = np.minimum(starts + features_in_step, pixels)
    ranked = np.take_along_axis(saliency, order, axis=1)
    group_sums = np.add.reduceat(ranked, starts, axis=1)
    lo = np.broadcast_to(starts, (n, len(starts))).copy()
    hi = np.broadcast_to(ends, (n, len(ends))).copy()
    return order, lo, hi, group_sums


def faithfulness(model: Any, x: np.ndarray, attributions: np.ndarray, source: Any = None, target: Any = None, *,
                 substrate: Any = "zero", baseline: Any = None, features_in_step: int = 1, seed: int = 0,
                 chunk_size: int = 256, progress: bool = False) -> MetricResult:
    """Faithfulness (Alvarez-Melis & Jaakkola 2018): per sample, the Pearson correlation between
    each pixel group's attribution (summed) and the score drop ``f(x) - f(x with that group replaced
    by the substrate)``. The paper sets features to a baseline value: ``substrate="zero"`` (default,
    Quantus' "black"), ``"baseline"`` with ``baseline=`` images, or any substrate of
    :mod:`~xaisdk.metrics.substrates`. ``f`` is the attributed score (``S_source - S_target``
    one-vs-one). Higher is better; in [-1, 1].

    For a linear model with the zero substrate, gradient x input is exactly faithful (1.0):

    >>> import numpy as np, torch
    >>> from xaisdk.torch_runtime.torch_backend import TorchBackend
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    >>> with torch.no_grad(): _ = net[1].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.0, 0, 0, 0]]))
    >>> model, x = TorchBackend(net, input_shape=(1, 2, 2)), np.full((1, 1, 2, 2), 0.5, np.float32)
    >>> gxi = x * np.array([1.0, -2.0, 3.0, 0.5]).reshape(1, 1, 2, 2)
    >>> round(float(faithfulness(model, x, gxi, 0, 1).per_sample[0]), 6)
    1.0
    """
    pairs = resolve_pairs(model, x, source, target)
    maps = as_maps(attributions, pairs.x)
    order, lo, hi, group_sums = _groups(maps, features_in_step)
    sub = make_substrate(substrate, pairs.x, pairs.backend.value_range, baseline=baseline, seed=seed)
    score_fn = score_function(pairs, "delta")
    unperturbed = score_fn(pairs.x, np.arange(len(pairs.x)))
    perturbed = row_scores(pairs, "delta", pairs.x, sub, order, lo, hi, chunk_size=chunk_size, progress=progress,
                           desc="faithfulness")
    drops = unperturbed[:, None] - perturbed
    return MetricResult("faithfulness", pearson_rows(group_sums, drops),
                        details={"substrate": substrate if isinstance(substrate, str) else "array",
                                 "features_in_step": features_in_step, "correlation": "pearson"})


def monotonicity(model: Any, x: np.ndarray, attributions: np.ndarray, source: Any = None, target: Any = None, *,
                 n_samples: int = 10, features_in_step: int = 1, seed: int = 0, chunk_size: int = 256,
                 progress: bool = False) -> MetricResult:
    """Monotonicity correlation (Nguyen & Martinez 2020): per sample, the Spearman rank correlation
    between each pixel group's attribution magnitude ``|sum of the group's attributions|`` and its
    importance ``E_u[(f(x) - f(x with the group set to u))^2]``, the expectation estimated over
    ``n_samples`` draws of uniform noise ``u`` over the model's value range (seeded). ``f`` is the
    attributed score. Higher is better; in [-1, 1].

    >>> import numpy as np, torch
    >>> from xaisdk.torch_runtime.torch_backend import TorchBackend
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    >>> with torch.no_grad(): _ = net[1].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.0, 0, 0, 0]]))
    >>> model, x = TorchBackend(net, input_shape=(1, 2, 2)), np.full((1, 1, 2, 2), 0.5, np.float32)
    >>> gradient = np.array([1.0, -2.0, 3.0, 0.5]).reshape(1, 1, 2, 2)
    >>> float(monotonicity(model, x, gradient, 0, 1, n_samples=200).per_sample[0])
    1.0
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise InputError(f"n_samples: expected a positive integer, got {n_samples!r}")
    pairs = resolve_pairs(model, x, source, target)
    maps = as_maps(attributions, pairs.x)
    order, lo, hi, group_sums = _groups(maps, features_in_step)
    n = len(pairs.x)
    score_fn = score_function(pairs, "delta")
    unperturbed = score_fn(pairs.x, np.arange(n))
    # Each noise draw is one "virtual sample": the input repeated with its own uniform substrate.
    repeat = np.repeat(np.arange(n), n_samples)
    noise = make_substrate("uniform", pairs.x[repeat], pairs.backend.value_range, seed=seed)
    perturbed = perturbation_scores(lambda images, virtual: score_fn(images, repeat[virtual]), pairs.x[repeat], noise,
                                    order[repeat], lo[repeat], hi[repeat], chunk_size=chunk_size, progress=progress,
                                    desc="monotonicity")
    squared = (unperturbed[repeat, None] - perturbed) ** 2
    importance = squared.reshape(n, n_samples, -1).mean(1)
    return MetricResult("monotonicity", spearman_rows(np.abs(group_sums), importance),
                        details={"n_samples": n_samples, "features_in_step": features_in_step, "noise": "uniform",
                                 "correlation": "spearman"})
