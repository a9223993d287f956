"""Gradient and DeepLIFT rules for reductions, LRN, Einsum, SpaceToDepth / DepthToSpace and the element-wise
Sin, Cos, Sign, Floor, Ceil and Round (xaisdk.deploy.grad_rules_reductions) against torch autograd (at ties
too) and float64 central differences: small modules exported by torch's TorchScript exporter at opsets 17
and 18 with a dynamic batch axis, and single-op graphs written by hand for the forms torch does not emit."""

from __future__ import annotations

import copy
import functools
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from nets import Fn
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from torch import nn

from xaisdk.deploy.allowlist import disallowed_nodes
from xaisdk.deploy.float64_reference import Float64Reference
from xaisdk.deploy.grad_rules_reductions import parse_einsum
from xaisdk.deploy.onnx_grad import UnsupportedOpError, deeplift_graph, gradient_graph
from xaisdk.methods.deeplift_rules import (
    AFFINE,
    BILINEAR,
    ELEMENTWISE_EXTREMUM,
    EXTREMUM_REDUCTION,
    NONLINEAR_REDUCTION,
    NORMALIZATION,
    PRODUCT,
    REFUSED,
    RESCALED,
    op_kind,
    refusal,
)

TOL = 1e-4
N = 3  # rows run; the export example has 2, so the batch axis must really be dynamic


# --------------------------------------------------------------------------- helpers


