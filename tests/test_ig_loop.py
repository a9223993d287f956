"""Chunked Integrated Gradients: the C++ kernels of xaisdk._ext, the driver and the numpy reference."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import xaisdk
from xaisdk.errors import InputError
from xaisdk.runtime import ig_loop, integrated_gradients_loop, integrated_gradients_reference

REPO_ROOT = Path(xaisdk.__file__).resolve().parent.parent
IG_FUNCTIONS = [integrated_gradients_loop, integrated_gradients_reference]



def midpoint_rule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    return ((np.arange(steps) + 0.5) / steps).astype(np.float32), np.full(steps, 1.0 / steps, dtype=np.float32)


def smooth_grad_fn(feature_shape: tuple[int, ...], seed: int = 0):
    """grad_fn of f(z) = sum(W * log(cosh(z))) + 0.25 * sum(z**2), i.e. W * tanh(z) + 0.5 * z; records batch shapes."""
    w = np.random.default_rng(seed).standard_normal(feature_shape).astype(np.float32)
    calls: list[tuple[int, ...]] = []

    def grad_fn(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32
        calls.append(batch.shape)
        return np.tanh(batch) * w + np.float32(0.5) * batch

    grad_fn.calls = calls  # type: ignore[attr-defined]
    return grad_fn


def random_problem(n: int, feature_shape: tuple[int, ...], steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *feature_shape)).astype(np.float32)
    b = rng.standard_normal((n, *feature_shape)).astype(np.float32)
    alphas = np.sort(rng.random(steps)).astype(np.float32)
    weights = rng.random(steps).astype(np.float32)
    return x, b, alphas, weights


def test_backend_is_cpp(ext):
    assert ig_loop.BACKEND == "cpp"
    assert ig_loop._ext is ext
    assert ext.openmp_threads() >= 1
    assert "xaisdk._ext" in ext.build_info()


# (N, feature shape, S, chunk_size)
COMBOS = [
    (3, (5,), 7, 4),  # 21 rows, chunk does not divide them
    (2, (10,), 3, 1),  # one row per chunk
    (4, (6,), 5, 1000),  # one chunk, larger than N * S
    (5, (8,), 4, 20),  # chunk == N * S
    (6, (3,), 8, 8),  # chunk == S: chunks align with samples
    (2, (3, 8, 8), 16, 37),  # multichannel (N, C, H, W)
    (3, (2, 5, 7), 11, 5),  # multichannel, chunks smaller than S
    (2, (4000,), 64, 100),  # large enough for the OpenMP loops to run in parallel
    (1, (1,), 1, 1),  # smallest
]


@pytest.mark.parametrize("n,feature_shape,steps,chunk_size", COMBOS)
def test_extension_matches_reference(ext, n, feature_shape, steps, chunk_size):
    x, b, alphas, weights = random_problem(n, feature_shape, steps, seed=n * 100 + steps)
    grad_cpp = smooth_grad_fn(feature_shape)
    grad_ref = smooth_grad_fn(feature_shape)
    got = integrated_gradients_loop(grad_cpp, x, b, alphas, weights, chunk_size=chunk_size)
    want = integrated_gradients_reference(grad_ref, x, b, alphas, weights, chunk_size=chunk_size)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))

    total = n * steps
    expected_rows = [chunk_size] * (total // chunk_size) + ([total % chunk_size] if total % chunk_size else [])
    assert [shape[0] for shape in grad_cpp.calls] == expected_rows
    assert all(shape[1:] == feature_shape for shape in grad_cpp.calls)
    assert grad_cpp.calls == grad_ref.calls


def test_result_does_not_depend_on_chunk_size(ext):
    x, b, alphas, weights = random_problem(4, (3, 6, 6), 25, seed=7)
    grad_fn = smooth_grad_fn((3, 6, 6))
    results = [
        integrated_gradients_loop(grad_fn, x, b, alphas, weights, chunk_size=c) for c in (1, 7, 25, 64, 10_000)
    ]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("ig", IG_FUNCTIONS)
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 100])
def test_pass_sample_index(ext, ig, chunk_size):
    # Sample n's score is scale[n] * f, so its gradient is scale[n] * grad f: the same as running
    # each sample alone with its own scale, for chunks that cut across samples.
    n, steps, feature_shape = 5, 6, (2, 3)
    x, b, alphas, weights = random_problem(n, feature_shape, steps, seed=21)
    scale = np.linspace(-2.0, 3.0, n).astype(np.float32)
    plain = smooth_grad_fn(feature_shape)
    seen: list[np.ndarray] = []

    def grad_fn(batch: np.ndarray, sample: np.ndarray) -> np.ndarray:
        assert sample.dtype == np.int64 and sample.shape == (len(batch),)
        seen.append(sample.copy())
        return scale[sample].reshape(-1, 1, 1) * plain(batch)

    got = ig(grad_fn, x, b, alphas, weights, chunk_size=chunk_size, pass_sample_index=True)
    want = np.stack([scale[i] * ig(plain, x[i : i + 1], b[i : i + 1], alphas, weights)[0] for i in range(n)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate(seen), np.repeat(np.arange(n), steps))
    assert max(len(s) for s in seen) == min(chunk_size, n * steps)


def test_fill_chunk_matches_numpy(ext):
    n, d, steps = 4, 37, 6
    x, b, alphas, _ = random_problem(n, (d,), steps, seed=1)
    x, b = x.reshape(n, d), b.reshape(n, d)
    for start, rows in [(0, n * steps), (5, 9), (23, 1), (11, 0), (0, 1)]:
        out = np.full((rows, d), np.nan, dtype=np.float32)
        assert ext.ig_fill_chunk(x, b, alphas, start, out) is None
        want = np.empty_like(out)
        for k in range(rows):
            i, s = divmod(start + k, steps)
            want[k] = b[i] + alphas[s] * (x[i] - b[i])
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_accumulate_chunk_matches_numpy(ext):
    n, d, steps = 3, 50, 5
    rng = np.random.default_rng(2)
    weights = rng.random(steps).astype(np.float32)
    acc0 = rng.standard_normal((n, d)).astype(np.float32)
    for start, rows in [(0, n * steps), (3, 8), (14, 1), (4, 0)]:
        grads = rng.standard_normal((rows, d)).astype(np.float32)
        acc = acc0.copy()
        assert ext.ig_accumulate_chunk(grads, weights, start, acc) is None
        want = acc0.astype(np.float64)
        for k in range(rows):
            i, s = divmod(start + k, steps)
            want[i] += np.float64(weights[s]) * grads[k]
        np.testing.assert_allclose(acc, want, rtol=1e-5, atol=1e-5)
        untouched = [i for i in range(n) if not any(divmod(start + k, steps)[0] == i for k in range(rows))]
        np.testing.assert_array_equal(acc[untouched], acc0[untouched])


def test_finalize_matches_numpy(ext):
    rng = np.random.default_rng(3)
    acc, x, b = (rng.standard_normal((7, 129)).astype(np.float32) for _ in range(3))
    want = acc * (x - b)
    assert ext.ig_finalize(acc, x, b) is None
    np.testing.assert_allclose(acc, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ig", IG_FUNCTIONS)
def test_quadratic_is_exact_and_complete(ext, ig):
    # f(x) = 0.5 * sum(x**2): grad is x, and with midpoint alphas the rule integrates the linear
    # path gradient exactly, so attr = (x**2 - b**2) / 2 and sum(attr) = f(x) - f(b).
    x, b, _, _ = random_problem(6, (2, 5, 5), 1, seed=4)
    alphas, weights = midpoint_rule(40)
    attr = ig(lambda z: z, x, b, alphas, weights, chunk_size=33)
    np.testing.assert_allclose(attr, (x.astype(np.float64) ** 2 - b.astype(np.float64) ** 2) / 2, rtol=1e-4, atol=1e-5)
    f = lambda z: 0.5 * (z.astype(np.float64) ** 2).reshape(len(z), -1).sum(axis=1)  # noqa: E731
    np.testing.assert_allclose(attr.reshape(len(x), -1).sum(axis=1), f(x) - f(b), rtol=1e-5, atol=1e-4)


def test_torch_mlp_matches_direct_torch_ig(ext):
    import torch

    torch.manual_seed(0)
    feature_shape = (3, 2, 2)
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(12, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 4),
    ).eval()
    target = 2
    n, steps = 5, 48
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, *feature_shape)).astype(np.float32)
    b = (0.1 * rng.standard_normal((n, *feature_shape))).astype(np.float32)
    alphas, weights = midpoint_rule(steps)

    def grad_fn(batch: np.ndarray) -> np.ndarray:
        inp = torch.tensor(batch, requires_grad=True)
        (grad,) = torch.autograd.grad(model(inp)[:, target].sum(), inp)
        return grad.numpy()

    attr = integrated_gradients_loop(grad_fn, x, b, alphas, weights, chunk_size=37)

    xt, bt = torch.from_numpy(x), torch.from_numpy(b)
    at, wt = torch.from_numpy(alphas), torch.from_numpy(weights)
    expand = (1, steps) + (1,) * len(feature_shape)
    scaled = (bt[:, None] + at.view(expand) * (xt - bt)[:, None]).reshape(n * steps, *feature_shape)
    scaled.requires_grad_(True)
    (grads,) = torch.autograd.grad(model(scaled)[:, target].sum(), scaled)
    want = ((xt - bt) * (wt.view(expand) * grads.reshape(n, steps, *feature_shape)).sum(dim=1)).numpy()

    np.testing.assert_allclose(attr, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    # Sanity: completeness up to quadrature error.
    with torch.no_grad():
        gap = (model(xt)[:, target] - model(bt)[:, target]).numpy()
    np.testing.assert_allclose(attr.reshape(n, -1).sum(axis=1), gap, rtol=1e-3, atol=1e-3)


def test_deterministic_in_process(ext):
    x, b, alphas, weights = random_problem(5, (3, 16, 16), 20, seed=6)
    runs = [integrated_gradients_loop(smooth_grad_fn((3, 16, 16)), x, b, alphas, weights, chunk_size=48) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


_THREADS_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from xaisdk import _ext
    from xaisdk.runtime import integrated_gradients_loop

    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 4000)).astype(np.float32)
    b = rng.standard_normal((6, 4000)).astype(np.float32)
    w = rng.standard_normal(4000).astype(np.float32)
    alphas = np.sort(rng.random(24)).astype(np.float32)
    weights = rng.random(24).astype(np.float32)
    attr = integrated_gradients_loop(lambda z: np.tanh(z) * w, x, b, alphas, weights, chunk_size=50)
    np.save(sys.argv[1], attr)
    print(_ext.openmp_threads(), int(_ext.HAVE_OPENMP))
    """
)


