"""Torch-tensor front end of the CUDA kernels in ``xaisdk._ext_cuda``.

The extension works on raw device addresses with a stream (see ``csrc/cuda/module_cuda.cpp``); the
functions here take CUDA tensors instead, check dtype, device, contiguity and shapes, and enqueue the
kernel on the tensors' current torch stream, so they order correctly with the torch work around
them. Nothing is copied to the host. The semantics are those of the CPU kernels of the same names in
``xaisdk._ext`` (``csrc/ig.h``, ``csrc/perturb.h``), with the same rounding.

This module imports neither torch nor the extension eagerly: without the extension (not built, or
built where nvcc was missing) :func:`available` is False and every kernel call raises
:class:`~xaisdk.InputError` saying so.

>>> from xaisdk.torch_runtime import cuda_kernels
>>> isinstance(cuda_kernels.available(), bool), cuda_kernels.device_count() >= 0
(True, True)
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from xaisdk.errors import InputError

if TYPE_CHECKING:
    import torch

try:
    from xaisdk import _ext_cuda
except ImportError:  # built without nvcc (or XAISDK_NO_CUDA=1), or not built at all
    _ext_cuda = None

__all__ = [
    "available",
    "build_info",
    "device_count",
    "ig_accumulate_chunk",
    "ig_fill_chunk",
    "ig_finalize",
    "perturb_fill_chunk",
    "require_device",
]

NOT_BUILT = (
    "the CUDA extension xaisdk._ext_cuda was not built (setup.py builds it only where nvcc is found, "
    "and not with XAISDK_NO_CUDA=1); rebuild with nvcc on PATH: python setup.py build_ext --inplace"
)


def available() -> bool:
    """Whether ``xaisdk._ext_cuda`` was built and imports (a GPU may still be missing: see :func:`device_count`).

    >>> available() in (True, False)
    True
    """
    return _ext_cuda is not None


def device_count() -> int:
    """CUDA devices the extension's runtime sees; 0 without the extension, a driver or a GPU. Never raises.

    >>> device_count() >= 0
    True
    """
    return 0 if _ext_cuda is None else int(_ext_cuda.device_count())


def build_info() -> str:
    """How the extension was built (nvcc version, archs, runtime, driver), or why it is missing.

    >>> isinstance(build_info(), str)
    True
    """
    return NOT_BUILT if _ext_cuda is None else str(_ext_cuda.build_info())


def require_device() -> None:
    """Raise :class:`~xaisdk.InputError` unless the extension is built and sees at least one GPU.

    >>> try:
    ...     require_device()
    ...     ready = True
    ... except InputError:
    ...     ready = False
    >>> ready == (device_count() > 0)
    True
    """
    if _ext_cuda is None:
        raise InputError(NOT_BUILT)
    if device_count() == 0:
        raise InputError(
            "xaisdk._ext_cuda sees no CUDA device (no GPU, or a driver older than the CUDA runtime it was "
            f"built with): {build_info()}"
        )


def _module() -> Any:
    if _ext_cuda is None:
        raise InputError(NOT_BUILT)
    return _ext_cuda


def _tensor(value: object, fn: str, name: str, dtype_name: str, min_ndim: int) -> torch.Tensor:
    """``value`` checked to be a C-contiguous CUDA tensor of ``dtype_name`` with at least ``min_ndim`` axes."""
    torch = sys.modules.get("torch")  # a torch tensor exists only if torch was imported
    if torch is None or not isinstance(value, torch.Tensor):
        raise InputError(f"{fn}: {name} must be a torch CUDA tensor, got {type(value).__name__}")
    if value.device.type != "cuda":
        raise InputError(f"{fn}: {name} is on {value.device}; the CUDA kernels need CUDA tensors (move it with .cuda())")
    if value.dtype != getattr(torch, dtype_name):
        raise InputError(f"{fn}: {name} must be {dtype_name}, got {value.dtype}")
    if value.ndim < min_ndim:
        raise InputError(f"{fn}: {name} needs at least {min_ndim} dimensions, got shape {tuple(value.shape)}")
    if not value.is_contiguous():
        raise InputError(f"{fn}: {name} must be contiguous (call .contiguous()); got strides {value.stride()}")
    return value


def _same_device(fn: str, **tensors: torch.Tensor) -> Any:
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        raise InputError(f"{fn}: all tensors must be on one device, got {', '.join(f'{k} on {v}' for k, v in devices.items())}")
    return first


def _features(t: torch.Tensor, skip: int = 1) -> int:
    return math.prod(t.shape[skip:])


def _launch(fn: str, device: Any, call: Any) -> None:
    """Run ``call(stream)`` with the device's current torch stream; C++ argument errors become InputError."""
    import torch

    require_device()
    stream = torch.cuda.current_stream(device).cuda_stream
    try:
        call(stream)
    except ValueError as err:
        raise InputError(str(err)) from None


