"""ONNX gradient and DeepLIFT rules for activations, normalization and attention
(xaisdk.deploy.grad_rules_activations, grad_rules_normalization, deeplift_islands and the MatMul /
Softmax / Div rules of onnx_grad) against torch autograd, float64 finite differences, the torch
DeepLIFT rescale rule and Captum, on modules exported by torch's TorchScript exporter at opsets 17
and 18 (batch 2 at export, 5 at run time) and on single-op graphs written by hand."""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from nets import Fn
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from xaisdk.attribution import deeplift
from xaisdk.attribution.deeplift_trace import Plan, rescaled_forward
from xaisdk.deploy.allowlist import disallowed_nodes
from xaisdk.deploy.onnx_grad import UnsupportedOpError, deeplift_graph, gradient_graph

TOL = 1e-4
N = 5  # rows at run time; exports use 2, so the batch axis must really be dynamic


# --------------------------------------------------------------------------- helpers


def export(module: nn.Module, shape, opset: int = 17, batch: int | None = 2) -> onnx.ModelProto:
    """Export with a symbolic batch axis (example batch 2), or with a fixed ``batch`` of N rows (``None``)."""
    buffer = io.BytesIO()
    axes = {"x": {0: "N"}, "logits": {0: "N"}} if batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(module.eval(), (torch.zeros(batch or N, *shape),), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"], dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


def session(model: onnx.ModelProto, forward_only: frozenset[str] = frozenset()) -> ort.InferenceSession:
    """A CPU session, after checking that every node is on TensorRT's list (but the forward ops named)."""
    problems = [p for p in disallowed_nodes(model) if p.split(" at node")[0] not in forward_only]
    assert problems == [], problems
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


def weights(n: int, k: int, seed: int) -> np.ndarray:
    """One-vs-one rows ``e_source - e_target``."""
    rng = np.random.default_rng(seed)
    source = rng.integers(0, k, n)
    target = (source + rng.integers(1, k, n)) % k
    w = np.zeros((n, k), np.float32)
    w[np.arange(n), source] += 1.0
    w[np.arange(n), target] -= 1.0
    return w


def torch_score_grad(model: nn.Module, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xg = torch.from_numpy(x).requires_grad_(True)
    score = (model(xg) * torch.from_numpy(w)).sum(1)
    (grad,) = torch.autograd.grad(score.sum(), xg)
    return score.detach().numpy(), grad.numpy()


def finite_difference_check(model: nn.Module, x: np.ndarray, w: np.ndarray, grad: np.ndarray, tol: float = TOL) -> None:
    """Directional derivatives <grad, v> against central differences of a float64 copy of the model."""
    model64 = copy.deepcopy(model).double().eval()
    x64, w64 = torch.from_numpy(x).double(), torch.from_numpy(w).double()
    rng = np.random.default_rng(13)
    step = 1e-6
    fd, analytic = [], []
    with torch.no_grad():
        for _ in range(3):
            v = rng.standard_normal(x.shape)
            v /= np.sqrt((v.reshape(len(x), -1) ** 2).sum(1)).reshape(-1, *([1] * (x.ndim - 1)))
            dv = torch.from_numpy(v) * step
            plus, minus = (model64(x64 + dv) * w64).sum(1), (model64(x64 - dv) * w64).sum(1)
            fd.append(((plus - minus) / (2 * step)).numpy())
            analytic.append((grad.astype(np.float64) * v).reshape(len(x), -1).sum(1))
    fd, analytic = np.concatenate(fd), np.concatenate(analytic)
    assert np.abs(fd).max() > 1e-3
    assert rel_err(analytic, fd) <= tol


def check_gradient(model: nn.Module, shape, opset: int = 17, seed: int = 1, smooth: bool = False,
                   expected_ops: set[str] = frozenset(), low: float = -1.0, batch: int | None = 2,
                   data_prop: bool = False) -> onnx.ModelProto:
    """Export ``model``, build its gradient graph, compare with autograd (and finite differences).
    ``data_prop``: run ONNX shape inference with data propagation first (sizes computed from ``Shape``)."""
    torch.manual_seed(seed)
    forward = export(model, shape, opset, batch)
    if data_prop:
        forward = onnx.shape_inference.infer_shapes(forward, strict_mode=True, data_prop=True)
    ops = {node.op_type for node in forward.graph.node}
    assert expected_ops <= ops, f"export produced {sorted(ops)}"
    x = np.random.default_rng(seed).uniform(low, 1.0, (N, *shape)).astype(np.float32)
    with torch.no_grad():
        classes = model(torch.from_numpy(x)).shape[1]
    w = weights(N, classes, seed + 1)
    score, grad = session(gradient_graph(forward)).run(["score", "grad"], {"x": x, "w": w})
    want_score, want_grad = torch_score_grad(model, x, w)
    assert grad.shape == x.shape and np.abs(want_grad).max() > 0
    assert rel_err(score, want_score) <= TOL
    assert rel_err(grad, want_grad) <= TOL, rel_err(grad, want_grad)
    if smooth:
        finite_difference_check(model, x, w, grad)
    return forward


# --------------------------------------------------------------------------- element-wise activations


class Wrapped(nn.Module):
    """conv -> activation -> linear; the conv weights are scaled so the activation sees [-5, 5] or so
    (both sides of every kink: HardSwish's -3 and 3, HardSigmoid's clamps, 0 for the exponential units)."""

    def __init__(self, act, gain: float = 6.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = act
        self.fc = nn.Linear(4 * 4 * 4, 3)
        with torch.no_grad():
            self.conv.weight.mul_(gain)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def _prelu():
    act = nn.PReLU(4)
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.1, -0.3, 0.5, 2.0]))
    return act