def test_deterministic_across_omp_thread_counts(ext, tmp_path):
    results = {}
    for threads in (1, 2, 3, 8):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        out = tmp_path / f"attr_{threads}.npy"
        proc = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT, str(out)], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        reported, have_openmp = map(int, proc.stdout.split())
        assert reported == (threads if have_openmp else 1)
        results[threads] = np.load(out)
    for threads, attr in results.items():
        np.testing.assert_array_equal(attr, results[1], err_msg=f"OMP_NUM_THREADS={threads} differs from 1")


@pytest.mark.parametrize("ig", IG_FUNCTIONS)
@pytest.mark.parametrize(
    "make_baseline",
    [
        lambda full: full[0],  # (...)
        lambda full: full[:1],  # (1, ...)
        lambda full: full[0, :, :1, :1],  # per channel (C, 1, 1)
        lambda full: np.float32(full[0, 0, 0, 0]),  # scalar
    ],
    ids=["features", "leading-1", "per-channel", "scalar"],
)
def test_broadcast_baseline(ext, ig, make_baseline):
    x, b, alphas, weights = random_problem(3, (2, 4, 4), 9, seed=8)
    b_small = make_baseline(b)
    b_full = np.ascontiguousarray(np.broadcast_to(b_small, x.shape))
    got = ig(smooth_grad_fn((2, 4, 4)), x, b_small, alphas, weights, chunk_size=10)
    want = ig(smooth_grad_fn((2, 4, 4)), x, b_full, alphas, weights, chunk_size=10)
    np.testing.assert_array_equal(got, want)


