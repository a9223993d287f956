"""The quickstart job (the GANMEX paper's Figure 2), run for real on the shipped GANMEX model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from xaisdk.data import load_digits
from xaisdk.errors import InputError
from xaisdk.models import load_shipped_ganmex
from xaisdk.quickstart import BASELINES, FIGURE_A, FIGURE_B, FIGURE_C, METHODS, SERIES_STEPS, _summary_text, run_quickstart
from xaisdk.viz import save_grouped_saliency_grid

EXTRA_TARGET = 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    result = run_quickstart(out, n_images=2, targets=(EXTRA_TARGET,), seed=0, progress=False)
    return result, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def test_logits():
    """The shipped classifier's logits on every test digit, computed here independently of the quickstart."""
    gm = load_shipped_ganmex()
    with torch.no_grad():
        return gm.classifier.model(torch.from_numpy(load_digits().test.x)).numpy()


def _png(path) -> Image.Image:
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    return image


def test_writes_both_figures_as_pngs(run):
    result, summary = run
    misclassified = summary["why_not_true_class"]["misclassified"]
    expected = [FIGURE_A, FIGURE_B, FIGURE_C] if misclassified else [FIGURE_A, FIGURE_C]
    assert [p.name for p in result.figures] == expected
    assert all(p.parent == result.out_dir and p.is_file() for p in result.figures)

    wide = _png(result.out_dir / FIGURE_A)  # 16 columns: input, 3 baselines, 4 methods x 3 baselines
    rows = len(summary["one_vs_one"]["rows"])
    assert wide.width > 2 * wide.height and wide.height > 80 * rows
    pixels = np.asarray(wide.convert("RGB"), dtype=int)
    assert (pixels[..., 2] - pixels[..., 0] > 100).any(), "no blue (positive) attribution drawn"
    assert (pixels[..., 0] - pixels[..., 2] > 100).any(), "no red (negative) attribution drawn"
    if misclassified:
        narrow = _png(result.out_dir / FIGURE_B)  # 5 columns: input, G(x, true), IG, DeepLIFT, Occlusion
        assert narrow.width > narrow.height and narrow.width < wide.width


def test_rows_are_each_image_against_its_runner_up_and_the_extra_target(run, test_logits):
    _, summary = run
    images = summary["images"]
    assert len(images) == 2 == len(set(images))
    logits = test_logits[images]
    predicted, runner_up = logits.argmax(1), np.argsort(logits, 1)[:, -2]
    assert summary["predicted"] == predicted.tolist() and summary["runner_up"] == runner_up.tolist()
    expected = {(img, int(p), int(r)) for img, p, r in zip(images, predicted, runner_up)}
    expected |= {(img, int(p), EXTRA_TARGET) for img, p in zip(images, predicted) if p != EXTRA_TARGET}
    rows = summary["one_vs_one"]["rows"]
    got = [(row["image"], row["source"], row["target"]) for row in rows]
    assert len(got) == len(set(got)) and set(got) == expected
    assert all(row["source"] != row["target"] for row in rows)
    labels = load_digits().test.y
    assert all(row["label"] == labels[row["image"]] for row in rows)
    for row in rows:
        assert set(row["score_delta"]) == {"input", *BASELINES}
        assert set(row["l2_distance"]) == set(BASELINES) == set(row["baseline_predicted"])
        # the score delta at the input is the classifier's own
        assert row["score_delta"]["input"] == pytest.approx(
            test_logits[row["image"], row["source"]] - test_logits[row["image"], row["target"]], abs=1e-4
        )
    assert set(summary["one_vs_one"]["seconds"]) == set(METHODS)
    assert all(set(per) == set(BASELINES) for per in summary["one_vs_one"]["seconds"].values())


def test_ganmex_baseline_is_the_target_class_and_closest(run):
    _, summary = run
    rows = summary["one_vs_one"]["rows"] + summary["why_not_true_class"]["rows"]
    below_zero = [row["score_delta"]["ganmex"] < 0 for row in rows]
    assert sum(below_zero) > len(rows) / 2, "the classifier should call most GANMEX baselines the target class"
    called_target = [row["baseline_predicted"]["ganmex"] == row["target"] for row in rows]
    assert sum(called_target) > len(rows) / 2
    assert all(row["baseline_predicted"]["zero"] == rows[0]["baseline_predicted"]["zero"]
               for row in summary["one_vs_one"]["rows"])  # one zero image, one prediction
    mean = summary["one_vs_one"]["mean_l2_distance"]
    assert mean["ganmex"] < mean["mdts"] < mean["zero"]


