"""Gradient checks at kinks: torch's gradient with ONNX Runtime's ReLU and max-pool decisions imposed.

A ReLU's input within float32 rounding of 0, or a max-pool window whose top two values are that
close, can go one way in torch and the other in ONNX Runtime (the exporter folds batch norms into
the convolutions, and ONNX Runtime sums in another order). The gradient graph then follows a
different, equally valid subgradient, and one such unit in a ResNet-50 moves the whole input
gradient by percents. :func:`routed_gradient` tells that apart from a wrong rule: it reads the
inputs of every ``Relu`` and ``MaxPool`` of the classifier graph from ONNX Runtime, runs the torch
model with those decisions imposed (ReLU masks, max-pool argmaxes, matched to torch's
``relu`` / ``max_pool2d`` calls in order, each checked by shape and value), and reports how far
each differing decision was from a tie in torch's own values. Everything but the decisions at
near-ties is still compared with torch autograd, so a wrong rule shows exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["NEAR_TIE", "Routed", "onnx_decision_inputs", "routed_gradient"]

NEAR_TIE = 1e-4
"""A decision counts as a near-tie when its margin in torch's values (|ReLU input|, or the max-pool
window's best value minus the value ONNX Runtime picked) is at most this times the tensor's largest
magnitude: what reassociated sums and folded batch norms move values by, after 50 layers (ResNet-50
at 224 px: 53 decisions differ, the largest margin 1.8e-5). A wrong routing picks values far below."""

_RELU = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_MAX_POOL = {F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d}
_ROUTED_OPS = ("Relu", "MaxPool")


@dataclass
class Routed:
    """The torch gradient with ONNX Runtime's decisions imposed, and what it took."""

    grad: np.ndarray
    flips: int
    """Decisions (ReLU units, max-pool windows) where ONNX Runtime and torch differ."""
    max_margin: float
    """The largest margin, relative to its tensor's scale, of a differing decision (0 when none)."""


def onnx_decision_inputs(model: onnx.ModelProto, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``(op type, input)`` of every ``Relu`` and ``MaxPool`` node of ``model`` (graph order), run by
    ONNX Runtime on ``x`` (single-threaded CPU).

    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    ...                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
    ...                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    >>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    >>> onnx_decision_inputs(m, np.array([[-1.0, 2.0]], np.float32))[0][0]
    'Relu'
    """
    import onnxruntime as ort

    nodes = [node for node in model.graph.node if node.op_type in _ROUTED_OPS]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None)
                              for node in nodes if node.input[0] not in outputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
    return [(node.op_type, values[node.input[0]]) for node in nodes]


class _Impose(TorchFunctionMode):
    """Replays torch's ReLU and 2-D max-pool calls with ONNX Runtime's decisions."""

    def __init__(self, decisions: list[tuple[str, np.ndarray]]) -> None:
        super().__init__()
        self.decisions = decisions
        self.calls = 0
        self.flips = 0
        self.max_margin = 0.0
        self.mismatch: str | None = None

    def _next(self, op: str, value: torch.Tensor) -> torch.Tensor | None:
        if self.calls >= len(self.decisions):
            self.mismatch = self.mismatch or f"torch makes more {op} calls than the graph has nodes"
            return None
        kind, theirs = self.decisions[self.calls]
        self.calls += 1
        scale = float(value.detach().abs().max()) or 1.0
        if kind != op or tuple(theirs.shape) != tuple(value.shape) or \
                float(np.abs(theirs - value.detach().numpy()).max()) > 1e-3 * scale:
            self.mismatch = self.mismatch or f"call {self.calls} ({op}) does not match graph node {kind}"
            return None
        return torch.from_numpy(theirs).to(value.dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU and self.mismatch is None:
            x = args[0]
            theirs = self._next("Relu", x)
            if theirs is not None:
                ours, mask = x.detach() > 0, theirs > 0
                differ = ours != mask
                if bool(differ.any()):
                    self.flips += int(differ.sum())
                    margin = float(x.detach()[differ].abs().max()) / (float(x.detach().abs().max()) or 1.0)
                    self.max_margin = max(self.max_margin, margin)
                return x * mask.to(x.dtype)
        if func in _MAX_POOL and self.mismatch is None and args[0].dim() == 4:
            return self._max_pool(func, args, kwargs)
        return func(*args, **kwargs)

    def _max_pool(self, func, args, kwargs):
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        params = dict(zip(names, args[1:]))
        params.update({k: v for k, v in kwargs.items() if k in names})
        want_indices = bool(params.pop("return_indices", False)) or func is F.max_pool2d_with_indices
        x = args[0]
        theirs = self._next("MaxPool", x)
        if theirs is None:
            return func(*args, **kwargs)
        _, ours = F.max_pool2d(x.detach(), **params, return_indices=True)
        _, route = F.max_pool2d(theirs, **params, return_indices=True)
        flat = x.flatten(2)
        differ = ours != route
        if bool(differ.any()):
            self.flips += int(differ.sum())
            best, picked = flat.detach().gather(2, ours.flatten(2)), flat.detach().gather(2, route.flatten(2))
            gap = (best - picked).view(ours.shape)[differ]
            self.max_margin = max(self.max_margin, float(gap.abs().max()) / (float(x.detach().abs().max()) or 1.0))
        out = flat.gather(2, route.flatten(2)).view(route.shape)
        return (out, route) if want_indices else out


def routed_gradient(model: nn.Module, forward: onnx.ModelProto | list[tuple[str, np.ndarray]], x: np.ndarray,
                    weights: torch.Tensor, rows: int = 2) -> Routed | None:
    """d(sum_k weights[n, k] logits[n, k]) / dx from torch with ONNX Runtime's ReLU masks and max-pool
    argmaxes (read from the classifier graph ``forward``, or given as :func:`onnx_decision_inputs`
    returns them) imposed, computed in ``model``'s dtype (a float64 copy gives the exact reference
    along the same routes); None when torch's ReLU / max-pool calls cannot be matched one to one with
    the graph's nodes (the comparison then stays strict).

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)).eval()
    >>> import io; buffer = io.BytesIO()
    >>> torch.onnx.export(net, (torch.zeros(1, 1, 6, 6),), buffer, dynamo=False, input_names=["x"])
    >>> r = routed_gradient(net, onnx.load_from_string(buffer.getvalue()), np.ones((1, 1, 6, 6), np.float32),
    ...                     torch.tensor([[1.0, -1.0, 0.0]]))
    >>> r.grad.shape, r.flips
    ((1, 1, 6, 6), 0)
    """
    decisions = forward if isinstance(forward, list) else onnx_decision_inputs(forward, x)
    if not decisions:
        return None
    dtype = next(model.parameters(), torch.empty(0)).dtype
    grads, flips, margin = [], 0, 0.0
    for start in range(0, len(x), rows):  # autograd holds every activation of its rows: a few at a time
        part = slice(start, start + rows)
        xt = torch.from_numpy(x[part]).to(dtype).requires_grad_(True)
        mode = _Impose([(kind, value[part]) for kind, value in decisions])
        with mode:
            score = (model(xt) * weights[part].to(dtype)).sum()
        if mode.mismatch is not None or mode.calls != len(decisions):
            return None
        (grad,) = torch.autograd.grad(score, xt)
        grads.append(grad.numpy())
        flips, margin = flips + mode.flips, max(margin, mode.max_margin)
    return Routed(np.concatenate(grads), flips, margin)