def export(module: nn.Module, shape, opset: int = 17) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(module.eval(), (torch.zeros(2, *shape),), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    return onnx.load_from_string(buffer.getvalue())


def session(model: onnx.ModelProto, forward: onnx.ModelProto | None = None) -> ort.InferenceSession:
    """A CPU session, after checking that the graph adds nothing outside TensorRT's allow-list (``forward``'s own
    nodes, e.g. an LRN of even size, are the forward's business)."""
    allowed = set(disallowed_nodes(forward)) if forward is not None else set()
    assert set(disallowed_nodes(model)) <= allowed, disallowed_nodes(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


def torch_grad(fn, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score ``sum_k w[n, k] fn(x)[n, k]`` and its input gradient by torch autograd (float32)."""
    xt = torch.from_numpy(x).requires_grad_(True)
    score = (fn(xt) * torch.from_numpy(w)).sum(1)
    (grad,) = torch.autograd.grad(score.sum(), xt)
    return score.detach().numpy(), grad.numpy()


def central_differences(logits64, x: np.ndarray, w: np.ndarray, grad: np.ndarray) -> None:
    """Directional derivatives <grad, v> against float64 central differences of ``logits64`` (float64 in and out)."""
    rng = np.random.default_rng(13)
    x64, w64, step = x.astype(np.float64), w.astype(np.float64), 1e-6
    fd, analytic = [], []
    for _ in range(3):
        v = rng.standard_normal(x.shape)
        plus, minus = (logits64(x64 + step * v) * w64).sum(1), (logits64(x64 - step * v) * w64).sum(1)
        fd.append((plus - minus) / (2 * step))
        analytic.append((grad.astype(np.float64) * v).reshape(len(x), -1).sum(1))
    fd, analytic = np.concatenate(fd), np.concatenate(analytic)
    assert np.abs(fd).max() > 1e-3
    assert rel_err(analytic, fd) <= TOL, rel_err(analytic, fd)


def torch_float64(model: nn.Module):
    model64 = copy.deepcopy(model).double().eval()

    def logits(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model64(torch.from_numpy(a)).numpy()

    return logits


class Head(nn.Module):
    """``body`` then a linear layer on the flattened result (every output element gets its own weight)."""

    def __init__(self, body, shape, classes: int = 3) -> None:
        super().__init__()
        self.body = body if isinstance(body, nn.Module) else Fn(body)
        with torch.no_grad():
            features = self.body(torch.zeros(1, *shape)).numel()
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def check_exported(body, shape, opset: int, expect: set[str], x: np.ndarray | None = None, seed: int = 0,
                   fd: bool = True) -> tuple[np.ndarray, np.ndarray, nn.Module, np.ndarray]:
    """Export ``Head(body)``; its gradient graph against torch autograd and float64 central differences.
    Returns (gradient graph's grad, torch's grad, the model, w)."""
    torch.manual_seed(seed)
    model = Head(body, shape).eval()
    forward = export(model, shape, opset)
    ops = {node.op_type for node in forward.graph.node}
    assert expect <= ops, sorted(ops)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, *shape)).astype(np.float32) if x is None else x
    w = rng.standard_normal((len(x), 3)).astype(np.float32)
    score, grad = session(gradient_graph(forward), forward).run(["score", "grad"], {"x": x, "w": w})
    want_score, want = torch_grad(model, x, w)
    assert np.abs(want).max() > 0
    assert rel_err(score, want_score) <= TOL
    assert rel_err(grad, want) <= TOL, rel_err(grad, want)
    if fd:
        central_differences(torch_float64(model), x, w, grad)
    return grad, want, model, w


def graph_model(nodes: list[onnx.NodeProto], x_dims, features: int, opset: int = 17, inits=(),
                seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> ``nodes`` -> Flatten -> MatMul(W): logits (N, 3), written by hand. Returns the model and W."""
    weight = np.random.default_rng(seed).standard_normal((features, 3)).astype(np.float32)
    nodes = [*nodes, helper.make_node("Flatten", [nodes[-1].output[0]], ["flat"], name="/Flatten"),
             helper.make_node("MatMul", ["flat", "W"], ["logits"], name="/fc/MatMul")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_dims])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [*inits, numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model, weight


def const(name: str, value) -> onnx.TensorProto:
    value = np.asarray(value)
    return numpy_helper.from_array(value.astype(np.int64 if value.dtype.kind == "i" else np.float32), name)


def check_graph(model: onnx.ModelProto, weight: np.ndarray, twin, x: np.ndarray, fd: bool = True,
                seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A hand-written graph's gradient against torch autograd of ``twin`` (the same function in torch, checked
    on the scores) and float64 central differences of the graph itself. Returns (grad, torch's grad, w)."""
    w = np.random.default_rng(seed).standard_normal((len(x), 3)).astype(np.float32)
    score, grad = session(gradient_graph(model), model).run(["score", "grad"], {"x": x, "w": w})
    head = torch.from_numpy(weight)
    want_score, want = torch_grad(lambda t: twin(t).flatten(1) @ head, x, w)
    assert np.abs(want).max() > 0
    assert rel_err(score, want_score) <= TOL  # the twin is the graph's function
    assert rel_err(grad, want) <= TOL, rel_err(grad, want)
    if fd:
        central_differences(Float64Reference(model), x, w, grad)
    return grad, want, w


def upstream(model: nn.Module | np.ndarray, w: np.ndarray, shape) -> np.ndarray:
    """d score / d (the body's output) of a Head, or of a graph whose head is ``W`` (an array)."""
    weight = model if isinstance(model, np.ndarray) else model.fc.weight.detach().numpy().T
    return (w @ weight.T).reshape(len(w), *shape)


# --------------------------------------------------------------------------- exported by torch, opsets 17 and 18


def _attention(x):
    t = x.reshape(-1, 4, 16)  # flatten(2) would hide the sizes from shape inference
    scores = torch.einsum("ncl,ncm->nlm", t, t.flip(1)) * 0.3
    return torch.einsum("nlm,ncm->ncl", scores.softmax(-1), t)


# name -> (body, ops the export must contain)
EXPORTED = {
    "maximum_broadcast": (lambda x: torch.maximum(x, x.mean(1, keepdim=True)), {"Max"}),
    "minimum_constant": (lambda x: torch.minimum(x, torch.linspace(-0.5, 0.5, 4)), {"Min"}),
    "amax": (lambda x: torch.amax(x, dim=(1, 2)), {"ReduceMax"}),
    "amin_keepdim": (lambda x: torch.amin(x, dim=-1, keepdim=True), {"ReduceMin"}),
    "norm_l2": (lambda x: x.norm(p=2, dim=1), {"ReduceL2"}),
    "vector_norm_l1": (lambda x: torch.linalg.vector_norm(x, ord=1, dim=(1, 2)), {"ReduceL1"}),
    "logsumexp": (lambda x: torch.logsumexp(x, dim=1), {"ReduceLogSumExp"}),
    "einsum_attention": (_attention, {"Einsum", "Softmax"}),
    "einsum_summed_letter": (lambda x: torch.einsum("nchw,c->nh", x, torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=x.dtype)),
                             {"Einsum"}),
    "einsum_ellipsis": (lambda x: torch.einsum("...hw,wv->...hv", x, torch.arange(16.0, dtype=x.dtype).reshape(4, 4) / 10),
                        {"Einsum"}),
    "pixel_shuffle": (lambda x: F.pixel_shuffle(x, 2), {"DepthToSpace"}),
    "sin_cos": (lambda x: torch.sin(2 * x) + torch.cos(3 * x), {"Sin", "Cos"}),
    "steps": (lambda x: torch.floor(2 * x) * x + torch.round(3 * x) * torch.sin(x) + torch.sign(x) * x + torch.ceil(x),
              {"Floor", "Round", "Sign", "Ceil"}),
}


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("name", list(EXPORTED))
def test_exported_op_gradient_matches_autograd_and_finite_differences(name, opset):
    body, ops = EXPORTED[name]
    check_exported(body, (4, 4, 4), opset, ops)


def test_step_functions_pass_no_gradient():
    """Sign, Floor, Ceil, Round alone: torch's gradient is exactly 0, and so is the graph's."""
    body = Fn(lambda x: torch.sign(x) + torch.floor(x) + torch.ceil(x) + torch.round(x))
    forward = export(Head(body, (2, 3)).eval(), (2, 3))
    x = np.random.default_rng(1).standard_normal((N, 2, 3)).astype(np.float32)
    w = np.ones((N, 3), np.float32)
    score, grad = session(gradient_graph(forward), forward).run(["score", "grad"], {"x": x, "w": w})
    assert np.abs(score).max() > 0 and np.array_equal(grad, np.zeros_like(x))


def test_einsum_backward_equations_carry_no_ellipsis():
    """TensorRT's Einsum takes no ellipsis and no broadcasting: the backward equations write ``...`` out."""
    model = Head(EXPORTED["einsum_ellipsis"][0], (4, 4, 4)).eval()
    grad_model = gradient_graph(export(model, (4, 4, 4)))
    equations = [helper.get_attribute_value(n.attribute[0]).decode() for n in grad_model.graph.node if n.op_type == "Einsum"]
    assert "...hw,wv->...hv" in equations  # the forward's own
    backward = [eq for eq in equations if eq != "...hw,wv->...hv"]
    assert backward == ["abhv,wv->abhw"]


# --------------------------------------------------------------------------- ties, against torch autograd


@pytest.mark.parametrize("opset", [17, 18])
def test_max_of_equal_operands_splits_the_gradient_like_torch_maximum(opset):
    """maximum(x, floor(x)) on integer x: the operands tie everywhere (torch: half to each); on x + 0.5 the
    first operand wins alone. minimum(x, 0) ties where x == 0."""
    shape = (2, 3, 3)
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, (N, *shape)).astype(np.float32)
    x[1] += 0.5
    tied = x == np.floor(x)
    assert 0.3 < tied.mean() < 0.9
    grad, want, model, w = check_exported(lambda t: torch.maximum(t, torch.floor(t)), shape, opset, {"Max", "Floor"},
                                          x=x, fd=False)
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)
    u = upstream(model, w, shape)
    np.testing.assert_allclose(grad[tied], 0.5 * u[tied], rtol=1e-5, atol=1e-6)  # split, not routed to one operand
    np.testing.assert_allclose(grad[~tied], u[~tied], rtol=1e-5, atol=1e-6)

    x = rng.integers(-1, 2, (N, *shape)).astype(np.float32)
    assert (x == 0).mean() > 0.2
    grad, want, _, _ = check_exported(lambda t: torch.minimum(t, torch.zeros(())), shape, opset, {"Min"}, x=x, fd=False)
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_variadic_three_way_tie_splits_in_thirds(op):
    """Max(x, Floor(x), Ceil(x)): on integer x all three tie and x gets a third (the equal split torch.maximum
    makes between two, extended to three); elsewhere Ceil (Max) or Floor (Min) wins and x gets nothing."""
    nodes = [helper.make_node("Floor", ["x"], ["f"], name="/Floor"), helper.make_node("Ceil", ["x"], ["c"], name="/Ceil"),
             helper.make_node(op, ["x", "f", "c"], ["m"], name=f"/{op}")]
    model, weight = graph_model(nodes, [2, 3], 6)
    x = np.random.default_rng(3).integers(-2, 3, (N, 2, 3)).astype(np.float32)
    x[0] += 0.25
    w = np.random.default_rng(4).standard_normal((N, 3)).astype(np.float32)
    _, grad = session(gradient_graph(model)).run(["score", "grad"], {"x": x, "w": w})
    integer = x == np.floor(x)
    assert integer.any() and not integer.all()
    np.testing.assert_allclose(grad, np.where(integer, upstream(weight, w, (2, 3)) / 3.0, 0.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("name", ["amax", "amin_keepdim"])
def test_reduce_max_min_split_evenly_among_repeated_extrema_like_torch(name, opset):
    shape = (2, 3, 3)
    x = np.random.default_rng(5).integers(0, 3, (N, *shape)).astype(np.float32)
    body = (lambda t: torch.amax(t, dim=(2, 3))) if name == "amax" else (lambda t: torch.amin(t, dim=-1, keepdim=True))
    op = "ReduceMax" if name == "amax" else "ReduceMin"
    grad, want, _, _ = check_exported(body, shape, opset, {op}, x=x, fd=False)
    extreme = x.max(axis=(2, 3), keepdims=True) if name == "amax" else x.min(axis=-1, keepdims=True)
    assert ((x == extreme).sum(axis=(2, 3) if name == "amax" else -1) > 1).mean() > 0.25  # repeated extrema
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("opset", [17, 18])
def test_l2_norm_of_an_all_zero_slice_passes_no_gradient(opset):
    shape = (3, 2, 2)
    x = np.random.default_rng(6).standard_normal((N, *shape)).astype(np.float32)
    x[0, :, 1, :] = 0.0
    x[2, :, :, 0] = 0.0
    grad, want, _, _ = check_exported(lambda t: torch.linalg.vector_norm(t, dim=1), shape, opset, {"ReduceL2"}, x=x,
                                      fd=False)
    assert np.isfinite(grad).all()
    assert (grad[0, :, 1, :] == 0).all() and (grad[2, :, :, 0] == 0).all()
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- single-op graphs written by hand


ROW = np.array([0.3, -0.2, 0.1], np.float32)


# (op, operands) with x (N, 2, 3), m = its mean over axis 1 (N, 1, 3) and row (3,)
VARIADIC = [("Sum", ["x", "m", "row"]), ("Sum", ["x", "m", "x"]), ("Mean", ["x", "m", "row"]),
            ("Max", ["x", "m", "row"]), ("Min", ["m", "row", "x"])]


@pytest.mark.parametrize(("op", "operands"), VARIADIC)
def test_variadic_ops_with_broadcasting(op, operands):
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], name="/ReduceMean", axes=[1], keepdims=1),
             helper.make_node(op, operands, ["y"], name=f"/{op}")]
    model, weight = graph_model(nodes, [2, 3], 6, inits=[const("row", ROW)])
    combine = {"Sum": torch.add, "Mean": torch.add, "Max": torch.maximum, "Min": torch.minimum}[op]

    def twin(t):
        values = {"x": t, "m": t.mean(1, keepdim=True), "row": torch.from_numpy(ROW)}
        y = functools.reduce(combine, [values[name] for name in operands])
        return y / len(operands) if op == "Mean" else y

    x = np.random.default_rng(7).standard_normal((N, 2, 3)).astype(np.float32)
    check_graph(model, weight, twin, x)


