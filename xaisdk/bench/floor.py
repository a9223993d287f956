"""The arithmetic floor: FLOPs of the passes an IG run needs, and the machine's matrix-multiply rate."""

from __future__ import annotations

import numpy as np

__all__ = ["forward_macs", "ig_floor", "matmul_gflops"]


def forward_macs(module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of ``module`` on one input (Conv2d and Linear layers).

    >>> import torch
    >>> forward_macs(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), (1, 2, 2))
    12
    """
    import torch
    from torch import nn

    total = 0

    def count(layer, inputs, output):
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            total += output[0].numel() * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, nn.Linear):
            total += output[0].numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """float32 GFLOP/s of a ``size``-square matrix product in torch on this machine (its best of ``repeats``)."""
    import time

    import torch

    a, b = torch.rand(size, size), torch.rand(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def ig_floor(module, input_shape: tuple[int, ...], steps: int, measured_ms: dict[str, float]) -> dict:
    """FLOPs of ``steps`` forward + input-gradient passes (the backward to the input costs about one
    forward), the time they take at the machine's matmul rate, and each measured time as effective
    GFLOP/s of that work (above the matmul rate means the method skipped work the passes would do)."""
    macs = forward_macs(module, input_shape)
    flops = steps * 2 * (2 * macs)
    peak = matmul_gflops()
    rows = {f"{steps} passes at the matmul rate (floor)": {"ms": flops / peak / 1e6, "effective_gflops": peak}}
    for name, ms in measured_ms.items():
        if np.isfinite(ms):
            rows[name] = {"ms": ms, "effective_gflops": flops / (ms * 1e-3) / 1e9}
    return {"forward_macs": macs, "ig_flops": flops, "matmul_gflops": peak, "rows": rows}
