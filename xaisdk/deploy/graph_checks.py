"""The checks every export runs on its graphs, torch-free (shared by the torch and ONNX intakes).

>>> relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0001])) < 1e-4
True
>>> completeness_error(np.ones((2, 3)), np.array([3.0, 3.0]), np.array([0.0, 0.0]))
0.0
"""

from __future__ import annotations

import numpy as np
import onnx

from xaisdk.deploy.allowlist import disallowed_nodes
from xaisdk.deploy.grad_context import UnsupportedOpError

__all__ = ["TOLERANCE", "checked_graph", "completeness_error", "random_class_pairs", "relative_error"]

TOLERANCE = 1e-4


def checked_graph(model: onnx.ModelProto, role: str) -> bytes:
    """The serialised graph, after the ONNX checker and TensorRT's op allow-list (UnsupportedOpError otherwise)."""
    onnx.checker.check_model(model, full_check=True)
    problems = disallowed_nodes(model)
    if problems:
        raise UnsupportedOpError(f"{role}: the graph uses ops outside TensorRT's ONNX op set: " + "; ".join(problems[:5]))
    return model.SerializeToString()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference relative to the largest reference magnitude (0 for empty arrays)."""
    if not want.size:
        return 0.0
    scale = max(float(np.abs(want).max()), 1e-12)
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max() / scale)


def completeness_error(attributions: np.ndarray, score: np.ndarray, baseline_score: np.ndarray) -> float:
    """``max |sum(attributions) - (S(x) - S(b))|`` relative to the largest score gap (DeepLIFT's axiom)."""
    gap = np.asarray(score, np.float64) - np.asarray(baseline_score, np.float64)
    sums = np.asarray(attributions).reshape(len(gap), -1).sum(1, dtype=np.float64)
    return float(np.abs(sums - gap).max() / max(float(np.abs(gap).max()), 1e-12))


def random_class_pairs(rng: np.random.Generator, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random (source, target) class pairs with source != target."""
    source = rng.integers(0, num_classes, n)
    target = (source + rng.integers(1, num_classes, n)) % num_classes
    return source, target
