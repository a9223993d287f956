"""`xaisdk explain-dataset` and `xaisdk evaluate --ray` on a real local Ray instance.

One Ray instance (2 CPUs) serves every test of this file; under pytest-xdist each worker that runs
some of them starts its own (Ray gives each local instance its own ports and session folder).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa  # the 'ray' extra (in 'dev'): these tests run in CI, never skip
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from xaisdk.cli import main
from xaisdk.cluster.dataset_job import DatasetJob, model_sha256, run_dataset_job
from xaisdk.cluster.tables import read_results
from xaisdk.explainer import Explainer
from xaisdk.runtime.images import save_image_png

pytestmark = pytest.mark.xdist_group("ray")
STEPS = 16


@pytest.fixture(scope="session")
def ray_local():
    import logging

    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test loaders below run inside Ray's workers
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    from xaisdk.deploy.export import export_bundle
    from xaisdk.models.ganmex import shipped_ganmex_path

    path = tmp_path_factory.mktemp("dataset") / "bundle"
    export_bundle(shipped_ganmex_path("digits"), path)
    return path


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    from xaisdk.data import load_digits

    return load_digits().test.x[:20]


@pytest.fixture(scope="session")
def reference(bundle, images):
    """The single-process Explainer's answer for every image, one call."""
    return Explainer.load(bundle).explain(images, "runner-up", method="ig", n_steps=STEPS)


def _by_id(table) -> dict:
    return {row["input_id"]: row for row in table.to_pylist()}


def _check_equal(rows: dict, ids: list[str], reference, sha: str) -> None:
    """Every row equals the reference bit for bit (float32 maps; float64 columns hold the float32 values exactly)."""
    assert sorted(rows) == sorted(ids)
    for i, input_id in enumerate(ids):
        row = rows[input_id]
        got = np.asarray(row["attributions"], np.float32).reshape(row["attribution_shape"])
        assert got.dtype == reference.attributions.dtype and np.array_equal(got, reference.attributions[i])
        assert (row["source"], row["target"]) == (reference.source[i], reference.target[i])
        assert row["score"] == float(reference.score[i]) and row["baseline_score"] == float(reference.baseline_score[i])
        assert row["delta"] == float(reference.convergence_delta[i])
        assert (row["method"], row["baseline"], row["bundle_sha256"]) == ("ig", "ganmex", sha)


def _job(bundle, source, out, **options) -> DatasetJob:
    return DatasetJob(str(bundle), str(source), str(out), n_steps=STEPS, **{"shard_size": 6, "batch_size": 4, **options})


class _Hooked:
    """An Explainer whose explain() runs ``hook(x)`` first (a worker dying or failing mid-shard)."""

    def __init__(self, explainer, hook):
        self._explainer, self._hook = explainer, hook

    def __getattr__(self, name):
        return getattr(self._explainer, name)

    def explain(self, x, *args, **kwargs):
        self._hook(x)
        return self._explainer.explain(x, *args, **kwargs)


def _die_once(marker: str, x) -> None:
    if not os.path.exists(marker):
        Path(marker).write_text("killed")
        os._exit(1)  # the actor process dies mid-shard, as under the out-of-memory killer


def _fail_on(poison: np.ndarray, x) -> None:
    if any(np.array_equal(image, poison) for image in x):
        raise RuntimeError("worker failure on purpose")


def _hooked_loader(job, hook):
    from xaisdk.cluster.actors import load_explainer

    return _Hooked(load_explainer(job), hook)


def test_npz_results_equal_the_single_process_explainer(ray_local, bundle, images, reference, tmp_path):
    np.savez(tmp_path / "part.npz", x=images[:13])
    np.savez(tmp_path / "more.npz", x=images[13:], ids=np.array([f"digit-{i}" for i in range(13, 20)]))
    summary = run_dataset_job(_job(bundle, tmp_path / "*.npz", tmp_path / "out"), actors=2, progress=False)
    assert (summary.shards_total, summary.shards_run, summary.images_run, summary.errors_total) == (5, 5, 20, 0)
    ids = [f"part.npz:{i}" for i in range(13)] + [f"digit-{i}" for i in range(13, 20)]
    _check_equal(_by_id(read_results(tmp_path / "out")), ids, reference, model_sha256(bundle))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["images_run"] == 20


