"""Backend drivers (xaisdk.methods.drivers) over TorchBackend reproduce the torch reference methods."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from nets import randomize_batch_norms
from torch import nn

import xaisdk
from xaisdk import attribution
from xaisdk.errors import InputError
from xaisdk.methods import drivers
from xaisdk.runtime.backend import Backend, class_weights
from xaisdk.torch_runtime.torch_backend import TorchBackend

REPO_ROOT = Path(xaisdk.__file__).resolve().parent.parent
TOL = dict(rtol=1e-4, atol=1e-5)


def bn_pool_net() -> nn.Module:
    """A small CNN with batch norm (non-trivial running statistics) and max pooling, in eval mode."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 5 * 5, 5),
    )  # fmt: skip
    return randomize_batch_norms(net).eval()


class Case:
    """A model, its backend, inputs, per-sample baselines/references and the class choice."""

    def __init__(self, model, x, baseline, refs, ref_labels, source, target, num_classes, input_shape=None):
        self.model, self.x, self.baseline = model, x, baseline
        self.refs, self.ref_labels = refs, ref_labels
        self.source, self.target = source, target
        self.weights = class_weights(source, target, num_classes)
        self.backend = TorchBackend(model, input_shape=input_shape)
        n = len(x)
        self.shap_refs = np.stack([refs[[i, i + n, i + 2 * n]] for i in range(n)])  # (N, 3, C, H, W)

    @property
    def classes(self) -> dict:
        return {"source": self.source, "target": self.target}


@pytest.fixture(scope="module", params=["digits-1v1", "digits-1vall", "bn-pool-1v1"])
def case(request, shipped, digits) -> Case:
    if request.param.startswith("digits"):
        x = digits.test.x[:3]
        source = digits.test.y[:3].astype(np.int64)
        target = (source + 3) % 10 if request.param == "digits-1v1" else None
        return Case(shipped, x, digits.train.x[200:203], digits.train.x[:120], digits.train.y[:120], source, target, 10)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(40, 2, 10, 10)).astype(np.float32)
    labels = np.arange(40) % 5
    return Case(bn_pool_net(), images[:3], images[3:6], images[6:], labels[6:], np.array([0, 1, 2]), np.array([4, 3, 0]), 5,
                input_shape=(2, 10, 10))


def _ig(rule):
    def reference(c):
        return attribution.integrated_gradients(c.model, c.x, baseline=c.baseline, n_steps=24, rule=rule, **c.classes)

    def driver(c):  # chunks of 10 rows cut across samples: every row needs its own sample's weights
        return drivers.integrated_gradients(c.backend, c.x, c.weights, c.baseline, n_steps=24, rule=rule, chunk_size=10)

    return reference, driver


def _occlusion(window, stride):
    def reference(c):
        return attribution.occlusion(c.model, c.x, baseline=c.baseline, window=window, stride=stride, **c.classes)

    def driver(c):
        return drivers.occlusion(c.backend, c.x, c.weights, c.baseline, window=window, stride=stride)

    return reference, driver


def _eg_reference(c):
    return attribution.expected_gradients(c.model, c.x, references=c.refs, reference_labels=c.ref_labels, n_samples=20,
                                          seed=5, **c.classes)


def _eg_driver(c):
    return drivers.expected_gradients(c.backend, c.x, c.weights, c.refs, c.ref_labels, c.target, n_samples=20, seed=5,
                                      chunk_size=16)


