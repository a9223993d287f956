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
    panel = summary["one_vs_one"]
    assert {row["why"] for row in panel["rows"]} == {"runner-up", "--target"}
    assert set(panel["seconds"]) == {"integrated_gradients", "deeplift", "occlusion", "deepshap"}
    for row in panel["rows"]:
        for baseline in ("zero", "mdts", "ganmex"):
            # the attributions of IG / DeepLIFT add up to the score delta between input and baseline
            gap = abs(row["score_delta"]["input"] - row["score_delta"][baseline])
            assert row["completeness_error"]["integrated_gradients"][baseline] <= 0.01 * max(gap, 1.0)
            assert row["completeness_error"]["deeplift"][baseline] <= 1e-5 * max(gap, 1.0)
    figures = [panel["figure"], summary["why_not_true_class"]["figure"]]
    assert figures == ["figure2_one_vs_one.png", "figure2_why_not_true_class.png"]
    for name in figures:
        image = Image.open(out / name)
        assert image.size[0] > 800 and image.size[1] > 300
        pixels = np.asarray(image.convert("RGB"), dtype=int)
        assert (pixels[..., 2] - pixels[..., 0] > 100).any(), "no blue (positive) attribution drawn"
        assert (pixels[..., 0] - pixels[..., 2] > 100).any(), "no red (negative) attribution drawn"
        assert f"wrote {out / name}" in result.stdout
    text = (out / "summary.txt").read_text()
    assert "test accuracy" in text and "S_source - S_target" in text
    assert "[Fig. 2.A] figure2_one_vs_one.png" in result.stdout


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
