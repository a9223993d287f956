"""Cascading model randomization, the sanity check of Adebayo et al. (2018), as GANMEX §4 (Fig. 3.G) runs it.

Starting from the trained classifier, the weighted layers are re-initialized one at a time from the
*top* (output) down to the input, cumulatively: stage 0 is the original model, stage k has the top
k layers randomized. Each re-initialized weight tensor (and bias) is Gaussian, rescaled to the norm
of the tensor it replaces (:func:`~xaisdk.models.randomize.randomized_copy`). At every stage the
attribution maps are recomputed with the caller's ``explain`` and compared with the original maps
(SSIM, absolute Spearman, HOG-Pearson of :mod:`xaisdk.metrics.similarity`). A method that passes the
check gives maps that grow *unlike* the original as more of the model is destroyed.

With class-targeted baselines the baseline itself depends on the classifier: GANMEX trains its
generator against the classifier being explained, so at each stage the baselines are regenerated
for the randomized classifier (``baseline_for``; :func:`ganmex_retrainer` retrains GANMEX).

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
>>> x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
>>> result = cascading_randomization(net, x, gradient_explain, target=None, input_shape=(1, 8, 8),
...                                  metrics=["spearman"])
>>> result.stages, [round(m, 2) for m in result.metric_table()["spearman"]][:1]
(['original', '3', '0'], [1.0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from xaisdk.data import Dataset, Split
from xaisdk.errors import InputError
from xaisdk.methods import drivers
from xaisdk.metrics._common import MetricResult, as_maps, resolve_pairs
from xaisdk.metrics.similarity import DEFAULT_METRICS, similarities
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel
from xaisdk.models.randomize import randomized_copy, weighted_layers
from xaisdk.runtime.backend import Backend, class_weights
from xaisdk.torch_runtime.torch_backend import TorchBackend
from xaisdk.train.ganmex import GanmexTrainingConfig, train_ganmex

__all__ = [
    "MNIST_CNN_LABELS",
    "BaselineFn",
    "CascadeStage",
    "Explain",
    "GanmexRetrainer",
    "RandomizationResult",
    "cascade",
    "cascading_randomization",
    "ganmex_retrainer",
    "gradient_explain",
    "integrated_gradients_explain",
]

Explain = Callable[[Backend, np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"], np.ndarray]
"""``explain(backend, x, source, target, baselines) -> maps``: attribution maps (N, C, H, W) or (N, H, W)
of ``S_source - S_target`` (``target`` None: ``S_source``) on ``backend``; ``baselines`` (N, C, H, W)
or None when no ``baseline_for`` was given."""

BaselineFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
"""``baselines(x, target) -> images`` (N, C, H, W), made for one (possibly randomized) classifier."""

MNIST_CNN_LABELS = {"head.4": "Output", "head.1": "FC", "features.2": "CNN2", "features.0": "CNN1"}
"""The GANMEX paper's names (Fig. 3.G) of :class:`~xaisdk.models.MnistCNN`'s weighted layers, for ``labels``."""


# --- the cascade --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CascadeStage:
    """One stage of the cascade: its ``name`` (``"original"`` or the layer randomized at this stage),
    the layers randomized so far (top first), the seed of this stage's layer and the classifier."""

    name: str
    randomized: tuple[str, ...]
    seed: int | None
    classifier: Classifier


def _as_classifier(model: Any, input_shape: tuple[int, ...] | None,
                   value_range: tuple[float, float] | None) -> Classifier:
    """``model`` (a Classifier, a GanmexModel or a torch module) as a :class:`Classifier`."""
    if isinstance(model, GanmexModel):
        model = model.classifier
    if isinstance(model, Classifier):
        return model
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, xaisdk Classifier or GanmexModel (randomization needs "
                         f"the weights), got {type(model).__name__}")
    if input_shape is None:
        raise InputError("input_shape: a plain torch module needs its input shape (C, H, W)")
    backend = TorchBackend(model, input_shape=tuple(input_shape), value_range=value_range)
    names = tuple(str(k) for k in range(backend.num_classes))
    return Classifier(model.eval(), type(model).__name__, {}, names, backend.input_shape, backend.value_range)


