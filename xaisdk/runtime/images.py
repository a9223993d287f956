"""Turn what a user passes into a model's float32 NCHW batch, and write images and attributions as PNG.

Torch-free: imports only numpy, pillow and the standard library, so that the production ``Explainer``
(numpy + pillow + onnxruntime) and the CLI can use it. Every rejection raises :class:`xaisdk.InputError`
with a message that names the problem and what would have been accepted.

>>> import numpy as np
>>> batch, single = as_model_batch(np.full((2, 2, 3), 255, dtype=np.uint8), (3, 2, 2))
>>> batch.shape, batch.dtype.name, single, float(batch.min())
((1, 3, 2, 2), 'float32', True, 1.0)
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from xaisdk.errors import InputError, OutputError
from xaisdk.input_files import open_image
from xaisdk.runtime.atomic_files import remove_stale_temps, temp_path

__all__ = [
    "as_model_batch",
    "attribution_to_rgb",
    "load_image",
    "save_attribution_png",
    "save_image_png",
]

PathLike = Union[str, "os.PathLike[str]"]

# Float values may overshoot the model's value range by this fraction of its span (rounding in the
# caller's own normalisation) before they are refused; such values are passed on unchanged.
RANGE_TOLERANCE = 1e-4

_ACCEPTED_DTYPES = "uint8 (0-255) or float16/float32/float64"


# --------------------------------------------------------------------------------------------------
# Argument checks shared by the public functions
# --------------------------------------------------------------------------------------------------


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        dims = tuple(operator.index(d) for d in input_shape)
    except TypeError:
        raise InputError(f"input_shape: expected three integers (C, H, W), got {input_shape!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise InputError(f"input_shape: expected three positive integers (C, H, W), got {input_shape!r}")
    return dims  # type: ignore[return-value]


def _check_value_range(value_range: Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise InputError(f"value_range: expected two numbers (low, high), got {value_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputError(f"value_range: expected finite numbers with low < high, got ({low:g}, {high:g})")
    return low, high


def _check_scale(scale: int) -> int:
    try:
        value = operator.index(scale)
    except TypeError:
        raise InputError(f"scale: expected a positive integer, got {scale!r}") from None
    if value < 1:
        raise InputError(f"scale: expected a positive integer, got {value}")
    return value


def _shape_str(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def _join_or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _to_array(x: Any, name: str) -> np.ndarray:
    """``np.asarray`` with numpy's own failures (ragged lists and the like) turned into InputError."""
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as err:
        raise InputError(f"{name}: cannot be read as an array of pixels ({type(x).__name__}): {err}") from None


def _count_non_finite(arr: np.ndarray, name: str) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - finite.sum()) - n_nan
        raise InputError(f"{name}: {n_nan + n_inf} of {arr.size} values are not finite ({n_nan} NaN, {n_inf} infinite)")


