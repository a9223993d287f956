"""Axioms and one-vs-one sanity on the shipped (trained) digits classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaisdk import InputError
from xaisdk.attribution import (
    deeplift,
    deepshap,
    grad_x_input,
    gradient,
    integrated_gradients,
    occlusion,
)
from xaisdk.baselines import MDTS


@pytest.fixture(scope="module")
def batch(digits):
    return digits.test.x[:6]


def _delta(model, x, baseline, source, target):
    with torch.no_grad():
        lx = model(torch.from_numpy(x)).numpy()
        lb = model(torch.from_numpy(np.broadcast_to(baseline, x.shape).copy())).numpy()
    rows = np.arange(len(x))
    sx = lx[rows, source] - (0 if target is None else lx[rows, target])
    sb = lb[rows, source] - (0 if target is None else lb[rows, target])
    return sx - sb


def test_ig_completeness_within_one_percent_with_mdts_baseline(shipped, digits, batch):
    with torch.no_grad():
        logits = shipped.model(torch.from_numpy(batch)).numpy()
    source, target = logits.argmax(1), np.argsort(logits, 1)[:, -2]
    baseline = MDTS(digits.train)(batch, target)
    attr, delta = integrated_gradients(
        shipped, batch, target=target, baseline=baseline, n_steps=200, return_convergence_delta=True
    )
    expected = _delta(shipped.model, batch, baseline, source, target)
    np.testing.assert_allclose(attr.reshape(len(batch), -1).sum(1), expected, rtol=0.01)
    np.testing.assert_allclose(delta, attr.reshape(len(batch), -1).sum(1) - expected, atol=1e-4)


@pytest.mark.parametrize("baseline", ["zero", "blur", "noise"])
def test_deeplift_sums_to_delta_within_1e5(shipped, batch, baseline):
    target = np.array([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        source = (target + 1 + shipped.model(torch.from_numpy(batch)).argmax(1).numpy()) % 10
    source = np.where(source == target, (source + 1) % 10, source)
    attr, delta = deeplift(shipped, batch, source=source, target=target, baseline=baseline, return_convergence_delta=True)
    from xaisdk.baselines import make_baseline

    expected = _delta(shipped.model, batch, make_baseline(baseline, batch, target), source, target)
    sums = attr.reshape(len(batch), -1).astype(np.float64).sum(1)
    assert np.all(np.abs(sums - expected) <= 1e-5 * np.maximum(np.abs(expected), 1.0))
    assert np.all(np.abs(delta) <= 1e-5 * np.maximum(np.abs(expected), 1.0))


def test_deepshap_sums_to_mean_delta(shipped, digits, batch):
    refs = digits.train.x[:8]
    attr, delta = deepshap(shipped, batch, source=3, target=5, baselines=refs, return_convergence_delta=True)
    with torch.no_grad():
        logits_x = shipped.model(torch.from_numpy(batch)).numpy()
        logits_r = shipped.model(torch.from_numpy(refs)).numpy()
    expected = (logits_x[:, 3] - logits_x[:, 5]) - (logits_r[:, 3] - logits_r[:, 5]).mean()
    np.testing.assert_allclose(attr.reshape(len(batch), -1).sum(1), expected, rtol=1e-5, atol=1e-4)
    assert np.abs(delta).max() < 1e-4


@pytest.mark.parametrize("method", [integrated_gradients, deeplift, gradient, grad_x_input, occlusion])
def test_swapping_source_and_target_negates_attributions(shipped, batch, method):
    kwargs = {"baseline": 0.2} if method in (integrated_gradients, deeplift) else {}
    if method is integrated_gradients:
        kwargs["n_steps"] = 32
    forward = method(shipped, batch, source=2, target=7, **kwargs)
    backward = method(shipped, batch, source=7, target=2, **kwargs)
    np.testing.assert_allclose(backward, -forward, rtol=1e-5, atol=1e-6)
    assert np.abs(forward).max() > 0


def test_target_none_is_one_vs_all_ig(shipped, batch):
    """target=None attributes S_source alone: compare with IG on that logit written out by hand."""
    source = np.array([0, 1, 2, 3, 4, 5])
    ours = integrated_gradients(shipped, batch, source=source, target=None, n_steps=40)
    alphas = (np.arange(40) + 0.5) / 40
    x = torch.from_numpy(batch)
    grads = torch.zeros_like(x)
    for a in alphas:
        point = (float(a) * x).requires_grad_(True)
        logit = shipped.model(point)[torch.arange(len(x)), torch.from_numpy(source)]
        grads += torch.autograd.grad(logit.sum(), point)[0] / 40
    np.testing.assert_allclose(ours, (x * grads).numpy(), rtol=1e-4, atol=1e-6)


def test_one_vs_one_is_difference_of_one_vs_all(shipped, batch):
    """IG is linear in the score: IG(S_a - S_b) = IG(S_a) - IG(S_b) for the same baseline."""
    a = integrated_gradients(shipped, batch, source=4, n_steps=32)
    b = integrated_gradients(shipped, batch, source=9, n_steps=32)
    ab = integrated_gradients(shipped, batch, source=4, target=9, n_steps=32)
    np.testing.assert_allclose(ab, a - b, rtol=1e-4, atol=1e-5)


def test_source_defaults_to_predicted_class(shipped, batch):
    with torch.no_grad():
        predicted = shipped.model(torch.from_numpy(batch)).argmax(1).numpy()
    np.testing.assert_array_equal(gradient(shipped, batch), gradient(shipped, batch, source=predicted))


def test_probability_output_ig_is_complete(shipped, batch):
    attr, delta = integrated_gradients(shipped, batch[:2], source=1, target=7, output="probabilities",
                                       n_steps=200, return_convergence_delta=True)
    assert np.abs(delta).max() < 0.01


def test_batch_size_does_not_change_results(shipped, batch):
    full = integrated_gradients(shipped, batch, n_steps=20)
    chunked = integrated_gradients(shipped, batch, n_steps=20, batch_size=7)
    np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(occlusion(shipped, batch[:2], batch_size=33), occlusion(shipped, batch[:2]), rtol=1e-5, atol=1e-7)


def test_model_mode_is_restored(shipped, batch):
    shipped.model.train()
    try:
        first = gradient(shipped, batch, source=1)
        second = gradient(shipped, batch, source=1)
        np.testing.assert_array_equal(first, second)  # dropout was off during attribution
        assert shipped.model.training
    finally:
        shipped.model.eval()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"source": 3, "target": 3}, "target equals source"),
        ({"source": 10}, "out of range"),
        ({"source": [1, 2]}, "one per sample"),
        ({"source": 1.5}, "integers"),
        ({"source": 1, "target": 2, "baseline": np.zeros((2, 1, 28, 28))}, "does not match"),
        ({"source": 1, "baseline": np.full((1, 28, 28), np.nan)}, "NaN"),
        ({"source": 1, "baseline": "mdts"}, "needs training data"),
        ({"source": 1, "baseline": "sparkles"}, "unknown baseline"),
        ({"source": 1, "rule": "simpson"}, "rule"),
        ({"source": 1, "n_steps": 0}, "n_steps"),
        ({"source": 1, "output": "softmax"}, "output"),
        ({"source": 1, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise_input_error(shipped, batch, kwargs, match):
    with pytest.raises(InputError, match=match):
        integrated_gradients(shipped, batch[:3], **kwargs)


def test_bad_inputs_raise_input_error(shipped, batch):
    with pytest.raises(InputError, match="NaN"):
        gradient(shipped, np.full((1, 1, 28, 28), np.nan, np.float32))
    with pytest.raises(InputError, match="empty"):
        gradient(shipped, np.zeros((0, 1, 28, 28), np.float32))
    with pytest.raises(InputError, match="numeric"):
        gradient(shipped, np.array([["a"]]))
    with pytest.raises(InputError, match="model"):
        gradient("not a model", batch)
    with pytest.raises(InputError, match="logits"):
        deeplift(shipped, batch, source=1, output="probabilities")
    with pytest.raises(InputError, match="window"):
        occlusion(shipped, batch, window=40)


def test_deeplift_covers_max_pooling_and_refuses_softmax(rng):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 3, 2))
    x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    attr, delta = deeplift(net.eval(), x, source=0, target=1, return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-5 and np.abs(attr).max() > 0
    net.insert(1, torch.nn.Softmax(dim=1))  # softmax across channels, then the same pooling
    with pytest.raises(InputError, match=r"softmax \(Softmax module '1'\)"):
        deeplift(net, x, source=0)


def test_deeplift_handles_inplace_relu_and_restores_it(rng):
    relu = torch.nn.ReLU(inplace=True)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), relu, torch.nn.Linear(6, 2)).eval()
    x = rng.normal(size=(3, 4)).astype(np.float32)
    attr, delta = deeplift(net, x, source=0, target=1, return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-5 and np.abs(attr).max() > 0
    assert relu.inplace


def test_baseline_forms_agree(shipped, batch):
    """A number, one image, one image per sample and a torch tensor describe the same baseline."""
    image = np.full((1, 28, 28), 0.3, np.float32)
    forms = [0.3, image, np.repeat(image[None], len(batch), 0), torch.full((len(batch), 1, 28, 28), 0.3)]
    results = [integrated_gradients(shipped, batch, source=1, target=2, baseline=b, n_steps=16) for b in forms]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
