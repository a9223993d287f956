"""The CUDA kernels of xaisdk._ext_cuda: the build, the host-side argument checks, and (on a GPU) the
results against the CPU kernels of xaisdk._ext and plain numpy loops.

Without a GPU only the build, import and argument checks run; the kernel tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import xaisdk
from xaisdk.errors import InputError
from xaisdk.torch_runtime import cuda_kernels

REPO_ROOT = Path(xaisdk.__file__).resolve().parent.parent
HAVE_NVCC = shutil.which("nvcc") is not None or any(
    os.path.isfile(os.path.join(os.environ.get(var, ""), "bin", "nvcc")) for var in ("CUDA_HOME", "CUDA_PATH"))
NO_CUDA_BUILD = os.environ.get("XAISDK_NO_CUDA") == "1"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def ext_cuda():
    """The built CUDA extension; where nvcc exists a missing build fails (setup.py must have built it)."""
    if not HAVE_NVCC or NO_CUDA_BUILD:
        pytest.skip("nvcc is not installed (or XAISDK_NO_CUDA=1), so setup.py builds no xaisdk._ext_cuda")
    try:
        from xaisdk import _ext_cuda
    except ImportError as err:
        pytest.fail(f"nvcc is installed but xaisdk._ext_cuda is not built ({err}); run `python setup.py build_ext --inplace`")
    return _ext_cuda


@pytest.fixture(scope="module")
def ext():
    try:
        from xaisdk import _ext
    except ImportError as err:
        pytest.fail(f"xaisdk._ext is not built ({err}); run `python setup.py build_ext --inplace`")
    return _ext


@pytest.fixture(scope="module")
def gpu(ext_cuda):
    """A GPU the extension's own CUDA runtime can use (its driver must support the runtime nvcc linked)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if ext_cuda.device_count() == 0:
        pytest.fail(f"torch sees a GPU but xaisdk._ext_cuda does not (driver older than its CUDA runtime?): "
                    f"{ext_cuda.build_info()}")
    return torch.device("cuda", torch.cuda.current_device())


# --- build and import (run everywhere) ----------------------------------------------------------


def test_module_imports_and_reports_its_build(ext_cuda):
    assert cuda_kernels.available()
    info = ext_cuda.build_info()
    assert info.startswith("xaisdk._ext_cuda: nvcc ")
    for arch in ("sm_80", "sm_90", "compute_90"):
        assert arch in info
    assert "CUDA runtime" in info and "linked statically" in info
    assert cuda_kernels.build_info() == info


def test_device_count_never_raises(ext_cuda):
    count = ext_cuda.device_count()
    assert isinstance(count, int) and count >= 0
    assert cuda_kernels.device_count() == count
    if not torch.cuda.is_available() and not os.path.exists("/proc/driver/nvidia/version"):
        assert count == 0


def test_module_is_self_contained(ext_cuda):
    """The CUDA runtime is linked in statically: the module needs no libcudart at run time."""
    if not sys.platform.startswith("linux") or shutil.which("ldd") is None:
        pytest.skip("ldd (Linux) is needed to list the module's shared-library dependencies")
    deps = subprocess.run(["ldd", ext_cuda.__file__], capture_output=True, text=True, check=True).stdout
    assert "libcudart" not in deps, deps


SETUP_PROBE = textwrap.dedent("""
    import setuptools
    setuptools.setup = lambda **kw: print(sorted(e.name for e in kw["ext_modules"]))
    exec(compile(open("setup.py").read(), "setup.py", "exec"))
""")


