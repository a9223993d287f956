"""The relu-path from a bundle, without torch: the opening Conv -> ReLU -> Conv as arrays, the tail as arrays or a graph.

A bundle whose classifier opens with Conv -> ReLU -> Conv carries ``relu_path.bin`` and a manifest
entry ``relu_path`` (written by :mod:`xaisdk.deploy.relu_path_export`). :func:`parse_relu_path` checks
that entry and the file's bytes (hash verified by the caller) against the bundle's input shape and
class count; :class:`BundleOpening` runs the split for :func:`xaisdk.runtime.relu_path_core.path_integrated_gradients`
(numpy convolutions, BLAS; the tail in numpy or through a gradient graph of the tail); and
:func:`prove_opening` checks on probe inputs that the split gives the classifier's own scores before
anything uses it. Imports numpy and the extension only.

>>> entry = {"file": "relu_path.bin", "tail": "graph", "hidden_shape": [2, 3, 3], "output_shape": [1, 1, 1],
...          "first": {"stride": [1, 1], "padding": [0, 0]}, "second": {"stride": [1, 1], "padding": [0, 0]},
...          "arrays": [["first.weight", [2, 1, 3, 3]], ["second.weight", [1, 2, 3, 3]]]}
>>> spec = parse_relu_path(entry, bytes(4 * 36), (1, 5, 5), 3, "bundle/manifest.json")
>>> spec.hidden_shape, spec.arrays["second.weight"].shape
((2, 3, 3), (1, 2, 3, 3))
>>> parse_relu_path(entry, bytes(8), (1, 5, 5), 3, "bundle/manifest.json")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
xaisdk.errors.InputError: bundle/manifest.json: relu_path: relu_path.bin holds 8 bytes, but its arrays need 144
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime.conv_numpy import conv2d, conv2d_input, conv_output_size
from xaisdk.runtime.relu_path_core import dense_tail_gradient, path_integrated_gradients

__all__ = ["RELU_PATH_FILE", "RELU_PATH_TAIL", "TAIL_INPUT", "BundleOpening", "ReluPathSpec", "parse_relu_path",
           "prove_opening"]

RELU_PATH_FILE = "relu_path.bin"
RELU_PATH_TAIL = "relu_path_tail"
"""The graph role of the tail's gradient graph (inputs ``z2``, ``w``; outputs ``score``, ``grad``)."""
TAIL_INPUT = "z2"
MAX_ARRAY_VALUES = 1 << 28
MAX_UNITS = 1 << 26
"""Most values per image of either convolution's output (what a manifest may make the loader allocate per image)."""
MAX_WINDOW_VALUES = 1 << 25
"""Most values of one image's window matrix in either convolution (output positions x C x KH x KW): 256 MiB in
float64, what the numpy convolutions hold for one image (VGG-16's second layer at 224 px needs 2.9e7)."""
_NAMES = ("input.scale", "input.shift", "first.weight", "first.bias", "second.weight", "second.bias", "hidden.weight",
          "hidden.bias", "output.weight", "output.bias")
PROBE_TOLERANCE = 1e-4
"""Largest difference, relative to the largest |score|, between the split's scores and the classifier's on probes."""
GRADIENT_PROBE_TOLERANCE = 1e-3
"""The same for input gradients (float32 sums in another order; a wrong gradient is off by order 1)."""

TailGradient = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(z2 (M, *output_shape), w (M, K)) -> (score (M,), grad (M, *output_shape))``: the tail graph's run."""


@dataclass(frozen=True)
class ReluPathSpec:
    """A bundle's relu-path entry, checked: arrays by name, geometry, shapes per image and the tail's kind."""

    arrays: dict[str, np.ndarray]
    first_stride: tuple[int, int]
    first_padding: tuple[int, int]
    second_stride: tuple[int, int]
    second_padding: tuple[int, int]
    input_shape: tuple[int, int, int]
    hidden_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    tail: str


