"""Cascading randomization (xaisdk.metrics.randomization): cascade structure, maps, baselines, GANMEX retraining."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from xaisdk import InputError
from xaisdk.metrics.randomization import (
    MNIST_CNN_LABELS,
    cascade,
    cascading_randomization,
    ganmex_retrainer,
    gradient_explain,
    integrated_gradients_explain,
)
from xaisdk.metrics.similarity import spearman_similarity
from xaisdk.models import Classifier, weighted_layers
from xaisdk.train import GanmexTrainingConfig


def _small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(6, 8, 5, stride=2, padding=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 4),
    ).eval()


def _params(module: nn.Module, layer: str) -> dict[str, torch.Tensor]:
    return dict(dict(module.named_modules())[layer].named_parameters(recurse=False))


def _autograd_gradient(module: nn.Module, x: np.ndarray, source: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    """d(S_source - S_target)/dx, straight from torch autograd (independent of the backends)."""
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    logits = module(xt)
    rows = torch.arange(len(x))
    score = logits[rows, torch.from_numpy(source)]
    if target is not None:
        score = score - logits[rows, torch.from_numpy(target)]
    score.sum().backward()
    return xt.grad.numpy()


def _other_class(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """A target class different from each image's predicted class."""
    with torch.no_grad():
        return ((net(torch.from_numpy(x)).argmax(1) + 1) % 4).numpy()


@pytest.fixture(scope="module")
def images(digits) -> np.ndarray:
    return digits.test.x[:6]


# --- the cascade --------------------------------------------------------------------------------


def test_cascade_randomizes_exactly_the_top_k_layers_keeping_norms(mnist_cnn):
    layers = weighted_layers(mnist_cnn)
    assert layers == ["features.0", "features.2", "head.1", "head.4"]
    before = {k: v.clone() for k, v in mnist_cnn.state_dict().items()}
    stages = list(cascade(mnist_cnn, input_shape=(1, 28, 28), seed=5))
    assert [s.name for s in stages] == ["original", "head.4", "head.1", "features.2", "features.0"]
    assert [s.seed for s in stages] == [None, 6, 7, 8, 9]
    assert stages[0].classifier.model is mnist_cnn
    top_down = layers[::-1]
    for k, stage in enumerate(stages):
        assert stage.randomized == tuple(top_down[:k])
        module = stage.classifier.model
        assert not module.training
        for layer in layers:
            for pname, orig in _params(mnist_cnn, layer).items():
                new = _params(module, layer)[pname]
                if layer in stage.randomized:
                    assert not torch.equal(new, orig), (k, layer, pname)
                    torch.testing.assert_close(new.norm(), orig.norm(), rtol=1e-5, atol=0)
                else:
                    assert torch.equal(new, orig), (k, layer, pname)
        if k > 1:  # truly cumulative: the layers randomized before keep their random weights
            for layer in stages[k - 1].randomized:
                for pname, prev in _params(stages[k - 1].classifier.model, layer).items():
                    assert torch.equal(_params(module, layer)[pname], prev)
    for key, value in mnist_cnn.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[key])


def test_cascade_is_reproducible_and_seeded(mnist_cnn):
    one = [s.classifier.model for s in cascade(mnist_cnn, ["head.4"], seed=3, input_shape=(1, 28, 28))]
    two = [s.classifier.model for s in cascade(mnist_cnn, ["head.4"], seed=3, input_shape=(1, 28, 28))]
    other = [s.classifier.model for s in cascade(mnist_cnn, ["head.4"], seed=4, input_shape=(1, 28, 28))]
    assert torch.equal(one[1].head[4].weight, two[1].head[4].weight)
    assert not torch.equal(one[1].head[4].weight, other[1].head[4].weight)


def test_cascade_follows_the_given_layer_order(mnist_cnn):
    stages = list(cascade(mnist_cnn, ["features.0", "head.4"], input_shape=(1, 28, 28)))
    assert [s.randomized for s in stages] == [(), ("features.0",), ("features.0", "head.4")]
    assert torch.equal(stages[2].classifier.model.features[2].weight, mnist_cnn.features[2].weight)