# op -> torch twin of (tensor, axes or None for no reduction, keepdims)
REDUCE_TWINS = {
    "ReduceMax": lambda t, axes, keep: torch.amax(t, axes, keep) if axes else t,
    "ReduceMin": lambda t, axes, keep: torch.amin(t, axes, keep) if axes else t,
    "ReduceL1": lambda t, axes, keep: t.abs().sum(axes, keep) if axes else t.abs(),
    "ReduceL2": lambda t, axes, keep: torch.linalg.vector_norm(t, dim=axes, keepdim=keep) if axes else t.abs(),
    "ReduceSumSquare": lambda t, axes, keep: t.pow(2).sum(axes, keep) if axes else t.pow(2),
    "ReduceLogSumExp": lambda t, axes, keep: torch.logsumexp(t, axes, keep) if axes else t,
}
# form -> (opset, axes (None: noop_with_empty_axes=1 and no axes), keepdims, axes as an input)
REDUCE_FORMS = {
    "attribute_axes_keepdims0_negative": (17, (-1, 1), 0, False),
    "input_axes_keepdims0_negative": (18, (-2,), 0, True),
    "input_axes_keepdims1": (18, (1, -1), 1, True),
    "noop_with_empty_axes": (18, None, 1, True),
}


@pytest.mark.parametrize("form", list(REDUCE_FORMS))
@pytest.mark.parametrize("op", list(REDUCE_TWINS))
def test_reduction_forms_written_by_hand(op, form):
    opset, axes, keepdims, as_input = REDUCE_FORMS[form]
    shape = (2, 3, 4)
    inits = []
    if axes is None:
        node = helper.make_node(op, ["x"], ["r"], name=f"/{op}", keepdims=keepdims, noop_with_empty_axes=1)
    elif as_input:
        node = helper.make_node(op, ["x", "axes"], ["r"], name=f"/{op}", keepdims=keepdims)
        inits = [const("axes", np.array(axes, np.int64))]
    else:
        node = helper.make_node(op, ["x"], ["r"], name=f"/{op}", axes=list(axes), keepdims=keepdims)
    x = np.random.default_rng(8).standard_normal((N, *shape)).astype(np.float32)
    twin = functools.partial(REDUCE_TWINS[op], axes=tuple(a % 4 for a in axes) if axes else None, keep=bool(keepdims))
    features = twin(torch.from_numpy(x[:1])).numel()
    model, weight = graph_model([node], shape, features, opset, inits)
    check_graph(model, weight, twin, x)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_matches_autograd(size):
    """AlexNet's LRN against torch's nn.LocalResponseNorm (which the exporter writes out in other ops, so the op
    is written by hand), with a large alpha so the normalizing sum matters. ONNX Runtime and TensorRT take odd
    sizes only. The central differences run on a float64 nn.LocalResponseNorm: onnx's reference LRN loops over
    the batch axis instead of the channels (onnx 1.23), so the graph's own float64 copy is wrong for it."""
    alpha, beta, bias = 0.4, 0.75, 1.5
    node = helper.make_node("LRN", ["x"], ["y"], name="/lrn/LRN", size=size, alpha=alpha, beta=beta, bias=bias)
    model, weight = graph_model([node], [6, 2, 2], 24)
    twin = nn.LocalResponseNorm(size, alpha, beta, bias)
    x = (1.5 * np.random.default_rng(9).standard_normal((N, 6, 2, 2))).astype(np.float32)
    grad, _, w = check_graph(model, weight, twin, x, fd=False)
    head64 = torch.from_numpy(weight).double()
    central_differences(lambda a: (twin(torch.from_numpy(a)).flatten(1) @ head64).numpy(), x, w, grad)
    local = upstream(weight, w, (6, 2, 2)) * (bias + alpha / size * x.astype(np.float64) ** 2) ** -beta
    assert rel_err(grad, local) > 1e-2  # the window term (the sum's own gradient) is really exercised