def _uint8_lut(low: float, high: float) -> np.ndarray:
    """float32 value of each uint8 level: ``low + (high - low) * v / 255``, computed in float64."""
    return (low + (high - low) * np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Model batches
# --------------------------------------------------------------------------------------------------


def as_model_batch(
    x: Any,
    input_shape: tuple[int, int, int],
    value_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, bool]:
    """Turn images in any accepted layout and dtype into the model's float32 (N, C, H, W) batch.

    ``input_shape`` is the model's (C, H, W); ``value_range`` the (low, high) pixel range it was trained on.
    Returns ``(batch, single)``: ``batch`` is a new C-contiguous float32 array (never a view of ``x``, which
    is never modified), ``single`` is True when ``x`` was one image, so results can be squeezed back.

    Input: a numpy array or anything ``np.asarray`` takes (nested lists, a PIL image, a list of PIL images).

    Layouts, tried in this order against the trailing dimensions (first match wins):

    ==================  ===========================  ==========
    shape of ``x``      read as                      ``single``
    ==================  ===========================  ==========
    (N, C, H, W)        batch, channels first        False
    (N, H, W, C)        batch, channels last         False
    (C, H, W)           one image, channels first    True
    (H, W, C)           one image, channels last     True
    (N, H, W)           batch, only if C == 1        False
    (H, W)              one image, only if C == 1    True
    ==================  ===========================  ==========

    - When channels-first and channels-last both match (e.g. C == H == W), channels-first wins.
    - For a single-channel model, (1, H, W) matches (C, H, W) first, so it is one image (``single`` True);
      the data is the same as the one-image batch (N, H, W) with N == 1.

    Dtypes and values:

    - ``uint8``: mapped linearly onto ``value_range``, ``low + (high - low) * v / 255`` (0 -> low, 255 -> high).
    - ``float16``, ``float32``, ``float64``: taken as already in ``value_range`` and cast to float32. Values
      outside it by more than 1e-4 of its span are refused; values within that tolerance pass unchanged
      (not clipped).
    - Anything else (bool, other integer widths, complex, object, strings) is refused; integer arrays
      holding 0-255 pixels should be passed as ``x.astype(np.uint8)``.

    Refused with :class:`xaisdk.InputError`: other shapes (the message lists the accepted ones for this
    model), an empty batch (N == 0), NaN or infinite values (the message counts them), out-of-range floats
    and the dtypes above.

    >>> import numpy as np
    >>> batch, single = as_model_batch(np.array([[0, 255]], dtype=np.uint8), (1, 1, 2), value_range=(-1, 1))
    >>> batch.tolist(), single
    ([[[[-1.0, 1.0]]]], True)
    >>> as_model_batch(np.zeros((3, 32, 32)), (1, 28, 28))
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: x: expected (N, 1, 28, 28), (1, 28, 28), (N, 28, 28, 1), (28, 28, 1), (28, 28) or (N, 28, 28); got (3, 32, 32)
    """  # noqa: E501
    c, h, w = _check_input_shape(input_shape)
    low, high = _check_value_range(value_range)
    arr = _to_array(x, "x")

    # Dtype first: a message about shapes is no help for an array of strings.
    dtype = arr.dtype
    if dtype == np.uint8:
        pass
    elif dtype.kind == "f" and dtype.itemsize in (2, 4, 8):  # float16/32/64, either byte order
        pass
    elif dtype.kind in "iu":
        raise InputError(
            f"x: dtype {dtype.name} is not accepted; pass {_ACCEPTED_DTYPES} in the model's range "
            f"[{low:g}, {high:g}] (for 0-255 integer pixels use x.astype(np.uint8))"
        )
    else:
        raise InputError(f"x: dtype {dtype.name} is not accepted; pass {_ACCEPTED_DTYPES}")

    # Layout: bring the array to (N, C, H, W) as a view, remembering whether it was one image.
    shape = arr.shape
    chw, hwc = (c, h, w), (h, w, c)
    if arr.ndim == 4 and shape[1:] == chw:
        view, single = arr, False
    elif arr.ndim == 4 and shape[1:] == hwc:
        view, single = arr.transpose(0, 3, 1, 2), False
    elif arr.ndim == 3 and shape == chw:
        view, single = arr[np.newaxis], True
    elif arr.ndim == 3 and shape == hwc:
        view, single = arr.transpose(2, 0, 1)[np.newaxis], True
    elif c == 1 and arr.ndim == 3 and shape[1:] == (h, w):
        view, single = arr[:, np.newaxis], False
    elif c == 1 and arr.ndim == 2 and shape == (h, w):
        view, single = arr[np.newaxis, np.newaxis], True
    else:
        accepted = [_shape_str(("N", c, h, w)), _shape_str(chw), _shape_str(("N", h, w, c)), _shape_str(hwc)]
        if c == 1:
            accepted += [_shape_str((h, w)), _shape_str(("N", h, w))]
        hint = ""
        if arr.ndim in (3, 4) and (shape[-2:] == (h, w) or shape[-3:-1] == (h, w)):
            hint = f" (the model takes {c}-channel {h}x{w} images; check the channel count)"
        raise InputError(f"x: expected {_join_or(accepted)}; got {_shape_str(shape)}{hint}")

    if view.shape[0] == 0:
        raise InputError(f"x: empty batch {_shape_str(shape)}; pass at least one image")

    if dtype == np.uint8:
        # Fancy indexing builds a new array; ascontiguousarray only guarantees the layout.
        return np.ascontiguousarray(_uint8_lut(low, high)[view]), single

    _count_non_finite(view, "x")
    lo_seen, hi_seen = float(view.min()), float(view.max())
    tol = RANGE_TOLERANCE * (high - low)
    if lo_seen < low - tol or hi_seen > high + tol:
        raise InputError(
            f"x: pixel values span [{lo_seen:g}, {hi_seen:g}] but the model expects [{low:g}, {high:g}]; "
            "pass uint8 or scale your floats"
        )
    return np.array(view, dtype=np.float32, order="C", copy=True), single


# --------------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------------


def load_image(
    path: PathLike,
    input_shape: tuple[int, int, int],
    value_range: tuple[float, float] = (0.0, 1.0),
    *,
    any_size: bool = False,
) -> np.ndarray:
    """Read one image file (PNG, JPEG, anything pillow reads) as the model's float32 (C, H, W) input.

    ``any_size=True`` keeps the file's size (for bundles with a resize policy, which
    :func:`xaisdk.runtime.preprocessing.fit_images` applies); otherwise other sizes are refused.

    The image is converted to grayscale ("L") for a 1-channel model and to "RGB" for a 3-channel one
    (alpha is dropped); other channel counts are refused. The EXIF orientation is applied, as image viewers
    do. 8-bit pixels are mapped onto ``value_range`` like uint8 in :func:`as_model_batch`; 16-bit
    grayscale ones as ``low + (high - low) * v / 65535``. Images whose size is not the model's (H, W) are
    refused, never resized, and the size is read from the file's header before any pixel is decoded (so a
    huge image costs nothing); 32-bit integer or float images (no fixed pixel range) are refused too. A
    missing or unreadable file, a path that is not a regular file (a FIFO, a device, a directory) and an
    image above ``xaisdk.input_files.MAX_IMAGE_PIXELS`` raise :class:`xaisdk.InputError` naming the path.

    >>> import os, tempfile, numpy as np
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "digit.png")
    ...     save_image_png(np.array([[0.0, 1.0]]), path, scale=1)
    ...     load_image(path, (1, 1, 2)).tolist()
    [[[0.0, 1.0]]]
    """
    c, h, w = _check_input_shape(input_shape)
    low, high = _check_value_range(value_range)
    if c not in (1, 3):
        raise InputError(f"load_image: image files give 1 (grayscale) or 3 (RGB) channels, but the model takes {c}")
    with open_image(path, "file") as opened:  # regular files only; the header's size is checked before decoding
        if not any_size and opened.size not in ((w, h), (h, w)):  # (h, w): an EXIF rotation may still make it fit
            _refuse_size(path, opened.size, (w, h))
        try:
            opened.load()
            img = ImageOps.exif_transpose(opened)
        except (OSError, ValueError, SyntaxError, EOFError) as err:  # corrupt or truncated pixel data
            raise InputError(f"{os.fspath(path)}: cannot read image: {err}") from None
    if any_size:
        w, h = img.size
    elif img.size != (w, h):
        _refuse_size(path, img.size, (w, h))

    if img.mode.startswith("I;16"):  # 16-bit grayscale: convert("L") would clip, not scale
        levels = np.asarray(img).astype(np.float64) / 65535.0
        gray = (low + (high - low) * levels).astype(np.float32)
        return np.ascontiguousarray(np.broadcast_to(gray, (c, h, w)))
    if img.mode in ("I", "F"):
        raise InputError(
            f"{os.fspath(path)}: {'32-bit integer' if img.mode == 'I' else 'floating-point'} images have no fixed pixel "
            "range; save it as 8-bit grayscale or RGB, or load it yourself and pass the array"
        )

    pixels = np.asarray(img.convert("L" if c == 1 else "RGB"))
    chw = pixels[np.newaxis] if c == 1 else pixels.transpose(2, 0, 1)  # explicit: (3, 3, 3) must not read as CHW
    return np.ascontiguousarray(_uint8_lut(low, high)[chw])


def _refuse_size(path: PathLike, size: tuple[int, int], wanted: tuple[int, int]) -> None:
    raise InputError(
        f"{os.fspath(path)}: image is {size[0]} wide x {size[1]} high but the model takes {wanted[0]} wide x {wanted[1]} "
        "high; resize or crop it first (images are not resized automatically)"
    )


def _write_png_atomic(img: Image.Image, path: PathLike) -> None:
    """Write ``img`` as PNG to a temporary file beside ``path``, then rename it into place."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{target}: cannot create directory {target.parent}: {err}", err.errno) from None
    remove_stale_temps(target)  # of writers killed mid-write; same temporary names as atomic_files.temp_path
    tmp = temp_path(target)
    try:
        # os.open with 0o666 so the final file gets the usual umask permissions (mkstemp would give 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            img.save(handle, format="PNG")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise OutputError(f"{target}: cannot write PNG: {err}", err.errno) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an (H, W) or (H, W, 3) array by an integer factor."""
    if scale == 1:
        return pixels
    return np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)


