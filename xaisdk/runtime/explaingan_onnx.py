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

import numpy as np

from xaisdk.errors import InputError

__all__ = ["OnnxExplainGAN", "ExplainGANResult", "check_images"]

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


class OnnxExplainGAN:
    """Run an exported ExplainGAN graph with ONNX Runtime.

    Args:
        onnx_path: ``explaingan.onnx`` (or a folder holding it).
        providers: execution providers; None picks CPU (the graph is tiny).
        chunk_size: most images per session run.

    Example (needs an exported graph)::

        eg = OnnxExplainGAN("bundle/explaingan.onnx")
        result = eg.transform(x)   # x float32 (N, 1, 28, 28)
    """

    def __init__(self, onnx_path: str | os.PathLike, providers: Sequence[str] | None = None,
                 chunk_size: int = 256) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError("OnnxExplainGAN needs onnxruntime: pip install 'xaisdk[serve]'") from None
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise InputError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
        path = Path(onnx_path)
        if path.is_dir():
            path = path / "explaingan.onnx"
        if not path.is_file():
            raise InputError(f"{path}: no such ONNX file")
        try:
            self.session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{path}: ONNX Runtime cannot load this graph ({first[:300]})") from None
        inputs = self.session.get_inputs()
        outputs = tuple(o.name for o in self.session.get_outputs())
        if [i.name for i in inputs] != ["x"] or outputs != _OUTPUTS:
            raise InputError(f"{path}: not an ExplainGAN graph (inputs {[i.name for i in inputs]}, outputs {list(outputs)})")
        dims = inputs[0].shape
        self.input_shape = tuple(int(d) for d in dims[1:])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.class_names = tuple(meta.get("xaisdk.class_names", "0,1").split(","))
        self.chunk_size = int(chunk_size)
        self.path = path

    def transform(self, x: np.ndarray) -> ExplainGANResult:
        """Transformed image, mask, composite, source class and flipped probability for each image."""
        images = check_images(x, self.input_shape)
        parts = [self.session.run(list(_OUTPUTS), {"x": images[s:s + self.chunk_size]})
                 for s in range(0, len(images), self.chunk_size)]
        joined = [np.concatenate([p[k] for p in parts]) for k in range(len(_OUTPUTS))]
        return ExplainGANResult(*joined[:3], joined[3].astype(np.int64), joined[4])
