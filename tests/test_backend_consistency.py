"""The torch and ONNX Runtime backends give the same DeepLIFT, or the same refusal, on the same model
(self-gated units and max pooling included);
the export's DeepLIFT check passes float32-faithful graphs and still catches a different rule; the
ONNX Runtime serving path imports no torch for any baseline or filler."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import DeepLift
from nets import randomize_batch_norms
from scipy.ndimage import gaussian_filter
from torch import nn

from xaisdk import Explainer
from xaisdk.attribution import deeplift
from xaisdk.attribution.deeplift import deeplift_refusal, rescale_multipliers
from xaisdk.baselines import Blur
from xaisdk.deploy.export import export_bundle
from xaisdk.errors import InputError
from xaisdk.models import CifarCNN, Classifier, WeightedScore, class_weights, load_ganmex, shipped_ganmex_path
from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend
from xaisdk.torch_runtime.torch_backend import TorchBackend

CPU = ["CPUExecutionProvider"]
SHAPE = (1, 10, 10)
REASON = re.compile(r"DeepLIFT's rescale rule does not cover (.+?) \((?:op|\w+ module)")


# --------------------------------------------------------------------------- models DeepLIFT does not cover


class SqueezeExcitation(nn.Module):
    """conv -> ReLU -> x * sigmoid(fc(relu(fc(mean(x))))): a product of two input-dependent tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.squeeze = nn.Linear(4, 2)
        self.excite = nn.Linear(2, 4)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        h = self.relu(self.conv(x))
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(h.mean((2, 3))))))
        return self.fc((h * gate[:, :, None, None]).flatten(1))


class AttentionLike(nn.Module):
    """Query-key similarity weighting the values, element-wise: products of input-dependent tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Conv2d(1, 4, 3, stride=2, padding=1) for _ in range(3))
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        weight = (self.q(x) * self.k(x)).sum(1, keepdim=True)
        return self.fc((weight * self.v(x)).flatten(1))


class PairMaximum(nn.Module):
    """The element-wise maximum of two input-dependent tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(torch.maximum(self.a(x), self.b(x)).flatten(1))


class ChannelMax(nn.Module):
    """A max reduction over channels (torch.amax), as some pooling heads write it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Linear(5 * 5, 3)

    def forward(self, x):
        return self.fc(torch.amax(self.conv(x), dim=1).flatten(1))


class NormPooling(nn.Module):
    """L2 pooling over space (torch.linalg.vector_norm), a non-linear reduction."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.linalg.vector_norm(self.conv(x), dim=(2, 3)))


class FunctionalSoftmax(nn.Module):
    """A softmax across channels called as a function (no module for hooks to see)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(F.softmax(self.conv(x), dim=-1).flatten(1))


# --------------------------------------------------------------------------- models both backends cover


class SiLUNet(nn.Module):
    """SiLU is x * sigmoid(x): ONNX writes it as a product of functions of one tensor, which the ONNX builder
    rescales as one element-wise unit, as the torch reference rescales ``nn.SiLU``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.act = nn.SiLU()
        self.fc = nn.Linear(4 * 5 * 5, 3)
        with torch.no_grad():
            self.conv.weight.mul_(4.0)  # units well into SiLU's curved part

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


class GatedPoolNet(nn.Module):
    """GELU (exported as a product with Erf), overlapping max pooling (Captum's rule), Mish, Hardswish."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.gelu = nn.GELU()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 3)
        with torch.no_grad():
            self.conv1.weight.mul_(4.0)
            self.conv2.weight.mul_(2.0)

    def forward(self, x):
        h = self.pool(self.gelu(self.conv1(x)))
        return self.fc(F.hardswish(F.mish(self.conv2(h))).flatten(1))


# --------------------------------------------------------------------------- functional nonlinearities


class Functional(nn.Module):
    """Every element-wise nonlinearity called as a function or tensor method, none as a module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 5 * 5, 16)
        self.fc2 = nn.Linear(16, 3)
        with torch.no_grad():
            self.fc1.weight.mul_(4.0)  # spread the sigmoid outputs so the logits differ between images
            self.fc2.weight.mul_(10.0)

    def forward(self, x):
        h = torch.clamp(self.conv1(x), -0.1, 0.2)
        h = F.relu6(8.0 * self.conv2(h)).clamp(max=4.0)
        h = F.leaky_relu(self.conv3(h), 0.2)
        h = torch.sigmoid(h).flatten(1)
        return self.fc2(torch.tanh(self.fc1(h)))


