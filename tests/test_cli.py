"""The `xaisdk` command, run as a user runs it (a subprocess of the installed entry point)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaisdk.models import load_classifier


def xaisdk(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("xaisdk")
    command = [exe] if exe else [sys.executable, "-m", "xaisdk.cli"]
    return subprocess.run(command + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


def test_quickstart_writes_figures_and_summary(tmp_path):
    out = tmp_path / "qs"
    result = xaisdk("quickstart", "--out", str(out), "--n-images", "3", "--target", "0")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["grids"]) == {"runner-up", "class-0"}
    for grid in summary["grids"].values():
        assert set(grid["seconds"]) == {
            "gradient", "grad_x_input", "integrated_gradients", "expected_gradients", "deeplift", "deepshap", "occlusion",
        }  # fmt: skip
        # the attributions of IG / DeepLIFT add up to the score delta between input and MDTS baseline
        gap = np.abs(np.array(grid["score_delta_input"]) - np.array(grid["score_delta_baseline"]))
        assert grid["completeness_error"]["integrated_gradients"] <= 0.01 * gap.max()
        assert grid["completeness_error"]["deeplift"] <= 1e-5 * max(gap.max(), 1.0)
        image = Image.open(out / grid["figure"])
        assert image.size[0] > 800 and image.size[1] > 300
        pixels = np.asarray(image.convert("RGB"), dtype=int)
        assert (pixels[..., 2] - pixels[..., 0] > 100).any(), "no blue (positive) attribution drawn"
        assert (pixels[..., 0] - pixels[..., 2] > 100).any(), "no red (negative) attribution drawn"
    text = (out / "summary.txt").read_text()
    assert "test accuracy" in text and "S_" in text
    assert "[runner-up] saliency_runner-up.png" in result.stdout


def test_quickstart_refuses_to_overwrite_a_folder_with_files(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    result = xaisdk("quickstart", "--out", str(tmp_path), "--n-images", "1")
    assert result.returncode != 0
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("args,message", [
    (["--n-images", "0"], "n_images"),
    (["--target", "12"], "target 12"),
])  # fmt: skip
def test_quickstart_bad_options_give_clean_errors(tmp_path, args, message):
    result = xaisdk("quickstart", "--out", str(tmp_path / "o"), *args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_train_classifier_on_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    # two classes a linear model separates: bright left half vs bright right half
    x = rng.random((120, 1, 28, 28)).astype(np.float32) * 0.3
    y = np.arange(120) % 2
    x[y == 0, :, :, :14] += 0.6
    x[y == 1, :, :, 14:] += 0.6
    np.savez(tmp_path / "data.npz", x=x.clip(0, 1), y=y, class_names=np.array(["left", "right"]))
    ckpt = tmp_path / "clf.pt"
    result = xaisdk("train", "classifier", "--dataset", str(tmp_path / "data.npz"), "--out", str(ckpt), "--epochs", "3")
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    clf = load_classifier(ckpt)
    assert clf.class_names == ("left", "right") and clf.input_shape == (1, 28, 28)
    assert clf.metadata["test_accuracy"] >= 0.9
    again = xaisdk("train", "classifier", "--dataset", str(tmp_path / "data.npz"), "--out", str(ckpt), "--epochs", "1")
    assert again.returncode != 0 and "already exists" in again.stderr


@pytest.mark.parametrize("dataset,message", [
    ("nope", "digits"),
    ("missing.npz", "missing.npz"),
])  # fmt: skip
def test_train_classifier_bad_dataset(tmp_path, dataset, message):
    result = xaisdk("train", "classifier", "--dataset", dataset, "--out", str(tmp_path / "c.pt"), cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c.pt").exists()


def test_version():
    result = xaisdk("--version")
    assert result.returncode == 0 and "xaisdk" in result.stdout