def test_accepts_float64_and_lists(ext):
    x, b, alphas, weights = random_problem(2, (3,), 4, seed=9)
    got = integrated_gradients_loop(
        lambda z: z.astype(np.float64) * 2.0, x.astype(np.float64), b.tolist(), alphas.tolist(), weights.astype(np.float64)
    )
    want = integrated_gradients_reference(lambda z: z * 2, x, b, alphas, weights)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ig", IG_FUNCTIONS)
def test_empty_batch(ext, ig):
    calls = []
    attr = ig(lambda z: calls.append(z) or z, np.zeros((0, 3, 2), np.float32), 0.0, [0.5], [1.0])
    assert attr.shape == (0, 3, 2) and attr.dtype == np.float32
    assert calls == []


def test_progress_bar(ext, capsys):
    x, b, alphas, weights = random_problem(2, (4,), 5, seed=10)
    integrated_gradients_loop(lambda z: z, x, b, alphas, weights, chunk_size=3, progress=True)
    err = capsys.readouterr().err
    assert "4/4" in err and "chunk" in err


def _nan_at(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float32)
    a.flat[0] = np.nan
    return a


_X, _B, _A, _W = random_problem(2, (3, 4), 5, seed=12)
_ID = lambda z: z  # noqa: E731
# (kwargs overriding the valid call, message regex)
BAD_INPUTS = [
    (dict(baseline=np.zeros((5,), np.float32)), r"baseline: shape \(5,\) cannot be broadcast"),
    (dict(baseline=np.zeros((3, 3, 4), np.float32)), r"baseline: shape \(3, 3, 4\) cannot be broadcast"),
    (dict(weights=_W[:4]), r"alphas and weights must have the same length, got 5 alphas and 4 weights"),
    (dict(alphas=np.array([], np.float32), weights=np.array([], np.float32)), r"alphas: is empty"),
    (dict(alphas=_A.reshape(1, 5)), r"alphas: expected a 1-D array"),
    (dict(chunk_size=0), r"chunk_size: expected a positive integer, got 0"),
    (dict(chunk_size=-3), r"chunk_size: expected a positive integer"),
    (dict(chunk_size=2.5), r"chunk_size: expected a positive integer"),
    (dict(chunk_size=True), r"chunk_size: expected a positive integer"),
    (dict(x=_nan_at(_X)), r"x: contains 1 NaN or infinite"),
    (dict(x=np.float32(1.0)), r"x: expected an array of shape \(N, \.\.\.\)"),
    (dict(x=_X.astype(np.complex64)), r"x: expected a real-valued"),
    (dict(baseline=_nan_at(_B)), r"baseline: contains 1 NaN"),
    (dict(alphas=_nan_at(_A)), r"alphas: contains 1 NaN"),
    (dict(weights=np.full(5, np.inf)), r"weights: contains 5 NaN or infinite"),
    (dict(grad_fn=None), r"grad_fn: expected a callable"),
    (dict(grad_fn=lambda z: z[:, :, :2]), r"grad_fn: returned shape \(4, 3, 2\), expected \(4, 3, 4\)"),
    (dict(grad_fn=lambda z: z.reshape(len(z), -1)), r"grad_fn: returned shape \(4, 12\), expected \(4, 3, 4\)"),
    (dict(grad_fn=lambda z: z * np.nan), r"grad_fn: returned NaN or infinite gradients for the chunk of samples 0\.\.0"),
    (dict(grad_fn=lambda z: np.full(z.shape, "a")), r"grad_fn: returned dtype <U1"),
]


