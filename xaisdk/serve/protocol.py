"""The wire formats of ``xaisdk serve``: KServe V1 (``{"instances": [...]}``) and the Open Inference
Protocol V2 (``{"inputs": [{"name", "shape", "datatype", "data"}]}``), turned into images and
explanation options, and explanations turned back into JSON.

Images arrive as base64 PNG/JPEG (V1: ``{"b64": "..."}`` or ``{"image_bytes": {"b64": "..."}}``;
V2: a ``BYTES`` input) or as tensors (V1: nested lists; V2: ``FP32``/``FP64``/``UINT8`` data with a
shape; in V1 tensors, all-integer lists are 8-bit levels and lists with decimals are float pixels).
Encoded images are checked against the model's size from their header, before any pixel is
decoded. Every malformed request raises :class:`~xaisdk.InputError` with a message for the client.
Imports numpy and pillow only.

>>> options = parse_options({"method": "ig", "n_steps": 32, "target": "runner-up"}, has_generator=False)
>>> options.method, options.target, options.baseline, options.method_options
('ig', 'runner-up', 'zero', {'n_steps': 32})
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaisdk.errors import InputError
from xaisdk.input_files import MAX_IMAGE_PIXELS, image_from_stream

__all__ = ["ExplainOptions", "decode_instances", "decode_v2_inputs", "explanation_rows", "parse_options", "png_overlay"]

NAMED_BASELINES = ("ganmex", "zero", "max", "blur", "noise")
OUTPUTS = ("tensor", "png", "both")
# request parameter -> (type, the Explainer option it sets); others are refused by name
_METHOD_OPTIONS = {"n_steps": int, "rule": str, "window": int, "stride": int, "n_samples": int, "seed": int,
                   "tolerance": float, "max_steps": int}
_V2_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "UINT8": np.uint8}


@dataclass
class ExplainOptions:
    """One request's explanation settings (shared by all its images)."""

    method: str = "ig"
    target: Any = "runner-up"
    source: Any = None
    baseline: Any = "ganmex"
    output: str = "tensor"
    method_options: dict[str, Any] = field(default_factory=dict)


def _class_value(value: Any, name: str) -> Any:
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, list) and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        return value
    raise InputError(f"parameters.{name}: expected a class index, a class name or one per image, got {type(value).__name__}")


def parse_options(parameters: Any, *, has_generator: bool) -> ExplainOptions:
    """The :class:`ExplainOptions` of a request's ``parameters`` object; unknown names are refused.

    ``baseline`` defaults to ``"ganmex"`` when the bundle has a generator, else ``"zero"``.

    >>> parse_options({"stride": 2, "window": 4, "method": "occlusion"}, has_generator=True).method_options
    {'stride': 2, 'window': 4}
    >>> parse_options({"steps": 3}, has_generator=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: parameters: unknown option 'steps'; expected some of method, target, source, ...
    """
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise InputError(f"parameters: expected an object, got {type(parameters).__name__}")
    options = ExplainOptions(baseline="ganmex" if has_generator else "zero")
    known = ("method", "target", "source", "baseline", "output", *_METHOD_OPTIONS)
    for key, value in parameters.items():
        if key in ("explain", "content_type", "headers"):  # V2 routing / protocol fields, read elsewhere
            continue
        if key not in known:
            raise InputError(f"parameters: unknown option {key!r}; expected some of {', '.join(known)}")
        if key == "method":
            if not isinstance(value, str):
                raise InputError(f"parameters.method: expected a method name, got {type(value).__name__}")
            options.method = value
        elif key in ("target", "source"):
            setattr(options, key, _class_value(value, key))
        elif key == "baseline":
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number or isinstance(value, str) and value in NAMED_BASELINES:
                options.baseline = value
            else:
                raise InputError(f"parameters.baseline: expected a number or one of {', '.join(NAMED_BASELINES)}, got {value!r}")
        elif key == "output":
            if value not in OUTPUTS:
                raise InputError(f"parameters.output: expected one of {', '.join(OUTPUTS)}, got {value!r}")
            options.output = value
        else:
            kind = _METHOD_OPTIONS[key]
            if key == "n_steps" and value == "auto":
                pass  # adaptive IG: as many path points as the tolerance needs
            elif kind is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise InputError(f"parameters.{key}: expected an integer, got {value!r}")
            if kind is str and not isinstance(value, str):
                raise InputError(f"parameters.{key}: expected a string, got {value!r}")
            if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise InputError(f"parameters.{key}: expected a number, got {value!r}")
            options.method_options[key] = value
    return options