def lrn_numpy(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX's LRN: channel c's window is c - floor((size - 1) / 2) ... c + ceil((size - 1) / 2)."""
    before, after = (size - 1) // 2, size // 2
    squares = np.stack([(x[:, max(c - before, 0):c + after + 1] ** 2).sum(1) for c in range(x.shape[1])], 1)
    return (x / (bias + alpha / size * squares) ** beta).astype(x.dtype)


class ChannelLRN(OpRun):
    """onnx's reference LRN with its loop over the channels (onnx 1.23 loops over the batch axis)."""

    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        return (lrn_numpy(x, size, alpha, beta, bias),)


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_sizes_follow_the_onnx_window(size):
    """Even windows are asymmetric (channels c - (size - 1) // 2 ... c + size // 2; torch centres them the other
    way). ONNX Runtime and TensorRT refuse even sizes, so the graph runs on onnx's reference evaluator."""
    alpha, beta, bias = 0.4, 0.75, 1.5
    node = helper.make_node("LRN", ["x"], ["y"], name="/lrn/LRN", size=size, alpha=alpha, beta=beta, bias=bias)
    model, weight = graph_model([node], [6, 2, 2], 24)
    x = (1.5 * np.random.default_rng(9).standard_normal((N, 6, 2, 2))).astype(np.float32)
    w = np.random.default_rng(10).standard_normal((N, 3)).astype(np.float32)
    grad = ReferenceEvaluator(gradient_graph(model), new_ops=[ChannelLRN]).run(["grad"], {"x": x, "w": w})[0]

    def onnx_lrn(t: torch.Tensor) -> torch.Tensor:
        squares = F.pad(t.pow(2), (0, 0, 0, 0, (size - 1) // 2, size // 2)).unfold(1, size, 1).sum(-1)
        return t / (bias + alpha / size * squares).pow(beta)

    x64 = x.astype(np.float64)
    np.testing.assert_allclose(onnx_lrn(torch.from_numpy(x64)).numpy(), lrn_numpy(x64, size, alpha, beta, bias))
    head = torch.from_numpy(weight)
    _, want = torch_grad(lambda t: onnx_lrn(t).flatten(1) @ head, x, w)
    assert rel_err(grad, want) <= TOL
    _, centred = torch_grad(lambda t: nn.LocalResponseNorm(size, alpha, beta, bias)(t).flatten(1) @ head, x, w)
    assert rel_err(grad, centred) > 1e-2  # the window's side matters


def test_lrn_on_the_allow_list_with_tensorrt_limits():
    def problems(**attrs) -> list[str]:
        io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4, 2, 2]) for n in "xy"]
        graph = helper.make_graph([helper.make_node("LRN", ["x"], ["y"], name="/lrn", **attrs)], "g", io_[:1], io_[1:])
        return disallowed_nodes(helper.make_model(graph))

    assert problems(size=5) == [] and problems(size=15, alpha=1e-4, beta=0.75, bias=2.0) == []
    assert problems(size=4) == ["LRN at node '/lrn': LRN size 4 (TensorRT: odd, 1 to 15)"]
    assert problems(size=17) == ["LRN at node '/lrn': LRN size 17 (TensorRT: odd, 1 to 15)"]
    assert problems(size=3, beta=0.001) == ["LRN at node '/lrn': LRN beta=0.001 (TensorRT: 0.01 to 100000)"]
    assert problems(size=3, bias=0.0) == ["LRN at node '/lrn': LRN bias=0 (TensorRT: 1e-05 to 1e+10)"]