@pytest.mark.parametrize("ig", IG_FUNCTIONS)
@pytest.mark.parametrize("override,message", BAD_INPUTS)
def test_bad_input_raises_input_error(ext, ig, override, message):
    kwargs = dict(grad_fn=_ID, x=_X, baseline=_B, alphas=_A, weights=_W, chunk_size=4) | override
    with pytest.raises(InputError, match=message):
        ig(kwargs.pop("grad_fn"), kwargs.pop("x"), kwargs.pop("baseline"), kwargs.pop("alphas"), kwargs.pop("weights"), **kwargs)


def test_grad_fn_error_names_later_chunk(ext):
    calls = []

    def grad_fn(z):
        calls.append(len(z))
        return z * np.nan if len(calls) == 3 else z

    with pytest.raises(InputError, match=r"grad_fn: returned NaN .* samples 1\.\.1"):
        integrated_gradients_loop(grad_fn, _X, _B, _A, _W, chunk_size=3)  # chunk 3 = flat rows 6..8 = sample 1


def _f32(*shape: int) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# Valid arguments of each extension function: a shape tuple stands for np.ones(shape, float32).
_EXT_VALID_ARGS = {
    "ig_fill_chunk": dict(x=(2, 3), baseline=(2, 3), alphas=(4,), start=0, out=(4, 3)),
    "ig_accumulate_chunk": dict(grads=(4, 3), weights=(4,), start=0, acc=(2, 3)),
    "ig_finalize": dict(acc=(2, 3), x=(2, 3), baseline=(2, 3)),
}
# (function, arguments replaced, message regex)
EXT_BAD_CALLS = [
    ("ig_fill_chunk", dict(x=_f32(2, 3).astype(np.float64)), r"ig_fill_chunk: x must be a float32 array, got dtype float64"),
    ("ig_fill_chunk", dict(x=(2, 3, 1)), r"x must have 2 dimensions, got shape \(2, 3, 1\)"),
    ("ig_fill_chunk", dict(x=_f32(3, 2).T), r"x must be C-contiguous"),
    ("ig_fill_chunk", dict(baseline=(2, 4)), r"baseline has shape \(2, 4\), expected the shape of x \(2, 3\)"),
    ("ig_fill_chunk", dict(alphas=(0,), out=(0, 3)), r"alphas is empty"),
    ("ig_fill_chunk", dict(alphas=(4, 1)), r"alphas must have 1 dimension, got shape \(4, 1\)"),
    ("ig_fill_chunk", dict(alphas=_f32(8)[::2]), r"alphas must be C-contiguous"),
    ("ig_fill_chunk", dict(out=(4, 5)), r"out has shape \(4, 5\), expected \(K, 3\)"),
    ("ig_fill_chunk", dict(out=_readonly(_f32(4, 3))), r"out is written in place and must be writeable"),
    ("ig_fill_chunk", dict(start=-1), r"start must be >= 0, got -1"),
    ("ig_fill_chunk", dict(start=5), r"rows 5\.\.8 of out run past the N \* S = 2 \* 4 = 8"),
    ("ig_fill_chunk", dict(out=(9, 3)), r"rows 0\.\.8 of out run past the N \* S"),
    ("ig_accumulate_chunk", dict(acc=_f32(2, 3).astype(np.float64)), r"ig_accumulate_chunk: acc must be a float32 array"),
    ("ig_accumulate_chunk", dict(acc=(3, 2, 3)), r"acc must have 2 dimensions"),
    ("ig_accumulate_chunk", dict(acc=_readonly(_f32(2, 3))), r"acc is written in place and must be writeable"),
    ("ig_accumulate_chunk", dict(grads=(4, 2)), r"grads has shape \(4, 2\), expected \(K, 3\)"),
    ("ig_accumulate_chunk", dict(weights=(0,)), r"weights is empty"),
    ("ig_accumulate_chunk", dict(start=6), r"rows 6\.\.9 of grads run past"),
    ("ig_finalize", dict(x=(2, 4)), r"ig_finalize: x has shape \(2, 4\), expected the shape of acc \(2, 3\)"),
    ("ig_finalize", dict(baseline=(3, 3)), r"baseline has shape \(3, 3\)"),
    ("ig_finalize", dict(acc=_f32(2, 3).astype(np.float16)), r"acc must be a float32 array, got dtype float16"),
    ("ig_finalize", dict(acc=_readonly(_f32(2, 3))), r"acc is written in place and must be writeable"),
]


