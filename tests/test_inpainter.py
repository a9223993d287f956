"""The learned inpainter: hole masks, the gated U-Net, the shipped weights against a mean-colour fill, the
mask gradient, training and resuming, ONNX export (API and CLI) and ONNX Runtime inference."""

from __future__ import annotations

import copy
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from xaisdk.cli import main
from xaisdk.data import MASK_KINDS, load_digits, load_shapes, random_masks
from xaisdk.deploy.allowlist import disallowed_nodes
from xaisdk.deploy.export import export_bundle, export_inpainter_onnx
from xaisdk.errors import InputError
from xaisdk.models import (
    GatedUNet,
    InpainterConfig,
    LearnedInpainter,
    load_inpainter,
    load_shipped_inpainter,
    shipped_classifier_path,
    shipped_inpainter_path,
)
from xaisdk.runtime.bundle import read_bundle
from xaisdk.runtime.inpainting import Inpainter
from xaisdk.runtime.onnx_inpainter import OnnxInpainter
from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend
from xaisdk.train.inpainter import InpainterTrainingConfig, masked_l1, mean_colour_fill, train_inpainter

CPU = ["CPUExecutionProvider"]
TOL = 1e-4


def rel_err(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


def kept_exactly(out: np.ndarray, x: np.ndarray, masks: np.ndarray) -> bool:
    keep = np.broadcast_to(masks == 0, x.shape)
    return bool(np.array_equal(out[keep], x[keep]))


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def digits_inpainter() -> LearnedInpainter:
    return load_shipped_inpainter("digits")


@pytest.fixture(scope="module")
def shapes_inpainter() -> LearnedInpainter:
    return load_shipped_inpainter("shapes")


@pytest.fixture(scope="module")
def digits_test() -> np.ndarray:
    return load_digits().test.x


@pytest.fixture(scope="module")
def shapes_test() -> np.ndarray:
    # load_shapes draws train and test parts from two seeds, so these are images the inpainter never saw
    return load_shapes(n_train=3, n_test=200, seed=0).test.x


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("kinds", [("box",), ("brush",), ("superpixel",), MASK_KINDS])
def test_masks_are_seeded_binary_and_inside_the_coverage_range(kinds):
    masks = random_masks(60, 28, 28, kinds=kinds, coverage=(0.1, 0.4), seed=3)
    assert masks.shape == (60, 1, 28, 28) and masks.dtype == np.float32
    assert set(np.unique(masks).tolist()) == {0.0, 1.0}
    cover = masks.mean(axis=(1, 2, 3))
    assert cover.min() >= 0.1 and cover.max() <= 0.4
    assert cover.std() > 0.05  # the coverage is drawn per mask, not always the same
    np.testing.assert_array_equal(masks, random_masks(60, 28, 28, kinds=kinds, coverage=(0.1, 0.4), seed=3))
    assert not np.array_equal(masks, random_masks(60, 28, 28, kinds=kinds, coverage=(0.1, 0.4), seed=4))


def test_masks_of_other_sizes_and_the_default_range():
    masks = random_masks(40, 20, 36, seed=0)
    cover = masks.mean(axis=(1, 2, 3))
    assert masks.shape == (40, 1, 20, 36) and cover.min() >= 0.05 and cover.max() <= 0.7

    def opened(m: np.ndarray, side: int) -> np.ndarray:
        """The pixels of ``m`` that lie in some side x side square of hole pixels."""
        full = np.lib.stride_tricks.sliding_window_view(m, (side, side)).all(axis=(2, 3))
        out = np.zeros_like(m)
        for i, j in zip(*np.nonzero(full)):
            out[i:i + side, j:j + side] = True
        return out

    # box holes are unions of rectangles with sides >= 15% of 32 px, brush strokes are thinner
    boxes = random_masks(20, 32, 32, kinds=("box",), coverage=(0.2, 0.3), seed=1)[:, 0] == 1
    assert all(np.array_equal(opened(m, 5), m) for m in boxes)
    strokes = random_masks(20, 32, 32, kinds=("brush",), coverage=(0.2, 0.3), seed=1)[:, 0] == 1
    assert not any(np.array_equal(opened(m, 5), m) for m in strokes)


@pytest.mark.parametrize("kwargs, message", [
    ({"kinds": ("box", "blob")}, "kinds"),
    ({"kinds": ()}, "kinds"),
    ({"coverage": (0.6, 0.2)}, "coverage"),
    ({"coverage": (0.0, 0.5)}, "coverage"),
    ({"coverage": 0.5}, "coverage"),
    ({"height": 2}, "height"),
    ({"n": 0}, "n"),
    ({"seed": -1}, "seed"),
])
def test_bad_mask_arguments_raise_input_error(kwargs, message):
    args = {"n": 2, "height": 16, "width": 16} | kwargs
    with pytest.raises(InputError, match=message):
        random_masks(args.pop("n"), args.pop("height"), args.pop("width"), **args)
    with pytest.raises(InputError, match="coverage.*no whole number"):
        random_masks(1, 4, 4, coverage=(0.3, 0.31))


# --------------------------------------------------------------------------- the network and the shipped weights


def test_output_equals_the_input_outside_the_mask(digits_inpainter, shapes_inpainter, digits_test, shapes_test):
    for inpainter, x in ((digits_inpainter, digits_test[:50]), (shapes_inpainter, shapes_test[:50])):
        assert isinstance(inpainter, Inpainter)
        masks = random_masks(len(x), *x.shape[2:], seed=5)
        out = inpainter.inpaint(x, masks)
        assert out.shape == x.shape and out.dtype == np.float32 and kept_exactly(out, x, masks)
        low, high = inpainter.value_range
        assert out.min() >= low and out.max() <= high
        with torch.no_grad():  # the network composites by itself: the exported graph relies on it
            raw = inpainter.network(torch.from_numpy(x), torch.from_numpy(masks)).numpy()
        assert kept_exactly(raw, x, masks)
        holes = np.broadcast_to(masks == 1, x.shape)
        assert np.abs(out - x)[holes].mean() > 0  # something was filled in
        # what is under the hole does not matter
        np.testing.assert_array_equal(inpainter.inpaint(np.where(holes, 0.123, x).astype(np.float32), masks), out)


def test_inpainters_can_be_shared_by_threads(digits_inpainter, bundle, digits_test):
    x = digits_test[:64]
    masks = random_masks(64, 28, 28, seed=8)
    for inpainter in (digits_inpainter, OnnxInpainter(bundle, providers=CPU)):
        alone = [inpainter.inpaint(x[i:i + 8], masks[i:i + 8]) for i in range(0, 64, 8)]
        with ThreadPoolExecutor(4) as pool:
            shared = list(pool.map(lambda i: inpainter.inpaint(x[i:i + 8], masks[i:i + 8]), range(0, 64, 8)))
        for a, b in zip(alone, shared):
            np.testing.assert_array_equal(a, b)


def test_sizes_the_downsampling_does_not_divide_are_padded_and_cropped():
    torch.manual_seed(0)
    net = GatedUNet(InpainterConfig.for_input((2, 13, 27), base_channels=4))
    inpainter = LearnedInpainter(net, {"name": "odd"}, chunk_size=3)
    x = np.random.default_rng(0).random((7, 2, 13, 27), np.float32)
    masks = random_masks(7, 13, 27, seed=0)
    out = inpainter.inpaint(x, masks)
    assert out.shape == x.shape and kept_exactly(out, x, masks)
    with torch.no_grad():
        whole = net(torch.from_numpy(x), torch.from_numpy(masks)).numpy()
    assert rel_err(out, whole) <= 1e-5  # chunks of 3 give what one batch gives (up to float32 summation order)


def test_shipped_inpainters_are_small():
    for name in ("digits", "shapes"):
        inpainter = load_shipped_inpainter(name)
        assert sum(p.numel() for p in inpainter.network.parameters()) < 400_000
        assert shipped_inpainter_path(name).stat().st_size < 2_000_000
        assert inpainter.training["steps_done"] > 0 and "training_state" not in torch.load(
            shipped_inpainter_path(name), weights_only=True)


def test_shipped_inpainters_beat_a_mean_colour_fill(digits_inpainter, shapes_inpainter, digits_test, shapes_test):
    """Held-out test images, masks from a seed used neither in training nor in the recipe's evaluation."""
    for inpainter, x in ((digits_inpainter, digits_test), (shapes_inpainter, shapes_test)):
        masks = random_masks(len(x), *x.shape[2:], seed=2024)
        learned = masked_l1(inpainter.inpaint(x, masks), x, masks)
        mean_fill = masked_l1(mean_colour_fill(x, masks), x, masks)
        print(f"{inpainter.name}: held-out hole L1 learned {learned:.4f}, mean-colour fill {mean_fill:.4f}")
        assert learned <= 0.75 * mean_fill, (inpainter.name, learned, mean_fill)


def test_bad_inputs_raise_input_error(digits_inpainter, digits_test):
    x = digits_test[:2]
    m = np.zeros((2, 1, 28, 28), np.float32)
    cases = [
        (x, m + 0.5, "mask: expected binary"),
        (x, m[:, :, :27], "mask: expected shape"),
        (x, np.zeros((3, 1, 28, 28), np.float32), "mask: expected shape"),
        (np.repeat(x, 3, axis=1), m, r"x: expected images of shape \(1, 28, 28\)"),
        (x[:, :, :27, :27], m[:, :, :27, :27], r"x: expected images of shape \(1, 28, 28\)"),
        (x[0], m[0], "x: expected a non-empty batch"),
        (np.full_like(x, np.nan), m, "x: contains 1568 NaN"),
    ]
    for images, masks, message in cases:
        with pytest.raises(InputError, match=message):
            digits_inpainter.inpaint(images, masks)
    with pytest.raises(InputError, match="mask: expected values in"):
        digits_inpainter.mask_vjp(x, m + 1.5, x)
    with pytest.raises(InputError, match="cotangent"):
        digits_inpainter.mask_vjp(x, m, x[:1])
    with pytest.raises(InputError, match="inpainter input x"):
        digits_inpainter.network(torch.zeros(1, 3, 28, 28), torch.zeros(1, 1, 28, 28))
    with pytest.raises(InputError, match="chunk_size"):
        LearnedInpainter(digits_inpainter.network, chunk_size=0)
    with pytest.raises(InputError, match="not an xaisdk inpainter checkpoint"):
        load_inpainter(shipped_classifier_path("digits"))
    with pytest.raises(InputError, match="no shipped inpainter 'cifar'"):
        load_shipped_inpainter("cifar")


# --------------------------------------------------------------------------- the mask gradient (MP-G)


def test_mask_vjp_matches_float64_autograd_and_finite_differences(digits_inpainter, digits_test):
    x = digits_test[:3]
    rng = np.random.default_rng(0)
    masks = random_masks(3, 28, 28, seed=7)
    masks[0] = rng.random((1, 28, 28))  # soft masks are allowed: the mask is a continuous input here
    cot = rng.standard_normal(x.shape).astype(np.float32)
    got = digits_inpainter.mask_vjp(x, masks, cot)
    assert got.shape == (3, 1, 28, 28) and got.dtype == np.float32
    chunked = LearnedInpainter(digits_inpainter.network, chunk_size=2).mask_vjp(x, masks, cot)
    assert rel_err(chunked, got) <= 1e-4

    net64 = copy.deepcopy(digits_inpainter.network).double()
    x64, m64, c64 = (torch.from_numpy(a).double() for a in (x, masks, cot))
    m_var = m64.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((net64(x64, m_var) * c64).sum(), m_var)
    assert rel_err(got, want.numpy()) <= TOL

    eps = 1e-6
    with torch.no_grad():
        for _ in range(3):
            v = torch.from_numpy(rng.standard_normal(masks.shape))
            fd = ((net64(x64, m64 + eps * v) - net64(x64, m64 - eps * v)) * c64).sum((1, 2, 3)) / (2 * eps)
            analytic = (want * v).sum((1, 2, 3))
            assert rel_err(analytic.numpy(), fd.numpy()) <= 1e-5
    # it is the derivative of what inpaint computes: a small mask change moves the output as predicted
    step = np.zeros_like(masks)
    step[1, 0, 10:14, 10:14] = 1e-3
    with torch.no_grad():
        moved = [float((net64(x64, torch.from_numpy(masks + s).double()) * c64).sum()) for s in (step, -step)]
    assert (moved[0] - moved[1]) / 2 == pytest.approx(float((got * step).sum()), rel=1e-3)


# --------------------------------------------------------------------------- training


def test_a_short_training_run_lowers_the_hole_l1():
    split = load_digits()
    train = split.train.subset(np.arange(300))
    config = InpainterTrainingConfig(steps=30, batch_size=16, mask_pool=256, log_every=10, eval_images=100)
    x = split.test.x[:100]
    masks = random_masks(100, 28, 28, seed=11)
    torch.manual_seed(config.seed)
    untrained = LearnedInpainter(GatedUNet(InpainterConfig.for_input((1, 28, 28))))
    before = masked_l1(untrained.inpaint(x, masks), x, masks)
    model, history = train_inpainter(train, config, progress=False)
    after = masked_l1(model.inpaint(x, masks), x, masks)
    assert after < 0.7 * before, (before, after)
    assert history["step"] == [10, 20, 30] and history["hole_l1"][-1] < history["hole_l1"][0]
    assert "heldout" not in history  # a bare Dataset has no test part
    assert model.training["steps_done"] == 30 and model.data == {"name": "digits"}


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    train = load_digits().train.subset(np.arange(64))
    # the adversarial term is on so that the critic's state is resumed too
    tiny = dict(batch_size=4, base_channels=4, critic_channels=4, adversarial_weight=0.1, mask_pool=16,
                log_every=3, checkpoint_every=3)
    whole, whole_history = train_inpainter(train, InpainterTrainingConfig(steps=6, **tiny), out=tmp_path / "a.pt",
                                           progress=False)
    train_inpainter(train, InpainterTrainingConfig(steps=3, **tiny), out=tmp_path / "b.pt", progress=False)
    resumed, resumed_history = train_inpainter(train, InpainterTrainingConfig(steps=6, **tiny), out=tmp_path / "b.pt",
                                               resume=True, progress=False)
    for key, value in whole.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key
    for term in ("step", "hole_l1", "valid_l1", "adversarial", "critic"):
        assert resumed_history[term] == whole_history[term], term
    assert load_inpainter(tmp_path / "b.pt").training["steps_done"] == 6

    with pytest.raises(InputError, match=r"different hyper-parameters \(lr: 0.001 -> 0.002\)"):
        train_inpainter(train, InpainterTrainingConfig(steps=9, lr=2e-3, **tiny), out=tmp_path / "b.pt", resume=True,
                        progress=False)
    with pytest.raises(InputError, match="no training state"):
        train_inpainter(train, InpainterTrainingConfig(steps=9), out=shipped_inpainter_path("digits"), resume=True,
                        progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"), ({"hole_weight": 0.0}, "hole_weight"),
    ({"coverage": (0.5, 0.1)}, "coverage"), ({"mask_kinds": ("circle",)}, "kinds"),
])
def test_bad_training_settings_raise_input_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        InpainterTrainingConfig(**kwargs).validate()


