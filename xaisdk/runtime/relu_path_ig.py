"""Integrated Gradients for CNNs that open with conv -> ReLU -> conv, without running those layers per step.

On the straight path ``x(a) = b + a (x - b)`` the first convolution's output is affine in ``a``, so
every unit of the first ReLU is on for one interval of the path points, and the second convolution
changes only where a unit switches (each unit at most once along the whole path). The C++ kernels of
``xaisdk._ext`` (``csrc/relu_path.h``) follow those switches: the second layer's pre-activations at
all S steps cost about two convolutions plus one column of the second layer per switching unit, and
going back, the gradients of all steps reach the first layer through one transposed convolution plus
one row per switching unit. Only the rest of the network (for GANMEX's MNIST CNN: the dense layers)
runs once per path point. The sum computed is exactly the one of the plain loop,
``(x - b) * sum_s w_s dS/dx(b + a_s (x - b))``; numbers differ by float32 rounding, except that
a unit whose pre-activation is within rounding of 0 at a path point may be counted as on or off
differently for that one point (ReLU's derivative at 0 is 0 in both).

Used by :class:`~xaisdk.runtime.torch_backend.TorchBackend` (``fast_ig=True``) for every IG-based
method. Needs torch; imported only by the torch backend.

>>> import numpy as np, torch
>>> from xaisdk.models.classifiers import MnistCNN
>>> net = MnistCNN().eval()
>>> prefix = find_relu_conv_prefix(net, (1, 28, 28))
>>> x, b = np.random.default_rng(0).random((2, 1, 1, 28, 28), dtype=np.float32)
>>> weights = np.eye(10, dtype=np.float32)[[3]] - np.eye(10, dtype=np.float32)[[5]]
>>> alphas, quadrature = (np.arange(50) + 0.5) / 50, np.full(50, 1 / 50)
>>> attr = relu_path_integrated_gradients(prefix, x, b, weights, alphas, quadrature)
>>> completeness = attr.sum() - (net(torch.from_numpy(x)) - net(torch.from_numpy(b)))[0, [3, 5]] @ torch.tensor([1.0, -1.0])
>>> attr.shape, bool(abs(completeness) < 0.05)
((1, 1, 28, 28), True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

try:
    from xaisdk import _ext
except ImportError:  # not built: find_relu_conv_prefix then finds nothing and callers keep the plain loop
    _ext = None

__all__ = ["ReluConvPrefix", "find_relu_conv_prefix", "relu_path_integrated_gradients", "relu_path_occluded_scores",
           "relu_path_perturbed_scores"]


@dataclass(frozen=True)
class ReluConvPrefix:
    """A model split as ``tail(second(relu(first(x))))``; shapes are per image (C, H, W)."""

    first: nn.Conv2d
    second: nn.Conv2d
    tail: Callable[[torch.Tensor], torch.Tensor]
    input_shape: tuple[int, int, int]
    hidden_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    tail_inplace: bool
    dense_head: tuple[nn.Linear, nn.Linear] | None = None
    """``(hidden, output)`` when the tail is ReLU -> Flatten -> Linear -> ReLU -> Linear (dropout and
    identity layers aside): its gradient is then followed by hand, not by autograd."""


def _layers(module: nn.Module) -> list[nn.Module] | None:
    """The module as a flat list of layers applied one after the other, when its structure says so."""
    from xaisdk.models.classifiers import MnistCNN

    if isinstance(module, MnistCNN):
        parts: list[nn.Module] = [module.features, module.head]
    elif type(module) is nn.Sequential:
        parts = list(module)
    else:
        return None
    flat: list[nn.Module] = []
    for part in parts:
        if type(part) is nn.Sequential:
            inner = _layers(part)
            if inner is None:
                return None
            flat.extend(inner)
        else:
            flat.append(part)
    return flat


def _plain_conv(layer: nn.Module) -> bool:
    return (
        type(layer) is nn.Conv2d
        and layer.groups == 1
        and tuple(layer.dilation) == (1, 1)
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


def find_relu_conv_prefix(module: nn.Module, input_shape: tuple[int, ...]) -> ReluConvPrefix | None:
    """``module`` split into conv -> ReLU -> conv and the rest, or None when it does not start that way.

    Recognised: ``nn.Sequential`` (nested ones too) and GANMEX's ``MnistCNN``; both convolutions
    plain (groups 1, dilation 1, zero padding). The split is checked on a probe input: the pieces
    in a row must give the module's own logits, otherwise (a custom ``forward``) it is not used.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    >>> find_relu_conv_prefix(net, (1, 8, 8)).hidden_shape
    (4, 6, 6)
    >>> find_relu_conv_prefix(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), (1, 8, 8)) is None
    True
    """
    if _ext is None or len(input_shape) != 3:
        return None
    layers = _layers(module)
    if layers is None or len(layers) < 4:
        return None
    first, relu, second = layers[:3]
    if not (_plain_conv(first) and type(relu) is nn.ReLU and _plain_conv(second)):
        return None
    tail = nn.Sequential(*layers[3:])
    probe = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            hidden = torch.relu(first(probe))
            out = second(hidden)
            split = tail(out.clone())
            whole = module(probe)
        except RuntimeError:  # shapes do not chain: not a sequential model after all
            return None
    if split.shape != whole.shape or not torch.allclose(split, whole, rtol=1e-4, atol=1e-5):
        return None
    inplace = any(getattr(layer, "inplace", False) for layer in layers[3:])
    return ReluConvPrefix(first, second, tail, tuple(input_shape), tuple(hidden.shape[1:]), tuple(out.shape[1:]), inplace,
                          _dense_head(layers[3:]))


def _dense_head(tail: list[nn.Module]) -> tuple[nn.Linear, nn.Linear] | None:
    kept = [layer for layer in tail if type(layer) not in (nn.Dropout, nn.Identity)]
    kinds = [type(layer) for layer in kept]
    if kinds != [nn.ReLU, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear] or (kept[1].start_dim, kept[1].end_dim) != (1, -1):
        return None
    return kept[2], kept[4]


def _conv_args(conv: nn.Conv2d) -> dict:
    return {"stride": tuple(conv.stride), "padding": tuple(conv.padding)}


def _tail_gradient(prefix: ReluConvPrefix, z2: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Gradient (N, S, F) of ``weights[n] . tail(z2[n, s])`` w.r.t. the second layer's output z2 (N, S, F)."""
    n, steps, features = z2.shape
    if prefix.dense_head is not None:
        hidden, output = prefix.dense_head
        with torch.no_grad():
            flat = torch.from_numpy(z2).view(n * steps, features)
            z3 = nn.functional.linear(torch.relu(flat), hidden.weight, hidden.bias)
            u = torch.from_numpy(weights) @ output.weight  # d score / d relu(z3), the same at every step
        return _ext.relu_dense_backward(z2, np.ascontiguousarray(z3.view(n, steps, -1).numpy()), np.ascontiguousarray(u.numpy()),
                                        np.ascontiguousarray(hidden.weight.detach().numpy()))
    leaf = torch.from_numpy(z2).view(n * steps, *prefix.output_shape).requires_grad_(True)
    row_weights = torch.from_numpy(np.repeat(weights, steps, axis=0))
    with torch.enable_grad():
        logits = prefix.tail(leaf.clone() if prefix.tail_inplace else leaf)
        (g2,) = torch.autograd.grad((logits * row_weights).sum(), leaf)
    return np.ascontiguousarray(g2.reshape(n, steps, features).numpy())