def decode_image_bytes(data: bytes, input_shape: tuple[int, ...], where: str, *, resizes: bool = False) -> np.ndarray:
    """A PNG/JPEG (any format pillow reads) as uint8 pixels (H, W) or (H, W, 3) for a model taking
    ``input_shape`` (C, H, W) with C = 1 (converted to grey) or 3 (to RGB). The header's size is read
    first: it must be the model's, or with ``resizes`` (the bundle has a resize policy) at most
    ``MAX_IMAGE_PIXELS``; nothing else is decoded."""
    channels, height, width = (int(v) for v in input_shape)
    if channels not in (1, 3):
        raise InputError(f"{where}: encoded images need a 1- or 3-channel model (this one takes {channels} channels); "
                         "send a tensor instead")
    cap = MAX_IMAGE_PIXELS if resizes else max(height * width, 1)
    with image_from_stream(io.BytesIO(data), where, max_pixels=cap) as img:
        if not resizes and (img.width, img.height) != (width, height):
            raise InputError(f"{where}: image is {img.width} x {img.height}, the model takes {width} x {height} "
                             "and its bundle has no resize policy (export with --resize to take any size)")
        try:
            pixels = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise InputError(f"{where}: the image data are damaged ({type(err).__name__}: {err})") from None
    return pixels


def _b64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise InputError(f"{where}: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: not valid base64") from None