# --------------------------------------------------------------------------- the CLI and ONNX


TINY = ("--steps", "4", "--batch-size", "4", "--base-channels", "4", "--sample-every", "2", "--checkpoint-every", "2")


def test_cli_train_inpainter_end_to_end(tmp_path):
    out = tmp_path / "inp.pt"
    result = cli("train", "inpainter", "--dataset", "digits", "--out", str(out), *TINY)
    assert result.exit_code == 0, result.output
    assert "held-out hole L1 on 359 test images" in result.output and f"wrote {out}" in result.output
    model = load_inpainter(out)
    assert model.training["steps_done"] == 4 and model.input_shape == (1, 28, 28)
    assert model.data == {"name": "digits", "options": {}}
    samples = sorted(p.name for p in (tmp_path / "inp_samples").glob("*.png"))
    assert samples == ["step_000002.png", "step_000004.png"]

    again = cli("train", "inpainter", "--dataset", "digits", "--out", str(out), *TINY)
    assert again.exit_code == 1 and "--force" in again.output and "Traceback" not in again.output
    resumed = cli("train", "inpainter", "--dataset", "digits", "--out", str(out), "--resume", "--steps", "6", *TINY[2:])
    assert resumed.exit_code == 0, resumed.output
    assert load_inpainter(out).training["steps_done"] == 6

    for extra, message in ((["--steps", "0"], "steps must be"), (["--resume", "--force"], "one of them")):
        bad = cli("train", "inpainter", "--dataset", "digits", "--out", str(tmp_path / "x.pt"), *extra)
        assert bad.exit_code == 1 and message in bad.output, bad.output
    missing = cli("train", "inpainter", "--dataset", "digits", "--out", str(tmp_path / "x.pt"), "--resume")
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert not (tmp_path / "x.pt").exists()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inpainter_bundle") / "bundle"
    result = cli("export", "--model", str(shipped_classifier_path("digits")), "--inpainter",
                 str(shipped_inpainter_path("digits")), "--out", str(folder))
    assert result.exit_code == 0, result.output
    assert "inpainter.onnx" in result.output and "inpainter_rel_err" in result.output
    return folder


