"""export_bundle: the shipped GANMEX and classifier checkpoints and small test models exported to ONNX
bundles, checked against torch (logits, gradients, DeepLIFT, generator), plus output-folder safety."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import xaisdk
from xaisdk.attribution import deeplift
from xaisdk.deploy.allowlist import disallowed_nodes
from xaisdk.deploy.export import VerificationError, export_bundle
from xaisdk.deploy.onnx_grad import UnsupportedOpError
from xaisdk.errors import InputError
from xaisdk.models import Classifier, load_ganmex, shipped_classifier_path, shipped_ganmex_path
from xaisdk.runtime.backend import class_weights
from xaisdk.runtime.bundle import read_bundle
from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

TOL = 1e-4
CPU = ["CPUExecutionProvider"]
EXPECTED_IO = {
    "classifier": (["x"], ["logits"]),
    "classifier_grad": (["x", "w"], ["score", "grad"]),
    "deeplift_grad": (["x", "baseline", "w"], ["multipliers", "score", "score_baseline"]),
    "generator_ganmex": (["x", "target"], ["image"]),
}


# --------------------------------------------------------------------------- small test models


class PoolNet(nn.Module):
    """Conv + ReLU + non-overlapping 2x2 max pooling: gradients, and DeepLIFT under Captum's max-pool rule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class OverlapNet(PoolNet):
    """Overlapping max pooling (kernel 3, stride 2): windows share cells, whose contributions add up."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=2)
        self.fc = nn.Linear(4 * 4 * 4, 3)


class CumsumNet(PoolNet):
    """A cumulative sum over the rows (CumSum): no gradient rule."""

    def forward(self, x):
        return self.fc(self.pool(torch.cumsum(self.relu(self.conv(x)), dim=2)).flatten(1))


class MeanNet(nn.Module):
    """Conv + ReLU, spatial mean without keepdims (ReduceMean, whose axes moved to an input in opset 18),
    concatenated with max-pooled features, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 + 4 * 5 * 5, 3)

    def forward(self, x):
        h = self.relu(self.conv(x))
        return self.fc(torch.cat([h.mean(dim=(2, 3)), self.pool(h).flatten(1)], dim=1))


class SmallCNN(nn.Module):
    """Conv + ReLU + Linear: every graph, including DeepLIFT."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


class ExportDiffers(SmallCNN):
    """Computes something else while being exported: the exported graph disagrees with torch."""

    def forward(self, x):
        logits = super().forward(x)
        return logits * 2.0 if torch.onnx.is_in_onnx_export() else logits


def classifier(module_type, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(module_type().eval(), "test_" + module_type.__name__.lower(), {}, ("a", "b", "c"), (1, 10, 10))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(folder.iterdir())}


def rel_err(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


def torch_score_grad(model, x, w):
    xg = torch.from_numpy(np.asarray(x, np.float32)).requires_grad_(True)
    score = (model(xg) * torch.from_numpy(w)).sum(1)
    (grad,) = torch.autograd.grad(score.sum(), xg)
    return score.detach().numpy(), grad.numpy()


def pairs(logits: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Source = the predicted class, target = another class."""
    k = logits.shape[1]
    source = logits.argmax(1)
    target = (source + np.random.default_rng(seed).integers(1, k, len(source))) % k
    return source, target


# --------------------------------------------------------------------------- module-scoped exports


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "ganmex": export_bundle(shipped_ganmex_path("digits"), root / "ganmex"),
        "classifier": export_bundle(shipped_classifier_path("digits"), root / "classifier"),
        "classifier_b4": export_bundle(shipped_classifier_path("digits"), root / "classifier_b4", batch=4),
    }


@pytest.fixture(scope="module")
def ganmex():
    return load_ganmex(shipped_ganmex_path("digits"))


@pytest.fixture(scope="module")
def images():
    from xaisdk.data import load_digits

    x = load_digits().test.x[:6].astype(np.float32)
    noise = np.random.default_rng(0).uniform(0, 1, (2, *x.shape[1:])).astype(np.float32)
    return np.concatenate([x, noise])


# --------------------------------------------------------------------------- the GANMEX bundle


