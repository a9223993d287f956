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
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xaisdk.data import Split
from xaisdk.errors import InputError
from xaisdk.evaluation.grid import (
    BASELINES,
    METHODS,
    METRICS,
    Column,
    EvaluationConfig,
    EvaluationResult,
    _pairs,
    attribute,
    columns_for,
    config_dict,
    make_baselines,
)
from xaisdk.explainer import Explainer
from xaisdk.metrics._common import MetricResult
from xaisdk.metrics.faithfulness import faithfulness, monotonicity
from xaisdk.metrics.localization import inverse_localization, mask_iou, pointing_game
from xaisdk.metrics.perturbation import aopc_from_curve, aospc, deletion, insertion, perturbation_curve
from xaisdk.metrics.sparsity import gini

__all__ = ["BASELINES", "Column", "EvaluationConfig", "EvaluationResult", "METHODS", "METRICS", "columns_for", "config_dict",
           "evaluate"]


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
    check_inputs(config, explainer, torch_model)
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
    per_column_metrics(result, explainer, test)
    from xaisdk.evaluation import studies

    if "baseline_distance" in config.metrics:
        result.extra["baseline_distance"] = studies.baseline_distances(result, explainer, split)
    if "sensitivity" in config.metrics:
        result.extra["sensitivity"] = studies.sensitivity(result, explainer, split)
    if "randomization" in config.metrics:
        result.extra["randomization"] = studies.randomization(result, torch_model, split)
    if "roar" in config.metrics:
        result.extra["roar"] = studies.roar_study(result, explainer, split, torch_model)
    return result


def check_inputs(config: EvaluationConfig, explainer: Explainer, torch_model: Any) -> None:
    """InputError unless ``config`` is valid and the model can run what it asks (shared with the Ray runner)."""
    config.validate()
    needs_torch = [m for m in ("randomization", "roar") if m in config.metrics]
    if needs_torch and torch_model is None:
        raise InputError(f"metrics {', '.join(needs_torch)} change the model (retrain / re-initialize it) and need "
                         "its torch weights: evaluate --model ganmex.pt, or leave them out of --metrics")
    if "ganmex" in config.baselines and not explainer.backend.has_generator:
        raise InputError("baseline 'ganmex' needs a GANMEX model or a bundle exported from one")


def per_column_metrics(result: EvaluationResult, explainer: Explainer, test: Any) -> None:
    """Add to ``result`` the metrics computed over a whole column's images at once (they depend on the batch)."""
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