def relu_path_integrated_gradients(
    prefix: ReluConvPrefix,
    x: np.ndarray,
    baseline: np.ndarray,
    weights: np.ndarray,
    alphas: np.ndarray,
    quadrature: np.ndarray,
    *,
    rows_per_pass: int = 2048,
) -> np.ndarray:
    """``(x - b) * sum_s quadrature[s] * dScore/dx(b + alphas[s] (x - b))`` for ``Score_n = weights[n] . logits``.

    ``x``, ``baseline``: float32 (N, C, H, W); ``weights``: (N, classes); ``alphas``, ``quadrature``:
    (S,) in any order. Images go through in groups of about ``rows_per_pass`` path points.
    """
    order = np.argsort(alphas, kind="stable")
    a = np.ascontiguousarray(np.asarray(alphas, np.float32)[order])
    w = np.ascontiguousarray(np.asarray(quadrature, np.float32)[order])
    steps = len(a)
    first, second = prefix.first, prefix.second
    w2 = np.ascontiguousarray(second.weight.detach().numpy(), np.float32)
    b2 = None if second.bias is None else np.ascontiguousarray(second.bias.detach().numpy(), np.float32)
    geometry = (prefix.hidden_shape, prefix.output_shape, tuple(second.stride), tuple(second.padding))
    units = int(np.prod(prefix.hidden_shape))
    features = int(np.prod(prefix.output_shape))
    out = np.empty(x.shape, np.float32)
    group = max(1, rows_per_pass // max(steps, 1))
    for start in range(0, len(x), group):
        sl = slice(start, min(start + group, len(x)))
        n = sl.stop - sl.start
        xt, bt = torch.from_numpy(np.ascontiguousarray(x[sl])), torch.from_numpy(np.ascontiguousarray(baseline[sl]))
        with torch.no_grad():
            hidden = first(torch.cat([bt, xt]))
            z0 = np.ascontiguousarray(hidden[:n].reshape(n, units).numpy())
            dz = np.ascontiguousarray((hidden[n:] - hidden[:n]).reshape(n, units).numpy())
            lo, hi = _ext.relu_active_ranges(z0, dz, a)
            on_at_start = ((lo == 0) & (hi > 0)).astype(np.float32)
            bases = nn.functional.conv2d(
                torch.from_numpy(np.concatenate([z0 * on_at_start, dz * on_at_start])).view(2 * n, *prefix.hidden_shape),
                second.weight, None, **_conv_args(second),
            ).reshape(2 * n, features)
            base_p, base_q = np.ascontiguousarray(bases[:n].numpy()), np.ascontiguousarray(bases[n:].numpy())
            z2 = _ext.relu_conv_forward(z0, dz, lo, hi, a, w2, b2, base_p, base_q, *geometry)
        g2 = _tail_gradient(prefix, z2, np.asarray(weights[sl], np.float32))
        partial, total = _ext.relu_conv_backward(lo, hi, g2, w, w2, *geometry)
        with torch.no_grad():
            dense = torch.nn.grad.conv2d_input((n, *prefix.hidden_shape), second.weight,
                                               torch.from_numpy(total).view(n, *prefix.output_shape), **_conv_args(second))
            on_at_end = torch.from_numpy((hi == steps) & (lo < hi)).view(n, *prefix.hidden_shape)
            unit_grad = torch.from_numpy(partial).view(n, *prefix.hidden_shape) + torch.where(on_at_end, dense, 0.0)
            grad_sum = torch.nn.grad.conv2d_input(tuple(xt.shape), first.weight, unit_grad, **_conv_args(first))
            out[sl] = ((xt - bt) * grad_sum).numpy()
    return out


def _opening_layers(prefix: ReluConvPrefix, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first layer's output z1 (N, E) and the second's z2 (N, F) of ``images``, float32 C-contiguous."""
    with torch.no_grad():
        z1 = prefix.first(torch.from_numpy(images))
        z2 = prefix.second(torch.relu(z1))
    return np.ascontiguousarray(z1.reshape(len(images), -1).numpy()), np.ascontiguousarray(z2.reshape(len(images), -1).numpy())


def _window_ranges(cover: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) int64 of each row of a 0/1 window cover (positions, size); each window is one run of ones."""
    cover = np.asarray(cover) > 0
    lo = cover.argmax(1).astype(np.int64)
    hi = lo + cover.sum(1).astype(np.int64)
    return lo, hi


def relu_path_occluded_scores(
    prefix: ReluConvPrefix,
    x: np.ndarray,
    baseline: np.ndarray,
    weights: np.ndarray,
    row_cover: np.ndarray,
    col_cover: np.ndarray,
    *,
    rows_per_pass: int = 2048,
) -> np.ndarray:
    """Scores ``weights[n] . logits`` (N, R, Cc) of ``x`` with each occlusion window replaced by ``baseline``.

    Windows are the outer products of ``row_cover`` (R, H) and ``col_cover`` (Cc, W) (0/1, one run of
    ones per row, as :func:`xaisdk.attribution._shared.occlusion_covers` gives). Only the first-layer
    units a window reaches are recomputed, and the second layer changes by their columns
    (``_ext.relu_occlusion_forward``); the rest of the network runs once per window position.
    """
    row_lo, row_hi = _window_ranges(row_cover)
    col_lo, col_hi = _window_ranges(col_cover)
    positions = len(row_lo) * len(col_lo)
    first, second = prefix.first, prefix.second
    w1 = np.ascontiguousarray(first.weight.detach().numpy(), np.float32)
    w2 = np.ascontiguousarray(second.weight.detach().numpy(), np.float32)
    w3t = None if prefix.dense_head is None else np.ascontiguousarray(prefix.dense_head[0].weight.detach().numpy().T)
    n_all = len(x)
    scores = np.empty((n_all, positions), np.float32)
    group = max(1, rows_per_pass // positions)
    for start in range(0, n_all, group):
        sl = slice(start, min(start + group, n_all))
        n = sl.stop - sl.start
        xs = np.ascontiguousarray(x[sl], np.float32)
        z1, z2 = _opening_layers(prefix, xs)
        with torch.no_grad():
            dense = ()
            if prefix.dense_head is not None:  # the kernel carries the occlusion on into the dense layer
                hidden = prefix.dense_head[0]
                z3 = nn.functional.linear(torch.relu(torch.from_numpy(z2)), hidden.weight, hidden.bias)
                dense = (w3t, np.ascontiguousarray(z3.numpy()))
            rows = _ext.relu_occlusion_forward(
                xs.reshape(n, -1), np.ascontiguousarray(baseline[sl], np.float32).reshape(n, -1), row_lo, row_hi, col_lo, col_hi,
                w1, prefix.input_shape, prefix.hidden_shape, tuple(first.stride), tuple(first.padding),
                z1, w2, prefix.output_shape, tuple(second.stride), tuple(second.padding), z2, *dense,
            )
        if dense:
            with torch.no_grad():
                output = prefix.dense_head[1]
                logits = nn.functional.linear(torch.from_numpy(rows).relu_(), output.weight, output.bias)
                scores[sl] = (logits * torch.from_numpy(np.asarray(weights[sl], np.float32))[:, None, :]).sum(-1).numpy()
        else:
            scores[sl] = _scores(prefix, rows, weights[sl])
    return scores.reshape(n_all, len(row_lo), len(col_lo))


def _scores(prefix: ReluConvPrefix, z2: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``weights[n] . tail(z2[n, j])`` (N, J) for second-layer outputs z2 (N, J, F)."""
    n, rows, _ = z2.shape
    with torch.no_grad():
        if prefix.dense_head is not None:  # z2 is our own buffer: the ReLUs run in place
            hidden, output = prefix.dense_head
            z3 = nn.functional.linear(torch.from_numpy(z2).view(n * rows, -1).relu_(), hidden.weight, hidden.bias)
            logits = nn.functional.linear(z3.relu_(), output.weight, output.bias)
        else:
            logits = prefix.tail(torch.from_numpy(z2).view(n * rows, *prefix.output_shape))
        return (logits.view(n, rows, -1) * torch.from_numpy(np.asarray(weights, np.float32))[:, None, :]).sum(-1).numpy()


def relu_path_perturbed_scores(
    prefix: ReluConvPrefix,
    base: np.ndarray,
    substrate: np.ndarray,
    order: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    weights: np.ndarray,
    *,
    rows_per_pass: int = 2048,
) -> np.ndarray:
    """Scores ``weights[n] . logits`` (N, J) of the perturbation rows "``base[n]`` with the pixels
    ``order[n, lo[n, j]:hi[n, j]]`` taken from ``substrate[n]``" (see :mod:`xaisdk.runtime.perturbation`).

    A cumulative curve's row is reached from the previous row by its newly replaced pixels
    (``_ext.relu_perturbed_forward``); other rows start from ``base``. The rest of the network runs
    once per row.
    """
    first, second = prefix.first, prefix.second
    w1 = np.ascontiguousarray(first.weight.detach().numpy(), np.float32)
    w2 = np.ascontiguousarray(second.weight.detach().numpy(), np.float32)
    n_all, steps = lo.shape
    scores = np.empty((n_all, steps), np.float32)
    group = max(1, rows_per_pass // max(steps, 1))
    for start in range(0, n_all, group):
        sl = slice(start, min(start + group, n_all))
        n = sl.stop - sl.start
        b = np.ascontiguousarray(base[sl], np.float32)
        z1, z2 = _opening_layers(prefix, b)
        rows = _ext.relu_perturbed_forward(
            b.reshape(n, -1), np.ascontiguousarray(substrate[sl], np.float32).reshape(n, -1), np.ascontiguousarray(order[sl]),
            np.ascontiguousarray(lo[sl]), np.ascontiguousarray(hi[sl]), w1, prefix.input_shape, prefix.hidden_shape,
            tuple(first.stride), tuple(first.padding), z1, w2, prefix.output_shape, tuple(second.stride),
            tuple(second.padding), z2,
        )
        scores[sl] = _scores(prefix, rows, weights[sl])
    return scores
