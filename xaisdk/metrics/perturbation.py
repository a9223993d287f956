"""Perturbation curves and the areas over / under them: pixel flipping, AOPC, deletion / insertion, AOSPC.

All curves remove pixels (every channel of a pixel position at once) in the order of the per-pixel
saliency (channels summed, :func:`~xaisdk.metrics._common.pixel_saliency`), most salient first,
ties by increasing pixel index, and evaluate every perturbed image through the model in batches
(:func:`xaisdk.runtime.perturbation.perturbation_scores`, C++ row construction).

The scored quantity ``f`` is, unless a function says otherwise, the attributed score:
``S_source - S_target`` one-vs-one (``target`` given), ``S_source`` one-vs-all; logits, not
probabilities, as in the GANMEX paper's §4.1 perturbation curves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaisdk.errors import InputError
from xaisdk.metrics._common import MetricResult, Pairs, as_maps, pixel_saliency, resolve_pairs
from xaisdk.metrics.substrates import blurred, make_substrate
from xaisdk.runtime.perturbation import ScoreFn, cumulative_bounds, descending_order, perturbation_scores

__all__ = [
    "perturbation_curve",
    "aopc",
    "aopc_from_curve",
    "deletion",
    "insertion",
    "aospc",
    "trapezoid_auc",
    "score_function",
    "ranking",
    "row_scores",
]


def score_function(pairs: Pairs, kind: str = "delta") -> ScoreFn:
    """``score_fn(images, sample)`` for the perturbation engine: the attributed score
    (``"delta"``: ``sum_k w[sample, k] logits_k``) or the softmax probability of the source class
    (``"probability"``)."""
    backend, weights, source = pairs.backend, pairs.weights, pairs.source
    if kind == "delta":
        return lambda images, sample: (backend.logits(images).astype(np.float64) * weights[sample]).sum(1)
    if kind == "probability":
        def probability(images: np.ndarray, sample: np.ndarray) -> np.ndarray:
            logits = backend.logits(images).astype(np.float64)
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            return p[np.arange(len(p)), source[sample]] / p.sum(1)
        return probability
    raise InputError(f"score: expected 'delta' or 'probability', got {kind!r}")


def ranking(maps: np.ndarray, rank: str = "value", reduce: str = "sum") -> np.ndarray:
    """Pixel order (N, H*W) of maps (N, C, H, W): by descending signed saliency (``rank="value"``,
    the evidence *for* the attributed score first) or by descending ``|saliency|`` (``"abs"``)."""
    saliency = pixel_saliency(maps, reduce)
    if rank == "abs":
        saliency = np.abs(saliency)
    elif rank != "value":
        raise InputError(f"rank: expected 'value' or 'abs', got {rank!r}")
    return descending_order(saliency)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _counts(pixels: int, step: int, max_steps: int | None) -> np.ndarray:
    """0, step, 2 step, ... pixels removed, up to all pixels (the last step may be shorter)."""
    counts = np.arange(0, pixels + step, step, dtype=np.int64)
    counts[-1] = min(counts[-1], pixels)
    counts = np.unique(counts)
    return counts if max_steps is None else counts[: max_steps + 1]


def _run(pairs: Pairs, maps: np.ndarray, substrate: np.ndarray, counts: np.ndarray, base: np.ndarray | None,
         score: str, rank: str, reduce: str, chunk_size: int, progress: bool, desc: str) -> np.ndarray:
    order = ranking(maps, rank, reduce)
    lo, hi = cumulative_bounds(len(pairs.x), counts)
    start = pairs.x if base is None else base
    return row_scores(pairs, score, start, substrate, order, lo, hi, chunk_size=chunk_size, progress=progress, desc=desc)


def row_scores(pairs: Pairs, score: str, base: np.ndarray, substrate: Any, order: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               *, chunk_size: int = 256, progress: bool = False, desc: str = "perturbations") -> np.ndarray:
    """Scores (N, J) float64 of the perturbation rows of :func:`~xaisdk.runtime.perturbation.perturbation_scores`,
    by the backend's own path when it has one for the attributed score (``perturbed_scores``: the torch
    backend's relu-path kernels answer for CNNs that open with conv -> ReLU -> conv), else by the
    chunked engine over ``score_function(pairs, score)``."""
    fast = getattr(pairs.backend, "perturbed_scores", None) if score == "delta" else None
    result = fast(base, substrate, order, lo, hi, pairs.weights) if fast is not None else None
    if result is not None:
        return np.asarray(result, np.float64)
    return perturbation_scores(score_function(pairs, score), base, substrate, order, lo, hi, chunk_size=chunk_size,
                               progress=progress, desc=desc)


def perturbation_curve(
    model: Any,
    x: np.ndarray,
    attributions: np.ndarray,
    source: Any = None,
    target: Any = None,
    *,
    substrate: Any = "flip",
    baseline: Any = None,
    step: int = 1,
    max_steps: int | None = None,
    rank: str = "value",
    reduce: str = "sum",
    seed: int = 0,
    chunk_size: int = 256,
    progress: bool = False,
) -> MetricResult:
    """Pixel-flipping curve (Bach et al. 2015; GANMEX §4.1, Fig. 3.A-C): the score
    ``f(x_k)`` after the ``k * step`` most salient pixels are replaced by the substrate, for
    k = 0 .. ``max_steps`` (default: until every pixel is replaced).

    ``substrate``: ``"flip"`` (default, x -> 1 - x), ``"baseline"`` (pass ``baseline=``),
    ``"zero"``, ``"mean"``, ``"blur"``, ``"uniform"`` (``seed``) or an array. Returns the curves
    (N, T) over ``steps`` = pixels replaced, and per sample the area over the whole curve,
    ``mean_k (f(x_0) - f(x_k))`` (= AOPC over all T points).

    >>> import numpy as np, torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    >>> with torch.no_grad(): _ = net[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0, 0, 0]]))
    >>> from xaisdk.torch_runtime.torch_backend import TorchBackend
    >>> model = TorchBackend(net, input_shape=(1, 2, 2))
    >>> x = np.ones((1, 1, 2, 2), np.float32)
    >>> r = perturbation_curve(model, x, np.array([[[1.0, 2.0], [3.0, 4.0]]]), 0, 1, substrate="zero")
    >>> r.curve.tolist(), r.steps.tolist()       # pixels worth 4, 3, 2, 1 go first
    ([[10.0, 6.0, 3.0, 1.0, 0.0]], [0, 1, 2, 3, 4])
    """
    pairs = resolve_pairs(model, x, source, target)
    maps = as_maps(attributions, pairs.x)
    pixels = pairs.x.shape[2] * pairs.x.shape[3]
    step = _positive_int(step, "step")
    if max_steps is not None:
        max_steps = _positive_int(max_steps, "max_steps")
    sub = make_substrate(substrate, pairs.x, pairs.backend.value_range, baseline=baseline, seed=seed)
    counts = _counts(pixels, step, max_steps)
    curve = _run(pairs, maps, sub, counts, None, "delta", rank, reduce, chunk_size, progress, "perturbation curve")
    area = (curve[:, :1] - curve).mean(1)
    return MetricResult("perturbation_curve", area, curve, counts,
                        {"substrate": substrate if isinstance(substrate, str) else "array", "step": step,
                         "rank": rank, "score": "delta" if pairs.target is not None else "source logit"})


def aopc_from_curve(curve: MetricResult, L: int | None = None) -> MetricResult:
    """AOPC_L (Samek et al. 2017) from a perturbation curve: ``1/(L+1) sum_{k=0..L} (f(x_0) - f(x_k))``
    over the first L + 1 points; ``L=None`` uses every point (AOPC_all).

    >>> c = MetricResult("perturbation_curve", np.zeros(1), np.array([[4.0, 2.0, 1.0, 0.0]]), np.arange(4))
    >>> aopc_from_curve(c, 2).per_sample.tolist(), aopc_from_curve(c).per_sample.tolist()
    ([1.6666666666666667], [2.25])
    """
    if curve.curve is None:
        raise InputError("aopc_from_curve: the result holds no curve")
    points = curve.curve.shape[1]
    if L is not None:
        L = _positive_int(L, "L")
        if L + 1 > points:
            raise InputError(f"L = {L}: the curve has only {points - 1} steps")
    part = curve.curve if L is None else curve.curve[:, : L + 1]
    name = "aopc_all" if L is None else f"aopc_{L}"
    return MetricResult(name, (part[:, :1] - part).mean(1), details={**curve.details, "L": L if L is not None else points - 1})


def aopc(model: Any, x: np.ndarray, attributions: np.ndarray, source: Any = None, target: Any = None, *,
         L: int | None = 100, **options: Any) -> MetricResult:
    """AOPC_L (``L=None``: AOPC_all) of the perturbation curve; ``options`` as :func:`perturbation_curve`.

    >>> import numpy as np, torch
    >>> from xaisdk.torch_runtime.torch_backend import TorchBackend
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    >>> with torch.no_grad(): _ = net[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0, 0, 0]]))
    >>> model, x = TorchBackend(net, input_shape=(1, 2, 2)), np.ones((1, 1, 2, 2), np.float32)
    >>> aopc(model, x, np.array([[[1.0, 2.0], [3.0, 4.0]]]), 0, 1, L=2, substrate="zero").per_sample.tolist()
    [3.6666666666666665]
    """
    curve = perturbation_curve(model, x, attributions, source, target, max_steps=L, **options)
    return aopc_from_curve(curve, L)


def trapezoid_auc(curve: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Per-row trapezoid area under ``curve`` (N, T) over ``fractions`` (T,) in [0, 1].

    >>> trapezoid_auc(np.array([[1.0, 0.0]]), np.array([0.0, 1.0])).tolist()
    [0.5]
    """
    widths = np.diff(fractions)
    return ((curve[:, 1:] + curve[:, :-1]) * widths).sum(1) / 2


