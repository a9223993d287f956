"""``xaisdk bench``: every suite runs, agrees with its peer, and writes results that say where they ran.

No timing is asserted here: speed lives in benchmarks/results/, these tests check the numbers the
benchmark compares are the same computation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from xaisdk.bench import run_bench
from xaisdk.bench.floor import forward_macs
from xaisdk.bench.removal import per_step_flip_curve
from xaisdk.bench.report import markdown
from xaisdk.errors import InputError
from xaisdk.models.classifiers import MnistCNN


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("xaisdk")
    command = [exe] if exe else [sys.executable, "-m", "xaisdk.cli"]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_result():
    return run_bench(("ig", "occlusion", "floor"), quick=True, progress=False, command="pytest")


def test_ig_suite_agrees_with_captum_on_every_path(quick_result):
    ig = quick_result["suites"]["ig"]
    names = set(ig["rows"])
    assert {"captum (cpu)", "xaisdk torch (relu-path kernels)", "xaisdk torch (per-step autograd loop)",
            "xaisdk onnxruntime (C++ IG loop)", "xaisdk onnxruntime (relu-path kernels)"} <= names
    for name, row in ig["rows"].items():
        assert row["max_rel_diff_vs_captum_cpu"] < 1e-4, name
        assert row["p95_ms"] >= row["p50_ms"] > 0
    if not torch.cuda.is_available():  # every GPU path says why it did not run
        assert {"captum (cuda)", "xaisdk torch-cuda (CUDA graph)", "xaisdk tensorrt"} <= set(ig["skipped"])
    best = ig["rows"][ig["best_cpu_path"]]
    assert ig["speedup_vs_captum_cpu"] == pytest.approx(ig["rows"]["captum (cpu)"]["p50_ms"] / best["p50_ms"])


def test_occlusion_suite_agrees_with_captum(quick_result):
    rows = quick_result["suites"]["occlusion"]["rows"]
    assert len(rows) == 4
    for name, row in rows.items():
        assert row["max_rel_diff_vs_captum"] < 1e-4, name


def test_floor_counts_the_digits_cnn_by_hand(quick_result):
    floor = quick_result["suites"]["floor"]
    conv1, conv2, fc1, fc2 = 14 * 14 * 32 * 36, 7 * 7 * 64 * 32 * 36, 3136 * 256, 256 * 10
    assert floor["forward_macs"] == conv1 + conv2 + fc1 + fc2 == forward_macs(MnistCNN(), (1, 28, 28))
    assert floor["ig_flops"] == 200 * 4 * floor["forward_macs"]
    assert set(quick_result["suites"]["ig"]["rows"]) - {"captum (cuda)"} <= set(floor["rows"])


def test_results_record_device_versions_date_and_command(quick_result):
    assert quick_result["command"] == "pytest"
    assert quick_result["device"]["cores"] >= 1 and quick_result["device"]["cpu"]
    assert {"torch", "numpy", "captum", "onnxruntime", "xaisdk"} <= set(quick_result["versions"])
    assert quick_result["date"][:4].isdigit()


def test_per_step_loop_is_the_plain_pixel_flipping_curve():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x = np.array([[[[0.1, 0.2], [0.3, 0.9]]]], np.float32)
    weights = np.array([[1.0, -1.0]], np.float32)
    curve = per_step_flip_curve(net, x, np.array([3, 0, 2, 1]), weights)
    flipped = x.copy().reshape(-1)
    expected = []
    for pixel in [None, 3, 0, 2, 1]:
        if pixel is not None:
            flipped[pixel] = 1 - flipped[pixel]
        with torch.no_grad():
            expected.append(float((net(torch.from_numpy(flipped.reshape(x.shape))) * torch.from_numpy(weights)).sum()))
    np.testing.assert_allclose(curve, expected, rtol=1e-6)


def test_cli_writes_json_markdown_and_png(tmp_path):
    done = _cli("bench", "--suites", "aopc,mdts", "--quick", "--out", str(tmp_path), "--name", "smoke")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["command"].startswith("xaisdk bench --suites aopc,mdts --quick")
    assert (tmp_path / "smoke.png").stat().st_size > 0
    assert "## aopc" in (tmp_path / "smoke.md").read_text()
    for name, row in result["suites"]["aopc"]["rows"].items():
        assert row["max_abs_diff_vs_loop"] < 1e-3, name  # the same 785 scores as the per-step loop
    mdts = result["suites"]["mdts"]
    assert mdts["agreement"]["agree"] and mdts["agreement"]["index_match"] > 0.999
    assert not mdts["goal"]["met"]  # a quick run is not at MNIST scale, so it cannot claim the goal
    again = _cli("bench", "--suites", "mdts", "--quick", "--out", str(tmp_path), "--name", "smoke")
    assert again.returncode != 0 and "exists" in again.stderr and "Traceback" not in again.stderr


def test_cli_refuses_unknown_suites_cleanly(tmp_path):
    done = _cli("bench", "--suites", "ig,warp", "--out", str(tmp_path))
    assert done.returncode != 0
    assert "unknown 'warp'" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(InputError, match="repeats"):
        run_bench(("aopc",), repeats=0)


def test_gpu_backends_say_what_they_need(tmp_path):
    from xaisdk.deploy.export import export_bundle
    from xaisdk.explainer import Explainer
    from xaisdk.models import shipped_ganmex_path

    export_bundle(shipped_ganmex_path("digits"), tmp_path / "bundle")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="tensorrt"):
            Explainer.load(tmp_path / "bundle", backend="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA GPU"):
            Explainer.load(shipped_ganmex_path("digits"), backend="torch-cuda")
    with pytest.raises(InputError, match="runs bundles"):
        Explainer.load(shipped_ganmex_path("digits"), backend="tensorrt")
    with pytest.raises(InputError, match="not torch weights"):
        Explainer.load(tmp_path / "bundle", backend="torch-cuda")


def test_missing_peer_packages_are_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "captum" else real(name, *a))
    with pytest.raises(InputError, match="captum, which is not installed"):
        run_bench(("ig", "mdts"), quick=True, progress=False)


def test_bundle_suite_times_both_backends_on_the_same_ig():
    """The bundle race on one zoo layout: both backends timed, their IG maps the same, the goal judged."""
    from xaisdk.bench.bundle_speed import bundle_speed_suite

    result = bundle_speed_suite(("mobilenet_v3_small",), quick=True)
    entry = result["layouts"]["mobilenet_v3_small"]
    assert entry["torch_s"] > 0 and entry["onnxruntime_s"] > 0
    assert entry["onnxruntime_speedup"] == pytest.approx(entry["torch_s"] / entry["onnxruntime_s"])
    assert entry["maps_rel_l1"] < 1e-2  # the bundle's gradient graph answers what torch answers
    assert result["goal"]["met"] == (entry["onnxruntime_speedup"] >= 1.0)
    assert "mobilenet_v3_small: onnxruntime" in markdown({"command": "c", "date": "d", "device": {"cpu": "x", "cores": 2},
                                                           "suites": {"bundle": result}})