def _ints(value: Any, count: int, low: int, what: str, where: str) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) != count
            or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= 1 << 20 for v in value)):
        raise InputError(f"{where}: relu_path: {what} must be {count} integers >= {low}, got {value!r}")
    return tuple(value)


def _arrays(listing: Any, data: bytes, where: str) -> dict[str, np.ndarray]:
    if not isinstance(listing, list) or not listing:
        raise InputError(f"{where}: relu_path: arrays must list [name, shape] pairs")
    shapes: dict[str, tuple[int, ...]] = {}
    for item in listing:
        if not (isinstance(item, list) and len(item) == 2 and item[0] in _NAMES and item[0] not in shapes
                and isinstance(item[1], list) and 1 <= len(item[1]) <= 4):
            raise InputError(f"{where}: relu_path: bad array entry {item!r} (names: {', '.join(_NAMES)}, each once)")
        shapes[item[0]] = _ints(item[1], len(item[1]), 1, f"the shape of {item[0]}", where)
    counts = [math.prod(shape) for shape in shapes.values()]
    if max(counts) > MAX_ARRAY_VALUES:
        raise InputError(f"{where}: relu_path: an array of more than {MAX_ARRAY_VALUES} values")
    if 4 * sum(counts) != len(data):
        raise InputError(f"{where}: relu_path: {RELU_PATH_FILE} holds {len(data)} bytes, but its arrays need {4 * sum(counts)}")
    flat = np.frombuffer(data, "<f4").astype(np.float32)
    if not np.isfinite(flat).all():
        raise InputError(f"{where}: relu_path: {RELU_PATH_FILE} holds NaN or infinite values")
    arrays, start = {}, 0
    for (name, shape), count in zip(shapes.items(), counts):
        arrays[name] = np.ascontiguousarray(flat[start:start + count].reshape(shape))
        start += count
    return arrays


def parse_relu_path(entry: Any, data: bytes, input_shape: tuple[int, int, int], num_classes: int, where: str) -> ReluPathSpec:
    """The manifest's ``relu_path`` entry with its file's (verified) bytes, checked against the bundle's input
    shape and class count: every shape must chain (InputError naming what does not)."""
    if not isinstance(entry, dict) or entry.get("file") != RELU_PATH_FILE or entry.get("tail") not in ("dense", "graph"):
        raise InputError(f"{where}: relu_path must name file {RELU_PATH_FILE!r} and tail 'dense' or 'graph'")
    arrays = _arrays(entry.get("arrays"), data, where)
    geometry = {}
    for layer in ("first", "second"):
        part = entry.get(layer)
        if not isinstance(part, dict):
            raise InputError(f"{where}: relu_path: {layer} must give stride and padding")
        geometry[layer] = (_ints(part.get("stride"), 2, 1, f"{layer}.stride", where),
                           _ints(part.get("padding"), 2, 0, f"{layer}.padding", where))
    hidden = _ints(entry.get("hidden_shape"), 3, 1, "hidden_shape", where)
    output = _ints(entry.get("output_shape"), 3, 1, "output_shape", where)
    for name, shape in (("hidden_shape", hidden), ("output_shape", output)):
        if math.prod(shape) > MAX_UNITS:
            raise InputError(f"{where}: relu_path: {name} {list(shape)} has more than {MAX_UNITS} values per image")
    _chain(arrays, "first", input_shape, hidden, geometry["first"], where)
    _chain(arrays, "second", hidden, output, geometry["second"], where)
    scale, shift = arrays.get("input.scale"), arrays.get("input.shift")
    if (scale is None) != (shift is None) or scale is not None and not scale.shape == shift.shape == (input_shape[0],):
        raise InputError(f"{where}: relu_path: input.scale and input.shift come together, each of shape ({input_shape[0]},)")
    if entry["tail"] == "dense":
        features = math.prod(output)
        hw, ow = arrays.get("hidden.weight"), arrays.get("output.weight")
        if hw is None or ow is None or hw.shape[1:] != (features,) or ow.shape != (num_classes, hw.shape[0]):
            raise InputError(f"{where}: relu_path: a dense tail needs hidden.weight (H, {features}) and output.weight "
                             f"({num_classes}, H)")
        for name, size in (("hidden.bias", hw.shape[0]), ("output.bias", num_classes)):
            if name in arrays and arrays[name].shape != (size,):
                raise InputError(f"{where}: relu_path: {name} must have shape ({size},)")
    elif any(name.startswith(("hidden.", "output.")) for name in arrays):
        raise InputError(f"{where}: relu_path: a graph tail carries no dense arrays")
    return ReluPathSpec(arrays, *geometry["first"], *geometry["second"], input_shape, hidden, output, entry["tail"])


