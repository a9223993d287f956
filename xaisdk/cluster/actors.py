"""The worker side of a dataset job: an actor that loads the Explainer once and finishes whole shards.

Ray Data calls :class:`ShardExplainer` with batches of shard descriptions (see
:meth:`xaisdk.cluster.sources.Shard.to_row`); for each shard it reads the inputs, explains them
``batch_size`` images per call, writes the shard's errors and results tables (and thumbnails) and
returns one summary row. Nothing here imports ray: the class is a plain callable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xaisdk.cluster.sources import Shard, read_shard
from xaisdk.cluster.tables import ERRORS, RESULTS, errors_path, results_path, write_table
from xaisdk.errors import InputError
from xaisdk.explainer import Explainer, Explanation

__all__ = ["ShardExplainer", "load_explainer", "thumbnail_path"]

NO_BASELINE = ("gradient", "grad_x_input")


def load_explainer(job: dict[str, Any]) -> Explainer:
    """The Explainer a job runs: a bundle folder on ONNX Runtime (``job["threads"]`` intra-op threads), or a
    checkpoint on torch."""
    path = Path(job["model"])
    if path.is_dir():
        return Explainer.load(path, backend=job.get("backend", "auto"), intra_op_threads=job.get("threads"))
    return Explainer.load(path, backend=job.get("backend", "auto"))


def thumbnail_path(out: str | os.PathLike, shard_id: str, row: int) -> Path:
    """Where the PNG of row ``row`` of shard ``shard_id`` goes (rows in the order of the results table)."""
    return Path(out) / "thumbnails" / shard_id / f"{row:06d}.png"


class ShardExplainer:
    """Explain whole shards with one Explainer (built by ``loader(job)``, default :func:`load_explainer`)."""

    def __init__(self, job: dict[str, Any], loader: Callable[[dict[str, Any]], Explainer] | None = None) -> None:
        self.job = job
        self.explainer = (loader or load_explainer)(job)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [Shard.from_row({key: batch[key][i] for key in batch}) for i in range(len(batch["shard_id"]))]
        rows = [self.run_shard(shard) for shard in shards]
        return {key: np.array([row[key] for row in rows]) for key in rows[0]} if rows else {}

    def _explain(self, x: np.ndarray) -> Explanation:
        job = self.job
        options = {"n_steps": job["n_steps"]} if job["method"] == "ig" else {}
        baseline = None if job["method"] in NO_BASELINE else job["baseline"]
        return self.explainer.explain(x, job["target"], method=job["method"], baseline=baseline, **options)

    def _explain_rows(self, ids: list[str], x: np.ndarray,
                      errors: list[tuple[str, str, str]]) -> list[tuple[str, Explanation, int]]:
        """(input id, explanation, row in it) per explained image; an InputError isolates its image and becomes an error."""
        try:
            e = self._explain(x)
            return [(input_id, e, i) for i, input_id in enumerate(ids)]
        except InputError:
            if len(ids) == 1:
                raise
        out = []
        for i, input_id in enumerate(ids):
            try:
                out += [(input_id, self._explain(x[i:i + 1]), 0)]
            except InputError as err:
                errors.append((input_id, "explain", str(err)))
        return out

    def run_shard(self, shard: Shard) -> dict[str, Any]:
        """Explain one shard and write its tables; returns its summary row."""
        started = time.perf_counter()
        job, backend = self.job, self.explainer.backend
        data = read_shard(shard, backend.input_shape, backend.value_range)
        errors = [(input_id, "read", reason) for input_id, reason in data.errors]
        explained: list[tuple[str, Explanation, int]] = []
        size = int(job["batch_size"])
        for start in range(0, len(data.ids), size):
            try:
                explained += self._explain_rows(data.ids[start:start + size], data.images[start:start + size], errors)
            except InputError as err:  # a one-image batch that failed
                errors.append((data.ids[start], "explain", str(err)))
        names = self.explainer.class_names
        columns: dict[str, list] = {key: [] for key in ("input_id", "source", "source_name", "target", "target_name", "score",
                                                         "baseline_score", "delta", "attributions", "attribution_shape")}
        for input_id, e, i in explained:
            source, target = int(np.atleast_1d(e.source)[i]), int(np.atleast_1d(e.target)[i])
            attributions = np.asarray(e.attributions)[i]
            columns["input_id"].append(input_id)
            columns["source"].append(source)
            columns["source_name"].append(names[source])
            columns["target"].append(target)
            columns["target_name"].append(names[target])
            columns["score"].append(float(np.atleast_1d(e.score)[i]))
            columns["baseline_score"].append(None if e.baseline_score is None else float(np.atleast_1d(e.baseline_score)[i]))
            columns["delta"].append(None if e.convergence_delta is None else float(np.atleast_1d(e.convergence_delta)[i]))
            columns["attributions"].append(attributions)
            columns["attribution_shape"].append(list(attributions.shape))
        n = len(columns["input_id"])
        columns.update(shard=[shard.shard_id] * n, method=[job["method"]] * n, baseline=[str(job["baseline"])] * n,
                       bundle_sha256=[job["model_sha256"]] * n)
        if job.get("thumbnails"):
            from xaisdk.runtime.images import save_attribution_png

            for row, attributions in enumerate(columns["attributions"]):
                save_attribution_png(attributions, thumbnail_path(job["out"], shard.shard_id, row))
        if errors:
            write_table(errors_path(job["out"], shard.shard_id), ERRORS,
                        {"input_id": [e[0] for e in errors], "shard": [shard.shard_id] * len(errors),
                         "stage": [e[1] for e in errors], "reason": [e[2] for e in errors]})
        explain_seconds = time.perf_counter() - started
        write_table(results_path(job["out"], shard.shard_id), RESULTS, columns)  # last: the shard's "done" mark
        return {"shard_id": shard.shard_id, "images": n, "errors": len(errors), "seconds": time.perf_counter() - started,
                "explain_seconds": explain_seconds, "pid": os.getpid()}
