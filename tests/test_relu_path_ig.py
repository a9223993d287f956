"""The relu-path IG kernels and the fast IG built on them, against plain per-step torch references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xaisdk import _ext
from xaisdk.methods import drivers
from xaisdk.methods.quadrature import path_rule
from xaisdk.models.classifiers import CifarCNN, MnistCNN
from xaisdk.torch_runtime.relu_path_ig import (
    find_relu_conv_prefix,
    relu_path_integrated_gradients,
    relu_path_occluded_scores,
    relu_path_perturbed_scores,
)
from xaisdk.torch_runtime.torch_backend import TorchBackend

GEOMETRIES = [  # (C1, H1, W1, C2, kernel, stride, padding)
    (3, 9, 7, 4, 3, 2, 1),
    (2, 5, 5, 3, 1, 1, 0),
    (4, 8, 11, 2, 5, 3, 2),
    (1, 6, 6, 5, 6, 2, 2),
]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sorted_alphas(rng: np.random.Generator, steps: int) -> np.ndarray:
    alphas = np.sort(rng.uniform(-0.2, 1.2, steps)).astype(np.float32)
    alphas[steps // 2] = alphas[steps // 2 - 1]  # a repeated point
    return alphas


def _masks(z0: np.ndarray, dz: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """(N, S, E) with the kernel's own float32 expression, step by step."""
    return (z0[:, None, :] + alphas[None, :, None] * dz[:, None, :]) > np.float32(0)