def _chain(arrays: dict[str, np.ndarray], layer: str, given: tuple[int, ...], made: tuple[int, ...],
           geometry: tuple[tuple[int, ...], tuple[int, ...]], where: str) -> None:
    weight, bias = arrays.get(f"{layer}.weight"), arrays.get(f"{layer}.bias")
    if weight is None or weight.ndim != 4 or weight.shape[:2] != (made[0], given[0]):
        raise InputError(f"{where}: relu_path: {layer}.weight must have shape ({made[0]}, {given[0]}, KH, KW)")
    if bias is not None and bias.shape != (made[0],):
        raise InputError(f"{where}: relu_path: {layer}.bias must have shape ({made[0]},)")
    (sh, sw), (ph, pw) = geometry
    size = (conv_output_size(given[1], weight.shape[2], sh, ph), conv_output_size(given[2], weight.shape[3], sw, pw))
    if size != tuple(made[1:]):
        raise InputError(f"{where}: relu_path: {layer} maps {list(given)} to {[made[0], *size]}, not {list(made)}")
    if math.prod(size) * math.prod(weight.shape[1:]) > MAX_WINDOW_VALUES:
        raise InputError(f"{where}: relu_path: {layer}'s window matrix has more than {MAX_WINDOW_VALUES} values per image")