METHODS = {
    "ig-riemann_middle": _ig("riemann_middle"),
    "ig-gausslegendre": _ig("gausslegendre"),
    "deeplift": (
        lambda c: attribution.deeplift(c.model, c.x, baseline=c.baseline, **c.classes),
        lambda c: drivers.deeplift(c.backend, c.x, c.weights, c.baseline),
    ),
    "deepshap": (
        lambda c: attribution.deepshap(c.model, c.x, baselines=c.shap_refs, **c.classes),
        lambda c: drivers.deepshap(c.backend, c.x, c.weights, c.shap_refs, chunk_size=4),
    ),
    "occlusion-1": _occlusion(1, 1),
    "occlusion-3-stride-2": _occlusion(3, 2),
    "expected_gradients": (_eg_reference, _eg_driver),
    "gradient": (
        lambda c: attribution.gradient(c.model, c.x, **c.classes),
        lambda c: drivers.gradient(c.backend, c.x, c.weights),
    ),
    "grad_x_input": (
        lambda c: attribution.grad_x_input(c.model, c.x, **c.classes),
        lambda c: drivers.grad_x_input(c.backend, c.x, c.weights),
    ),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_driver_matches_torch_reference(case, method):
    reference, driver = METHODS[method]
    if method.startswith("deep") and not case.backend.supports_deeplift:
        with pytest.raises(InputError, match="rescale rule"):
            driver(case)
        return
    want, got = reference(case), driver(case)
    assert got.dtype == np.float32 and got.shape == case.x.shape
    assert np.abs(want).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(got, want, **TOL)


def test_deeplift_refusal_names_the_layer():
    """Max pooling has a DeepLIFT rule (the bn-pool case above); normalization across features has none."""

    def norm_net() -> nn.Module:
        net = bn_pool_net()
        net[1] = nn.GroupNorm(2, 4)
        return net

    assert TorchBackend(bn_pool_net(), input_shape=(2, 10, 10)).supports_deeplift
    backend = TorchBackend(norm_net(), input_shape=(2, 10, 10))
    assert not backend.supports_deeplift
    x = np.zeros((1, 2, 10, 10), np.float32)
    with pytest.raises(InputError, match="normalization across features \\(GroupNorm module '1'\\)"):
        backend.deeplift_multipliers(x, x, np.ones((1, 5), np.float32))
    with pytest.raises(InputError, match="GroupNorm module '1'"):
        attribution.deeplift(norm_net(), x, source=0)  # the reference raises the same message


def test_convergence_deltas_match_reference_and_ig_is_complete(shipped, digits):
    backend = TorchBackend(shipped)
    x, b = digits.test.x[:3], digits.train.x[:3]
    source, target = digits.test.y[:3], (digits.test.y[:3] + 1) % 10
    w = class_weights(source, target, 10)
    attr, delta = drivers.integrated_gradients(backend, x, w, b, return_convergence_delta=True)  # 200 steps
    gap = drivers.score(backend, x, w) - drivers.score(backend, b, w)  # |gap| is 0.6 to 21 here
    np.testing.assert_allclose(attr.reshape(3, -1).sum(1) - gap, delta, atol=1e-4)
    assert np.abs(delta).max() < 0.02
    _, coarse = drivers.integrated_gradients(backend, x, w, b, n_steps=20, return_convergence_delta=True)
    assert np.abs(delta).sum() < np.abs(coarse).sum() / 4  # the quadrature error shrinks with the steps
    _, want = attribution.integrated_gradients(shipped, x, source=source, target=target, baseline=b,
                                               return_convergence_delta=True)
    np.testing.assert_allclose(delta, want, atol=1e-4)

    _, delta = drivers.deeplift(backend, x, w, b, return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-4  # the rescale rule is exactly complete on a ReLU network
    refs = np.stack([digits.train.x[3:5]] * 3)
    _, delta = drivers.deepshap(backend, x, w, refs, return_convergence_delta=True)
    _, want = attribution.deepshap(shipped, x, baselines=refs, source=source, target=target, return_convergence_delta=True)
    np.testing.assert_allclose(delta, want, atol=1e-4)


def test_ganmex_generator_baseline(digits):
    gm = xaisdk.load_shipped_ganmex()
    backend = TorchBackend(gm)
    assert backend.has_generator and backend.input_shape == (1, 28, 28) and backend.num_classes == 10
    x, target = digits.test.x[:3], np.array([4, 0, 9])
    np.testing.assert_array_equal(backend.generate(x, target), gm.baseline(x, target))
    # a plain classifier gets its generator from generator=
    with_generator = TorchBackend(gm.classifier, generator=gm)
    np.testing.assert_array_equal(with_generator.generate(x, target), gm.baseline(x, target))
    with pytest.raises(InputError, match="no GANMEX generator"):
        TorchBackend(gm.classifier).generate(x, target)


def test_torch_backend_metadata_and_checks(shipped):
    backend = TorchBackend(shipped)
    assert isinstance(backend, Backend)
    assert (backend.name, backend.input_shape, backend.value_range, backend.num_classes) == ("torch", (1, 28, 28), (0.0, 1.0), 10)
    assert backend.supports_deeplift and not backend.has_generator
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7)).train()
    plain = TorchBackend(net, input_shape=(3, 2, 2), value_range=(-1, 1))
    assert plain.num_classes == 7 and plain.value_range == (-1.0, 1.0) and not net.training
    with pytest.raises(InputError, match="input_shape: required"):
        TorchBackend(net)
    with pytest.raises(InputError, match="differs from the checkpoint"):
        TorchBackend(shipped, input_shape=(1, 32, 32))
    with pytest.raises(InputError, match=r"x: expected shape \(N, 1, 28, 28\)"):
        backend.logits(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(InputError, match=r"weights: expected shape \(2, 10\)"):
        backend.score_gradient(np.zeros((2, 1, 28, 28), np.float32), np.zeros((2, 9), np.float32))
    # max_batch bounds each pass without changing the result
    x = np.random.default_rng(0).uniform(size=(5, 1, 28, 28)).astype(np.float32)
    w = class_weights(np.arange(5), None, 10)
    small = TorchBackend(shipped, max_batch=2)
    np.testing.assert_allclose(small.score_gradient(x, w)[1], backend.score_gradient(x, w)[1], **TOL)
    np.testing.assert_allclose(small.deeplift_multipliers(x, 0 * x, w), backend.deeplift_multipliers(x, 0 * x, w), **TOL)
    np.testing.assert_allclose(small.logits(x), shipped.model(torch.from_numpy(x)).detach().numpy(), **TOL)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda b, x, w: drivers.gradient(b, x[0], w), r"x: expected shape \(N, 1, 28, 28\)"),
        (lambda b, x, w: drivers.gradient(b, x[:0], w[:0]), "the batch is empty"),
        (lambda b, x, w: drivers.gradient(b, x, w[:1]), r"weights: expected shape \(2, 10\)"),
        (lambda b, x, w: drivers.deeplift(b, x, w, np.zeros((3, 1, 28, 28))), "baseline: expected the shape of x"),
        (lambda b, x, w: drivers.integrated_gradients(b, x, w, 0.0, chunk_size=0), "chunk_size"),
        (lambda b, x, w: drivers.integrated_gradients(b, x, w, 0.0, rule="simpson"), "rule"),
        (lambda b, x, w: drivers.occlusion(b, x, w, 0.0, window=29), "larger than the image"),
        (lambda b, x, w: drivers.occlusion(b, x, w, 0.0, stride=0), "stride"),
        (lambda b, x, w: drivers.deepshap(b, x, w, np.zeros((2, 3, 1, 28, 29))), "baselines: expected"),
        (lambda b, x, w: drivers.expected_gradients(b, x, w, x, np.array([0, 1]), np.array([0, 5])), "target class 5"),
        (lambda b, x, w: drivers.expected_gradients(b, x, w, x, np.array([0, 1, 2])), "reference_labels"),
        (lambda b, x, w: drivers.expected_gradients(b, x, w, x, n_samples=0), "n_samples"),
        (lambda b, x, w: drivers.gradient(b, np.full((2, 1, 28, 28), np.nan), w), "NaN"),
    ],
)
def test_driver_input_errors(shipped, call, message):
    backend = TorchBackend(shipped)
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(InputError, match=message):
        call(backend, x, class_weights([1, 2], [3, 4], 10))


