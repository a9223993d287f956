"""ExplainGAN: networks, loss terms, training (resume), shipped weights, ONNX export and runtime, bad inputs."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from xaisdk.counterfactual.explaingan import ExplainGAN
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier, load_shipped_classifier
from xaisdk.models.explaingan import (
    ExplainGANConfig,
    ExplainGANDecoder,
    ExplainGANEncoders,
    ExplainGANModel,
    decision_logit,
    load_explaingan,
    load_shipped_explaingan,
)
from xaisdk.train.explaingan import (
    ExplainGANTrainingConfig,
    binary_digits_split,
    predicted_sides,
    prior_terms,
    total_variation,
    train_explaingan,
)

FLIP_GOAL = 0.9  # at least 90% of the test composites must cross the shipped classifier's boundary
AREA_BOUND = 0.25  # and the mean mask must cover under a quarter of the image

TINY = ExplainGANTrainingConfig(steps=24, batch_size=8, base_channels=4, code_channels=8, critic_channels=4,
                                lr_generator=2e-3, lr_discriminator=2e-3, log_every=4, sample_every=1000,
                                checkpoint_every=1000, seed=0)
ZERO_WEIGHTS = dict(lambda_gan=0.0, lambda_cls=0.0, lambda_rec=0.0, lambda_const=0.0, lambda_count=0.0,
                    lambda_smooth=0.0, lambda_entropy=0.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny networks gain nothing from threads, and on a busy 2-core machine two threads spin for minutes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shipped() -> ExplainGANModel:
    return load_shipped_explaingan()


@pytest.fixture(scope="module")
def split():
    return binary_digits_split(3, 8)


@pytest.fixture(scope="module")
def tiny_train(split):
    return split.train.subset(np.r_[0:24, len(split.train) - 24:len(split.train)])


def test_decision_logit_and_priors_against_hand_computation() -> None:
    two = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        two.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]))
    x = torch.tensor([[1.0, 2.0]])
    assert decision_logit(two, x).item() == pytest.approx((2 + 1) - (1 - 2))
    one = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        one.weight.copy_(torch.tensor([[3.0, -1.0]]))
    assert decision_logit(one, x).item() == pytest.approx(1.0)

    rng = np.random.default_rng(0)
    xs, ts, ms = (rng.uniform(size=(3, 1, 5, 6)).astype(np.float32) for _ in range(3))
    got = prior_terms(torch.from_numpy(xs), torch.from_numpy(ts), torch.from_numpy(ms), kappa=0.6)
    consistency = np.mean([np.mean(((1 - m) * (x - t)) ** 2) for x, t, m in zip(xs, ts, ms)])
    count = np.mean([max(m.mean(), 0.6) for m in ms])
    tv = np.mean([(np.abs(np.diff(m[0], axis=0)).sum() + np.abs(np.diff(m[0], axis=1)).sum()) / (4 * 6 + 5 * 5)
                  for m in ms])
    entropy = np.mean(np.minimum(ms, 1 - ms))
    for name, want in (("consistency", consistency), ("count", count), ("smoothness", tv), ("entropy", entropy)):
        assert float(got[name]) == pytest.approx(want, rel=1e-5), name
    assert float(total_variation(torch.from_numpy(ms)).mean()) == pytest.approx(tv, rel=1e-5)


@pytest.mark.parametrize("term, weight", [("reconstruction", "lambda_rec"), ("classifier", "lambda_cls"),
                                          ("consistency", "lambda_const"), ("count", "lambda_count"),
                                          ("smoothness", "lambda_smooth"), ("entropy", "lambda_entropy"),
                                          ("gan", "lambda_gan")])
def test_each_loss_term_falls_when_trained(shipped, tiny_train, term: str, weight: str) -> None:
    """With only one generator term switched on, a short seeded run lowers it (first vs last 4-step mean).
    The discriminators train in every run, so their hinge loss falls; for the GAN term itself they are
    held still (learning rate 1e-12), since against a learning discriminator the generator's term rises."""
    extra = {"lr_discriminator": 1e-12} if term == "gan" else {}
    config = replace(TINY, **{**ZERO_WEIGHTS, weight: 1.0, "kappa": 0.0, **extra})
    _, hist = train_explaingan(tiny_train, shipped.classifier, config, progress=False)
    assert hist[term][-1] < hist[term][0], (term, hist[term])
    if term != "gan":
        assert hist["discriminator"][-1] < hist["discriminator"][0], hist["discriminator"]