def _depth_to_space_dcr(t: torch.Tensor, b: int) -> torch.Tensor:
    n, c, h, w = t.shape
    return t.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(t: torch.Tensor, b: int) -> torch.Tensor:
    n, c, h, w = t.shape
    return t.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)


@pytest.mark.parametrize(("op", "mode", "shape", "twin", "backward"), [
    ("DepthToSpace", "DCR", (8, 2, 3), lambda t: _depth_to_space_dcr(t, 2), "SpaceToDepth"),
    ("DepthToSpace", "CRD", (8, 2, 3), lambda t: F.pixel_shuffle(t, 2), "Transpose"),
    ("SpaceToDepth", None, (2, 4, 6), lambda t: _space_to_depth(t, 2), "DepthToSpace"),
])
def test_space_depth_rearrangements(op, mode, shape, twin, backward):
    attrs = {"mode": mode} if mode else {}
    model, weight = graph_model([helper.make_node(op, ["x"], ["y"], name=f"/{op}", blocksize=2, **attrs)], shape, 48)
    x = np.random.default_rng(10).standard_normal((N, *shape)).astype(np.float32)
    grad, _, w = check_graph(model, weight, twin, x)
    assert backward in {n.op_type for n in gradient_graph(model).graph.node if n.name.startswith("grad")}
    # a permutation: the gradient is the upstream gradient moved back, value for value
    assert np.array_equal(np.sort(grad.ravel()), np.sort(upstream(weight, w, twin(torch.zeros(1, *shape)).shape[1:]).ravel()))


