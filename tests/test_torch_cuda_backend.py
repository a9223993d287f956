"""The torch-cuda backend against the CPU reference backend (TorchBackend) and the Backend drivers.

Without a GPU only the constructor's error runs; everything else skips with the reason. On a GPU the
tests switch TF32 off, so that GPU float32 arithmetic is compared with CPU float32 arithmetic.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from xaisdk.errors import InputError
from xaisdk.methods import drivers
from xaisdk.methods.quadrature import path_rule
from xaisdk.runtime.backend import Backend, class_weights
from xaisdk.torch_runtime import cuda_kernels
from xaisdk.torch_runtime.torch_backend import TorchBackend
from xaisdk.torch_runtime.torch_cuda_backend import TorchCudaBackend

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present, so the no-GPU error cannot occur")
def test_constructing_without_cuda_is_a_clear_error():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(InputError, match=r"^TorchCudaBackend needs a CUDA GPU: torch.cuda.is_available\(\) is False"):
        TorchCudaBackend(net, input_shape=(1, 2, 2))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Norm-wise relative difference ||actual - expected|| / ||expected||."""
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 on the GPU (TF32 convolutions and matmuls differ from the CPU by ~1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def ganmex():
    from xaisdk.models import load_shipped_ganmex

    return load_shipped_ganmex("digits")


@pytest.fixture(scope="module")
def cpu(ganmex):
    """The reference: autograd on the CPU (fast_ig off, so IG runs the driver's chunked loop over score_gradient)."""
    return TorchBackend(ganmex, fast_ig=False)


@pytest.fixture(scope="module")
def gpu(ganmex):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return TorchCudaBackend(ganmex, chunk_size=64)


@pytest.fixture(scope="module")
def problem(ganmex, cpu):
    """Five test digits, one-vs-one weights (predicted class vs the next one), GANMEX baselines from the CPU."""
    from xaisdk.data import load_digits

    x = np.ascontiguousarray(load_digits().test.x[:5], dtype=np.float32)
    source = cpu.logits(x).argmax(axis=1)
    target = (source + 1) % cpu.num_classes
    weights = class_weights(source, target, cpu.num_classes)
    baseline = cpu.generate(x, target)
    return x, weights, baseline, target


@needs_gpu
def test_backend_protocol_and_attributes(gpu, cpu, ganmex):
    assert isinstance(gpu, Backend)
    assert gpu.name == "torch-cuda"
    assert (gpu.input_shape, gpu.num_classes, gpu.value_range) == (cpu.input_shape, cpu.num_classes, cpu.value_range)
    assert gpu.supports_deeplift and gpu.has_generator
    assert next(gpu.module.parameters()).device.type == "cuda"
    assert next(ganmex.classifier.model.parameters()).device.type == "cpu"  # the caller's model stays put
    expected = "xaisdk._ext_cuda" if cuda_kernels.available() and cuda_kernels.device_count() > 0 else "torch"
    assert gpu.kernels == expected


@needs_gpu
def test_logits_gradients_deeplift_generate_equal_the_cpu_backend(gpu, cpu, problem):
    x, weights, baseline, target = problem
    assert relative_error(gpu.logits(x), cpu.logits(x)) <= 1e-5
    (gs, gg), (cs, cg) = gpu.score_gradient(x, weights), cpu.score_gradient(x, weights)
    assert relative_error(gs, cs) <= 1e-5
    assert relative_error(gg, cg) <= 1e-5
    assert relative_error(gpu.generate(x, target), baseline) <= 1e-5
    dl_gpu = gpu.deeplift_multipliers(x, baseline, weights)
    dl_cpu = cpu.deeplift_multipliers(x, baseline, weights)
    # The rescale rule divides by (unit(x) - unit(baseline)): where that difference is small, float32
    # rounding differences between GPU and CPU convolutions are amplified, hence 1e-4 here.
    assert relative_error(dl_gpu, dl_cpu) <= 1e-4
    # DeepLIFT's summation-to-delta, an exact identity of the rescale rule, holds on the GPU as well.
    gap = drivers.score(cpu, x, weights) - drivers.score(cpu, baseline, weights)
    total = ((x - baseline) * dl_gpu).reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(total, gap, rtol=1e-4, atol=1e-4)


N_STEPS = 50


@pytest.fixture(scope="module")
def expected_ig(cpu, problem):
    x, weights, baseline, _ = problem
    return drivers.integrated_gradients(cpu, x, weights, baseline, n_steps=N_STEPS, chunk_size=64)


@needs_gpu
@pytest.mark.parametrize("cuda_graph", [True, False])
@pytest.mark.parametrize("chunk_size", [64, 37, 4096])  # 250 rows: partial last chunk, odd chunk, one chunk for all
def test_fused_ig_equals_the_driver_on_the_cpu_backend(ganmex, cpu, problem, expected_ig, cuda_graph, chunk_size):
    x, weights, baseline, _ = problem
    backend = TorchCudaBackend(ganmex, chunk_size=chunk_size, cuda_graph=cuda_graph)
    alphas, quadrature = path_rule("riemann_middle", N_STEPS)
    attr = backend.fused_integrated_gradients(x, baseline, weights, alphas, quadrature)
    assert attr.shape == x.shape and attr.dtype == np.float32
    # 250 gradient evaluations: a ReLU whose input rounds to the other side of 0 on the GPU changes a
    # step's gradient slightly, so the bound is 1e-4 rather than the 1e-5 of a single gradient.
    assert relative_error(attr, expected_ig) <= 1e-4
    # Completeness: sum(attr) = S(x) - S(baseline) up to the quadrature error, as on the CPU.
    gap = drivers.score(cpu, x, weights) - drivers.score(cpu, baseline, weights)
    delta = drivers.convergence_delta(cpu, x, baseline, weights, attr)
    expected_delta = drivers.convergence_delta(cpu, x, baseline, weights, expected_ig)
    assert (np.abs(delta - expected_delta) <= 1e-4 * np.abs(gap) + 1e-4).all(), (delta, expected_delta)
    assert (np.abs(delta) <= 0.01 * np.abs(gap) + 1e-2).all(), (delta, gap)


@needs_gpu
def test_fused_ig_with_and_without_graph_and_kernels_agree(ganmex, problem, monkeypatch):
    """The CUDA graph replays the eager step, and the torch-op fallback computes what the kernels do."""
    from xaisdk.torch_runtime import torch_cuda_backend

    x, weights, baseline, _ = problem
    alphas, quadrature = path_rule("gausslegendre", 16)
    results = {}
    for graph in (True, False):
        backend = TorchCudaBackend(ganmex, chunk_size=24, cuda_graph=graph)
        results[graph, backend.kernels] = backend.fused_integrated_gradients(x, baseline, weights, alphas, quadrature)
    monkeypatch.setattr(cuda_kernels, "_ext_cuda", None)
    monkeypatch.setattr(torch_cuda_backend, "_warned_no_kernels", False)
    with pytest.warns(RuntimeWarning, match="run as torch ops"):
        fallback = TorchCudaBackend(ganmex, chunk_size=24)
    assert fallback.kernels == "torch"
    reference = fallback.fused_integrated_gradients(x, baseline, weights, alphas, quadrature)
    for key, value in results.items():
        assert relative_error(value, reference) <= 1e-5, key


@needs_gpu
def test_fused_ig_repeats_and_handles_a_scalar_baseline(gpu, problem):
    x, weights, _, _ = problem
    alphas, quadrature = path_rule("riemann_trapezoid", 9)
    first = gpu.fused_integrated_gradients(x, 0.0, weights, alphas, quadrature)
    # Our kernels are deterministic; cuDNN's backward may not be (atomics), hence a tolerance.
    again = gpu.fused_integrated_gradients(x, np.zeros_like(x), weights, alphas, quadrature)
    assert relative_error(again, first) <= 1e-6
    # single rows through the same backend: a new chunk shape (a second captured graph)
    one = gpu.fused_integrated_gradients(x[:1], 0.0, weights[:1], alphas[:2], quadrature[:2])
    assert one.shape == (1, *gpu.input_shape)


@needs_gpu
def test_fused_ig_from_two_threads(gpu, problem):
    x, weights, baseline, _ = problem
    alphas, quadrature = path_rule("riemann_middle", 20)
    expected = gpu.fused_integrated_gradients(x, baseline, weights, alphas, quadrature)
    out: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: out.append(gpu.fused_integrated_gradients(x, baseline, weights, alphas,
                                                                                         quadrature))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2
    for result in out:  # interleaved calls would mix static buffers and be far off
        assert relative_error(result, expected) <= 1e-6


@needs_gpu
def test_fused_ig_refuses_bad_arguments(gpu, problem):
    x, weights, baseline, _ = problem
    alphas, quadrature = path_rule("riemann_middle", 4)
    with pytest.raises(InputError, match="x: expected shape"):
        gpu.fused_integrated_gradients(x[:, 0], baseline, weights, alphas, quadrature)
    with pytest.raises(InputError, match="weights: expected shape"):
        gpu.fused_integrated_gradients(x, baseline, weights[:2], alphas, quadrature)
    with pytest.raises(InputError, match="alphas, quadrature"):
        gpu.fused_integrated_gradients(x, baseline, weights, alphas, quadrature[:3])
    with pytest.raises(InputError, match="baseline: expected the shape of x"):
        gpu.fused_integrated_gradients(x, baseline[:, :, :5], weights, alphas, quadrature)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        gpu.fused_integrated_gradients(bad, baseline, weights, alphas, quadrature)


@needs_gpu
def test_constructor_refuses_bad_options(ganmex):
    with pytest.raises(InputError, match="runs on a CUDA device"):
        TorchCudaBackend(ganmex, device="cpu")
    with pytest.raises(InputError, match="does not exist"):
        TorchCudaBackend(ganmex, device=f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(InputError, match="chunk_size"):
        TorchCudaBackend(ganmex, chunk_size=0)


@needs_gpu
@pytest.mark.slow
def test_fused_ig_with_torch_compile(ganmex, cpu, problem):
    """torch.compile's forward/backward captured in the graph gives the same attributions (compiling takes a while)."""
    x, weights, baseline, _ = problem
    alphas, quadrature = path_rule("riemann_middle", 16)
    expected = drivers.integrated_gradients(cpu, x, weights, baseline, n_steps=16)
    backend = TorchCudaBackend(ganmex, chunk_size=32, compile=True)
    attr = backend.fused_integrated_gradients(x, baseline, weights, alphas, quadrature)
    assert relative_error(attr, expected) <= 1e-4
