"""Resource caps: every size-like option is a real integer within documented limits that an Explainer can
raise, memory does not grow with ``n_steps`` / ``n_samples``, and numeric baselines outside the model's
value range are refused like float inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xaisdk import Explainer
from xaisdk.attribution.expected_gradients import expected_gradients
from xaisdk.attribution.integrated_gradients import integrated_gradients
from xaisdk.attribution.lime import lime
from xaisdk.attribution.occlusion import occlusion
from xaisdk.counterfactual.exaggeration import Exaggeration
from xaisdk.deploy.export import export_bundle
from xaisdk.errors import InputError
from xaisdk.limits import DEFAULT_LIMITS, GAUSS_LEGENDRE_MAX_NODES, Limits, check_size, current_limits
from xaisdk.methods import drivers
from xaisdk.methods.common import chunks, pair
from xaisdk.methods.meaningful_perturbation import meaningful_perturbation
from xaisdk.methods.quadrature import path_rule
from xaisdk.models import load_shipped_ganmex
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.exaggeration import shipped_exaggeration_path
from xaisdk.runtime.backend import class_weights
from xaisdk.runtime.images import save_image_png

# Values that are not a count: nothing may be converted silently (2.5 -> 2, "10" -> 10, True -> 1).
NOT_COUNTS = [None, float("nan"), float("inf"), 2.5, np.float32(3.0), "10", True, np.bool_(True), [4]]
TOO_SMALL = [0, -1]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("caps") / "bundle"
    export_bundle(load_shipped_ganmex("digits"), out, exaggeration=shipped_exaggeration_path())
    return out


@pytest.fixture(scope="module")
def explainers(bundle_dir):
    return {
        "torch": Explainer(load_shipped_ganmex("digits"), exaggeration=Exaggeration.shipped()),
        "bundle": Explainer.load(bundle_dir),
    }


@pytest.fixture(scope="module")
def images(digits):
    return digits.test.x[:2].astype(np.float32)


def _ask(explainer: Explainer, images: np.ndarray, method: str, option: str, value: object):
    """One request with ``option=value`` (a 'zero' baseline, so nothing but the option is at stake)."""
    if method == "exaggeration":
        return explainer.counterfactual(images[:1], kind="exaggeration", n_steps=value)
    extra = {"references": images} if method == "expected_gradients" else {}
    baseline = "ganmex" if method == "expected_gradients" else "zero"
    return explainer.explain(images[:1], target=3, source=7, method=method, baseline=baseline, **extra, **{option: value})


# (method, option, cap field) for the options whose cost grows with their value
COUNTED = [("ig", "n_steps", "n_steps"), ("expected_gradients", "n_samples", "n_samples"),
           ("exaggeration", "n_steps", "series_steps")]


@pytest.mark.parametrize("backend", ["torch", "bundle"])
@pytest.mark.parametrize("method, option, field", COUNTED)
@pytest.mark.parametrize("value", NOT_COUNTS + TOO_SMALL + ["cap+1"], ids=repr)
def test_bad_counts_are_refused_by_name(explainers, images, backend, method, option, field, value):
    value = getattr(DEFAULT_LIMITS, field) + 1 if value == "cap+1" else value
    started = time.perf_counter()
    with pytest.raises(InputError, match=rf"^{option}: ") as err:
        _ask(explainers[backend], images, method, option, value)
    assert repr(value) in str(err.value) or str(value) in str(err.value)
    assert time.perf_counter() - started < 5.0  # refused before the work, not after it


@pytest.mark.parametrize("method, option, field", COUNTED)
def test_the_cap_names_how_to_raise_it(explainers, images, method, option, field):
    cap = getattr(DEFAULT_LIMITS, field)
    with pytest.raises(InputError) as err:
        _ask(explainers["bundle"], images, method, option, cap + 1)
    assert f"{option}: {cap + 1} is above the limit of {cap}" in str(err.value)
    assert f"limits=xaisdk.Limits({field}={cap + 1})" in str(err.value)


# Every size-like option of every method the Explainer serves: (method, options) just above the cap.
OVER_CAP = [
    ("ig", {"chunk_size": 1025}),
    ("deeplift", {"chunk_size": 1025}),
    ("deepshap", {"chunk_size": 1025}),
    ("occlusion", {"chunk_size": 1025}),
    ("gradient", {"chunk_size": 1025}),
    ("grad_x_input", {"chunk_size": 1025}),
    ("expected_gradients", {"chunk_size": 1025}),
    ("sliding_patch", {"chunk_size": 1025}),
    ("lime", {"n_samples": 4097}),
    ("lime", {"n_segments": 4097}),
    ("lime", {"chunk_size": 1025}),
    ("meaningful_perturbation", {"steps": 4097}),
    ("meaningful_perturbation", {"n_jitter": 257}),
    ("meaningful_perturbation", {"chunk_size": 1025}),
]


@pytest.mark.parametrize("method, options", OVER_CAP, ids=lambda v: v if isinstance(v, str) else next(iter(v)))
def test_every_size_option_of_every_method_is_capped(explainers, images, method, options):
    (option, value), = options.items()
    extra = {"references": images} if method == "expected_gradients" else {}
    baseline = "zero" if method in ("ig", "deeplift", "deepshap", "occlusion") else None
    if method == "expected_gradients":
        baseline = "ganmex"
    with pytest.raises(InputError, match=rf"^{option}: {value} is above the limit of {value - 1} per request"):
        explainers["torch"].explain(images[:1], target=3, method=method, baseline=baseline, **extra, **options)
    with pytest.raises(InputError, match=rf"^{option}: expected an integer, got 2.5"):
        explainers["torch"].explain(images[:1], target=3, method=method, baseline=baseline, **extra, **{option: 2.5})


@pytest.mark.parametrize("option", ["window", "stride"])
@pytest.mark.parametrize("value", [2.0, "2", True, float("nan"), (2, 2.5), (2, 2, 2), 0], ids=repr)
def test_occlusion_window_and_stride_are_integers(explainers, images, option, value):
    with pytest.raises(InputError, match=rf"^{option}: "):
        explainers["bundle"].explain(images[:1], target=3, method="occlusion", baseline="zero", **{option: value})


def test_direct_calls_obey_the_same_caps(explainers, images):
    """The drivers and the torch methods check the same options; a ``Limits.applied()`` block raises them."""
    backend = drivers._LinearBackend(np.random.default_rng(0).normal(size=(10, 784)), input_shape=(1, 28, 28))
    model = load_shipped_ganmex("digits")
    series = Exaggeration.shipped()
    w = class_weights([7], [3], 10)
    x = images[:1]
    calls = {
        "driver ig": lambda n: drivers.integrated_gradients(backend, x, w, 0.0, n_steps=n),
        "driver eg": lambda n: drivers.expected_gradients(backend, x, w, images, n_samples=n),
        "driver chunk": lambda n: drivers.gradient(backend, x, w, chunk_size=n),
        "torch ig": lambda n: integrated_gradients(model, x, source=7, target=3, n_steps=n),
        "torch eg": lambda n: expected_gradients(model, x, references=images, source=7, target=3, n_samples=n),
        "torch ig batch": lambda n: integrated_gradients(model, x, source=7, target=3, n_steps=4, batch_size=n),
        "torch occlusion batch": lambda n: occlusion(model, x, source=7, target=3, window=14, stride=14, batch_size=n),
        "path rule": lambda n: path_rule("riemann_middle", n),
        "exaggeration": lambda n: series.series(x, n),
        "onnx exaggeration": lambda n: explainers["bundle"].exaggeration.series(x, n),
        "lime samples": lambda n: lime(backend, x, w, filler="gray", n_samples=n),
        "lime segments": lambda n: lime(backend, x, w, filler="gray", n_samples=8, n_segments=n),
        "mp steps": lambda n: meaningful_perturbation(backend, x, w, filler="gray", steps=n),
        "mp jitter copies": lambda n: meaningful_perturbation(backend, x, w, filler="gray", steps=2, n_jitter=n),
    }
    for name, call in calls.items():
        optional = "batch" in name or "jitter" in name  # None is valid there: "the default rows" / "every shift"
        for value in [v for v in NOT_COUNTS if not (optional and v is None)] + TOO_SMALL + [5000]:
            with pytest.raises(InputError):
                call(value)
    with Limits(n_steps=5000, n_samples=5000, series_steps=5000, chunk_size=5000).applied():
        assert calls["path rule"](5000)[0].shape == (5000,)
        assert calls["driver ig"](5000).shape == calls["driver eg"](5000).shape == x.shape
        assert calls["torch ig batch"](5000).shape == calls["driver chunk"](5000).shape == x.shape
    assert current_limits() == DEFAULT_LIMITS  # the block ends, the defaults are back


def test_a_raised_cap_works_and_stays_with_its_explainer(bundle_dir, explainers, images):
    raised = Explainer.load(bundle_dir, limits=Limits(n_steps=4100, series_steps=300))
    x = images[:1]
    big = raised.explain(x, target=3, source=7, method="ig", baseline="zero", n_steps=4100)
    reference = explainers["bundle"].explain(x, target=3, source=7, method="ig", baseline="zero", n_steps=1000)
    np.testing.assert_allclose(big.attributions, reference.attributions, atol=2e-3 * np.abs(reference.attributions).max())
    assert abs(big.convergence_delta) < 1e-3 * abs(big.score - big.baseline_score)
    series = raised.counterfactual(x, kind="exaggeration", n_steps=300)
    assert series.images.shape == (1, 300, 1, 28, 28)
    with pytest.raises(InputError, match="n_steps: 4100 is above the limit of 4096"):
        explainers["bundle"].explain(x, target=3, source=7, method="ig", baseline="zero", n_steps=4100)
    with pytest.raises(InputError, match="n_steps: 4101 is above the limit of 4100"):
        raised.explain(x, target=3, source=7, method="ig", baseline="zero", n_steps=4101)
    with pytest.raises(InputError, match="n_steps: 301 is above the limit of 300"):
        raised.counterfactual(x, kind="exaggeration", n_steps=301)


def test_a_lowered_chunk_cap_lowers_the_default_rows_without_changing_results(explainers, images):
    small = Explainer(explainers["torch"].backend, limits=Limits(chunk_size=16))
    for method, options in [("ig", {"n_steps": 40}), ("occlusion", {"window": 7, "stride": 7}),
                            ("sliding_patch", {"patch": 7, "stride": 7, "filler": "zero"})]:
        baseline = None if method == "sliding_patch" else "zero"
        ours = small.explain(images, target=3, method=method, baseline=baseline, **options)
        default = explainers["torch"].explain(images, target=3, method=method, baseline=baseline, **options)
        np.testing.assert_allclose(ours.attributions, default.attributions, rtol=1e-5, atol=1e-6)
        with pytest.raises(InputError, match="chunk_size: 17 is above the limit of 16"):
            small.explain(images, target=3, method=method, baseline=baseline, chunk_size=17, **options)


def test_deepshap_baseline_count_is_capped(explainers, images):
    capped = Explainer(explainers["bundle"].backend, limits=Limits(n_baselines=2))
    three = np.stack([np.zeros_like(images[0]), np.full_like(images[0], 0.5), images[1]])
    with pytest.raises(InputError, match=r"baselines \(per input\): 3 is above the limit of 2 .*Limits\(n_baselines=3\)"):
        capped.explain(images[:1], target=3, method="deepshap", baseline=three)
    assert capped.explain(images[:1], target=3, method="deepshap", baseline=three[:2]).attributions.shape == (1, 1, 28, 28)


def test_gauss_legendre_nodes_have_their_own_bound():
    with Limits(n_steps=10 * GAUSS_LEGENDRE_MAX_NODES).applied():
        assert path_rule("riemann_trapezoid", 2 * GAUSS_LEGENDRE_MAX_NODES)[0].shape == (2 * GAUSS_LEGENDRE_MAX_NODES,)
        with pytest.raises(InputError, match="rule 'gausslegendre' takes at most 1024 nodes"):
            path_rule("gausslegendre", GAUSS_LEGENDRE_MAX_NODES + 1)
    alphas, weights = path_rule("gausslegendre", GAUSS_LEGENDRE_MAX_NODES)
    assert abs(float(weights.sum()) - 1.0) < 1e-12 and alphas.shape == (GAUSS_LEGENDRE_MAX_NODES,)


def test_limits_and_helpers_refuse_non_counts():
    for bad in NOT_COUNTS + TOO_SMALL:
        if bad is None:
            continue  # None is "the default" for Limits fields' types only in name; checked below
        with pytest.raises(InputError, match="^Limits.n_steps: "):
            Limits(n_steps=bad)
        with pytest.raises(InputError, match="^batch_size: "):
            list(chunks(10, bad))
        with pytest.raises(InputError, match="^window: "):
            pair(bad, "window")
    with pytest.raises(InputError, match="^Limits.chunk_size: "):
        Limits(chunk_size=None)
    with pytest.raises(InputError, match="limits: expected xaisdk.limits.Limits, got dict"):
        Explainer(load_shipped_ganmex("digits"), limits={"n_steps": 10})
    assert check_size(np.int16(7), "n_steps") == 7 and pair(np.array([2, 3]), "stride") == (2, 3)


def test_limits_applied_in_one_thread_do_not_leak_into_another():
    seen: dict[str, int] = {}
    inside = threading.Event()
    release = threading.Event()

    def raised() -> None:
        with Limits(n_steps=9999).applied():
            seen["raised"] = current_limits().n_steps
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=raised)
    worker.start()
    inside.wait(10)
    seen["other"] = current_limits().n_steps
    release.set()
    worker.join(10)
    assert seen == {"raised": 9999, "other": DEFAULT_LIMITS.n_steps}


# --- numeric baselines outside the model's value range -----------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "bundle"])
@pytest.mark.parametrize("baseline", [2.0, -0.5, 1e9, np.float32(1.5), 255, float("nan"), float("inf"),
                                      "array", "callable", "set"], ids=repr)
def test_out_of_range_numeric_baselines_are_refused(explainers, images, backend, baseline):
    method, options = "ig", {"n_steps": 8}
    if isinstance(baseline, str) and baseline == "array":
        baseline = np.full((28, 28), 1.5, np.float32)
    elif isinstance(baseline, str) and baseline == "callable":
        def baseline(x, target):
            return x - 0.5
    elif isinstance(baseline, str) and baseline == "set":  # three baselines shared by the two inputs
        method, options = "deepshap", {}
        baseline = np.stack([np.zeros((1, 28, 28)), np.full((1, 28, 28), 0.5), np.full((1, 28, 28), -1.0)])
    with pytest.raises(InputError, match="^baseline: "):
        explainers[backend].explain(images, target=3, method=method, baseline=baseline, **options)


@pytest.mark.parametrize("backend", ["torch", "bundle"])
def test_in_range_numeric_baselines_still_work(explainers, images, backend):
    explainer = explainers[backend]
    half = explainer.explain(images, target=3, method="ig", baseline=0.5, n_steps=16)
    as_image = explainer.explain(images, target=3, method="ig", baseline=np.full((28, 28), 0.5, np.float32), n_steps=16)
    np.testing.assert_allclose(half.attributions, as_image.attributions, atol=1e-6)
    assert np.all(half.baseline == np.float32(0.5))
    as_uint8 = explainer.explain(images, target=3, method="ig", baseline=np.full((28, 28), 255, np.uint8), n_steps=16)
    assert np.all(as_uint8.baseline == 1.0)  # uint8 maps onto the value range, as for inputs
    zero = explainer.explain(images, target=3, method="ig", baseline=0, n_steps=16)  # an int is a number too
    assert np.all(zero.baseline == 0.0)


# --- the Exaggeration series in chunks --------------------------------------------------------------

def test_onnx_exaggeration_series_in_chunks_matches_torch(explainers, images):
    """Longer than one generator batch (64 rows) and crossing images: chunking must not reorder anything."""
    onnx = explainers["bundle"].counterfactual(images, kind="exaggeration", n_steps=150)
    ref = explainers["torch"].counterfactual(images, kind="exaggeration", n_steps=150)
    assert onnx.images.shape == (2, 150, 1, 28, 28)
    np.testing.assert_array_equal(onnx.bins, ref.bins)
    np.testing.assert_allclose(onnx.images, ref.images, atol=1e-4)
    np.testing.assert_allclose(onnx.outputs, ref.outputs, atol=1e-4)


# --- memory does not grow with n_steps / n_samples ---------------------------------------------------

class _Tiny(nn.Module):
    """A small digits-shaped CNN, so that tens of thousands of path points run in about a second."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.manual_seed(0)
    classifier = Classifier(_Tiny().eval(), "test_tiny", {}, tuple("0123456789"), (1, 28, 28))
    root = tmp_path_factory.mktemp("tiny")
    torch.save(classifier.model.state_dict(), root / "tiny.pt")
    export_bundle(classifier, root / "bundle")
    return root


