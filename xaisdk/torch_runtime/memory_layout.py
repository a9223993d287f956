"""Channels-last input batches for convolutional models on the CPU, where they provably change nothing.

oneDNN's convolutions run faster on channels-last (NHWC) tensors: forward + input gradient of 27
images at 224 px, 2 cores, ResNet-18 1.34 s -> 1.04 s and MobileNetV3 226 -> 199 ms; a CifarCNN batch
of 64, 104 -> 88 ms. Only the input's strides change; the numbers differ by float32 rounding. But
a model's own code may depend on strides: ``h.view(n, -1)`` raises on a channels-last activation,
and ``as_strided`` or a branch on ``is_contiguous()`` would silently compute something else. So
:class:`ChannelsLastChoice` decides per model state (:func:`~xaisdk.models.module_state.module_state`:
a layer swapped or a hook added is a new state): the first batch of a state runs both ways, and
channels-last is kept only if it ran and gave the same answer (forward values within 1e-4, gradients
within float32 tie-breaking, see :data:`GRADIENT_AGREEMENT`); an error in a
later call falls back to the plain layout for that state. Needs torch; used by
:class:`~xaisdk.torch_runtime.torch_backend.TorchBackend`.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
>>> choice = ChannelsLastChoice(net, (3, 8, 8))
>>> out = choice.run(lambda t: (net(t),), torch.rand(2, 3, 8, 8))
>>> choice.decided()
True
>>> class ViewFlatten(nn.Module):
...     def forward(self, h):
...         return h.view(h.size(0), -1)  # raises on channels-last activations
>>> net[2] = ViewFlatten()
>>> _ = choice.run(lambda t: (net(t),), torch.rand(2, 3, 8, 8))
>>> choice.decided()
False
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

from xaisdk.models.module_state import module_state

__all__ = ["FORWARD_AGREEMENT", "GRADIENT_AGREEMENT", "ChannelsLastChoice"]

FORWARD_AGREEMENT = 1e-4
"""Largest max|difference| / max|plain| of the forward values (logits or scores) between the two layouts."""
GRADIENT_AGREEMENT = 1e-2
"""Largest sum|difference| / sum|plain| of the other outputs (gradients). Looser on purpose: at points
where a ReLU input or a max-pool window is within float32 rounding of a tie, the two layouts' rounding
may decide differently, which moves single gradient entries by a few percent (zoo ResNet-18 at 224 px
from a dark image: 1.2e-2 max, 6.4e-4 summed; DenseNet-121: 2.7e-2, 3.4e-3). A stride-dependent
model changes its forward values, which are held to 1e-4."""

Outputs = tuple[torch.Tensor, ...]


def _agree(plain: Outputs, fast: Outputs) -> bool:
    if len(plain) != len(fast):
        return False
    for k, (a, b) in enumerate(zip(plain, fast)):
        a, b = a.detach(), b.detach()
        if a.shape != b.shape or not torch.isfinite(b).all():
            return False
        if not a.numel():
            continue
        diff = (a - b).abs()
        if k == 0 and float(diff.max()) > FORWARD_AGREEMENT * float(a.abs().max()) + 1e-12:
            return False
        if k > 0 and float(diff.sum()) > GRADIENT_AGREEMENT * float(a.abs().sum()) + 1e-12:
            return False
    return True


class ChannelsLastChoice:
    """Runs ``compute`` on channels-last batches where that is proven, per model state (see the module docstring)."""

    _KEEP = 8  # model states remembered

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.module = module
        # one channel gains nothing; no convolution, nothing to gain
        self.eligible = len(input_shape) == 3 and input_shape[0] >= 3 and any(
            isinstance(m, nn.Conv2d) for m in module.modules())
        self._decided: dict[tuple, bool] = {}
        self._lock = threading.Lock()

    def decided(self) -> bool | None:
        """Whether channels-last is used for the model as it is now (None: not decided yet)."""
        return self._decided.get(module_state(self.module)) if self.eligible else False

    def _remember(self, state: tuple, value: bool) -> None:
        with self._lock:
            if state not in self._decided and len(self._decided) >= self._KEEP:
                self._decided.pop(next(iter(self._decided)))
            self._decided[state] = value

    def run(self, compute: Callable[[torch.Tensor], Outputs], x: torch.Tensor) -> Outputs:
        """``compute(x)``, on a channels-last copy of ``x`` where proven for the model's state."""
        if not self.eligible or x.ndim != 4:
            return compute(x)
        state = module_state(self.module)
        choice = self._decided.get(state)
        if choice is False:
            return compute(x)
        fast_x = x.contiguous(memory_format=torch.channels_last)
        if choice is True:
            try:
                return compute(fast_x)
            except RuntimeError:  # e.g. a .view that only this batch's path reaches
                self._remember(state, False)
                return compute(x)
        plain = compute(x)
        try:
            fast = compute(fast_x)
        except RuntimeError:
            self._remember(state, False)
            return plain
        self._remember(state, _agree(plain, fast))
        return plain
