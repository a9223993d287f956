"""``xaisdk evaluate``: every metric of the papers over a grid of attribution methods x baselines.

The layout follows the GANMEX paper's Tables 2/3: columns are (method, baseline) combinations,
IG / DeepLIFT / Occlusion / DeepSHAP each with the Zero, MDTS and GANMEX baselines and Expected
Gradients (which draws its own baselines from target-class training images); rows are metrics.

Each evaluated test image is explained one-vs-one: ``source`` is the classifier's prediction and
``target`` another class (``targets="random"``: one uniformly drawn other class per image, seeded;
``"runner-up"``: the second-highest logit). Every metric sees the same images, pairs and maps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xaisdk.data import Split
from xaisdk.errors import InputError
from xaisdk.explainer import Explainer
from xaisdk.metrics._common import MetricResult
from xaisdk.metrics.faithfulness import faithfulness, monotonicity
from xaisdk.metrics.localization import inverse_localization, mask_iou, pointing_game
from xaisdk.metrics.perturbation import aopc_from_curve, aospc, deletion, insertion, perturbation_curve
from xaisdk.metrics.sparsity import gini

__all__ = ["Column", "EvaluationConfig", "EvaluationResult", "columns_for", "evaluate", "METRICS", "METHODS",
           "BASELINES"]

METHODS = {"ig": "IG", "eg": "EG", "deeplift": "DeepLIFT", "occlusion": "Occlusion", "deepshap": "DeepSHAP"}
BASELINES = {"zero": "Zero", "mdts": "MDTS", "ganmex": "GANMEX"}
# Metric names accepted by --metrics; "aopc" gives AOPC_L and AOPC_all (one flip curve),
# "localization" needs ground-truth masks (the shapes data).
METRICS = ("aopc", "gini", "faithfulness", "monotonicity", "inverse_localization", "deletion", "insertion",
           "aospc", "localization", "baseline_distance", "sensitivity", "randomization", "roar")
DEFAULT_METRICS = METRICS
_DRIVER = {"ig": "ig", "eg": "expected_gradients", "deeplift": "deeplift", "occlusion": "occlusion",
           "deepshap": "deepshap"}


@dataclass(frozen=True)
class Column:
    """One attribution configuration: a method and its baseline (None for EG)."""

    method: str
    baseline: str | None

    @property
    def label(self) -> str:
        return METHODS[self.method] + ("" if self.baseline is None else f"+{BASELINES[self.baseline]}")


def columns_for(methods: Sequence[str], baselines: Sequence[str]) -> list[Column]:
    """The report's columns, in the paper's order (EG has a single column).

    >>> [c.label for c in columns_for(["ig", "eg"], ["zero", "ganmex"])]
    ['IG+Zero', 'IG+GANMEX', 'EG']
    """
    for m in methods:
        if m not in METHODS:
            raise InputError(f"methods: unknown {m!r}; expected some of {', '.join(METHODS)}")
    for b in baselines:
        if b not in BASELINES:
            raise InputError(f"baselines: unknown {b!r}; expected some of {', '.join(BASELINES)}")
    if not methods:
        raise InputError("methods: give at least one method")
    if not baselines and any(m != "eg" for m in methods):
        raise InputError("baselines: give at least one baseline for the methods that take one")
    ordered = [m for m in METHODS if m in methods]
    return [Column(m, None) if m == "eg" else Column(m, b) for m in ordered
            for b in ([None] if m == "eg" else [b for b in BASELINES if b in baselines])]


@dataclass
class EvaluationConfig:
    """What ``evaluate`` runs, with the defaults used for the README tables (reasons inline)."""

    methods: tuple[str, ...] = ("ig", "eg", "deeplift", "occlusion")
    baselines: tuple[str, ...] = ("zero", "mdts", "ganmex")
    metrics: tuple[str, ...] = DEFAULT_METRICS
    samples: int = 100                 # test images evaluated (the first ones of the test split)
    targets: str = "random"            # "random" or "runner-up"
    seed: int = 0
    ig_steps: int = 200                # the GANMEX paper's IG-200
    eg_samples: int = 200              # EG baselines per image (same budget as IG-200)
    deepshap_references: int = 8       # DeepSHAP baseline set for MDTS: the 8 nearest target-class images
    occlusion_window: int = 1          # Occlusion-1, as in the paper
    aopc_L: int = 100                  # AOPC_100 (and AOPC_all from the same curve)
    flip_substrate: str = "flip"       # x -> 1 - x (GANMEX §4.1)
    single_feature_samples: int = 50   # faithfulness / monotonicity on the first images only (cost)
    monotonicity_draws: int = 8        # noise draws per pixel group
    monotonicity_group: int = 4        # pixels per group (784 / 4 = 196 groups)
    curve_step: int = 8                # deletion / insertion: pixels per step (99 points at 28x28)
    aospc_thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)   # ExplainGAN §5.4
    randomization_samples: int = 16
    randomization_ganmex_steps: int = 300   # GANMEX retrained against each randomized classifier
    roar_methods: tuple[str, ...] = ("ig", "eg")   # gradient family; Occlusion-1 on 1,800 images is slow
    roar_workers: int = 2
    roar_epochs: int = 10
    sensitivity_samples: int = 50
    progress: bool = True

    def validate(self) -> None:
        columns_for(self.methods, self.baselines)
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise InputError(f"metrics: unknown {', '.join(unknown)}; expected some of {', '.join(METRICS)}")
        if self.targets not in ("random", "runner-up"):
            raise InputError(f"targets: expected 'random' or 'runner-up', got {self.targets!r}")
        for name in ("samples", "ig_steps", "eg_samples", "aopc_L", "single_feature_samples", "randomization_samples",
                     "sensitivity_samples", "curve_step", "roar_workers", "roar_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name}: expected a positive integer, got {value!r}")


@dataclass
class EvaluationResult:
    """Everything ``evaluate`` measured; ``report.write_report`` turns it into files."""

    config: EvaluationConfig
    dataset: str
    model: str
    backend: str
    columns: list[Column]
    index: np.ndarray
    x: np.ndarray
    source: np.ndarray
    target: np.ndarray
    baselines: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    metrics: dict[str, dict[str, MetricResult]] = field(default_factory=dict)   # metric -> column -> result
    curves: dict[str, MetricResult] = field(default_factory=dict)               # column -> flip curve
    extra: dict[str, Any] = field(default_factory=dict)                          # roar, randomization, ...
    timings: dict[str, float] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()


def _pairs(explainer: Explainer, x: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    logits = explainer.logits(x)
    source = logits.argmax(1).astype(np.int64)
    if kind == "runner-up":
        return source, np.argsort(-logits, axis=1, kind="stable")[:, 1].astype(np.int64)
    k = logits.shape[1]
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, k - 1, len(x))
    return source, (draw + (draw >= source)).astype(np.int64)   # uniform over the other classes


def nearest_of_class(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, target: np.ndarray,
                     k: int) -> np.ndarray:
    """(N, k, C, H, W): the ``k`` training images of each row's target class closest to it in L2
    (DeepSHAP's set version of :class:`~xaisdk.baselines.MDTS`, which gives the single nearest).

    >>> tx = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1); ty = np.array([0, 1, 1, 1])
    >>> nearest_of_class(tx, ty, np.full((1, 1, 1, 1), 2.2, np.float32), np.array([1]), 2)[0, :, 0, 0, 0].tolist()
    [2.0, 3.0]
    """
    out = np.empty((len(x), k, *x.shape[1:]), np.float32)
    flat = train_x.reshape(len(train_x), -1).astype(np.float64)
    for c in np.unique(target):
        rows = np.flatnonzero(target == c)
        pool = np.flatnonzero(train_y == c)
        if len(pool) < k:
            raise InputError(f"only {len(pool)} training images of class {c}; DeepSHAP needs {k}")
        q = x[rows].reshape(len(rows), -1).astype(np.float64)
        d = (q * q).sum(1)[:, None] - 2 * q @ flat[pool].T + (flat[pool] ** 2).sum(1)[None]
        best = np.argsort(d, axis=1, kind="stable")[:, :k]
        out[rows] = train_x[pool[best]]
    return out


def make_baselines(explainer: Explainer, split: Split, x: np.ndarray, target: np.ndarray,
                   kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Baseline images per kind: zero, MDTS (nearest target-class training image), GANMEX G(x, target)."""
    out: dict[str, np.ndarray] = {}
    for kind in kinds:
        if kind == "zero":
            out[kind] = np.zeros_like(x)
        elif kind == "mdts":
            from xaisdk.baselines import MDTS

            out[kind] = MDTS(split.train)(x, target)
        elif kind == "ganmex":
            out[kind] = explainer.counterfactual_batch(x, target)
    return out


