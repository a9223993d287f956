"""Any production classifier in: torch modules built by code, TorchScript, ONNX files from any framework,
with their pixel pipeline (per-channel mean/std, channel order, resize) in the bundle. Checked against
torch autograd and Captum on the user's own (normalised) model, and the completeness axiom."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from captum.attr import IntegratedGradients
from PIL import Image
from torch import nn

from xaisdk import Explainer
from xaisdk.deploy.export import export_bundle
from xaisdk.deploy.onnx_intake import export_onnx_classifier
from xaisdk.deploy.torch_intake import load_torch_classifier, read_class_names
from xaisdk.errors import InputError
from xaisdk.runtime.preprocessing import Preprocessing, fit_images

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET = Preprocessing(mean=MEAN, std=STD, resize="shorter-side-crop")


def user_net(seed: int = 0, flatten_batch_one: bool = False) -> nn.Module:
    """A small normalised-input classifier with BN statistics away from the identity."""
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
            self.head = nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.features(x)
            return self.head(h.reshape(1, -1) if flatten_batch_one else h.flatten(1))

    net = Net()
    with torch.no_grad():
        bn = net.features[1]
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


def normalise(pixels: np.ndarray, spec: Preprocessing = IMAGENET) -> torch.Tensor:
    mean, std = spec.per_channel(pixels.shape[1])
    ordered = pixels[:, ::-1].copy() if spec.channel_order == "BGR" else pixels
    return torch.from_numpy((ordered - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)).float()


def captum_ig(net: nn.Module, z: torch.Tensor, zb: torch.Tensor, source: int, target: int, n_steps: int) -> np.ndarray:
    """Captum IG of S_source - S_target w.r.t. the model's own (normalised) input."""
    ig = IntegratedGradients(lambda t: net(t)[:, source] - net(t)[:, target])
    return ig.attribute(z, zb, n_steps=n_steps, method="gausslegendre", internal_batch_size=1).detach().numpy()


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


# --- the pixel pipeline --------------------------------------------------------------------------


def test_fit_images_reads_every_layout_and_dtype_alike():
    rng = np.random.default_rng(0)
    hwc = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    spec = Preprocessing(resize="stretch")
    want, single = fit_images(hwc, (3, 10, 12), spec)
    assert single and want.shape == (1, 3, 10, 12)
    for variant in (hwc.transpose(2, 0, 1), hwc[None], hwc.transpose(2, 0, 1)[None], hwc.astype(np.float64) / 255):
        got, _ = fit_images(variant, (3, 10, 12), spec)
        np.testing.assert_allclose(got, want, atol=1e-6)
    # the resize is Pillow's antialiased bilinear filter, channel by channel
    reference = np.stack([np.asarray(Image.fromarray(hwc[..., c].astype(np.float32) / 255, "F").resize((12, 10), Image.BILINEAR))
                          for c in range(3)])
    np.testing.assert_allclose(want[0], reference, atol=1e-6)


def test_shorter_side_crop_is_resize_then_centre_crop():
    image = np.zeros((3, 100, 200), np.float32)
    image[:, :, 100:] = 1.0  # right half white
    batch, _ = fit_images(image, (3, 28, 28), Preprocessing(resize="shorter-side-crop", resize_shorter_to=28))
    # 100x200 -> 28x56, centre 28 columns = columns 14..41: the left 14 black, the right 14 white (one blended column each side)
    assert batch.shape == (1, 3, 28, 28)
    assert batch[0, :, :, :13].max() < 1e-6 and batch[0, :, :, 15:].min() > 1 - 1e-6