def _cascade_layers(module: nn.Module, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        return weighted_layers(module)[::-1]
    names = [layers] if isinstance(layers, str) else list(layers)
    known = set(weighted_layers(module))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"layers: {', '.join(map(repr, unknown))} own no weights; weighted layers (input to output): "
                         f"{', '.join(weighted_layers(module))}")
    if len(set(names)) != len(names) or not names:
        raise InputError(f"layers: expected distinct layer names, at least one, got {names}")
    return names


def cascade(model: Any, layers: Sequence[str] | None = None, seed: int = 0, *,
            input_shape: tuple[int, ...] | None = None) -> Iterator[CascadeStage]:
    """The stages of the cascade, lazily: the original classifier, then one more layer randomized per stage.

    ``layers`` are taken in the order given (default: every weighted layer from the output down to
    the input, i.e. :func:`~xaisdk.models.randomize.weighted_layers` reversed, which follows the
    order in which the modules were registered). Stage k's model is stage k-1's with layer k
    re-initialized by ``randomized_copy(..., seed=seed + k)``: the top k-1 layers keep exactly the
    random weights they got before, lower layers keep the trained ones, and each new tensor has the
    norm of the trained tensor it replaces. The original model is never modified.

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> [(s.name, s.randomized, s.seed) for s in cascade(net, input_shape=(4,))]
    [('original', (), None), ('2', ('2',), 1), ('0', ('2', '0'), 2)]
    """
    classifier = _as_classifier(model, input_shape, None)
    names = _cascade_layers(classifier.model, layers)
    yield CascadeStage("original", (), None, classifier)
    current = classifier.model
    for k, name in enumerate(names, 1):
        current = randomized_copy(current, [name], seed=seed + k).eval()
        yield CascadeStage(name, tuple(names[:k]), seed + k, dataclasses.replace(classifier, model=current))


# --- the result ---------------------------------------------------------------------------------


