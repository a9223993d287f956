"""Agreement with Captum on the papers' CNNs, per-sample baselines and source/target pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, DeepLiftShap, GradientShap, IntegratedGradients, Occlusion

from xaisdk.attribution import RULES, deeplift, deepshap, expected_gradients, integrated_gradients, occlusion
from xaisdk.models import WeightedScore as ScoreDelta
from xaisdk.models import class_weights as _class_weights

SOURCE = np.array([1, 2, 3])
TARGET = np.array([4, 5, 0])


def class_weights(source, target):
    return _class_weights(source, target, 10)


def relative_error(ours: np.ndarray, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().numpy()
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(params=["mnist", "cifar"])
def case(request, mnist_cnn, cifar_cnn):
    model, shape = (mnist_cnn, (1, 28, 28)) if request.param == "mnist" else (cifar_cnn, (3, 32, 32))
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(3, *shape, generator=gen)
    baseline = torch.rand(3, *shape, generator=gen) * 0.3
    return model, x, baseline


@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients(case, rule):
    model, x, baseline = case
    ours = integrated_gradients(model, x, source=SOURCE, target=TARGET, baseline=baseline.numpy(), n_steps=50, rule=rule)
    theirs = IntegratedGradients(ScoreDelta(model)).attribute(
        x, baseline, additional_forward_args=(class_weights(SOURCE, TARGET),), n_steps=50, method=rule
    )
    if rule == "riemann_trapezoid":
        theirs = theirs * 50 / 49  # Captum's trapezoid weights sum to 1 - 1/n (see path_rule)
    assert relative_error(ours, theirs) < 1e-4


def test_deeplift(case):
    model, x, baseline = case
    ours = deeplift(model, x, source=SOURCE, target=TARGET, baseline=baseline.numpy())
    theirs = DeepLift(ScoreDelta(model)).attribute(x, baseline, additional_forward_args=(class_weights(SOURCE, TARGET),))
    assert relative_error(ours, theirs) < 1e-4


def test_deepliftshap(case):
    model, x, _ = case
    refs = torch.rand(6, *x.shape[1:], generator=torch.Generator().manual_seed(3))
    ours = deepshap(model, x, source=SOURCE, target=TARGET, baselines=refs.numpy())
    theirs = DeepLiftShap(ScoreDelta(model)).attribute(x, refs, additional_forward_args=(class_weights(SOURCE, TARGET),))
    assert relative_error(ours, theirs) < 1e-4


@pytest.mark.parametrize("window,stride", [(1, 1), (3, 2), (4, 3)])
def test_occlusion(case, window, stride):
    model, x, baseline = case
    channels = x.shape[1]
    ours = occlusion(model, x, source=SOURCE, target=TARGET, window=window, stride=stride, baseline=baseline.numpy())
    theirs = Occlusion(ScoreDelta(model)).attribute(
        x,
        sliding_window_shapes=(channels, window, window),
        strides=(channels, stride, stride),
        baselines=baseline,
        additional_forward_args=(class_weights(SOURCE, TARGET),),
    )
    assert relative_error(ours, theirs) < 1e-4


def test_expected_gradients_statistically(mnist_cnn):
    """EG and Captum's GradientShap (EG with no noise) estimate the same expectation: the mean over
    references of IG. With 3,000 draws each, both land within a few percent of it."""
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(2, 1, 28, 28, generator=gen)
    refs = torch.rand(4, 1, 28, 28, generator=gen) * 0.5
    source, target = np.array([1, 6]), np.array([7, 0])
    exact = np.mean(
        [
            integrated_gradients(mnist_cnn, x, source=source, target=target, baseline=r.numpy(), n_steps=64, rule="gausslegendre")
            for r in refs
        ],
        axis=0,
    )
    ours = expected_gradients(mnist_cnn, x, references=refs.numpy(), source=source, target=target, n_samples=3000, seed=0)
    theirs = GradientShap(ScoreDelta(mnist_cnn)).attribute(
        x, refs, n_samples=3000, stdevs=0.0, additional_forward_args=(class_weights(source, target),)
    ).numpy()

    def rel_l2(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    assert rel_l2(ours, exact) < 0.08
    assert rel_l2(theirs, exact) < 0.08
    assert rel_l2(ours, theirs) < 0.12
    # Completeness in expectation: sum(EG) ~ S(x) - mean_r S(r).
    with torch.no_grad():
        w = class_weights(source, target)
        gap = (mnist_cnn(x) * w).sum(1) - torch.stack([(mnist_cnn(r[None].expand_as(x)) * w).sum(1) for r in refs]).mean(0)
    np.testing.assert_allclose(ours.reshape(2, -1).sum(1), gap.numpy(), rtol=0.05)