# name -> (activation factory, ops the export must contain, smooth enough for finite differences)
ACTIVATIONS = {
    "hardswish": (nn.Hardswish, {"HardSwish"}, False),
    "hardsigmoid": (nn.Hardsigmoid, {"HardSigmoid"}, False),
    "silu": (nn.SiLU, {"Sigmoid", "Mul"}, True),
    "gelu": (nn.GELU, {"Div", "Erf", "Add", "Mul"}, True),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), {"Tanh", "Mul", "Add"}, True),
    "mish": (nn.Mish, {"Softplus", "Tanh", "Mul"}, True),
    "elu": (lambda: nn.ELU(0.7), {"Elu"}, False),
    "selu": (nn.SELU, {"Selu"}, False),
    "celu": (lambda: nn.CELU(1.3), {"Celu"}, False),
    "prelu": (_prelu, {"PRelu"}, False),
    "softplus": (nn.Softplus, {"Softplus"}, True),
    "softplus_beta": (lambda: nn.Softplus(beta=2.0, threshold=50.0), {"Softplus", "Div"}, True),
    "softsign": (nn.Softsign, {"Abs", "Div"}, False),
    "erf": (lambda: Fn(torch.erf), {"Erf"}, True),
    "exp": (lambda: Fn(lambda h: torch.exp(0.3 * h)), {"Exp"}, True),
    "log": (lambda: Fn(lambda h: torch.log(h * h + 0.5)), {"Log", "Mul"}, True),
    "sqrt": (lambda: Fn(lambda h: torch.sqrt(h * h + 0.5)), {"Sqrt"}, True),
    "reciprocal": (lambda: Fn(lambda h: torch.reciprocal(h * h + 1.0)), {"Reciprocal"}, True),
    "pow3": (lambda: Fn(lambda h: 0.05 * h.pow(3)), {"Pow"}, True),
    "pow_half": (lambda: Fn(lambda h: (h * h + 0.2).pow(0.5)), {"Pow"}, True),
    "pow2": (lambda: Fn(lambda h: h.pow(2)), {"Pow"}, True),
    "abs": (lambda: Fn(torch.abs), {"Abs"}, False),
    "neg_tanh": (lambda: Fn(lambda h: -torch.tanh(h)), {"Neg", "Tanh"}, True),
}


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradient_matches_autograd(name, opset):
    factory, ops, smooth = ACTIVATIONS[name]
    torch.manual_seed(3)
    check_gradient(Wrapped(factory()).eval(), (3, 4, 4), opset, smooth=smooth, expected_ops=ops)


def test_activation_inputs_cross_the_kinks():
    """The pre-activations of the test inputs cover both sides of -3, 0 and 3 (so every branch is tested)."""
    torch.manual_seed(3)
    net = Wrapped(nn.Hardswish()).eval()
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1.0, 1.0, (N, 3, 4, 4)).astype(np.float32))
    with torch.no_grad():
        h = net.conv(x)
    for lo, hi in [(-9, -3), (-3, 0), (0, 3), (3, 9)]:
        assert ((h > lo) & (h < hi)).float().mean() > 0.02, (lo, hi)