@dataclass
class RandomizationResult:
    """What :func:`cascading_randomization` found, one list entry per stage (stage 0: the original).

    ``stages`` are display names (the layer randomized at that stage, or its ``labels`` entry),
    ``maps`` float64 (N, C, H, W), ``baselines`` (N, C, H, W) or None, ``metrics`` each stage's
    similarity to the original maps by name (stage 0 compares the original with itself).
    """

    stages: list[str]
    randomized_layers: list[tuple[str, ...]]
    seeds: list[int | None]
    maps: list[np.ndarray]
    baselines: list[np.ndarray | None]
    metrics: list[dict[str, MetricResult]]
    source: np.ndarray
    target: np.ndarray | None

    def metric_table(self) -> dict[str, list[float]]:
        """Each metric's mean over samples, per stage: the curves of Adebayo et al.'s Fig. 4 / GANMEX Fig. 3.G."""
        return {name: [stage[name].mean for stage in self.metrics] for name in self.metrics[0]}

    def baseline_change(self) -> list[float] | None:
        """Mean L2 distance between each stage's baselines and the original ones (None without baselines)."""
        if self.baselines[0] is None:
            return None
        first = self.baselines[0].reshape(len(self.source), -1).astype(np.float64)
        return [float(np.linalg.norm(b.reshape(len(first), -1) - first, axis=1).mean()) for b in self.baselines]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: stages, layers, seeds, sample count and per-stage metric summaries (no maps)."""
        return {
            "stages": list(self.stages),
            "randomized_layers": [list(layers) for layers in self.randomized_layers],
            "seeds": list(self.seeds),
            "samples": int(len(self.source)),
            "one_vs_one": self.target is not None,
            "baseline_change": self.baseline_change(),
            "metrics": {stage: {name: r.to_dict() for name, r in per.items()}
                        for stage, per in zip(self.stages, self.metrics)},
        }


# --- the check ----------------------------------------------------------------------------------


def _checked_baselines(images: Any, x: np.ndarray, stage: str) -> np.ndarray:
    array = np.asarray(images)
    if array.shape != x.shape or not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise InputError(f"baselines at stage {stage!r}: expected finite images shaped like x {x.shape}, "
                         f"got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _stage_baselines(stage: CascadeStage, x: np.ndarray, target: np.ndarray | None,
                     baseline_for: Callable[[Classifier], BaselineFn] | None,
                     original_baselines: Any) -> np.ndarray | None:
    if stage.seed is None and original_baselines is not None:
        return _checked_baselines(original_baselines, x, stage.name)
    if baseline_for is None:
        return None
    return _checked_baselines(baseline_for(stage.classifier)(x, target), x, stage.name)


def _progress(stages: Iterator[CascadeStage], total: int, progress: bool) -> Iterator[CascadeStage]:
    if not progress:
        return stages
    from tqdm.auto import tqdm

    return iter(tqdm(stages, total=total, desc="cascading randomization", unit="stage"))


def cascading_randomization(
    model: Any,
    x: Any,
    explain: Explain,
    source: Any = None,
    target: Any = None,
    *,
    baseline_for: Callable[[Classifier], BaselineFn] | None = None,
    original_baselines: Any = None,
    layers: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    seed: int = 0,
    metrics: Sequence[str] = DEFAULT_METRICS,
    input_shape: tuple[int, ...] | None = None,
    progress: bool = False,
) -> RandomizationResult:
    """Recompute ``explain``'s maps as the classifier is randomized layer by layer from the top (see :func:`cascade`).

    ``model`` is a :class:`~xaisdk.models.Classifier`, a :class:`~xaisdk.models.GanmexModel` (its
    classifier) or a torch module (then ``input_shape`` is needed). ``source`` defaults to the
    *original* model's prediction and stays fixed through the cascade; ``target`` None means
    one-vs-all. At each stage ``explain(TorchBackend(stage classifier), x, source, target, baselines)``
    gives the maps, which are compared with stage 0's by each of ``metrics``
    (:data:`~xaisdk.metrics.similarity.SIMILARITY_METRICS`; default SSIM, absolute Spearman and
    HOG-Pearson). ``baseline_for(classifier)`` (called once per stage with the stage's classifier,
    whose ``.model`` is the randomized module) returns the function ``(x, target) -> baselines`` for
    that classifier, e.g. :func:`ganmex_retrainer`; ``original_baselines`` (N, C, H, W), when given,
    serve stage 0 instead (e.g. the shipped GANMEX model's), so ``baseline_for`` is not called for it.
    ``labels`` renames stages (e.g. :data:`MNIST_CNN_LABELS`); ``seed`` seeds the cascade.

    >>> from xaisdk.data import load_digits
    >>> from xaisdk.models import load_shipped_classifier
    >>> test = load_digits().test
    >>> r = cascading_randomization(load_shipped_classifier("digits"), test.x[:3], gradient_explain,
    ...                             target=(test.y[:3] + 1) % 10, labels=MNIST_CNN_LABELS)
    >>> r.stages
    ['original', 'Output', 'FC', 'CNN2', 'CNN1']
    >>> bool(r.metric_table()["spearman"][-1] < 0.5)
    True
    """
    classifier = _as_classifier(model, input_shape, None)
    names = _cascade_layers(classifier.model, layers)
    pairs = resolve_pairs(TorchBackend(classifier), x, source, target)
    stages, randomized, seeds, maps, baselines, scores = [], [], [], [], [], []
    for stage in _progress(cascade(classifier, names, seed), len(names) + 1, progress):
        base = _stage_baselines(stage, pairs.x, pairs.target, baseline_for, original_baselines)
        stage_maps = explain(TorchBackend(stage.classifier), pairs.x, pairs.source, pairs.target, base)
        stage_maps = as_maps(stage_maps, pairs.x, f"maps of explain at stage {stage.name!r}")
        stages.append(stage.name if labels is None else labels.get(stage.name, stage.name))
        randomized.append(stage.randomized)
        seeds.append(stage.seed)
        maps.append(stage_maps)
        baselines.append(base)
        scores.append(similarities(maps[0], stage_maps, metrics))
    return RandomizationResult(stages, randomized, seeds, maps, baselines, scores, pairs.source, pairs.target)


# --- ready-made explain functions ---------------------------------------------------------------


def gradient_explain(backend: Backend, x: np.ndarray, source: np.ndarray, target: np.ndarray | None,
                     baselines: np.ndarray | None = None) -> np.ndarray:
    """The input gradient of ``S_source - S_target`` (the first method Adebayo et al. check); ignores baselines.

    >>> backend = TorchBackend(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), input_shape=(1, 2, 2))
    >>> gradient_explain(backend, np.zeros((2, 1, 2, 2), np.float32), np.array([0, 1]), np.array([2, 0])).shape
    (2, 1, 2, 2)
    """
    return drivers.gradient(backend, x, class_weights(source, target, backend.num_classes))


def integrated_gradients_explain(n_steps: int = 50, default_baseline: float = 0.0) -> Explain:
    """An ``explain`` running Integrated Gradients from the stage's baselines (``default_baseline``, a
    constant image, when there are none), ``n_steps`` path points (GANMEX Fig. 3.G checks IG).

    >>> backend = TorchBackend(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), input_shape=(1, 2, 2))
    >>> ig = integrated_gradients_explain(n_steps=4)
    >>> x = np.ones((1, 1, 2, 2), np.float32)
    >>> bool(np.allclose(ig(backend, x, np.array([0]), None, None), gradient_explain(backend, x, np.array([0]), None)))
    True
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise InputError(f"n_steps: expected a positive integer, got {n_steps!r}")

    def explain(backend: Backend, x: np.ndarray, source: np.ndarray, target: np.ndarray | None,
                baselines: np.ndarray | None) -> np.ndarray:
        weights = class_weights(source, target, backend.num_classes)
        base = default_baseline if baselines is None else baselines
        return drivers.integrated_gradients(backend, x, weights, base, n_steps=int(n_steps))

    return explain