@pytest.mark.parametrize("name,override,message", EXT_BAD_CALLS)
def test_extension_rejects_bad_arguments_with_value_error(ext, name, override, message):
    args = {key: _f32(*value) if isinstance(value, tuple) else value for key, value in _EXT_VALID_ARGS[name].items()}
    getattr(ext, name)(**args)  # the valid call works
    args.update({key: _f32(*value) if isinstance(value, tuple) else value for key, value in override.items()})
    with pytest.raises(ValueError, match=message):
        getattr(ext, name)(**args)


def test_extension_rejects_aliased_outputs(ext):
    x = _f32(8, 3)
    with pytest.raises(ValueError, match=r"out is written in place and must not share memory with x"):
        ext.ig_fill_chunk(x, _f32(8, 3), _f32(2), 0, x[2:6])
    acc = _f32(8, 3)
    with pytest.raises(ValueError, match=r"acc .* must not share memory with grads"):
        ext.ig_accumulate_chunk(acc[:4], _f32(2), 0, acc)
    with pytest.raises(ValueError, match=r"acc .* must not share memory with baseline"):
        ext.ig_finalize(acc, _f32(8, 3), acc)


def test_extension_rejects_non_arrays_without_crashing(ext):
    with pytest.raises(TypeError):
        ext.ig_fill_chunk([[1.0]], _f32(1, 1), _f32(1), 0, _f32(1, 1))
    with pytest.raises(TypeError):
        ext.ig_accumulate_chunk(_f32(1, 1), _f32(1), 0.5, _f32(1, 1))