# --- maps through the cascade -------------------------------------------------------------------


def test_gradient_maps_of_a_random_cnn_lose_their_similarity(images):
    net = _small_cnn()
    target = _other_class(net, images)
    result = cascading_randomization(net, images, gradient_explain, target=target, input_shape=(1, 28, 28), seed=1)
    assert result.stages == ["original", "7", "5", "2", "0"]
    with torch.no_grad():
        predicted = net(torch.from_numpy(images)).argmax(1).numpy()
    np.testing.assert_array_equal(result.source, predicted)  # fixed by the original model at every stage
    stages = list(cascade(net, input_shape=(1, 28, 28), seed=1))
    for stage, maps in zip(stages, result.maps):
        want = _autograd_gradient(stage.classifier.model, images, predicted, target)
        np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-7)
    table = result.metric_table()
    for name in ("ssim", "spearman", "hog_pearson"):
        assert table[name][0] == pytest.approx(1.0, abs=1e-12)
        assert table[name][-1] < 0.5, (name, table[name])
        assert max(table[name][1:]) < 0.5, (name, table[name])
    np.testing.assert_allclose(result.metrics[2]["spearman"].per_sample,
                               spearman_similarity(result.maps[0], result.maps[2]).per_sample)
    assert result.baselines == [None] * 5 and result.baseline_change() is None


def test_shipped_classifier_stages_carry_the_paper_names(shipped, images):
    result = cascading_randomization(shipped, images[:3], gradient_explain, target=np.array([1, 2, 3]),
                                     labels=MNIST_CNN_LABELS, metrics=["spearman", "spearman_signed"], progress=True)
    assert result.stages == ["original", "Output", "FC", "CNN2", "CNN1"]
    assert result.randomized_layers[-1] == ("head.4", "head.1", "features.2", "features.0")
    summary = result.to_dict()
    json.dumps(summary)  # JSON-ready
    assert set(summary["metrics"]["FC"]) == {"spearman", "spearman_signed"}
    assert "per_sample" not in summary["metrics"]["FC"]["spearman"] and summary["samples"] == 3
    assert summary["seeds"] == [None, 1, 2, 3, 4] and summary["one_vs_one"] is True


# --- baselines regenerated per stage ------------------------------------------------------------


