"""Perturbation metrics (curves, AOPC, deletion/insertion, AOSPC, faithfulness, monotonicity) against
plain per-step loops over the torch model and against analytic results for linear models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from xaisdk.errors import InputError
from xaisdk.metrics._common import pearson_rows, spearman_rows
from xaisdk.metrics.faithfulness import faithfulness, monotonicity
from xaisdk.metrics.perturbation import aopc, aopc_from_curve, aospc, deletion, insertion, perturbation_curve
from xaisdk.torch_runtime.torch_backend import TorchBackend


def linear_model(weights: np.ndarray, shape=(1, 4, 4)) -> TorchBackend:
    """f(x) = W x: two classes, class 0 weighted by ``weights``, class 1 all zero."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)), 2, bias=False))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0] = torch.as_tensor(weights.ravel(), dtype=torch.float32)
    return TorchBackend(net, input_shape=shape)


@pytest.fixture(scope="module")
def digit_case(shipped, digits):
    x = digits.test.x[:3]
    with torch.no_grad():
        logits = shipped.model(torch.from_numpy(x))
    source = logits.argmax(1).numpy()
    target = logits.argsort(1, descending=True)[:, 1].numpy()
    maps = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    return shipped, x, source, target, maps


def plain_scores(model, images, source, target=None):
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(images, np.float32))).double().numpy()
    return logits[:, source] - (0 if target is None else logits[:, target])


def plain_curve(model, x, maps, source, target, substrate, counts):
    """Replace the top-k pixels one image and one step at a time."""
    curves = []
    for n in range(len(x)):
        order = np.argsort(-maps[n].sum(0).ravel(), kind="stable")
        row = []
        for k in counts:
            image = x[n].copy().reshape(x.shape[1], -1)
            image[:, order[:k]] = substrate[n].reshape(x.shape[1], -1)[:, order[:k]]
            row.append(plain_scores(model, image.reshape(1, *x.shape[1:]), source[n], target[n])[0])
        curves.append(row)
    return np.array(curves)


