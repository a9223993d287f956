"""ExplainGAN and Progressive Exaggeration served by the Explainer: on torch, from a bundle, and through the CLI."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from xaisdk import Explainer
from xaisdk.counterfactual.exaggeration import Exaggeration
from xaisdk.counterfactual.explaingan import ExplainGAN
from xaisdk.deploy.export import export_bundle
from xaisdk.errors import InputError
from xaisdk.models import load_shipped_classifier, load_shipped_ganmex, shipped_ganmex_path
from xaisdk.models.exaggeration import shipped_exaggeration_path
from xaisdk.models.explaingan import shipped_explaingan_path


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("xaisdk")
    command = [exe] if exe else [sys.executable, "-m", "xaisdk.cli"]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("cf") / "bundle"
    export_bundle(shipped_ganmex_path("digits"), out, explaingan=shipped_explaingan_path(),
                  exaggeration=shipped_exaggeration_path())
    return out


@pytest.fixture(scope="module")
def on_torch():
    return Explainer(load_shipped_ganmex("digits"), explaingan=ExplainGAN(), exaggeration=Exaggeration.shipped())


def test_bundle_describes_and_serves_both_generators(bundle, on_torch, digits):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"explaingan", "exaggeration"} <= set(manifest["graphs"])
    assert manifest["model"]["exaggeration"] == {"target_class": 8, "n_bins": 10}
    assert manifest["model"]["explaingan"]["class_names"] == ["3", "8"]
    assert manifest["verification"]["explaingan_abs_err"] <= 1e-4 and manifest["verification"]["exaggeration_abs_err"] <= 1e-4
    served = Explainer.load(bundle)
    assert not {"explaingan", "exaggeration"} & set(served.backend._sessions)  # their own runtimes load them
    test = digits.test
    x = np.concatenate([test.x[test.y == 3][:3], test.x[test.y == 8][:3]])
    a, b = served.counterfactual(x, kind="explaingan"), on_torch.counterfactual(x, kind="explaingan")
    for field in ("transformed", "mask", "composite", "flipped_prob"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-4)
    np.testing.assert_array_equal(a.source, [0, 0, 0, 1, 1, 1])
    assert a.flipped.all()
    s, t = served.counterfactual(x, kind="exaggeration", n_steps=7), on_torch.counterfactual(x, kind="exaggeration", n_steps=7)
    assert s.images.shape == (6, 7, 1, 28, 28)
    np.testing.assert_allclose(s.images, t.images, atol=1e-4)
    np.testing.assert_allclose(s.outputs, t.outputs, atol=1e-4)
    # f of the first image is the classifier's probability of class 8 at I(x, 0), recomputed here
    logits = served.logits(s.images[:, 0])
    p8 = np.exp(logits[:, 8] - logits.max(1)) / np.exp(logits - logits.max(1, keepdims=True)).sum(1)
    np.testing.assert_allclose(s.outputs[:, 0], p8, atol=1e-5)


def test_counterfactual_errors_are_clean(on_torch, digits):
    x = digits.test.x[:2]
    with pytest.raises(InputError, match="kind"):
        on_torch.counterfactual(x, kind="stargan")
    with pytest.raises(InputError, match="takes no target"):
        on_torch.counterfactual(x, 3, kind="explaingan")
    with pytest.raises(InputError, match="trained for class 8"):
        on_torch.counterfactual(x, kind="exaggeration", target_class=3)
    with pytest.raises(InputError, match="needs target"):
        on_torch.counterfactual(x)
    plain = Explainer(load_shipped_ganmex("digits"))
    with pytest.raises(InputError, match="no explaingan model"):
        plain.counterfactual(x, kind="explaingan")
    with pytest.raises(InputError, match="expected an explainer"):
        Explainer(load_shipped_ganmex("digits"), exaggeration=42)
    np.testing.assert_array_equal(plain.counterfactual(x, [1, 2]), on_torch.counterfactual(x, [1, 2]))  # ganmex as before


def test_exaggeration_of_another_classifier_is_refused(tmp_path):
    other = copy.deepcopy(load_shipped_classifier("digits"))
    with torch.no_grad():
        next(other.model.parameters()).add_(0.01)
    with pytest.raises(InputError, match="another classifier"):
        export_bundle(other, tmp_path / "bundle", exaggeration=shipped_exaggeration_path())
    assert not (tmp_path / "bundle").exists()


def test_cli_trains_both_and_exports_them(tmp_path):
    eg, pe = tmp_path / "eg.pt", tmp_path / "pe.pt"
    run = _cli("train", "explaingan", "--digits", "3,8", "--steps", "6", "--batch-size", "4", "--checkpoint-every", "3",
               "--out", str(eg))
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and (tmp_path / "eg_samples").is_dir()
    run = _cli("train", "explaingan", "--digits", "3,8", "--steps", "8", "--batch-size", "4", "--out", str(eg), "--resume")
    assert run.returncode == 0, run.stderr
    run = _cli("train", "exaggeration", "--dataset", "digits", "--classifier", str(shipped_ganmex_path("digits")),
               "--target-class", "8", "--steps", "4", "--batch-size", "4", "--out", str(pe))
    assert run.returncode != 0 and "Traceback" not in run.stderr  # a GANMEX file is not a classifier checkpoint
    from xaisdk.models import shipped_classifier_path

    run = _cli("train", "exaggeration", "--dataset", "digits", "--classifier", str(shipped_classifier_path("digits")),
               "--target-class", "8", "--steps", "4", "--batch-size", "4", "--out", str(pe))
    assert run.returncode == 0, run.stderr
    run = _cli("export", "--model", str(shipped_classifier_path("digits")), "--explaingan", str(eg), "--exaggeration", str(pe),
               "--out", str(tmp_path / "bundle"))
    assert run.returncode == 0, run.stderr
    assert "explaingan_abs_err" in run.stdout and (tmp_path / "bundle" / "exaggeration.onnx").is_file()
    for bad in (("--digits", "3"), ("--digits", "3,8", "--classifier", str(eg))):
        run = _cli("train", "explaingan", *bad, "--out", str(tmp_path / "x.pt"))
        assert run.returncode != 0 and "Traceback" not in run.stderr and "Error" in run.stderr
    run = _cli("train", "exaggeration", "--dataset", "digits", "--classifier", str(shipped_classifier_path("digits")),
               "--target-class", "eleven", "--out", str(tmp_path / "y.pt"))
    assert run.returncode != 0 and "--target-class" in run.stderr and "Traceback" not in run.stderr