def test_ganmex_bundle_files_and_manifest(exports):
    report = exports["ganmex"]
    folder = report.path
    graphs = ["classifier.onnx", "classifier_grad.onnx", "deeplift_grad.onnx", "generator_ganmex.onnx", "relu_path.bin"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*graphs, "manifest.json"])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left
    assert report.files == {p.name: p.stat().st_size for p in folder.iterdir()}
    manifest = json.loads((folder / "manifest.json").read_text())

    assert manifest["schema"] == "xaisdk.bundle" and manifest["schema_version"] == 1
    assert manifest["xaisdk_version"] == xaisdk.__version__
    assert manifest["opset"] == 17
    assert manifest["input"] == {"shape": [1, 28, 28], "layout": "NCHW", "dtype": "float32",
                                 "value_range": [0.0, 1.0], "batch": None}
    assert manifest["class_names"] == [str(i) for i in range(10)]
    assert manifest["model"]["arch"] == "mnist_cnn" and manifest["model"]["ganmex"] is True
    assert "deeplift_unavailable" not in manifest

    assert sorted(manifest["graphs"]) == sorted(EXPECTED_IO)
    assert sorted(manifest["files"]) == sorted(graphs)
    for role, (inputs, outputs) in EXPECTED_IO.items():
        entry = manifest["graphs"][role]
        assert entry["file"] == f"{role}.onnx" and entry["computes"]
        assert list(entry["inputs"]) == inputs and list(entry["outputs"]) == outputs
        assert entry["inputs"]["x"] == ["N", 1, 28, 28]
        path = folder / entry["file"]
        assert manifest["files"][entry["file"]] == {"sha256": sha256(path), "bytes": path.stat().st_size}
        model = onnx.load(path)
        initializers = {i.name for i in model.graph.initializer}
        assert [i.name for i in model.graph.input if i.name not in initializers] == inputs
        assert [o.name for o in model.graph.output] == outputs
        assert {(op.domain, op.version) for op in model.opset_import if op.domain in ("", "ai.onnx")} == {("", 17)}
        assert disallowed_nodes(model) == []

    verification = manifest["verification"]
    assert verification["tolerance"] == TOL and verification["real_inputs"] is True and verification["inputs"] >= 6
    numbers = {k: v for k, v in verification.items() if k.endswith("_rel_err")}
    assert set(numbers) == {"logits_rel_err", "score_rel_err", "grad_rel_err", "grad_fd_rel_err", "deeplift_rel_err",
                            "generator_rel_err", "relu_path_ig_rel_err"}
    assert all(0 <= v <= TOL for v in numbers.values()), numbers
    assert {k: v for k, v in report.checks.items() if k.endswith("_rel_err")} == numbers
    # DeepLIFT is compared with a float64 reference, within the larger of TOL and 4x torch float32's own error
    assert verification["deeplift_tolerance"] == max(TOL, 4 * verification["deeplift_float32_floor"])


def test_onnxruntime_backend_equals_torch_on_ganmex_bundle(exports, ganmex, images):
    backend = OnnxRuntimeBackend(exports["ganmex"].path, providers=CPU)
    assert backend.supports_deeplift and backend.has_generator
    assert backend.input_shape == (1, 28, 28) and backend.num_classes == 10
    model = ganmex.classifier.model
    x = images
    with torch.no_grad():
        want_logits = model(torch.from_numpy(x)).numpy()
    assert rel_err(backend.logits(x), want_logits) <= TOL

    source, target = pairs(want_logits, seed=1)
    for w in (class_weights(source, target, 10), class_weights(source, None, 10)):
        score, grad = backend.score_gradient(x, w)
        want_score, want_grad = torch_score_grad(model, x, w)
        assert rel_err(score, want_score) <= TOL and rel_err(grad, want_grad) <= TOL

    image = backend.generate(x, target)
    want_image = ganmex.baseline(x, target)
    assert image.shape == x.shape and rel_err(image, want_image) <= TOL

    # DeepLIFT against the GANMEX baselines, the SDK's main use.
    w = class_weights(source, target, 10)
    attr = (x - want_image) * backend.deeplift_multipliers(x, want_image, w)
    assert rel_err(attr, deeplift(model, x, source=source, target=target, baseline=want_image)) <= TOL