class _SoftmaxScaledBaselines:
    """A real (cheap) classifier-dependent baseline: x scaled by the classifier's probability of the target."""

    def __init__(self) -> None:
        self.calls: list[Classifier] = []

    def __call__(self, classifier: Classifier):
        self.calls.append(classifier)
        module = classifier.model

        def make(x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
            with torch.no_grad():
                probs = torch.softmax(module(torch.from_numpy(x)), 1).numpy()
            return (x * probs[np.arange(len(x)), target][:, None, None, None]).astype(np.float32)

        return make


def test_baseline_for_is_called_once_per_stage_with_the_randomized_classifier(images):
    net = _small_cnn(seed=2)
    target = _other_class(net, images)
    baseline_for = _SoftmaxScaledBaselines()
    ig = integrated_gradients_explain(n_steps=8)
    result = cascading_randomization(net, images, ig, target=target, baseline_for=baseline_for,
                                     input_shape=(1, 28, 28), metrics=["spearman"])
    stages = list(cascade(net, input_shape=(1, 28, 28)))
    assert len(baseline_for.calls) == len(stages) == 5
    for stage, given, base, maps in zip(stages, baseline_for.calls, result.baselines, result.maps):
        assert isinstance(given, Classifier) and given.input_shape == (1, 28, 28)
        for (name, p), (_, q) in zip(given.model.named_parameters(), stage.classifier.model.named_parameters()):
            assert torch.equal(p, q), (stage.name, name)
        want = baseline_for(stage.classifier)(images, target)
        np.testing.assert_array_equal(base, want)
        # The maps are IG from *this stage's* baselines on *this stage's* model.
        direct = ig(_backend(stage.classifier), images, result.source, target, want)
        np.testing.assert_allclose(maps, direct, rtol=1e-6, atol=1e-8)
    change = result.baseline_change()
    assert change[0] == 0.0 and min(change[1:]) > 0


def test_original_baselines_serve_stage_zero(images):
    net = _small_cnn(seed=3)
    target = _other_class(net, images)
    baseline_for = _SoftmaxScaledBaselines()
    given = np.full_like(images, 0.5)
    result = cascading_randomization(net, images, integrated_gradients_explain(n_steps=4), target=target,
                                     baseline_for=baseline_for, original_baselines=given, input_shape=(1, 28, 28),
                                     metrics=["spearman"])
    assert len(baseline_for.calls) == 4  # randomized stages only
    assert all(c.model is not net for c in baseline_for.calls)
    np.testing.assert_array_equal(result.baselines[0], given)


def _backend(classifier: Classifier):
    from xaisdk.torch_runtime.torch_backend import TorchBackend

    return TorchBackend(classifier)


# --- GANMEX retrained per stage -----------------------------------------------------------------


def test_ganmex_retrainer_runs_through_the_cascade(shipped, digits):
    config = GanmexTrainingConfig(steps=3, batch_size=4, generator_channels=4, generator_res_blocks=1,
                                  critic_channels=4, log_every=1)
    retrainer = ganmex_retrainer(digits.train.subset(range(40)), config)
    x, y = digits.test.x[:3], digits.test.y[:3]
    target = (y + 1) % 10
    result = cascading_randomization(shipped, x, integrated_gradients_explain(n_steps=8), source=y, target=target,
                                     baseline_for=retrainer, layers=["head.4"], labels=MNIST_CNN_LABELS)
    assert result.stages == ["original", "Output"]
    assert len(retrainer.models) == 2 and len(retrainer.histories) == 2
    stages = list(cascade(shipped, ["head.4"]))
    for stage, model, base in zip(stages, retrainer.models, result.baselines):
        assert torch.equal(model.classifier.model.head[4].weight, stage.classifier.model.head[4].weight)
        np.testing.assert_array_equal(base, model.baseline(x, target))
        assert base.shape == x.shape and np.isfinite(base).all()
    # Same training seed every stage: the baselines differ only because the classifier does.
    assert not np.array_equal(result.baselines[0], result.baselines[1])
    assert all(np.isfinite(h["final"]["classification"]) for h in retrainer.histories)
    with pytest.raises(InputError, match="target classes"):
        retrainer(shipped)(x, None)


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_raises_input_error(images):
    net = _small_cnn()
    shape = (1, 28, 28)
    with pytest.raises(InputError, match="input_shape"):
        cascading_randomization(net, images, gradient_explain)
    with pytest.raises(InputError, match="own no weights"):
        cascading_randomization(net, images, gradient_explain, layers=["1"], input_shape=shape)
    with pytest.raises(InputError, match="distinct"):
        list(cascade(net, ["0", "0"], input_shape=shape))
    with pytest.raises(InputError, match="expected shape"):
        cascading_randomization(net, images[:, :, :20], gradient_explain, input_shape=shape)
    with pytest.raises(InputError, match="two different classes"):
        cascading_randomization(net, images[:1], gradient_explain, source=1, target=1, input_shape=shape)
    with pytest.raises(InputError, match="maps of explain at stage 'original'"):
        cascading_randomization(net, images, lambda b, x, s, t, base: x[:, :, :5], input_shape=shape)
    with pytest.raises(InputError, match="baselines at stage 'original'"):
        cascading_randomization(net, images, gradient_explain, input_shape=shape,
                                baseline_for=lambda clf: (lambda x, t: x[:2]))
    with pytest.raises(InputError, match="unknown"):
        cascading_randomization(net, images, gradient_explain, input_shape=shape, metrics=["nope"])
    with pytest.raises(InputError, match="torch.nn.Module"):
        list(cascade(object()))
    with pytest.raises(InputError, match="n_steps"):
        integrated_gradients_explain(n_steps=0)
    with pytest.raises(InputError, match="Dataset or Split"):
        ganmex_retrainer(images)