_MEASURE = """
import json, resource, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[3])
from test_resource_caps import _Tiny
from xaisdk import Explainer
from xaisdk.limits import Limits

root, kind = sys.argv[1], sys.argv[2]
limits = Limits(n_steps=20000, n_samples=20000)
if kind == "bundle":
    explainer = Explainer.load(root + "/bundle", limits=limits)
else:
    model = _Tiny().eval()
    model.load_state_dict(torch.load(root + "/tiny.pt"))
    explainer = Explainer(model, input_shape=(1, 28, 28), limits=limits, fast_ig=False)
x = np.random.default_rng(0).uniform(0, 1, (2, 28, 28)).astype(np.float32)
refs = np.random.default_rng(1).uniform(0, 1, (8, 28, 28)).astype(np.float32)

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def run(n):
    ig = explainer.explain(x, target=3, source=7, baseline="zero", n_steps=n)
    eg = explainer.explain(x, target=3, source=7, method="eg", baseline=None, references=refs, n_samples=n)
    return float(np.abs(ig.attributions).sum()), float(np.abs(eg.attributions).sum())

run(200); run(200)
before = peak()
sums = run(20000)
print(json.dumps({"before": before, "after": peak(), "sums": sums}))
"""


@pytest.mark.parametrize("kind", ["torch", "bundle"])
def test_memory_does_not_grow_with_n_steps(tiny_bundle, kind):
    """Peak RSS of IG with 20,000 steps and EG with 20,000 samples on 2 images, after a 200-step run:
    materialising the path (N x n_steps x image) would take 125 MB; the chunked loops need one chunk."""
    here = str(Path(__file__).parent)
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(tiny_bundle), kind, here], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    naive = 2 * 20000 * 28 * 28 * 4
    growth = result["after"] - result["before"]
    assert growth < naive / 10, f"peak RSS grew by {growth / 1e6:.1f} MB for a {naive / 1e6:.0f} MB path"
    assert all(np.isfinite(result["sums"])) and min(result["sums"]) > 0


