"""Integrated Gradients for CNNs that open with conv -> ReLU -> conv, without running those layers per step.

On the straight path ``x(a) = b + a (x - b)`` the first convolution's output is affine in ``a``, so
every unit of the first ReLU is on for one interval of the path points, and the second convolution
changes only where a unit switches (each unit at most once along the whole path). The loop
(:mod:`xaisdk.runtime.relu_path_core`, shared with bundles) follows those switches with the C++
kernels of ``xaisdk._ext``; this module finds the split in a torch model and runs its layers. Only
the rest of the network (for GANMEX's MNIST CNN: the dense layers) runs once per path point. The sum
computed is exactly the one of the plain loop,
``(x - b) * sum_s w_s dS/dx(b + a_s (x - b))``; numbers differ by float32 rounding, except that
a unit whose pre-activation is within rounding of 0 at a path point may be counted as on or off
differently for that one point (ReLU's derivative at 0 is 0 in both). Measured against a float64
autograd reference on 100 test digits (IG-200, ``benchmarks/relu_path_precision.py``): the largest
difference per image is at most 1.8e-5 of that image's largest |attribution| (median 1.5e-7), the
same bound as the float32 plain loop's (1.8e-5, median 4.4e-7).

The split is used only where it provably is the model's own function (:func:`find_relu_conv_prefix`),
re-checked at every call by :class:`ReluPathGate`.

Used by :class:`~xaisdk.torch_runtime.torch_backend.TorchBackend` (``fast_ig=True``) for every IG-based
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

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xaisdk.models.module_state import global_hooks_present, hooked_module, instance_override, module_state
from xaisdk.runtime.relu_path_core import dense_backward, path_integrated_gradients
from xaisdk.runtime.relu_path_core import rows_per_pass as rows_per_pass_for

try:
    from xaisdk import _ext
except ImportError:  # not built: find_relu_conv_prefix then finds nothing and callers keep the plain loop
    _ext = None

__all__ = ["FoldedConv", "ReluConvPrefix", "ReluPathGate", "find_relu_conv_prefix", "fold_batch_norm",
           "relu_path_integrated_gradients", "relu_path_occluded_scores", "relu_path_perturbed_scores"]


@dataclass(frozen=True)
class FoldedConv:
    """A convolution followed by an eval-mode batch norm, as one convolution (weights scaled per output channel)."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> FoldedConv:
    """``norm(conv(x))`` in eval mode as one convolution, from the modules' values now.

    >>> conv, norm = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2).eval()
    >>> _ = norm.running_mean.fill_(0.5), norm.running_var.fill_(4.0)
    >>> x = torch.rand(1, 1, 5, 5)
    >>> bool(torch.allclose(fold_batch_norm(conv, norm)(x), norm(conv(x)), atol=1e-6))
    True
    """
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        bias = shift if conv.bias is None else conv.bias * scale + shift
        weight = (conv.weight * scale.view(-1, 1, 1, 1)).detach()
        return FoldedConv(weight, bias.detach(), tuple(conv.stride), tuple(conv.padding))


def _foldable_norm(layer: nn.Module, conv: nn.Conv2d) -> bool:
    """An eval-mode batch norm over ``conv``'s channels that uses running statistics (without them, eval
    mode still normalises by the batch's own statistics: not a per-channel affine map)."""
    return (type(layer) is nn.BatchNorm2d and layer.track_running_stats and layer.running_mean is not None
            and layer.running_var is not None and layer.num_features == conv.out_channels
            and layer.running_var.dtype == torch.float32)


@dataclass(frozen=True)
class ReluConvPrefix:
    """A model split as ``tail(second(relu(first(x))))``; shapes are per image (C, H, W).

    ``first`` is the opening convolution, with the batch norm after it folded in when there is one
    (computed from the live modules at each access, so weights or statistics changed in place,
    ``load_state_dict`` included, are always the ones used)."""

    first_conv: nn.Conv2d
    second: nn.Conv2d
    tail: Callable[[torch.Tensor], torch.Tensor]
    input_shape: tuple[int, int, int]
    hidden_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    tail_inplace: bool
    dense_head: tuple[nn.Linear, nn.Linear] | None = None
    """``(hidden, output)`` when the tail is ReLU -> Flatten -> Linear -> ReLU -> Linear (dropout and
    identity layers aside): its gradient is then followed by hand, not by autograd."""
    first_norm: nn.BatchNorm2d | None = None

    @property
    def first(self) -> nn.Conv2d | FoldedConv:
        return self.first_conv if self.first_norm is None else fold_batch_norm(self.first_conv, self.first_norm)