def test_classifier_only_bundle_has_no_generator(exports, images):
    report = exports["classifier"]
    manifest = json.loads((report.path / "manifest.json").read_text())
    assert "generator_ganmex" not in manifest["graphs"] and manifest["model"]["ganmex"] is False
    assert not (report.path / "generator_ganmex.onnx").exists()
    assert "generator_rel_err" not in manifest["verification"]
    backend = OnnxRuntimeBackend(report.path, providers=CPU)
    assert not backend.has_generator and backend.supports_deeplift
    with pytest.raises(InputError, match="no GANMEX generator"):
        backend.generate(images, np.zeros(len(images), np.int64))


def test_fixed_batch_bundle_pads_and_matches_dynamic(exports, images):
    """batch=4 graphs take N=8 as 4 + 4 and N=6 as 4 + (2 padded to 4), with the same numbers."""
    fixed = OnnxRuntimeBackend(exports["classifier_b4"].path, providers=CPU)
    dynamic = OnnxRuntimeBackend(exports["classifier"].path, providers=CPU)
    manifest = json.loads((exports["classifier_b4"].path / "manifest.json").read_text())
    assert manifest["input"]["batch"] == 4 and manifest["graphs"]["classifier_grad"]["inputs"]["x"] == [4, 1, 28, 28]
    graph = onnx.load(exports["classifier_b4"].path / "classifier_grad.onnx")
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert all(v <= TOL for k, v in manifest["verification"].items() if k.endswith("_rel_err"))

    from xaisdk.models import load_shipped_classifier

    model = load_shipped_classifier("digits").model
    for n in (6, 8, 1):
        x = images[:n]
        logits = fixed.logits(x)
        assert logits.shape == (n, 10)
        np.testing.assert_allclose(logits, dynamic.logits(x), rtol=0, atol=1e-5)
        source, target = pairs(logits, seed=n)
        w = class_weights(source, target, 10)
        score, grad = fixed.score_gradient(x, w)
        want_score, want_grad = torch_score_grad(model, x, w)
        assert grad.shape == x.shape and rel_err(score, want_score) <= TOL and rel_err(grad, want_grad) <= TOL
        base = np.roll(x, 1, axis=0) if n > 1 else np.zeros_like(x)
        got = fixed.deeplift_multipliers(x, base, w)
        np.testing.assert_allclose(got, dynamic.deeplift_multipliers(x, base, w), rtol=0, atol=1e-5 * np.abs(got).max())


# --------------------------------------------------------------------------- other models and opsets


@pytest.mark.parametrize("model_type", [PoolNet, OverlapNet])
def test_max_pool_model_exports_with_deeplift_and_it_verifies(tmp_path, model_type):
    """Max pooling (non-overlapping and overlapping windows) gets a DeepLIFT graph under Captum's rule, checked
    at export against the float64 torch reference, and the bundle's attributions match torch's DeepLIFT."""
    clf = classifier(model_type)
    report = export_bundle(clf, tmp_path / "pool")
    assert sorted(report.files) == ["classifier.onnx", "classifier_grad.onnx", "deeplift_grad.onnx", "manifest.json"]
    manifest = json.loads((tmp_path / "pool" / "manifest.json").read_text())
    assert "deeplift_grad" in manifest["graphs"] and not manifest.get("deeplift_unavailable")
    assert report.deeplift_unavailable is None
    checks = manifest["verification"]
    assert checks["grad_rel_err"] <= TOL and checks["deeplift_rel_err"] <= checks["deeplift_tolerance"]
    forward_ops = {node.op_type for node in onnx.load(tmp_path / "pool" / "classifier.onnx").graph.node}
    assert "MaxPool" in forward_ops

    backend = OnnxRuntimeBackend(tmp_path / "pool", providers=CPU)
    assert backend.supports_deeplift
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 1, 10, 10)).astype(np.float32)
    base = (x * rng.uniform(0, 0.5, x.shape)).astype(np.float32)
    w = class_weights(np.array([0, 1, 2]), np.array([1, 2, 0]), 3)
    _, grad = backend.score_gradient(x, w)
    assert rel_err(grad, torch_score_grad(clf.model, x, w)[1]) <= TOL
    attr = (x - base) * backend.deeplift_multipliers(x, base, w)
    want = deeplift(clf.model, x, source=np.array([0, 1, 2]), target=np.array([1, 2, 0]), baseline=base)
    assert rel_err(attr, want) <= TOL
    gap = torch_score_grad(clf.model, x, w)[0] - torch_score_grad(clf.model, base, w)[0]
    assert np.abs(attr.reshape(3, -1).sum(1) - gap).max() <= TOL * max(np.abs(gap).max(), 1.0)