def test_ig_and_deeplift_are_complete(run):
    _, summary = run
    panels = [(summary["one_vs_one"], BASELINES)]
    if summary["why_not_true_class"]["rows"]:
        panels.append((summary["why_not_true_class"], ("ganmex",)))
    for panel, baselines in panels:
        for row in panel["rows"]:
            for b in baselines:
                gap = abs(row["score_delta"]["input"] - row["score_delta"][b])
                error = row["completeness_error"]
                assert error["integrated_gradients"][b] < 1e-2 * max(gap, 1.0), (row, b)
                assert error["deeplift"][b] < 1e-3, (row, b)
        worst = panel["max_completeness_error"]
        assert set(worst) == {"integrated_gradients", "deeplift"}
        assert worst["deeplift"] == {b: max(r["completeness_error"]["deeplift"][b] for r in panel["rows"]) for b in baselines}


def test_why_not_true_class_explains_predicted_against_true(run, test_logits):
    _, summary = run
    panel = summary["why_not_true_class"]
    labels = load_digits().test.y
    predicted = test_logits.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    assert panel["misclassified"] == len(wrong)
    assert [row["image"] for row in panel["rows"]] == wrong[:4].tolist()
    for row in panel["rows"]:
        assert row["source"] == predicted[row["image"]] and row["target"] == labels[row["image"]] == row["label"]
        assert set(row["score_delta"]) == {"input", "ganmex"}
        assert row["score_delta"]["input"] > 0  # the classifier prefers its (wrong) prediction
    if len(wrong):
        assert panel["figure"] == FIGURE_B
        assert set(panel["seconds"]) == {"integrated_gradients", "deeplift", "occlusion"}


def test_summary_text(run):
    result, summary = run
    text = (result.out_dir / "summary.txt").read_text()
    assert text == _summary_text(summary)
    assert FIGURE_A in text and "test accuracy" in text and "completeness" in text
    for row in summary["one_vs_one"]["rows"]:
        assert f"#{row['image']}: {row['source']} -> {row['target']}" in text
    for row in summary["why_not_true_class"]["rows"]:
        assert f"#{row['image']}: predicted {row['source']}, true {row['target']}" in text
    # a classifier without mistakes gets no Fig. 2.B, and the summary says so
    perfect = {**summary, "why_not_true_class": {"figure": None, "misclassified": 0, "rows": []}}
    assert "no figure: the classifier misclassifies none" in _summary_text(perfect)


@pytest.mark.parametrize("kwargs,message", [
    ({"targets": (12,)}, "target 12 is not a class index in [0, 10)"),
    ({"targets": (-1,)}, "target -1"),
    ({"n_images": 0}, "n_images must be in [1, 64]"),
])  # fmt: skip
def test_bad_arguments_raise_input_error_before_writing(tmp_path, kwargs, message):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=re.escape(message)):
        run_quickstart(out, progress=False, **kwargs)
    assert not out.exists()


def test_grouped_grid_checks_shapes(tmp_path):
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(InputError, match="IG / zero"):
        save_grouped_saliency_grid(tmp_path / "g.png", x, {"zero": x}, {"IG": {"zero": x[:1]}})
    with pytest.raises(InputError, match="row_titles"):
        save_grouped_saliency_grid(tmp_path / "g.png", x, {}, {"IG": {"zero": x}}, row_titles=["only one"])
    assert not (tmp_path / "g.png").exists()


def test_explanations_come_from_the_exported_bundle(run, test_logits):
    result, summary = run
    assert summary["bundle"]["backend"] == "onnxruntime"
    manifest = json.loads((result.out_dir / "bundle" / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"classifier", "classifier_grad", "deeplift_grad", "generator_ganmex", "explaingan",
                                       "exaggeration"}
    # The bundle's scores at the input agree with torch's logits on the same test digits.
    for row in summary["one_vs_one"]["rows"]:
        logits = test_logits[row["image"]]
        want = logits[row["source"]] - logits[row["target"]]
        assert abs(row["score_delta"]["input"] - want) <= 1e-4 * max(1.0, abs(want))


def test_counterfactuals_come_from_the_bundle_and_do_their_job(run):
    result, summary = run
    panel = summary["counterfactuals"]
    assert panel["figure"] == FIGURE_C and (result.out_dir / "bundle" / "explaingan.onnx").is_file()
    eg, ex = panel["explaingan"], panel["exaggeration"]
    assert eg["source"] == "3" and eg["flipped_prob"] > 0.5 and 0 < eg["mask_area"] < 0.5  # a 3 made into an 8, locally
    assert len(ex["f"]) == len(ex["desired"]) == SERIES_STEPS
    assert np.corrcoef(ex["f"], ex["desired"])[0, 1] > 0.9  # the series walks p(8) as asked
    figure = _png(result.out_dir / FIGURE_C)
    assert figure.width > figure.height
    assert "[counterfactuals]" in (result.out_dir / "summary.txt").read_text()
