"""How good a one-vs-one baseline is: does the classifier call it the target class, and how far is it from x.

These are the GANMEX paper's baseline checks: *target success* (``argmax S(B(x, c_t)) == c_t``) and
the baseline distance analysis of its Table 1 (``||x - B(x)||_2`` next to the average intra- and
inter-class distances of the data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xaisdk.errors import InputError


def one_vs_one_pairs(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (input index, target class) pair with target != the input's label.

    >>> idx, tgt = one_vs_one_pairs(np.array([0, 2]), 3)
    >>> idx.tolist(), tgt.tolist()
    ([0, 0, 1, 1], [1, 2, 0, 1])
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise InputError(f"labels: expected a 1-D array of classes in [0, {num_classes - 1}]")
    classes = np.arange(num_classes)
    targets = np.stack([classes[classes != y] for y in labels]) if len(labels) else np.empty((0, num_classes - 1))
    return np.repeat(np.arange(len(labels)), num_classes - 1), targets.reshape(-1).astype(np.int64)


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The classifier's argmax class for each image (eval mode, chunks of ``batch_size``).

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2))
    >>> predict(net, np.zeros((3, 1, 1, 1), np.float32)).shape
    (3,)
    """
    was_training = model.training
    model.eval()
    try:
        out = [model(torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], dtype=np.float32))).argmax(1)
               for s in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def target_success(model: torch.nn.Module, baselines: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of baselines that ``model`` classifies as their target class.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2))
    >>> with torch.no_grad():
    ...     _ = net[1].weight.copy_(torch.tensor([[1.0], [-1.0]])); _ = net[1].bias.zero_()
    >>> target_success(net, np.array([[[[1.0]]], [[[-1.0]]]], np.float32), np.array([0, 0]))
    0.5
    """
    targets = np.asarray(targets)
    if len(baselines) != len(targets):
        raise InputError(f"{len(baselines)} baselines but {len(targets)} targets")
    return float((predict(model, baselines) == targets).mean())


def l2_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample Euclidean distance between two batches of the same shape.

    >>> l2_distance(np.zeros((1, 2)), np.array([[3.0, 4.0]])).tolist()
    [5.0]
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise InputError(f"distance: shapes {x.shape} and {y.shape} differ")
    return np.sqrt(((x - y) ** 2).reshape(len(x), -1).sum(1))


@dataclass(frozen=True)
class ClassDistances:
    """Average L2 distance between random pairs of images of the same class and of different classes."""

    intra: float
    inter: float


def class_distances(x: np.ndarray, y: np.ndarray, n_pairs: int = 20000, seed: int = 0) -> ClassDistances:
    """D_intra and D_inter of the paper's Table 1, from ``n_pairs`` random pairs of each kind.

    >>> x = np.array([[0.0], [0.0], [3.0], [3.0]]); y = np.array([0, 0, 1, 1])
    >>> class_distances(x, y, n_pairs=50)
    ClassDistances(intra=0.0, inter=3.0)
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    first = rng.integers(0, len(x), 4 * n_pairs)
    second = rng.integers(0, len(x), 4 * n_pairs)
    keep = first != second
    first, second = first[keep], second[keep]
    same = y[first] == y[second]
    if same.sum() == 0 or (~same).sum() == 0:
        raise InputError("class distances need at least two classes with two images each")

    def mean_distance(mask: np.ndarray) -> float:
        a, b = first[mask][:n_pairs], second[mask][:n_pairs]
        return float(np.sqrt(((flat[a] - flat[b]) ** 2).sum(1)).mean())

    return ClassDistances(intra=mean_distance(same), inter=mean_distance(~same))