@pytest.mark.parametrize("opset", [13, 18])
def test_other_opsets_export(tmp_path, opset):
    clf = classifier(MeanNet, seed=opset)
    report = export_bundle(clf, tmp_path / "b", opset=opset)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["opset"] == opset
    for name in report.files:
        if name.endswith(".onnx"):
            model = onnx.load(tmp_path / "b" / name)
            assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [opset]
    forward_ops = {node.op_type for node in onnx.load(tmp_path / "b" / "classifier.onnx").graph.node}
    assert {"ReduceMean", "MaxPool", "Concat"} <= forward_ops
    assert all(v <= TOL for k, v in report.checks.items())
    backend = OnnxRuntimeBackend(tmp_path / "b", providers=CPU)
    x = np.random.default_rng(opset).uniform(0, 1, (5, 1, 10, 10)).astype(np.float32)
    w = class_weights(np.array([0, 1, 2, 0, 1]), None, 3)
    score, grad = backend.score_gradient(x, w)
    want_score, want_grad = torch_score_grad(clf.model, x, w)
    assert rel_err(score, want_score) <= TOL and rel_err(grad, want_grad) <= TOL


def test_unsupported_model_raises_and_leaves_nothing(tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    with pytest.raises(UnsupportedOpError) as info:
        export_bundle(classifier(CumsumNet), parent / "bundle")
    message = str(info.value)
    assert "op CumSum at node '/CumSum'" in message and "no gradient rule for CumSum" in message
    assert "xaisdk.Explainer(model)" in message  # names the nearest alternative
    assert isinstance(info.value, InputError)
    assert list(parent.iterdir()) == []  # neither the bundle folder nor a temporary one


# --------------------------------------------------------------------------- output folder safety


@pytest.fixture()
def existing_bundle(exports, tmp_path):
    """A copy of the exported GANMEX bundle, to be overwritten (or not)."""
    folder = tmp_path / "out" / "bundle"
    shutil.copytree(exports["ganmex"].path, folder)
    return folder


def test_refuses_non_empty_folder_that_is_not_a_bundle(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = {p.relative_to(out): p.read_bytes() if p.is_file() else None for p in out.rglob("*")}
    for force in (False, True):
        with pytest.raises(InputError, match="not empty and is not an xaisdk bundle"):
            export_bundle(classifier(SmallCNN), out, force=force)
    assert {p.relative_to(out): p.read_bytes() if p.is_file() else None for p in out.rglob("*")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_refuses_folder_with_a_foreign_manifest_even_with_force(tmp_path):
    """A manifest.json that is not an xaisdk manifest does not make a folder a bundle (force must not delete it)."""
    out = tmp_path / "webapp"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"name": "my web app", "version": "1.0"}))
    (out / "index.html").write_text("<html></html>")
    before = snapshot(out)
    with pytest.raises(InputError, match="not an xaisdk bundle"):
        export_bundle(classifier(SmallCNN), out, force=True)
    assert snapshot(out) == before


def test_refuses_existing_bundle_without_force(existing_bundle):
    before = snapshot(existing_bundle)
    with pytest.raises(InputError, match="force"):
        export_bundle(classifier(SmallCNN), existing_bundle)
    assert snapshot(existing_bundle) == before


