"""Architectures, checkpoints and the shipped digits classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaisdk import InputError
from xaisdk.models import CifarCNN, Classifier, MnistCNN, build_classifier, load_classifier, save_classifier
from xaisdk.train import accuracy


def test_mnist_cnn_follows_the_paper():
    net = MnistCNN()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (6, 6), (2, 2)), (64, (6, 6), (2, 2))]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [256, 10]
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.5]


def test_cifar_cnn_follows_the_paper():
    net = CifarCNN()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 8
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in net.modules()) == 4
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_checkpoint_round_trip(tmp_path):
    cfg = dict(in_channels=3, image_size=32, num_classes=4, widths=(4, 4, 8, 8))
    model = build_classifier("cifar_cnn", **cfg).eval()
    clf = Classifier(model, "cifar_cnn", cfg, ("a", "b", "c", "d"), (3, 32, 32), metadata={"note": "x"})
    path = save_classifier(tmp_path / "sub" / "clf.pt", clf)
    loaded = load_classifier(path)
    assert loaded.class_names == ("a", "b", "c", "d") and loaded.input_shape == (3, 32, 32)
    assert loaded.metadata == {"note": "x"} and not loaded.model.training
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), model(x))
    assert not list(tmp_path.glob("sub/.*tmp"))  # the atomic write left no temporary file


def _payload(tmp_path, **changes):
    cfg = dict(in_channels=1, image_size=28, num_classes=2)
    clf = Classifier(build_classifier("mnist_cnn", **cfg), "mnist_cnn", cfg, ("a", "b"), (1, 28, 28))
    path = save_classifier(tmp_path / "ok.pt", clf)
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    for key, value in list(payload.items()):
        if value is None:
            del payload[key]
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    return bad


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"kind": "something else"}, "not an xaisdk classifier"),
        ({"state_dict": None}, "missing 'state_dict'"),
        ({"arch": "resnet9000"}, "unknown architecture"),
        ({"class_names": ["a", "b", "c"]}, "2 outputs but 3 class names"),
        ({"input_shape": [1, 28]}, "input_shape"),
        ({"format_version": 99}, "newer"),
        ({"config": {"in_channels": 1, "image_size": 28, "num_classes": 2, "hidden": 128}}, "do not fit"),
    ],
)
def test_malformed_checkpoints_are_rejected(tmp_path, changes, match):
    with pytest.raises(InputError, match=match):
        load_classifier(_payload(tmp_path, **changes))


def test_unreadable_files_are_rejected(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        load_classifier(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(InputError, match="not a readable torch checkpoint"):
        load_classifier(garbage)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(InputError, match="not an xaisdk classifier"):
        load_classifier(tmp_path / "list.pt")


def test_shipped_digits_classifier_reaches_97_percent(shipped, digits):
    assert shipped.arch == "mnist_cnn" and shipped.class_names == tuple(str(i) for i in range(10))
    measured = accuracy(shipped.model, digits.test.x, digits.test.y)
    assert measured >= 0.97
    assert measured == pytest.approx(shipped.metadata["test_accuracy"], abs=1e-9)
    assert shipped.metadata["test_size"] == len(digits.test)


def test_build_classifier_errors():
    with pytest.raises(InputError, match="unknown architecture"):
        build_classifier("vgg")
    with pytest.raises(InputError, match="bad config"):
        build_classifier("mnist_cnn", colour=True)
    with pytest.raises(InputError, match="divisible"):
        CifarCNN(image_size=30)


def test_training_learns_on_shapes():
    """Ten epochs of the CIFAR architecture on synthetic shapes beat chance by far."""
    from xaisdk.data import load_shapes
    from xaisdk.train import ClassifierTrainingConfig, train_classifier

    split = load_shapes(n_train=600, n_test=150, seed=0)
    config = ClassifierTrainingConfig(arch="cifar_cnn", epochs=10, seed=0, max_shift=0, arch_config={"widths": (8, 16, 16, 32)})
    clf, history = train_classifier(split, config, progress=False)
    assert history["loss"][-1] < history["loss"][0]
    assert history["test_accuracy"] > 0.75  # chance is 1/3; measured 0.88
    assert clf.metadata["dataset"] == "shapes"
    assert np.isfinite(history["loss"]).all()


def test_randomized_copy_keeps_norms_and_leaves_the_original(mnist_cnn):
    from xaisdk.models import randomized_copy, weighted_layers

    before = {k: v.clone() for k, v in mnist_cnn.state_dict().items()}
    layers = weighted_layers(mnist_cnn)
    assert len(layers) == 4  # conv1, conv2, fc, output: the paper's cascading-randomization layers
    partly = randomized_copy(mnist_cnn, layers=layers[-1:], seed=3)
    for (name, new), old in zip(partly.named_parameters(), mnist_cnn.parameters()):
        changed = name.startswith(layers[-1] + ".")
        assert torch.equal(new, old) != changed, name
        torch.testing.assert_close(new.norm(), old.norm())
    for key, value in mnist_cnn.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(InputError, match="no layer named"):
        randomized_copy(mnist_cnn, layers=["nope"])