def ig_fill_chunk(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor, start: int, out: torch.Tensor) -> None:
    """Write Integrated Gradients path points into ``out`` (K, ...) on the current stream.

    For k < K, with flat = start + k, n = flat // S, s = flat % S (S = len(alphas)):
    ``out[k] = baseline[n] + alphas[s] * (x[n] - baseline[n])``. ``x`` and ``baseline``: float32
    CUDA tensors (N, ...); ``alphas``: float32 (S,); ``out``: float32 with ``out[k]`` the size of
    ``x[n]``; all contiguous, on one device. Usage on a GPU: ``ig_fill_chunk(x, b, a, 0, buf)``.

    >>> import numpy as np
    >>> try:
    ...     ig_fill_chunk(np.zeros((1, 2), np.float32), None, None, 0, None)
    ... except InputError as err:
    ...     print("refused")
    refused
    """
    fn = "ig_fill_chunk"
    module = _module()
    x = _tensor(x, fn, "x", "float32", 1)
    baseline = _tensor(baseline, fn, "baseline", "float32", 1)
    alphas = _tensor(alphas, fn, "alphas", "float32", 1)
    out = _tensor(out, fn, "out", "float32", 1)
    device = _same_device(fn, x=x, baseline=baseline, alphas=alphas, out=out)
    n, d, s, k = x.shape[0], _features(x), alphas.numel(), out.shape[0]
    if baseline.shape != x.shape:
        raise InputError(f"{fn}: baseline has shape {tuple(baseline.shape)}, expected the shape of x {tuple(x.shape)}")
    if alphas.ndim != 1:
        raise InputError(f"{fn}: alphas must be 1-D (S,), got shape {tuple(alphas.shape)}")
    if _features(out) != d:
        raise InputError(f"{fn}: out has shape {tuple(out.shape)}; each row must hold {d} values like x[n] {tuple(x.shape[1:])}")
    _launch(fn, device, lambda stream: module.ig_fill_chunk(
        x.data_ptr(), baseline.data_ptr(), alphas.data_ptr(), n, d, s, int(start), k, out.data_ptr(), stream))


def ig_accumulate_chunk(grads: torch.Tensor, weights: torch.Tensor, start: int, acc: torch.Tensor) -> None:
    """Add ``weights[s] * grads[k]`` into ``acc[n]`` for the chunk's rows, on the current stream.

    ``grads``: float32 (K, ...); ``weights``: float32 (S,); ``acc``: float32 (N, ...) with rows the size
    of ``grads[k]``; all contiguous CUDA tensors on one device. Each element adds its sample's rows in
    increasing k, so the sum is deterministic and the same for any chunking.

    >>> try:
    ...     ig_accumulate_chunk([1.0], None, 0, None)
    ... except InputError:
    ...     print("refused")
    refused
    """
    fn = "ig_accumulate_chunk"
    module = _module()
    grads = _tensor(grads, fn, "grads", "float32", 1)
    weights = _tensor(weights, fn, "weights", "float32", 1)
    acc = _tensor(acc, fn, "acc", "float32", 1)
    device = _same_device(fn, grads=grads, weights=weights, acc=acc)
    n, d, s, k = acc.shape[0], _features(acc), weights.numel(), grads.shape[0]
    if weights.ndim != 1:
        raise InputError(f"{fn}: weights must be 1-D (S,), got shape {tuple(weights.shape)}")
    if _features(grads) != d:
        raise InputError(f"{fn}: grads has shape {tuple(grads.shape)}; each row must hold {d} values like acc[n]")
    _launch(fn, device, lambda stream: module.ig_accumulate_chunk(
        grads.data_ptr(), weights.data_ptr(), n, d, s, int(start), k, acc.data_ptr(), stream))