def test_force_replaces_existing_bundle(existing_bundle):
    report = export_bundle(classifier(SmallCNN), existing_bundle, force=True)
    assert sorted(p.name for p in existing_bundle.iterdir()) == sorted(report.files)
    assert not (existing_bundle / "generator_ganmex.onnx").exists()  # nothing of the old bundle is left
    bundle = read_bundle(existing_bundle)
    assert bundle.class_names == ("a", "b", "c") and bundle.input_shape == (1, 10, 10)
    assert sorted(p.name for p in existing_bundle.parent.iterdir()) == ["bundle"]  # old copy and staging removed


def test_export_into_empty_existing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    export_bundle(classifier(SmallCNN), tmp_path / "empty")
    assert read_bundle(tmp_path / "empty").num_classes == 3


@pytest.mark.parametrize("bad", [CumsumNet, ExportDiffers])
def test_failed_export_leaves_previous_bundle_intact(existing_bundle, bad):
    """Failing before the graphs are written (unsupported op) or after (verification) changes nothing."""
    before = snapshot(existing_bundle)
    expected = UnsupportedOpError if bad is CumsumNet else VerificationError
    with pytest.raises(expected) as info:
        export_bundle(classifier(bad), existing_bundle, force=True)
    if bad is ExportDiffers:
        assert "logits_rel_err" in str(info.value)
    assert snapshot(existing_bundle) == before
    assert read_bundle(existing_bundle).graphs.keys() == EXPECTED_IO.keys()
    assert sorted(p.name for p in existing_bundle.parent.iterdir()) == ["bundle"]  # no staging folder left


@pytest.mark.parametrize("kwargs", [
    {"opset": 12}, {"opset": 21}, {"opset": "17"}, {"opset": 17.0}, {"opset": True}, {"opset": None},
    {"batch": 0}, {"batch": -3}, {"batch": 2.5}, {"batch": "4"}, {"batch": True},
])
def test_bad_opset_or_batch_raises_input_error(tmp_path, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(InputError, match=name):
        export_bundle(classifier(SmallCNN), tmp_path / "b", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_numpy_integer_opset_and_batch_are_accepted(tmp_path):
    report = export_bundle(classifier(SmallCNN), tmp_path / "b", opset=np.int64(17), batch=np.int32(2))
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["opset"] == 17 and manifest["input"]["batch"] == 2 and report.checks["grad_rel_err"] <= TOL


class MaxPoolTieNet(nn.Module):
    """Two hidden values that tie in float32 (1 and 1 + 2^-24 both round to 1) but not in float64: max pooling
    picks the first in float32 (torch and ONNX Runtime alike) and the second in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.out = nn.Linear(2, 2), nn.Linear(1, 3)
        with torch.no_grad():
            self.mix.weight.copy_(torch.eye(2))
            self.mix.bias.copy_(torch.tensor([0.0, 2.0 ** -24], dtype=torch.float64))
            self.out.weight.copy_(torch.tensor([[1.0], [-2.0], [0.5]]))
            self.out.bias.zero_()

    def forward(self, x):
        hidden = self.mix(x.flatten(1)).view(-1, 1, 1, 2)
        return self.out(nn.functional.max_pool2d(hidden, (1, 2)).flatten(1))


def test_verification_tells_a_float64_near_tie_from_a_wrong_rule(tmp_path):
    """At an input where float32 and float64 pick different max-pool cells (a near-tie), the float64 finite
    differences and DeepLIFT reference follow the other cell: the export re-judges the gradient on ONNX
    Runtime's routes and DeepLIFT without the pairs holding that image, and says so, instead of refusing
    the model or dropping its DeepLIFT graph (seen on ResNet-50 and VGG-11-BN on an AVX-512 CPU)."""
    tie = np.ones((1, 1, 1, 2), np.float32)
    report = export_bundle(MaxPoolTieNet().eval(), tmp_path / "b", input_shape=(1, 1, 2), verify_inputs=tie)
    checks = report.checks
    assert checks["grad_fd_near_tie_flips"] == 1 and checks["grad_fd_near_tie_margin"] < 1e-7
    assert checks["grad_fd_rel_err"] <= TOL and checks["deeplift_rel_err"] <= TOL
    assert checks["deeplift_near_tie_pairs_left_out"] == 2  # the tie image as input, and as the next pair's baseline
    assert report.deeplift_unavailable is None