def test_cli_export_adds_a_verified_inpainter_graph(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["graphs"]["inpainter"]
    assert entry["file"] == "inpainter.onnx"
    assert entry["inputs"] == {"x": ["N", 1, 28, 28], "mask": ["N", 1, 28, 28]}
    assert entry["outputs"] == {"image": ["N", 1, 28, 28]}
    assert manifest["model"]["inpainter"] is True and manifest["inpainter"]["name"] == "learned-digits"
    assert 0 <= manifest["verification"]["inpainter_rel_err"] <= TOL
    graph = onnx.load(bundle / "inpainter.onnx")
    assert disallowed_nodes(graph) == []
    assert "ConvTranspose" not in {node.op_type for node in graph.graph.node}
    assert sorted(read_bundle(bundle).graphs) == ["classifier", "classifier_grad", "deeplift_grad", "inpainter"]
    assert OnnxRuntimeBackend(bundle, providers=CPU).num_classes == 10  # the classifier backend still loads


def test_onnx_inpainter_equals_torch_and_keeps_unmasked_pixels(bundle, digits_inpainter, digits_test):
    runtime = OnnxInpainter(bundle, providers=CPU, chunk_size=64)
    assert isinstance(runtime, Inpainter)
    assert runtime.input_shape == (1, 28, 28) and runtime.value_range == (0.0, 1.0)
    assert runtime.name == "onnx-learned-digits"
    x = digits_test[:150]
    masks = random_masks(len(x), 28, 28, seed=9)
    graph = runtime.graph_output(x, masks)  # chunks of 64: 64 + 64 + 22 rows
    assert kept_exactly(graph, x, masks)
    assert rel_err(runtime.inpaint(x, masks), digits_inpainter.inpaint(x, masks)) <= TOL
    with pytest.raises(InputError, match="mask: expected binary"):
        runtime.inpaint(x, masks * 0.5)
    with pytest.raises(InputError, match=r"x: expected images of shape \(1, 28, 28\)"):
        runtime.inpaint(np.zeros((1, 3, 28, 28), np.float32), masks[:1])


def test_bundles_without_an_inpainter_stay_valid(bundle, tmp_path):
    copy_ = tmp_path / "old"
    shutil.copytree(bundle, copy_)
    manifest = json.loads((copy_ / "manifest.json").read_text())
    for key in ("graphs", "files"):
        manifest[key] = {k: v for k, v in manifest[key].items() if "inpainter" not in k}
    del manifest["inpainter"], manifest["model"]["inpainter"], manifest["verification"]["inpainter_rel_err"]
    (copy_ / "manifest.json").write_text(json.dumps(manifest))
    (copy_ / "inpainter.onnx").unlink()
    assert "inpainter" not in read_bundle(copy_).graphs
    assert OnnxRuntimeBackend(copy_, providers=CPU).num_classes == 10
    with pytest.raises(InputError, match="no inpainter graph.*--inpainter"):
        OnnxInpainter(copy_, providers=CPU)


def test_bare_onnx_file_with_a_fixed_batch(shapes_inpainter, shapes_test, tmp_path):
    path = export_inpainter_onnx(shipped_inpainter_path("shapes"), tmp_path / "shapes.onnx", batch=4)
    runtime = OnnxInpainter(path, providers=CPU)
    assert runtime.input_shape == (3, 32, 32) and runtime.batch == 4 and runtime.name == "onnx-learned-shapes"
    x = shapes_test[:10]  # 4 + 4 + 2 rows padded to 4
    masks = random_masks(10, 32, 32, seed=3)
    out = runtime.inpaint(x, masks)
    assert kept_exactly(out, x, masks) and rel_err(out, shapes_inpainter.inpaint(x, masks)) <= TOL


def test_export_refuses_an_inpainter_that_does_not_fit_the_classifier(tmp_path):
    out = tmp_path / "bundle"
    result = cli("export", "--model", str(shipped_classifier_path("digits")), "--inpainter",
                 str(shipped_inpainter_path("shapes")), "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "inpaints (3, 32, 32) images but the classifier takes (1, 28, 28)" in result.output
    assert not out.exists()
    other_range = LearnedInpainter(GatedUNet(InpainterConfig.for_input((1, 28, 28), base_channels=4,
                                                                       value_range=(-1.0, 1.0))))
    with pytest.raises(InputError, match=r"value range \(-1.0, 1.0\) differs from the classifier's \(0.0, 1.0\)"):
        export_bundle(shipped_classifier_path("digits"), out, inpainter=other_range)
    with pytest.raises(InputError, match="no such checkpoint"):
        export_bundle(shipped_classifier_path("digits"), out, inpainter=tmp_path / "missing.pt")
    assert not out.exists()
