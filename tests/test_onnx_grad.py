"""The ONNX reverse-mode pass (xaisdk.deploy.onnx_grad) against torch autograd, float64 finite
differences and the torch DeepLIFT, on small architectures exported by torch's TorchScript exporter."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from xaisdk.attribution import deeplift
from xaisdk.attribution.deeplift import rescale_multipliers
from xaisdk.deploy.allowlist import disallowed_nodes
from xaisdk.deploy.onnx_grad import UnsupportedOpError, deeplift_graph, gradient_graph
from xaisdk.errors import InputError
from xaisdk.models import CifarCNN, MnistCNN
from xaisdk.runtime.backend import class_weights

TOL = 1e-4
N = 5  # rows run through the graphs; the export example has 2, so the batch axis must really be dynamic


# --------------------------------------------------------------------------- test architectures


def randomize_batch_norm(net: nn.Module, seed: int) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
    return net.eval()


class PoolNet(nn.Module):
    """Conv + BN + ReLU + 2x2 max pool on 15x15 (the pool crops the last row/column), a batch norm that
    cannot be folded into a convolution (it shifts values below zero), LeakyReLU, 2x2 average pool on
    7x7 (crops too), Linear."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.bn2 = nn.BatchNorm2d(6)
        self.leaky = nn.LeakyReLU(0.1)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 3 * 3, classes)

    def forward(self, x):
        h = self.pool(self.relu(self.bn(self.conv(x))))
        h = self.avg(self.leaky(self.bn2(h)))
        return self.fc(h.flatten(1))


class ResNet(nn.Module):
    """Stem conv + Tanh, a residual block h + conv(relu(conv(h))), Sigmoid, global average pool, Linear."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 3, padding=1)
        self.tanh = nn.Tanh()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.sigmoid = nn.Sigmoid()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        h = self.tanh(self.stem(x))
        h = h + self.conv2(self.relu(self.conv1(h)))
        return self.fc(self.gap(self.sigmoid(h)).flatten(1))


class SoftmaxHead(nn.Module):
    """A small conv net whose outputs are (log-)probabilities. SiLU exports as x * Sigmoid(x) (a product
    of functions of one tensor); the head sees the flattened features concatenated with their
    spatial means (Concat, ReduceMean without keepdims)."""

    def __init__(self, log: bool, classes: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.act = nn.SiLU()
        self.fc = nn.Linear(4 * 5 * 5 + 4, classes)
        self.out = nn.LogSoftmax(dim=1) if log else nn.Softmax(dim=1)

    def forward(self, x):
        h = self.act(self.conv(x))
        return self.out(self.fc(torch.cat([h.flatten(1), h.mean(dim=(2, 3))], dim=1)))


class ReLU6MLP(nn.Module):
    """An MLP on the flattened input; ReLU6 exports as Clip(0, 6), and the weights are large enough
    that some hidden units sit above 6 (so the upper bound matters)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * 6 * 6, 32)
        self.act1 = nn.ReLU6()
        self.fc2 = nn.Linear(32, 16)
        self.act2 = nn.ReLU6()
        self.fc3 = nn.Linear(16, classes)
        with torch.no_grad():
            self.fc1.weight.mul_(12.0)

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x.flatten(1))))))


def monotone_resnet() -> ResNet:
    """A ResNet in which every tanh and sigmoid unit's input moves well away from its baseline value
    when ``x > baseline`` everywhere (non-negative stem weights, a small residual branch).

    The rescale ratio ``(f(x) - f(b)) / (x - b)`` of a smooth f is ill-conditioned in float32 when
    ``x - b`` is tiny: torch's DeepLIFT and the graph then both carry errors of ~1e-4 (relative) from
    rounding alone (see :func:`test_deeplift_graph_on_generic_smooth_units_vs_float64`). With this
    model the 1e-4 comparison with torch tests the graph's rule, not float32 cancellation.
    """
    net = ResNet()
    with torch.no_grad():
        net.stem.weight.abs_()
        net.conv2.weight.mul_(0.1)
    return net