def _single_op_model(op: str, opset: int, **attrs) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((6, 8)) * 1.5).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node(op, ["h"], ["a"], name=f"/act/{op}", **attrs),
             helper.make_node("MatMul", ["a", "W2"], ["logits"], name="/fc2/MatMul")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model, w1, w2


@pytest.mark.parametrize(("op", "opset", "attrs", "torch_act"), [
    ("Mish", 18, {}, F.mish),
    ("Gelu", 20, {}, F.gelu),
    ("Gelu", 20, {"approximate": "tanh"}, lambda h: F.gelu(h, approximate="tanh")),
    ("HardSigmoid", 17, {"alpha": 0.3, "beta": 0.4}, lambda h: torch.clamp(0.3 * h + 0.4, 0.0, 1.0)),
    ("Softsign", 17, {}, F.softsign),
])
def test_single_op_forms_match_autograd(op, opset, attrs, torch_act):
    model, w1, w2 = _single_op_model(op, opset, **attrs)
    x = np.random.default_rng(8).uniform(-1.5, 1.5, (N, 6)).astype(np.float32)
    w = weights(N, 3, 9)
    # Mish is not on TensorRT's list: the forward op may stay, the backward must not add any such op
    score, grad = session(gradient_graph(model), forward_only={"Mish"}).run(["score", "grad"], {"x": x, "w": w})
    net = nn.Sequential()  # the same function in torch
    W1, W2 = torch.from_numpy(w1), torch.from_numpy(w2)
    net.forward = lambda t: torch_act(t @ W1) @ W2
    want_score, want_grad = torch_score_grad(net, x, w)
    assert rel_err(score, want_score) <= TOL and rel_err(grad, want_grad) <= TOL

    # DeepLIFT: the single op is rescaled, multipliers = W1 (ratio * (W2 w)), the ratio in float64
    base = (x - np.random.default_rng(10).uniform(0.3, 0.8, x.shape)).astype(np.float32)
    dl = session(deeplift_graph(model), forward_only={"Mish"})
    (multipliers,) = dl.run(["multipliers"], {"x": x, "baseline": base, "w": w})
    h, hb = torch.from_numpy(x).double() @ W1.double(), torch.from_numpy(base).double() @ W1.double()
    ratio = (torch_act(h) - torch_act(hb)) / (h - hb)
    want = ((ratio * (torch.from_numpy(w).double() @ W2.double().T)) @ W1.double().T).numpy()
    assert rel_err(multipliers, want) <= TOL


# --------------------------------------------------------------------------- products, quotients, MatMul, softmax


