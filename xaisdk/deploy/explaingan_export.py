"""Export an ExplainGAN model to one ONNX graph, ``explaingan.onnx``, verified against torch.

The graph takes ``x`` (N, C, H, W) only: the classifier travels inside it and decides each image's
source side ``j = [d(x) > 0]`` (so a served bundle needs no second call, and the side is always the
classifier's, as in training). Both encoders' opening layers run on the whole batch and are picked
per row with ``Where``. Outputs: ``transformed``, ``mask``, ``composite``, ``source`` (int64) and
``flipped_prob`` (the classifier's probability of ``1 - j`` on the composite).
"""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xaisdk.errors import InputError
from xaisdk.models.explaingan import ExplainGANInference, ExplainGANModel, load_explaingan
from xaisdk.runtime.atomic_files import atomic_write_bytes

__all__ = ["export_explaingan_onnx", "EXPLAINGAN_OUTPUTS"]

EXPLAINGAN_OUTPUTS = ("transformed", "mask", "composite", "source", "flipped_prob")
TOLERANCE = 1e-4


class _Graph(nn.Module):
    def __init__(self, inference: ExplainGANInference) -> None:
        super().__init__()
        self.inference = inference

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        transformed, mask, composite, _, source, flipped = self.inference(x)
        return transformed, mask, composite, source, flipped


def _verification_images(model: ExplainGANModel, count: int, seed: int) -> np.ndarray:
    """Real test digits when the model was trained on a digits pair, plus uniform noise images."""
    rng = np.random.default_rng(seed)
    lo, hi = model.classifier.value_range
    noise = rng.uniform(lo, hi, (count, *model.classifier.input_shape)).astype(np.float32)
    name = str(model.data.get("name", ""))
    if name.startswith("digits_") and tuple(model.classifier.input_shape) == (1, 28, 28):
        from xaisdk.data import binary_digits_split

        first, second = (int(c) for c in model.classifier.class_names)
        return np.concatenate([binary_digits_split(first, second).test.x[:count], noise])
    return noise


def export_explaingan_onnx(model: ExplainGANModel | str | os.PathLike, out_dir: str | os.PathLike, *,
                           opset: int = 17, seed: int = 0, check_count: int = 32) -> dict[str, Any]:
    """Write ``out_dir/explaingan.onnx`` (dynamic batch) and check it against torch with ONNX Runtime.

    Returns a report: ``path``, ``bytes``, ``seconds``, ``max_abs_error`` per float output and overall,
    ``source_mismatches`` (rows whose side differs: 0 expected) and ``checked`` (rows compared). A
    difference above 1e-4 raises :class:`xaisdk.deploy.export.VerificationError`.

    >>> import tempfile
    >>> from xaisdk.models.explaingan import load_shipped_explaingan
    >>> report = export_explaingan_onnx(load_shipped_explaingan(), tempfile.mkdtemp(), check_count=4)
    >>> report["max_abs_error"] <= 1e-4, report["source_mismatches"]
    (True, 0)
    """
    import onnx
    import onnxruntime as ort

    from xaisdk.deploy.allowlist import disallowed_nodes
    from xaisdk.deploy.export_errors import VerificationError
    from xaisdk.deploy.onnx_grad import UnsupportedOpError

    if isinstance(model, (str, os.PathLike)):
        model = load_explaingan(model)
    if not isinstance(model, ExplainGANModel):
        raise InputError(f"model: expected an ExplainGANModel or a checkpoint path, got {type(model).__name__}")
    if isinstance(check_count, bool) or not isinstance(check_count, int) or check_count < 1:
        raise InputError(f"check_count: expected an integer >= 1, got {check_count!r}")
    start = time.perf_counter()
    graph = _Graph(model.inference_module()).eval()
    example = torch.zeros(2, *model.classifier.input_shape)
    buffer = io.BytesIO()
    names = list(EXPLAINGAN_OUTPUTS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            torch.onnx.export(graph, (example,), buffer, input_names=["x"], output_names=names, opset_version=opset,
                              dynamo=False, dynamic_axes={n: {0: "N"} for n in ["x", *names]},
                              do_constant_folding=True)
    except Exception as err:  # the exporter raises many types for a layer it cannot translate
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedOpError(f"torch cannot export the ExplainGAN graph to ONNX: {first}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    meta = proto.metadata_props.add()
    meta.key, meta.value = "xaisdk.class_names", ",".join(model.classifier.class_names)
    meta = proto.metadata_props.add()
    meta.key, meta.value = "xaisdk.value_range", ",".join(str(v) for v in model.classifier.value_range)
    onnx.checker.check_model(proto, full_check=True)
    problems = disallowed_nodes(proto)
    if problems:
        raise UnsupportedOpError("explaingan: the graph uses ops outside TensorRT's ONNX op set: " + "; ".join(problems[:5]))
    path = Path(out_dir) / "explaingan.onnx"
    data = proto.SerializeToString()
    atomic_write_bytes(path, data)

    x = _verification_images(model, check_count, seed)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = dict(zip(names, session.run(names, {"x": x})))
    with torch.no_grad():
        want = dict(zip(names, (t.numpy() for t in graph(torch.from_numpy(x)))))
    errors = {n: float(np.abs(got[n].astype(np.float64) - want[n]).max()) for n in names if n != "source"}
    mismatches = int((got["source"] != want["source"]).sum())
    report = {"path": str(path), "bytes": len(data), "seconds": time.perf_counter() - start,
              "max_abs_error": max(errors.values()), "errors": errors, "source_mismatches": mismatches,
              "checked": len(x), "opset": opset, "outputs": names}
    if mismatches or report["max_abs_error"] > TOLERANCE:
        raise VerificationError(f"{path}: ONNX Runtime disagrees with torch (max abs error "
                                f"{report['max_abs_error']:.3g}, {mismatches} source sides differ)")
    return report
