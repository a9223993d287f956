"""The relu-path from a bundle, without torch: the split written at export (dense and graph tails, a folded
batch norm), IG through it against float64 autograd and the plain gradient graph, the models it must
refuse, and bundles edited to fool it."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xaisdk.deploy.export import export_bundle
from xaisdk.deploy.relu_path_export import split_opening
from xaisdk.errors import InputError
from xaisdk.methods import drivers
from xaisdk.methods.quadrature import path_rule
from xaisdk.models import shipped_classifier_path
from xaisdk.runtime import relu_path_core
from xaisdk.runtime.conv_numpy import conv2d, conv2d_input
from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

pytestmark = pytest.mark.skipif(not relu_path_core.available(), reason="the relu-path needs the C++ extension (xaisdk._ext)")
CPU = ["CPUExecutionProvider"]


def _torch_model(seed: int, layers) -> nn.Module:
    """``layers()`` built after seeding torch with ``seed``, as an eval-mode Sequential."""
    torch.manual_seed(seed)
    model = nn.Sequential(*layers()).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics that are not the identity, so a lost fold shows
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return model


def graph_tail_model(seed: int = 1) -> nn.Module:
    """Conv -> ReLU -> strided Conv, then ReLU, max pooling and a linear layer: the tail runs as a graph."""
    return _torch_model(seed, lambda: [nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                                       nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)])


def batch_norm_model() -> nn.Module:
    """Conv -> BatchNorm -> ReLU -> Conv on three channels, no bias on the first conv (as in VGG-BN / ResNet stems)."""
    return _torch_model(2, lambda: [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(8, 5)])


class SkipFromRelu(nn.Module):
    """The first ReLU's output feeds the second conv and a skip connection: no split (the skip sees the layer)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        return self.fc((self.conv2(h) + h).flatten(1))


def ig_float64(model: nn.Module, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray, steps: int) -> np.ndarray:
    """Midpoint-rule IG by torch autograd in float64, one path point at a time: the independent reference."""
    net = copy.deepcopy(model).double().eval()
    xs, bs, w = (torch.from_numpy(np.asarray(a, np.float64)) for a in (x, baseline, weights))
    alphas, quadrature = path_rule("riemann_middle", steps)
    total = torch.zeros_like(xs)
    for a, q in zip(alphas, quadrature):
        point = (bs + float(a) * (xs - bs)).requires_grad_(True)
        (grad,) = torch.autograd.grad((net(point) * w).sum(), point)
        total += float(q) * grad
    return ((xs - bs) * total).numpy()


def _export(model, folder: Path, shape=None, **options) -> Path:
    export_bundle(model, folder, **({"input_shape": shape} if shape else {}), **options)
    return folder


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("relu_path_bundles")
    return {
        "dense": _export(shipped_classifier_path("digits"), root / "dense"),
        "graph": _export(graph_tail_model(), root / "graph", (1, 16, 16)),
        "norm": _export(batch_norm_model(), root / "norm", (3, 12, 12)),
        "fixed": _export(graph_tail_model(), root / "fixed", (1, 16, 16), batch=3),
    }


def _case(backend: OnnxRuntimeBackend, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, *backend.input_shape), dtype=np.float32)
    baseline = rng.random((n, *backend.input_shape), dtype=np.float32) * 0.3
    weights = np.zeros((n, backend.num_classes), np.float32)
    weights[np.arange(n), rng.integers(0, backend.num_classes, n)] += 1
    weights[np.arange(n), rng.integers(0, backend.num_classes, n)] -= 1
    return x, baseline, weights


def _plain(backend: OnnxRuntimeBackend, x, baseline, weights, steps: int) -> np.ndarray:
    plain = OnnxRuntimeBackend(backend.bundle, providers=CPU, relu_path=False)
    assert not plain.uses_relu_path
    return drivers.integrated_gradients(plain, x, weights, baseline, n_steps=steps)


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("stride, padding, kernel, size", [((1, 1), (0, 0), (3, 3), (7, 7)), ((2, 2), (2, 2), (6, 6), (28, 28)),
                                                           ((2, 3), (1, 0), (3, 2), (9, 8)), ((3, 3), (1, 1), (3, 3), (10, 11))])