def _petsiuk(kind: str, model: Any, x: np.ndarray, attributions: np.ndarray, source: Any, step: int,
             blur_sigma: float | None, chunk_size: int, progress: bool) -> MetricResult:
    pairs = resolve_pairs(model, x, source, None)
    maps = as_maps(attributions, pairs.x)
    pixels = pairs.x.shape[2] * pairs.x.shape[3]
    counts = _counts(pixels, _positive_int(step, "step"), None)
    if kind == "deletion":
        base, substrate = pairs.x, np.zeros_like(pairs.x)
    else:
        base = blurred(pairs.x, blur_sigma if blur_sigma is not None else min(pairs.x.shape[2:]) / 10)
        substrate = pairs.x
    curve = _run(pairs, maps, substrate, counts, base, "probability", "value", "sum", chunk_size, progress, kind)
    fractions = counts / pixels
    return MetricResult(kind, trapezoid_auc(curve, fractions), curve, fractions,
                        {"step": step, "score": "probability of the source class"})


def deletion(model: Any, x: np.ndarray, attributions: np.ndarray, source: Any = None, *, step: int = 1,
             chunk_size: int = 256, progress: bool = False) -> MetricResult:
    """Deletion (Petsiuk et al. 2018, RISE): the probability of the source class (default: the
    predicted class) as the most salient pixels are set to zero, ``step`` at a time; per sample the
    trapezoid area under that curve over the fraction of pixels removed, [0, 1]. Lower is better.

    >>> import numpy as np, torch
    >>> from xaisdk.torch_runtime.torch_backend import TorchBackend
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    >>> with torch.no_grad(): _ = net[1].weight.copy_(torch.tensor([[0.0, 0, 0, 9], [0.0, 0, 0, 0]]))
    >>> model, x = TorchBackend(net, input_shape=(1, 2, 2)), np.ones((1, 1, 2, 2), np.float32)
    >>> good = deletion(model, x, np.array([[[0.0, 0], [0, 1]]]), source=0).per_sample[0]
    >>> bad = deletion(model, x, np.array([[[1.0, 0], [0, 0]]]), source=0).per_sample[0]
    >>> bool(good < bad)
    True
    """
    return _petsiuk("deletion", model, x, attributions, source, step, None, chunk_size, progress)