def _extensions_planned(env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", SETUP_PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not (REPO_ROOT / "setup.py").exists(), reason="runs from a source checkout (needs setup.py)")
def test_setup_plans_the_cuda_extension_only_where_nvcc_is_found(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "XAISDK_NO_CUDA")}
    # nvcc hidden: a PATH that holds only the Python interpreter's folder.
    bare = tmp_path / "bin"
    bare.mkdir()
    hidden = {**base, "PATH": str(bare)}
    assert _extensions_planned(hidden) == "['xaisdk._ext']"
    # A fake toolkit found through CUDA_HOME, with PATH still bare.
    fake = tmp_path / "cuda"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "nvcc").write_text("#!/bin/sh\nexit 1\n")
    assert _extensions_planned({**hidden, "CUDA_HOME": str(fake)}) == "['xaisdk._ext', 'xaisdk._ext_cuda']"
    assert _extensions_planned({**hidden, "CUDA_HOME": str(fake), "XAISDK_NO_CUDA": "1"}) == "['xaisdk._ext']"
    if HAVE_NVCC:
        assert _extensions_planned(base) == "['xaisdk._ext', 'xaisdk._ext_cuda']"


# --- host-side argument checks of the raw module (run everywhere) ---------------------------------


def test_raw_module_refuses_bad_sizes_and_pointers(ext_cuda):
    m = ext_cuda
    # (call, words the ValueError must contain)
    cases = [
        (lambda: m.ig_fill_chunk(256, 512, 768, -1, 4, 3, 0, 1, 1024, 0), "N must be >= 0"),
        (lambda: m.ig_fill_chunk(256, 512, 768, 2, 4, 0, 0, 1, 1024, 0), "S (path points) must be >= 1"),
        (lambda: m.ig_fill_chunk(256, 512, 768, 2, 4, 3, 5, 2, 1024, 0), "run past the N * S = 2 * 3 = 6"),
        (lambda: m.ig_fill_chunk(256, 512, 768, 2, 4, 3, -1, 2, 1024, 0), "start must be >= 0"),
        (lambda: m.ig_fill_chunk(0, 512, 768, 2, 4, 3, 0, 2, 1024, 0), "x is a null pointer"),
        (lambda: m.ig_fill_chunk(256, 512, 770, 2, 4, 3, 0, 2, 1024, 0), "alphas = 0x302 is not aligned"),
        (lambda: m.ig_fill_chunk(256.0, 512, 768, 2, 4, 3, 0, 2, 1024, 0), "x must be a device address as an int"),
        (lambda: m.ig_fill_chunk(-256, 512, 768, 2, 4, 3, 0, 2, 1024, 0), "must be a non-negative address"),
        (lambda: m.ig_fill_chunk(256, 512, 768, 2, 4, 3, 0, 2, 260, 0), "out is written in place and must not share memory"),
        (lambda: m.ig_fill_chunk(256, 512, 768, 2**40, 2**40, 3, 0, 2, 1024, 0), "overflows a 64-bit index"),
        (lambda: m.ig_accumulate_chunk(256, 512, 2, 4, 3, 4, 3, 1024, 0), "rows 4..6 run past"),
        (lambda: m.ig_accumulate_chunk(256, 0, 2, 4, 3, 0, 3, 1024, 0), "weights is a null pointer"),
        (lambda: m.ig_accumulate_chunk(256, 512, 2, 4, 3, 0, 3, 300, 0), "acc is written in place"),
        (lambda: m.ig_finalize(256, 512, 768, 2, -4, 0), "D must be >= 0"),
        (lambda: m.ig_finalize(256, 512, 0, 2, 4, 0), "baseline is a null pointer"),
        (lambda: m.perturb_fill_chunk(256, 512, 1024, 2048, 4096, 2, 3, 5, 0, 0, 1, 8192, 0), "J (steps per sample) must be"),
        (lambda: m.perturb_fill_chunk(256, 512, 1024, 2048, 4096, 2, 3, 5, 4, 6, 3, 8192, 0), "rows 6..8 run past the N * J"),
        (lambda: m.perturb_fill_chunk(256, 512, 1028, 2048, 4096, 2, 3, 5, 4, 0, 3, 8192, 0), "order = 0x404 is not aligned"),
        (lambda: m.perturb_fill_chunk(256, 512, 1024, 0, 4096, 2, 3, 5, 4, 0, 3, 8192, 0), "lo is a null pointer"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert words in str(info.value), (words, str(info.value))


def test_raw_module_does_nothing_for_empty_work(ext_cuda):
    """No rows and no values: nothing to check on the device and nothing to launch, even without a GPU."""
    ext_cuda.ig_fill_chunk(0, 0, 256, 0, 4, 3, 0, 0, 0, 0)
    ext_cuda.ig_accumulate_chunk(0, 256, 3, 0, 2, 0, 6, 0, 0)
    ext_cuda.ig_finalize(0, 0, 0, 0, 7, 0)
    ext_cuda.perturb_fill_chunk(0, 0, 0, 0, 0, 0, 3, 5, 2, 0, 0, 0, 0)


def test_raw_module_refuses_host_memory(ext_cuda):
    """A host address is refused before any launch: ValueError on a GPU machine, RuntimeError (naming the
    CUDA error) where the runtime cannot even inspect pointers because there is no driver or GPU."""
    host = np.zeros(64, np.float32)
    p = host.ctypes.data
    call = lambda: ext_cuda.ig_finalize(p, p + 64, p + 128, 4, 4, 0)  # noqa: E731
    if ext_cuda.device_count() > 0:
        with pytest.raises(ValueError, match="is host memory"):
            call()
    else:
        with pytest.raises(RuntimeError, match=r"ig_finalize: cannot inspect acc .*cudaError"):
            call()


# --- the torch wrapper's checks (run everywhere) ------------------------------------------------


def test_wrapper_refuses_cpu_tensors_and_other_arrays(ext_cuda):
    x = torch.zeros(2, 3)
    with pytest.raises(InputError, match=r"ig_fill_chunk: x is on cpu; the CUDA kernels need CUDA tensors"):
        cuda_kernels.ig_fill_chunk(x, x, torch.zeros(4), 0, torch.zeros(4, 3))
    with pytest.raises(InputError, match=r"ig_finalize: acc must be a torch CUDA tensor, got ndarray"):
        cuda_kernels.ig_finalize(np.zeros((2, 3), np.float32), x, x)
    with pytest.raises(InputError, match="perturb_fill_chunk: base is on cpu"):
        cuda_kernels.perturb_fill_chunk(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), torch.zeros(1, 4, dtype=torch.int64),
                                        torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, 2, dtype=torch.int64), 0,
                                        torch.zeros(2, 1, 4))