class Gates(nn.Module):
    """Products and quotients of two input-dependent tensors: a squeeze-excitation gate, x * x (one tensor
    on both sides), a quotient by an input-dependent tensor and 1 / x written as Div."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(3 * 4 * 16, 3)

    def forward(self, x):
        h = self.conv(x)
        gated = h * torch.sigmoid(self.fc(h.mean((2, 3))))[:, :, None, None]
        square = h * h
        ratio = h / (h * h + 1.0)
        return self.head(torch.cat([gated, square * 0.1, ratio], dim=1).flatten(1))


def test_products_and_quotients_of_activations_match_autograd():
    torch.manual_seed(5)
    check_gradient(Gates().eval(), (3, 4, 4), smooth=True, expected_ops={"Mul", "Div", "Sigmoid"})


class MatMulZoo(nn.Module):
    """MatMul with constants of rank 2, 3 and 4 on either side (broadcast batch axes), MatMul of two
    input-dependent tensors at rank 3 and 4 (one of them broadcast over heads), softmax over a middle
    axis and log-softmax over axis 1."""

    def __init__(self, tokens: int = 9, dim: int = 4) -> None:
        super().__init__()
        self.left = nn.Parameter(torch.randn(tokens, tokens) * 0.3)
        self.right3 = nn.Parameter(torch.randn(1, dim, dim) * 0.5)
        self.left4 = nn.Parameter(torch.randn(1, 2, tokens, tokens) * 0.3)
        self.head = nn.Linear(2 * tokens * dim + tokens * tokens, 3)

    def forward(self, x):
        t = x.reshape(-1, 4, 9).transpose(1, 2)  # (N, T, C); flatten(2) would hide the sizes from shape inference
        a = self.left @ t  # constant (T, T) on the left
        b = a @ self.right3  # constant (1, C, C) on the right, broadcast over N
        c = self.left4 @ b.unsqueeze(1)  # (1, 2, T, T) @ (N, 1, T, C): both batch axes broadcast
        s = torch.softmax(c @ t.unsqueeze(1).transpose(-1, -2), dim=-2)  # (N, 2, T, C) @ (N, 1, C, T)
        o = torch.log_softmax(s @ c, dim=1)  # (N, 2, T, T) @ (N, 2, T, C)
        self_attn = torch.matmul(t, t.transpose(1, 2))  # rank 3, one tensor on both sides
        return self.head(torch.cat([o.flatten(1), self_attn.flatten(1) * 0.1], dim=1))


@pytest.mark.parametrize("opset", [17, 18])
def test_matmul_any_rank_and_softmax_any_axis_match_autograd(opset):
    torch.manual_seed(11)
    check_gradient(MatMulZoo().eval(), (4, 3, 3), opset, smooth=True, expected_ops={"MatMul", "Softmax", "LogSoftmax"})


def test_softmax_axes_are_not_last():
    forward = export(MatMulZoo().eval(), (4, 3, 3))
    axes = {node.op_type: helper.get_attribute_value(node.attribute[0]) for node in forward.graph.node
            if node.op_type in ("Softmax", "LogSoftmax")}
    assert axes == {"Softmax": -2, "LogSoftmax": 1}


def test_one_dimensional_matmul_operand_is_refused():
    class Dot(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return x.reshape(-1, 4, 4).transpose(1, 2) @ self.v

    with pytest.raises(UnsupportedOpError, match="1-D operand"):
        gradient_graph(export(Dot().eval(), (4, 2, 2)))


# --------------------------------------------------------------------------- normalization


class Norms(nn.Module):
    """LayerNorm over the last axis (with and without bias), over the last two axes, InstanceNorm, a
    hand-written layer norm ((x - mean) / sqrt(var + eps): ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt,
    Div, Mul, Add) and, with ``group``, GroupNorm (exported as InstanceNormalization between Reshapes
    to ``Shape(x)``, whose sizes shape inference cannot see under a symbolic batch axis)."""

    def __init__(self, group: bool = False) -> None:
        super().__init__()
        self.group = group
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.ln = nn.LayerNorm(4)
        self.ln_nobias = nn.LayerNorm(4, bias=False)
        self.ln2 = nn.LayerNorm((4, 4))
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)
        self.beta = nn.Parameter(torch.rand(4) - 0.5)
        self.head = nn.Linear((6 if group else 5) * 64, 3)
        with torch.no_grad():
            for norm in (self.ln, self.ln_nobias, self.ln2, self.gn, self.inorm):
                norm.weight.uniform_(0.5, 1.5)
                if norm.bias is not None:
                    norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = self.conv(x)
        t = h.permute(0, 2, 3, 1)  # channels last
        mean = t.mean(-1, keepdim=True)
        var = (t - mean).pow(2).mean(-1, keepdim=True)
        manual = (t - mean) / torch.sqrt(var + 1e-5) * self.gamma + self.beta
        parts = [self.ln(t), self.ln_nobias(t), self.ln2(h), self.inorm(h), manual] + ([self.gn(h)] if self.group else [])
        return self.head(torch.cat([p.flatten(1) for p in parts], dim=1))


@pytest.mark.parametrize("opset", [17, 18])
def test_normalization_matches_autograd_and_finite_differences(opset):
    torch.manual_seed(13)
    forward = check_gradient(Norms().eval(), (3, 4, 4), opset, smooth=True,
                             expected_ops={"LayerNormalization", "InstanceNormalization", "Sqrt", "Div", "Pow"})
    layer_norm_axes = sorted(helper.get_attribute_value(a) for node in forward.graph.node
                             if node.op_type == "LayerNormalization" for a in node.attribute if a.name == "axis")
    assert layer_norm_axes == [-2, -1, -1]


def test_group_norm_matches_autograd_after_shape_inference_with_data_propagation():
    """GroupNorm's Reshape back to ``Shape(x)`` needs ONNX's data propagation for its sizes; with it the
    graph differentiates under a symbolic batch axis."""
    torch.manual_seed(14)
    check_gradient(Norms(group=True).eval(), (3, 4, 4), smooth=True, data_prop=True,
                   expected_ops={"LayerNormalization", "InstanceNormalization", "Reshape"})


# --------------------------------------------------------------------------- tiny production blocks


class MobileNetV3Block(nn.Module):
    """Expand conv, hardswish, depthwise 3x3, squeeze-excitation with hardsigmoid, project, residual."""

    def __init__(self, c: int = 4, hidden: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.BatchNorm2d(hidden),
                                       nn.Hardswish())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, 4, 1), nn.ReLU(), nn.Conv2d(4, hidden, 1),
                                nn.Hardsigmoid())
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1), nn.BatchNorm2d(c))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))

    def forward(self, x):
        h = self.stem(x)
        e = self.depthwise(self.expand(h))
        return self.head(h + self.project(e * self.se(e)))


class EfficientNetBlock(nn.Module):
    """MBConv: expand conv + SiLU, depthwise conv + SiLU, squeeze-excitation with SiLU and sigmoid, project."""

    def __init__(self, c: int = 4, hidden: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU())
        self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.BatchNorm2d(hidden), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.BatchNorm2d(hidden),
                                       nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, 2, 1), nn.SiLU(), nn.Conv2d(2, hidden, 1),
                                nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1), nn.BatchNorm2d(c))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))

    def forward(self, x):
        h = self.stem(x)
        e = self.depthwise(self.expand(h))
        return self.head(h + self.project(e * self.se(e)))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, permute to channels-last, LayerNorm, Linear, GELU, Linear, layer scale, permute back, residual."""

    def __init__(self, c: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, stride=4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.act, self.pw2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        h = self.stem(x)
        t = self.dw(h).permute(0, 2, 3, 1)
        t = self.gamma * self.pw2(self.act(self.pw1(self.norm(t))))
        h = h + t.permute(0, 3, 1, 2)
        return self.head(h.mean((2, 3)))


class HandAttention(nn.Module):
    """Multi-head self-attention written out: qkv Linear, heads split by reshape/permute, softmax(QK^T / sqrt(d)) V."""

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.heads, self.dim, self.tokens = heads, dim, tokens  # sizes as numbers: t.shape[1] would export as Shape
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, t):
        n, d = self.tokens, self.dim // self.heads
        q, k, v = self.qkv(t).reshape(-1, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, n, self.dim))


