"""``xaisdk explain-dataset``: explain every image of a dataset on Ray Data, resumably and exactly once.

The driver cuts ``--input`` into shards (:mod:`xaisdk.cluster.sources`), records the job in
``OUT/job.json`` and hands every shard without a results file to ``Dataset.map_batches`` over an
actor pool of :class:`~xaisdk.cluster.actors.ShardExplainer` (each actor loads the bundle once).
Each shard's tables go live by an atomic rename (:mod:`xaisdk.cluster.tables`), so:

- a rerun skips the finished shards and does only the rest (no duplicate work, no losses);
- a worker killed mid-shard is restarted by Ray (actors are restartable and their calls retried) and
  the shard is redone from its start, replacing, never appending to, what a dead attempt left;
- inputs that cannot be read or explained go to ``OUT/errors/`` with the reason; the rest continues.

A rerun must describe the same job (same model bytes, method, baseline, target, options and shards);
otherwise it is refused, so one output folder never mixes two jobs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xaisdk.cluster.actors import ShardExplainer
from xaisdk.cluster.ray_session import ray_session
from xaisdk.cluster.sources import Shard, plan_shards
from xaisdk.cluster.tables import ERRORS, RESULTS, results_path
from xaisdk.errors import InputError
from xaisdk.explainer import ALIASES, METHODS
from xaisdk.runtime.atomic_files import atomic_write_bytes

__all__ = ["DatasetJob", "DatasetSummary", "model_sha256", "run_dataset_job"]

JOB_FILE = "job.json"
# What must match for a rerun to continue a job (the rest, e.g. actors or batch size, may change).
IDENTITY = ("model_sha256", "method", "baseline", "target", "n_steps", "shard_size", "shards")


@dataclass
class DatasetJob:
    """One ``explain-dataset`` run: the model (bundle folder or ``.pt``), ``input`` (folder, file or glob), ``out``."""

    model: str
    input: str
    out: str
    method: str = "ig"
    baseline: str | float = "ganmex"
    target: str | int = "runner-up"
    n_steps: int = 200
    batch_size: int = 64          # images per Explainer call
    shard_size: int = 256         # inputs per shard (the unit of resumption and of output files)
    thumbnails: bool = False
    backend: str = "auto"

    def validate(self) -> None:
        self.method = ALIASES.get(self.method, self.method)
        if self.method not in METHODS:
            raise InputError(f"--method: unknown {self.method!r}; expected one of {', '.join(METHODS)}")
        for name, option in (("n_steps", "--steps"), ("batch_size", "--batch-size"), ("shard_size", "--shard-size")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{option}: expected a positive integer, got {value!r}")
        if not Path(self.model).exists():
            raise InputError(f"{self.model}: no such bundle folder or checkpoint")


@dataclass
class DatasetSummary:
    """What a run did: shards and images in this run and in the whole output folder, and its speed."""

    shards_total: int
    shards_skipped: int
    shards_run: int
    images_run: int
    errors_run: int
    images_total: int
    errors_total: int
    seconds: float
    actors: int
    per_shard: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images_run / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        return (f"{self.shards_run} shards run, {self.shards_skipped} already done (of {self.shards_total}); "
                f"{self.images_run} images explained, {self.errors_run} errors in this run "
                f"({self.images_total} images, {self.errors_total} errors in total); "
                f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s on {self.actors} actors")


def model_sha256(path: str | Path) -> str:
    """sha256 naming the model: of a bundle's manifest.json (which records the sha256 of every graph), or of a checkpoint file.

    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "m.pt"); _ = open(f, "wb").write(b"")
    >>> model_sha256(f)[:12]
    'e3b0c44298fc'
    """
    path = Path(path)
    target = path / "manifest.json" if path.is_dir() else path
    if not target.is_file():
        raise InputError(f"{path}: no manifest.json; not an exported bundle folder (xaisdk export)")
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(job: DatasetJob, shards: list[Shard]) -> dict[str, Any]:
    out = Path(job.out)
    record = {**asdict(job), "model_sha256": model_sha256(job.model), "shards": [s.shard_id for s in shards]}
    path = out / JOB_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key in IDENTITY if old.get(key) != record[key]]
        if changed:
            raise InputError(f"{out} holds the results of another job ({', '.join(changed)} changed); "
                             "give a new --out, or remove the folder to start over")
    elif out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} holds files but no {JOB_FILE}; give an empty or new --out")
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
    return record


def _count_rows(out: Path, kind: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((out / kind).glob("*.parquet")))


def run_dataset_job(job: DatasetJob, *, address: str | None = None, actors: int | None = None, cpus_per_actor: float = 1,
                    gpus_per_actor: float = 0, loader: Callable[[dict[str, Any]], Any] | None = None,
                    progress: bool = True) -> DatasetSummary:
    """Run (or continue) ``job`` on Ray Data; returns what was done. ``address``: None starts a local Ray
    instance (or uses the one this process already joined), ``"auto"`` or ``"ray://host:10001"`` joins a
    cluster. ``actors``: Explainers in the pool (default: the cluster's CPUs / ``cpus_per_actor``, at
    most one per pending shard). ``loader(job_dict) -> Explainer`` replaces how actors load the model.

    Example (needs an exported bundle and ``pip install 'xaisdk[ray]'``)::

        summary = run_dataset_job(DatasetJob("bundle/", "images/", "out/"))
        print(summary.text())
    """
    job.validate()
    if isinstance(actors, bool) or actors is not None and (not isinstance(actors, int) or actors < 1):
        raise InputError(f"--actors: expected a positive integer, got {actors!r}")
    if not cpus_per_actor > 0 or gpus_per_actor < 0:
        raise InputError("--cpus-per-actor must be positive and --num-gpus-per-actor not negative")
    started = time.perf_counter()
    shards = plan_shards(job.input, job.shard_size)
    record = _record(job, shards)
    out = Path(job.out)
    pending = [s for s in shards if not results_path(out, s.shard_id).is_file()]
    rows: list[dict[str, Any]] = []
    pool = 0
    if pending:
        spec = {**record, "threads": max(1, int(cpus_per_actor)) if gpus_per_actor == 0 else None}
        spec.pop("shards")
        with ray_session(address, progress) as ray:
            available = int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor) or 1
            pool = min(actors or available, len(pending))
            dataset = ray.data.from_items([s.to_row() for s in pending], override_num_blocks=len(pending))
            # One shard per call and at most one call queued per actor: a shard never waits behind another actor's.
            compute = ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=1)
            mapped = dataset.map_batches(ShardExplainer, fn_constructor_kwargs={"job": spec, "loader": loader}, batch_size=1,
                                         compute=compute, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)
            rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in mapped.take_all()]
    done = {row["shard_id"] for row in rows}
    lost = [s.shard_id for s in pending if s.shard_id not in done or not results_path(out, s.shard_id).is_file()]
    if lost:
        raise RuntimeError(f"shards without results after the run: {', '.join(lost[:5])}")  # Ray reports failures itself
    summary = DatasetSummary(len(shards), len(shards) - len(pending), len(pending), sum(r["images"] for r in rows),
                             sum(r["errors"] for r in rows), _count_rows(out, RESULTS), _count_rows(out, ERRORS),
                             time.perf_counter() - started, pool, sorted(rows, key=lambda r: r["shard_id"]))
    atomic_write_bytes(out / "summary.json", (json.dumps({**asdict(summary), "images_per_second": summary.images_per_second},
                                                          indent=1) + "\n").encode())
    return summary