class Unit(nn.Module):
    """``lo + ReLU(h - lo) - ReLU(h - hi)`` = clamp(h, lo, hi) (``h - ReLU(h - hi)`` without ``lo``) with
    ReLU modules, whose DeepLIFT multiplier is the clamp's rescale ratio (a sum of ReLU ratios over one
    shared input)."""

    def __init__(self, lo: float | None, hi: float) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi
        self.low, self.high = nn.ReLU(), nn.ReLU()

    def forward(self, h):
        below = h if self.lo is None else self.lo + self.low(h - self.lo)
        return below - self.high(h - self.hi)


class ModuleTwin(nn.Module):
    """:class:`Functional` with module nonlinearities Captum rescales (shares its weights)."""

    def __init__(self, f: Functional) -> None:
        super().__init__()
        self.f = f
        self.clamp1, self.relu6, self.cap = Unit(-0.1, 0.2), Unit(0.0, 6.0), Unit(None, 4.0)
        self.leaky, self.sigmoid, self.tanh = nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Tanh()

    def forward(self, x):
        h = self.clamp1(self.f.conv1(x))
        h = self.cap(self.relu6(8.0 * self.f.conv2(h)))
        h = self.sigmoid(self.leaky(self.f.conv3(h))).flatten(1)
        return self.f.fc2(self.tanh(self.f.fc1(h)))