def test_flip_curve_and_aopc_equal_a_plain_loop(digit_case):
    clf, x, source, target, maps = digit_case
    result = perturbation_curve(clf, x, maps, source, target, step=49)
    counts = np.arange(0, 785, 49)
    assert result.steps.tolist() == counts.tolist()
    expected = plain_curve(clf.model, x, maps, source, target, 1 - x, counts)
    np.testing.assert_allclose(result.curve, expected, rtol=1e-5, atol=1e-4)
    aopc_3 = aopc_from_curve(result, 3).per_sample
    np.testing.assert_allclose(aopc_3, (expected[:, :1] - expected[:, :4]).mean(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aopc(clf, x, maps, source, target, L=3, step=49).per_sample, aopc_3, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("substrate", ["zero", "mean", "blur", "uniform", "baseline"])
def test_every_substrate_equals_a_plain_loop(digit_case, substrate):
    clf, x, source, target, maps = digit_case
    baseline = np.random.default_rng(5).random(x.shape).astype(np.float32)
    result = perturbation_curve(clf, x, maps, source, target, substrate=substrate, baseline=baseline, step=196, seed=3)
    fill = {"zero": np.zeros_like(x), "mean": np.broadcast_to(x.mean((2, 3), keepdims=True), x.shape),
            "blur": ndimage.gaussian_filter(x, (0, 0, 2.8, 2.8), mode="reflect"),
            "uniform": np.random.default_rng(3).uniform(0, 1, x.shape).astype(np.float32), "baseline": baseline}[substrate]
    expected = plain_curve(clf.model, x, maps, source, target, fill, np.arange(0, 785, 196))
    np.testing.assert_allclose(result.curve, expected, rtol=1e-5, atol=1e-4)


def test_one_vs_all_curve_scores_the_source_logit(digit_case):
    clf, x, source, _, maps = digit_case
    result = perturbation_curve(clf, x, maps, source, None, step=392)
    expected = plain_curve(clf.model, x, maps, source, [None] * 3, 1 - x, [0, 392, 784])
    np.testing.assert_allclose(result.curve, expected, rtol=1e-5, atol=1e-4)


def test_aopc_of_a_linear_model_is_analytic():
    """f = w.x with the zero substrate: removing pixel i lowers f by w_i x_i, so with exact
    attributions w * x the curve drops by the sorted contributions."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 4, 4))
    x = rng.random((1, 1, 4, 4)).astype(np.float32)
    contributions = (w * x[0]).ravel()
    drops = np.concatenate([[0], np.cumsum(np.sort(contributions)[::-1])])
    for L in (1, 5, 16):
        expected = drops[: L + 1].mean()
        got = aopc(linear_model(w), x, w * x, 0, 1, L=L, substrate="zero").per_sample[0]
        assert got == pytest.approx(expected, rel=1e-5)
    # AOPC_all with exact attributions is the largest any ranking can reach
    worst = aopc(linear_model(w), x, -w * x, 0, 1, L=None, substrate="zero").per_sample[0]
    assert worst < aopc(linear_model(w), x, w * x, 0, 1, L=None, substrate="zero").per_sample[0]


def softmax_prob(model, images, source):
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(np.asarray(images, np.float32))).double(), 1)[:, source].numpy()


def test_deletion_and_insertion_equal_a_plain_loop(digit_case):
    clf, x, source, _, maps = digit_case
    counts = np.arange(0, 785, 98).tolist()
    dele = deletion(clf, x, maps, source, step=98)
    ins = insertion(clf, x, maps, source, step=98)
    blurred = ndimage.gaussian_filter(x, (0, 0, 2.8, 2.8), mode="reflect")
    for n in range(len(x)):
        order = np.argsort(-maps[n].sum(0).ravel(), kind="stable")
        d_curve, i_curve = [], []
        for k in counts:
            d = x[n].copy().ravel()
            d[order[:k]] = 0
            i = blurred[n].copy().ravel()
            i[order[:k]] = x[n].ravel()[order[:k]]
            d_curve.append(softmax_prob(clf.model, d.reshape(1, 1, 28, 28), source[n])[0])
            i_curve.append(softmax_prob(clf.model, i.reshape(1, 1, 28, 28), source[n])[0])
        fractions = np.array(counts) / 784
        np.testing.assert_allclose(dele.curve[n], d_curve, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ins.curve[n], i_curve, rtol=1e-4, atol=1e-6)
        assert dele.per_sample[n] == pytest.approx(np.trapezoid(d_curve, fractions), rel=1e-4)
        assert ins.per_sample[n] == pytest.approx(np.trapezoid(i_curve, fractions), rel=1e-4)


def test_aospc_by_hand():
    """Two segments: the top one (mean 1.0) covers the weight-9 pixel, the second (mean 0.6) the weight-1 pixel."""
    w = np.zeros((1, 4, 4))
    w[0, 0, 0], w[0, 3, 3] = 9.0, 1.0
    model = linear_model(w)
    x = np.ones((1, 1, 4, 4), np.float32)
    saliency = np.zeros((1, 4, 4))
    saliency[0, 0, 0], saliency[0, 3, 3] = 1.0, 0.6
    noise = np.random.default_rng(0).uniform(0, 1, x.shape)
    f0 = 10.0
    f1 = f0 - 9 * (1 - noise[0, 0, 0, 0])
    f2 = f1 - 1 * (1 - noise[0, 0, 3, 3])
    for K, curve in ((1, [f0, f1]), (3, [f0, f1, f2, f2])):
        result = aospc(model, x, saliency, 0, 1, threshold=0.5, K=K, seed=0)
        np.testing.assert_allclose(result.curve[0], curve, rtol=1e-5)
        assert result.per_sample[0] == pytest.approx(np.mean(f0 - np.array(curve)), rel=1e-5)
    assert aospc(model, x, saliency, 0, 1, threshold=0.7, K=3).details["segments"] == [1]


def test_faithfulness_equals_a_plain_loop_and_pearson(digit_case):
    clf, x, source, target, maps = digit_case
    result = faithfulness(clf, x[:1], maps[:1], source[:1], target[:1], features_in_step=16)
    order = np.argsort(-maps[0].sum(0).ravel(), kind="stable")
    f0 = plain_scores(clf.model, x[:1], source[0], target[0])[0]
    drops, sums = [], []
    for start in range(0, 784, 16):
        image = x[0].copy().ravel()
        image[order[start:start + 16]] = 0
        drops.append(f0 - plain_scores(clf.model, image.reshape(1, 1, 28, 28), source[0], target[0])[0])
        sums.append(maps[0].sum(0).ravel()[order[start:start + 16]].sum())
    assert result.per_sample[0] == pytest.approx(stats.pearsonr(sums, drops)[0], abs=1e-5)


def test_monotonicity_equals_a_plain_loop_and_spearman(digit_case):
    clf, x, source, target, maps = digit_case
    result = monotonicity(clf, x[:1], maps[:1], source[:1], target[:1], features_in_step=49, n_samples=3, seed=2)
    order = np.argsort(-maps[0].sum(0).ravel(), kind="stable")
    noise = np.random.default_rng(2).uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    f0 = plain_scores(clf.model, x[:1], source[0], target[0])[0]
    importance, magnitude = [], []
    for start in range(0, 784, 49):
        pixels = order[start:start + 49]
        values = []
        for s in range(3):
            image = x[0].copy().ravel()
            image[pixels] = noise[s].ravel()[pixels]
            values.append((f0 - plain_scores(clf.model, image.reshape(1, 1, 28, 28), source[0], target[0])[0]) ** 2)
        importance.append(np.mean(values))
        magnitude.append(abs(maps[0].sum(0).ravel()[pixels].sum()))
    assert result.per_sample[0] == pytest.approx(stats.spearmanr(magnitude, importance)[0], abs=1e-6)


def test_correlation_helpers_match_scipy_and_give_nan_for_constants():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 30)), rng.standard_normal((5, 30))
    b[:, :10] = a[:, :10]
    np.testing.assert_allclose(pearson_rows(a, b), [stats.pearsonr(a[i], b[i])[0] for i in range(5)], rtol=1e-10)
    ties = np.round(a, 1)
    np.testing.assert_allclose(spearman_rows(ties, b), [stats.spearmanr(ties[i], b[i])[0] for i in range(5)], rtol=1e-10)
    assert np.isnan(pearson_rows(np.ones((1, 4)), a[:1, :4])).all()


def test_bad_input_gives_clear_errors(digit_case):
    clf, x, source, target, maps = digit_case
    with pytest.raises(InputError, match="attributions"):
        perturbation_curve(clf, x, maps[:, :, :5], source, target)
    with pytest.raises(InputError, match="target equals source"):
        perturbation_curve(clf, x, maps, source, source)
    with pytest.raises(InputError, match="substrate"):
        perturbation_curve(clf, x, maps, source, target, substrate="gray")
    with pytest.raises(InputError, match="baseline="):
        perturbation_curve(clf, x, maps, source, target, substrate="baseline")
    with pytest.raises(InputError, match="step"):
        perturbation_curve(clf, x, maps, source, target, step=0)
    with pytest.raises(InputError, match="only"):
        aopc_from_curve(perturbation_curve(clf, x, maps, source, target, step=392), 5)
    with pytest.raises(InputError, match="finite"):
        deletion(clf, x, np.full_like(maps, np.nan))
    with pytest.raises(InputError, match="x: expected shape"):
        faithfulness(clf, x[:, :, :10], maps, source, target)
    with pytest.raises(InputError, match="threshold"):
        aospc(clf, x, maps, source, target, threshold=0)
    with pytest.raises(InputError, match="n_samples"):
        monotonicity(clf, x, maps, source, target, n_samples=0)