def attribute(explainer: Explainer, column: Column, x: np.ndarray, source: np.ndarray, target: np.ndarray,
              baselines: dict[str, np.ndarray], split: Split, config: EvaluationConfig,
              seed: int | None = None) -> np.ndarray:
    """One column's maps (N, C, H, W) of ``S_source - S_target``."""
    options: dict[str, Any] = {}
    baseline: Any = None
    if column.method == "ig":
        options["n_steps"] = config.ig_steps
    elif column.method == "eg":
        options.update(references=split.train.x, reference_labels=split.train.y, n_samples=config.eg_samples,
                       seed=config.seed if seed is None else seed)
    elif column.method == "occlusion":
        options.update(window=config.occlusion_window, stride=1)
    if column.baseline is not None:
        baseline = baselines[column.baseline]
        if column.method == "deepshap" and column.baseline == "mdts":
            baseline = nearest_of_class(split.train.x, split.train.y, x, target, config.deepshap_references)
    explanation = explainer.explain(x, target, source=source, method=_DRIVER[column.method], baseline=baseline,
                                    **options)
    return np.asarray(explanation.attributions, dtype=np.float32)


def _bar(items: Sequence, desc: str, progress: bool):
    return tqdm(items, desc=desc, leave=False) if progress else items


def evaluate(explainer: Explainer, split: Split, config: EvaluationConfig | None = None, *,
             torch_model: Any = None, dataset_name: str = "", model_name: str = "") -> EvaluationResult:
    """Run the configured metrics; ``torch_model`` (a GanmexModel or Classifier) enables the metrics
    that change the model (ROAR retrains, randomization re-initializes), which a bundle cannot do.

    Example (minutes on 2 cores; the CLI ``xaisdk evaluate`` wraps it)::

        from xaisdk.data import load_digits
        from xaisdk.models import load_shipped_ganmex
        gm = load_shipped_ganmex("digits")
        result = evaluate(Explainer(gm), load_digits(), EvaluationConfig(samples=20), torch_model=gm)
    """
    config = config or EvaluationConfig()
    config.validate()
    needs_torch = [m for m in ("randomization", "roar") if m in config.metrics]
    if needs_torch and torch_model is None:
        raise InputError(f"metrics {', '.join(needs_torch)} change the model (retrain / re-initialize it) and need "
                         "its torch weights: evaluate --model ganmex.pt, or leave them out of --metrics")
    if "ganmex" in config.baselines and not explainer.backend.has_generator:
        raise InputError("baseline 'ganmex' needs a GANMEX model or a bundle exported from one")
    columns = columns_for(config.methods, config.baselines)
    test = split.test
    n = min(config.samples, len(test))
    index = np.arange(n)
    x = test.x[:n]
    source, target = _pairs(explainer, x, config.targets, config.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    baselines = make_baselines(explainer, split, x, target, config.baselines)
    timings["baselines"] = time.perf_counter() - started
    maps: dict[str, np.ndarray] = {}
    for column in _bar(columns, "attributions", config.progress):
        started = time.perf_counter()
        maps[column.label] = attribute(explainer, column, x, source, target, baselines, split, config)
        timings[f"attributions {column.label}"] = time.perf_counter() - started
    result = EvaluationResult(config, dataset_name, model_name, explainer.backend.name, columns, index, x, source,
                              target, baselines, maps, timings=timings, class_names=tuple(explainer.class_names))
    _per_column_metrics(result, explainer, test)
    from xaisdk.metrics import studies

    if "baseline_distance" in config.metrics:
        result.extra["baseline_distance"] = studies.baseline_distances(result, explainer, split)
    if "sensitivity" in config.metrics:
        result.extra["sensitivity"] = studies.sensitivity(result, explainer, split)
    if "randomization" in config.metrics:
        result.extra["randomization"] = studies.randomization(result, torch_model, split)
    if "roar" in config.metrics:
        result.extra["roar"] = studies.roar_study(result, explainer, split, torch_model)
    return result


def _per_column_metrics(result: EvaluationResult, explainer: Explainer, test: Any) -> None:
    config, x, source, target = result.config, result.x, result.source, result.target
    model = explainer.backend
    wanted = config.metrics
    few = slice(0, min(config.single_feature_samples, len(x)))
    masks = getattr(test, "masks", None)
    for column in _bar(result.columns, "metrics", config.progress):
        label, maps = column.label, result.maps[column.label]
        started = time.perf_counter()

        def put(name: str, value: MetricResult, label: str = label) -> None:
            result.metrics.setdefault(name, {})[label] = value

        if "aopc" in wanted:
            curve = perturbation_curve(model, x, maps, source, target, substrate=config.flip_substrate)
            result.curves[label] = curve
            put(f"aopc_{config.aopc_L}", aopc_from_curve(curve, config.aopc_L))
            put("aopc_all", aopc_from_curve(curve))
        if "gini" in wanted:
            put("gini", gini(maps))
        if "faithfulness" in wanted:
            put("faithfulness", faithfulness(model, x[few], maps[few], source[few], target[few]))
        if "monotonicity" in wanted:
            put("monotonicity", monotonicity(model, x[few], maps[few], source[few], target[few],
                                             n_samples=config.monotonicity_draws,
                                             features_in_step=config.monotonicity_group, seed=config.seed))
        if "inverse_localization" in wanted:
            put("inverse_localization", inverse_localization(maps))
        if "deletion" in wanted:
            put("deletion", deletion(model, x, maps, source, step=config.curve_step))
        if "insertion" in wanted:
            put("insertion", insertion(model, x, maps, source, step=config.curve_step))
        if "aospc" in wanted:
            for t in config.aospc_thresholds:
                put(f"aospc_t{t:g}", aospc(model, x, maps, source, target, threshold=t, seed=config.seed))
        if "localization" in wanted and masks is not None:
            m = masks[result.index]
            put("pointing_game", pointing_game(maps, m))
            put("mask_iou", mask_iou(maps, m))
        result.timings[f"metrics {label}"] = time.perf_counter() - started


def config_dict(config: EvaluationConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