class Piecewise(nn.Module):
    """Functional clamps, relu6 and leaky_relu only (piecewise linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 5 * 5, 3)

    def forward(self, x):
        h = torch.clamp(self.conv1(x), -0.1, 0.2)
        h = F.relu6(8.0 * self.conv2(h)).clamp(max=4.0)
        return self.fc(F.leaky_relu(h - 1.0, 0.2).flatten(1))


class PiecewiseTwin(nn.Module):
    def __init__(self, f: Piecewise) -> None:
        super().__init__()
        self.f = f
        self.clamp1, self.relu6, self.cap, self.leaky = Unit(-0.1, 0.2), Unit(0.0, 6.0), Unit(None, 4.0), nn.LeakyReLU(0.2)

    def forward(self, x):
        h = self.cap(self.relu6(8.0 * self.f.conv2(self.clamp1(self.f.conv1(x)))))
        return self.f.fc(self.leaky(h - 1.0).flatten(1))


def classifier(module: nn.Module, shape=SHAPE, classes=3) -> Classifier:
    return Classifier(module.eval(), "test_" + type(module).__name__.lower(), {}, tuple("abcdefghij"[:classes]), shape)


def seeded(module_type, seed=0):
    torch.manual_seed(seed)
    return module_type().eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return rng.uniform(0, 1, (4, *SHAPE)).astype(np.float32), rng.uniform(0, 1, (4, *SHAPE)).astype(np.float32) * 0.5


@pytest.fixture(scope="module")
def functional_bundle(tmp_path_factory):
    model = seeded(Functional, 3)
    return model, export_bundle(classifier(model), tmp_path_factory.mktemp("functional") / "bundle")


# --------------------------------------------------------------------------- same refusal on both backends


@pytest.mark.parametrize(("model_type", "reason"), [
    (SqueezeExcitation, "products of two input-dependent tensors"),
    (AttentionLike, "products of two input-dependent tensors"),
    (FunctionalSoftmax, "softmax"),
    (PairMaximum, "element-wise maxima or minima of several input-dependent tensors"),
    (ChannelMax, "max and min reductions"),
    (NormPooling, "non-linear reductions (norms, sums of squares, log-sum-exp)"),
])
def test_uncovered_models_are_refused_with_the_same_reason_on_both_backends(model_type, reason, tmp_path, images):
    model = seeded(model_type)
    x, base = images
    report = export_bundle(classifier(model), tmp_path / "bundle")
    assert report.deeplift_unavailable and not (tmp_path / "bundle" / "deeplift_grad.onnx").exists()

    errors = {}
    for name, explainer in [("torch", Explainer(classifier(model))), ("onnx", Explainer.load(tmp_path / "bundle"))]:
        with pytest.raises(InputError) as info:
            explainer.explain(x, 1, source=0, method="deeplift", baseline=base)
        errors[name] = str(info.value)
    with pytest.raises(InputError) as info:
        deeplift(model, x, source=0, target=1, baseline=base)  # the torch reference function
    errors["reference"] = str(info.value)
    assert deeplift_refusal(model) in errors["torch"]
    for message in errors.values():
        found = REASON.search(message)
        assert found and found.group(1) == reason, message
        assert message.endswith("use integrated gradients instead"), message
    # integrated gradients still runs on both
    for explainer in (Explainer(classifier(model)), Explainer.load(tmp_path / "bundle")):
        assert np.abs(explainer.explain(x, 1, source=0, method="ig", baseline=base, n_steps=8).attributions).max() > 0


@pytest.mark.parametrize("forward", [
    lambda m, x: m.fc(m.conv(x).flatten(1)) / m.fc(m.conv(x).flatten(1)).sum(1, keepdim=True),  # division by x
    lambda m, x: m.fc(torch.matmul(m.conv(x), m.conv(x).transpose(2, 3)).flatten(1)),  # matmul of two
    lambda m, x: m.fc(torch.maximum(m.conv(x), -m.conv(x)).flatten(1)),  # maximum of two input-dependent tensors
    lambda m, x: m.fc(F.layer_norm(m.conv(x), (5, 5)).flatten(1)),  # normalization across features
    lambda m, x: m.fc(torch.clamp(m.conv(x), min=m.conv(x).mean()).flatten(1)),  # input-dependent bound
    lambda m, x: m.fc(m.conv(x).cumsum(1).flatten(1)),  # an op with no rule at all
])
def test_torch_refuses_every_functional_op_outside_the_rescale_rule(forward):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Linear(100, 3)

        def forward(self, x):
            return forward(self, x)

    net = seeded(Net)
    x = np.random.default_rng(0).uniform(0, 1, (2, *SHAPE)).astype(np.float32)
    with pytest.raises(InputError, match="DeepLIFT's rescale rule does not cover"):
        deeplift(net, x, source=0, target=1)


def test_untraceable_forward_and_hooks_are_refused_not_guessed():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)  # data-dependent control flow

    x = np.ones((2, 4), np.float32)
    with pytest.raises(InputError, match="could not analyse the model: torch.fx cannot trace"):
        deeplift(seeded(Branchy), x, source=0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    handle = net[0].register_forward_hook(lambda mod, inp, out: out * out)  # would make the model non-affine
    with pytest.raises(InputError, match="module 0 has hooks"):
        deeplift(net, x, source=0)
    handle.remove()
    _, delta = deeplift(net, x, source=0, target=1, return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-5


def test_a_layer_swapped_after_the_first_call_is_seen():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    deeplift(net, x, source=0)
    net[1] = nn.Softmax(dim=1)
    with pytest.raises(InputError, match="softmax"):
        deeplift(net, x, source=0)
    net[1] = nn.Tanh()
    _, delta = deeplift(net, x, source=0, target=1, return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-5


def test_in_place_functional_nonlinearity_reused_input_is_refused_single_use_is_rescaled():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(F.relu(h, inplace=True) + h) if self.reuse else self.fc2(F.relu(h, inplace=True))

    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    net = seeded(Reuse)
    net.reuse = True
    with pytest.raises(InputError, match="in-place nonlinearity whose input is used again"):
        deeplift(net, x, source=0)
    net = seeded(Reuse)
    net.reuse = False
    _, delta = deeplift(net, x, source=0, target=1, return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-5


# --------------------------------------------------------------------------- self-gated units and max pooling agree


@pytest.mark.parametrize("model_type", [SiLUNet, GatedPoolNet])
def test_self_gated_units_and_max_pooling_get_deeplift_on_both_backends_and_agree(model_type, tmp_path, images):
    model = seeded(model_type, 2)
    x, base = images
    assert deeplift_refusal(model) is None
    report = export_bundle(classifier(model), tmp_path / "bundle")
    assert report.deeplift_unavailable is None and (tmp_path / "bundle" / "deeplift_grad.onnx").exists()
    assert report.checks["deeplift_rel_err"] <= report.checks["deeplift_tolerance"]
    w = class_weights(np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2]), 3).numpy()
    torch_m = TorchBackend(classifier(model)).deeplift_multipliers(x, base, w)
    onnx = OnnxRuntimeBackend(report.path, providers=CPU)
    onnx_m = onnx.deeplift_multipliers(x, base, w)
    x64, b64 = torch.from_numpy(x).double(), torch.from_numpy(base).double()
    exact = ((x64 - b64) * rescale_multipliers(copy.deepcopy(model).double(), x64, b64, torch.from_numpy(w).double())).numpy()
    scale = np.abs(exact).max()
    for m in (torch_m, onnx_m):
        assert np.abs((x - base) * m - exact).max() <= 1e-4 * scale
    gap = (onnx.logits(x) * w).sum(1) - (onnx.logits(base) * w).sum(1)
    assert np.abs(gap).min() > 1e-3  # the test is not trivially complete
    np.testing.assert_allclose(exact.reshape(len(x), -1).sum(1), gap, atol=1e-5 * max(1.0, np.abs(gap).max()))
    # the Explainer on either backend gives the same DeepLIFT explanation
    explained = [explainer.explain(x, np.array([1, 2, 0, 2]), source=np.array([0, 1, 2, 0]), method="deeplift",
                                   baseline=base).attributions
                 for explainer in (Explainer(classifier(model)), Explainer.load(report.path))]
    np.testing.assert_allclose(explained[1], explained[0], rtol=0, atol=1e-4 * scale)


# --------------------------------------------------------------------------- functional nonlinearities agree


def test_functional_nonlinearities_agree_between_backends_and_are_complete(functional_bundle, images):
    model, report = functional_bundle
    x, base = images
    assert report.deeplift_unavailable is None
    assert report.checks["deeplift_rel_err"] <= report.checks["deeplift_tolerance"]
    w = class_weights(np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2]), 3).numpy()
    torch_m = TorchBackend(classifier(model)).deeplift_multipliers(x, base, w)
    onnx = OnnxRuntimeBackend(report.path, providers=CPU)
    onnx_m = onnx.deeplift_multipliers(x, base, w)
    # A sigmoid unit here has |x - b| = 3e-5 at its input: its float32 rescale ratio carries ~2e-3 relative
    # rounding, and each backend lands ~5e-5 (of the largest multiplier) from the float64 multipliers.
    x64, b64 = torch.from_numpy(x).double(), torch.from_numpy(base).double()
    exact = rescale_multipliers(copy.deepcopy(model).double(), x64, b64, torch.from_numpy(w).double()).numpy()
    scale = np.abs(exact).max()
    for m in (torch_m, onnx_m):
        assert np.abs(m - exact).max() <= 2e-4 * scale
    np.testing.assert_allclose(onnx_m, torch_m, atol=2e-4 * scale, rtol=0)
    gap = (onnx.logits(x) * w).sum(1) - (onnx.logits(base) * w).sum(1)
    for m in (torch_m, onnx_m):
        total = ((x - base) * m).reshape(len(x), -1).sum(1)
        np.testing.assert_allclose(total, gap, atol=1e-5 * max(1.0, np.abs(gap).max()))
    assert np.abs(gap).min() > 1e-3  # the test is not trivially complete


def test_functional_piecewise_linear_ops_equal_captum_on_the_module_twin(images):
    """Captum rescales ReLU and LeakyReLU modules: the functional clamps, relu6 and leaky_relu of
    :class:`Piecewise` must give its attributions on the twin written with those modules."""
    model = seeded(Piecewise, 3)
    x, base = images
    source, target = np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2])
    weights = class_weights(source, target, 3)
    twin = PiecewiseTwin(model).eval()
    xt, bt = torch.from_numpy(x), torch.from_numpy(base)
    with torch.no_grad():
        np.testing.assert_allclose(twin(xt).numpy(), model(xt).numpy(), atol=1e-6)
    theirs = DeepLift(WeightedScore(twin)).attribute(xt, bt, additional_forward_args=(weights,)).detach().numpy()
    ours, delta = deeplift(model, x, source=source, target=target, baseline=base, return_convergence_delta=True)
    assert np.abs(theirs).max() > 1e-2 and np.abs(delta).max() < 1e-5
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_functional_smooth_ops_match_the_float64_twin(functional_bundle, images):
    """Sigmoid and tanh called as functions: equal to the module-written twin in float64 (an independent
    decomposition of the clamps into ReLUs), and within float32 rounding of it in float32."""
    model, _ = functional_bundle
    x, base = images
    weights = class_weights(np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2]), 3)
    x64, b64 = torch.from_numpy(x).double(), torch.from_numpy(base).double()
    twin64 = ModuleTwin(copy.deepcopy(model)).double().eval()
    exact = ((x64 - b64) * rescale_multipliers(twin64, x64, b64, weights.double())).numpy()
    direct = ((x64 - b64) * rescale_multipliers(twin64.f, x64, b64, weights.double())).numpy()  # the functional model
    assert np.abs(direct - exact).max() <= 1e-10 * np.abs(exact).max()
    ours = deeplift(model, x, source=np.array([0, 1, 2, 0]), target=np.array([1, 2, 0, 2]), baseline=base)
    assert np.abs(ours - exact).max() <= 1e-3 * np.abs(exact).max()


# --------------------------------------------------------------------------- the export's DeepLIFT check


def test_leaky_relu_bundle_passes_the_deeplift_check(tmp_path):
    """LeakyReLU(0.2) rescale ratios round in float32 (0.2 * x is inexact): ONNX Runtime and torch float32
    both miss a float64 reference by about the same amount; the check compares against that floor."""
    torch.manual_seed(0)
    net = randomize_batch_norms(CifarCNN(3, 32, 10, widths=(8, 16, 32)).eval())
    for parent in net.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.LeakyReLU(0.2))
    report = export_bundle(Classifier(net, "cifar_cnn", {}, tuple("abcdefghij"), (3, 32, 32)), tmp_path / "bundle")
    verification = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["verification"]
    assert verification["deeplift_rel_err"] <= verification["deeplift_tolerance"]
    assert verification["deeplift_tolerance"] == pytest.approx(max(1e-4, 4 * verification["deeplift_float32_floor"]))
    assert report.deeplift_unavailable is None


class InvarianceCounterexample(nn.Module):
    """f = relu(relu(a) - 1 - relu(b)) and g = relu(relu(a - 1) - relu(b)) are one function with different
    DeepLIFT attributions (Sundararajan et al. 2017, section 2.2); the ONNX export is given g."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(100, 8), nn.Linear(100, 8)
        self.r1, self.r2, self.r3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.a.weight.mul_(8.0)

    def forward(self, x):
        a, b = self.a(x.flatten(1)), self.b(x.flatten(1))
        if torch.onnx.is_in_onnx_export():
            h = self.r3(self.r1(a - 1) - self.r2(b))
        else:
            h = self.r3(self.r1(a) - 1 - self.r2(b))
        return self.fc(h)