def _seeded(build, seed):
    torch.manual_seed(seed)
    return randomize_batch_norm(build(), seed)


# name -> (builder, input shape (C, H, W), input value range)
ARCHS = {
    "mnist_cnn": (lambda: MnistCNN(in_channels=1, image_size=28, num_classes=10, channels=(8, 16), hidden=32), (1, 28, 28)),
    "cifar_cnn": (lambda: CifarCNN(in_channels=3, image_size=16, num_classes=10, widths=(8, 16)), (3, 16, 16)),
    "pool_net": (PoolNet, (3, 15, 15)),
    "resnet": (ResNet, (2, 8, 8)),
    "resnet_monotone": (monotone_resnet, (2, 8, 8)),
    "softmax": (lambda: SoftmaxHead(log=False), (1, 10, 10)),
    "log_softmax": (lambda: SoftmaxHead(log=True), (1, 10, 10)),
    "relu6_mlp": (ReLU6MLP, (2, 6, 6)),
}
# The architectures DeepLIFT covers (no softmax; max pooling under Captum's rule).
DEEPLIFT_ARCHS = ["mnist_cnn", "cifar_cnn", "pool_net", "resnet_monotone", "relu6_mlp"]
# Ops each architecture's exported graph must contain, so that the rule under test is exercised.
EXPECTED_OPS = {
    "mnist_cnn": {"Conv", "Relu", "Flatten", "Gemm"},
    "cifar_cnn": {"Conv", "Relu", "AveragePool", "Gemm"},
    "pool_net": {"Conv", "Relu", "MaxPool", "LeakyRelu", "BatchNormalization", "AveragePool", "Gemm"},
    "resnet": {"Conv", "Tanh", "Relu", "Add", "Sigmoid", "GlobalAveragePool", "Gemm"},
    "resnet_monotone": {"Conv", "Tanh", "Relu", "Add", "Sigmoid", "GlobalAveragePool", "Gemm"},
    "softmax": {"Conv", "Sigmoid", "Mul", "Concat", "ReduceMean", "Softmax"},
    "log_softmax": {"Conv", "Sigmoid", "Mul", "Concat", "ReduceMean", "LogSoftmax"},
    "relu6_mlp": {"Clip", "Gemm"},
}