def test_pixel_pipeline_refusals():
    with pytest.raises(InputError, match="float pixels must lie in"):
        fit_images(np.full((3, 8, 8), 2.0, np.float32), (3, 8, 8), IMAGENET)
    with pytest.raises(InputError, match="no resize policy"):
        fit_images(np.zeros((3, 9, 8), np.float32), (3, 8, 8), Preprocessing(mean=MEAN, std=STD))
    with pytest.raises(InputError, match="give both"):
        Preprocessing(mean=MEAN)
    with pytest.raises(InputError, match="positive"):
        Preprocessing(mean=MEAN, std=(0.2, 0.0, 0.2))
    with pytest.raises(InputError, match="4 values for a model with 3"):
        load_torch_classifier(factory="torch.nn:Flatten", input_shape=(3, 1, 1),
                              preprocessing=Preprocessing(mean=(0.1,) * 4, std=(1.0,) * 4))


# --- torch modules: export_bundle(nn.Module) ------------------------------------------------------


@pytest.fixture(scope="module")
def normalised_bundle(tmp_path_factory):
    net = user_net()
    out = tmp_path_factory.mktemp("intake") / "bundle"
    report = export_bundle(net, out, input_shape=(3, 32, 32), class_names=("a", "b", "c", "d"), preprocessing=IMAGENET)
    return net, out, report


