"""ExplainGAN on ONNX Runtime, without torch: runs ``explaingan.onnx`` written by
:func:`xaisdk.deploy.explaingan_export.export_explaingan_onnx` (imports only numpy and onnxruntime).

The graph decides each image's source side with the classifier inside it, so one call gives the
transformed image, mask, composite, source class and the probability that the composite flipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime.bundle import MANIFEST, Bundle, read_bundle
from xaisdk.runtime.bundle_integrity import read_onnx_file
from xaisdk.runtime.onnxruntime_backend import _onnxruntime, load_session, run_session

__all__ = ["OnnxExplainGAN", "ExplainGANResult", "check_images", "fixed_dims", "graph_source"]

_OUTPUTS = ("transformed", "mask", "composite", "source", "flipped_prob")


@dataclass(frozen=True)
class ExplainGANResult:
    """What ExplainGAN's ``transform`` returns (torch or ONNX Runtime), one row per input image (numpy).

    * ``transformed`` (N, C, H, W): ``G_{1-j}(E_j(x))``, the image of the other class;
    * ``mask`` (N, 1, H, W) in [0, 1]: where the change was made (all ones for a ``no_mask`` model);
    * ``composite`` (N, C, H, W): ``x (1 - mask) + transformed mask``, equal to ``x`` where the mask is 0;
    * ``source`` (N,) int64: the classifier's class ``j`` of the input; the target is ``1 - source``;
    * ``flipped_prob`` (N,): the classifier's probability of ``1 - source`` on the composite (> 0.5:
      the composite crossed the boundary).
    """

    transformed: np.ndarray
    mask: np.ndarray
    composite: np.ndarray
    source: np.ndarray
    flipped_prob: np.ndarray

    @property
    def flipped(self) -> np.ndarray:
        """Boolean (N,): the classifier calls the composite the other class."""
        return self.flipped_prob > 0.5


def check_images(x: object, input_shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as a C-contiguous float32 batch (N, C, H, W) of ``input_shape``; :class:`InputError` otherwise.

    >>> check_images(np.zeros((2, 1, 28, 28)), (1, 28, 28)).dtype
    dtype('float32')
    >>> try:
    ...     check_images(np.zeros((1, 28, 28)), (1, 28, 28))
    ... except InputError as err:
    ...     print(err)
    x: expected a batch (N, 1, 28, 28), got shape (1, 28, 28)
    """
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()  # type: ignore[attr-defined]
    array = np.asarray(x)
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(input_shape):
        raise InputError(f"x: expected a batch (N, {', '.join(map(str, input_shape))}), got shape {array.shape}")
    if len(array) == 0:
        raise InputError("x: the batch is empty")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"x: expected real numbers, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise InputError("x: contains NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def graph_source(source: object, role: str, what: str) -> tuple[bytes, Path, Any]:
    """The bytes of a counterfactual graph, where they came from (for messages) and the bundle, if any.

    ``source``: a :class:`~xaisdk.runtime.bundle.Bundle` or a bundle folder (the verified bytes of its
    ``role`` graph), a folder without a manifest holding ``<role>.onnx``, or an ``.onnx`` file. Bare
    files are read once, bounded and scanned (:func:`~xaisdk.runtime.bundle_integrity.read_onnx_file`);
    the bytes are what the session runs, so the file is never reopened.

    >>> graph_source(3, "explaingan", "OnnxExplainGAN")
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: OnnxExplainGAN: expected a bundle, a bundle folder or an .onnx file, got int
    """
    if not isinstance(source, (Bundle, str, os.PathLike)):
        raise InputError(f"{what}: expected a bundle, a bundle folder or an .onnx file, got {type(source).__name__}")
    if not isinstance(source, Bundle):
        path = Path(source)
        if not path.is_dir():
            return read_onnx_file(path), path, None
        if not (path / MANIFEST).exists():
            return read_onnx_file(path / f"{role}.onnx"), path / f"{role}.onnx", None
        source = read_bundle(path)
    spec = source.graphs.get(role)
    if spec is None:
        raise InputError(f"{source.path}: the bundle has no {role} graph; export it with `xaisdk export --{role} ...`")
    return spec.data, source.path / spec.file, source


def fixed_dims(dims: Sequence[object], where: Path, name: str) -> tuple[int, ...]:
    """The static dimensions after the batch of a graph input; InputError when any is symbolic.

    >>> fixed_dims(["N", 1, 28, 28], Path("g.onnx"), "x")
    (1, 28, 28)
    >>> fixed_dims(["N", "d1", 28, 28], Path("g.onnx"), "x")
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: g.onnx: input 'x' must have fixed sizes after the batch, got ['N', 'd1', 28, 28]
    """
    rest = list(dims)[1:]
    if not rest or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in rest):
        raise InputError(f"{where}: input {name!r} must have fixed sizes after the batch, got {list(dims)}")
    return tuple(int(d) for d in rest)  # type: ignore[arg-type]


class OnnxExplainGAN:
    """Run an exported ExplainGAN graph with ONNX Runtime.

    Args:
        source: a bundle (:class:`~xaisdk.runtime.bundle.Bundle` or folder) with an ``explaingan`` graph,
            whose verified bytes are run; or ``explaingan.onnx`` (or a folder holding it) on its own.
        providers: execution providers; None picks CPU (the graph is tiny).
        chunk_size: most images per session run.

    Example (needs an exported graph)::

        eg = OnnxExplainGAN("bundle/")
        result = eg.transform(x)   # x float32 (N, 1, 28, 28)
    """

    def __init__(self, source: Any, providers: Sequence[str] | None = None, chunk_size: int = 256) -> None:
        _onnxruntime()
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise InputError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
        data, path, bundle = graph_source(source, "explaingan", "OnnxExplainGAN")
        self.session = load_session(data, path, providers=list(providers or ["CPUExecutionProvider"]))
        inputs = self.session.get_inputs()
        outputs = tuple(o.name for o in self.session.get_outputs())
        if [i.name for i in inputs] != ["x"] or outputs != _OUTPUTS:
            raise InputError(f"{path}: not an ExplainGAN graph (inputs {[i.name for i in inputs]}, outputs {list(outputs)})")
        self.input_shape = fixed_dims(inputs[0].shape, path, "x")
        if bundle is not None and self.input_shape != tuple(bundle.input_shape):
            raise InputError(f"{path}: takes {self.input_shape} images but the bundle's images are {bundle.input_shape}")
        meta = self.session.get_modelmeta().custom_metadata_map
        names = tuple(meta.get("xaisdk.class_names", "0,1").split(","))
        if len(names) != 2 or len(set(names)) != 2:
            raise InputError(f"{path}: metadata xaisdk.class_names must name two different classes, got {list(names)}")
        self.class_names = names
        self.chunk_size = int(chunk_size)
        self.path = path

    def transform(self, x: np.ndarray) -> ExplainGANResult:
        """Transformed image, mask, composite, source class and flipped probability for each image."""
        images = check_images(x, self.input_shape)
        parts = [run_session(self.session, _OUTPUTS, {"x": images[s:s + self.chunk_size]}, self.path)
                 for s in range(0, len(images), self.chunk_size)]
        joined = [np.concatenate([p[k] for p in parts]) for k in range(len(_OUTPUTS))]
        return ExplainGANResult(*joined[:3], joined[3].astype(np.int64), joined[4])