def _layers(module: nn.Module) -> list[nn.Module] | None:
    """The module as a flat list of layers applied one after the other, when its class's code says so.

    Only classes whose ``forward`` is known are taken, by exact type (a subclass may override
    ``forward`` or anything it calls): ``nn.Sequential`` and GANMEX's ``MnistCNN`` and ``CifarCNN``,
    whose forward is ``head(features(x))``. Everything else is None, and the caller keeps the plain loop.
    """
    from xaisdk.models.classifiers import CifarCNN, MnistCNN

    if type(module) in (MnistCNN, CifarCNN) and type(module).forward in (MnistCNN.forward, CifarCNN.forward):
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
        and layer.weight.dtype == torch.float32
    )


def _runs_only_its_own_code(module: nn.Module) -> bool:
    """No hooks anywhere, no instance-level overrides of methods (``m.forward = ...``), every module in eval mode."""
    return hooked_module(module) is None and instance_override(module) is None and not any(m.training for m in module.modules())


def find_relu_conv_prefix(module: nn.Module, input_shape: tuple[int, ...],
                          value_range: tuple[float, float] = (0.0, 1.0)) -> ReluConvPrefix | None:
    """``module`` split into conv -> ReLU -> conv and the rest, or None unless that split provably is the
    module's own function.

    Taken only when all of these hold (otherwise None, and callers keep the plain loop):

    - the module is an ``nn.Sequential`` (nested ones too) or GANMEX's ``MnistCNN`` or ``CifarCNN``, by exact type,
      so its ``forward`` is known code (a subclass or any other class may do anything in forward);
    - its first three layers are exactly ``nn.Conv2d`` (groups 1, dilation 1, zero padding,
      float32), ``nn.ReLU`` and ``nn.Conv2d``, or the same with an ``nn.BatchNorm2d`` that keeps
      running statistics after the first convolution (folded into it: in eval mode it is a per-channel
      affine map); the layers after them run as the model's own modules,
      except that a ReLU -> Flatten -> Linear -> ReLU -> Linear head (dropout, identity aside) is
      followed by hand;
    - no module has a forward or backward hook (nor is a process-wide one set), none has a method
      replaced on the instance, all are in eval mode;
    - on probe inputs spanning ``value_range`` (random points, both ends), the pieces in a row give
      the module's own logits.

    Structural checks are used instead of ``torch.fx`` tracing because fx patches ``nn.Module.__call__``
    process-wide while it traces, which would break other threads' forward passes in a service.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    >>> find_relu_conv_prefix(net, (1, 8, 8)).hidden_shape
    (4, 6, 6)
    >>> find_relu_conv_prefix(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval(), (1, 8, 8)) is None
    True
    >>> handle = net[0].register_forward_hook(lambda mod, args, out: out * 2)
    >>> find_relu_conv_prefix(net, (1, 8, 8)) is None
    True
    """
    if _ext is None or len(input_shape) != 3 or global_hooks_present() or not _runs_only_its_own_code(module):
        return None
    layers = _layers(module)
    if layers is None or len(layers) < 4:
        return None
    conv, rest, norm = layers[0], layers[1:], None
    if _plain_conv(conv) and _foldable_norm(rest[0], conv):
        norm, rest = rest[0], rest[1:]
    if len(rest) < 3:
        return None
    relu, second = rest[:2]
    if not (_plain_conv(conv) and type(relu) is nn.ReLU and _plain_conv(second)):
        return None
    first = conv if norm is None else fold_batch_norm(conv, norm)
    tail = nn.Sequential(*rest[2:])
    low, high = (float(v) for v in value_range)
    generator = torch.Generator().manual_seed(0)
    probe = torch.cat([
        low + (high - low) * torch.rand(4, *input_shape, generator=generator),
        torch.full((1, *input_shape), low), torch.full((1, *input_shape), high),
    ])
    with torch.no_grad():
        try:
            hidden = torch.relu(first(probe))
            out = second(hidden)
            split = tail(out.clone())
            whole = module(probe)
        except RuntimeError:  # shapes do not chain: not a sequential model after all
            return None
    if split.shape != whole.shape or not torch.allclose(split, whole, rtol=1e-4, atol=1e-5 * (1 + float(whole.abs().max()))):
        return None
    inplace = any(getattr(layer, "inplace", False) for layer in rest[2:])
    return ReluConvPrefix(conv, second, tail, tuple(input_shape), tuple(hidden.shape[1:]), tuple(out.shape[1:]), inplace,
                          _dense_head(rest[2:]), norm)