def test_numpy_convolutions_match_torch(stride, padding, kernel, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, *size)).astype(np.float32)
    weight = rng.normal(size=(4, 3, *kernel)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    want = nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), stride, padding).numpy()
    got = conv2d(x, weight, bias, stride, padding)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grad = rng.normal(size=want.shape).astype(np.float32)  # sizes a strided conv does not reach get 0 (dropped rows)
    want_t = torch.nn.grad.conv2d_input(x.shape, torch.from_numpy(weight), torch.from_numpy(grad), stride, padding).numpy()
    np.testing.assert_allclose(conv2d_input(grad, weight, size, stride, padding), want_t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, tail", [("dense", "dense"), ("graph", "graph"), ("norm", "graph"), ("fixed", "graph")])
def test_export_writes_the_split(bundles, name, tail):
    manifest = json.loads((bundles[name] / "manifest.json").read_text())
    assert manifest["relu_path"]["tail"] == tail
    assert manifest["verification"]["relu_path_ig_rel_err"] < 1e-4
    assert ("relu_path_tail.onnx" in manifest["files"]) == (tail == "graph")
    assert OnnxRuntimeBackend(bundles[name], providers=CPU).uses_relu_path


@pytest.mark.parametrize("name, model", [("graph", graph_tail_model), ("norm", batch_norm_model)])
def test_bundle_ig_matches_float64_autograd(bundles, name, model):
    backend = OnnxRuntimeBackend(bundles[name], providers=CPU)
    x, baseline, weights = _case(backend, 5, seed=4)
    fast = drivers.integrated_gradients(backend, x, weights, baseline, n_steps=64)
    assert _rel(fast, ig_float64(model(), x, baseline, weights, 64)) < 1e-4
    assert _rel(fast, _plain(backend, x, baseline, weights, 64)) < 1e-4


def test_digits_bundle_ig_matches_float64_and_completes(bundles, digits):
    from xaisdk.models import load_classifier

    backend = OnnxRuntimeBackend(bundles["dense"], providers=CPU)
    model = load_classifier(shipped_classifier_path("digits")).model
    x = digits.test.x[:6].astype(np.float32)
    baseline = np.roll(x, 1, axis=0)
    weights = np.zeros((6, 10), np.float32)
    weights[np.arange(6), digits.test.y[:6]] = 1
    weights[np.arange(6), (digits.test.y[:6] + 1) % 10] = -1
    attr, delta = drivers.integrated_gradients(backend, x, weights, baseline, n_steps=200, return_convergence_delta=True)
    assert _rel(attr, ig_float64(model, x, baseline, weights, 200)) < 1e-4
    gap = ((backend.logits(x) - backend.logits(baseline)) * weights).sum(1)
    assert np.all(np.abs(delta) <= 0.02 * np.abs(gap) + 1e-3)  # completeness at 200 midpoint steps


def test_fixed_batch_bundle_pads_the_tail_graph(bundles):
    backend = OnnxRuntimeBackend(bundles["fixed"], providers=CPU)
    x, baseline, weights = _case(backend, 5, seed=5)  # 5 images, 32 points: rows that do not fill a batch of 3
    fast = backend.fused_integrated_gradients(x, baseline, weights, *path_rule("riemann_middle", 32))
    assert _rel(fast, _plain(backend, x, baseline, weights, 32)) < 1e-4


@pytest.mark.parametrize("model, shape, why", [
    (SkipFromRelu(), (1, 16, 16), "skip connection"),
    (_torch_model(4, lambda: [nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                              nn.Linear(4 * 4 * 4, 3)]), (2, 8, 8), "grouped"),
    (_torch_model(5, lambda: [nn.Conv2d(1, 4, 3, dilation=2), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                              nn.Linear(4 * 2 * 2, 3)]), (1, 8, 8), "dilated"),
    (_torch_model(6, lambda: [nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)]),
     (1, 8, 8), "tanh"),
])
def test_models_without_the_split_keep_the_plain_path(tmp_path, model, shape, why):
    export_bundle(model, tmp_path / "b", input_shape=shape)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "relu_path" not in manifest and "Conv -> ReLU -> Conv" in manifest["relu_path_unavailable"], why
    backend = OnnxRuntimeBackend(tmp_path / "b", providers=CPU)
    assert not backend.uses_relu_path
    x, baseline, weights = _case(backend, 2, seed=6)
    assert backend.fused_integrated_gradients(x, baseline, weights, *path_rule("riemann_middle", 8)) is None