def save_image_png(
    image: Any,
    path: PathLike,
    value_range: tuple[float, float] = (0.0, 1.0),
    scale: int = 4,
) -> None:
    """Write a model input (C, H, W) with C in {1, 3}, or (H, W), as an 8-bit PNG for people to look at.

    The inverse of :func:`load_image`: float pixels in ``value_range`` are mapped to 0-255 and rounded
    (values outside the range are clipped); uint8 pixels are written as they are. Each pixel becomes a
    ``scale`` x ``scale`` block (nearest neighbour). Missing parent directories are created, and the file
    is written to a temporary name and renamed, so a crash never leaves a half-written PNG.

    >>> import os, tempfile, numpy as np
    >>> from PIL import Image
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "out", "x.png")
    ...     save_image_png(np.zeros((3, 2, 5)), path, scale=3)
    ...     Image.open(path).size
    (15, 6)
    """
    low, high = _check_value_range(value_range)
    scale = _check_scale(scale)
    arr = _to_array(image, "image")
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or 0 in arr.shape:
        raise InputError(f"image: expected (1, H, W), (3, H, W) or (H, W); got {_shape_str(arr.shape)}")
    if arr.dtype == np.uint8:
        pixels = arr
    elif arr.dtype.kind == "f":
        _count_non_finite(arr, "image")
        levels = (arr.astype(np.float64) - low) * (255.0 / (high - low))
        pixels = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    else:
        raise InputError(f"image: dtype {arr.dtype.name} is not accepted; pass uint8 (0-255) or floats in [{low:g}, {high:g}]")
    hwc = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    _write_png_atomic(Image.fromarray(np.ascontiguousarray(_upscale(hwc, scale))), path)


