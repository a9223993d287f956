"""``xaisdk evaluate --ray``: the per-image work of :func:`xaisdk.evaluation.evaluate.evaluate` on Ray.

The report is the local one: the same functions run on the same images, only cut into shards of
images spread over a pool of Ray actors (each loads the model and the dataset once). Three waves:

1. baselines (zero, MDTS, GANMEX) per shard of images;
2. attribution maps per (column, shard); Expected Gradients draws its references from one seeded
   stream over all images, so each EG column is one task over all of them;
3. per-column metrics: the per-image ones (AOPC curves, Gini, deletion, insertion, localization...)
   per (column, shard); faithfulness / monotonicity on the first ``single_feature_samples`` images and
   AOSPC, whose noise is one seeded draw over their whole batch, and Gini as one task per column.

Every per-image number is computed row by row with the same code (ONNX Runtime and the numpy
drivers give a row the same bits whatever else is in its batch), and shards are put back in image
order before the means, so the report's numbers equal the local run's. The class pairs are drawn on
the driver, and the studies that change or re-run the model as a whole (baseline distances,
sensitivity, randomization, ROAR) run there too, as in the local run.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from xaisdk.cluster.ray_session import ray_session
from xaisdk.data import Split
from xaisdk.errors import InputError
from xaisdk.evaluation import studies
from xaisdk.evaluation.evaluate import check_inputs, per_column_metrics
from xaisdk.evaluation.grid import (
    Column,
    EvaluationConfig,
    EvaluationResult,
    _pairs,
    attribute,
    columns_for,
    make_baselines,
)
from xaisdk.explainer import Explainer
from xaisdk.metrics._common import MetricResult

__all__ = ["EvaluationWorker", "evaluate_on_ray", "shard_bounds"]

# Metrics whose per-image value depends on other images of the call (a seeded draw over the batch; the Gini
# kernel, whose last bit for a row was seen to change with the batch around it) or that look at the first
# images only: one task per column over exactly the images the local run gives them.
WHOLE_BATCH = ("gini", "faithfulness", "monotonicity", "aospc")


def shard_bounds(n: int, shards: int) -> list[slice]:
    """``shards`` contiguous, near-equal slices covering ``range(n)`` (fewer when n is small).

    >>> [(s.start, s.stop) for s in shard_bounds(10, 3)]
    [(0, 3), (3, 7), (7, 10)]
    """
    edges = np.linspace(0, n, min(max(shards, 1), max(n, 1)) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class EvaluationWorker:
    """A Ray actor's state: the Explainer (from a bundle, or a checkpoint on torch) and the dataset split."""

    def __init__(self, model: dict[str, str], dataset: str) -> None:
        from xaisdk.data import load_dataset

        if "bundle" in model:
            self.explainer = Explainer.load(model["bundle"], intra_op_threads=1)
        else:
            from xaisdk.models.ganmex import load_model

            self.explainer = Explainer(load_model(model["model"]), max_batch=1024)
        self.split = load_dataset(dataset)

    def baselines(self, x: np.ndarray, target: np.ndarray, kinds: tuple[str, ...]) -> dict[str, np.ndarray]:
        return make_baselines(self.explainer, self.split, x, target, kinds)

    def attribute(self, column: Column, x: np.ndarray, source: np.ndarray, target: np.ndarray,
                  baselines: dict[str, np.ndarray], config: EvaluationConfig) -> np.ndarray:
        return attribute(self.explainer, column, x, source, target, baselines, self.split, config)

    def metrics(self, column: Column, index: np.ndarray, x: np.ndarray, source: np.ndarray, target: np.ndarray,
                maps: np.ndarray, config: EvaluationConfig) -> tuple[dict, dict]:
        part = EvaluationResult(config, "", "", self.explainer.backend.name, [column], index, x, source, target, {},
                                {column.label: maps})
        per_column_metrics(part, self.explainer, self.split.test)
        return part.metrics, part.curves


def _join(parts: list[MetricResult]) -> MetricResult:
    """Shards' results of one metric, in image order, as one result."""
    first = parts[0]
    curve = None if first.curve is None else np.concatenate([p.curve for p in parts])
    return MetricResult(first.name, np.concatenate([p.per_sample for p in parts]), curve, first.steps, first.details)