def test_a_hook_that_changes_the_opening_is_part_of_what_is_split(tmp_path):
    """A forward hook doubling the first ReLU's output is in the exported graph (a Mul between ReLU and conv): no
    split is taken from a graph the hook changed, and IG is the hooked model's own."""
    model = graph_tail_model()
    model[1].register_forward_hook(lambda module, args, out: out * 2)
    export_bundle(model, tmp_path / "b", input_shape=(1, 16, 16))
    backend = OnnxRuntimeBackend(tmp_path / "b", providers=CPU)
    x, baseline, weights = _case(backend, 3, seed=7)
    attr = drivers.integrated_gradients(backend, x, weights, baseline, n_steps=32)
    assert _rel(attr, ig_float64(model, x, baseline, weights, 32)) < 1e-4


def test_split_of_a_graph_whose_first_relu_is_also_an_output_is_refused():
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = [("w1", (2, 1, 3, 3)), ("w2", (2, 2, 3, 3))]
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in shapes]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Conv", ["h", "w2"], ["z"]), helper.make_node("Flatten", ["z"], ["logits"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 7, 7])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 18]),
                               helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, ["N", 2, 5, 5])], inits)
    assert split_opening(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])) is None


# --------------------------------------------------------------------------- bundles edited to fool the fast path