class ViT(nn.Module):
    """Patch conv (4x4 on 16 px: 16 tokens), class token concat, positional add, pre-norm blocks of
    attention (``nn.MultiheadAttention`` or :class:`HandAttention`) and a GELU MLP, final LayerNorm, head."""

    def __init__(self, attention: str, dim: int = 8, heads: int = 2, classes: int = 5, expand_cls: bool = False) -> None:
        super().__init__()
        self.dim, self.expand_cls = dim, expand_cls
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.5)
        self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True) if attention == "torch" else None
        self.hand = HandAttention(dim, heads, 17) if attention == "hand" else None
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).reshape(-1, self.dim, 16).transpose(1, 2)
        if self.expand_cls:  # timm's form; the exported Expand's sizes come from Where(Equal(...)), unknown to shape inference
            cls = self.cls.expand(t.shape[0], -1, -1)
        else:  # the class token broadcast against a (N, 1, dim) slice: the same values, with static sizes
            cls = self.cls + 0.0 * t[:, :1]
        t = torch.cat([cls, t], dim=1) + self.pos
        u = self.norm1(t)
        t = t + (self.mha(u, u, u, need_weights=False)[0] if self.mha is not None else self.hand(u))
        t = t + self.mlp(self.norm2(t))
        return self.head(self.norm(t)[:, 0])


# name -> (builder, input shape, ops the export must contain)
BLOCKS = {
    "mobilenet_v3": (MobileNetV3Block, (3, 8, 8), {"HardSwish", "HardSigmoid", "Mul", "Conv"}),
    "efficientnet": (EfficientNetBlock, (3, 8, 8), {"Sigmoid", "Mul", "Conv", "GlobalAveragePool"}),
    "convnext": (ConvNeXtBlock, (3, 16, 16), {"LayerNormalization", "Erf", "Transpose", "MatMul"}),
    "vit_hand": (lambda: ViT("hand"), (3, 16, 16), {"LayerNormalization", "Softmax", "MatMul", "Erf", "Concat"}),
}


