"""Every layout of the reference zoo exports as a verified bundle whose graphs agree with torch.

Cheap variants (:attr:`ZooEntry.small_width` / ``small_size``; VGG at 224 px, whose 7x7 adaptive
pool cannot be exported from a 1x1 map). The reference is a float64 copy of the torch model with
ONNX Runtime's ReLU masks and max-pool argmaxes imposed (:func:`xaisdk.deploy.near_ties.routed_gradient`):
where a decision differs from torch float32's own, it must be a near-tie in torch's values, so
everything but the choice of subgradient at exact-in-float32 ties is compared at 1e-4.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from xaisdk.bench.zoo import ZOO, build
from xaisdk.deploy.export import export_bundle
from xaisdk.deploy.near_ties import NEAR_TIE, onnx_decision_inputs, routed_gradient

TOL = 1e-4
IG_STEPS = 4
# DeepLIFT's rescale rule covers ReLU / max-pool / average-pool networks; squeeze-excitation products,
# layer norms and attention softmaxes are refused.
DEEPLIFT = {"resnet18", "resnet50", "densenet121", "vgg11_bn"}


def _small(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    entry = ZOO[name]
    size = 224 if name == "vgg11_bn" else entry.small_size
    return build(name, num_classes=10, image_size=size, width=entry.small_width), (3, size, size)


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _reference(net: torch.nn.Module, net64: torch.nn.Module, forward: onnx.ModelProto, x: np.ndarray,
               w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, float]:
    """(float64 gradient on ONNX Runtime's routes, torch float32 gradient, differing decisions, their largest margin)."""
    xt = torch.from_numpy(x).requires_grad_(True)
    (plain,) = torch.autograd.grad((net(xt) * torch.from_numpy(w)).sum(), xt)
    decisions = onnx_decision_inputs(forward, x)
    routed32 = routed_gradient(net, decisions, x, torch.from_numpy(w))
    routed64 = routed_gradient(net64, decisions, x, torch.from_numpy(w))
    if routed64 is None:  # no ReLU or max pool: plain float64 autograd
        assert not any(op in ("Relu", "MaxPool") for op, _ in decisions)
        x64 = torch.from_numpy(x).double().requires_grad_(True)
        (grad64,) = torch.autograd.grad((net64(x64) * torch.from_numpy(w).double()).sum(), x64)
        return grad64.numpy(), plain.numpy(), 0, 0.0
    return routed64.grad, plain.numpy(), routed32.flips, routed32.max_margin


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_exports_and_matches_torch(name, tmp_path):
    torch.manual_seed(0)
    net, shape = _small(name)
    report = export_bundle(net, tmp_path / "bundle", input_shape=shape, force=True)
    assert (report.deeplift_unavailable is None) == (name in DEEPLIFT), report.deeplift_unavailable
    limit = report.checks.get("grad_tolerance", TOL)
    assert report.checks["grad_rel_err"] <= limit and report.checks["grad_fd_rel_err"] <= TOL
    forward = onnx.load(str(tmp_path / "bundle" / "classifier.onnx"))
    grad_session = _session(tmp_path / "bundle" / "classifier_grad.onnx")
    net64 = copy.deepcopy(net).double().eval()
    rng = np.random.default_rng(1)
    x = rng.random((2, *shape)).astype(np.float32)
    w = np.zeros((2, 10), np.float32)
    w[0, 3], w[0, 7], w[1, 5], w[1, 1] = 1.0, -1.0, 1.0, -1.0

    # The input gradient at random images.
    _, grad = grad_session.run(None, {"x": x, "w": w})
    exact, plain, flips, margin = _reference(net, net64, forward, x, w)
    assert _rel(grad, exact) <= TOL
    assert margin <= NEAR_TIE  # any decision ONNX Runtime takes differently is a near-tie
    if flips == 0 and name != "regnet_y_400mf":  # RegNet: torch float32 itself is ~1e-4 from float64
        assert _rel(grad, plain) <= TOL

    # Integrated gradients from the zero baseline: near the baseline whole maps are nearly flat, so
    # near-ties are common there (ResNet-18 and DenseNet-121: one ReLU or max-pool decision each,
    # margins ~3e-8 of the tensor's scale, move plain float32 IG by 4e-3 and 6e-3).
    xi, wi = x[:1], w[:1]
    ours = np.zeros_like(xi, np.float64)
    routed = np.zeros_like(xi, np.float64)
    worst = 0.0
    for alpha in (np.arange(IG_STEPS) + 0.5) / IG_STEPS:
        xa = (alpha * xi).astype(np.float32)
        ours += grad_session.run(None, {"x": xa, "w": wi})[1] * xi / IG_STEPS
        exact_a, _, _, margin_a = _reference(net, net64, forward, xa, wi)
        routed += exact_a * xi / IG_STEPS
        worst = max(worst, margin_a)
    assert _rel(ours, routed) <= TOL
    assert worst <= NEAR_TIE