def insertion(model: Any, x: np.ndarray, attributions: np.ndarray, source: Any = None, *, step: int = 1,
              blur_sigma: float | None = None, chunk_size: int = 256, progress: bool = False) -> MetricResult:
    """Insertion (Petsiuk et al. 2018): start from the image blurred by a Gaussian of ``blur_sigma``
    pixels (default a tenth of the shorter side, so a 28x28 digit becomes unreadable) and put the
    original pixels back, most salient first; area under the source-class probability curve.
    Higher is better. Example: as :func:`deletion`."""
    return _petsiuk("insertion", model, x, attributions, source, step, blur_sigma, chunk_size, progress)


def _segments_order(saliency: np.ndarray, threshold: float, absolute: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pixel order and the cumulative pixel count after each ranked segment, for one map (H, W)."""
    from scipy import ndimage

    values = np.abs(saliency) if absolute else np.clip(saliency, 0, None)
    top = values.max()
    normalized = values / top if top > 0 else values
    labels, count = ndimage.label(normalized >= threshold if top > 0 else np.zeros_like(values, bool),
                                  structure=np.ones((3, 3)))
    if count == 0:
        return np.arange(values.size, dtype=np.int64), np.zeros(0, np.int64)
    flat = labels.ravel()
    means = ndimage.mean(normalized.ravel(), flat, index=np.arange(1, count + 1))
    ranked = np.argsort(-means, kind="stable") + 1
    pieces = [np.flatnonzero(flat == label) for label in ranked]
    rest = np.flatnonzero(flat == 0)
    order = np.concatenate([*pieces, rest]).astype(np.int64)
    return order, np.cumsum([len(p) for p in pieces]).astype(np.int64)


def aospc(model: Any, x: np.ndarray, attributions: np.ndarray, source: Any = None, target: Any = None, *,
          threshold: float = 0.5, K: int = 10, absolute: bool = False, score: str = "delta", seed: int = 0,
          chunk_size: int = 256, progress: bool = False) -> MetricResult:
    """Area over the segment perturbation curve (ExplainGAN, Samangouei et al. 2018, §5.4, Eq. 17).

    Each map (channels summed; its positive part, or ``|map|`` with ``absolute=True``) is divided
    by its maximum, thresholded at ``threshold`` (the paper: 0.5, 0.7, 0.9) and cut into
    8-connected segments, ranked by their mean normalized value. Step k replaces the pixels of the
    k best segments with uniform noise over the model's value range (``seed``);
    ``AOSPC = 1/(K+1) sum_{k=0..K} (f(x) - f(x_k))``. With fewer than K segments the curve stays at
    its last value. ``score``: ``"delta"`` (the attributed score) or ``"probability"`` (softmax of
    the source class, as the paper's binary classifiers). Higher is better.

    >>> import numpy as np, torch
    >>> from xaisdk.torch_runtime.torch_backend import TorchBackend
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    >>> with torch.no_grad(): _ = net[1].weight.copy_(torch.tensor([[0.0, 0, 0, 9], [0.0, 0, 0, 0]]))
    >>> model, x = TorchBackend(net, input_shape=(1, 2, 2)), np.ones((1, 1, 2, 2), np.float32)
    >>> r = aospc(model, x, np.array([[[0.0, 0], [0, 1]]]), 0, 1, K=2)
    >>> r.details["segments"], bool(r.per_sample[0] > 0)
    ([1], True)
    """
    if not 0 < threshold <= 1:
        raise InputError(f"threshold: expected a value in (0, 1], got {threshold!r}")
    K = _positive_int(K, "K")
    pairs = resolve_pairs(model, x, source, target)
    maps = as_maps(attributions, pairs.x)
    n, _, h, w = pairs.x.shape
    saliency = pixel_saliency(maps).reshape(n, h, w)
    order = np.empty((n, h * w), np.int64)
    hi = np.zeros((n, K + 1), np.int64)
    segments = []
    for i in range(n):
        order[i], ends = _segments_order(saliency[i], threshold, absolute)
        segments.append(len(ends))
        taken = np.concatenate([[0], ends[:K]])
        hi[i, : len(taken)] = taken
        hi[i, len(taken):] = taken[-1]
    noise = make_substrate("uniform", pairs.x, pairs.backend.value_range, seed=seed)
    curve = perturbation_scores(score_function(pairs, score), pairs.x, noise, order, np.zeros_like(hi), hi,
                                chunk_size=chunk_size, progress=progress, desc="AOSPC")
    return MetricResult("aospc", (curve[:, :1] - curve).mean(1), curve, np.arange(K + 1),
                        {"threshold": threshold, "K": K, "score": score, "segments": segments})