def randomized(build, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = build()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            elif isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_production_blocks_match_autograd(name, opset):
    build, shape, ops = BLOCKS[name]
    check_gradient(randomized(build, 21), shape, opset, smooth=opset == 17, expected_ops=ops, low=0.0)


def test_torch_multihead_attention_export_matches_autograd():
    """nn.MultiheadAttention's TorchScript export reshapes q, k, v to sizes computed at run time from the
    batch; shapes are read with two concrete batches (grad_context.read_shapes), so the rank is known and
    only the batch-dependent sizes stay symbolic."""
    net = randomized(lambda: ViT("torch"), 21)
    assert {"MatMul", "Softmax"} <= {node.op_type for node in export(net, (3, 16, 16)).graph.node}
    check_gradient(net, (3, 16, 16))


def test_class_token_expanded_with_minus_one_matches_autograd():
    """``cls.expand(n, -1, -1)`` exports sizes computed through Where(Equal(...)): the Concat that follows
    reads its inputs' sizes with Shape at run time."""
    check_gradient(randomized(lambda: ViT("hand", expand_cls=True), 21), (3, 16, 16))


# --------------------------------------------------------------------------- DeepLIFT


class HardSwishUnit(nn.Module):
    """HardSwish written out, x * relu6(x + 3) / 6: Add, Clip, Div and a product in the export."""

    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


class SoftsignUnit(nn.Module):
    def forward(self, x):
        return F.softsign(x)


class TwoActs(nn.Module):
    """conv -> BN -> ReLU -> ``act1`` -> conv -> ``act2`` -> global average pool -> linear: the ReLU right
    before ``act1`` must stay a separate unit (the island starts at the ReLU's output)."""

    def __init__(self, act1: nn.Module, act2: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn, self.relu, self.act1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), act1
        self.conv2, self.act2 = nn.Conv2d(6, 6, 3, padding=1), act2
        self.fc = nn.Linear(6 * 16, 4)
        with torch.no_grad():
            self.conv1.weight.mul_(3.0)
            self.conv2.weight.mul_(3.0)

    def forward(self, x):
        h = self.act1(self.relu(self.bn(self.conv1(x))) - 0.5)
        return self.fc(self.act2(self.conv2(h)).flatten(1))


UNIT_TYPES = (nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU,
              nn.CELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardsigmoid, HardSwishUnit, SoftsignUnit)


class _UnitTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, UNIT_TYPES) or super().is_leaf_module(m, qualname)


