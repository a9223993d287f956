"""Attribution methods on models whose attributions are known in closed form (IG paper's toys)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xaisdk.attribution import RULES, deeplift, gradient, integrated_gradients, occlusion, path_rule


class TwoOutputs(nn.Module):
    """Wraps a scalar function f into logits [f(x), 0], so that S_0 - S_1 = f(x)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        value = self.f(x)
        return torch.stack([value, torch.zeros_like(value)], dim=1)


class Saturating(nn.Module):
    """f(x) = 1 - ReLU(1 - x) (IG paper, section 2.1): flat gradient at x = 2 though f(2) - f(0) = 1."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        value = 1 - self.relu(1 - x[:, 0])
        return torch.stack([value, torch.zeros_like(value)], dim=1)


class MinOfTwo(nn.Module):
    """min(x1, x2) written as x1 - ReLU(x1 - x2)."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        value = x[:, 0] - self.relu(x[:, 0] - x[:, 1])
        return torch.stack([value, torch.zeros_like(value)], dim=1)


def test_saturation_gradient_is_zero_but_ig_and_deeplift_give_the_full_change():
    x = np.array([[2.0]], np.float32)
    model = Saturating()
    assert gradient(model, x, source=0, target=1)[0, 0] == 0.0
    ig = integrated_gradients(model, x, source=0, target=1, baseline=0.0, n_steps=200)
    assert ig[0, 0] == pytest.approx(1.0, abs=1e-6)  # the kink at x=1 falls between midpoints
    dl = deeplift(model, x, source=0, target=1, baseline=0.0)
    assert dl[0, 0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("rule", RULES)
def test_linear_model_ig_is_weight_times_difference_for_every_rule(rule, rng):
    lin = nn.Linear(5, 3)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    b = rng.normal(size=(4, 5)).astype(np.float32)
    w = (lin.weight[2] - lin.weight[0]).detach().numpy()
    ig = integrated_gradients(lin, x, source=2, target=0, baseline=b, n_steps=7, rule=rule)
    np.testing.assert_allclose(ig, w * (x - b), rtol=1e-5, atol=1e-6)


def test_product_ig_splits_equally():
    """f = x1 * x2 from 0 to (a, c): each IG is a*c/2 (the integrand is linear in alpha)."""
    model = TwoOutputs(lambda x: x[:, 0] * x[:, 1])
    x = np.array([[3.0, 5.0], [-2.0, 4.0]], np.float32)
    ig = integrated_gradients(model, x, source=0, target=1, n_steps=10)
    np.testing.assert_allclose(ig, np.array([[7.5, 7.5], [-4.0, -4.0]]), rtol=1e-6)


@pytest.mark.parametrize("g", [torch.tanh, torch.sigmoid])
def test_function_of_linear_combination_has_closed_form(g, rng):
    """f(x) = g(w.x): IG_i = w_i (x_i - b_i) / (w.(x - b)) * (g(w.x) - g(w.b))."""
    w = torch.tensor([0.5, -1.5, 2.0])
    model = TwoOutputs(lambda x: g(x @ w))
    x = rng.normal(size=(3, 3)).astype(np.float32)
    b = rng.normal(size=(3, 3)).astype(np.float32) * 0.1
    wn = w.numpy().astype(np.float64)
    dx = (x - b).astype(np.float64)
    change = g(torch.from_numpy(x @ wn).float()).numpy() - g(torch.from_numpy(b @ wn).float()).numpy()
    expected = wn * dx / (dx @ wn)[:, None] * change[:, None]
    ig = integrated_gradients(model, x, source=0, target=1, baseline=b, n_steps=64, rule="gausslegendre")
    np.testing.assert_allclose(ig, expected, rtol=1e-4, atol=1e-6)


def test_min_attributes_to_the_smaller_input_along_the_path():
    """min(1, 3) from (0, 0): x1 - x2 < 0 on the whole path, so all credit goes to x1."""
    x = np.array([[1.0, 3.0]], np.float32)
    for method in (integrated_gradients, deeplift):
        attr = method(MinOfTwo(), x, source=0, target=1, baseline=0.0)
        np.testing.assert_allclose(attr, [[1.0, 0.0]], atol=1e-6)


def test_occlusion_of_an_additive_model_recovers_each_term():
    """For f(x) = sum_i c_i x_i^2, occluding pixel i to 0 drops f by exactly c_i x_i^2."""
    c = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    model = TwoOutputs(lambda x: (c * x**2).flatten(1).sum(1))
    x = np.random.default_rng(0).random((2, 1, 3, 3)).astype(np.float32)
    # atol: float32 differences of sums lose the last digits of the smallest terms
    np.testing.assert_allclose(occlusion(model, x, source=0, target=1), c.numpy() * x**2, rtol=1e-5, atol=5e-6)


def test_path_rules_integrate_polynomials():
    for rule in RULES:
        alphas, weights = path_rule(rule, 100)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        one_sided = rule in ("riemann_left", "riemann_right")  # off by 1/(2n) on int alpha
        assert (weights * alphas).sum() == pytest.approx(0.5, abs=6e-3 if one_sided else 1e-9)
    alphas, weights = path_rule("gausslegendre", 5)
    assert (weights * alphas**9).sum() == pytest.approx(0.1, abs=1e-12)