class ReluPathGate:
    """Answers, at each call, the relu-path split of a live module, or None when it no longer applies.

    A model may change after a backend was built: a layer swapped, a hook registered, ``train()``
    called. Each :meth:`prefix` compares :func:`module_state` with the state the split was proven for
    (tens of microseconds) and re-runs :func:`find_relu_conv_prefix` when it changed; results are
    kept per state, so a hook that comes and goes (DeepLIFT's, say) costs no new proof. Thread-safe.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(32, 3)).eval()
    >>> gate = ReluPathGate(net, (1, 8, 8))
    >>> gate.prefix() is not None
    True
    >>> net[1] = nn.Tanh()
    >>> gate.prefix() is None
    True
    """

    _KEEP = 8  # proven states remembered

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], value_range: tuple[float, float] = (0.0, 1.0)) -> None:
        self.module = module
        self.input_shape = tuple(input_shape)
        self.value_range = value_range
        self._proven: dict[tuple, ReluConvPrefix | None] = {}
        self._lock = threading.Lock()

    def prefix(self) -> ReluConvPrefix | None:
        """The split for the module as it is now, or None."""
        if global_hooks_present():
            return None
        state = module_state(self.module)
        with self._lock:
            if state not in self._proven:
                if len(self._proven) >= self._KEEP:
                    self._proven.pop(next(iter(self._proven)))
                self._proven[state] = find_relu_conv_prefix(self.module, self.input_shape, self.value_range)
            return self._proven[state]


def _dense_head(tail: list[nn.Module]) -> tuple[nn.Linear, nn.Linear] | None:
    kept = [layer for layer in tail if type(layer) not in (nn.Dropout, nn.Identity)]
    kinds = [type(layer) for layer in kept]
    if kinds != [nn.ReLU, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear] or (kept[1].start_dim, kept[1].end_dim) != (1, -1):
        return None
    return kept[2], kept[4]


def _conv_args(conv: nn.Conv2d) -> dict:
    return {"stride": tuple(conv.stride), "padding": tuple(conv.padding)}


