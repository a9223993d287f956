"""GANMEX: StarGAN networks, training, checkpoints, and the ``baseline="ganmex"`` path of every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaisdk import InputError, attribution
from xaisdk.baselines import make_baseline
from xaisdk.data import load_digits
from xaisdk.metrics import one_vs_one_pairs, target_success
from xaisdk.models import (
    GanmexBaseline,
    GanmexModel,
    GeneratorConfig,
    StarGenerator,
    build_classifier,
    load_ganmex,
    load_shipped_ganmex,
    save_ganmex,
)
from xaisdk.models.checkpoint import Classifier, atomic_torch_save
from xaisdk.train import GanmexTrainingConfig, train_ganmex

TINY = dict(batch_size=8, generator_channels=8, generator_res_blocks=1, critic_channels=8, log_every=5)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def shipped_ganmex():
    return load_shipped_ganmex()


# --- networks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 25, 25), (1, 8, 8)])
def test_generator_keeps_shape_and_value_range(shape):
    config = GeneratorConfig.for_input(shape, 4, value_range=(-1.0, 2.0), base_channels=4, n_res=1)
    g = StarGenerator(config)
    with torch.no_grad():
        out = g(torch.randn(3, *shape) * 5, torch.tensor([0, 1, 3]))
    assert out.shape == (3, *shape)
    assert float(out.min()) >= -1.0 and float(out.max()) <= 2.0


def test_generator_indices_equal_one_hot():
    g = StarGenerator(GeneratorConfig.for_input((1, 28, 28), 10, base_channels=4, n_res=1)).eval()
    x = torch.rand(2, 1, 28, 28)
    by_index = g(x, torch.tensor([2, 7]))
    by_onehot = g(x, torch.nn.functional.one_hot(torch.tensor([2, 7]), 10).float())
    torch.testing.assert_close(by_index, by_onehot)


def test_input_skip_makes_a_zero_head_the_identity():
    """With the skip, G outputs sigmoid(head + logit(x)): a zero head returns x (clipped to [5%, 95%] of the range)."""
    config = GeneratorConfig.for_input((3, 16, 16), 4, value_range=(0.0, 2.0), base_channels=4, n_res=1,
                                       input_skip=True)
    g = StarGenerator(config).eval()
    torch.nn.init.zeros_(g.head.weight)
    torch.nn.init.zeros_(g.head.bias)
    x = torch.rand(2, 3, 16, 16) * 2
    with torch.no_grad():
        out = g(x, torch.tensor([0, 3]))
    torch.testing.assert_close(out, x.clamp(0.1, 1.9))
    assert GeneratorConfig.from_dict(config.to_dict()) == config
    # configs saved before the option existed load without it
    old = config.to_dict()
    del old["input_skip"]
    assert GeneratorConfig.from_dict(old).input_skip is False


def test_generator_rejects_bad_targets():
    g = StarGenerator(GeneratorConfig.for_input((1, 28, 28), 10, base_channels=4, n_res=1))
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(InputError, match=r"\[0, 9\]"):
        g(x, torch.tensor([0, 10]))
    with pytest.raises(InputError, match="2 images but 3 targets"):
        g(x, torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match="expected"):
        g(torch.rand(2, 3, 28, 28), torch.tensor([0, 1]))


# --- training -------------------------------------------------------------------------------------------


def _term_means(history, term, first, last):
    values = np.asarray(history[term])
    return values[:first].mean(), values[-last:].mean()


def test_short_training_moves_every_loss_term_the_right_way(digits, shipped_ganmex, tmp_path):
    clf = shipped_ganmex.classifier
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    config = GanmexTrainingConfig(steps=60, **TINY)
    model, history = train_ganmex(digits.train.subset(range(200)), clf, config, out=tmp_path / "g.pt",
                                  samples_dir=tmp_path / "samples", progress=False)
    # The generator learns to make the classifier say c_t, while staying near x and cycling back.
    cls_start, cls_end = _term_means(history, "classification", 2, 2)
    success_start, success_end = _term_means(history, "target_success", 2, 2)
    assert cls_end < 0.5 * cls_start
    assert success_end > success_start + 0.3
    assert all(np.isfinite(history[t]).all() for t in ("critic", "adversarial", "similarity"))
    # The classifier is frozen: not one weight changed.
    for key, value in clf.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    loaded = load_ganmex(tmp_path / "g.pt")
    assert loaded.training["steps_done"] == 60
    x = digits.test.x[:4]
    np.testing.assert_allclose(loaded.baseline(x, 3), model.baseline(x, 3), atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000060.png"]


@pytest.mark.parametrize("term, weight", [("similarity", "lambda_sim"), ("reconstruction", "lambda_rec")])
def test_l1_terms_pull_their_distance_down(digits, shipped_ganmex, term, weight):
    """Same seed and steps; only the term's weight differs, so a lower L1 is its doing."""
    data = digits.train.subset(range(200))
    distances = {}
    for lam in (0.0, 20.0):
        config = GanmexTrainingConfig(steps=40, **{**TINY, weight: lam})
        _, history = train_ganmex(data, shipped_ganmex.classifier, config, progress=False)
        distances[lam] = np.mean(history[term][-2:])
    assert distances[20.0] < distances[0.0]


