"""The learned inpainter on ONNX Runtime, without torch: the ``inpainter`` graph of a bundle, or a bare
``inpainter.onnx`` written by :func:`xaisdk.deploy.export.export_inpainter_onnx`.

From a bundle, the input shape and value range are the manifest's; a bare file carries them in its
graph (static ``x`` dims) and model metadata (``xaisdk.value_range``; (0, 1) when absent).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime.bundle import Bundle, read_bundle
from xaisdk.runtime.bundle_integrity import read_onnx_file
from xaisdk.runtime.inpainting import check_images_and_masks, composite
from xaisdk.runtime.onnxruntime_backend import _onnxruntime, load_session, pick_providers, run_session

__all__ = ["OnnxInpainter"]


def _graph_bytes(source: object) -> tuple[bytes, Path, Bundle | None]:
    """The inpainter graph's bytes, where they came from (for messages) and the bundle, if any."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        return read_onnx_file(source), Path(source), None
    if not isinstance(source, (Bundle, str, os.PathLike)):
        raise InputError(f"bundle_or_onnx_path: expected a bundle folder, a Bundle or an .onnx file, got "
                         f"{type(source).__name__}")
    bundle = source if isinstance(source, Bundle) else read_bundle(source)
    spec = bundle.graphs.get("inpainter")
    if spec is None:
        raise InputError(f"{bundle.path}: the bundle has no inpainter graph; export it with "
                         "`xaisdk export --inpainter inpainter.pt`")
    return spec.data, bundle.path / spec.file, bundle


class OnnxInpainter:
    """The :class:`~xaisdk.runtime.inpainting.Inpainter` of an exported learned inpainter, run by ONNX Runtime.

    Args:
        bundle_or_onnx_path: a bundle folder (``xaisdk export --inpainter``), a loaded
            :class:`~xaisdk.runtime.bundle.Bundle`, or an ``.onnx`` file with inputs ``x``, ``mask``
            and output ``image``.
        providers: execution providers; None picks them (TensorRT, CUDA, CPU: see
            :func:`~xaisdk.runtime.onnxruntime_backend.pick_providers`).
        chunk_size: most rows per session run (graphs with a fixed batch run, padded, at that batch).

    ``inpaint`` is safe to call from many threads (``InferenceSession.run`` is).

    Example (needs a bundle exported with an inpainter)::

        inpainter = OnnxInpainter("bundle/")
        filled = inpainter.inpaint(x, mask)
    """

    def __init__(self, bundle_or_onnx_path: Bundle | str | os.PathLike, providers: Sequence[str] | None = None,
                 chunk_size: int = 256) -> None:
        ort = _onnxruntime()
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise InputError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
        data, where, bundle = _graph_bytes(bundle_or_onnx_path)
        self.providers = pick_providers(providers)
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = load_session(data, where, providers=self.providers, options=options)
        self.path = where
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {"x", "mask"} or outputs != ["image"]:
            raise InputError(f"{where}: not an inpainter graph (inputs {sorted(inputs)}, outputs {outputs}; expected "
                             "inputs x, mask and output image)")
        x_dims = list(inputs["x"].shape)
        if bundle is None:
            if len(x_dims) != 4 or not all(isinstance(d, int) and d > 0 for d in x_dims[1:]):
                raise InputError(f"{where}: input x must be (N, C, H, W) with fixed C, H, W, got {x_dims}")
            props = self.session.get_modelmeta().custom_metadata_map
            shape, batch = (x_dims[1], x_dims[2], x_dims[3]), x_dims[0] if isinstance(x_dims[0], int) else None
            try:
                low, high = (float(v) for v in json.loads(props.get("xaisdk.value_range", "[0.0, 1.0]")))
            except (ValueError, TypeError):
                raise InputError(f"{where}: metadata xaisdk.value_range is not [low, high]") from None
            name = props.get("xaisdk.name")
        else:
            if len(x_dims) != 4 or [d for d in x_dims[1:] if isinstance(d, int)] != list(bundle.input_shape):
                raise InputError(f"{where}: input x is {x_dims} in the graph but the bundle's images are "
                                 f"{bundle.input_shape}")
            shape, batch, (low, high) = bundle.input_shape, bundle.batch, bundle.value_range
            described = bundle.manifest.get("inpainter")
            name = described.get("name") if isinstance(described, dict) else None
            name = name if isinstance(name, str) else None
        self.input_shape: tuple[int, int, int] = tuple(int(v) for v in shape)  # type: ignore[assignment]
        self.value_range: tuple[float, float] = (low, high)
        self.batch: int | None = batch
        self.name = f"onnx-{name}" if name else "onnx-inpainter"
        self.rows = self.batch or int(chunk_size)

    def graph_output(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The graph's ``image`` output as is (no second composite), run in chunks; for verification."""
        images, masks = check_images_and_masks(x, mask, image_shape=self.input_shape)
        pieces = []
        for start in range(0, len(images), self.rows):
            chunk = {"x": images[start:start + self.rows], "mask": masks[start:start + self.rows]}
            used = len(chunk["x"])
            if self.batch is not None and used < self.rows:
                chunk = {k: np.concatenate([v, np.zeros((self.rows - used, *v.shape[1:]), np.float32)])
                         for k, v in chunk.items()}
            pieces.append(run_session(self.session, ["image"], chunk, self.path)[0][:used])
        return np.concatenate(pieces)

    def inpaint(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``x`` float32 (N, C, H, W) with the pixels where the binary ``mask`` (N, 1, H, W) is 1 inpainted."""
        images, masks = check_images_and_masks(x, mask, image_shape=self.input_shape)
        return composite(images, self.graph_output(images, masks), masks)