def test_require_device_without_a_gpu(ext_cuda):
    if ext_cuda.device_count() > 0:
        cuda_kernels.require_device()  # a GPU is there: no error
        return
    with pytest.raises(InputError, match="xaisdk._ext_cuda sees no CUDA device"):
        cuda_kernels.require_device()


def test_wrapper_without_the_extension(monkeypatch):
    monkeypatch.setattr(cuda_kernels, "_ext_cuda", None)
    assert not cuda_kernels.available()
    assert cuda_kernels.device_count() == 0
    assert "was not built" in cuda_kernels.build_info()
    for call in (cuda_kernels.require_device, lambda: cuda_kernels.ig_finalize(None, None, None)):
        with pytest.raises(InputError, match="the CUDA extension xaisdk._ext_cuda was not built"):
            call()


def test_wrapper_imports_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now fails
        from xaisdk.torch_runtime import cuda_kernels
        print(cuda_kernels.available(), cuda_kernels.device_count())
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    available, count = result.stdout.split()
    assert available == str(cuda_kernels.available()) and int(count) == cuda_kernels.device_count()


# --- the kernels on a GPU ---------------------------------------------------------------------------


def ig_reference(x, b, alphas, weights):
    """Plain numpy loops: fill rows, gradient = the row itself (f = 0.5 |z|^2), weighted sum, finalize."""
    n, d = x.shape
    acc = np.zeros((n, d), np.float32)
    for i in range(n):
        for s in range(len(alphas)):
            row = b[i] + alphas[s] * (x[i] - b[i])
            acc[i] += weights[s] * row
    return acc * (x - b)