# --------------------------------------------------------------------------------------------------
# Attribution maps
# --------------------------------------------------------------------------------------------------


def attribution_to_rgb(attr: Any, *, limit: float | None = None) -> np.ndarray:
    """Colour an attribution map (C, H, W) or (H, W) with a diverging blue-white-red map, as uint8 (H, W, 3).

    Channels are summed. The map is symmetric around 0: 0 is white (255, 255, 255), ``+limit`` and above
    pure red (255, 0, 0), ``-limit`` and below pure blue (0, 0, 255), linear in between (matplotlib's
    "bwr"). ``limit`` defaults to the largest absolute value, so the strongest pixel is fully saturated;
    pass the same ``limit`` to compare several maps. An all-zero map is all white.

    >>> import numpy as np
    >>> attribution_to_rgb(np.array([[-2.0, 0.0, 1.0, 2.0]])).tolist()
    [[[0, 0, 255], [255, 255, 255], [255, 128, 128], [255, 0, 0]]]
    """
    arr = _to_array(attr, "attr")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"attr: dtype {arr.dtype.name} is not accepted; pass real numbers")
    if arr.ndim == 3:
        total = arr.astype(np.float64).sum(axis=0)
    elif arr.ndim == 2:
        total = arr.astype(np.float64)
    else:
        raise InputError(f"attr: expected (C, H, W) or (H, W); got {_shape_str(arr.shape)}")
    if 0 in total.shape:
        raise InputError(f"attr: empty map {_shape_str(arr.shape)}")
    _count_non_finite(total, "attr")

    if limit is None:
        bound = float(np.abs(total).max())
    else:
        try:
            bound = float(limit)
        except (TypeError, ValueError):
            raise InputError(f"limit: expected a positive number, got {limit!r}") from None
        if not (math.isfinite(bound) and bound > 0):
            raise InputError(f"limit: expected a positive finite number, got {limit!r}")

    t = np.zeros_like(total) if bound == 0 else np.clip(total / bound, -1.0, 1.0)
    fade_pos = 255.0 * (1.0 - np.clip(t, 0.0, 1.0))  # green/blue fade out towards red
    fade_neg = 255.0 * (1.0 + np.clip(t, -1.0, 0.0))  # red/green fade out towards blue
    rgb = np.empty(total.shape + (3,), dtype=np.float64)
    rgb[..., 0] = fade_neg
    rgb[..., 1] = np.minimum(fade_pos, fade_neg)
    rgb[..., 2] = fade_pos
    return np.rint(rgb).astype(np.uint8)


def save_attribution_png(attr: Any, path: PathLike, *, scale: int = 4, limit: float | None = None) -> None:
    """Write :func:`attribution_to_rgb` of ``attr`` as a PNG, each pixel a ``scale`` x ``scale`` block.

    Missing parent directories are created; the file is written atomically (temporary file, then rename).

    >>> import os, tempfile, numpy as np
    >>> from PIL import Image
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "attr.png")
    ...     save_attribution_png(np.ones((1, 2, 3)), path, scale=2)
    ...     Image.open(path).size
    (6, 4)
    """
    scale = _check_scale(scale)
    rgb = attribution_to_rgb(attr, limit=limit)
    _write_png_atomic(Image.fromarray(_upscale(rgb, scale)), path)