def evaluate_on_ray(explainer: Explainer, split: Split, config: EvaluationConfig, *, model: dict[str, str], dataset: str,
                    torch_model: Any = None, dataset_name: str = "", model_name: str = "", address: str | None = None,
                    actors: int | None = None, shards_per_actor: int = 4) -> EvaluationResult:
    """:func:`~xaisdk.evaluation.evaluate.evaluate` with its per-image work on Ray (see the module text).

    ``explainer`` / ``split`` / ``torch_model`` are the driver's (pairs and the whole-model studies);
    ``model`` (``{"bundle": folder}`` or ``{"model": checkpoint}``) and ``dataset`` (a
    :func:`~xaisdk.data.load_dataset` name) tell each actor how to load its own copies.

    Example (starts Ray; minutes on 2 cores)::

        result = evaluate_on_ray(Explainer.load("bundle/"), load_digits(), EvaluationConfig(samples=20,
                                 metrics=("aopc", "gini")), model={"bundle": "bundle/"}, dataset="digits")
    """
    check_inputs(config, explainer, torch_model)
    if isinstance(actors, bool) or actors is not None and (not isinstance(actors, int) or actors < 1):
        raise InputError(f"--actors: expected a positive integer, got {actors!r}")
    columns = columns_for(config.methods, config.baselines)
    n = min(config.samples, len(split.test))
    index, x = np.arange(n), split.test.x[:n]
    source, target = _pairs(explainer, x, config.targets, config.seed)
    quiet = replace(config, progress=False)
    timings: dict[str, float] = {}
    with ray_session(address, config.progress) as ray:
        pool_size = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(EvaluationWorker)
        workers = [remote.remote(model, dataset) for _ in range(pool_size)]
        pool = ray.util.ActorPool(workers)
        shards = shard_bounds(n, pool_size * shards_per_actor)

        def run(calls: list) -> list:  # (method name, args) per task, answers in the order given
            return list(pool.map(lambda actor, call: getattr(actor, call[0]).remote(*call[1]), calls))

        started = time.perf_counter()
        parts = run([("baselines", (x[s], target[s], tuple(config.baselines))) for s in shards])
        baselines = {kind: np.concatenate([p[kind] for p in parts]) for kind in config.baselines}
        timings["baselines"] = time.perf_counter() - started

        started = time.perf_counter()
        calls, owners = [], []
        for column in columns:
            for s in [slice(0, n)] if column.method == "eg" else shards:
                calls.append(("attribute", (column, x[s], source[s], target[s], {k: v[s] for k, v in baselines.items()},
                                            quiet)))
                owners.append(column.label)
        answers = run(calls)
        maps = {c.label: np.concatenate([a for a, o in zip(answers, owners) if o == c.label]) for c in columns}
        timings["attributions"] = time.perf_counter() - started

        started = time.perf_counter()
        per_image = tuple(m for m in config.metrics if m not in WHOLE_BATCH)
        whole = tuple(m for m in config.metrics if m in WHOLE_BATCH)
        calls, owners = [], []
        for column in columns:
            m = maps[column.label]
            for s in shards if per_image else []:
                calls.append(("metrics", (column, index[s], x[s], source[s], target[s], m[s], replace(quiet, metrics=per_image))))
                owners.append(column.label)
            if whole:
                s = slice(0, n if {"aospc", "gini"} & set(whole) else min(config.single_feature_samples, n))
                calls.append(("metrics", (column, index[s], x[s], source[s], target[s], m[s], replace(quiet, metrics=whole))))
                owners.append(column.label)
        answers = run(calls)
        timings["metrics"] = time.perf_counter() - started
        for worker in workers:
            ray.kill(worker)
    result = EvaluationResult(config, dataset_name, model_name, explainer.backend.name, columns, index, x, source, target,
                              baselines, maps, timings=timings, class_names=tuple(explainer.class_names))
    for column in columns:
        mine = [a for a, o in zip(answers, owners) if o == column.label]
        names = dict.fromkeys(name for metrics, _ in mine for name in metrics)
        for name in names:
            result.metrics.setdefault(name, {})[column.label] = _join([metrics[name][column.label] for metrics, _ in mine
                                                                        if name in metrics])
        curves = [c[column.label] for _, c in mine if column.label in c]
        if curves:
            result.curves[column.label] = _join(curves)
    result.metrics = dict(sorted(result.metrics.items(), key=lambda item: _rank(item[0])))
    _studies(result, explainer, split, torch_model)
    return result


# The order in which the local run first writes each metric (its report lists them so).
_ORDER = ("aopc", "gini", "faithfulness", "monotonicity", "inverse_localization", "deletion", "insertion", "aospc",
          "pointing_game", "mask_iou")


def _rank(name: str) -> int:
    return next((i for i, family in enumerate(_ORDER) if name == family or name.startswith(family + "_")), len(_ORDER))


def _studies(result: EvaluationResult, explainer: Explainer, split: Split, torch_model: Any) -> None:
    """The whole-model studies, on the driver, exactly as the local run does them."""
    metrics = result.config.metrics
    if "baseline_distance" in metrics:
        result.extra["baseline_distance"] = studies.baseline_distances(result, explainer, split)
    if "sensitivity" in metrics:
        result.extra["sensitivity"] = studies.sensitivity(result, explainer, split)
    if "randomization" in metrics:
        result.extra["randomization"] = studies.randomization(result, torch_model, split)
    if "roar" in metrics:
        result.extra["roar"] = studies.roar_study(result, explainer, split, torch_model)