# --- the command line ----------------------------------------------------------------------------------

def test_cli_refuses_too_many_steps_in_one_line(bundle_dir, images, tmp_path):
    save_image_png(images[0], tmp_path / "digit.png", (0.0, 1.0), scale=1)
    exe = shutil.which("xaisdk")
    command = [exe] if exe else [sys.executable, "-m", "xaisdk.cli"]
    args = ["explain", "--bundle", str(bundle_dir), "--input", str(tmp_path / "digit.png"), "--steps", "100000",
            "--out", str(tmp_path / "out")]
    run = subprocess.run(command + args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "n_steps: 100000 is above the limit of 4096" in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_the_default_rows_per_call_shrink_with_the_image_size():
    """256 autograd rows per call suit 28 px digits; at 224 px the default holds 27 images' activations, not 256."""
    from xaisdk.deploy.torch_intake import classifier_from_module
    from xaisdk.explainer import CHUNK_INPUT_ELEMENTS

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    explainer = Explainer(classifier_from_module(net, input_shape=(3, 224, 224)))
    rows: list[int] = []
    recorded = explainer.backend.score_gradient

    def recording(x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows.append(len(x))
        return recorded(x, weights)

    explainer.backend.score_gradient = recording
    image = np.random.default_rng(0).random((3, 224, 224)).astype(np.float32)
    fitted = explainer.explain(image, target=1, source=0, method="ig", baseline="zero", n_steps=64)
    assert max(rows) == CHUNK_INPUT_ELEMENTS // (3 * 224 * 224) == 27
    rows.clear()
    named = explainer.explain(image, target=1, source=0, method="ig", baseline="zero", n_steps=64, chunk_size=64)
    assert rows == [64]
    np.testing.assert_allclose(fitted.attributions, named.attributions, rtol=1e-5, atol=1e-7)