def test_parquet_input_and_bad_rows(ray_local, bundle, images, reference, tmp_path):
    from io import BytesIO

    from PIL import Image

    def png(image) -> bytes:
        buffer = BytesIO()
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    encoded = [png(image) for image in images[:8]]
    pq.write_table(pa.table({"id": [f"img{i}" for i in range(8)] + ["broken"], "image": encoded + [b"not a png"]}),
                   tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 truncated")
    run_dataset_job(_job(bundle, tmp_path / "*.parquet", tmp_path / "out"), progress=False)
    pixels = np.stack([np.asarray(Image.open(BytesIO(b)))[None] for b in encoded])  # uint8, converted as the job does
    expected = Explainer.load(bundle).explain(pixels, "runner-up", n_steps=STEPS)
    _check_equal(_by_id(read_results(tmp_path / "out")), [f"img{i}" for i in range(8)], expected, model_sha256(bundle))
    errors = _by_id(read_results(tmp_path / "out", "errors"))
    assert sorted(errors) == ["b.parquet", "broken"]
    assert "not an image file" in errors["broken"]["reason"] and "Parquet" in errors["b.parquet"]["reason"]


def test_rerun_after_a_failed_run_does_only_the_rest(ray_local, bundle, images, reference, tmp_path):
    np.savez(tmp_path / "part.npz", x=images)
    job = _job(bundle, tmp_path / "part.npz", tmp_path / "out")
    failing = functools.partial(_hooked_loader, hook=functools.partial(_fail_on, images[15]))
    with pytest.raises(Exception, match="worker failure on purpose"):
        run_dataset_job(job, actors=1, loader=failing, progress=False)
    results = tmp_path / "out" / "results"
    before = {f.name: f.stat().st_mtime_ns for f in results.glob("*.parquet")}
    assert 0 < len(before) < 4 and not any(name.endswith("000000012.parquet") for name in before)  # rows 12-17 failed
    summary = run_dataset_job(_job(bundle, tmp_path / "part.npz", tmp_path / "out"), actors=2, progress=False)
    assert summary.shards_skipped == len(before) and summary.shards_run == 4 - len(before)
    assert {f.name: f.stat().st_mtime_ns for f in results.glob("*.parquet") if f.name in before} == before
    _check_equal(_by_id(read_results(tmp_path / "out")), [f"part.npz:{i}" for i in range(20)], reference,
                 model_sha256(bundle))
    again = run_dataset_job(_job(bundle, tmp_path / "part.npz", tmp_path / "out"), progress=False)
    assert (again.shards_run, again.shards_skipped, again.images_total) == (0, 4, 20)


def test_a_killed_actor_is_replaced_and_its_shard_redone_once(ray_local, bundle, images, reference, tmp_path):
    np.savez(tmp_path / "part.npz", x=images)
    marker = tmp_path / "killed"
    dying = functools.partial(_hooked_loader, hook=functools.partial(_die_once, str(marker)))
    summary = run_dataset_job(_job(bundle, tmp_path / "part.npz", tmp_path / "out"), actors=2, loader=dying,
                              progress=False)
    assert marker.read_text() == "killed"
    assert (summary.shards_run, summary.images_run, summary.images_total) == (4, 20, 20)
    table = read_results(tmp_path / "out")
    assert table.num_rows == 20
    _check_equal(_by_id(table), [f"part.npz:{i}" for i in range(20)], reference, model_sha256(bundle))


def test_cli_folder_with_bad_files(ray_local, bundle, images, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(7):
        save_image_png(images[i], folder / f"{i:02d}.png", scale=1)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    save_image_png(np.zeros((1, 32, 32), np.float32), folder / "big.png", scale=1)
    (folder / "notes.txt").write_text("not an image")
    args = ["explain-dataset", "--bundle", str(bundle), "--input", str(folder), "--out", str(tmp_path / "out"),
            "--steps", str(STEPS), "--shard-size", "4", "--thumbnails"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "7 images explained, 3 errors" in result.output and "3 inputs could not be explained" in result.output
    from xaisdk.runtime.images import load_image

    stored = np.stack([load_image(folder / f"{i:02d}.png", (1, 28, 28)) for i in range(7)])  # 8-bit PNG pixels
    expected = Explainer.load(bundle).explain(stored, "runner-up", n_steps=STEPS)
    _check_equal(_by_id(read_results(tmp_path / "out")), [f"{i:02d}.png" for i in range(7)], expected, model_sha256(bundle))
    errors = _by_id(read_results(tmp_path / "out", "errors"))
    assert sorted(errors) == ["big.png", "broken.png", "notes.txt"]
    assert "32 wide x 32 high but the model takes 28 wide x 28 high" in errors["big.png"]["reason"]
    assert str(tmp_path) not in errors["broken.png"]["reason"]  # reasons name the input, not the worker's path
    assert len(list((tmp_path / "out" / "thumbnails").rglob("*.png"))) == 7
    rerun = CliRunner().invoke(main, args)
    assert rerun.exit_code == 0 and "0 shards run, 3 already done" in rerun.output
    other = CliRunner().invoke(main, [*args[:-1], "--method", "deeplift"])
    assert other.exit_code == 1 and "holds the results of another job (method changed)" in other.output


def test_cli_refusals(bundle, tmp_path):
    runner = CliRunner()
    both = runner.invoke(main, ["explain-dataset", "--bundle", str(bundle), "--model", "m.pt", "--input", ".", "--out", "o"])
    assert both.exit_code == 1 and "exactly one of --bundle" in both.output
    missing = runner.invoke(main, ["explain-dataset", "--bundle", str(bundle), "--input", str(tmp_path / "nothing"),
                                   "--out", str(tmp_path / "o")])
    assert missing.exit_code == 1 and "no such folder or file" in missing.output and "Traceback" not in missing.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    np.savez(tmp_path / "a.npz", x=np.zeros((1, 1, 28, 28), np.float32))
    busy = runner.invoke(main, ["explain-dataset", "--bundle", str(bundle), "--input", str(tmp_path / "a.npz"),
                                "--out", str(tmp_path / "busy")])
    assert busy.exit_code == 1 and "holds files but no job.json" in busy.output
    steps = runner.invoke(main, ["explain-dataset", "--bundle", str(bundle), "--input", str(tmp_path / "a.npz"),
                                 "--out", str(tmp_path / "o"), "--steps", "0"])
    assert steps.exit_code == 1 and "--steps: expected a positive integer" in steps.output
    alone = runner.invoke(main, ["evaluate", "--bundle", str(bundle), "--actors", "2", "--metrics", "gini",
                                 "--methods", "ig", "--baselines", "zero", "--samples", "2", "--out", str(tmp_path / "e")])
    assert alone.exit_code == 1 and "--address and --actors go with --ray" in alone.output


def test_evaluate_ray_gives_the_local_report(ray_local, bundle, tmp_path):
    args = ["evaluate", "--bundle", str(bundle), "--methods", "ig,eg", "--baselines", "zero,ganmex", "--samples", "6",
            "--metrics", "aopc,gini,faithfulness,monotonicity,deletion,aospc,baseline_distance", "--ig-steps", str(STEPS),
            "--single-feature-samples", "3"]
    local = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    distributed = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ray"), "--ray", "--actors", "2"])
    assert distributed.exit_code == 0, distributed.output

    def numbers(folder: str) -> dict:
        report = json.loads((tmp_path / folder / "metrics.json").read_text())
        return {k: v for k, v in report.items() if k not in ("date", "timings_s")}

    ours, theirs = numbers("ray"), numbers("local")
    assert ours == theirs
    assert set(ours["metrics"]) >= {"aopc_100", "gini", "monotonicity", "aospc_t0.5"}