def reference_multipliers(model: nn.Module, x: np.ndarray, base: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The torch reference's rescale rule (``rescaled_forward``) in float64, with every activation module,
    SiLU, GELU, Mish and HardSwish included, rescaled as one element-wise unit."""
    model64 = copy.deepcopy(model).double().eval()
    graph = fx.GraphModule(model64, _UnitTracer().trace(model64))
    modules = dict(graph.named_modules())
    units = frozenset(node.name for node in graph.graph.nodes
                      if node.op == "call_module" and isinstance(modules[node.target], UNIT_TYPES))
    assert units
    both = torch.from_numpy(np.concatenate([x, base])).double().requires_grad_(True)
    logits = rescaled_forward(Plan(graph, units, None), both, 1e-10)
    (grads,) = torch.autograd.grad((logits[: len(x)] * torch.from_numpy(w).double()).sum(), both)
    return grads[: len(x)].numpy()


def deeplift_case(shape, classes: int, seed: int):
    """Inputs, baselines below them (one all black, one equal to its input on half the image), weights."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (N, *shape)).astype(np.float32)
    base = (x - rng.uniform(0.2, 0.6, x.shape)).astype(np.float32)
    base[1] = 0.0
    base[2, :, : shape[1] // 2] = x[2, :, : shape[1] // 2]
    return x, base, weights(N, classes, seed + 1)


def run_deeplift(model: nn.Module, shape, x, base, w, opset: int = 17, expected_ops: set[str] = frozenset()):
    forward = export(model, shape, opset)
    assert expected_ops <= {node.op_type for node in forward.graph.node}
    sess = session(deeplift_graph(forward))
    multipliers, score, score_base = sess.run(["multipliers", "score", "score_baseline"], {"x": x, "baseline": base, "w": w})
    return multipliers, score, score_base


def check_completeness(attr, score, score_base):
    gap = score.astype(np.float64) - score_base
    total = attr.reshape(len(attr), -1).astype(np.float64).sum(1)
    assert np.abs(gap).max() > 0
    assert np.abs(total - gap).max() <= TOL * max(np.abs(gap).max(), 1.0)


# name -> (builder, ops the export must contain)
DEEPLIFT_NETS = {
    "silu_gelu": (lambda: TwoActs(nn.SiLU(), nn.GELU()), {"Sigmoid", "Erf", "Mul"}),
    "gelu_tanh_mish": (lambda: TwoActs(nn.GELU(approximate="tanh"), nn.Mish()), {"Tanh", "Softplus", "Mul"}),
    "hardswish_decomposed_softsign": (lambda: TwoActs(HardSwishUnit(), SoftsignUnit()), {"Clip", "Abs", "Div", "Mul"}),
    "hardswish_hardsigmoid": (lambda: TwoActs(nn.Hardswish(), nn.Hardsigmoid()), {"HardSwish", "HardSigmoid"}),
    "elu_selu": (lambda: TwoActs(nn.ELU(0.7), nn.SELU()), {"Elu", "Selu"}),
    "celu_prelu": (lambda: TwoActs(nn.CELU(1.3), nn.PReLU(6, init=0.2)), {"Celu", "PRelu"}),
    "softplus_tanh": (lambda: TwoActs(nn.Softplus(beta=2.0, threshold=50.0), nn.Tanh()), {"Softplus", "Tanh"}),
}


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("name", list(DEEPLIFT_NETS))
def test_deeplift_graph_matches_the_rescale_rule_per_unit_and_is_complete(name, opset):
    build, ops = DEEPLIFT_NETS[name]
    model = randomized(build, 31)
    shape = (3, 4, 4)
    x, base, w = deeplift_case(shape, 4, seed=32)
    multipliers, score, score_base = run_deeplift(model, shape, x, base, w, opset, ops)
    attr = (x - base) * multipliers
    want = (x.astype(np.float64) - base) * reference_multipliers(model, x, base, w)
    assert np.abs(want).max() > 0
    assert rel_err(attr, want) <= TOL, rel_err(attr, want)
    check_completeness(attr, score, score_base)
    # the islands are real: a per-op rescale of SiLU (Sigmoid, then the product) would differ
    if name == "silu_gelu":
        assert rel_err(multipliers, torch_score_grad(model, x, w)[1]) > 1e-2


def test_island_multipliers_fall_back_to_the_gradient_when_baseline_is_input():
    model = randomized(DEEPLIFT_NETS["gelu_tanh_mish"][0], 33)
    shape = (3, 4, 4)
    x, _, w = deeplift_case(shape, 4, seed=34)
    multipliers, score, score_base = run_deeplift(model, shape, x, x, w)
    _, grad = torch_score_grad(model, x, w)
    assert np.isfinite(multipliers).all()
    assert rel_err(multipliers, grad) <= TOL
    np.testing.assert_array_equal(score, score_base)


class CaptumActs(nn.Module):
    """The element-wise modules Captum's DeepLift has its own rule for (ELU, Softplus, Sigmoid, Tanh, LeakyReLU),
    monotone: non-negative weights, so with ``baseline < x`` every unit's input moves by a clear margin
    (the rescale ratio of a unit that barely moves is float32 rounding, on any backend), and biases that
    centre each unit's input on calibration images (no saturated sigmoid or tanh)."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ELU(0.8)),
            nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.Softplus()),
            nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.LeakyReLU(0.1)),
            nn.Sequential(nn.Flatten(), nn.Linear(6 * 16, 12), nn.Sigmoid()),
            nn.Sequential(nn.Linear(12, 8), nn.Tanh()),
        ])
        self.fc = nn.Linear(8, 4)
        calibration = torch.rand(64, 3, 4, 4)
        with torch.no_grad():
            for stage in self.stages:
                layer = next(m for m in stage if isinstance(m, (nn.Conv2d, nn.Linear)))
                layer.weight.abs_()
                pre = stage[:-1](calibration)
                dims = (0, 2, 3) if pre.ndim == 4 else (0,)
                layer.weight.div_(pre.std(dims).view(-1, *([1] * (layer.weight.ndim - 1))) + 1e-3)
                layer.bias.sub_(stage[:-1](calibration).mean(dims))
                calibration = stage(calibration)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return self.fc(x)


def test_deeplift_graph_matches_captum_on_the_units_captum_defines():
    from captum.attr import DeepLift

    model = randomized(CaptumActs, 35)
    shape = (3, 4, 4)
    x, base, _ = deeplift_case(shape, 4, seed=36)
    source = np.arange(N) % 4
    w = np.eye(4, dtype=np.float32)[source]  # one-vs-all: Captum attributes one logit
    multipliers, score, score_base = run_deeplift(model, shape, x, base, w)
    attr = (x - base) * multipliers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about setting up hooks on a model that reuses no modules
        want = DeepLift(copy.deepcopy(model).double()).attribute(
            torch.from_numpy(x).double(), baselines=torch.from_numpy(base).double(),
            target=torch.from_numpy(source)).detach().numpy()
    assert rel_err(attr, want) <= TOL, rel_err(attr, want)
    check_completeness(attr, score, score_base)
    mine = deeplift(model, x, source=source, baseline=base)  # the torch reference agrees too
    assert rel_err(mine, want) <= TOL


class Escaping(nn.Module):
    """x * sigmoid(x) + sigmoid(x): the sigmoid is used outside the product, so it is no single unit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(64, 3)

    def forward(self, x):
        h = self.conv(x)
        s = torch.sigmoid(h)
        return self.fc((h * s + s).flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 4), nn.Linear(64, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.head((h * torch.sigmoid(self.fc(h.mean((2, 3))))[:, :, None, None]).flatten(1))


class ManualLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(64, 3)

    def forward(self, x):
        t = self.conv(x).permute(0, 2, 3, 1)
        mean = t.mean(-1, keepdim=True)
        return self.fc(((t - mean) / torch.sqrt((t - mean).pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(1))


class Gram(nn.Module):
    """Attention scores without the softmax: tokens @ tokens^T."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(81, 3)

    def forward(self, x):
        t = x.reshape(-1, 4, 9).transpose(1, 2)
        return self.fc((t @ t.transpose(1, 2)).flatten(1))


@pytest.mark.parametrize(("build", "shape", "pattern"), [
    (SqueezeExcite, (3, 4, 4), r"products of two input-dependent tensors \(op Mul at node '/Mul'\)"),
    (Escaping, (3, 4, 4), r"products of two input-dependent tensors \(op Mul at node '/Mul'\)"),
    (ManualLayerNorm, (3, 4, 4), r"division by an input-dependent tensor \(op Div at node '/Div'\)"),
    (lambda: ViT("hand"), (3, 16, 16), r"normalization across features \(op LayerNormalization at node '/norm1/"),
    (Gram, (4, 3, 3), r"products of two input-dependent tensors \(op MatMul at node '/MatMul'\)"),
])
def test_deeplift_still_refuses_what_is_not_element_wise(build, shape, pattern):
    torch.manual_seed(37)
    forward = export(build().eval(), shape)
    gradient_graph(forward)  # the gradient graph is fine
    with pytest.raises(UnsupportedOpError, match=pattern) as info:
        deeplift_graph(forward)
    assert str(info.value).endswith("use integrated gradients instead")


def test_group_normalization_op_matches_autograd():
    """The single GroupNormalization op (opset 21: per-channel scale and bias)."""
    rng = np.random.default_rng(15)
    scale = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, 4).astype(np.float32)
    head = rng.standard_normal((36, 3)).astype(np.float32)
    nodes = [helper.make_node("GroupNormalization", ["x", "s", "b"], ["h"], name="/gn/GroupNormalization", num_groups=2,
                              epsilon=1e-5),
             helper.make_node("Flatten", ["h"], ["f"], name="/Flatten"),
             helper.make_node("MatMul", ["f", "W"], ["logits"], name="/fc/MatMul")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(a, n) for a, n in ((scale, "s"), (bias, "b"), (head, "W"))],
                              # ONNX's shape inference does not type GroupNormalization's output: the graph says it
                              value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 4, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    x = rng.uniform(0.0, 1.0, (N, 4, 3, 3)).astype(np.float32)
    w = weights(N, 3, 16)
    score, grad = session(gradient_graph(model)).run(["score", "grad"], {"x": x, "w": w})
    net = nn.Sequential()
    params = [torch.from_numpy(a) for a in (scale, bias, head)]
    net.forward = lambda t: F.group_norm(t, 2, params[0], params[1], eps=1e-5).flatten(1) @ params[2]
    want_score, want_grad = torch_score_grad(net, x, w)
    assert rel_err(score, want_score) <= TOL and rel_err(grad, want_grad) <= TOL
    with pytest.raises(UnsupportedOpError, match="normalization across features"):
        deeplift_graph(model)