def export(module: nn.Module, shape, batch: int = 2, dynamic: bool = True, opset: int = 17) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {"x": {0: "N"}, "logits": {0: "N"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(module, (torch.zeros(batch, *shape),), buffer, dynamo=False, opset_version=opset,
                          dynamic_axes=axes, input_names=["x"], output_names=["logits"])
    return onnx.load_from_string(buffer.getvalue())


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    assert disallowed_nodes(model) == [], disallowed_nodes(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


class Built:
    def __init__(self, name: str) -> None:
        build, self.shape = ARCHS[name]
        self.name = name
        self.model = _seeded(build, seed=sum(map(ord, name)))
        self.forward = export(self.model, self.shape)
        self.ops = {node.op_type for node in self.forward.graph.node}
        self.grad = session(gradient_graph(self.forward))
        with torch.no_grad():
            self.classes = self.model(torch.zeros(1, *self.shape)).shape[1]

    def inputs(self, seed: int, n: int = N) -> np.ndarray:
        return np.random.default_rng(seed).uniform(0.0, 1.0, (n, *self.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def built():
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = Built(name)
        return cache[name]

    return get


def torch_score_grad(model: nn.Module, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xg = torch.from_numpy(x).requires_grad_(True)
    score = (model(xg) * torch.from_numpy(w)).sum(1)
    (grad,) = torch.autograd.grad(score.sum(), xg)
    return score.detach().numpy(), grad.numpy()


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


def weight_rows(kind: str, n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    source = rng.integers(0, k, n)
    if kind == "one_vs_all":
        return class_weights(source, None, k)
    return class_weights(source, (source + rng.integers(1, k, n)) % k, k)


# --------------------------------------------------------------------------- gradient graph vs autograd


@pytest.mark.parametrize("kind", ["one_vs_one", "one_vs_all"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_gradient_graph_matches_autograd(built, name, kind):
    net = built(name)
    assert EXPECTED_OPS[name] <= net.ops, f"{name}: export produced {sorted(net.ops)}"
    x = net.inputs(seed=1)
    w = weight_rows(kind, len(x), net.classes, seed=2)
    score, grad = net.grad.run(["score", "grad"], {"x": x, "w": w})
    want_score, want_grad = torch_score_grad(net.model, x, w)
    assert score.shape == (len(x),) and grad.shape == x.shape
    assert np.abs(want_grad).max() > 0  # the comparison is not 0 == 0
    assert rel_err(score, want_score) <= TOL
    assert rel_err(grad, want_grad) <= TOL


def test_relu6_upper_bound_is_active(built):
    """The MLP's Clip really clips at 6 on the test inputs (else its upper-bound rule goes untested)."""
    net = built("relu6_mlp")
    with torch.no_grad():
        hidden = net.model.fc1(torch.from_numpy(net.inputs(seed=1)).flatten(1))
    assert (hidden > 6).any() and (hidden < 0).any() and ((hidden > 0) & (hidden < 6)).any()


def test_leaky_relu_sees_negative_inputs(built):
    """PoolNet's LeakyReLU gets negative inputs on the test images (else its slope rule goes untested)."""
    net = built("pool_net")
    m = net.model
    with torch.no_grad():
        h = m.bn2(m.pool(m.relu(m.bn(m.conv(torch.from_numpy(net.inputs(seed=1)))))))
    assert 0.1 < (h < 0).float().mean() < 0.9


def test_batch_of_one_and_arbitrary_weights(built):
    """The symbolic batch axis takes N=1, and any weight row (not only +-1 entries) works."""
    net = built("cifar_cnn")
    for n in (1, 3):
        x = net.inputs(seed=7, n=n)
        w = np.random.default_rng(8).standard_normal((n, net.classes)).astype(np.float32)
        score, grad = net.grad.run(["score", "grad"], {"x": x, "w": w})
        want_score, want_grad = torch_score_grad(net.model, x, w)
        assert rel_err(score, want_score) <= TOL and rel_err(grad, want_grad) <= TOL


def test_fixed_batch_export():
    torch.manual_seed(3)
    model = randomize_batch_norm(PoolNet(), 3)
    forward = export(model, (3, 15, 15), batch=3, dynamic=False)
    assert forward.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    grad_model = gradient_graph(forward)
    assert [d.dim_value for d in grad_model.graph.output[1].type.tensor_type.shape.dim] == [3, 3, 15, 15]
    x = np.random.default_rng(4).uniform(0, 1, (3, 3, 15, 15)).astype(np.float32)
    w = weight_rows("one_vs_one", 3, 5, seed=5)
    score, grad = session(grad_model).run(["score", "grad"], {"x": x, "w": w})
    want_score, want_grad = torch_score_grad(model, x, w)
    assert rel_err(score, want_score) <= TOL and rel_err(grad, want_grad) <= TOL


@pytest.mark.parametrize("name", ["resnet", "pool_net"])
def test_gradient_graph_matches_float64_finite_differences(built, name):
    """Directional derivatives <grad, v> against central differences of a float64 copy of the model."""
    net = built(name)
    x = net.inputs(seed=11)
    w = weight_rows("one_vs_one", len(x), net.classes, seed=12)
    _, grad = net.grad.run(["score", "grad"], {"x": x, "w": w})
    model64 = copy.deepcopy(net.model).double().eval()
    x64, w64 = torch.from_numpy(x).double(), torch.from_numpy(w).double()
    rng = np.random.default_rng(13)
    step = 1e-6
    fd, analytic = [], []
    with torch.no_grad():
        for _ in range(4):
            v = rng.standard_normal(x.shape)
            v /= np.sqrt((v.reshape(len(x), -1) ** 2).sum(1)).reshape(-1, 1, 1, 1)
            dv = torch.from_numpy(v) * step
            plus = (model64(x64 + dv) * w64).sum(1)
            minus = (model64(x64 - dv) * w64).sum(1)
            fd.append(((plus - minus) / (2 * step)).numpy())
            analytic.append((grad.astype(np.float64) * v).reshape(len(x), -1).sum(1))
    fd, analytic = np.concatenate(fd), np.concatenate(analytic)
    assert np.abs(fd).max() > 1e-3
    assert rel_err(analytic, fd) <= TOL


# --------------------------------------------------------------------------- max pooling


class TiePool(nn.Module):
    """2x2 max pooling straight on a 15x15 input (the last row and column are cropped), then Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * 7 * 7, 3)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


def test_max_pool_ties_route_to_first_maximum_like_torch():
    torch.manual_seed(21)
    model = TiePool().eval()
    rng = np.random.default_rng(22)
    blocks = rng.integers(0, 3, (4, 2, 5, 5)).astype(np.float32)  # 3x3 constant blocks: many tied windows
    x = np.repeat(np.repeat(blocks, 3, axis=2), 3, axis=3)
    x[0] = 0.5  # one input constant everywhere: every window is a four-way tie
    x[1, :, ::2, ::2] = 2.0  # the first and the last cell of every window hold the maximum 2
    x[1, :, 1::2, 1::2] = 2.0
    windows = x[:, :, :14, :14].reshape(4, 2, 7, 2, 7, 2).transpose(0, 1, 2, 4, 3, 5).reshape(4, 2, 7, 7, 4)
    ties = (windows == windows.max(-1, keepdims=True)).sum(-1) > 1
    assert ties.mean() > 0.5  # the test exercises ties, not just distinct maxima
    w = weight_rows("one_vs_one", 4, 3, seed=23)
    _, grad = session(gradient_graph(export(model, (2, 15, 15)))).run(["score", "grad"], {"x": x, "w": w})
    _, want = torch_score_grad(model, x, w)
    np.testing.assert_array_equal(grad != 0, want != 0)  # the same cell of every window
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)
    assert (grad[:, :, 14, :] == 0).all() and (grad[:, :, :, 14] == 0).all()  # the cropped row and column


def test_op_without_rule_behind_an_overlapping_max_pool_is_refused_naming_op_and_node():
    """Overlapping pooling has a rule (tests/test_onnx_grad_layout.py); the Atan before it has none."""

    class Overlap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.pool = nn.MaxPool2d(3, stride=2)
            self.fc = nn.Linear(2 * 3 * 3, 2)

        def forward(self, x):
            return self.fc(self.pool(torch.atan(self.conv(x))).flatten(1))

    forward = export(Overlap().eval(), (1, 9, 9))
    with pytest.raises(UnsupportedOpError, match="Atan") as info:
        gradient_graph(forward)
    message = str(info.value)
    assert "op Atan at node '/Atan'" in message and "no gradient rule for Atan" in message
    assert "/pool/MaxPool" not in message  # the overlapping pool itself is differentiated
    assert isinstance(info.value, InputError)


# --------------------------------------------------------------------------- unsupported ops


class GeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


class AtanLayer(nn.Module):
    def forward(self, x):
        return torch.atan(x)


class CumsumLayer(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)


class SortLayer(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=1, descending=True).values


class Wrapped(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.act = act
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


@pytest.mark.parametrize(("layer", "op"), [(AtanLayer(), "Atan"), (CumsumLayer(), "CumSum"), (SortLayer(), "TopK")])
@pytest.mark.parametrize("builder", [gradient_graph, deeplift_graph])
def test_op_without_rule_is_refused_naming_op_and_node(layer, op, builder):
    forward = export(Wrapped(layer).eval(), (3, 2, 2))
    with pytest.raises(UnsupportedOpError) as info:
        builder(forward)
    message = str(info.value)
    assert f"op {op} at node '/act/" in message, message
    assert f"no gradient rule for {op}" in message


def test_deeplift_refuses_softmax(built):
    for name, op in [("softmax", "Softmax"), ("log_softmax", "LogSoftmax")]:
        with pytest.raises(UnsupportedOpError, match=f"op {op} at node '/out/{op}'"):
            deeplift_graph(built(name).forward)


class SqueezeExcitation(nn.Module):
    """h * sigmoid(fc(mean(h))): a gate computed from other features, not a function of h's own element."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.gate = nn.Linear(4, 4)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = self.conv(x)
        gate = torch.sigmoid(self.gate(h.mean(dim=(2, 3))))[:, :, None, None]
        return self.fc((h * gate).flatten(1))


def test_deeplift_refuses_products_of_input_dependent_tensors():
    """Squeeze-excitation multiplies features by a gate of other features: fine for gradients, not covered by
    the rescale rule (SiLU, a product of functions of one tensor, is one element-wise unit and is covered)."""
    torch.manual_seed(61)
    forward = export(SqueezeExcitation().eval(), (3, 2, 2))
    gradient_graph(forward)
    with pytest.raises(UnsupportedOpError, match="products of two input-dependent tensors") as info:
        deeplift_graph(forward)
    assert "op Mul at node '/Mul'" in str(info.value)
    deeplift_graph(export(Wrapped(nn.SiLU()).eval(), (3, 2, 2)))


def test_non_standard_domain_is_refused():
    io_ = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]),
           helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])]
    node = helper.make_node("Gelu", ["x"], ["logits"], name="/act/Gelu", domain="com.microsoft")
    model = helper.make_model(helper.make_graph([node], "g", io_[:1], io_[1:]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(UnsupportedOpError, match="com.microsoft") as info:
        gradient_graph(model)
    assert "'/act/Gelu'" in str(info.value)


# --------------------------------------------------------------------------- DeepLIFT graph


@pytest.fixture(scope="module")
def deeplift_sessions(built):
    cache: dict[str, ort.InferenceSession] = {}

    def get(name: str) -> ort.InferenceSession:
        if name not in cache:
            cache[name] = session(deeplift_graph(built(name).forward))
        return cache[name]

    return get


def deeplift_case(net: Built, kind: str, seed: int):
    """Inputs, baselines below them (one black, one equal to its input on half the image) and weights."""
    rng = np.random.default_rng(seed)
    x = net.inputs(seed=seed)
    base = (x - rng.uniform(0.2, 0.6, x.shape)).astype(np.float32)
    base[1] = 0.0
    half = x.shape[2] // 2
    base[2, :, :half] = x[2, :, :half]
    return x, base, weight_rows(kind, len(x), net.classes, seed=seed + 1)


def check_completeness(attr, score, score_base):
    gap = score.astype(np.float64) - score_base
    total = attr.reshape(len(attr), -1).astype(np.float64).sum(1)
    assert np.abs(gap).max() > 0
    assert np.abs(total - gap).max() <= TOL * max(np.abs(gap).max(), 1.0)


@pytest.mark.parametrize("kind", ["one_vs_one", "one_vs_all"])
@pytest.mark.parametrize("name", DEEPLIFT_ARCHS)
def test_deeplift_graph_matches_torch_deeplift_and_is_complete(built, deeplift_sessions, name, kind):
    net = built(name)
    x, base, w = deeplift_case(net, kind, seed=31)
    multipliers, score, score_base = deeplift_sessions(name).run(["multipliers", "score", "score_baseline"],
                                                                 {"x": x, "baseline": base, "w": w})
    attr = (x - base) * multipliers
    source = w.argmax(1)
    target = w.argmin(1) if kind == "one_vs_one" else None
    want = deeplift(net.model, x, source=source, target=target, baseline=base)
    assert np.abs(want).max() > 0
    assert rel_err(attr, want) <= TOL
    want_score, _ = torch_score_grad(net.model, x, w)
    want_base, _ = torch_score_grad(net.model, base, w)
    assert rel_err(score, want_score) <= TOL and rel_err(score_base, want_base) <= TOL
    check_completeness(attr, score, score_base)


def test_deeplift_graph_on_generic_smooth_units_vs_float64(built, deeplift_sessions):
    """The generic ResNet with baselines on both sides of the input: some tanh/sigmoid units barely move,
    so float32 rescale ratios lose digits (torch's float32 DeepLIFT too, by the same ~1e-4). Checked
    against a float64 run of torch's rescale rule with a 1e-3 bound, and completeness at 1e-4."""
    net = built("resnet")
    x = net.inputs(seed=51)
    base = np.random.default_rng(52).uniform(0.0, 1.0, x.shape).astype(np.float32)
    w = weight_rows("one_vs_one", len(x), net.classes, seed=53)
    multipliers, score, score_base = deeplift_sessions("resnet").run(["multipliers", "score", "score_baseline"],
                                                                     {"x": x, "baseline": base, "w": w})
    attr = (x - base) * multipliers
    model64 = copy.deepcopy(net.model).double()
    m64 = rescale_multipliers(model64, *(torch.from_numpy(a).double() for a in (x, base, w))).numpy()
    want = (x.astype(np.float64) - base) * m64
    assert rel_err(attr, want) <= 1e-3
    check_completeness(attr, score, score_base)


@pytest.mark.parametrize("name", ["resnet", "relu6_mlp", "cifar_cnn"])
def test_deeplift_multipliers_equal_gradient_when_baseline_is_input(built, deeplift_sessions, name):
    """With baseline == x every rescale ratio is 0/0, so the graph must fall back to the derivative."""
    net = built(name)
    x = net.inputs(seed=41)
    w = weight_rows("one_vs_one", len(x), net.classes, seed=42)
    multipliers, score, score_base = deeplift_sessions(name).run(["multipliers", "score", "score_baseline"],
                                                                 {"x": x, "baseline": x, "w": w})
    _, grad = net.grad.run(["score", "grad"], {"x": x, "w": w})
    assert np.isfinite(multipliers).all()
    assert rel_err(multipliers, grad) <= TOL
    np.testing.assert_array_equal(score, score_base)


# --------------------------------------------------------------------------- TensorRT allow-list


def test_every_produced_graph_is_on_the_tensorrt_allow_list(built, deeplift_sessions):
    for name in ARCHS:
        net = built(name)
        assert disallowed_nodes(net.forward) == []
        assert disallowed_nodes(gradient_graph(net.forward)) == []
        if name in DEEPLIFT_ARCHS:
            assert disallowed_nodes(deeplift_graph(net.forward)) == []


def test_gradient_graph_has_no_contrib_ops(built):
    ops = {(node.domain, node.op_type) for node in gradient_graph(built("pool_net").forward).graph.node}
    assert all(domain in ("", "ai.onnx") for domain, _ in ops)
    assert ("", "ArgMax") in ops  # max pooling's routing: standard ops, no MaxPool indices or scatter


def _model(nodes, inputs, outputs, opsets=(("", 17),)):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def test_disallowed_nodes_flags_contrib_domain_and_scatter_add():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    contrib = _model([helper.make_node("ReluGrad", ["x", "x"], ["y"], name="bad_node", domain="com.microsoft")],
                     [x], [y], opsets=(("", 17), ("com.microsoft", 1)))
    (problem,) = disallowed_nodes(contrib)
    assert "ReluGrad" in problem and "'bad_node'" in problem and "com.microsoft" in problem

    idx = helper.make_tensor_value_info("i", TensorProto.INT64, [2, 1])
    upd = helper.make_tensor_value_info("u", TensorProto.FLOAT, [2])
    scatter_add = _model([helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="scatter", reduction="add")],
                         [x, idx, upd], [y])
    onnx.checker.check_model(scatter_add)
    (problem,) = disallowed_nodes(scatter_add)
    assert "ScatterND" in problem and "'scatter'" in problem and "reduction" in problem and "add" in problem

    plain = _model([helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="scatter")], [x, idx, upd], [y])
    assert disallowed_nodes(plain) == []
    unknown = _model([helper.make_node("Einsum", ["x"], ["y"], equation="i->i", name="e"),
                      helper.make_node("BitShift", ["y", "y"], ["z"], direction="LEFT", name="shift")],
                     [x], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])])
    (problem,) = disallowed_nodes(unknown)
    assert "BitShift" in problem and "'shift'" in problem