class _TorchOpening:
    """The :class:`~xaisdk.runtime.relu_path_core.OpeningLayers` of a proven split, run by torch; the first
    layer (with its batch norm folded in) is taken from the live modules once, when built."""

    def __init__(self, prefix: ReluConvPrefix) -> None:
        self.prefix = prefix
        self.first_layer = prefix.first
        second = prefix.second
        self.input_shape, self.hidden_shape, self.output_shape = prefix.input_shape, prefix.hidden_shape, prefix.output_shape
        self.second_weight = np.ascontiguousarray(second.weight.detach().numpy(), np.float32)
        self.second_bias = None if second.bias is None else np.ascontiguousarray(second.bias.detach().numpy(), np.float32)
        self.second_stride, self.second_padding = tuple(second.stride), tuple(second.padding)

    def first(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.first_layer(torch.from_numpy(images)).reshape(len(images), -1).numpy()

    def second_linear(self, hidden: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            second = self.prefix.second
            out = nn.functional.conv2d(torch.from_numpy(hidden), second.weight, None, **_conv_args(second))
        return out.reshape(len(hidden), -1).numpy()

    def second_transpose(self, grad: np.ndarray) -> np.ndarray:
        second = self.prefix.second
        with torch.no_grad():
            out = torch.nn.grad.conv2d_input((len(grad), *self.hidden_shape), second.weight,
                                             torch.from_numpy(grad).view(len(grad), *self.output_shape), **_conv_args(second))
        return out.reshape(len(grad), -1).numpy()

    def first_transpose(self, grad: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.nn.grad.conv2d_input((len(grad), *self.input_shape), self.first_layer.weight,
                                              torch.from_numpy(grad).view(len(grad), *self.hidden_shape),
                                              **_conv_args(self.first_layer)).numpy()

    def tail_gradient(self, z2: np.ndarray, weights: np.ndarray) -> np.ndarray:
        prefix = self.prefix
        n, steps, features = z2.shape
        if prefix.dense_head is not None:
            hidden, output = prefix.dense_head
            with torch.no_grad():  # torch's GEMM here: numpy's BLAS threads would contend with torch's
                z3 = nn.functional.linear(torch.relu(torch.from_numpy(z2).view(n * steps, features)), hidden.weight, hidden.bias)
                u = torch.from_numpy(weights) @ output.weight  # d score / d relu(z3), the same at every step
            return dense_backward(z2, z3.view(n, steps, -1).numpy(), u.numpy(), hidden.weight.detach().numpy())
        leaf = torch.from_numpy(z2).view(n * steps, *prefix.output_shape).requires_grad_(True)
        row_weights = torch.from_numpy(np.repeat(weights, steps, axis=0))
        with torch.enable_grad():
            logits = prefix.tail(leaf.clone() if prefix.tail_inplace else leaf)
            (g2,) = torch.autograd.grad((logits * row_weights).sum(), leaf)
        return g2.reshape(n, steps, features).numpy()


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
    (S,) in any order. The loop is :func:`xaisdk.runtime.relu_path_core.path_integrated_gradients` (memory
    bounded whatever S), with the split's layers run by torch.
    """
    with torch.no_grad():
        return path_integrated_gradients(_TorchOpening(prefix), x, baseline, weights, alphas, quadrature,
                                         rows_per_pass_requested=rows_per_pass)


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
    ones per row, as :func:`xaisdk.methods.common.occlusion_covers` gives). Only the first-layer
    units a window reaches are recomputed, and the second layer changes by their columns
    (``_ext.relu_occlusion_forward``); the rest of the network runs once per window position.
    """
    row_lo, row_hi = _window_ranges(row_cover)
    col_lo, col_hi = _window_ranges(col_cover)
    n_all = len(x)
    scores = np.empty((n_all, len(row_lo), len(col_lo)), np.float32)
    width = int(np.prod(prefix.output_shape)) if prefix.dense_head is None else prefix.dense_head[0].out_features
    rows = rows_per_pass_for(rows_per_pass, width)
    band = max(1, rows // len(col_lo))  # window rows per kernel call: memory does not grow with the window count
    group = max(1, rows // (band * len(col_lo)))
    for start in range(0, n_all, group):
        sl = slice(start, min(start + group, n_all))
        xs = np.ascontiguousarray(x[sl], np.float32)
        bs = np.ascontiguousarray(baseline[sl], np.float32)
        z1, z2 = _opening_layers(prefix, xs)
        z3 = None
        if prefix.dense_head is not None:  # the kernel carries the occlusion on into the dense layer
            with torch.no_grad():
                hidden = prefix.dense_head[0]
                z3 = nn.functional.linear(torch.relu(torch.from_numpy(z2)), hidden.weight, hidden.bias)
            z3 = np.ascontiguousarray(z3.numpy())
        for r0 in range(0, len(row_lo), band):
            r = slice(r0, r0 + band)
            scores[sl, r] = _occluded_band(prefix, xs, bs, np.asarray(weights[sl], np.float32), z1, z2, z3,
                                           row_lo[r], row_hi[r], col_lo, col_hi)
    return scores


def _occluded_band(prefix: ReluConvPrefix, xs: np.ndarray, bs: np.ndarray, weights: np.ndarray, z1: np.ndarray,
                   z2: np.ndarray, z3: np.ndarray | None, row_lo: np.ndarray, row_hi: np.ndarray, col_lo: np.ndarray,
                   col_hi: np.ndarray) -> np.ndarray:
    """Scores (N, R, Cc) of the windows ``row_lo/hi x col_lo/hi`` (one band of window rows)."""
    n = len(xs)
    first, second = prefix.first, prefix.second
    w1 = np.ascontiguousarray(first.weight.detach().numpy(), np.float32)
    w2 = np.ascontiguousarray(second.weight.detach().numpy(), np.float32)
    dense = ()
    if prefix.dense_head is not None:
        dense = (np.ascontiguousarray(prefix.dense_head[0].weight.detach().numpy().T), z3)
    rows = _ext.relu_occlusion_forward(
        xs.reshape(n, -1), bs.reshape(n, -1), np.ascontiguousarray(row_lo), np.ascontiguousarray(row_hi), col_lo, col_hi,
        w1, prefix.input_shape, prefix.hidden_shape, tuple(first.stride), tuple(first.padding),
        z1, w2, prefix.output_shape, tuple(second.stride), tuple(second.padding), z2, *dense,
    )
    if dense:
        with torch.no_grad():
            output = prefix.dense_head[1]
            logits = nn.functional.linear(torch.from_numpy(rows).relu_(), output.weight, output.bias)
            scores = (logits * torch.from_numpy(weights)[:, None, :]).sum(-1).numpy()
    else:
        scores = _scores(prefix, rows, weights)
    return scores.reshape(n, len(row_lo), len(col_lo))


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
    rows = rows_per_pass_for(rows_per_pass, int(np.prod(prefix.output_shape)))
    piece = max(1, min(steps, rows))  # curve rows per kernel call (a piece restarts from base: same rows)
    group = max(1, rows // piece)
    for start in range(0, n_all, group):
        sl = slice(start, min(start + group, n_all))
        n = sl.stop - sl.start
        b = np.ascontiguousarray(base[sl], np.float32)
        sub = np.ascontiguousarray(substrate[sl], np.float32).reshape(n, -1)
        z1, z2 = _opening_layers(prefix, b)
        for j0 in range(0, steps, piece):
            j = slice(j0, j0 + piece)
            z2_rows = _ext.relu_perturbed_forward(
                b.reshape(n, -1), sub, np.ascontiguousarray(order[sl]), np.ascontiguousarray(lo[sl, j]),
                np.ascontiguousarray(hi[sl, j]), w1, prefix.input_shape, prefix.hidden_shape, tuple(first.stride),
                tuple(first.padding), z1, w2, prefix.output_shape, tuple(second.stride), tuple(second.padding), z2,
            )
            scores[sl, j] = _scores(prefix, z2_rows, weights[sl])
    return scores