def test_deeplift_check_still_rejects_a_graph_with_a_different_rule(tmp_path):
    """A DeepLIFT graph that misses the check is dropped from the bundle, with the reason; the rest is kept."""
    report = export_bundle(classifier(seeded(InvarianceCounterexample, 4)), tmp_path / "bundle")
    assert not (tmp_path / "bundle" / "deeplift_grad.onnx").exists()
    why = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["deeplift_unavailable"]
    assert "failed verification" in why and "deeplift_rel_err" in why and report.deeplift_unavailable == why
    assert not OnnxRuntimeBackend(report.path, providers=CPU).supports_deeplift


# --------------------------------------------------------------------------- blur and the torch-free serving path


@pytest.mark.parametrize("sigma", [1.0, 2.8, 3.0, 7.5])
def test_blur_baseline_equals_scipy_gaussian_filter(sigma):
    x = np.random.default_rng(3).uniform(0, 1, (2, 3, 12, 9)).astype(np.float32)
    want = gaussian_filter(x.astype(np.float64), sigma=(0, 0, sigma, sigma), mode="reflect")
    np.testing.assert_allclose(Blur(sigma=sigma)(x, None), want, atol=1e-6, rtol=0)


SERVE = textwrap.dedent('''
    import sys
    import numpy as np
    from xaisdk import Explainer
    from xaisdk.baselines import MDTS, Blur, Constant, UniformNoise
    data = np.load(sys.argv[2])
    x, train_x, train_y = data["x"], data["train_x"], data["train_y"]
    e = Explainer.load(sys.argv[1], backend="onnxruntime")
    baselines = ["ganmex", "zero", "uniform", "blur", 0.5, 1.0 - x[0], Blur(sigma=2.0), Constant(0.3), UniformNoise(seed=1),
                 MDTS(train_x, train_y), lambda images, target: images * 0.5]
    out = {}
    for i, baseline in enumerate(baselines):
        for method, options in (("ig", {"n_steps": 8}), ("deeplift", {})):
            out[f"{method}_{i}"] = e.explain(x, 3, method=method, baseline=baseline, **options).attributions
    out["blur_baseline"] = e.explain(x, 3, method="deeplift", baseline="blur").baseline
    out["deepshap"] = e.explain(x, 3, method="deepshap", baseline=train_x[:4]).attributions
    for filler in ("gray", "zero", "blur", "noise"):
        out[f"sp_{filler}"] = e.explain(x, 3, method="sliding_patch", filler=filler).attributions
    heavy = sorted(m for m in ("torch", "onnx", "scipy", "matplotlib", "sklearn") if m in sys.modules)
    assert not heavy, f"the ONNX Runtime path imported {heavy}"
    np.savez(sys.argv[3], **out)
''')


def test_onnxruntime_path_imports_no_torch_for_any_baseline_or_filler(tmp_path, digits):
    export_bundle(shipped_ganmex_path("digits"), tmp_path / "bundle")
    x = digits.test.x[:2].astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, train_x=digits.train.x[:20], train_y=digits.train.y[:20])
    (tmp_path / "serve.py").write_text(SERVE)
    run = subprocess.run([sys.executable, str(tmp_path / "serve.py"), str(tmp_path / "bundle"), str(tmp_path / "data.npz"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    want_blur = gaussian_filter(x.astype(np.float64), sigma=(0, 0, 3.0, 3.0), mode="reflect")
    np.testing.assert_allclose(out["blur_baseline"], want_blur, atol=1e-6, rtol=0)
    torch_side = Explainer(load_ganmex(shipped_ganmex_path("digits"))).explain(x, 3, method="deeplift", baseline="blur")
    np.testing.assert_allclose(out["deeplift_3"], torch_side.attributions, atol=1e-4 * np.abs(torch_side.attributions).max())