def ig_problem(rng, n, d, s):
    x = rng.standard_normal((n, d)).astype(np.float32)
    b = rng.standard_normal((n, d)).astype(np.float32)
    alphas = np.sort(rng.random(s)).astype(np.float32)
    weights = rng.random(s).astype(np.float32)
    return x, b, alphas, weights


@needs_gpu
@pytest.mark.parametrize("n, d, s", [(3, 37, 7), (1, 1, 1), (5, 1031, 13), (2, 3 * 17 * 19, 4)])
@pytest.mark.parametrize("chunk", [1, 5, 8, 1000])
def test_ig_kernels_equal_cpu_kernels_and_numpy(gpu, ext, rng, n, d, s, chunk):
    x, b, alphas, weights = ig_problem(rng, n, d, s)
    xd, bd, ad, wd = (torch.from_numpy(a).to(gpu) for a in (x, b, alphas, weights))
    total = n * s
    acc_gpu = torch.zeros(n, d, device=gpu)
    acc_cpu = np.zeros((n, d), np.float32)
    for start in range(0, total, chunk):
        k = min(chunk, total - start)
        out = torch.full((k, d), float("nan"), device=gpu)
        cuda_kernels.ig_fill_chunk(xd, bd, ad, start, out)
        rows = np.empty((k, d), np.float32)
        ext.ig_fill_chunk(x, b, alphas, start, rows)
        np.testing.assert_array_equal(out.cpu().numpy(), rows)  # same operations, same rounding
        cuda_kernels.ig_accumulate_chunk(out, wd, start, acc_gpu)  # gradient of 0.5 |z|^2 is the row itself
        ext.ig_accumulate_chunk(rows, weights, start, acc_cpu)
    np.testing.assert_allclose(acc_gpu.cpu().numpy(), acc_cpu, rtol=1e-6, atol=1e-6)
    cuda_kernels.ig_finalize(acc_gpu, xd, bd)
    ext.ig_finalize(acc_cpu, x, b)
    result = acc_gpu.cpu().numpy()
    np.testing.assert_allclose(result, acc_cpu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result, ig_reference(x, b, alphas, weights), rtol=1e-5, atol=1e-5)


@needs_gpu
def test_ig_accumulation_is_the_same_for_every_chunking(gpu, rng):
    """Each element adds its sample's rows in increasing k: bitwise the same for any chunk size."""
    n, d, s = 4, 301, 9
    x, b, alphas, weights = ig_problem(rng, n, d, s)
    grads = torch.from_numpy(rng.standard_normal((n * s, d)).astype(np.float32)).to(gpu)
    wd = torch.from_numpy(weights).to(gpu)
    results = []
    for chunk in (1, 2, 7, 9, 36):
        acc = torch.zeros(n, d, device=gpu)
        for start in range(0, n * s, chunk):
            cuda_kernels.ig_accumulate_chunk(grads[start:start + chunk].contiguous(), wd, start, acc)
        results.append(acc.cpu().numpy())
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@needs_gpu
def test_ig_kernels_run_on_the_current_stream(gpu, ext, rng):
    x, b, alphas, _ = ig_problem(rng, 6, 4099, 11)
    xd, bd, ad = (torch.from_numpy(a).to(gpu) for a in (x, b, alphas))
    stream = torch.cuda.Stream(gpu)
    stream.wait_stream(torch.cuda.current_stream(gpu))
    with torch.cuda.stream(stream):
        out = torch.empty(66, 4099, device=gpu)
        cuda_kernels.ig_fill_chunk(xd, bd, ad, 0, out)
        copy = out.clone()
    stream.synchronize()
    expected = np.empty((66, 4099), np.float32)
    ext.ig_fill_chunk(x, b, alphas, 0, expected)
    np.testing.assert_array_equal(copy.cpu().numpy(), expected)