def test_critic_learns_realism(digits, shipped_ganmex):
    """With the generator frozen by a zero learning rate the hinge loss of the critic must fall."""
    config = GanmexTrainingConfig(steps=40, lr_generator=1e-12, **TINY)
    _, history = train_ganmex(digits.train.subset(range(200)), shipped_ganmex.classifier, config, progress=False)
    start, end = _term_means(history, "critic", 2, 2)
    assert end < start


def test_resume_gives_the_same_weights_as_one_run(digits, shipped_ganmex, tmp_path):
    data = digits.train.subset(range(100))
    clf = shipped_ganmex.classifier
    whole, _ = train_ganmex(data, clf, GanmexTrainingConfig(steps=20, **TINY), progress=False)
    train_ganmex(data, clf, GanmexTrainingConfig(steps=10, **TINY), out=tmp_path / "r.pt", progress=False)
    resumed, _ = train_ganmex(data, clf, GanmexTrainingConfig(steps=20, **TINY), out=tmp_path / "r.pt",
                              resume=True, progress=False)
    for key, value in whole.generator.state_dict().items():
        torch.testing.assert_close(resumed.generator.state_dict()[key], value, rtol=0, atol=1e-6)


def test_resume_refuses_other_settings_and_classifiers(digits, shipped_ganmex, tmp_path):
    data = digits.train.subset(range(50))
    clf = shipped_ganmex.classifier
    train_ganmex(data, clf, GanmexTrainingConfig(steps=2, **TINY), out=tmp_path / "r.pt", progress=False)
    with pytest.raises(InputError, match="lambda_sim"):
        train_ganmex(data, clf, GanmexTrainingConfig(steps=4, **{**TINY, "lambda_sim": 1.0}), out=tmp_path / "r.pt",
                     resume=True, progress=False)
    other = Classifier(build_classifier("mnist_cnn", in_channels=1, image_size=28, num_classes=10), "mnist_cnn",
                       dict(in_channels=1, image_size=28, num_classes=10), clf.class_names, (1, 28, 28))
    with pytest.raises(InputError, match="different classifier"):
        train_ganmex(data, other, GanmexTrainingConfig(steps=4, **TINY), out=tmp_path / "r.pt", resume=True,
                     progress=False)


@pytest.mark.parametrize("part", ["opt_g", "opt_d"])
def test_resume_refuses_non_finite_optimizer_state(digits, shipped_ganmex, tmp_path, part):
    """Adam's moments are restored as they are: a NaN there would turn every later step into NaN."""
    data = digits.train.subset(range(50))
    clf = shipped_ganmex.classifier
    train_ganmex(data, clf, GanmexTrainingConfig(steps=2, **TINY), out=tmp_path / "r.pt", progress=False)
    payload = torch.load(tmp_path / "r.pt", weights_only=True)
    moments = next(iter(payload["training_state"][part]["state"].values()))
    moments["exp_avg"].view(-1)[0] = float("nan")
    torch.save(payload, tmp_path / "r.pt")
    with pytest.raises(InputError, match=rf"training state {part}\.state\.\d+\.exp_avg has NaN"):
        train_ganmex(data, clf, GanmexTrainingConfig(steps=4, **TINY), out=tmp_path / "r.pt", resume=True, progress=False)


