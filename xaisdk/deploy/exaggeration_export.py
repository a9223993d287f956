"""Export a Progressive Exaggeration explainer to ONNX: ``exaggeration.onnx``, ``(x, condition) -> image``.

``condition`` is the one-hot bin (N, n_bins) float32; the graph computes ``G(E(x), condition)`` with the
networks in eval mode (conditional batch norm on running statistics). The model metadata records
``xaisdk.target_class``, ``xaisdk.n_bins`` and ``xaisdk.value_range`` so that
:class:`xaisdk.runtime.exaggeration_onnx.OnnxExaggeration` needs nothing else but a logits function.
The export is checked against torch with ONNX Runtime on real-looking inputs for every bin.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaisdk.errors import InputError
from xaisdk.models.exaggeration import ExaggerationModel
from xaisdk.runtime.atomic_files import atomic_write_bytes

EXAGGERATION_ONNX = "exaggeration.onnx"
PARITY_TOLERANCE = 1e-4


def export_exaggeration_onnx(model: ExaggerationModel, out_dir: str | os.PathLike, *, opset: int = 17,
                             check_samples: int = 4, seed: int = 0) -> dict[str, Any]:
    """Write ``out_dir/exaggeration.onnx`` and verify it against torch on ONNX Runtime.

    The check runs ``check_samples`` seeded random images through every bin (a dynamic batch axis).
    Returns ``{"path", "max_abs_error", "n_bins", "target_class", "opset"}``; an error above 1e-4 raises
    :class:`InputError`.

    >>> import tempfile
    >>> from xaisdk.models.exaggeration import load_shipped_exaggeration
    >>> info = export_exaggeration_onnx(load_shipped_exaggeration(), tempfile.mkdtemp())
    >>> info["max_abs_error"] <= 1e-4, info["n_bins"]
    (True, 10)
    """
    import onnx
    import onnxruntime as ort

    if not isinstance(model, ExaggerationModel):
        raise InputError(f"model: expected an ExaggerationModel, got {type(model).__name__}")
    if int(check_samples) < 1:
        raise InputError(f"check_samples must be >= 1, got {check_samples}")
    out = Path(out_dir)
    net = model.net.eval()
    n_bins = model.n_bins
    shape = tuple(model.classifier.input_shape)
    example = (torch.rand(2, *shape), F.one_hot(torch.tensor([0, n_bins - 1]), n_bins).float())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(net, example, buffer, input_names=["x", "condition"], output_names=["image"],
                          opset_version=int(opset), dynamo=False, do_constant_folding=True,
                          dynamic_axes={"x": {0: "N"}, "condition": {0: "N"}, "image": {0: "N"}})
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in (("xaisdk.target_class", str(int(model.target_class))), ("xaisdk.n_bins", str(n_bins)),
                       ("xaisdk.value_range", json.dumps(list(model.net.config.value_range)))):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph, full_check=True)
    path = out / EXAGGERATION_ONNX
    atomic_write_bytes(path, graph.SerializeToString())

    rng = np.random.default_rng(seed)
    low, high = model.net.config.value_range
    x = (low + (high - low) * rng.random((int(check_samples), *shape))).astype(np.float32)
    rows = np.repeat(x, n_bins, axis=0)
    onehot = np.tile(np.eye(n_bins, dtype=np.float32), (int(check_samples), 1))
    with torch.no_grad():
        want = net(torch.from_numpy(rows), torch.from_numpy(onehot)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": rows, "condition": onehot})[0]
    error = float(np.abs(got.astype(np.float64) - want).max())
    if error > PARITY_TOLERANCE:
        raise InputError(f"{path}: ONNX Runtime differs from torch by {error:.3g} (> {PARITY_TOLERANCE})")
    return {"path": str(path), "max_abs_error": error, "n_bins": n_bins, "target_class": int(model.target_class),
            "opset": int(opset)}