def test_drivers_and_runtime_import_without_torch():
    script = (
        "import xaisdk.methods.drivers, xaisdk.methods.quadrature, xaisdk.runtime, sys; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_lazy_package_keeps_the_functions():
    import xaisdk.attribution.deeplift  # noqa: F401  (binding the submodule must not shadow the function)
    import xaisdk.attribution.integrated_gradients  # noqa: F401
    from xaisdk.attribution import METHODS, deeplift, integrated_gradients

    assert callable(deeplift) and deeplift.__name__ == "deeplift"
    assert attribution.integrated_gradients is integrated_gradients and callable(integrated_gradients)
    assert all(callable(fn) and fn.__name__ == name for name, fn in METHODS.items())
    with pytest.raises(AttributeError):
        attribution.no_such_method  # noqa: B018


def test_concurrent_calls_match_serial(shipped, digits):
    # DeepLIFT registers hooks on the shared module: other threads' gradients must not go through them
    backend = TorchBackend(shipped)
    x, b = digits.test.x[:4], digits.train.x[:4]
    weights = [class_weights(np.arange(4) + k, (np.arange(4) + k + 5) % 10, 10) for k in range(4)]
    jobs = [(kind, k) for k in range(4) for kind in ("deeplift", "gradient")]

    def run(kind: str, k: int) -> np.ndarray:
        if kind == "deeplift":
            return backend.deeplift_multipliers(x, b, weights[k])
        return backend.score_gradient(x, weights[k])[1]

    serial = [run(*job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [(i, pool.submit(run, *jobs[i])) for _ in range(4) for i in range(len(jobs))]
        for i, future in futures:
            np.testing.assert_allclose(future.result(), serial[i], **TOL)


def test_occlusion_refuses_a_stride_larger_than_its_window():
    """Pixels between such windows would never be occluded and their value would be 0/0 (Captum refuses it too)."""
    backend = drivers._LinearBackend(np.ones((2, 16)), input_shape=(1, 4, 4))
    with pytest.raises(InputError, match="larger than the window"):
        drivers.occlusion(backend, np.ones((1, 1, 4, 4), np.float32), np.array([[1.0, 0.0]], np.float32), 0.0, window=2, stride=3)
