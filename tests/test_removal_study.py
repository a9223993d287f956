"""The generative-removal study (paper 004's tables) and `xaisdk evaluate-removal`, on real models and data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from xaisdk import InputError
from xaisdk.cli import main
from xaisdk.data import load_digits, make_shapes
from xaisdk.metrics.removal_study import RemovalStudyConfig, filler_table, object_masks, run_removal_study
from xaisdk.models import load_shipped_classifier
from xaisdk.models.inpainter import load_shipped_inpainter
from xaisdk.runtime.inpainting import OpenCVInpainter
from xaisdk.torch_runtime.torch_backend import as_backend

TINY = dict(samples=4, held_out=4, patch_sizes=(3, 5), lime_samples=60, seeds=(0, 1), mp_steps=15, deletion_step=16)


@pytest.fixture(scope="module")
def digits_backend():
    return as_backend(load_shipped_classifier("digits"))


def test_object_masks_are_dilated_strokes() -> None:
    test = load_digits().test.subset(np.arange(5))
    masks, origin = object_masks(test)
    strokes = test.x[:, 0] > 0.25
    assert origin.startswith("strokes")
    assert np.all(masks[:, 0][strokes] == 1)  # every stroke pixel is inside
    assert masks.sum() > strokes.sum()  # and the mask grew by the dilation
    shapes = make_shapes(3, seed=0)
    assert object_masks(shapes)[0] is shapes.masks


def test_filler_table_real_column_and_removal(digits_backend) -> None:
    test = load_digits().test.subset(np.arange(40))
    table, examples, _ = filler_table(digits_backend, test, load_shipped_inpainter("digits"), ("gray", "inpaint"))
    logits = digits_backend.logits(test.x)
    assert table["real"]["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == test.y))
    assert table["real"]["ssim"] == pytest.approx(1.0) and table["real"]["l1"] == 0.0
    masks = object_masks(test)[0]
    for name in ("gray", "inpaint"):
        np.testing.assert_array_equal(examples[name][masks.repeat(1, 1) == 0], test.x[masks == 0])  # only the object changed
        assert table[name]["accuracy"] < table["real"]["accuracy"]  # removing the digit removes the evidence
    boxed, box_examples, origin = filler_table(digits_backend, test, OpenCVInpainter("telea"), ("zero",), shape="box")
    assert origin.startswith("bounding boxes")
    rows, cols = np.nonzero(masks[0, 0])
    inside = box_examples["zero"][0, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert np.all(inside == 0)  # the whole box is removed, not only the strokes
    assert boxed["zero"]["accuracy"] < boxed["real"]["accuracy"]
    with pytest.raises(InputError, match="shape"):
        filler_table(digits_backend, test, OpenCVInpainter("telea"), ("zero",), shape="circle")


def test_study_on_shapes_every_part(tmp_path) -> None:
    from xaisdk.data import load_shapes
    from xaisdk.metrics.removal_report import write_removal_report
    from xaisdk.train import ClassifierTrainingConfig, train_classifier

    split = load_shapes(300, 12, seed=3)
    classifier, _ = train_classifier(split, ClassifierTrainingConfig(arch="mnist_cnn", epochs=1, seed=0), progress=False)
    config = RemovalStudyConfig(**TINY)
    result = run_removal_study(as_backend(classifier), OpenCVInpainter("ns"), split.test, config)
    assert set(result.robustness) == {"SP", "SP-G", "LIME (50)", "LIME-G (50)", "LIME (100)", "LIME-G (100)", "MP", "MP-G"}
    for per in result.robustness.values():
        for r in per.values():
            assert r.details["pairs"] == 1 and np.all(np.isnan(r.per_sample) | (r.per_sample <= 1 + 1e-9))
    assert set(result.localization) == {"SP", "SP-G", "LIME", "LIME-G", "MP", "MP-G"}
    for r in result.localization.values():
        assert r.details["alpha_from"] == "held_out" and set(np.unique(r.per_sample)) <= {0.0, 1.0}
    for per in result.deletion.values():
        assert 0 <= per["deletion"].mean <= 1 and 0 <= per["insertion"].mean <= 1
    assert 0 <= result.mp_area["MP"].mean <= 1
    paths = write_removal_report(result, tmp_path, "test")
    report = paths["report"].read_text()
    assert "Table S3" in report and "Table 2" in report and "Table 1" in report
    document = json.loads(paths["metrics"].read_text())
    assert document["samples"] == 4 and document["robustness"]["SP"]["spearman"]["count"] >= 1
    assert all(p.stat().st_size > 0 for p in paths.values())


def test_study_config_errors() -> None:
    with pytest.raises(InputError, match="parts"):
        RemovalStudyConfig(parts=("roar",)).validate()
    with pytest.raises(InputError, match="seeds"):
        RemovalStudyConfig(seeds=(1,)).validate()
    with pytest.raises(InputError, match="lime_segments"):
        RemovalStudyConfig(lime_segments=(50,)).validate()
    with pytest.raises(InputError, match="fillers"):
        RemovalStudyConfig(fillers=("paint",)).validate()


def test_cli_evaluate_removal(tmp_path) -> None:
    from xaisdk.models.checkpoint import shipped_classifier_path

    out = tmp_path / "report"
    args = ["evaluate-removal", "--model", str(shipped_classifier_path("digits")), "--dataset", "digits",
            "--parts", "fillers,robustness", "--samples", "3", "--patch-sizes", "3,5", "--lime-samples", "40",
            "--seeds", "0,1", "--mp-steps", "10", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "report.md").is_file() and (out / "robustness.png").is_file() and (out / "fillers_box.png").is_file()
    assert "MP-G" in (out / "report.md").read_text()
    again = CliRunner().invoke(main, args)  # refuses to overwrite
    assert again.exit_code != 0 and "--force" in again.output
    bad = CliRunner().invoke(main, args[:-2] + ["--out", str(tmp_path / "x"), "--seeds", "0"])
    assert bad.exit_code != 0 and "seeds" in bad.output and "Traceback" not in bad.output
    missing = CliRunner().invoke(main, ["evaluate-removal", "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "y")])
    assert missing.exit_code != 0 and "no such" in missing.output
    nothing = CliRunner().invoke(main, ["evaluate-removal", "--model", str(shipped_classifier_path("digits")), "--dataset",
                                        "shapes", "--out", str(tmp_path / "z")])
    assert nothing.exit_code != 0 and "images are" in nothing.output


def test_explainer_removal_methods_torch_and_bundle(tmp_path) -> None:
    from xaisdk.attribution import lime, sliding_patch
    from xaisdk.deploy.export import export_bundle
    from xaisdk.explainer import Explainer
    from xaisdk.models.checkpoint import shipped_classifier_path
    from xaisdk.models.inpainter import shipped_inpainter_path
    from xaisdk.runtime.backend import class_weights

    x = load_digits().test.x[:2]
    inpainter = load_shipped_inpainter("digits")
    explainer = Explainer(load_shipped_classifier("digits"), inpainter=inpainter)
    e = explainer.explain(x, target=None, method="lime", filler="inpaint", n_samples=40, seed=3)
    weights = class_weights(e.source, None, 10)
    direct = lime(explainer.backend, x, weights, filler="inpaint", inpainter=inpainter, n_samples=40, seed=3)
    np.testing.assert_array_equal(e.attributions, direct)
    assert e.baseline is None and e.convergence_delta is None
    with pytest.raises(InputError, match="needs an inpainter"):
        Explainer(load_shipped_classifier("digits")).explain(x, None, method="sp", filler="inpaint")
    with pytest.raises(InputError, match="takes no baseline"):
        explainer.explain(x, None, method="mp", baseline="zero")

    bundle = tmp_path / "bundle"
    export_bundle(shipped_classifier_path("digits"), bundle, inpainter=shipped_inpainter_path("digits"))
    served = Explainer.load(bundle)
    assert served.inpainter is not None  # the bundle's inpainter graph, on ONNX Runtime
    other = (e.source + 1) % 10
    onnx_map = served.explain(x, target=other, method="sp", filler="inpaint", patch=5).attributions
    torch_map = sliding_patch(explainer.backend, x, class_weights(e.source, other, 10), filler="inpaint",
                              inpainter=inpainter, patch=5)
    np.testing.assert_allclose(onnx_map, torch_map, atol=2e-4)