def test_normalised_module_exports_and_maps_are_in_pixel_space(normalised_bundle):
    net, out, report = normalised_bundle
    assert report.checks["grad_rel_err"] < 1e-4 and report.checks["grad_fd_rel_err"] < 1e-4
    explainer = Explainer.load(out)
    assert explainer.backend.preprocessing == IMAGENET and explainer.class_names == ("a", "b", "c", "d")
    pixels = np.random.default_rng(1).random((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(explainer.logits(pixels), net(normalise(pixels)).detach().numpy(), rtol=1e-4, atol=1e-5)
    e = explainer.explain(pixels, target="runner-up", method="ig", baseline="zero", n_steps=64, rule="gausslegendre")
    assert e.baseline_name == "zero"
    # IG w.r.t. pixels equals Captum's IG w.r.t. the normalised input from the normalised black image
    for i in range(2):
        want = captum_ig(net, normalise(pixels[i:i + 1]), normalise(np.zeros((1, 3, 32, 32), np.float32)),
                         int(e.source[i]), int(e.target[i]), 64)
        assert rel(e.attributions[i], want[0]) < 1e-4
    gap = e.score - e.baseline_score
    assert np.all(np.abs(e.convergence_delta) < 1e-2 * np.abs(gap))  # 64 nodes over ReLU kinks


def test_images_of_any_size_are_resized_by_the_bundle_policy(normalised_bundle):
    net, out, _ = normalised_bundle
    explainer = Explainer.load(out)
    photo = (np.random.default_rng(2).random((48, 64, 3)) * 255).astype(np.uint8)
    fitted, _ = fit_images(photo, (3, 32, 32), IMAGENET)
    np.testing.assert_allclose(explainer.logits(photo), net(normalise(fitted)).detach().numpy()[0], rtol=1e-4, atol=1e-5)
    e = explainer.explain(photo, target=1, source=0, method="occlusion", baseline="zero")
    assert e.attributions.shape == (3, 32, 32)
    with pytest.raises(InputError, match="float pixels must lie in"):
        explainer.explain(normalise(fitted).numpy(), target=1)  # a normalised tensor is not a picture


def test_torch_backend_applies_the_same_pipeline(normalised_bundle):
    net, out, _ = normalised_bundle
    clf = load_torch_classifier(factory="torch.nn:Flatten", input_shape=(4, 1, 1))  # factories build any module
    assert clf.num_classes == 4
    from xaisdk.deploy.torch_intake import classifier_from_module

    torch_explainer = Explainer(classifier_from_module(net, input_shape=(3, 32, 32), preprocessing=IMAGENET))
    onnx_explainer = Explainer.load(out)
    photo = (np.random.default_rng(3).random((40, 50, 3)) * 255).astype(np.uint8)
    a = torch_explainer.explain(photo, target=2, source=0, n_steps=32)
    b = onnx_explainer.explain(photo, target=2, source=0, n_steps=32)
    assert rel(b.attributions, a.attributions) < 1e-4 and a.baseline_name == b.baseline_name == "zero"


def test_bgr_models_get_rgb_pixels(tmp_path):
    net = user_net(seed=5)
    spec = Preprocessing(mean=MEAN, std=STD, channel_order="BGR")
    report = export_bundle(net, tmp_path / "bgr", input_shape=(3, 16, 16), preprocessing=spec)
    explainer = Explainer.load(report.path)
    pixels = np.random.default_rng(4).random((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(explainer.logits(pixels), net(normalise(pixels, spec)).detach().numpy(), rtol=1e-4, atol=1e-5)


# --- files: factory + weights, TorchScript, refusals ------------------------------------------------


@pytest.fixture()
def user_files(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def tiny():
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 3))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(7)
    import importlib

    module = importlib.import_module("user_models")
    net = module.tiny().eval()
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    torch.save(net, tmp_path / "pickled.pt")
    torch.jit.script(net).save(str(tmp_path / "scripted.pt"))
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    return tmp_path, net


def test_factory_weights_and_torchscript_give_the_same_model(user_files):
    folder, net = user_files
    x = torch.rand(2, 3, 8, 8)
    from_factory = load_torch_classifier(factory="user_models:tiny", weights=folder / "sd.pt", input_shape=(3, 8, 8),
                                         class_names=read_class_names(folder / "labels.txt"))
    scripted = load_torch_classifier(folder / "scripted.pt", input_shape=(3, 8, 8))
    assert from_factory.class_names == ("cat", "dog", "bird")
    with torch.no_grad():
        torch.testing.assert_close(from_factory.model(x), net(x))
        torch.testing.assert_close(scripted.model(x), net(x))
    report = export_bundle(scripted, folder / "bundle")  # DeepLIFT is checked by completeness where fx cannot trace
    assert report.checks["deeplift_completeness_rel_err"] < 1e-4 and report.deeplift_unavailable is None


@pytest.mark.parametrize("kwargs, message", [
    ({"path": "pickled.pt"}, "never loads because unpickling runs code"),
    ({"path": "sd.pt"}, "--factory module:function --weights"),
    ({"path": "labels.txt"}, "not a readable torch checkpoint"),
    ({"factory": "user_models:nothing"}, "has no callable 'nothing'"),
    ({"factory": "user_models"}, "expected 'module:function'"),
    ({"factory": "torch.nn:Flatten", "weights": "sd.pt"}, "do not fit the model"),
    ({"path": "scripted.pt", "input_shape": None}, "give --input-shape"),
    ({"path": "scripted.pt", "input_shape": (3, 8)}, "three positive integers"),
    ({"factory": "user_models:tiny", "input_shape": (1, 8, 8)}, "does not run on inputs of shape"),
])
def test_refusals_name_the_way_that_works(user_files, kwargs, message):
    folder, _ = user_files
    options = {"input_shape": (3, 8, 8), **kwargs}
    for key in ("path", "weights"):
        if key in options:
            options[key] = folder / options[key]
    path = options.pop("path", None)
    with pytest.raises(InputError, match=message):
        load_torch_classifier(path, **options)


# --- ONNX files from any framework -------------------------------------------------------------------


def onnx_file(net: nn.Module, path, shape=(3, 32, 32), dynamic: bool = True) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, *shape), buffer, dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["scores"], dynamic_axes={"images": {0: "b"}, "scores": {0: "b"}} if dynamic else None)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_onnx_file_exports_and_agrees_with_captum_on_the_original(tmp_path, fixed_batch):
    net = user_net(seed=3, flatten_batch_one=fixed_batch)  # a hard-coded batch of 1, as some exporters write
    onnx_file(net, tmp_path / "model.onnx", dynamic=not fixed_batch)
    report = export_onnx_classifier(tmp_path / "model.onnx", tmp_path / "bundle", preprocessing=IMAGENET)
    assert report.batch == (1 if fixed_batch else None)
    assert report.checks["grad_fd_rel_err"] < 1e-4 and report.checks["logits_rel_err"] < 1e-5
    explainer = Explainer.load(report.path)
    pixels = np.random.default_rng(5).random((3, 3, 32, 32)).astype(np.float32)
    e = explainer.explain(pixels, target="runner-up", n_steps=32, rule="gausslegendre")
    for i in range(3):
        want = captum_ig(net, normalise(pixels[i:i + 1]), normalise(np.zeros((1, 3, 32, 32), np.float32)),
                         int(e.source[i]), int(e.target[i]), 32)
        assert rel(e.attributions[i], want[0]) < 1e-4
    d = explainer.explain(pixels, target="runner-up", method="deeplift", baseline=0.5)
    assert np.all(np.abs(d.convergence_delta) < 1e-4 * np.abs(d.score - d.baseline_score).max() + 1e-6)


def test_onnx_intake_runs_without_torch(tmp_path):
    onnx_file(user_net(seed=4), tmp_path / "model.onnx")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any attempt to import torch fails
        from xaisdk.deploy.onnx_intake import export_onnx_classifier
        from xaisdk.runtime.preprocessing import Preprocessing
        from xaisdk import Explainer
        import numpy as np
        report = export_onnx_classifier({str(tmp_path / "model.onnx")!r}, {str(tmp_path / "bundle")!r},
                                        preprocessing=Preprocessing(mean={MEAN}, std={STD}))
        e = Explainer.load(report.path).explain(np.zeros((32, 32, 3), np.uint8) + 100, target="runner-up", n_steps=16)
        print(sorted(report.files), e.attributions.shape)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "'classifier_grad.onnx'" in result.stdout and "(3, 32, 32)" in result.stdout


def test_onnx_refusals(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07 not protobuf at all \xff\xff")
    with pytest.raises(InputError, match="not an ONNX model"):
        export_onnx_classifier(tmp_path / "junk.onnx", tmp_path / "b")
    onnx_file(user_net(), tmp_path / "m.onnx")
    with pytest.raises(InputError, match="contradicts"):
        export_onnx_classifier(tmp_path / "m.onnx", tmp_path / "b", input_shape=(3, 28, 28))
    model = onnx.load(str(tmp_path / "m.onnx"))
    model.graph.node[2].domain = "com.microsoft"
    onnx.save(model, str(tmp_path / "contrib.onnx"))
    with pytest.raises(InputError):
        export_onnx_classifier(tmp_path / "contrib.onnx", tmp_path / "b")
    assert not (tmp_path / "b").exists()



class Mean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1)


class ChannelsLast(nn.Module):
    """A Keras-style classifier: (N, H, W, C) input, as TensorFlow files exported by tf2onnx take."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("symbolic_size", [False, True])
def test_channels_last_onnx_files_get_a_transpose_and_channels_first_maps(tmp_path, symbolic_size):
    torch.manual_seed(6)
    # global average pooling as a mean: the TorchScript exporter cannot write adaptive pooling of symbolic sizes
    net = user_net(seed=6) if not symbolic_size else nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(2), Mean(), nn.Linear(8, 4)).eval()
    buffer = io.BytesIO()
    axes = {"images": {0: "b", 1: "h", 2: "w"} if symbolic_size else {0: "b"}, "scores": {0: "b"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ChannelsLast(net).eval(), torch.zeros(1, 32, 32, 3), buffer, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["scores"], dynamic_axes=axes)
    (tmp_path / "keras.onnx").write_bytes(buffer.getvalue())
    shape = (3, 32, 32) if symbolic_size else None  # C, H, W in either layout
    report = export_onnx_classifier(tmp_path / "keras.onnx", tmp_path / "bundle", preprocessing=IMAGENET, input_shape=shape)
    assert report.channels_last and report.checks["grad_fd_rel_err"] < 1e-4
    explainer = Explainer.load(report.path)
    assert explainer.backend.input_shape == (3, 32, 32)
    pixels = np.random.default_rng(8).random((2, 3, 32, 32)).astype(np.float32)
    e = explainer.explain(pixels, target="runner-up", n_steps=32, rule="gausslegendre")
    for i in range(2):  # the channels-first network on the same normalised pixels: the same function
        want = captum_ig(net, normalise(pixels[i:i + 1]), normalise(np.zeros((1, 3, 32, 32), np.float32)),
                         int(e.source[i]), int(e.target[i]), 32)
        assert e.attributions[i].shape == (3, 32, 32) and rel(e.attributions[i], want[0]) < 1e-4
    with pytest.raises(InputError, match="--layout NHWC"):
        export_onnx_classifier(tmp_path / "keras.onnx", tmp_path / "b2", input_shape=(3, 32, 32), layout="NCHW")
    with pytest.raises(InputError, match="layout: expected one of auto, NCHW, NHWC"):
        export_onnx_classifier(tmp_path / "keras.onnx", tmp_path / "b2", layout="HWC")
    assert not (tmp_path / "b2").exists()


class ViewBySize(nn.Module):
    """The classic CNN flatten ``h.view(h.size(0), -1)``: with a dynamic batch the graph computes the
    new shape from Shape(h), which the DeepLIFT graph's baseline pass once copied into a second writer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 15 * 15, 5)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.relu(self.conv(x)))
        return self.fc(h.view(h.size(0), -1))


@pytest.mark.parametrize("intake", ["torch", "onnx"])
def test_view_by_size_models_export_with_deeplift(tmp_path, intake):
    """DeepLIFT against the torch rescale rule in float64 (not Captum 0.9: its hooks give adjacent ReLU and
    MaxPool2d modules stale gradients, captum#1104, fixed after 0.9), and complete."""
    from xaisdk.attribution.deeplift import rescale_multipliers
    from xaisdk.runtime.backend import class_weights

    torch.manual_seed(2)
    net = ViewBySize().eval()
    if intake == "torch":
        report = export_bundle(net, tmp_path / "bundle", input_shape=(3, 32, 32))
    else:
        onnx_file(net, tmp_path / "model.onnx")
        report = export_onnx_classifier(tmp_path / "model.onnx", tmp_path / "bundle")
    assert report.deeplift_unavailable is None
    pixels = np.random.default_rng(3).random((3, 3, 32, 32))
    e = Explainer.load(report.path).explain(pixels.astype(np.float32), target="runner-up", method="deeplift", baseline=0.5)
    x, base = torch.from_numpy(pixels), torch.full((3, 3, 32, 32), 0.5, dtype=torch.float64)
    weights = torch.from_numpy(class_weights(e.source, e.target, 5)).double()
    want = ((x - base) * rescale_multipliers(net.double(), x, base, weights)).numpy()
    for i in range(3):
        assert rel(e.attributions[i], want[i]) < 1e-4
    assert np.abs(e.convergence_delta).max() < 1e-4 * np.abs(e.score - e.baseline_score).max()


def test_an_alexnet_style_onnx_file_with_lrn_exports(tmp_path):
    """LRN (AlexNet, GoogLeNet and CaffeNet in the ONNX model zoo) through the whole ONNX intake: the
    float64 finite-difference check needs a channel-wise LRN (onnx's reference loops over the batch)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    weights = {"conv_w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
               "fc_w": rng.standard_normal((6, 4)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["data", "conv_w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("LRN", ["r"], ["n"], name="norm1", size=5, alpha=1e-2, beta=0.75, bias=1.0),
             helper.make_node("GlobalAveragePool", ["n"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fc_w"], ["prob"], name="fc")]
    graph = helper.make_graph(nodes, "alexnet_style", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "alexnet.onnx"))
    report = export_onnx_classifier(tmp_path / "alexnet.onnx", tmp_path / "bundle")
    assert report.checks["grad_fd_rel_err"] < 1e-4 and report.deeplift_unavailable.startswith("DeepLIFT's rescale rule")
    pixels = rng.random((2, 3, 16, 16)).astype(np.float32)
    e = Explainer.load(report.path).explain(pixels, target="runner-up", n_steps=64, rule="gausslegendre")
    assert np.abs(e.convergence_delta).max() < 1e-3 * np.abs(e.score - e.baseline_score).max()


def _keras_style_file(path) -> None:
    """What tf2onnx writes for a small Keras model: NHWC uint8-range input with Rescaling inside, Transposes
    around channels-first convolutions with auto_pad SAME, ReLU6 as Clip, 'same' average pooling (padding
    excluded), global pooling as ReduceMean over H, W, Dense as MatMul + Add, and a Softmax output "probs"
    next to an inner tensor named "logits" (the name the bundle's own output takes)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    def f32(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = {"W1": f32(8, 3, 3, 3, scale=0.3), "B1": f32(8, scale=0.1), "lo": np.array(0.0, np.float32),
             "hi": np.array(6.0, np.float32), "Wd": f32(8, 1, 3, 3), "Wf": f32(8, 4), "bf": f32(4),
             "scale": np.array(1 / 127.5, np.float32), "shift": np.array(-1.0, np.float32), "axes": np.array([1, 2], np.int64)}
    node = helper.make_node
    nodes = [node("Mul", ["input_1", "scale"], ["s"], name="rescaling/mul"),
             node("Add", ["s", "shift"], ["r"], name="rescaling/add"),
             node("Transpose", ["r"], ["t"], perm=[0, 3, 1, 2], name="to_nchw"),
             node("Conv", ["t", "W1", "B1"], ["c1"], auto_pad="SAME_UPPER", strides=[2, 2], name="conv1"),
             node("Clip", ["c1", "lo", "hi"], ["a1"], name="relu6"),
             node("Conv", ["a1", "Wd"], ["c2"], auto_pad="SAME_UPPER", group=8, name="depthwise"),
             node("Clip", ["c2", "lo", "hi"], ["a2"], name="relu6_2"),
             node("AveragePool", ["a2"], ["p"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER", name="pool"),
             node("Transpose", ["p"], ["pt"], perm=[0, 2, 3, 1], name="to_nhwc"),
             node("ReduceMean", ["pt", "axes"], ["g"], keepdims=0, name="global_pool"),
             node("MatMul", ["g", "Wf"], ["m"], name="dense/matmul"), node("Add", ["m", "bf"], ["logits"], name="dense/add"),
             node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax")]
    images = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__0", 24, 24, 3])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["unk__0", 4])
    graph = helper.make_graph(nodes, "keras", [images], [probs], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_a_keras_style_onnx_file_exports_and_explains(tmp_path):
    import onnxruntime as ort

    _keras_style_file(tmp_path / "keras.onnx")
    to_255 = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # the file takes 0..255 pixels
    report = export_onnx_classifier(tmp_path / "keras.onnx", tmp_path / "bundle", preprocessing=to_255)
    assert report.channels_last and report.checks["grad_fd_rel_err"] < 1e-4 and "softmax" in report.deeplift_unavailable
    explainer = Explainer.load(report.path)
    photos = np.random.default_rng(1).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    original = ort.InferenceSession(str(tmp_path / "keras.onnx"), providers=["CPUExecutionProvider"])
    want = original.run(None, {"input_1": photos.astype(np.float32)})[0]
    np.testing.assert_allclose(explainer.logits(photos), want, rtol=1e-5, atol=1e-6)
    e = explainer.explain(photos, target="runner-up", n_steps=64)
    assert e.attributions.shape == (2, 3, 24, 24)
    assert np.all(np.abs(e.convergence_delta) < 0.01 * np.abs(e.score - e.baseline_score))


class ParametersNamedLikeTheBundle(nn.Module):
    """Top-level parameters export as initializers named after the attribute: these hold the names of the
    gradient graphs' own inputs and outputs (w, baseline, score, grad) and of the classifier's (x)."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.score = nn.Parameter(torch.randn(5, 48)), nn.Parameter(torch.randn(5))
        self.grad, self.baseline, self.x = (nn.Parameter(torch.rand(48) + 0.5) for _ in range(3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = torch.relu(pixels.flatten(1) * self.grad - self.baseline) * self.x
        return h @ self.w.t() + self.score


def test_parameters_named_like_the_bundles_tensors_export(tmp_path):
    torch.manual_seed(5)
    net = ParametersNamedLikeTheBundle().eval()
    report = export_bundle(net, tmp_path / "bundle", input_shape=(3, 4, 4))
    assert report.deeplift_unavailable is None
    explainer = Explainer.load(report.path)
    x = np.random.default_rng(6).random((2, 3, 4, 4)).astype(np.float32)
    got = explainer.explain(x, target=1, source=0, method="gradient")
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = net(xt)
    (logits[:, 0] - logits[:, 1]).sum().backward()
    assert rel(got.attributions, xt.grad.numpy()) < 1e-5
    d = explainer.explain(x, target=1, source=0, method="deeplift", baseline="zero")
    assert np.abs(d.convergence_delta).max() < 1e-4 * np.abs(d.score - d.baseline_score).max()


class FrozenFeatures(nn.Module):
    """A feature extractor run under torch.no_grad() inside forward: the logits do not reach the input."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = torch.relu(self.features(x)).mean((2, 3))
        return self.fc(h)


class StopGradient(nn.Module):
    """A detach inside forward: torch autograd is no longer the derivative of the function."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.features(x)).mean((2, 3))
        return self.fc(h + h.detach() ** 2)


def test_forwards_that_cut_autograd_are_refused_with_the_reason(tmp_path):
    from xaisdk.deploy.export_errors import VerificationError
    from xaisdk.deploy.torch_intake import classifier_from_module

    torch.manual_seed(0)
    with pytest.raises(InputError, match=r"do not depend on its input through torch autograd.*torch.no_grad\(\)"):
        classifier_from_module(FrozenFeatures(), input_shape=(3, 8, 8))
    with pytest.raises(InputError, match="do not depend on its input through torch autograd"):
        export_bundle(FrozenFeatures(), tmp_path / "frozen", input_shape=(3, 8, 8))
    with pytest.raises(VerificationError, match="torch's own autograd is .* from float64 differences.*detaches"):
        export_bundle(StopGradient().eval(), tmp_path / "detached", input_shape=(3, 8, 8))
    assert not (tmp_path / "frozen").exists() and not (tmp_path / "detached").exists()


def test_a_convolutional_head_with_n_k_1_1_output_is_flattened(tmp_path):
    """SqueezeNet-style files (the ONNX model zoo's among them) end in a 1x1 convolution and global pooling:
    their output is (N, K, 1, 1). The bundle flattens it to logits (N, K)."""
    import onnxruntime as ort

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(8, 6, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1)).eval()
    onnx_file(net, tmp_path / "squeeze.onnx")
    report = export_onnx_classifier(tmp_path / "squeeze.onnx", tmp_path / "bundle")
    assert report.deeplift_unavailable is None and report.checks["grad_fd_rel_err"] < 1e-4
    explainer = Explainer.load(report.path)
    x = np.random.default_rng(2).random((2, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "squeeze.onnx"), providers=["CPUExecutionProvider"])
    original = session.run(None, {"images": x})[0]
    assert original.shape == (2, 6, 1, 1)
    np.testing.assert_allclose(explainer.logits(x), original.reshape(2, 6), rtol=1e-5, atol=1e-6)
    e = explainer.explain(x, target="runner-up", method="deeplift", baseline=0.5)
    assert np.abs(e.convergence_delta).max() < 1e-4 * np.abs(e.score - e.baseline_score).max() + 1e-7

# --- defaults for user models ------------------------------------------------------------------------


def test_defaults_without_a_generator(normalised_bundle):
    _, out, _ = normalised_bundle
    explainer = Explainer.load(out)
    photo = (np.random.default_rng(6).random((32, 32, 3)) * 255).astype(np.uint8)
    e = explainer.explain(photo, target="runner-up", n_steps=16)
    assert e.baseline_name == "zero" and np.all(e.baseline == 0)
    with pytest.raises(InputError, match="baseline='zero'"):
        explainer.explain(photo, target=1, source=0, baseline="ganmex")
    default = explainer.explain(photo, target=1, source=0, method="occlusion", baseline="zero")
    explicit = explainer.explain(photo, target=1, source=0, method="occlusion", baseline="zero", window=2, stride=1)
    np.testing.assert_array_equal(default.attributions, explicit.attributions)  # 32 px: window 2, stride 1


def test_the_readme_example_runs(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Explain your own model"):]
    block = section[section.index("```python") + len("```python"):]
    block = block[:block.index("```")]
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    name, shape, target = result.stdout.strip().rsplit(" ", 1)[0].split(" ", 1) + [result.stdout.split()[-1]]
    assert name == "zero" and shape == "(3, 64, 64)" and target in ("cat", "dog", "bird")


@pytest.mark.parametrize("name", ["resnet18", "vit_b_16"])
def test_models_from_the_dynamo_exporter(tmp_path, name):
    """torch.onnx's dynamo exporter writes other op patterns (opset 18, ReduceMean/Reshape for the pools,
    Gather for the class token): the ONNX intake takes them, and the gradient equals torch autograd."""
    from xaisdk.bench.zoo import ZOO, build
    from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

    entry = ZOO[name]
    net = build(name, num_classes=5, image_size=entry.small_size, width=entry.small_width)
    shape = (3, entry.small_size, entry.small_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.zeros(2, *shape),), dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(tmp_path / "model.onnx"))
    report = export_onnx_classifier(tmp_path / "model.onnx", tmp_path / "bundle")
    assert report.batch is None and report.checks["grad_fd_rel_err"] < 1e-4
    backend = OnnxRuntimeBackend(report.path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(8).random((3, *shape)).astype(np.float32)
    w = np.zeros((3, 5), np.float32)
    w[:, 1], w[:, 3] = 1.0, -1.0
    _, got = backend.score_gradient(x, w)
    xt = torch.from_numpy(x).requires_grad_(True)
    (net(xt) * torch.from_numpy(w)).sum().backward()
    assert rel(got, xt.grad.numpy()) < 1e-4


def test_an_onnx_file_with_unnamed_nodes_exports(tmp_path):
    """Node names are optional in ONNX: the DeepLIFT graph's baseline copies of unnamed nodes must not all be named
    "ref/" (ONNX Runtime refuses duplicate names), and a BatchNormalization node of another exporter is fine."""
    rng = np.random.default_rng(0)

    def array(name, shape, low=-0.5, high=0.5):
        return onnx.numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    h = onnx.helper
    inits = [array("w1", (4, 1, 3, 3)), array("b1", (4,)), array("scale", (4,), 0.5, 1.5), array("shift", (4,)),
             array("mean", (4,)), array("var", (4,), 0.5, 2.0), array("w2", (3, 4, 3, 3)), array("w3", (5, 3 * 8 * 8))]
    nodes = [h.make_node("Conv", ["image", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             h.make_node("BatchNormalization", ["a", "scale", "shift", "mean", "var"], ["bn"], epsilon=1e-3),
             h.make_node("Relu", ["bn"], ["r1"]), h.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c2"], ["r2"]), h.make_node("Flatten", ["r2"], ["flat"]),
             h.make_node("Gemm", ["flat", "w3"], ["scores"], transB=1)]
    graph = h.make_graph(nodes, "unnamed", [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["b", 1, 8, 8])],
                         [h.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["b", 5])], inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "model.onnx")
    report = export_onnx_classifier(tmp_path / "model.onnx", tmp_path / "bundle")
    assert report.deeplift_unavailable is None and report.checks["deeplift_completeness_rel_err"] < 1e-4
    explainer = Explainer.load(report.path)
    e = explainer.explain(np.random.default_rng(1).random((2, 1, 8, 8)).astype(np.float32), target="runner-up", method="deeplift",
                          baseline=0.5)
    assert np.all(np.abs(e.convergence_delta) < 1e-4 * np.abs(e.score - e.baseline_score).max() + 1e-6)