def _tensor(value: Any, where: str) -> np.ndarray:
    """A JSON nested list as one image: all integers are 8-bit levels (uint8, 0-255); any number with a
    decimal point makes it float pixels in the model's value range (as ``Explainer`` takes them)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = np.asarray(None)
    if array.dtype.kind not in "iuf" or array.dtype == np.bool_:
        raise InputError(f"{where}: expected a nested list of numbers (a tensor) or {{\"b64\": ...}}")
    if array.ndim not in (2, 3):
        raise InputError(f"{where}: expected one image (H, W), (C, H, W) or (H, W, C), got shape {array.shape}")
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InputError(f"{where}: integer pixels are 8-bit levels 0..255; send floats for other ranges")
        return array.astype(np.uint8)
    return array.astype(np.float32)


def decode_instances(instances: Any, input_shape: tuple[int, ...], max_images: int, *,
                     resizes: bool = False) -> tuple[list[np.ndarray], list[dict]]:
    """KServe V1 ``instances``: images (uint8 or float pixels) and per-image overrides (``target``,
    ``source``) given as ``{"image": ..., "target": ...}``; ``resizes`` as in :func:`decode_image_bytes`."""
    if not isinstance(instances, list) or not instances:
        raise InputError("instances: expected a non-empty list of images")
    if len(instances) > max_images:
        raise InputError(f"instances: {len(instances)} images, above this server's limit of {max_images} per request")
    images, extras = [], []
    for i, item in enumerate(instances):
        where = f"instances[{i}]"
        extra: dict = {}
        if isinstance(item, dict) and "image" in item:
            extra = {k: _class_value(v, k) for k, v in item.items() if k in ("target", "source")}
            unknown = sorted(set(item) - {"image", "target", "source"})
            if unknown:
                raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; expected image, target, source")
            item, where = item["image"], f"{where}.image"
        if isinstance(item, dict):
            wrapped = item.get("image_bytes")
            payload = item.get("b64", wrapped.get("b64") if isinstance(wrapped, dict) else None)
            if payload is None:
                raise InputError(f"{where}: expected {{\"b64\": <base64 PNG/JPEG>}} or a tensor")
            images.append(decode_image_bytes(_b64(payload, where), input_shape, where, resizes=resizes))
        else:
            images.append(_tensor(item, where))
        extras.append(extra)
    return images, extras


def decode_v2_inputs(inputs: Any, input_shape: tuple[int, ...], max_images: int, *,
                     resizes: bool = False) -> tuple[list[np.ndarray], dict]:
    """Open Inference Protocol V2 ``inputs``: the first tensor holds the images; optional INT64/BYTES
    tensors named ``target`` / ``source`` hold per-image classes; ``resizes`` as in :func:`decode_image_bytes`."""
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise InputError("inputs: expected a non-empty list of tensors {name, shape, datatype, data}")
    classes: dict[str, Any] = {}
    images_tensor = None
    for t in inputs:
        name = t.get("name")
        if name in ("target", "source"):
            data = t.get("data")
            if not isinstance(data, list):
                raise InputError(f"inputs.{name}: expected data as a list of class indices or names")
            classes[name] = [_class_value(v, name) for v in data]
        elif images_tensor is None:
            images_tensor = t
        else:
            raise InputError(f"inputs: unexpected tensor {name!r} (one image tensor plus optional target, source)")
    if images_tensor is None:
        raise InputError("inputs: no image tensor")
    where = f"inputs.{images_tensor.get('name', 'input')}"
    shape, datatype, data = images_tensor.get("shape"), images_tensor.get("datatype"), images_tensor.get("data")
    sizes_ok = isinstance(shape, list) and bool(shape) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                                for v in shape)
    if not sizes_ok:
        raise InputError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if not isinstance(data, list):
        raise InputError(f"{where}: data must be a list")
    count = shape[0]
    if count < 1 or count > max_images:
        raise InputError(f"{where}: {count} images; this server takes 1 to {max_images} per request")
    if datatype == "BYTES":
        if shape != [len(data)] and shape != [len(data), 1]:
            raise InputError(f"{where}: BYTES shape {shape} does not match {len(data)} elements")
        images = [decode_image_bytes(_b64(v, f"{where}[{i}]"), input_shape, f"{where}[{i}]", resizes=resizes)
                  for i, v in enumerate(data)]
        return images, classes
    if datatype not in _V2_DTYPES:
        raise InputError(f"{where}: datatype must be one of BYTES, {', '.join(_V2_DTYPES)}, got {datatype!r}")
    expected = int(np.prod(shape))
    try:
        flat = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{where}: data must be numbers") from None
    if flat.size != expected:
        raise InputError(f"{where}: {flat.size} values for shape {shape} ({expected} expected)")
    if datatype == "UINT8":
        if flat.size and (flat.min() < 0 or flat.max() > 255 or np.any(flat != np.round(flat))):
            raise InputError(f"{where}: UINT8 data must be integers in 0..255")
        batch = flat.astype(np.uint8).reshape(shape)
    else:
        batch = flat.astype(_V2_DTYPES[datatype]).reshape(shape)
    return list(batch), classes


def png_overlay(attributions: np.ndarray) -> str:
    """One explanation map (C, H, W) as a base64 PNG, coloured by
    :func:`xaisdk.runtime.images.attribution_to_rgb`: red where a pixel adds to ``S_source - S_target``,
    blue where it takes away, white for nothing."""
    from PIL import Image

    from xaisdk.runtime.images import attribution_to_rgb

    rgb = attribution_to_rgb(attributions)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def explanation_rows(explanation: Any, class_names: tuple[str, ...], baseline: Any, output: str) -> list[dict[str, Any]]:
    """One JSON object per image of a batched :class:`~xaisdk.explainer.Explanation`."""
    n = len(explanation.attributions)
    rows = []
    for i in range(n):
        source = int(np.atleast_1d(explanation.source)[i])
        target = None if explanation.target is None else int(np.atleast_1d(explanation.target)[i])
        row: dict[str, Any] = {
            "method": explanation.method,
            "source": source,
            "source_name": class_names[source],
            "target": target,
            "target_name": None if target is None else class_names[target],
            "baseline": baseline if isinstance(baseline, (str, int, float)) else "array",
            "score": float(np.atleast_1d(explanation.score)[i]),
            "baseline_score": None if explanation.baseline_score is None else float(np.atleast_1d(explanation.baseline_score)[i]),
            "convergence_delta": None if explanation.convergence_delta is None
            else float(np.atleast_1d(explanation.convergence_delta)[i]),
            "shape": list(explanation.attributions[i].shape),
        }
        if explanation.n_steps is not None:
            row["n_steps"] = int(np.atleast_1d(explanation.n_steps)[i] if np.ndim(explanation.n_steps) else explanation.n_steps)
        if explanation.converged is not None:
            row["converged"] = bool(np.atleast_1d(explanation.converged)[i])
        if output in ("tensor", "both"):
            row["attributions"] = explanation.attributions[i].tolist()
        if output in ("png", "both"):
            row["overlay_png_b64"] = png_overlay(explanation.attributions[i])
        rows.append(row)
    return rows