def test_full_objective_lowers_classifier_and_reconstruction(shipped, tiny_train) -> None:
    _, hist = train_explaingan(tiny_train, shipped.classifier, replace(TINY, steps=40), progress=False)
    assert hist["classifier"][-1] < hist["classifier"][0]
    assert hist["reconstruction"][-1] < hist["reconstruction"][0]


def test_mask_range_and_composite_equals_input_where_mask_is_zero(shipped, split) -> None:
    eg = ExplainGAN(shipped)
    x = split.test.x[:16]
    r = eg.transform(x)
    assert r.mask.min() >= 0 and r.mask.max() <= 1
    np.testing.assert_allclose(r.composite, x * (1 - r.mask) + r.transformed * r.mask, atol=1e-6)
    # A mask head whose bias is far below sigmoid's underflow gives m == 0 exactly: the composite is x, bit for bit.
    model = load_shipped_explaingan()
    with torch.no_grad():
        model.decoder.mask[-1].bias.fill_(-200.0)
    zero = ExplainGAN(model).transform(x)
    assert (zero.mask == 0).all()
    assert np.array_equal(zero.composite, x)


def test_source_side_is_the_classifiers_prediction(shipped, split) -> None:
    x = split.test.x
    with torch.no_grad():
        logits = shipped.classifier.model(torch.from_numpy(x)).numpy()
    want = logits.argmax(1)
    np.testing.assert_array_equal(predicted_sides(shipped.classifier, x), want)
    np.testing.assert_array_equal(ExplainGAN(shipped).transform(x).source, want)


def test_shipped_weights_meet_flip_goal_and_mask_bound(shipped, split) -> None:
    r = ExplainGAN(shipped).transform(split.test.x)
    assert r.flipped.mean() >= FLIP_GOAL
    assert r.mask.mean() < AREA_BOUND
    assert shipped.classifier.class_names == ("3", "8")
    # the flipped probability is the classifier's own output on the composite
    with torch.no_grad():
        p = torch.softmax(shipped.classifier.model(torch.from_numpy(r.composite)), 1).numpy()
    np.testing.assert_allclose(r.flipped_prob, p[np.arange(len(p)), 1 - r.source], atol=1e-5)


