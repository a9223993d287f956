"""Channels-last batches in TorchBackend: used where they give the model's own answer, refused for models
whose code depends on strides (each built to be fooled by a layout change), re-decided when the model changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import Fn, randomize_batch_norms
from torch import nn

from xaisdk.torch_runtime.torch_backend import TorchBackend


def _conv(head: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), head).eval()
    return randomize_batch_norms(net)


def _plain_reference(net: nn.Module, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, scores and input gradients of the module on ordinary (contiguous) tensors."""
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = net(xt)
    scores = (logits * torch.from_numpy(w)).sum(1)
    (grad,) = torch.autograd.grad(scores.sum(), xt)
    return logits.detach().numpy(), scores.detach().numpy(), grad.numpy()


def _flat_linear() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(6 * 8 * 8, 4))


class ContiguousOnlyBranch(nn.Module):
    """Answers differently when its input is not contiguous: a layout change would change the function."""

    def __init__(self) -> None:
        super().__init__()
        self.head = _flat_linear()

    def forward(self, h):
        out = self.head(h)
        return out if h.is_contiguous() else out * 2.0


class StridedWindows(nn.Module):
    """Reads its input through as_strided with strides that assume the contiguous layout."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6 * 4 * 8 * 8 // 4, 4)

    def forward(self, h):
        n = h.shape[0]
        pieces = torch.as_strided(h, (n, 6, 4, 16), (6 * 64, 64, 16, 1))
        return self.head(pieces.reshape(n, -1))


CASES = {
    "flatten": (lambda: _flat_linear(), True),
    "view_flatten": (lambda: nn.Sequential(Fn(lambda h: h.view(h.size(0), -1)), _flat_linear()[1]), False),
    "is_contiguous_branch": (ContiguousOnlyBranch, False),
    "as_strided": (StridedWindows, False),
}


@pytest.mark.parametrize("case", CASES)
def test_backend_answers_the_models_own_function(case):
    make, channels_last = CASES[case]
    net = _conv(make())
    backend = TorchBackend(net, input_shape=(3, 8, 8))
    rng = np.random.default_rng(0)
    x = rng.random((5, 3, 8, 8)).astype(np.float32)
    w = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]] - np.eye(4, dtype=np.float32)[[1, 2, 3, 0, 2]]
    logits, scores, grads = _plain_reference(net, x, w)
    for _ in range(2):  # the deciding call, then a decided one
        got_scores, got_grads = backend.score_gradient(x, w)
        np.testing.assert_allclose(got_scores, scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_grads, grads, rtol=1e-4, atol=1e-6 * np.abs(grads).max())
        np.testing.assert_allclose(backend.logits(x), logits, rtol=1e-5, atol=1e-6)
    assert backend._layout.decided() is channels_last


def test_a_changed_model_is_decided_again():
    net = _conv(_flat_linear())
    backend = TorchBackend(net, input_shape=(3, 8, 8))
    x = np.random.default_rng(1).random((3, 3, 8, 8)).astype(np.float32)
    w = np.tile(np.array([[1.0, -1.0, 0.0, 0.0]], np.float32), (3, 1))
    backend.score_gradient(x, w)
    assert backend._layout.decided() is True
    net[3] = ContiguousOnlyBranch()  # swapped after the decision: a new model state
    _, scores, grads = _plain_reference(net, x, w)
    got_scores, got_grads = backend.score_gradient(x, w)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_grads, grads, rtol=1e-4, atol=1e-6 * np.abs(grads).max())
    assert backend._layout.decided() is False


def test_one_channel_and_convolution_free_models_are_left_alone():
    gray = TorchBackend(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)), input_shape=(1, 8, 8))
    mlp = TorchBackend(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)), input_shape=(3, 8, 8))
    for backend in (gray, mlp):
        assert not backend._layout.eligible and backend._layout.decided() is False
