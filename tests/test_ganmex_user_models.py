"""GANMEX for a user's model: a ResNet-style classifier given as factory + weights with ImageNet-style
normalisation, a folder of colour images of other sizes, training by the API and the command, the
self-contained checkpoint (TorchScript classifier, sha256 and weights fingerprint checked on load), and
the bundle it exports."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_cli import xaisdk

from xaisdk.cli import main
from xaisdk.data import load_shapes
from xaisdk.deploy.export import export_bundle
from xaisdk.deploy.torch_intake import load_torch_classifier
from xaisdk.errors import InputError
from xaisdk.explainer import Explainer
from xaisdk.models.ganmex import load_model
from xaisdk.models.stargan import GeneratorConfig, StarGenerator
from xaisdk.runtime.preprocessing import Preprocessing
from xaisdk.train.ganmex import GanmexTrainingConfig, train_ganmex, training_images

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PIPELINE = Preprocessing(mean=MEAN, std=STD)

MODEL_CODE = '''
"""A small ResNet: stem, two residual blocks with batch norm (the second strided), pooling, linear."""
import torch
from torch import nn


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Identity() if stride == 1 and cin == cout
                     else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.down(x))


class TinyResNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = Basic(16, 16, 1)
        self.layer2 = Basic(16, 32, 2)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


def build():
    return TinyResNet(3)
'''

TINY = dict(batch_size=8, generator_channels=8, generator_res_blocks=1, critic_channels=16)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's files: model code, an image folder (colour shapes stored at 40x40 and 48x40), class names,
    and weights trained on that folder's training part (through the model's own normalisation)."""
    root = tmp_path_factory.mktemp("user")
    (root / "tiny_resnet.py").write_text(textwrap.dedent(MODEL_CODE))
    shapes = load_shapes(360, 1, image_size=32, backgrounds=("plain",), seed=0).train
    names = shapes.class_names
    for i, (image, label) in enumerate(zip(shapes.x, shapes.y)):
        folder = root / "images" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8))
        pixels.resize((40, 40) if i % 2 else (48, 40), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    (root / "labels.txt").write_text("\n".join(names) + "\n")
    factory = f"{root / 'tiny_resnet.py'}:build"
    untrained = load_torch_classifier(factory=factory, input_shape=(3, 32, 32), class_names=names, preprocessing=PIPELINE)
    data = training_images(root / "images", untrained)
    torch.manual_seed(0)
    net = untrained.model  # the pixel pipeline in front of the user's module: trained on [0, 1] pixels
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    for _ in range(12):
        net.train()
        for idx in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    torch.save(net.model.state_dict(), root / "weights.pt")
    classifier = load_torch_classifier(factory=factory, weights=root / "weights.pt", input_shape=(3, 32, 32),
                                       class_names=names, preprocessing=PIPELINE)
    with torch.no_grad():
        accuracy = float((classifier.model(torch.from_numpy(data.test.x)).argmax(1).numpy() == data.test.y).mean())
    assert accuracy > 0.7, accuracy  # the generator needs a classifier worth explaining
    return {"root": root, "data": data, "names": names, "classifier": classifier}


@pytest.fixture(scope="module")
def trained(user, tmp_path_factory):
    """A short GANMEX run through the API on the image folder."""
    out = tmp_path_factory.mktemp("api") / "ganmex.pt"
    data = user["data"]
    config = GanmexTrainingConfig(steps=80, checkpoint_every=80, sample_every=80, **TINY)
    model, history = train_ganmex(data, user["classifier"], config, out=out, samples_dir=out.parent / "samples",
                                  progress=False)
    return out, model, history


def test_folder_images_of_any_size_come_at_the_input_shape_with_the_classifiers_labels(user):
    data = user["data"]
    assert data.train.x.shape[1:] == (3, 32, 32) and data.train.class_names == user["names"]
    assert len(data.train) + len(data.test) == 360 and sorted(np.unique(data.train.y)) == [0, 1, 2]
    # Stretching 40x40 / 48x40 back to 32x32: the original shapes up to resampling error.
    shapes = load_shapes(360, 1, image_size=32, backgrounds=("plain",), seed=0).train
    closest = np.abs(data.test.x[:5, None] - shapes.x[None]).mean((2, 3, 4)).min(1)
    assert closest.max() < 0.03, closest
    renamed = load_torch_classifier(factory=f"{user['root'] / 'tiny_resnet.py'}:build",
                                    weights=user["root"] / "weights.pt", input_shape=(3, 32, 32), preprocessing=PIPELINE)
    with pytest.raises(InputError, match="name each folder after its class"):
        training_images(user["root"] / "images", renamed)


def test_api_run_reloads_self_contained_and_moves_images_toward_the_target(user, trained):
    out, model, history = trained
    assert history["final"]["similarity"] < 0.1
    loaded = load_model(out)
    assert isinstance(loaded.classifier.model, torch.jit.ScriptModule)  # no code of the user's needed to load it
    assert loaded.classifier.metadata["preprocessing"] == PIPELINE.to_manifest()
    x = user["data"].test.x[:30]
    with torch.no_grad():
        original = user["classifier"].model(torch.from_numpy(x))
        reloaded = loaded.classifier.model(torch.from_numpy(x))
    torch.testing.assert_close(reloaded, original, rtol=1e-5, atol=1e-5)

    target = (user["data"].test.y[:30] + 1) % 3
    generated = loaded.baseline(x, target)
    assert generated.shape == x.shape and generated.dtype == np.float32
    assert generated.min() >= 0.0 and generated.max() <= 1.0
    np.testing.assert_allclose(generated, model.baseline(x, target), atol=1e-6)
    rows = np.arange(len(x))
    with torch.no_grad():
        p_input = torch.softmax(original, 1).numpy()[rows, target]
        p_generated = torch.softmax(loaded.classifier.model(torch.from_numpy(generated)), 1).numpy()[rows, target]
    # 80 steps (measured: 0.15 -> 0.45 on average, higher for 27 of 30 images); assert a margin below that.
    assert p_generated.mean() > p_input.mean() + 0.1, (p_input.mean(), p_generated.mean())
    assert (p_generated > p_input).mean() > 0.6


def test_altered_checkpoints_and_weights_are_refused(user, trained, tmp_path):
    out, _, _ = trained
    payload = torch.load(out, weights_only=True)
    archive = bytearray(payload["classifier"]["archive"])
    archive[len(archive) // 2] ^= 0xFF
    payload["classifier"]["archive"] = bytes(archive)
    torch.save(payload, tmp_path / "flipped.pt")
    with pytest.raises(InputError, match="sha256"):
        load_model(tmp_path / "flipped.pt")

    # Another archive with its own sha256, but not the weights the generator was trained against.
    module = torch.load(out, weights_only=True)
    other = load_model(out).classifier.model
    with torch.no_grad():
        next(iter(other.parameters())).mul_(1.01)
    import hashlib
    import io

    buffer = io.BytesIO()
    torch.jit.save(other, buffer)
    module["classifier"]["archive"] = buffer.getvalue()
    module["classifier"]["archive_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    torch.save(module, tmp_path / "swapped.pt")
    with pytest.raises(InputError, match="fingerprint"):
        load_model(tmp_path / "swapped.pt")

    # Resuming with a changed weights file is refused by the training loop's classifier check.
    state = torch.load(user["root"] / "weights.pt", weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 0.5
    torch.save(state, tmp_path / "tampered.pt")
    tampered = load_torch_classifier(factory=f"{user['root'] / 'tiny_resnet.py'}:build", weights=tmp_path / "tampered.pt",
                                     input_shape=(3, 32, 32), class_names=user["names"], preprocessing=PIPELINE)
    copy = tmp_path / "resume.pt"
    copy.write_bytes(out.read_bytes())
    config = GanmexTrainingConfig(steps=90, checkpoint_every=80, sample_every=80, **TINY)
    with pytest.raises(InputError, match="classifier"):
        train_ganmex(user["data"], tampered, config, out=copy, resume=True, progress=False)


def test_cli_trains_from_factory_and_weights_then_exports_a_bundle_with_the_pipeline(user, tmp_path):
    root, out = user["root"], tmp_path / "ganmex.pt"
    result = xaisdk("train", "ganmex", "--dataset", "images", "--factory", "tiny_resnet:build", "--weights", "weights.pt",
                    "--input-shape", "3,32,32", "--classes", "labels.txt", "--mean", ",".join(map(str, MEAN)),
                    "--std", ",".join(map(str, STD)), "--out", str(out), "--steps", "6", "--batch-size", "8",
                    "--generator-channels", "8", "--sample-every", "6", "--checkpoint-every", "6", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "trained 6 steps" in result.stdout
    model = load_model(out)
    assert model.classifier.class_names == user["names"] and model.generator.config.input_shape == (3, 32, 32)

    bundle = tmp_path / "bundle"
    report = export_bundle(out, bundle)
    assert "generator_ganmex.onnx" in report.files and report.checks["grad_rel_err"] < 1e-4
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["preprocessing"]["mean"] == list(MEAN) and manifest["preprocessing"]["std"] == list(STD)
    x = user["data"].test.x[:2]
    for explainer in (Explainer.load(bundle), Explainer(model)):
        explanation = explainer.explain(x, "runner-up")
        assert explanation.baseline_name == "ganmex" and explanation.attributions.shape == x.shape


def test_cli_refusals_name_the_way_that_works(user, tmp_path):
    runner = CliRunner()
    root = user["root"]
    cases = [
        (["--classifier", str(root / "weights.pt")], "--factory module:function --weights"),
        (["--classifier", str(tmp_path / "model.onnx")], "torch classifier"),
        (["--classifier", str(root / "weights.pt"), "--factory", "tiny_resnet:build"], "exactly one of"),
        ([], "exactly one of"),
    ]
    for extra, message in cases:
        result = runner.invoke(main, ["train", "ganmex", "--dataset", str(root / "images"), "--out",
                                      str(tmp_path / "g.pt"), *extra])
        assert result.exit_code == 1, (extra, result.output)
        assert message in result.output, (extra, result.output)
    assert not (tmp_path / "g.pt").exists()


@pytest.mark.parametrize("side", [32, 64, 96, 128])
def test_generator_makes_colour_images_of_each_size(side):
    generator = StarGenerator(GeneratorConfig.for_input((3, side, side), 4, base_channels=4, n_res=1, input_skip=True))
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        out = generator(x, torch.tensor([1, 3]))
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
