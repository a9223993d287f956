"""The C++ IG loop driven by a numpy gradient function reproduces the torch reference IG on the
shipped classifier (the path a numpy backend such as ONNX Runtime will take)."""

from __future__ import annotations

import numpy as np
import torch

from xaisdk.attribution import integrated_gradients, path_rule
from xaisdk.models import class_weights
from xaisdk.runtime import ig_loop, integrated_gradients_loop


def test_ig_loop_over_numpy_gradients_matches_torch_ig(shipped, digits):
    assert ig_loop.BACKEND == "cpp", "the C++ extension is not built"
    x = digits.test.x[:5]
    source, target = np.array([0, 1, 2, 3, 4]), np.array([9, 8, 7, 6, 5])
    baseline = digits.train.x[:5]
    weights_matrix = class_weights(source, target, 10)
    alphas, weights = path_rule("gausslegendre", 32)
    n_steps = len(alphas)
    calls = {"rows": 0}

    def grad_fn(batch: np.ndarray) -> np.ndarray:
        # rows arrive sample-major: row k of the whole stream belongs to sample k // n_steps
        rows = np.arange(calls["rows"], calls["rows"] + len(batch)) // n_steps
        calls["rows"] += len(batch)
        xt = torch.from_numpy(batch.copy()).requires_grad_(True)
        score = (shipped.model(xt) * weights_matrix[torch.from_numpy(rows)]).sum()
        return torch.autograd.grad(score, xt)[0].numpy()

    ours = integrated_gradients_loop(grad_fn, x, baseline, alphas, weights, chunk_size=48)
    reference = integrated_gradients(
        shipped, x, source=source, target=target, baseline=baseline, n_steps=32, rule="gausslegendre"
    )
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)
    assert calls["rows"] == 5 * n_steps