def test_standalone_ablation_does_not_use_the_classifier(digits, shipped_ganmex):
    """The stand-alone GAN's class discriminator is its own: a randomized classifier changes nothing."""
    data = digits.train.subset(range(100))
    config = GanmexTrainingConfig(steps=6, standalone_classifier=True, **TINY)
    trained, _ = train_ganmex(data, shipped_ganmex.classifier, config, progress=False)
    scrambled = Classifier(build_classifier("mnist_cnn", in_channels=1, image_size=28, num_classes=10), "mnist_cnn",
                           {}, shipped_ganmex.classifier.class_names, (1, 28, 28))
    other, _ = train_ganmex(data, scrambled, config, progress=False)
    x = digits.test.x[:4]
    np.testing.assert_array_equal(trained.baseline(x, 5), other.baseline(x, 5))
    # ... whereas GANMEX (the classifier as class discriminator) does depend on the classifier.
    config = GanmexTrainingConfig(steps=6, **TINY)
    a, _ = train_ganmex(data, shipped_ganmex.classifier, config, progress=False)
    b, _ = train_ganmex(data, scrambled, config, progress=False)
    assert np.abs(a.baseline(x, 5) - b.baseline(x, 5)).max() > 1e-4


def test_training_rejects_mismatched_data(shipped_ganmex):
    from xaisdk.data import make_shapes

    shapes = make_shapes(n=20, image_size=16, seed=0)
    with pytest.raises(InputError, match="classifier takes"):
        train_ganmex(shapes, shipped_ganmex.classifier, GanmexTrainingConfig(steps=1, **TINY), progress=False)
    with pytest.raises(InputError, match="lambda_sim"):
        GanmexTrainingConfig(lambda_sim=-1).validate()


# --- checkpoints ----------------------------------------------------------------------------------------


def test_shipped_checkpoint_meets_the_target_success_goal(digits, shipped_ganmex):
    test = digits.test.subset(range(0, len(digits.test), 4))  # a 90-image sample of the test split
    idx, targets = one_vs_one_pairs(test.y, 10)
    baselines = shipped_ganmex.baseline(test.x[idx], targets)
    assert target_success(shipped_ganmex.classifier.model, baselines, targets) >= 0.95
    # ... and the baselines are the closest images, not far-away prototypes: nearer than the zero image.
    dist = np.sqrt(((baselines - test.x[idx]) ** 2).reshape(len(idx), -1).sum(1))
    assert dist.mean() < 0.6 * np.sqrt((test.x ** 2).reshape(len(test), -1).sum(1)).mean()


def test_shipped_checkpoint_records_how_it_was_made(shipped_ganmex):
    assert shipped_ganmex.data["name"] == "digits"
    assert shipped_ganmex.training["config"]["lambda_sim"] > 0
    assert shipped_ganmex.training["steps_done"] >= 1000


