"""The torch side of the runtime: :class:`TorchBackend` (the reference implementation of the
:class:`~xaisdk.runtime.backend.Backend` protocol), :class:`TorchCudaBackend`, the relu-path fast
path (:mod:`xaisdk.torch_runtime.relu_path_ig`, used only where it provably computes the model's own
function) and the CUDA kernels' torch-tensor wrappers (:mod:`xaisdk.torch_runtime.cuda_kernels`).

This package is the torch layer; the torch-free core (:mod:`xaisdk.runtime`, :mod:`xaisdk.methods`)
never imports it. The names below load on first use (PEP 562), so
``from xaisdk.torch_runtime import cuda_kernels`` can still tell whether the CUDA extension is built
where torch is not installed.

>>> import torch
>>> from xaisdk.torch_runtime import as_backend
>>> as_backend(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), input_shape=(1, 2, 2)).name
'torch'
"""

from __future__ import annotations

from typing import Any

__all__ = ["TorchBackend", "TorchCudaBackend", "as_backend"]


def __getattr__(name: str) -> Any:
    if name == "TorchBackend":
        from xaisdk.torch_runtime.torch_backend import TorchBackend as value
    elif name == "as_backend":
        from xaisdk.torch_runtime.torch_backend import as_backend as value
    elif name == "TorchCudaBackend":
        from xaisdk.torch_runtime.torch_cuda_backend import TorchCudaBackend as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