def test_active_ranges_equal_the_per_step_masks():
    rng = _rng(1)
    z0 = rng.normal(size=(3, 257)).astype(np.float32)
    dz = rng.normal(size=(3, 257)).astype(np.float32)
    dz[:, :20] = 0.0  # constant units: always on or always off
    z0[:, 20:30] = 0.0
    alphas = _sorted_alphas(rng, 41)
    lo, hi = _ext.relu_active_ranges(z0, dz, alphas)
    steps = np.arange(len(alphas))
    ranges = (steps[None, :, None] >= lo[:, None, :]) & (steps[None, :, None] < hi[:, None, :])
    np.testing.assert_array_equal(ranges, _masks(z0, dz, alphas))
    assert ((lo == 0) & (hi == 0) | (lo < hi)).all()  # empty ranges are written (0, 0)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_conv_forward_equals_a_convolution_per_step(geometry):
    c1, h1, w1, c2, k, stride, pad = geometry
    rng = _rng(2)
    n, steps, units = 2, 23, c1 * h1 * w1
    z0 = rng.normal(size=(n, units)).astype(np.float32)
    dz = rng.normal(size=(n, units)).astype(np.float32)
    alphas = _sorted_alphas(rng, steps)
    weight = rng.normal(size=(c2, c1, k, k)).astype(np.float32)
    bias = rng.normal(size=c2).astype(np.float32)
    lo, hi = _ext.relu_active_ranges(z0, dz, alphas)
    on0 = ((lo == 0) & (hi > 0)).astype(np.float32)

    def conv(a):
        hidden = torch.from_numpy(a).view(-1, c1, h1, w1)
        return nn.functional.conv2d(hidden, torch.from_numpy(weight), stride=stride, padding=pad)

    base_p = np.ascontiguousarray(conv(z0 * on0).reshape(n, -1).numpy())
    base_q = np.ascontiguousarray(conv(dz * on0).reshape(n, -1).numpy())
    out_shape = tuple(conv(z0).shape[1:])
    z2 = _ext.relu_conv_forward(z0, dz, lo, hi, alphas, weight, bias, base_p, base_q, (c1, h1, w1), out_shape,
                                (stride, stride), (pad, pad))
    # reference in float64, one convolution per step of the masked ReLU output
    masks = _masks(z0, dz, alphas)
    hidden = np.where(masks, z0[:, None].astype(np.float64) + alphas[None, :, None].astype(np.float64) * dz[:, None], 0.0)
    expected = nn.functional.conv2d(torch.from_numpy(hidden).view(-1, c1, h1, w1), torch.from_numpy(weight).double(),
                                    torch.from_numpy(bias).double(), stride=stride, padding=pad).view(n, steps, -1).numpy()
    np.testing.assert_allclose(z2, expected, rtol=1e-5, atol=1e-4)
    no_bias = _ext.relu_conv_forward(z0, dz, lo, hi, alphas, weight, None, base_p, base_q, (c1, h1, w1), out_shape,
                                     (stride, stride), (pad, pad))
    np.testing.assert_allclose(z2 - no_bias, np.broadcast_to(np.repeat(bias, np.prod(out_shape[1:])), z2.shape), atol=1e-4)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_conv_backward_equals_transposed_convolutions_per_step(geometry):
    c1, h1, w1, c2, k, stride, pad = geometry
    rng = _rng(3)
    n, steps, units = 2, 19, c1 * h1 * w1
    z0 = rng.normal(size=(n, units)).astype(np.float32)
    dz = rng.normal(size=(n, units)).astype(np.float32)
    alphas = _sorted_alphas(rng, steps)
    w = rng.uniform(0.1, 1.0, steps).astype(np.float32)
    weight = rng.normal(size=(c2, c1, k, k)).astype(np.float32)
    out_hw = ((h1 + 2 * pad - k) // stride + 1, (w1 + 2 * pad - k) // stride + 1)
    g2 = rng.normal(size=(n, steps, c2 * out_hw[0] * out_hw[1])).astype(np.float32)
    lo, hi = _ext.relu_active_ranges(z0, dz, alphas)
    partial, total = _ext.relu_conv_backward(lo, hi, g2, w, weight, (c1, h1, w1), (c2, *out_hw), (stride, stride), (pad, pad))
    np.testing.assert_allclose(total, np.einsum("s,nsf->nf", w.astype(np.float64), g2), rtol=1e-5, atol=1e-5)
    per_step_grad = torch.from_numpy(g2).double().view(n * steps, c2, *out_hw)
    transposed = torch.nn.grad.conv2d_input((n * steps, c1, h1, w1), torch.from_numpy(weight).double(), per_step_grad,
                                            stride=stride, padding=pad)
    per_step = transposed.view(n, steps, units).numpy() * _masks(z0, dz, alphas)
    expected = np.einsum("s,nse->ne", w.astype(np.float64), per_step)
    dense = torch.nn.grad.conv2d_input((n, c1, h1, w1), torch.from_numpy(weight).double(),
                                       torch.from_numpy(total).double().view(n, c2, *out_hw), stride=stride, padding=pad)
    on_at_end = (hi == steps) & (lo < hi)
    got = partial + np.where(on_at_end, dense.view(n, units).numpy(), 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_dense_backward_equals_autograd():
    rng = _rng(4)
    n, steps, features, hidden = 2, 17, 37, 11
    z2 = rng.normal(size=(n, steps, features)).astype(np.float32)
    w3 = rng.normal(size=(hidden, features)).astype(np.float32)
    b3 = rng.normal(size=hidden).astype(np.float32)
    u = rng.normal(size=(n, hidden)).astype(np.float32)
    z3 = np.maximum(z2, 0) @ w3.T + b3
    got = _ext.relu_dense_backward(z2, np.ascontiguousarray(z3, np.float32), u, w3)
    leaf = torch.from_numpy(z2).double().requires_grad_(True)
    score = (torch.relu(torch.relu(leaf) @ torch.from_numpy(w3).double().T + torch.from_numpy(b3).double())
             * torch.from_numpy(u).double()[:, None]).sum()
    (expected,) = torch.autograd.grad(score, leaf)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_kernels_refuse_bad_arguments():
    z = np.zeros((1, 4), np.float32)
    alphas = np.array([0.0, 0.5, 1.0], np.float32)
    with pytest.raises(ValueError, match="ascending"):
        _ext.relu_active_ranges(z, z, alphas[::-1].copy())
    with pytest.raises(ValueError, match="float32"):
        _ext.relu_active_ranges(z.astype(np.float64), z, alphas)
    with pytest.raises(ValueError, match="shape"):
        _ext.relu_active_ranges(z, np.zeros((1, 5), np.float32), alphas)
    weight = np.zeros((2, 1, 1, 1), np.float32)
    lo = np.zeros((1, 4), np.int64)
    with pytest.raises(ValueError, match="lo <= hi"):
        _ext.relu_conv_backward(lo, lo - 1, np.zeros((1, 3, 8), np.float32), alphas, weight, (1, 2, 2), (2, 2, 2), (1, 1), (0, 0))
    with pytest.raises(ValueError, match="geometry"):
        _ext.relu_conv_backward(lo, lo, np.zeros((1, 3, 8), np.float32), alphas, weight, (1, 2, 2), (2, 3, 3), (1, 1), (0, 0))
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext.relu_dense_backward(np.zeros((1, 3, 8), np.float32)[:, :, ::2], np.zeros((1, 3, 2), np.float32),
                                 np.zeros((1, 2), np.float32), np.zeros((2, 4), np.float32))


def _reference_ig(module: nn.Module, x, b, weights, rule: str, steps: int) -> np.ndarray:
    """Plain IG in float64: every path point through the whole model with autograd."""
    model = module.double()
    alphas, quad = path_rule(rule, steps)
    xt, bt = torch.from_numpy(x).double(), torch.from_numpy(b).double()
    total = torch.zeros_like(xt)
    for a, q in zip(alphas, quad):
        point = (bt + float(a) * (xt - bt)).requires_grad_(True)
        (grad,) = torch.autograd.grad((model(point) * torch.from_numpy(weights).double()).sum(), point)
        total += float(q) * grad
    module.float()
    return ((xt - bt) * total).numpy()


def _pair_weights(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    source = rng.integers(0, classes, n)
    return (np.eye(classes)[source] - np.eye(classes)[(source + 1) % classes]).astype(np.float32)


def _with_statistics(module: nn.Module, seed: int = 3) -> nn.Module:
    """Every batch norm given running statistics and affine values far from the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
                m.running_var.copy_(0.2 + 3 * torch.rand(m.num_features, generator=generator))
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=generator))
                    m.bias.copy_(torch.randn(m.num_features, generator=generator))
    return module


def _cifar_like() -> nn.Module:
    """conv -> batch norm -> ReLU -> conv -> batch norm -> ReLU, as CifarCNN opens."""
    return _with_statistics(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 5)))


MODELS = {
    "batch_norm_opening": (_cifar_like, (3, 8, 8)),
    "batch_norm_no_affine_no_bias": (
        lambda: _with_statistics(nn.Sequential(nn.Conv2d(2, 5, 3, bias=False), nn.BatchNorm2d(5, affine=False), nn.ReLU(),
                                               nn.Conv2d(5, 3, 3), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))),
        (2, 7, 7),
    ),
    "mnist_cnn": (lambda: MnistCNN(), (1, 28, 28)),
    "batch_norm_cifar_cnn": (lambda: _with_statistics(CifarCNN(in_channels=3, image_size=16, widths=(4, 6))), (3, 16, 16)),
    "stride1_nobias_autograd_tail": (
        lambda: nn.Sequential(nn.Conv2d(2, 5, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(5, 4, 3, stride=2), nn.ReLU(),
                              nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 6)),
        (2, 9, 9),
    ),
    "nested_dense_head": (
        lambda: nn.Sequential(nn.Sequential(nn.Conv2d(3, 6, 4, stride=2, padding=2), nn.ReLU(inplace=True)),
                              nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16),
                              nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4)),
        (3, 13, 13),
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("rule", ["riemann_middle", "gausslegendre", "riemann_trapezoid"])
def test_fast_ig_equals_the_plain_loop(name, rule):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    module = make().eval()
    rng = _rng(5)
    x = rng.random((3, *shape), dtype=np.float32)
    b = rng.random((3, *shape), dtype=np.float32) * 0.5
    weights = _pair_weights(3, module(torch.zeros(1, *shape)).shape[1], rng)
    prefix = find_relu_conv_prefix(module, shape)
    assert prefix is not None
    assert (prefix.dense_head is not None) == (name in ("mnist_cnn", "nested_dense_head"))
    assert (prefix.first_norm is not None) == name.startswith("batch_norm")
    alphas, quad = path_rule(rule, 64)
    got = relu_path_integrated_gradients(prefix, x, b, weights, alphas, quad, rows_per_pass=100)  # several groups
    expected = _reference_ig(module, x, b, weights, rule, 64)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, atol=2e-5 * scale)


def test_models_that_do_not_open_with_conv_relu_conv_are_left_to_the_loop():
    class Residual(nn.Module):  # its layers would chain, but forward adds a skip: the probe catches it
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return (x + self.b(torch.relu(self.a(x)))).flatten(1)

    assert find_relu_conv_prefix(Residual(), (1, 5, 5)) is None
    tanh = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Conv2d(2, 2, 3), nn.Flatten())
    assert find_relu_conv_prefix(tanh, (1, 6, 6)) is None
    assert find_relu_conv_prefix(nn.Sequential(nn.Conv2d(1, 2, 3, groups=1, dilation=2), nn.ReLU(), nn.Conv2d(2, 2, 1),
                                               nn.Flatten()), (1, 6, 6)) is None
    backend = TorchBackend(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), input_shape=(1, 2, 2))
    assert backend.fused_integrated_gradients(np.ones((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.float32),
                                              np.eye(3, dtype=np.float32)[:1], np.array([0.5]), np.array([1.0])) is None


def test_batch_norms_that_are_not_per_channel_maps_are_left_to_the_loop():
    """Batch statistics (no running ones), training mode, a subclass with its own forward: no fold."""
    batch_stats = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.ReLU(),
                                nn.Conv2d(2, 2, 3), nn.Flatten()).eval()
    assert find_relu_conv_prefix(batch_stats, (1, 6, 6)) is None

    class ShiftedNorm(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) + 1.0

    subclass = _with_statistics(nn.Sequential(nn.Conv2d(1, 2, 3), ShiftedNorm(2), nn.ReLU(), nn.Conv2d(2, 2, 3),
                                              nn.Flatten())).eval()
    assert find_relu_conv_prefix(subclass, (1, 6, 6)) is None
    training = _cifar_like()
    assert find_relu_conv_prefix(training, (3, 8, 8)) is None  # built in training mode
    assert find_relu_conv_prefix(training.eval(), (3, 8, 8)) is not None


def test_fold_follows_weights_and_statistics_changed_in_place():
    """load_state_dict and in-place edits keep every tensor's identity (the gate's state does not change):
    the fold is recomputed from the live values at each call, so the fast path answers for the model as it is now."""
    torch.manual_seed(1)
    module = _cifar_like().eval()
    shape = (3, 8, 8)
    backend = TorchBackend(module, input_shape=shape)
    rng = _rng(2)
    x, b = rng.random((2, *shape), dtype=np.float32), np.zeros((2, *shape), np.float32)
    weights = _pair_weights(2, 5, rng)
    alphas, quad = path_rule("riemann_middle", 32)
    before = backend.fused_integrated_gradients(x, b, weights, alphas, quad)
    assert before is not None  # the relu-path took it
    np.testing.assert_allclose(before, _reference_ig(module, x, b, weights, "riemann_middle", 32),
                               atol=2e-5 * np.abs(before).max())
    other = _with_statistics(_cifar_like(), seed=9).eval()
    module.load_state_dict(other.state_dict())
    with torch.no_grad():
        module[1].running_var.mul_(2.0)
    after = backend.fused_integrated_gradients(x, b, weights, alphas, quad)
    expected = _reference_ig(module, x, b, weights, "riemann_middle", 32)
    np.testing.assert_allclose(after, expected, atol=2e-5 * np.abs(expected).max())
    assert np.abs(after - before).max() > 0.1 * np.abs(before).max()


def test_backend_fast_path_matches_the_chunked_loop_on_the_shipped_model(digits):
    from xaisdk.models import load_shipped_ganmex

    model = load_shipped_ganmex("digits")
    x = digits.test.x[:5]
    fast, slow = TorchBackend(model), TorchBackend(model, fast_ig=False)
    assert fast.relu_path() is not None and slow.relu_path() is None
    source = fast.logits(x).argmax(1)
    target = (source + 3) % 10
    weights = np.eye(10, dtype=np.float32)[source] - np.eye(10, dtype=np.float32)[target]
    baseline = fast.generate(x, target)
    a, delta_a = drivers.integrated_gradients(fast, x, weights, baseline, n_steps=200, return_convergence_delta=True)
    b, delta_b = drivers.integrated_gradients(slow, x, weights, baseline, n_steps=200, return_convergence_delta=True)
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())
    np.testing.assert_allclose(delta_a, delta_b, atol=1e-4)
    assert np.abs(delta_a).max() < 0.05  # completeness, up to the quadrature error of 200 midpoints


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("window,stride", [(1, 1), (3, 2), ((3, 4), (2, 1))])
def test_fast_occlusion_scores_equal_scoring_the_occluded_images(name, window, stride):
    from xaisdk.methods.common import occlusion_covers

    make, shape = MODELS[name]
    torch.manual_seed(1)
    module = make().eval()
    rng = _rng(6)
    x = rng.random((2, *shape), dtype=np.float32)
    b = rng.random((2, *shape), dtype=np.float32)
    weights = _pair_weights(2, module(torch.zeros(1, *shape)).shape[1], rng)
    rows, cols = occlusion_covers(shape[1], shape[2], window, stride)
    got = relu_path_occluded_scores(find_relu_conv_prefix(module, shape), x, b, weights, rows, cols, rows_per_pass=50)
    masks = (rows[:, None, :, None] * cols[None, :, None, :]).astype(np.float32)  # (R, Cc, H, W)
    occluded = x[:, None, None] * (1 - masks[None, :, :, None]) + b[:, None, None] * masks[None, :, :, None]
    with torch.no_grad():
        logits = module(torch.from_numpy(occluded.reshape(-1, *shape))).numpy().reshape(2, len(rows), len(cols), -1)
    expected = (logits * weights[:, None, None, :]).sum(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_occlusion_driver_takes_the_fast_path_with_the_same_maps(digits):
    from xaisdk.models import load_shipped_classifier

    model = load_shipped_classifier("digits")
    fast, slow = TorchBackend(model), TorchBackend(model, fast_ig=False)
    x = digits.test.x[:3]
    weights = np.eye(10, dtype=np.float32)[[1, 2, 3]] - np.eye(10, dtype=np.float32)[[7, 8, 9]]
    for window, stride in [(1, 1), (4, 2)]:
        a = drivers.occlusion(fast, x, weights, 0.0, window=window, stride=stride)
        b = drivers.occlusion(slow, x, weights, 0.0, window=window, stride=stride)
        np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())
    assert slow.occluded_scores(x, x, weights, np.ones((1, 28)), np.ones((1, 28))) is None


def test_occlusion_kernel_refuses_bad_windows():
    x = np.zeros((1, 16), np.float32)
    w1, w2 = np.zeros((2, 1, 1, 1), np.float32), np.zeros((3, 2, 1, 1), np.float32)
    z1, z2 = np.zeros((1, 32), np.float32), np.zeros((1, 48), np.float32)
    good = np.array([0], np.int64), np.array([2], np.int64)
    with pytest.raises(ValueError, match="lo <= hi"):
        _ext.relu_occlusion_forward(x, x, np.array([3], np.int64), np.array([2], np.int64), *good, w1, (1, 4, 4), (2, 4, 4),
                                    (1, 1), (0, 0), z1, w2, (3, 4, 4), (1, 1), (0, 0), z2)
    with pytest.raises(ValueError, match="<= 4"):
        _ext.relu_occlusion_forward(x, x, *good, np.array([2], np.int64), np.array([5], np.int64), w1, (1, 4, 4), (2, 4, 4),
                                    (1, 1), (0, 0), z1, w2, (3, 4, 4), (1, 1), (0, 0), z2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fast_perturbation_rows_equal_scoring_the_built_rows(name):
    from xaisdk.runtime.perturbation import perturbed_rows_reference

    make, shape = MODELS[name]
    torch.manual_seed(2)
    module = make().eval()
    rng = _rng(7)
    n, pixels = 2, shape[1] * shape[2]
    base = rng.random((n, *shape), dtype=np.float32)
    substrate = 1.0 - base
    order = np.stack([rng.permutation(pixels) for _ in range(n)]).astype(np.int64)
    # a cumulative curve, then single features, then a shrinking row, a repeated row and an empty one
    cumulative = [(0, k) for k in range(0, pixels + 1, 7)]
    singles = [(k, k + 1) for k in range(0, pixels, 11)]
    bounds = cumulative + singles + [(0, pixels // 2), (3, pixels // 3), (3, pixels // 3), (5, 5)]
    lo = np.tile(np.array([b[0] for b in bounds], np.int64), (n, 1))
    hi = np.tile(np.array([b[1] for b in bounds], np.int64), (n, 1))
    weights = _pair_weights(n, module(torch.zeros(1, *shape)).shape[1], rng)
    got = relu_path_perturbed_scores(find_relu_conv_prefix(module, shape), base, substrate, order, lo, hi, weights,
                                     rows_per_pass=len(bounds))  # one sample per pass
    rows = perturbed_rows_reference(base, substrate, order, lo, hi, range(n * len(bounds)))
    with torch.no_grad():
        logits = module(torch.from_numpy(rows.reshape(-1, *shape))).numpy().reshape(n, len(bounds), -1)
    np.testing.assert_allclose(got, (logits * weights[:, None, :]).sum(-1), rtol=1e-4, atol=2e-4)


def test_perturbation_metrics_take_the_fast_path_with_the_same_numbers(digits):
    from xaisdk.metrics.faithfulness import faithfulness
    from xaisdk.metrics.perturbation import aopc
    from xaisdk.models import load_shipped_classifier

    model = load_shipped_classifier("digits")
    fast, slow = TorchBackend(model), TorchBackend(model, fast_ig=False)
    x = digits.test.x[:3]
    maps = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    source, target = np.array([1, 2, 3]), np.array([7, 8, 9])
    for metric, options in ((aopc, {"L": None}), (faithfulness, {})):
        a = metric(fast, x, maps, source, target, **options).per_sample
        b = metric(slow, x, maps, source, target, **options).per_sample
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    lo = np.zeros((1, 2), np.int64)
    assert slow.perturbed_scores(x[:1], 1 - x[:1], np.arange(784)[None], lo, lo + 5, np.eye(10, dtype=np.float32)[:1]) is None


def test_perturbation_kernel_refuses_bad_rows():
    base = np.zeros((1, 16), np.float32)
    w1, w2 = np.zeros((2, 1, 1, 1), np.float32), np.zeros((3, 2, 1, 1), np.float32)
    z1, z2 = np.zeros((1, 32), np.float32), np.zeros((1, 48), np.float32)
    order = np.arange(16, dtype=np.int64)[None]
    geometry = (w1, (1, 4, 4), (2, 4, 4), (1, 1), (0, 0), z1, w2, (3, 4, 4), (1, 1), (0, 0), z2)
    lo = np.zeros((1, 1), np.int64)
    with pytest.raises(ValueError, match="lo <= hi"):
        _ext.relu_perturbed_forward(base, base, order, lo, lo + 17, *geometry)
    with pytest.raises(ValueError, match="outside"):
        _ext.relu_perturbed_forward(base, base, order + 1, lo, lo + 1, *geometry)