def _rehash(folder: Path, name: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture()
def dense_copy(bundles, tmp_path) -> Path:
    shutil.copytree(bundles["dense"], tmp_path / "b")
    return tmp_path / "b"


def test_weights_edited_with_their_hash_fail_the_proof(dense_copy):
    values = np.frombuffer((dense_copy / "relu_path.bin").read_bytes(), "<f4").copy()
    values[-300:] *= 1.5  # the output layer's last weights and biases
    (dense_copy / "relu_path.bin").write_bytes(values.tobytes())
    _rehash(dense_copy, "relu_path.bin")
    with pytest.raises(InputError, match="does not reproduce the classifier"):
        OnnxRuntimeBackend(dense_copy, providers=CPU)


def test_weights_edited_without_their_hash_are_refused(dense_copy):
    data = bytearray((dense_copy / "relu_path.bin").read_bytes())
    data[100] ^= 0x40
    (dense_copy / "relu_path.bin").write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 does not match"):
        OnnxRuntimeBackend(dense_copy, providers=CPU)


@pytest.mark.parametrize("edit, message", [
    (lambda e: e["arrays"].pop(), "bytes, but its arrays need"),
    (lambda e: e["first"].update(stride=[1, 1]), "first maps"),
    (lambda e: e["arrays"].__setitem__(0, ["first.weight", [16, 2, 6, 6]]), "first.weight must have shape"),  # same size
    (lambda e: e.update(tail="graph"), "carries no dense arrays"),
    (lambda e: e["arrays"].append(["first.weight", [1]]), "bad array entry"),
    (lambda e: e.update(hidden_shape=[32, 14]), "hidden_shape must be 3 integers"),
])
def test_inconsistent_manifest_entries_are_refused(dense_copy, edit, message):
    manifest = json.loads((dense_copy / "manifest.json").read_text())
    edit(manifest["relu_path"])
    (dense_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=message):
        OnnxRuntimeBackend(dense_copy, providers=CPU)


def test_a_graph_tail_swapped_for_another_models_fails_the_proof(bundles, tmp_path):
    """The tail graph of a different model (same shapes, other weights), with its hash updated: refused."""
    other = tmp_path / "other"
    export_bundle(graph_tail_model(seed=9), other, input_shape=(1, 16, 16))
    folder = tmp_path / "b"
    shutil.copytree(bundles["graph"], folder)
    shutil.copy(other / "relu_path_tail.onnx", folder / "relu_path_tail.onnx")
    _rehash(folder, "relu_path_tail.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["relu_path_tail"]["file"] = "relu_path_tail.onnx"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="does not reproduce the classifier"):
        OnnxRuntimeBackend(folder, providers=CPU)


def test_bundle_ig_of_an_image_does_not_depend_on_its_batch(bundles, digits):
    """A dataset job's shards and one Explainer call must give the same bits: every matrix product of the split
    sums in float64 and rounds once, so BLAS's choice of kernel by batch size cannot show."""
    backend = OnnxRuntimeBackend(bundles["dense"], providers=CPU)
    x = digits.test.x[:20].astype(np.float32)
    baseline = np.roll(x, 1, axis=0)
    weights = np.zeros((20, 10), np.float32)
    weights[:, 3], weights[:, 5] = 1, -1
    rule = path_rule("riemann_middle", 16)
    whole = backend.fused_integrated_gradients(x, baseline, weights, *rule)
    shards = [backend.fused_integrated_gradients(x[i:i + 3], baseline[i:i + 3], weights[i:i + 3], *rule) for i in range(0, 20, 3)]
    assert np.array_equal(whole, np.concatenate(shards))


def _entry(first: list[int], second: list[int], hidden: list[int], output: list[int], pad: int = 0) -> dict:
    return {"file": "relu_path.bin", "tail": "graph", "hidden_shape": hidden, "output_shape": output,
            "first": {"stride": [1, 1], "padding": [pad, pad]}, "second": {"stride": [1, 1], "padding": [0, 0]},
            "arrays": [["first.weight", first], ["second.weight", second]]}


@pytest.mark.parametrize("entry, image, message", [
    # 16 first-layer channels over a 4096 x 4096 image: 2.7e8 units per image, from a 128-byte file
    (_entry([16, 1, 1, 1], [1, 16, 1, 1], [16, 4096, 4096], [1, 4096, 4096]), (1, 4096, 4096), "hidden_shape"),
    # a 64 x 64 kernel over 2048 x 2048 positions: a window matrix of 1.7e10 values per image
    (_entry([1, 1, 64, 64], [1, 1, 1, 1], [1, 2049, 2049], [1, 2049, 2049], pad=32), (1, 2048, 2048), "window matrix"),
])
def test_a_manifest_cannot_make_the_loader_allocate_without_bound(entry, image, message):
    from xaisdk.runtime.relu_path_bundle import parse_relu_path

    values = sum(int(np.prod(shape)) for _, shape in entry["arrays"])
    with pytest.raises(InputError, match=message):
        parse_relu_path(entry, bytes(4 * values), image, 3, "bundle/manifest.json")


def _graph_with_batch_norm(z_is_output: bool):
    """x -> Conv -> BatchNormalization -> Relu -> Conv (z) -> Flatten -> Gemm, nodes unnamed, as other exporters write."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)

    def array(name, shape, low=-0.5, high=0.5):
        return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    inits = [array("w1", (4, 1, 3, 3)), array("b1", (4,)), array("scale", (4,), 0.5, 1.5), array("shift", (4,)),
             array("mean", (4,)), array("var", (4,), 0.5, 2.0), array("w2", (3, 4, 3, 3)), array("w3", (5, 3 * 4 * 4))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["a", "scale", "shift", "mean", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["h"]),
             helper.make_node("Conv", ["h", "w2"], ["z"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["z"], ["f"]), helper.make_node("Gemm", ["f", "w3"], ["logits"], transB=1)]
    outputs = [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 5])]
    if z_is_output:
        outputs.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 3, 4, 4]))
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_batch_norm_node_is_folded_into_the_first_convolution():
    """torch's exporter folds batch norms itself; graphs from other frameworks keep the node: the split folds it, and its
    layers give the graph's own second-convolution output (run by ONNX Runtime)."""
    import onnxruntime

    split = split_opening(_graph_with_batch_norm(False))
    assert split is not None and split.tail_kind == "graph"
    assert set(split.arrays) == {"first.weight", "first.bias", "second.weight"}
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    want = onnxruntime.InferenceSession(_graph_with_batch_norm(True).SerializeToString(),
                                        providers=CPU).run(["z"], {"x": x})[0]
    hidden = np.maximum(conv2d(x, split.arrays["first.weight"], split.arrays["first.bias"], split.first["stride"],
                               split.first["padding"]), 0)
    got = conv2d(hidden, split.arrays["second.weight"], None, split.second["stride"], split.second["padding"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert split_opening(_graph_with_batch_norm(True)) is None  # z read by the graph's output too: no split


class Normalised(nn.Module):
    """``model((x - mean) / std)``: the function of a bundle exported with that pixel pipeline."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean)[:, None, None])
        self.register_buffer("std", torch.tensor(std)[:, None, None])

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def test_a_normalised_model_keeps_its_split_with_the_pixel_pipeline_in_front(tmp_path):
    """A bundle with a pixel pipeline takes [0, 1] pixels and starts with (x - mean) / std: the split composes that
    per-channel affine in front of the first convolution (before its zero padding, as the graph does)."""
    from xaisdk.runtime.preprocessing import Preprocessing

    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    export_bundle(model, tmp_path / "b", input_shape=(3, 12, 12), preprocessing=Preprocessing(mean=mean, std=std))
    backend = OnnxRuntimeBackend(tmp_path / "b", providers=CPU)
    assert backend.uses_relu_path and "input.scale" in backend.bundle.relu_path.arrays
    x, baseline, weights = _case(backend, 4, seed=9)
    attr = backend.fused_integrated_gradients(x, baseline, weights, *path_rule("riemann_middle", 32))
    assert _rel(attr, ig_float64(Normalised(model, mean, std), x, baseline, weights, 32)) < 1e-4


@pytest.mark.parametrize("constant, splits", [(np.full((1, 3, 1, 1), 0.5, np.float32), True), (np.float32(0.5), True),
                                              (np.full((3,), 0.5, np.float32), False)])  # (3,) would meet the width
def test_only_per_channel_constants_in_front_of_the_first_convolution_are_composed(constant, splits):
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(constant), "k"),
             numpy_helper.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(2, 2, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Sub", ["x", "k"], ["c"]), helper.make_node("Conv", ["c", "w1"], ["a"]),
             helper.make_node("Relu", ["a"], ["h"]), helper.make_node("Conv", ["h", "w2"], ["z"]),
             helper.make_node("Flatten", ["z"], ["logits"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 3, 3])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])], inits)
    split = split_opening(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert (split is not None) == splits
    if splits:
        np.testing.assert_allclose(split.arrays["input.shift"], [-0.5, -0.5, -0.5])


def test_a_tail_graph_whose_score_is_right_and_gradient_wrong_fails_the_proof(bundles, tmp_path):
    """An adversary that keeps the tail's score output and doubles its gradient output (hash updated) would pass
    a forward-only check: the proof also compares input gradients."""
    import onnx
    from onnx import helper

    folder = tmp_path / "b"
    shutil.copytree(bundles["graph"], folder)
    model = onnx.load(str(folder / "relu_path_tail.onnx"))
    producer = next(node for node in model.graph.node if "grad" in node.output)
    producer.output[list(producer.output).index("grad")] = "grad/honest"
    model.graph.node.append(helper.make_node("Add", ["grad/honest", "grad/honest"], ["grad"], name="doubled"))
    onnx.save(model, str(folder / "relu_path_tail.onnx"))
    _rehash(folder, "relu_path_tail.onnx")
    with pytest.raises(InputError, match="gradients by"):
        OnnxRuntimeBackend(folder, providers=CPU)


def test_an_onnx_file_with_a_dense_head_gets_the_dense_tail(tmp_path):
    """The ONNX intake puts its pixel pipeline in front and an Identity behind: the split takes both, and the
    ReLU -> Flatten -> Gemm -> ReLU -> Gemm head is followed by hand; IG equals the plain loop's."""
    import io
    import warnings

    from xaisdk.deploy.onnx_intake import export_onnx_classifier

    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, 8, 8), buffer, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["scores"], dynamic_axes={"image": {0: "b"}, "scores": {0: "b"}})
    (tmp_path / "model.onnx").write_bytes(buffer.getvalue())
    export_onnx_classifier(tmp_path / "model.onnx", tmp_path / "b")
    backend = OnnxRuntimeBackend(tmp_path / "b", providers=CPU)
    assert backend.uses_relu_path and backend.bundle.relu_path.tail == "dense"
    x, baseline, weights = _case(backend, 3, seed=11)
    fast = drivers.integrated_gradients(backend, x, weights, baseline, n_steps=32)
    assert _rel(fast, _plain(backend, x, baseline, weights, 32)) < 1e-4
    assert _rel(fast, ig_float64(model, x, baseline, weights, 32)) < 1e-4
