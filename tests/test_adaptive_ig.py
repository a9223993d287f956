"""Adaptive IG (n_steps="auto"): analytic integrals, completeness per input, a float64 reference on ReLU
networks, the fused relu-path kernels and ONNX Runtime against the torch loop, the Explainer's reuse of
the path's end scores, and the inputs that must be refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import Fn, randomize_batch_norms
from torch import nn

from xaisdk import Explainer, InputError, Limits
from xaisdk.methods import drivers
from xaisdk.methods.adaptive_quadrature import adaptive_integrated_gradients
from xaisdk.runtime.backend import class_weights
from xaisdk.torch_runtime.torch_backend import TorchBackend


def _score_grad(net: nn.Module, weights: np.ndarray):
    """score_grad of ``weights[sample] . net(batch)`` by torch autograd, float64 inside."""

    def fn(batch: np.ndarray, sample: np.ndarray):
        x = torch.from_numpy(batch.astype(np.float64)).requires_grad_(True)
        scores = (net.double()(x) * torch.from_numpy(weights[sample].astype(np.float64))).sum(1)
        (grad,) = torch.autograd.grad(scores.sum(), x)
        return scores.detach().numpy(), grad.numpy().astype(np.float32)

    return fn


def _float64_ig(net: nn.Module, x: np.ndarray, base: np.ndarray, weights: np.ndarray, steps: int = 4000) -> np.ndarray:
    """Midpoint IG with ``steps`` points in float64 by autograd: the reference for piecewise-linear nets."""
    net = net.double()
    out = []
    for i in range(len(x)):
        alphas = torch.from_numpy((np.arange(steps) + 0.5) / steps).view(-1, 1, 1, 1)
        xi, bi = torch.from_numpy(x[i:i + 1].astype(np.float64)), torch.from_numpy(base[i:i + 1].astype(np.float64))
        path = (bi + alphas * (xi - bi)).requires_grad_(True)
        score = (net(path) @ torch.from_numpy(weights[i].astype(np.float64))).sum()
        (grad,) = torch.autograd.grad(score, path)
        out.append(((xi - bi) * grad.mean(0, keepdim=True)).numpy())
    return np.concatenate(out)


def test_smooth_score_matches_the_analytic_integral():
    # S(z) = sum c z^2: IG_i = c_i (x_i^2 - b_i^2) exactly
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, (1, 2, 3, 3)).astype(np.float32)
    x, b = rng.random((2, 3, 2, 3, 3)).astype(np.float32)

    def score_grad(batch, sample):
        return (c * batch**2).reshape(len(batch), -1).sum(1), 2 * c * batch

    result = adaptive_integrated_gradients(score_grad, x, b, tolerance=1e-4)
    exact = c * (x**2 - b**2)
    gap = exact.reshape(3, -1).sum(1)
    assert result.converged.all()
    np.testing.assert_allclose(result.input_scores - result.baseline_scores, gap, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(result.convergence_delta) <= 1e-4 * np.abs(gap) + 1e-6)
    # the trapezoid rule is exact for a linear integrand: the map, not only its sum, is right
    np.testing.assert_allclose(result.attributions, exact, rtol=1e-5, atol=1e-6)


def test_a_narrow_bump_between_the_first_points_is_found():
    # S = sigmoid(k (u - 0.6)) with u the mean pixel: along the path from black to white the gradient is
    # a spike of width ~1/k around a = 0.6, between the first pass's points (0, 0.25, 0.5, 0.75, 1).
    k = 400.0
    x = np.ones((1, 1, 4, 4), np.float32)

    def score_grad(batch, sample):
        u = batch.reshape(len(batch), -1).mean(1)
        s = 0.5 * (1 + np.tanh(k * (u - 0.6) / 2))  # the logistic function, without overflow
        return s, np.broadcast_to((k * s * (1 - s) / 16)[:, None, None, None], batch.shape).astype(np.float32)

    result = adaptive_integrated_gradients(score_grad, x, 0.0, tolerance=0.01)
    gap = 0.5 * (np.tanh(k * 0.4 / 2) - np.tanh(-k * 0.6 / 2))
    assert result.converged[0] and result.steps[0] > 5
    # analytic IG of a function of the mean: every pixel gets an equal share of the score change
    np.testing.assert_allclose(result.attributions, np.full_like(x, gap / 16), rtol=0.011)
    # the same number of points on a fixed midpoint rule misses the spike entirely
    mids = (np.arange(5) + 0.5) / 5
    fixed = sum(score_grad(np.full_like(x, a), None)[1] for a in mids) / 5
    assert abs(float(fixed.sum()) - gap) > 0.5 * gap


@pytest.fixture(scope="module")
def relu_net():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    return randomize_batch_norms(net)


def test_relu_network_completeness_per_input_and_float64_reference(relu_net):
    rng = np.random.default_rng(1)
    x = rng.random((4, 3, 8, 8)).astype(np.float32)
    base = np.zeros_like(x)
    w = class_weights(np.array([0, 1, 2, 3]), np.array([4, 4, 0, 1]), 5)
    result = adaptive_integrated_gradients(_score_grad(relu_net, w), x, base, tolerance=0.005)
    with torch.no_grad():
        logits = relu_net.double()(torch.from_numpy(x.astype(np.float64))).numpy()
        logits0 = relu_net.double()(torch.zeros(1, 3, 8, 8, dtype=torch.float64)).numpy()
    gap = (logits * w).sum(1) - (logits0 * w).sum(1)
    np.testing.assert_allclose(result.input_scores - result.baseline_scores, gap, rtol=1e-5)
    assert result.converged.all() and (result.steps <= 512).all()
    total = result.attributions.reshape(4, -1).sum(1)
    assert np.all(np.abs(total - gap) <= 0.005 * np.abs(gap) * (1 + 1e-4))
    assert np.all(result.error_bound >= np.abs(total - gap) / np.abs(gap) - 1e-6)
    reference = _float64_ig(relu_net, x, base, w)
    err = np.abs(result.attributions - reference).reshape(4, -1).max(1) / np.abs(reference).reshape(4, -1).max(1)
    assert err.max() < 0.1, err  # the map as a whole, not only its sum, approaches the integral


def test_max_steps_reached_is_reported_not_hidden(relu_net):
    rng = np.random.default_rng(2)
    x = rng.random((2, 3, 8, 8)).astype(np.float32)
    w = class_weights(np.array([0, 1]), np.array([4, 4]), 5)
    result = adaptive_integrated_gradients(_score_grad(relu_net, w), x, 0.0, tolerance=1e-6, max_steps=12)
    assert not result.converged.any()
    assert (result.steps <= 12).all() and (result.steps >= 5).all()
    assert np.all(np.abs(result.convergence_delta) > 0)


def test_refusals():
    score_grad = _score_grad(nn.Flatten(), np.ones((1, 4), np.float32))
    x = np.ones((1, 1, 2, 2), np.float32)
    for options, pattern in (({"tolerance": 0.0}, "tolerance: expected a number in"),
                             ({"tolerance": True}, "tolerance: expected a number in"),
                             ({"tolerance": 2.0}, "tolerance: expected a number in"),
                             ({"max_steps": 4}, "max_steps: expected an integer >= 5"),
                             ({"max_steps": 10_000}, "max_steps: 10000 is above the limit of 4096"),
                             ({"segments": 0}, "segments: expected an integer >= 1")):
        with pytest.raises(InputError, match=pattern):
            adaptive_integrated_gradients(score_grad, x, 0.0, **options)
    with Limits(n_steps=10_000).applied():
        assert adaptive_integrated_gradients(score_grad, x, 0.0, max_steps=10_000).converged.all()
    with pytest.raises(InputError, match="baseline: shape"):
        adaptive_integrated_gradients(score_grad, x, np.zeros((3, 3), np.float32))

    def not_finite(batch, sample):
        return np.full(len(batch), np.nan), np.ones_like(batch)

    with pytest.raises(InputError, match="not finite"):
        adaptive_integrated_gradients(not_finite, x, 0.0)


def test_input_equal_to_baseline_stops_at_once():
    score_grad = _score_grad(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), np.array([[1.0, -1.0]], np.float32))
    x = np.full((1, 1, 2, 2), 0.5, np.float32)
    result = adaptive_integrated_gradients(score_grad, x, x)
    assert result.steps.tolist() == [5] and result.converged.all()
    assert not result.attributions.any()


class CountingBackend:
    """A real TorchBackend whose calls are counted (how many forward passes the Explainer asks for)."""

    def __init__(self, inner: TorchBackend) -> None:
        self.inner = inner
        self.calls = {"logits": 0, "score_gradient": 0, "fused_integrated_gradients": 0}
        for name in ("name", "input_shape", "num_classes", "value_range", "supports_deeplift", "has_generator"):
            setattr(self, name, getattr(inner, name))

    def logits(self, x):
        self.calls["logits"] += 1
        return self.inner.logits(x)

    def score_gradient(self, x, weights):
        self.calls["score_gradient"] += 1
        return self.inner.score_gradient(x, weights)

    def fused_integrated_gradients(self, *args):
        self.calls["fused_integrated_gradients"] += 1
        return self.inner.fused_integrated_gradients(*args)

    def deeplift_multipliers(self, *args):
        return self.inner.deeplift_multipliers(*args)

    def generate(self, *args):
        return self.inner.generate(*args)


def test_explainer_defaults_to_auto_and_reuses_the_path_end_scores(cifar_cnn):
    rng = np.random.default_rng(4)
    x = rng.random((3, 3, 32, 32)).astype(np.float32)
    counting = CountingBackend(TorchBackend(cifar_cnn, input_shape=(3, 32, 32), fast_ig=False))
    e = Explainer(counting).explain(x, target=[1, 2, 3], source=[0, 0, 0], baseline="zero")
    assert counting.calls["logits"] == 0  # classes given: the input and baseline scores come from the path
    assert e.n_steps.shape == (3,) and e.converged.all() and (e.n_steps >= 5).all()
    assert np.all(e.relative_delta <= 0.01 * (1 + 1e-4))
    with torch.no_grad():
        logits = cifar_cnn(torch.from_numpy(x)).numpy()
        zero = cifar_cnn(torch.zeros(1, 3, 32, 32)).numpy()
    np.testing.assert_allclose(e.score, logits[:, 0] - logits[[0, 1, 2], [1, 2, 3]], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(e.baseline_score, zero[0, 0] - zero[0, [1, 2, 3]], rtol=1e-4, atol=1e-6)
    # with the runner-up as target, one forward pass picks the classes, and no more
    counting.calls["logits"] = 0
    one = Explainer(counting).explain(x[0], target="runner-up", baseline="zero")
    assert counting.calls["logits"] == 1
    assert isinstance(one.n_steps, int) and isinstance(one.converged, bool) and one.relative_delta <= 0.01 * (1 + 1e-4)
    fixed = Explainer(counting).explain(x[0], target="runner-up", baseline="zero", n_steps=32)
    assert fixed.n_steps == 32 and fixed.converged is None


def test_explainer_refuses_mixed_options(cifar_cnn):
    explainer = Explainer(TorchBackend(cifar_cnn, input_shape=(3, 32, 32)))
    x = np.random.default_rng(5).random((3, 32, 32)).astype(np.float32)
    with pytest.raises(InputError, match="rule: n_steps='auto' places its own path points"):
        explainer.explain(x, target=1, source=0, rule="gausslegendre")
    with pytest.raises(InputError, match="tolerance: applies to n_steps='auto' only"):
        explainer.explain(x, target=1, source=0, n_steps=16, tolerance=0.01)
    with pytest.raises(InputError, match="max_steps: 9000 is above the limit of 4096"):
        explainer.explain(x, target=1, source=0, max_steps=9000)
    with pytest.raises(InputError, match="n_steps: expected an integer"):
        explainer.explain(x, target=1, source=0, n_steps="many")


def test_backend_with_relu_path_kernels_gives_the_plain_loops_answer(shipped, digits):
    """Adaptive IG goes through score_gradient on every backend (the relu-path kernels pay off for many
    points per call, not a few per round): a backend with the kernels on gives the same numbers."""
    x = digits.test.x[:6]
    fast = CountingBackend(TorchBackend(shipped))
    plain = TorchBackend(shipped, fast_ig=False)
    logits = plain.logits(x)
    order = np.argsort(logits, 1)
    w = class_weights(order[:, -1], order[:, -2], 10)
    ours = drivers.integrated_gradients_adaptive(fast, x, w, 0.0, tolerance=0.005)
    loop = drivers.integrated_gradients_adaptive(plain, x, w, 0.0, tolerance=0.005)
    assert fast.calls["fused_integrated_gradients"] == 0 and fast.calls["score_gradient"] > 0
    assert ours.converged.all()
    np.testing.assert_array_equal(ours.steps, loop.steps)
    np.testing.assert_array_equal(ours.attributions, loop.attributions)
    gap = ours.input_scores - ours.baseline_scores
    assert np.all(np.abs(ours.convergence_delta) <= 0.005 * np.abs(gap) * (1 + 1e-3))


def test_onnxruntime_bundle_matches_torch(shipped, digits, tmp_path):
    from xaisdk.deploy.export import export_bundle
    from xaisdk.models import shipped_ganmex_path
    from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

    export_bundle(shipped_ganmex_path("digits"), tmp_path / "bundle")
    onnx = OnnxRuntimeBackend(tmp_path / "bundle")
    plain = TorchBackend(shipped, fast_ig=False)
    x = digits.test.x[6:12]
    w = class_weights(np.argsort(plain.logits(x), 1)[:, -1], np.argsort(plain.logits(x), 1)[:, -2], 10)
    ours = drivers.integrated_gradients_adaptive(onnx, x, w, 0.0, tolerance=0.005)
    want = drivers.integrated_gradients_adaptive(plain, x, w, 0.0, tolerance=0.005)
    assert ours.converged.all()
    same = ours.steps == want.steps
    assert same.mean() >= 0.5
    scale = np.abs(want.attributions[same]).max()
    assert np.abs(ours.attributions[same] - want.attributions[same]).max() <= 1e-4 * scale


def test_non_relu_model_through_the_driver():
    # GELU and LayerNorm: a smooth integrand; the driver's "auto" equals the adaptive function's answer
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), Fn(lambda t: t.flatten(1)), nn.LayerNorm(4 * 6 * 6),
                        nn.Linear(4 * 6 * 6, 3)).eval()
    backend = TorchBackend(net, input_shape=(1, 8, 8))
    x = np.random.default_rng(7).random((2, 1, 8, 8)).astype(np.float32)
    w = class_weights(np.array([0, 1]), np.array([2, 0]), 3)
    attr, delta = drivers.integrated_gradients(backend, x, w, 0.0, n_steps="auto", tolerance=1e-3,
                                               return_convergence_delta=True)
    result = drivers.integrated_gradients_adaptive(backend, x, w, 0.0, tolerance=1e-3)
    np.testing.assert_array_equal(attr, result.attributions)
    scores = drivers.score(backend, x, w) - drivers.score(backend, np.zeros_like(x), w)
    assert np.all(np.abs(delta) <= 1e-3 * np.abs(scores) * (1 + 1e-3) + 1e-6)