# --- GANMEX baselines for a randomized classifier -----------------------------------------------


class GanmexRetrainer:
    """A ``baseline_for``: trains a GANMEX generator against each classifier it is given (see :func:`ganmex_retrainer`).

    ``models`` keeps every trained :class:`~xaisdk.models.GanmexModel` and ``histories`` their
    training summaries (final loss terms, target success, seconds), in call order.
    """

    def __init__(self, train: Dataset | Split, config: GanmexTrainingConfig | None = None, *,
                 batch_size: int = 256, progress: bool = False) -> None:
        self.train = train.train if isinstance(train, Split) else train
        if not isinstance(self.train, Dataset):
            raise InputError(f"train: expected an xaisdk Dataset or Split, got {type(train).__name__}")
        self.config = config or GanmexTrainingConfig()
        self.config.validate()
        self.batch_size = int(batch_size)
        self.progress = progress
        self.models: list[GanmexModel] = []
        self.histories: list[dict[str, Any]] = []

    def __call__(self, classifier: Classifier) -> BaselineFn:
        model, history = train_ganmex(self.train, classifier, self.config, progress=self.progress)
        self.models.append(model)
        self.histories.append({"final": history["final"], "seconds": history["seconds"]})
        return lambda x, target: _ganmex_baselines(model, x, target, self.batch_size)


def _ganmex_baselines(model: GanmexModel, x: np.ndarray, target: np.ndarray | None, batch_size: int) -> np.ndarray:
    if target is None:
        raise InputError("GANMEX baselines need target classes: pass target (one-vs-one)")
    return model.baseline(x, target, batch_size=batch_size)


def ganmex_retrainer(train: Dataset | Split, config: GanmexTrainingConfig | None = None, *,
                     batch_size: int = 256, progress: bool = False) -> GanmexRetrainer:
    """A ``baseline_for`` that trains GANMEX (:func:`~xaisdk.train.train_ganmex`, ``config``; default: the
    full 3000-step configuration) on ``train`` against each (randomized) classifier and returns its
    baselines ``G(x, target)``, as GANMEX §4 does for the randomization check. One training per
    stage: use a short ``config`` (e.g. ``steps=300``) for quick checks.

    >>> from xaisdk.data import load_digits
    >>> from xaisdk.models import load_shipped_classifier
    >>> cfg = GanmexTrainingConfig(steps=2, batch_size=4, generator_channels=4, generator_res_blocks=1,
    ...                            critic_channels=4)
    >>> retrain = ganmex_retrainer(load_digits().train.subset(range(40)), cfg)
    >>> make = retrain(load_shipped_classifier("digits"))
    >>> make(load_digits().test.x[:2], np.array([3, 4])).shape, len(retrain.models)
    ((2, 1, 28, 28), 1)
    """
    return GanmexRetrainer(train, config, batch_size=batch_size, progress=progress)