@needs_gpu
def test_ig_wrapper_refuses_bad_tensors(gpu):
    x = torch.zeros(3, 8, device=gpu)
    a = torch.zeros(4, device=gpu)
    out = torch.zeros(5, 8, device=gpu)
    with pytest.raises(InputError, match="x must be contiguous"):
        cuda_kernels.ig_fill_chunk(torch.zeros(8, 3, device=gpu).t(), x, a, 0, out)
    with pytest.raises(InputError, match="out must be contiguous"):
        cuda_kernels.ig_fill_chunk(x, x, a, 0, torch.zeros(5, 16, device=gpu)[:, ::2])
    with pytest.raises(InputError, match="alphas must be float32"):
        cuda_kernels.ig_fill_chunk(x, x, a.double(), 0, out)
    with pytest.raises(InputError, match="baseline has shape"):
        cuda_kernels.ig_fill_chunk(x, torch.zeros(3, 7, device=gpu), a, 0, out)
    with pytest.raises(InputError, match="run past the N \\* S = 3 \\* 4 = 12"):
        cuda_kernels.ig_fill_chunk(x, x, a, 8, out)
    with pytest.raises(InputError, match="out is written in place and must not share memory with x"):
        cuda_kernels.ig_fill_chunk(x, x.clone(), a, 0, x)
    with pytest.raises(InputError, match="grads has shape"):
        cuda_kernels.ig_accumulate_chunk(torch.zeros(2, 9, device=gpu), a, 0, x)
    with pytest.raises(InputError, match="x is on cpu"):
        cuda_kernels.ig_finalize(x, x.cpu(), x)


@needs_gpu
def test_raw_module_on_device_memory_and_host_memory(gpu, ext_cuda, ext, rng):
    x, b, alphas, _ = ig_problem(rng, 2, 33, 3)
    xd, bd, ad = (torch.from_numpy(a).to(gpu) for a in (x, b, alphas))
    out = torch.empty(6, 33, device=gpu)
    ext_cuda.ig_fill_chunk(xd.data_ptr(), bd.data_ptr(), ad.data_ptr(), 2, 33, 3, 0, 6, out.data_ptr(),
                           torch.cuda.current_stream(gpu).cuda_stream)
    expected = np.empty((6, 33), np.float32)
    ext.ig_fill_chunk(x, b, alphas, 0, expected)
    np.testing.assert_array_equal(out.cpu().numpy(), expected)
    with pytest.raises(ValueError, match="out = 0x[0-9a-f]+ is host memory"):
        ext_cuda.ig_fill_chunk(xd.data_ptr(), bd.data_ptr(), ad.data_ptr(), 2, 33, 3, 0, 6, expected.ctypes.data, 0)


def perturb_problem(rng, n, c, h, w, j):
    p = h * w
    base = rng.standard_normal((n, c, h, w)).astype(np.float32)
    substrate = rng.standard_normal((n, c, h, w)).astype(np.float32)
    order = np.stack([rng.permutation(p) for _ in range(n)]).astype(np.int64)
    lo = rng.integers(0, p + 1, size=(n, j))
    hi = np.minimum(lo + rng.integers(0, p + 1, size=(n, j)), p)
    lo[:, 0], hi[:, 0] = 0, p  # one row replaces every pixel
    lo[:, -1] = hi[:, -1]  # and one replaces none
    return base, substrate, order, lo.astype(np.int64), hi.astype(np.int64)


def perturb_reference(base, substrate, order, lo, hi, rows):
    n, c, h, w = base.shape
    j = lo.shape[1]
    out = np.empty((len(rows), c, h * w), np.float32)
    for k, flat in enumerate(rows):
        i, step = divmod(flat, j)
        out[k] = base[i].reshape(c, -1)
        for t in range(lo[i, step], hi[i, step]):
            out[k][:, order[i, t]] = substrate[i].reshape(c, -1)[:, order[i, t]]
    return out.reshape(len(rows), c, h, w)