def test_numpy_fallback_warns_once_and_agrees(ext, monkeypatch):
    x, b, alphas, weights = random_problem(3, (2, 3, 3), 6, seed=13)
    want = integrated_gradients_loop(smooth_grad_fn((2, 3, 3)), x, b, alphas, weights, chunk_size=5)
    monkeypatch.setattr(ig_loop, "_ext", None)
    monkeypatch.setattr(ig_loop, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="xaisdk._ext .* is not built"):
        got = integrated_gradients_loop(smooth_grad_fn((2, 3, 3)), x, b, alphas, weights, chunk_size=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        integrated_gradients_loop(smooth_grad_fn((2, 3, 3)), x, b, alphas, weights, chunk_size=5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))


def test_runtime_imports_without_torch():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import xaisdk.runtime
        from xaisdk.runtime import ig_loop
        attr = xaisdk.runtime.integrated_gradients_loop(lambda z: z, np.ones((2, 3)), 0.0, [0.5], [1.0])
        assert attr.shape == (2, 3)
        print(ig_loop.BACKEND)
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in {"cpp", "numpy"}


def test_chunk_count_helper_consistency(ext):
    # grad_fn is called ceil(N * S / chunk_size) times, never with an empty batch.
    for n, steps, chunk in [(3, 7, 4), (1, 1, 5), (10, 3, 30), (2, 50, 7)]:
        calls = []
        alphas, weights = midpoint_rule(steps)
        integrated_gradients_loop(lambda z: calls.append(len(z)) or z, _f32(n, 2), 0.0, alphas, weights, chunk_size=chunk)
        assert len(calls) == math.ceil(n * steps / chunk) and min(calls) >= 1 and sum(calls) == n * steps
