"""`xaisdk evaluate` and its pipeline: files written, numbers equal the metric functions called
directly, the ONNX Runtime bundle gives the torch numbers, localization on shapes, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import xaisdk

import xaisdk as package
from xaisdk.data import load_digits
from xaisdk.errors import InputError
from xaisdk.evaluation.evaluate import EvaluationConfig, columns_for, evaluate
from xaisdk.evaluation.grid import nearest_of_class
from xaisdk.evaluation.report import write_report
from xaisdk.explainer import Explainer
from xaisdk.metrics import aopc_from_curve, gini, perturbation_curve

SMALL = dict(samples=4, ig_steps=8, eg_samples=8, single_feature_samples=2, monotonicity_draws=2, monotonicity_group=16,
             curve_step=98, progress=False)


@pytest.fixture(scope="module")
def ganmex():
    from xaisdk.models import load_shipped_ganmex

    return load_shipped_ganmex("digits")


@pytest.fixture(scope="module")
def small_run(ganmex):
    config = EvaluationConfig(methods=("ig", "eg", "occlusion"), baselines=("zero", "mdts", "ganmex"),
                              metrics=("aopc", "gini", "faithfulness", "monotonicity", "inverse_localization", "deletion",
                                       "insertion", "aospc", "baseline_distance", "sensitivity"), **SMALL)
    config.aopc_L = 20
    return evaluate(Explainer(ganmex), load_digits(), config, torch_model=ganmex, dataset_name="digits")


def test_columns_follow_the_papers_layout():
    assert [c.label for c in columns_for(["occlusion", "eg", "ig"], ["ganmex", "zero"])] == \
        ["IG+Zero", "IG+GANMEX", "EG", "Occlusion+Zero", "Occlusion+GANMEX"]
    with pytest.raises(InputError, match="unknown 'lime'"):
        columns_for(["lime"], ["zero"])
    with pytest.raises(InputError, match="baselines: unknown"):
        columns_for(["ig"], ["max"])


def test_pairs_baselines_and_maps_are_what_the_run_says(small_run, ganmex):
    r = small_run
    logits = Explainer(ganmex).logits(r.x)
    assert np.array_equal(r.source, logits.argmax(1))
    assert np.all(r.target != r.source)
    np.testing.assert_array_equal(r.baselines["zero"], 0)
    digits = load_digits()
    mdts = r.baselines["mdts"]
    for n in range(len(r.x)):
        pool = digits.train.x[digits.train.y == r.target[n]]
        distances = ((pool - r.x[n]) ** 2).reshape(len(pool), -1).sum(1)
        np.testing.assert_array_equal(mdts[n], pool[distances.argmin()])
    np.testing.assert_allclose(r.baselines["ganmex"], ganmex.baseline(r.x, r.target), atol=1e-5)
    ig = Explainer(ganmex).explain(r.x, r.target, source=r.source, method="ig", baseline=r.baselines["ganmex"], n_steps=8)
    np.testing.assert_allclose(r.maps["IG+GANMEX"], ig.attributions, rtol=1e-5, atol=1e-6)


def test_metric_numbers_equal_direct_calls(small_run, ganmex):
    r = small_run
    maps = r.maps["IG+MDTS"]
    curve = perturbation_curve(ganmex, r.x, maps, r.source, r.target)
    np.testing.assert_allclose(r.metrics["aopc_20"]["IG+MDTS"].per_sample, aopc_from_curve(curve, 20).per_sample,
                               rtol=1e-6)
    np.testing.assert_allclose(r.metrics["gini"]["IG+MDTS"].per_sample, gini(maps).per_sample)
    assert set(r.metrics) == {"aopc_20", "aopc_all", "gini", "faithfulness", "monotonicity", "inverse_localization",
                              "deletion", "insertion", "aospc_t0.5", "aospc_t0.7", "aospc_t0.9"}
    assert r.metrics["faithfulness"]["EG"].count == 2
    distance = r.extra["baseline_distance"]["baselines"]
    assert distance["zero"]["target_success"] == 0.0
    assert distance["mdts"]["mean_l2"] > distance["ganmex"]["mean_l2"] > 0


def test_report_files(small_run, tmp_path):
    paths = write_report(small_run, tmp_path, "test")
    document = json.loads((tmp_path / "metrics.json").read_text())
    assert document["columns"] == [c.label for c in small_run.columns]
    assert document["metrics"]["gini"]["EG"]["mean"] == pytest.approx(small_run.metrics["gini"]["EG"].mean)
    report = (tmp_path / "report.md").read_text()
    assert "| aopc_20 (higher better) |" in report and "## Baselines (GANMEX Table 1)" in report
    for name in ("perturbation_curves.png", "gini.png", "saliency_grid.png"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bundle_on_onnxruntime_gives_the_torch_numbers(tmp_path, ganmex):
    from xaisdk.deploy.export import export_bundle

    export_bundle(ganmex, tmp_path / "bundle")
    config = EvaluationConfig(methods=("ig", "deeplift"), baselines=("zero", "ganmex"), metrics=("aopc", "gini"),
                              **SMALL)
    torch_run = evaluate(Explainer(ganmex), load_digits(), config, torch_model=ganmex)
    ort_run = evaluate(Explainer.load(tmp_path / "bundle"), load_digits(), config)
    assert ort_run.backend == "onnxruntime"
    for metric in ("aopc_100", "aopc_all", "gini"):
        for label in torch_run.metrics[metric]:
            np.testing.assert_allclose(ort_run.metrics[metric][label].per_sample,
                                       torch_run.metrics[metric][label].per_sample, rtol=2e-3, atol=2e-3)
    with pytest.raises(InputError, match="need\\s+its torch weights"):
        evaluate(Explainer.load(tmp_path / "bundle"), load_digits(), EvaluationConfig(metrics=("roar",), **SMALL))


def test_cli_on_shapes_adds_localization(tmp_path):
    """A shapes classifier trained by the CLI, then evaluated with zero / MDTS baselines and localization."""
    clf = tmp_path / "shapes.pt"
    trained = xaisdk("train", "classifier", "--dataset", "shapes", "--out", str(clf), "--epochs", "2")
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "report"
    result = xaisdk("evaluate", "--model", str(clf), "--dataset", "shapes", "--methods", "ig,deeplift",
                    "--baselines", "zero,mdts", "--metrics", "gini,localization", "--samples", "6", "--ig-steps", "8",
                    "--out", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "metrics.json").read_text())
    assert set(document["metrics"]) == {"gini", "pointing_game", "mask_iou"}
    assert document["metrics"]["pointing_game"]["IG+Zero"]["count"] == 6
    assert (out / "saliency_grid.png").exists()


@pytest.mark.parametrize("args, message", [
    ((), "exactly one of --model"),
    (("--model", "nope.pt"), "no such checkpoint"),
    (("--model", "xaisdk/weights/digits_ganmex.pt", "--metrics", "aopc,bogus"), "unknown bogus"),
    (("--model", "xaisdk/weights/digits_ganmex.pt", "--methods", "ig,lime"), "unknown 'lime'"),
    (("--model", "xaisdk/weights/digits_ganmex.pt", "--dataset", "shapes"), "images are (3, 32, 32)"),
])
def test_cli_errors_are_clean(tmp_path, args, message):
    root = Path(package.__file__).resolve().parent.parent
    result = xaisdk("evaluate", *args, "--samples", "2", "--out", str(tmp_path / "r"), cwd=root)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_nearest_of_class_refuses_too_few_images():
    with pytest.raises(InputError, match="only 1 training images of class 1"):
        nearest_of_class(np.zeros((2, 1, 2, 2), np.float32), np.array([0, 1]), np.zeros((1, 1, 2, 2), np.float32),
                         np.array([1]), 2)