B_CONST = np.random.default_rng(11).standard_normal((1, 4, 3, 5)).astype(np.float32)
M_CONST = np.random.default_rng(12).standard_normal((3, 3)).astype(np.float32)


# name -> (nodes before the Einsum, operands, equation, x dims, twin)
EINSUMS = {
    "ellipsis_broadcast_from_one": ([helper.make_node("Unsqueeze", ["x", "one"], ["u"], name="/Unsqueeze")],
                                    ["u", "B"], "...ij,...jk->...ik", [2, 3],
                                    lambda t: torch.einsum("...ij,...jk->...ik", t.unsqueeze(1), torch.from_numpy(B_CONST))),
    "implicit_output": ([], ["x", "M"], "bi,ij", [3], lambda t: torch.einsum("bi,ij->bj", t, torch.from_numpy(M_CONST))),
    "same_tensor_twice": ([], ["x", "x"], "nij,nkj->nik", [3, 4], lambda t: torch.einsum("nij,nkj->nik", t, t)),
    "three_operands": ([], ["x", "M", "x"], "ni,ij,nj->nj", [3],
                       lambda t: torch.einsum("ni,ij,nj->nj", t, torch.from_numpy(M_CONST), t)),
}


@pytest.mark.parametrize("name", list(EINSUMS))
def test_einsum_forms_written_by_hand(name):
    before, operands, equation, x_dims, twin = EINSUMS[name]
    nodes = [*before, helper.make_node("Einsum", operands, ["y"], name="/Einsum", equation=equation)]
    features = twin(torch.zeros(1, *x_dims)).numel()
    inits = [const("B", B_CONST), const("M", M_CONST), const("one", np.array([1], np.int64))]
    used = {name for node in nodes for name in node.input}
    model, weight = graph_model(nodes, x_dims, features, inits=[t for t in inits if t.name in used])
    x = np.random.default_rng(13).standard_normal((N, *x_dims)).astype(np.float32)
    check_graph(model, weight, twin, x)


def test_parse_einsum_gives_a_broadcast_dim_of_one_its_own_letter():
    assert parse_einsum("...ij,...jk->...ik", [[None, 1, 2, 3], [4, 3, 5]]) == (["acij", "bjk"], "abik")
    assert parse_einsum("bi,ij", [[None, 3], [3, 4]]) == (["bi", "ij"], "bj")
    with pytest.raises(ValueError, match="repeat"):
        parse_einsum("nii->ni", [[None, 3, 3]])
    with pytest.raises(ValueError, match="does not"):
        parse_einsum("...i->i", [[None, 3]])