@needs_gpu
@pytest.mark.parametrize("n, c, h, w, j", [(3, 2, 5, 7, 6), (1, 1, 1, 1, 1), (2, 3, 13, 11, 9)])
@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
def test_perturb_kernel_equals_cpu_kernel_and_numpy(gpu, ext, rng, n, c, h, w, j, chunk):
    base, substrate, order, lo, hi = perturb_problem(rng, n, c, h, w, j)
    tensors = [torch.from_numpy(a).to(gpu) for a in (base, substrate, order, lo, hi)]
    p = h * w
    for start in range(0, n * j, chunk):
        k = min(chunk, n * j - start)
        out = torch.full((k, c, h, w), float("nan"), device=gpu)
        cuda_kernels.perturb_fill_chunk(*tensors, start, out)
        expected = np.empty((k, c, p), np.float32)
        ext.perturb_fill_chunk(base.reshape(n, c, p), substrate.reshape(n, c, p), order, lo, hi, start, expected)
        np.testing.assert_array_equal(out.cpu().numpy().reshape(k, c, p), expected)
        reference = perturb_reference(base, substrate, order, lo, hi, range(start, start + k))
        np.testing.assert_array_equal(out.cpu().numpy(), reference)


@needs_gpu
def test_perturb_wrapper_checks_indices_and_layout(gpu, rng):
    base, substrate, order, lo, hi = perturb_problem(rng, 2, 1, 4, 4, 3)
    b, s, o, lo_d, hi_d = (torch.from_numpy(a).to(gpu) for a in (base, substrate, order, lo, hi))
    out = torch.empty(6, 1, 4, 4, device=gpu)
    bad_hi = hi_d.clone()
    bad_hi[1, 2] = 17
    with pytest.raises(InputError, match="break 0 <= lo <= hi <= P = 16"):
        cuda_kernels.perturb_fill_chunk(b, s, o, lo_d, bad_hi, 0, out)
    bad_order = o.clone()
    bad_order[0, 3] = -1
    with pytest.raises(InputError, match="order holds entries outside"):
        cuda_kernels.perturb_fill_chunk(b, s, bad_order, lo_d, hi_d, 0, out)
    with pytest.raises(InputError, match="base must be contiguous"):
        cuda_kernels.perturb_fill_chunk(b.transpose(2, 3), s, o, lo_d, hi_d, 0, out)
    with pytest.raises(InputError, match="order must be int64"):
        cuda_kernels.perturb_fill_chunk(b, s, o.int(), lo_d, hi_d, 0, out)


@needs_gpu
def test_perturb_kernel_never_writes_out_of_bounds_for_bad_indices(gpu, rng):
    """Unchecked bad indices: bounds are clamped into [0, P] and order entries outside [0, P) are
    skipped, so the row stays inside its buffer (the guard bytes after it are untouched)."""
    base, substrate, order, lo, hi = perturb_problem(rng, 1, 2, 3, 3, 2)
    order[0, :3] = [-5, 9, 1000]  # three invalid pixel indices
    lo[0] = [-3, 4]
    hi[0] = [50, 2]  # clamped to [0, 9] and to an empty range
    b, s, o, lo_d, hi_d = (torch.from_numpy(a).to(gpu) for a in (base, substrate, order, lo, hi))
    buffer = torch.full((3, 2, 3, 3), 123.0, device=gpu)
    cuda_kernels.perturb_fill_chunk(b, s, o, lo_d, hi_d, 0, buffer[:2], check_indices=False)
    result = buffer.cpu().numpy()
    assert (result[2] == 123.0).all()
    valid = [int(p) for p in order[0, 3:]]
    expected = base[0].reshape(2, 9).copy()
    expected[:, valid] = substrate[0].reshape(2, 9)[:, valid]
    np.testing.assert_array_equal(result[0].reshape(2, 9), expected)
    np.testing.assert_array_equal(result[1], base[0])
