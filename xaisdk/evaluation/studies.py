"""The parts of ``xaisdk evaluate`` that go beyond one number per map: baseline distances (GANMEX
Table 1), sensitivity to seeds and hyper-parameters, cascading randomization and ROAR.

Each function takes the :class:`~xaisdk.evaluation.evaluate.EvaluationResult` built so far (images,
class pairs, baselines, maps) and returns a JSON-ready dict plus, where figures need them, arrays
under keys starting with ``_`` (left out of ``metrics.json``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaisdk.data import Split
from xaisdk.evaluation.grid import Column, EvaluationResult, attribute, make_baselines
from xaisdk.explainer import Explainer
from xaisdk.metrics.similarity import consistency

__all__ = ["baseline_distances", "sensitivity", "randomization", "roar_study"]


def baseline_distances(result: EvaluationResult, explainer: Explainer, split: Split) -> dict[str, Any]:
    """Mean ``||x - B(x)||_2`` and target success per baseline, next to D_intra / D_inter of the
    training data (the GANMEX paper's Table 1)."""
    from xaisdk.metrics.baselines import class_distances, l2_distance

    distances = class_distances(split.train.x, split.train.y, seed=result.config.seed)
    out: dict[str, Any] = {"D_intra": distances.intra, "D_inter": distances.inter, "baselines": {}}
    for kind, images in result.baselines.items():
        dist = l2_distance(result.x, images)
        success = float((np.asarray(explainer.predict(images)) == result.target).mean())
        out["baselines"][kind] = {"mean_l2": float(dist.mean()), "std_l2": float(dist.std()),
                                  "target_success": success}
    return out


def _summary(per_metric: dict) -> dict[str, Any]:
    return {name: r.to_dict() for name, r in per_metric.items()}


def sensitivity(result: EvaluationResult, explainer: Explainer, split: Split) -> dict[str, Any]:
    """How much maps move between repeated runs (SSIM, HOG-Pearson, Spearman, mean over run pairs):
    EG over three seeds, IG over 50 / 100 / 200 steps with each baseline, Occlusion over windows 1 / 2 / 3."""
    config = result.config
    n = min(config.sensitivity_samples, len(result.x))
    x, source, target = result.x[:n], result.source[:n], result.target[:n]
    baselines = {k: v[:n] for k, v in result.baselines.items()}
    studies: dict[str, Any] = {}
    from dataclasses import replace

    for column in result.columns:
        if column.method == "eg":
            runs = [attribute(explainer, column, x, source, target, baselines, split, config, seed=s) for s in (0, 1, 2)]
            studies[f"{column.label} over seeds 0, 1, 2"] = _summary(consistency(runs))
        elif column.method == "ig":
            runs = [attribute(explainer, column, x, source, target, baselines, split, replace(config, ig_steps=s))
                    for s in (50, 100, 200)]
            studies[f"{column.label} over 50 / 100 / 200 steps"] = _summary(consistency(runs))
        elif column.method == "occlusion":
            runs = [attribute(explainer, column, x, source, target, baselines, split, replace(config, occlusion_window=w))
                    for w in (1, 2, 3)]
            studies[f"{column.label} over windows 1 / 2 / 3"] = _summary(consistency(runs))
    return {"samples": n, "studies": studies}


def randomization(result: EvaluationResult, torch_model: Any, split: Split) -> dict[str, Any]:
    """Cascading randomization (Adebayo et al. 2018; GANMEX Fig. 3.G) of every column at once: the
    columns' inputs are stacked, so each stage's classifier is built once. Columns with the GANMEX
    baseline get their baselines from a GANMEX retrained (``randomization_ganmex_steps``) against
    each stage's classifier, the original one included, so that every stage has the same training
    budget; Zero and MDTS baselines do not depend on the classifier and stay fixed."""
    from xaisdk.metrics.randomization import MNIST_CNN_LABELS, cascading_randomization, ganmex_retrainer
    from xaisdk.models.classifiers import MnistCNN
    from xaisdk.train.ganmex import GanmexTrainingConfig

    config = result.config
    r = min(config.randomization_samples, len(result.x))
    classifier = getattr(torch_model, "classifier", torch_model)
    labels = MNIST_CNN_LABELS if isinstance(getattr(classifier, "model", None), MnistCNN) else None
    out: dict[str, Any] = {"samples": r, "groups": {}, "_maps": {}, "_baselines": {}}
    groups = {"fixed": [c for c in result.columns if c.baseline != "ganmex"],
              "ganmex": [c for c in result.columns if c.baseline == "ganmex"]}
    for name, columns in groups.items():
        if not columns:
            continue
        k = len(columns)
        xs = np.concatenate([result.x[:r]] * k)
        src = np.concatenate([result.source[:r]] * k)
        tgt = np.concatenate([result.target[:r]] * k)
        if name == "fixed":
            fixed = np.concatenate([result.baselines.get(c.baseline or "zero", np.zeros_like(result.x))[:r]
                                    for c in columns])
            baseline_for = lambda _classifier, images=fixed: (lambda _x, _t: images)  # noqa: E731
        else:
            ganmex_config = GanmexTrainingConfig(steps=config.randomization_ganmex_steps, seed=config.seed)
            retrain = ganmex_retrainer(split.train, ganmex_config, progress=False)
            baseline_for = retrain

        def explain(backend, x, source, target, baselines, columns=columns):
            stage = Explainer(backend)
            blocks = []
            for i, column in enumerate(columns):
                part = slice(i * r, (i + 1) * r)
                given = {} if column.baseline is None else {column.baseline: baselines[part]}
                blocks.append(attribute(stage, column, x[part], source[part], target[part], given, split, config))
            return np.concatenate(blocks)

        found = cascading_randomization(classifier, xs, explain, src, tgt, baseline_for=baseline_for, labels=labels,
                                        seed=config.seed, progress=config.progress)
        for i, column in enumerate(columns):
            part = slice(i * r, (i + 1) * r)
            out["_maps"][column.label] = [m[part] for m in found.maps]
            if found.baselines[0] is not None:
                out["_baselines"][column.label] = [b[part] for b in found.baselines]
            per_stage = {}
            for stage, metrics in zip(found.stages, found.metrics):
                per_stage[stage] = {metric: float(np.nanmean(value.per_sample[part])) for metric, value in metrics.items()}
            out["groups"].setdefault(column.label, per_stage)
        out["stages"] = list(found.stages)
        if name == "ganmex":
            out["ganmex_baseline_change"] = found.baseline_change()
    return out


def roar_study(result: EvaluationResult, explainer: Explainer, split: Split, torch_model: Any = None) -> dict[str, Any]:
    """ROAR (GANMEX §C.2) for the columns whose method is in ``roar_methods``, plus one random-ranking
    reference; maps are computed for every training and test image of the pair classes."""
    from xaisdk.metrics.roar import retraining_config, roar

    config = result.config
    classifier = getattr(torch_model, "classifier", torch_model)
    training = retraining_config(classifier if hasattr(classifier, "arch") else None, epochs=config.roar_epochs)
    out: dict[str, Any] = {"columns": {}}
    columns = [c for c in result.columns if c.method in config.roar_methods]
    for i, column in enumerate(columns):
        def attribute_pairs(x: np.ndarray, source: np.ndarray, target: np.ndarray, column: Column = column) -> np.ndarray:
            kinds = [] if column.baseline is None else [column.baseline]
            return attribute(explainer, column, x, source, target, make_baselines(explainer, split, x, target, kinds),
                             split, config)

        found = roar(split, attribute_pairs, training=training, random_baseline=(i == 0), workers=config.roar_workers,
                     seed=config.seed, progress=config.progress)
        out["columns"][column.label] = found.to_dict()
        if i == 0:
            out["random"] = found.to_dict()["random"]
    return out