def test_einsum_with_a_repeated_index_is_refused_naming_op_node_and_a_rewrite():
    forward = export(Head(lambda t: torch.einsum("ncii->nci", t), (2, 3, 3)).eval(), (2, 3, 3))
    with pytest.raises(UnsupportedOpError) as info:
        gradient_graph(forward)
    message = str(info.value)
    assert "op Einsum at node '/body/Einsum'" in message and "'ncii->nci'" in message
    assert "repeat ['i'] (a diagonal)" in message and "torch.diagonal" in message


# --------------------------------------------------------------------------- DeepLIFT


def test_deeplift_kinds_of_the_new_ops():
    assert {op: op_kind(op) for op in ["Sum", "Mean", "SpaceToDepth", "DepthToSpace", "Einsum"]} == {
        "Sum": AFFINE, "Mean": AFFINE, "SpaceToDepth": AFFINE, "DepthToSpace": AFFINE, "Einsum": BILINEAR}
    assert all(op_kind(op) == RESCALED for op in ["Max", "Min", "Sin", "Cos", "Sign", "Floor", "Ceil", "Round"])
    assert all(op_kind(op) == REFUSED for op in ["ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare",
                                                 "ReduceLogSumExp", "LRN"])


class Allowed(nn.Module):
    """Every new op DeepLIFT covers, on the input's path: Sin and Cos, a maximum against a constant, pixel
    shuffle (DepthToSpace), an einsum with a constant, and the step functions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.floor = nn.Parameter(torch.tensor([-0.2, 0.0, 0.1, 0.3]).view(4, 1, 1))
        self.mix = nn.Parameter(torch.randn(8, 8) * 0.4)
        self.fc = nn.Linear(64, 3)
        with torch.no_grad():
            self.conv.weight.mul_(2.0)

    def forward(self, x):
        h = torch.sin(self.conv(x)) + 0.5 * torch.cos(self.conv(x))
        h = F.pixel_shuffle(torch.maximum(h, self.floor), 2)
        h = torch.einsum("nchw,wv->nchv", h, self.mix)
        h = h + torch.floor(3 * h) / 3 + torch.round(h) * 0.25 + torch.sign(h) * 0.1 + torch.ceil(h) * 0.1
        return self.fc(h.flatten(1))


def test_deeplift_through_the_covered_ops_is_complete():
    torch.manual_seed(14)
    forward = export(Allowed().eval(), (2, 4, 4))
    assert {"Sin", "Cos", "Max", "DepthToSpace", "Einsum", "Floor", "Round", "Sign", "Ceil"} <= {
        n.op_type for n in forward.graph.node}
    rng = np.random.default_rng(15)
    x = rng.standard_normal((N, 2, 4, 4)).astype(np.float32)
    base = (0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    base[1] = 0.0
    w = rng.standard_normal((N, 3)).astype(np.float32)
    dl = session(deeplift_graph(forward), forward)
    multipliers, score, score_base = dl.run(["multipliers", "score", "score_baseline"], {"x": x, "baseline": base, "w": w})
    attr = (x - base).astype(np.float64) * multipliers
    gap = score.astype(np.float64) - score_base
    assert np.abs(gap).max() > 0.1
    assert np.abs(attr.reshape(N, -1).sum(1) - gap).max() <= TOL * max(np.abs(gap).max(), 1.0)
    _, grad = session(gradient_graph(forward), forward).run(["score", "grad"], {"x": x, "w": w})
    assert rel_err(multipliers, grad) > 1e-2  # rescaled, not the gradient
    same, _, _ = dl.run(["multipliers", "score", "score_baseline"], {"x": x, "baseline": x, "w": w})
    assert rel_err(same, grad) <= TOL  # baseline = input: the gradient


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_deeplift_max_with_one_input_dependent_operand_is_its_rescale_rule(op):
    """Max(row, h): the input-dependent operand second and broadcast against a constant; multipliers are
    W1 (ratio * (w W2^T)) with ratio = (max(row, h) - max(row, h_b)) / (h - h_b)."""
    rng = np.random.default_rng(16)
    w1 = rng.standard_normal((4, 5)).astype(np.float32)
    row = np.array([0.5, -0.3, 0.0, 0.2, -0.1], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node(op, ["row", "h"], ["y"], name=f"/{op}")]
    model, weight = graph_model(nodes, [4], 5, inits=[const("W1", w1), const("row", row)])
    x = rng.standard_normal((N, 4)).astype(np.float32)
    base = rng.standard_normal((N, 4)).astype(np.float32)
    w = rng.standard_normal((N, 3)).astype(np.float32)
    multipliers, score, score_base = session(deeplift_graph(model)).run(
        ["multipliers", "score", "score_baseline"], {"x": x, "baseline": base, "w": w})
    pick = np.maximum if op == "Max" else np.minimum
    h, hb = x.astype(np.float64) @ w1, base.astype(np.float64) @ w1
    ratio = (pick(row, h) - pick(row, hb)) / (h - hb)
    assert 0 < (ratio == 0).mean() < 1 and 0 < (ratio == 1).mean() < 1  # both operands win somewhere
    want = (ratio * (w.astype(np.float64) @ weight.T)) @ w1.T
    assert rel_err(multipliers, want) <= TOL
    gap = score.astype(np.float64) - score_base
    np.testing.assert_allclose(((x - base) * multipliers).sum(1), gap, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["Sum", "Mean"])
def test_deeplift_variadic_sum_and_mean_are_affine(op):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="/Relu"),
             helper.make_node("ReduceMean", ["r"], ["m"], name="/ReduceMean", axes=[1], keepdims=1),
             helper.make_node(op, ["r", "m", "row", "x"], ["y"], name=f"/{op}")]
    model, _ = graph_model(nodes, [2, 3], 6, inits=[const("row", ROW)])
    rng = np.random.default_rng(17)
    x, base = rng.standard_normal((N, 2, 3)).astype(np.float32), rng.standard_normal((N, 2, 3)).astype(np.float32)
    w = rng.standard_normal((N, 3)).astype(np.float32)
    multipliers, score, score_base = session(deeplift_graph(model)).run(
        ["multipliers", "score", "score_baseline"], {"x": x, "baseline": base, "w": w})
    gap = score.astype(np.float64) - score_base
    total = ((x - base).astype(np.float64) * multipliers).reshape(N, -1).sum(1)
    assert np.abs(gap).max() > 0.1
    np.testing.assert_allclose(total, gap, rtol=1e-4, atol=1e-5)


# name -> (body on (4, 3, 3), reason, where)
DEEPLIFT_REFUSED = {
    "max_of_two_inputs": (lambda x: torch.maximum(x, x.mean(1, keepdim=True)), ELEMENTWISE_EXTREMUM,
                          "op Max at node '/body/Max'"),
    "amax": (lambda x: torch.amax(x, dim=1), EXTREMUM_REDUCTION, "op ReduceMax at node '/body/ReduceMax'"),
    "amin": (lambda x: torch.amin(x, dim=(2, 3)), EXTREMUM_REDUCTION, "op ReduceMin at node '/body/ReduceMin'"),
    "l2_norm": (lambda x: x.norm(dim=1), NONLINEAR_REDUCTION, "op ReduceL2 at node '/body/ReduceL2'"),
    "l1_norm": (lambda x: torch.linalg.vector_norm(x, ord=1, dim=1), NONLINEAR_REDUCTION,
                "op ReduceL1 at node '/body/ReduceL1'"),
    "logsumexp": (lambda x: torch.logsumexp(x, dim=1), NONLINEAR_REDUCTION, "op ReduceLogSumExp at node '/body/ReduceLogSumExp'"),
    "einsum_product": (lambda x: torch.einsum("nchw,nchv->nwv", x, x), PRODUCT, "op Einsum at node '/body/Einsum'"),
}


@pytest.mark.parametrize("name", list(DEEPLIFT_REFUSED))
def test_deeplift_refusals_name_the_reason_op_and_node(name):
    body, reason, where = DEEPLIFT_REFUSED[name]
    forward = export(Head(body, (4, 3, 3)).eval(), (4, 3, 3))
    gradient_graph(forward)  # the gradient graph is fine
    with pytest.raises(UnsupportedOpError) as info:
        deeplift_graph(forward)
    assert str(info.value) == refusal(reason, where)


@pytest.mark.parametrize(("op", "attrs", "reason"), [
    ("LRN", {"size": 3}, NORMALIZATION),
    ("ReduceSumSquare", {"axes": [1]}, NONLINEAR_REDUCTION),
])
def test_deeplift_refuses_lrn_and_sum_of_squares_written_by_hand(op, attrs, reason):
    model, _ = graph_model([helper.make_node(op, ["x"], ["y"], name=f"/{op}", **attrs)], [3, 2, 2],
                           12 if op == "LRN" else 4)
    gradient_graph(model)
    with pytest.raises(UnsupportedOpError) as info:
        deeplift_graph(model)
    assert str(info.value) == refusal(reason, f"op {op} at node '/{op}'")
