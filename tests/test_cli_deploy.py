"""`xaisdk export` and `xaisdk explain`, run as a user runs them (subprocesses of the installed entry point)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_cli import xaisdk

from xaisdk.data import load_digits
from xaisdk.explainer import Explainer
from xaisdk.models import shipped_ganmex_path
from xaisdk.runtime.images import load_image, save_image_png


def assert_clean_failure(result, *fragments: str) -> None:
    """A non-zero exit with a one-line message naming the problem, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, result.stderr)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`xaisdk export` of the shipped GANMEX digits model, run once: (bundle folder, its output)."""
    bundle = tmp_path_factory.mktemp("export") / "bundle"
    result = xaisdk("export", "--model", str(shipped_ganmex_path("digits")), "--out", str(bundle))
    return bundle, result


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """Two test digits that are not 3s, as 28x28 PNG files."""
    folder = tmp_path_factory.mktemp("inputs")
    digits = load_digits().test
    chosen = np.flatnonzero(digits.y != 3)[:2]
    paths = []
    for i in chosen:
        path = folder / f"digit{i}.png"
        save_image_png(digits.x[i], path, scale=1)
        paths.append(path)
    return paths


def test_export_writes_a_verified_bundle(exported):
    bundle, result = exported
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    files = ["classifier.onnx", "classifier_grad.onnx", "deeplift_grad.onnx", "generator_ganmex.onnx", "manifest.json",
             "relu_path.bin"]
    assert sorted(p.name for p in bundle.iterdir()) == sorted(files)
    for name in files:  # one line per file with its size in MB
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(name))
        assert line.strip().endswith("MB")
        assert float(line.split()[-2]) == pytest.approx((bundle / name).stat().st_size / 1e6, abs=0.006)
    verified = next(line for line in result.stdout.splitlines() if line.startswith("verified against torch"))
    for check in ("logits_rel_err", "grad_rel_err", "grad_fd_rel_err", "deeplift_rel_err", "generator_rel_err"):
        assert check in verified
    errors = [float(part.split()[1]) for part in verified[verified.index("(") + 1:-1].split(", ")]
    assert errors and max(errors) <= 1e-4
    assert f"wrote {bundle}" in result.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["verification"]["tolerance"] == 1e-4 and manifest["model"]["ganmex"] is True


def test_export_refuses_to_replace_without_force(exported):
    bundle, first = exported
    assert first.returncode == 0, first.stderr
    before = (bundle / "manifest.json").read_text()
    again = xaisdk("export", "--model", str(shipped_ganmex_path("digits")), "--out", str(bundle))
    assert_clean_failure(again, str(bundle), "--force")
    assert (bundle / "manifest.json").read_text() == before  # untouched
    forced = xaisdk("export", "--model", str(shipped_ganmex_path("digits")), "--out", str(bundle), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "verified against torch" in forced.stdout
    assert Explainer.load(bundle).backend.has_generator  # the replaced bundle loads


def test_export_bad_arguments_fail_cleanly(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00 certainly not a checkpoint")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("precious")
    model = str(shipped_ganmex_path("digits"))
    cases = [
        (["--model", model, "--opset", "99"], ["opset", "99"]),
        (["--model", model, "--batch", "0"], ["batch"]),
        (["--model", str(tmp_path / "missing.pt")], ["missing.pt", "no such checkpoint"]),
        (["--model", str(garbage)], ["garbage.pt", "not a readable torch checkpoint"]),
        (["--model", model, "--out", str(notes), "--force"], ["not an xaisdk bundle"]),
        (["--model", model, "--layout", "NHWC"], ["--layout applies to ONNX files"]),
    ]
    for args, fragments in cases:
        out = ["--out", str(tmp_path / "bundle")] if "--out" not in args else []
        result = xaisdk("export", *args, *out)
        assert_clean_failure(result, *fragments)
        assert not (tmp_path / "bundle").exists()
    assert (notes / "keep.txt").read_text() == "precious" and len(list(notes.iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_explain_writes_pngs_and_json_matching_the_explainer(exported, digit_pngs, tmp_path):
    bundle, first = exported
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    args = [arg for path in digit_pngs for arg in ("--input", str(path))]
    result = xaisdk("explain", "--bundle", str(bundle), *args, "--target", "3", "--steps", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for path in digit_pngs:
        for suffix in ("input", "attribution", "baseline"):
            image = Image.open(out / f"{path.stem}_{suffix}.png")
            assert image.size[0] >= 28 and image.size[0] == image.size[1]
        assert path.name in result.stdout and "completeness error" in result.stdout
    meta = json.loads((out / "explanation.json").read_text())
    assert meta["method"] == "ig" and meta["baseline"] == "ganmex" and meta["backend"] == "onnxruntime"
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert len(meta["explanations"]) == 2
    explainer = Explainer.load(bundle)
    for path, record in zip(digit_pngs, meta["explanations"]):
        image = load_image(path, (1, 28, 28))
        want = explainer.explain(image, 3, method="ig", n_steps=64)
        got = np.asarray(record["attributions"])
        assert got.shape == (1, 28, 28)
        assert np.abs(got - want.attributions).max() <= 1e-4 * np.abs(want.attributions).max()
        assert record["target"] == 3 and record["target_name"] == ["3"]
        assert record["source"] == want.source and record["source_name"] == [str(want.source)]
        assert record["score"] == pytest.approx(want.score, rel=1e-5)
        assert record["convergence_delta"] == pytest.approx(want.convergence_delta, abs=1e-4 * abs(want.score))
        assert np.abs(np.asarray(record["baseline"]) - explainer.counterfactual(image, 3)).max() <= 1e-5
        # the input PNG shows the image that was explained
        shown = np.asarray(Image.open(out / f"{path.stem}_input.png").convert("L"))[::4, ::4]
        np.testing.assert_array_equal(shown, np.asarray(Image.open(path)))


def test_explain_other_methods_and_one_vs_all(exported, digit_pngs, tmp_path):
    bundle, first = exported
    assert first.returncode == 0, first.stderr
    explainer = Explainer.load(bundle)
    image = load_image(digit_pngs[0], (1, 28, 28))
    runs = [("deeplift", ["--target", "3", "--baseline", "zero"], {"baseline": "zero", "target": 3}),
            ("occlusion", ["--target", "3"], {"target": 3}),  # the GANMEX baseline by default with --target
            ("gradient", [], {"target": None}),
            ("ig", ["--baseline", "0.5", "--steps", "16"], {"target": None, "baseline": 0.5, "n_steps": 16}),
            ("ig", ["--target", "3", "--tolerance", "0.002"], {"target": 3, "tolerance": 0.002})]  # --steps auto: the default
    for i, (method, extra, options) in enumerate(runs):
        out = tmp_path / f"{method}_{i}"
        result = xaisdk("explain", "--bundle", str(bundle), "--input", str(digit_pngs[0]), "--method", method, *extra,
                        "--out", str(out))
        assert result.returncode == 0, result.stderr
        record = json.loads((out / "explanation.json").read_text())["explanations"][0]
        want = explainer.explain(image, method=method, **options)
        got = np.asarray(record["attributions"])
        assert np.abs(got - want.attributions).max() <= 1e-4 * np.abs(want.attributions).max(), method
        assert (out / f"{digit_pngs[0].stem}_baseline.png").exists() == (want.baseline is not None)
        assert record["n_steps"] == want.n_steps and record["converged"] == want.converged
        if "tolerance" in options:
            assert record["converged"] and abs(record["convergence_delta"]) <= 0.002 * abs(want.score - want.baseline_score)
            assert f"{want.n_steps} path points" in result.stdout


def test_explain_bad_input_fails_cleanly(exported, digit_pngs, tmp_path):
    bundle, first = exported
    assert first.returncode == 0, first.stderr
    wrong_size = tmp_path / "big.png"
    Image.fromarray(np.zeros((32, 30), np.uint8)).save(wrong_size)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    one = ["--input", str(digit_pngs[0])]
    cases = [
        ([*one, "--target", "cat"], ["unknown class name 'cat'"]),
        ([*one, "--target", "12"], ["class index 12 out of range"]),
        (["--input", str(wrong_size), "--target", "3"], ["big.png", "30 wide x 32 high", "28 wide x 28 high"]),
        (["--input", str(tmp_path / "missing.png"), "--target", "3"], ["missing.png", "no such file"]),
        ([*one, "--target", "3", "--baseline", "nan"], ["baseline", "finite"]),
        ([*one, "--target", "3", "--steps", "0"], ["n_steps"]),
        ([*one, "--target", "3", "--steps", "lots"], ["--steps: expected 'auto' or an integer, got 'lots'"]),
        ([*one, "--target", "3", "--tolerance", "0"], ["tolerance: expected a number in (0, 1]"]),
        ([*one, "--target", "3", "--steps", "16", "--tolerance", "0.1"], ["tolerance: applies to n_steps='auto' only"]),
        ([*one, "--target", "3", "--method", "occlusion", "--tolerance", "0.1"], ["--tolerance: applies to --method ig"]),
    ]
    for args, fragments in cases:
        out = tmp_path / "out"
        result = xaisdk("explain", "--bundle", str(bundle), *args, "--out", str(out))
        assert_clean_failure(result, *fragments)
        assert not (out / "explanation.json").exists()
        shutil.rmtree(out, ignore_errors=True)
    # one bad image among several: the message names it, and nothing is written for the good one either
    digits = load_digits().test
    three = tmp_path / "three.png"
    save_image_png(digits.x[np.flatnonzero(digits.y == 3)[0]], three, scale=1)
    assert Explainer.load(bundle).predict(load_image(three, (1, 28, 28))) == 3
    out = tmp_path / "out"
    result = xaisdk("explain", "--bundle", str(bundle), *one, "--input", str(three), "--target", "3", "--out", str(out))
    assert_clean_failure(result, "three.png", "target equals source ('3')")
    assert not out.exists()
    result = xaisdk("explain", "--bundle", str(bundle), *one, "--target", "3", "--out", str(busy))
    assert_clean_failure(result, str(busy), "already exists", "--force")
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    forced = xaisdk("explain", "--bundle", str(bundle), *one, "--target", "3", "--steps", "8", "--out", str(busy), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (busy / "explanation.json").exists() and (busy / "keep.txt").read_text() == "precious"
    missing = xaisdk("explain", "--bundle", str(tmp_path / "nowhere"), *one, "--out", str(tmp_path / "o2"))
    assert_clean_failure(missing, "nowhere", "no such bundle")


def test_export_reads_a_channels_last_onnx_file(tmp_path):
    """A Keras-layout file (N, H, W, C) is found channels-last by itself; read channels-first against a stated
    (C, H, W) it is a clean error naming --layout."""
    import io
    import warnings

    import torch
    from torch import nn

    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x.permute(0, 3, 1, 2))).mean((2, 3)))

    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ChannelsLast().eval(), torch.zeros(1, 16, 16, 3), buffer, dynamo=False, opset_version=17,
                          input_names=["images"], dynamic_axes={"images": {0: "n"}})
    (tmp_path / "keras.onnx").write_bytes(buffer.getvalue())
    result = xaisdk("export", "--model", str(tmp_path / "keras.onnx"), "--out", str(tmp_path / "bundle"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [3, 16, 16] and manifest["model"]["source_layout"] == "NHWC"
    forced = xaisdk("export", "--model", str(tmp_path / "keras.onnx"), "--layout", "NCHW", "--input-shape", "3,16,16",
                    "--out", str(tmp_path / "b2"))
    assert_clean_failure(forced, "--layout NHWC")
    assert not (tmp_path / "b2").exists()