def test_bad_checkpoints_give_clear_errors(tmp_path, shipped_ganmex):
    with pytest.raises(InputError, match="no such checkpoint"):
        load_ganmex(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a readable torch checkpoint"):
        load_ganmex(tmp_path / "text.pt")
    from xaisdk.models import shipped_classifier_path

    with pytest.raises(InputError, match="it is a 'xaisdk.classifier' file"):
        load_ganmex(shipped_classifier_path())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(shipped_ganmex_path_bytes()[:5000])
    with pytest.raises(InputError):
        load_ganmex(truncated)


def shipped_ganmex_path_bytes() -> bytes:
    from xaisdk.models import shipped_ganmex_path

    return shipped_ganmex_path().read_bytes()


def test_mismatched_classifier_and_generator_shapes_are_refused(tmp_path, shipped_ganmex):
    from xaisdk.models.ganmex import ganmex_payload

    clf = shipped_ganmex.classifier
    wrong_classes = StarGenerator(GeneratorConfig.for_input((1, 28, 28), 5, base_channels=4, n_res=1))
    with pytest.raises(InputError, match="5 classes but the classifier has 10"):
        GanmexModel(clf, wrong_classes)
    wrong_shape = StarGenerator(GeneratorConfig.for_input((3, 32, 32), 10, base_channels=4, n_res=1))
    with pytest.raises(InputError, match=r"\(3, 32, 32\) images but the classifier takes \(1, 28, 28\)"):
        GanmexModel(clf, wrong_shape)
    # A file whose generator entry was edited to another shape is refused on load, with its path.
    payload = ganmex_payload(shipped_ganmex)
    payload["generator"]["config"]["height"] = 32
    payload["generator"]["config"]["width"] = 32
    atomic_torch_save(payload, tmp_path / "edited.pt")
    with pytest.raises(InputError, match="edited.pt: the generator makes"):
        load_ganmex(tmp_path / "edited.pt")
    # Weights of another width than the config says.
    payload = ganmex_payload(shipped_ganmex)
    payload["generator"]["config"]["base_channels"] = 8
    atomic_torch_save(payload, tmp_path / "widths.pt")
    with pytest.raises(InputError, match="generator weights do not fit"):
        load_ganmex(tmp_path / "widths.pt")


def test_inference_checkpoint_cannot_be_resumed(digits, shipped_ganmex, tmp_path):
    path = save_ganmex(tmp_path / "inference.pt", shipped_ganmex)
    with pytest.raises(InputError, match="no training state"):
        train_ganmex(digits.train.subset(range(20)), shipped_ganmex.classifier,
                     GanmexTrainingConfig(**shipped_ganmex.training["config"]), out=path, resume=True, progress=False)


# --- baseline="ganmex" in every method ------------------------------------------------------------------


def test_ganmex_baseline_in_every_method(digits, shipped_ganmex):
    x = digits.test.x[:3]
    target = np.array([1, 2, 3])
    expected = shipped_ganmex.baseline(x, target)
    base = torch.from_numpy(expected)
    clf = shipped_ganmex.classifier
    for method, kwargs in [(attribution.integrated_gradients, {"n_steps": 16}), (attribution.deeplift, {}),
                           (attribution.occlusion, {"window": 4, "stride": 4})]:
        by_name = method(shipped_ganmex, x, target=target, baseline="ganmex", **kwargs)
        by_generator = method(clf, x, target=target, baseline="ganmex", generator=shipped_ganmex.generator, **kwargs)
        by_array = method(clf, x, target=target, baseline=expected, **kwargs)
        np.testing.assert_allclose(by_name, by_array, atol=1e-6)
        np.testing.assert_allclose(by_generator, by_array, atol=1e-6)
    shap = attribution.deepshap(shipped_ganmex, x, target=target, baselines="ganmex")
    np.testing.assert_allclose(shap, attribution.deeplift(clf, x, target=target, baseline=expected), atol=1e-5)
    # Completeness along the path to the generated baseline: sum(attr) = delta S(x) - delta S(G(x, c_t)).
    attr, delta = attribution.integrated_gradients(shipped_ganmex, x, target=target, baseline="ganmex",
                                                   n_steps=200, return_convergence_delta=True)
    with torch.no_grad():
        logits_x, logits_b = clf.model(torch.from_numpy(x)), clf.model(base)
    source = logits_x.argmax(1)
    rows = torch.arange(3)
    drop = (logits_x[rows, source] - logits_x[rows, target]) - (logits_b[rows, source] - logits_b[rows, target])
    assert np.abs(delta).max() < 0.02 * float(drop.abs().min())


def test_ganmex_baseline_errors(digits, shipped_ganmex):
    x = digits.test.x[:2]
    with pytest.raises(InputError, match="needs a generator"):
        attribution.integrated_gradients(shipped_ganmex.classifier, x, target=1, baseline="ganmex")
    with pytest.raises(InputError, match="pass target="):
        attribution.deeplift(shipped_ganmex, x, baseline="ganmex")
    with pytest.raises(InputError, match="only with baseline='ganmex'"):
        attribution.deeplift(shipped_ganmex.classifier, x, target=1, baseline="zero", generator=shipped_ganmex)
    with pytest.raises(InputError, match="GanmexBaseline"):
        make_baseline("ganmex", x, np.array([1, 1]))
    with pytest.raises(InputError, match="expected a GanmexModel"):
        GanmexBaseline(42)
    with pytest.raises(InputError, match="images, the inputs are"):
        GanmexBaseline(shipped_ganmex)(np.zeros((1, 3, 28, 28), np.float32), np.array([1]))
