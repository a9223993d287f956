"""Throughput of ``xaisdk explain-dataset`` (Ray Data, an actor pool of Explainers) against a
single-process Explainer loop on the same cores, for the same images and the same explanation.

    python benchmarks/dataset_throughput.py                     # 10,000 images, one round of each
    python benchmarks/dataset_throughput.py --images 600 --steps 16 --out /tmp/quick   # smoke run

Workload: the shipped GANMEX digits model exported to a bundle (``xaisdk/weights/digits_ganmex.pt``);
the digits test split (359 images) repeated to ``--images`` images, stored as one npz file; IG with
``n_steps=200`` from the GANMEX baseline, target ``"runner-up"``.

- single process: ``Explainer.load(bundle)`` (ONNX Runtime on all cores), ``explain`` over batches of
  ``--batch-size`` images; results kept in memory (nothing written);
- Ray: a local Ray instance with ``num_cpus`` = the machine's cores, ``run_dataset_job`` with one actor
  per core (one ONNX Runtime thread each), shards of ``--shard-size`` images, Parquet written per shard.
  Timed from the call to ``run_dataset_job`` to its return (planning, actor start, reading, writing
  included; starting Ray itself is timed apart, a cluster being started once for many jobs).

The two run back to back, alternating, ``--repeats`` times (the cores are shared with other work:
raw numbers and medians are both reported). Ray's overhead per batch (one shard per actor call) is
``(wall x actors - seconds the actors spent inside their calls) / shards``: scheduling, transfers,
actor start and the idle tail at the end, spread over the shards. The first Ray round's results are
compared with the single-process loop's bit for bit. Writes ``benchmarks/results/<name>.json``
(device, versions, date and command) and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xaisdk.bench.environment import describe_environment

RESULTS = Path(__file__).resolve().parent / "results"


def single_process(bundle: Path, images: np.ndarray, batch_size: int, steps: int) -> tuple[float, dict]:
    from xaisdk.explainer import Explainer

    explainer = Explainer.load(bundle)
    started = time.perf_counter()
    maps = []
    for start in range(0, len(images), batch_size):
        maps.append(explainer.explain(images[start:start + batch_size], "runner-up", n_steps=steps).attributions)
    seconds = time.perf_counter() - started
    return seconds, {"first": np.concatenate(maps)[:64]}


def ray_job(bundle: Path, data: Path, out: Path, args: argparse.Namespace, cores: int) -> tuple[float, dict]:
    from xaisdk.cluster.dataset_job import DatasetJob, run_dataset_job

    shutil.rmtree(out, ignore_errors=True)
    job = DatasetJob(str(bundle), str(data), str(out), n_steps=args.steps, batch_size=args.batch_size,
                     shard_size=args.shard_size)
    started = time.perf_counter()
    summary = run_dataset_job(job, actors=cores, cpus_per_actor=1, progress=False)
    seconds = time.perf_counter() - started
    inside = sum(row["seconds"] for row in summary.per_shard)
    return seconds, {"summary": summary, "inside_s": inside,
                     "overhead_per_batch_s": (seconds * summary.actors - inside) / max(summary.shards_run, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--name", default=f"dataset_{dt.date.today().isoformat()}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for <name>.json and <name>.md.")
    args = parser.parse_args()
    import logging

    import ray

    from xaisdk.cluster.tables import read_results
    from xaisdk.data import load_digits
    from xaisdk.deploy.export import export_bundle
    from xaisdk.models.ganmex import shipped_ganmex_path

    work = Path(tempfile.mkdtemp(prefix="dataset_bench_"))
    bundle = work / "bundle"
    export_bundle(shipped_ganmex_path("digits"), bundle)
    test = load_digits().test.x
    images = np.ascontiguousarray(np.resize(test, (args.images, *test.shape[1:])))
    np.savez(work / "digits.npz", x=images)
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING)
    ray_start_s = time.perf_counter() - started
    rounds = []
    for r in range(args.repeats):
        order = ("single", "ray") if r % 2 == 0 else ("ray", "single")
        entry = {}
        for mode in order:
            print(f"round {r + 1}/{args.repeats}: {mode} ...", file=sys.stderr, flush=True)
            if mode == "single":
                seconds, extra = single_process(bundle, images, args.batch_size, args.steps)
                entry["single_s"] = seconds
                reference = extra["first"]
            else:
                seconds, extra = ray_job(bundle, work / "digits.npz", work / f"out{r}", args, cores)
                entry.update(ray_s=seconds, ray_inside_s=extra["inside_s"],
                             ray_overhead_per_batch_s=extra["overhead_per_batch_s"], shards=extra["summary"].shards_run,
                             actors=extra["summary"].actors)
            print(f"  {mode}: {seconds:.1f} s, {args.images / seconds:.1f} images/s", file=sys.stderr, flush=True)
        table = read_results(work / f"out{r}")
        rows = {row["input_id"]: row for row in table.slice(0, 2 * args.shard_size).to_pylist()}
        got = np.stack([np.reshape(rows[f"digits.npz:{i}"]["attributions"], rows[f"digits.npz:{i}"]["attribution_shape"])
                        for i in range(64)]).astype(np.float32)
        entry["bit_identical_first_64"] = bool(np.array_equal(got, reference))
        entry["rows"] = table.num_rows
        rounds.append(entry)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    single = [args.images / e["single_s"] for e in rounds]
    distributed = [args.images / e["ray_s"] for e in rounds]
    ratio = [e["single_s"] / e["ray_s"] for e in rounds]
    result = {
        **describe_environment(" ".join(["python benchmarks/dataset_throughput.py", *sys.argv[1:]])),
        "workload": {"images": args.images, "model": "shipped GANMEX digits bundle (1x28x28, 10 classes)",
                     "method": f"ig n_steps={args.steps}", "baseline": "ganmex", "target": "runner-up",
                     "batch_size": args.batch_size, "shard_size": args.shard_size, "cores": cores,
                     "ray": ray.__version__, "ray_start_s": ray_start_s},
        "rounds": rounds,
        "median": {"single_images_per_s": statistics.median(single), "ray_images_per_s": statistics.median(distributed),
                   "ray_over_single": statistics.median(ratio),
                   "ray_overhead_per_batch_s": statistics.median(e["ray_overhead_per_batch_s"] for e in rounds)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["median"]
    lines = [f"# explain-dataset throughput ({result['date'][:10]})", "",
             f"{args.images} digits images, IG-{args.steps} + GANMEX baseline, target runner-up; {cores} cores "
             f"({result['device']['cpu']}), Ray {ray.__version__}. Command: `{result['command']}`", "",
             "| round | single process (images/s) | explain-dataset (images/s) | ratio | Ray overhead per batch (s) | "
             "bit-identical |", "|---|---|---|---|---|---|"]
    for i, e in enumerate(rounds):
        lines.append(f"| {i + 1} | {args.images / e['single_s']:.1f} | {args.images / e['ray_s']:.1f} | "
                     f"{e['single_s'] / e['ray_s']:.3f} | {e['ray_overhead_per_batch_s']:.3f} | {e['bit_identical_first_64']} |")
    lines += [f"| median | {m['single_images_per_s']:.1f} | {m['ray_images_per_s']:.1f} | {m['ray_over_single']:.3f} | "
              f"{m['ray_overhead_per_batch_s']:.3f} | |", "",
              f"Starting the local Ray instance: {ray_start_s:.1f} s (not counted)."]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