class BundleOpening:
    """The :class:`~xaisdk.runtime.relu_path_core.OpeningLayers` of a bundle's relu-path: numpy convolutions,
    and the tail followed by hand (``dense``) or run by ``tail_graph`` (``graph``)."""

    def __init__(self, spec: ReluPathSpec, tail_graph: TailGradient | None = None) -> None:
        if spec.tail == "graph" and tail_graph is None:
            raise InputError("relu_path: this bundle's tail is a graph, and no runner for it was given")
        self.spec, self.tail_graph = spec, tail_graph
        a = spec.arrays
        self.input_shape, self.hidden_shape, self.output_shape = spec.input_shape, spec.hidden_shape, spec.output_shape
        self.second_weight, self.second_bias = a["second.weight"], a.get("second.bias")
        self.second_stride, self.second_padding = spec.second_stride, spec.second_padding

    def first(self, images: np.ndarray) -> np.ndarray:
        s = self.spec
        if "input.scale" in s.arrays:  # the pixel pipeline's per-channel affine, before the padding as in the graph
            images = images * s.arrays["input.scale"].astype(np.float64)[:, None, None] + s.arrays["input.shift"][:, None, None]
        out = conv2d(images, s.arrays["first.weight"], s.arrays.get("first.bias"), s.first_stride, s.first_padding,
                     accumulate=np.float64)
        return out.reshape(len(images), -1)

    def second_linear(self, hidden: np.ndarray) -> np.ndarray:
        out = conv2d(hidden, self.second_weight, None, self.second_stride, self.second_padding, accumulate=np.float64)
        return out.reshape(len(hidden), -1)

    def second_transpose(self, grad: np.ndarray) -> np.ndarray:
        grad = grad.reshape(len(grad), *self.output_shape)
        out = conv2d_input(grad, self.second_weight, self.hidden_shape[1:], self.second_stride, self.second_padding,
                           accumulate=np.float64)
        return out.reshape(len(grad), -1)

    def first_transpose(self, grad: np.ndarray) -> np.ndarray:
        s = self.spec
        out = conv2d_input(grad.reshape(len(grad), *self.hidden_shape), s.arrays["first.weight"], self.input_shape[1:],
                           s.first_stride, s.first_padding, accumulate=np.float64)
        if "input.scale" in s.arrays:  # the affine's linear part, transposed: its scale
            out *= s.arrays["input.scale"][:, None, None]
        return out

    def tail_gradient(self, z2: np.ndarray, weights: np.ndarray) -> np.ndarray:
        a = self.spec.arrays
        if self.spec.tail == "dense":
            return dense_tail_gradient(z2, weights, a["hidden.weight"], a.get("hidden.bias"), a["output.weight"])
        n, steps, features = z2.shape
        rows = np.repeat(np.asarray(weights, np.float32), steps, axis=0)
        _, grad = self.tail_graph(z2.reshape(n * steps, *self.output_shape), rows)
        return grad.reshape(n, steps, features)

    def scores(self, images: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``weights[n] . logits`` (N,) of images, through the split (for :func:`prove_opening`)."""
        z2 = conv2d(np.maximum(self.first(images), 0.0).reshape(len(images), *self.hidden_shape), self.second_weight,
                    self.second_bias, self.second_stride, self.second_padding)
        a = self.spec.arrays
        if self.spec.tail == "graph":
            return self.tail_graph(z2, np.asarray(weights, np.float32))[0]
        hidden = np.maximum(z2.reshape(len(images), -1), 0.0) @ a["hidden.weight"].T + a.get("hidden.bias", 0.0)
        logits = np.maximum(hidden, 0.0) @ a["output.weight"].T + a.get("output.bias", 0.0)
        return (logits * weights).sum(1)


def prove_opening(opening: BundleOpening, classifier_gradient: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                  value_range: tuple[float, float], num_classes: int, where: str) -> None:
    """Raise InputError unless ``opening`` gives the scores and input gradients of ``classifier_gradient`` (the
    bundle's gradient graph: ``(x, w) -> (score, grad)``) on probe inputs spanning ``value_range``: scores on
    random images and both ends, gradients (one path point at x itself, through every piece the IG loop uses:
    the kernels, both transposes, the tail's gradient) on the random ones, where ties are unlikely. A relu-path
    that is not the classifier's own function, forward or backward (a file edited together with its hash, a
    tail graph whose score is right and gradient not, a writer's bug), is never used."""
    rng = np.random.default_rng(0)
    low, high = value_range
    shape = opening.input_shape
    randoms = low + (high - low) * rng.random((4, *shape), dtype=np.float32)
    probes = np.concatenate([randoms, np.full((1, *shape), low, np.float32), np.full((1, *shape), high, np.float32)])
    weights = rng.normal(size=(len(probes), num_classes)).astype(np.float32)
    want_scores, want_grads = classifier_gradient(probes, weights)
    gaps = {"scores": _gap(opening.scores(probes, weights), want_scores, PROBE_TOLERANCE)}
    # IG with the single point a = 1 from b = x - 1 is the gradient at x
    grads = path_integrated_gradients(opening, randoms, randoms - 1, weights[:4], np.ones(1), np.ones(1))
    gaps["gradients"] = _gap(grads, want_grads[:4], GRADIENT_PROBE_TOLERANCE)
    missed = {k: v for k, v in gaps.items() if v is not None}
    if missed:
        said = ", ".join(f"{k} by {v:.3g}" for k, v in missed.items())
        raise InputError(f"{where}: the relu-path split ({RELU_PATH_FILE}) does not reproduce the classifier graph's "
                         f"{said} (relative) on probe inputs; the bundle was altered: re-export it")


def _gap(got: np.ndarray, want: np.ndarray, tolerance: float) -> float | None:
    """The largest difference relative to the largest |want|, when it exceeds ``tolerance`` (or is not finite)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    gap = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-6))
    return None if np.isfinite(gap) and gap <= tolerance else gap