def test_onnx_export_parity_and_torch_free_runtime(shipped, split, tmp_path) -> None:
    from xaisdk.deploy.explaingan_export import export_explaingan_onnx
    from xaisdk.runtime.explaingan_onnx import OnnxExplainGAN

    report = export_explaingan_onnx(shipped, tmp_path, check_count=16)
    assert report["max_abs_error"] <= 1e-4 and report["source_mismatches"] == 0
    x = split.test.x
    want = ExplainGAN(shipped).transform(x)
    got = OnnxExplainGAN(tmp_path / "explaingan.onnx").transform(x)
    np.testing.assert_array_equal(got.source, want.source)
    for name in ("transformed", "mask", "composite", "flipped_prob"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-4, err_msg=name)
    # the runtime class works in a process where torch cannot be imported
    code = ("import sys, numpy as np; sys.modules['torch'] = None\n"
            "from xaisdk.runtime.explaingan_onnx import OnnxExplainGAN\n"
            f"r = OnnxExplainGAN({str(tmp_path)!r}).transform(np.zeros((2, 1, 28, 28), np.float32))\n"
            "print(r.composite.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "(2, 1, 28, 28)" in out.stdout


def test_resume_continues_bit_for_bit(shipped, tiny_train, tmp_path) -> None:
    config = replace(TINY, steps=6, checkpoint_every=3, log_every=3)  # logging windows end at the checkpoint
    straight, hist_a = train_explaingan(tiny_train, shipped.classifier, config, progress=False)
    path = tmp_path / "eg.pt"
    train_explaingan(tiny_train, shipped.classifier, replace(config, steps=3), out=path, progress=False)
    resumed, hist_b = train_explaingan(tiny_train, shipped.classifier, config, out=path, resume=True, progress=False)
    for a, b in ((straight.encoders, resumed.encoders), (straight.decoder, resumed.decoder)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    assert hist_a["reconstruction"] == hist_b["reconstruction"]
    assert load_explaingan(path).training["steps_done"] == 6
    with pytest.raises(InputError, match="different hyper-parameters"):
        train_explaingan(tiny_train, shipped.classifier, replace(config, kappa=0.3), out=path, resume=True,
                         progress=False)


def test_single_logit_classifier_is_accepted(tiny_train) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 1))
    with torch.no_grad():  # a fixed linear rule that splits the tiny set into both sides
        net[1].weight.copy_(torch.from_numpy(tiny_train.x.reshape(len(tiny_train), -1)[tiny_train.y == 1].mean(0)
                                             - tiny_train.x.reshape(len(tiny_train), -1)[tiny_train.y == 0].mean(0))[None])
        net[1].bias.zero_()
    clf = Classifier(net, "custom", {}, ("3", "8"), (1, 28, 28))
    model, _ = train_explaingan(tiny_train, clf, replace(TINY, steps=2), progress=False)
    r = ExplainGAN(model).transform(tiny_train.x[:6])
    with torch.no_grad():
        logit = net(torch.from_numpy(tiny_train.x[:6]))[:, 0]
    np.testing.assert_array_equal(r.source, (logit > 0).long().numpy())
    with torch.no_grad():
        d = net(torch.from_numpy(r.composite))[:, 0]
    np.testing.assert_allclose(r.flipped_prob, torch.sigmoid(torch.where(logit > 0, -d, d)).numpy(), atol=1e-6)


def test_bad_inputs(shipped, split, tiny_train) -> None:
    with pytest.raises(InputError, match="10 classes"):
        train_explaingan(tiny_train, load_shipped_classifier(), TINY, progress=False)
    with pytest.raises(InputError, match="10 classes"):
        ExplainGANModel(load_shipped_classifier(), ExplainGANConfig((1, 28, 28)),
                        ExplainGANEncoders(ExplainGANConfig((1, 28, 28))), ExplainGANDecoder(ExplainGANConfig((1, 28, 28))))
    eg = ExplainGAN(shipped)
    with pytest.raises(InputError, match="expected a batch"):
        eg.transform(split.test.x[0])
    with pytest.raises(InputError, match="expected a batch"):
        eg.transform(np.zeros((2, 1, 27, 27), np.float32))
    bad = split.test.x[:2].copy()
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        eg.transform(bad)
    with pytest.raises(InputError, match="kappa"):
        train_explaingan(tiny_train, shipped.classifier, replace(TINY, kappa=2.0), progress=False)
    one_sided = tiny_train.subset(tiny_train.y == 0)
    with pytest.raises(InputError, match="only one class"):
        train_explaingan(one_sided, shipped.classifier, TINY, progress=False)


def test_no_mask_ablation_composite_is_transformed(shipped, tiny_train) -> None:
    model, hist = train_explaingan(tiny_train, shipped.classifier, replace(TINY, steps=2, no_mask=True), progress=False)
    r = ExplainGAN(model).transform(tiny_train.x[:4])
    assert (r.mask == 1).all()
    np.testing.assert_array_equal(r.composite, r.transformed)
    assert hist["count"][-1] == 0.0  # no priors without a mask
