"""The bundle manifest an export writes (read back by :func:`xaisdk.runtime.bundle.read_bundle`).

One writer for every intake (torch models, ONNX files), torch-free.

>>> m = bundle_manifest(input_shape=(1, 2, 2), value_range=(0.0, 1.0), class_names=("a", "b"), arch="user",
...                     roles=["classifier", "classifier_grad"], files={}, opset=17, batch=None)
>>> m["input"]["shape"], m["graphs"]["classifier_grad"]["outputs"]
([1, 2, 2], {'score': ['N'], 'grad': ['N', 1, 2, 2]})
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xaisdk import __version__
from xaisdk.runtime.atomic_files import atomic_file
from xaisdk.runtime.bundle import MANIFEST, ROLES, SCHEMA, SCHEMA_VERSION

__all__ = ["COMPUTES", "bundle_manifest", "write_manifest"]

COMPUTES = {
    "classifier": "logits[n, k] of the classifier",
    "classifier_grad": "score[n] = sum_k w[n, k] * logits[n, k] and grad = d score / d x",
    "deeplift_grad": "DeepLIFT rescale-rule multipliers of sum_k w[n, k] * logits[n, k] for x relative to "
                     "baseline (attributions = (x - baseline) * multipliers), and the scores of x and baseline",
    "generator_ganmex": "GANMEX generator G(x, target): the image of class target closest to x",
    "inpainter": "learned inpainter: x with the pixels where mask == 1 replaced by plausible content "
                 "(x exactly where mask == 0)",
    "explaingan": "ExplainGAN with its own binary classifier: source = its class of x, transformed = the image of the "
                  "other class, mask in [0, 1], composite = x (1 - mask) + transformed mask, flipped_prob = its "
                  "probability of the other class on the composite",
    "exaggeration": "Progressive Exaggeration generator G(E(x), condition): the image whose probability of the target "
                    "class lies in the bin one-hot encoded by condition",
}


def bundle_manifest(*, input_shape: Sequence[int], value_range: Sequence[float], class_names: Sequence[str], arch: str,
                    roles: Sequence[str], files: dict, opset: int, batch: int | None, source: str | None = None,
                    deeplift_unavailable: str | None = None, ganmex: bool = False,
                    preprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a bundle holding the graphs ``roles`` (see :mod:`xaisdk.runtime.bundle`)."""
    rows = batch if batch else "N"
    c, h, w = (int(v) for v in input_shape)
    k = len(class_names)
    shapes = {"x": [rows, c, h, w], "baseline": [rows, c, h, w], "w": [rows, k], "target": [rows, k], "logits": [rows, k],
              "score": [rows], "score_baseline": [rows], "grad": [rows, c, h, w], "multipliers": [rows, c, h, w],
              "image": [rows, c, h, w], "mask": [rows, 1, h, w]}
    entries = {}
    for role in roles:
        inputs, outputs = ROLES[role]
        entries[role] = {"file": f"{role}.onnx", "computes": COMPUTES[role],
                         "inputs": {name: shapes[name] for name in inputs},
                         "outputs": {name: shapes[name] for name in outputs}}
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "xaisdk_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "opset": opset,
        "input": {"shape": [c, h, w], "layout": "NCHW", "dtype": "float32", "value_range": [float(v) for v in value_range],
                  "batch": batch},
        "class_names": list(class_names),
        "model": {"arch": arch, "source": source, "ganmex": ganmex, "inpainter": "inpainter" in roles},
        "graphs": entries,
        "files": files,
    }
    if preprocessing is not None:
        manifest["preprocessing"] = dict(preprocessing)
    if deeplift_unavailable:
        manifest["deeplift_unavailable"] = deeplift_unavailable
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as ``folder/manifest.json`` (indented JSON, atomically: never half a file)."""
    with atomic_file(folder / MANIFEST) as handle:
        handle.write((json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