def ig_finalize(acc: torch.Tensor, x: torch.Tensor, baseline: torch.Tensor) -> None:
    """``acc *= x - baseline`` in place on the current stream (float32 contiguous CUDA tensors of one shape).

    >>> try:
    ...     ig_finalize(None, None, None)
    ... except InputError:
    ...     print("refused")
    refused
    """
    fn = "ig_finalize"
    module = _module()
    acc = _tensor(acc, fn, "acc", "float32", 1)
    x = _tensor(x, fn, "x", "float32", 1)
    baseline = _tensor(baseline, fn, "baseline", "float32", 1)
    device = _same_device(fn, acc=acc, x=x, baseline=baseline)
    for name, t in (("x", x), ("baseline", baseline)):
        if t.shape != acc.shape:
            raise InputError(f"{fn}: {name} has shape {tuple(t.shape)}, expected the shape of acc {tuple(acc.shape)}")
    _launch(fn, device, lambda stream: module.ig_finalize(
        acc.data_ptr(), x.data_ptr(), baseline.data_ptr(), acc.shape[0], _features(acc), stream))


def perturb_fill_chunk(
    base: torch.Tensor,
    substrate: torch.Tensor,
    order: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    start: int,
    out: torch.Tensor,
    *,
    check_indices: bool = True,
) -> None:
    """Write perturbed images into ``out`` (K, C, ...) on the current stream.

    For k < K, with flat = start + k, n = flat // J, j = flat % J (J = lo.shape[1]): ``out[k] =
    base[n]`` with, in every channel, the pixels ``order[n, lo[n, j]:hi[n, j]]`` taken from
    ``substrate[n]``. ``base``, ``substrate``: float32 (N, C, H, W) or (N, C, P); ``order``: int64
    (N, P); ``lo``, ``hi``: int64 (N, J). With ``check_indices`` the chunk's bounds and orders are
    checked on the device first, which waits for the GPU once; in a loop, check the whole index set
    once and pass ``check_indices=False`` (the kernel then never writes out of bounds, but invalid
    indices give meaningless rows).

    >>> try:
    ...     perturb_fill_chunk(None, None, None, None, None, 0, None)
    ... except InputError:
    ...     print("refused")
    refused
    """
    fn = "perturb_fill_chunk"
    module = _module()
    base = _tensor(base, fn, "base", "float32", 3)
    substrate = _tensor(substrate, fn, "substrate", "float32", 3)
    order = _tensor(order, fn, "order", "int64", 2)
    lo = _tensor(lo, fn, "lo", "int64", 2)
    hi = _tensor(hi, fn, "hi", "int64", 2)
    out = _tensor(out, fn, "out", "float32", 3)
    device = _same_device(fn, base=base, substrate=substrate, order=order, lo=lo, hi=hi, out=out)
    n, c, p = base.shape[0], base.shape[1], _features(base, 2)
    j, k, start = lo.shape[-1], out.shape[0], int(start)
    if substrate.shape != base.shape:
        raise InputError(f"{fn}: substrate has shape {tuple(substrate.shape)}, expected the shape of base {tuple(base.shape)}")
    if order.shape != (n, p):
        raise InputError(f"{fn}: order has shape {tuple(order.shape)}, expected ({n}, {p})")
    if lo.ndim != 2 or lo.shape != hi.shape or lo.shape[0] != n:
        raise InputError(f"{fn}: lo and hi must both be (N, J) with N = {n}, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    if out.shape[1] != c or _features(out, 2) != p:
        raise InputError(f"{fn}: out has shape {tuple(out.shape)}, expected (K, {c}, ...) with {p} pixels per channel")
    if check_indices and k > 0 and 0 <= start and start + k <= n * j:
        _check_indices(fn, order, lo, hi, start, k, j, p)
    _launch(fn, device, lambda stream: module.perturb_fill_chunk(
        base.data_ptr(), substrate.data_ptr(), order.data_ptr(), lo.data_ptr(), hi.data_ptr(), n, c, p, j, start, k,
        out.data_ptr(), stream))


def _check_indices(fn: str, order: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, start: int, k: int, j: int, p: int) -> None:
    """The chunk's bounds and its samples' orders, checked with one device-to-host read."""
    import torch

    a, b = lo.view(-1)[start:start + k], hi.view(-1)[start:start + k]
    orders = order[start // j:(start + k - 1) // j + 1]
    bad = torch.stack([((a < 0) | (a > b) | (b > p)).any(), ((orders < 0) | (orders >= p)).any()]).tolist()
    if bad[0]:
        raise InputError(f"{fn}: lo/hi of rows {start}..{start + k - 1} break 0 <= lo <= hi <= P = {p}")
    if bad[1]:
        raise InputError(f"{fn}: order holds entries outside the pixel range [0, {p})")
