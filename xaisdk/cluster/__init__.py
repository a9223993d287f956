"""Whole datasets on a Ray cluster: ``xaisdk explain-dataset`` and ``xaisdk evaluate --ray``.

:func:`~xaisdk.cluster.dataset_job.run_dataset_job` cuts the input (a folder of images, Parquet or
npz files) into shards named after what they hold, skips the shards a previous run finished, and
explains the rest on Ray Data (``map_batches`` over an actor pool; each actor loads the bundle once
and writes one Parquet file per shard, atomically). :func:`~xaisdk.cluster.evaluate_ray.evaluate_on_ray`
runs the per-image work of ``xaisdk evaluate`` on the same engine.

Ray is imported only inside the functions that start jobs (``pip install 'xaisdk[ray]'``), so
``import xaisdk`` and the torch-free serving image never load it.
"""

from __future__ import annotations

__all__ = ["DatasetJob", "run_dataset_job", "evaluate_on_ray"]


def __getattr__(name: str):  # the submodules import pyarrow / ray lazily; keep the package import free of them
    if name in ("DatasetJob", "run_dataset_job"):
        from xaisdk.cluster import dataset_job

        return getattr(dataset_job, name)
    if name == "evaluate_on_ray":
        from xaisdk.cluster.evaluate_ray import evaluate_on_ray

        return evaluate_on_ray
    raise AttributeError(f"module 'xaisdk.cluster' has no attribute {name!r}")
