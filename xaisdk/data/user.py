"""Loaders for the caller's own images: a .npz archive or a folder of class subfolders."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from xaisdk.data._checks import check_bool, check_fraction, check_int, check_names, check_seed, describe
from xaisdk.data._resize import resize_bilinear
from xaisdk.data.dataset import Dataset, Split, split_dataset
from xaisdk.errors import InputError
from xaisdk.input_files import MAX_IMAGE_PIXELS, open_image, open_regular_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Above this many classes, labels without class names are almost surely not class indices.
_MAX_CLASSES = 100_000

# PIL modes holding one grey channel (alpha, if any, is dropped), and their full-scale value.
_GREY_MODES = {"1": None, "L": 255.0, "LA": 255.0, "La": 255.0, "I": 65535.0, "I;16": 65535.0,
               "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "F": 1.0}


def load_npz(path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
             test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Load images and labels from a .npz archive (numpy.savez) and split them train/test.

    The archive holds `x` (images), `y` (labels 0..K-1) and optionally `class_names` (strings;
    the `class_names` argument takes precedence; default "0".."K-1").
    x: uint8 (0..255, divided by 255) or float in [0, 1]. Layout by shape: (N, H, W) is greyscale;
    (N, C, H, W) when axis 1 is 1 or 3; otherwise (N, H, W, C) when the last axis is 1 or 3;
    anything else is rejected (only 1 or 3 channels). y: integers, or integer-valued floats.
    The split is `stratified_split(y, test_fraction, seed)`; the dataset name is the file's stem.

    >>> import tempfile, numpy as np
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "toy.npz")
    ...     np.savez(path, x=np.zeros((10, 8, 8, 3), np.uint8), y=np.arange(10) % 2)
    ...     split = load_npz(path, class_names=["cat", "dog"])
    >>> split.train.x.shape, split.train.class_names
    ((8, 3, 8, 8), ('cat', 'dog'))
    """
    file = _existing(path, "path", want_dir=False)
    test_fraction = check_fraction(test_fraction)
    seed = check_seed(seed)
    arrays = _read_npz(file)
    x = _npz_images(arrays["x"], file)
    y = _npz_labels(arrays["y"], file, len(x))
    if class_names is not None:
        names = check_names("class_names", class_names)
    elif "class_names" in arrays:
        names = _npz_names(arrays["class_names"], file)
    else:
        if y.max() >= _MAX_CLASSES:
            raise InputError(f"{file}: y: label {y.max()} would mean {y.max() + 1} classes; labels must be "
                             f"class indices 0..K-1 (at most {_MAX_CLASSES} classes)")
        names = tuple(str(c) for c in range(int(y.max()) + 1))
    source = "class_names" if class_names is not None else f"{file}: class_names"
    if len(names) <= y.max():
        raise InputError(f"{source}: {len(names)} names but labels go up to {y.max()}; "
                         f"expected at least {y.max() + 1} names")
    return split_dataset(Dataset(x, y, names, file.stem), test_fraction, seed)


def load_image_folder(path: str | os.PathLike, *, size: int | tuple[int, int] | None = None,
                      grayscale: bool | None = None, test_fraction: float = 0.2, seed: int = 0,
                      max_pixels: int = MAX_IMAGE_PIXELS,
                      transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Split:
    """Load root/<class_name>/<image files> and split it train/test.

    Classes are the non-hidden subfolders of `path`, sorted by name; each must hold at least one
    image (extensions in IMAGE_EXTENSIONS, any case; other and hidden files, and nested folders,
    are ignored). Files are read with PIL (first frame, EXIF orientation applied, alpha dropped);
    8-bit values are divided by 255, 16-bit ("I;16", "I") by 65535.
    size: None requires all images to share one size; an int or (height, width) resizes each
    image (bilinear, antialiased when shrinking). grayscale: None gives 1 channel if every image
    is single-channel (modes 1, L, LA, I, I;16, F) and RGB otherwise; True converts colour with
    L = 0.299 R + 0.587 G + 0.114 B; False repeats grey into 3 channels.
    The split is `stratified_split(y, test_fraction, seed)`; the dataset name is the folder name.
    max_pixels: each file's height x width is read from its header before decoding, and files above it
    are refused (default `xaisdk.input_files.MAX_IMAGE_PIXELS`, 2**26); files that are not regular files
    (a FIFO, a device) are skipped like other non-image entries.
    transform: instead of `size`, a function taking one image (C, h, w) float32 in [0, 1] and returning
    it at the one size every image must have (e.g. a model's resize policy); with `grayscale` given,
    each image is transformed as soon as it is read, so a folder of large photos never sits in memory whole.

    >>> import tempfile
    >>> from PIL import Image
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for name, value in [("a", 0), ("a", 1), ("b", 2), ("b", 3)]:
    ...         os.makedirs(os.path.join(tmp, name), exist_ok=True)
    ...         Image.new("L", (6, 4), 255 * (value % 2)).save(os.path.join(tmp, name, f"{value}.png"))
    ...     split = load_image_folder(tmp, test_fraction=0.5)
    >>> split.train.x.shape, split.train.class_names
    ((2, 1, 4, 6), ('a', 'b'))
    """
    root = _existing(path, "path", want_dir=True)
    target = _check_size(size)
    if grayscale is not None:
        grayscale = check_bool("grayscale", grayscale)
    test_fraction = check_fraction(test_fraction)
    seed = check_seed(seed)
    max_pixels = check_int("max_pixels", max_pixels, minimum=1)

    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
    if len(class_dirs) < 2:
        found = f"only {class_dirs[0].name!r}" if class_dirs else "none"
        raise InputError(f"{root}: expected at least 2 class subfolders (root/<class_name>/<images>), found {found}")
    files, labels = [], []
    for label, folder in enumerate(class_dirs):
        images = sorted(f for f in folder.iterdir()
                        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise InputError(f"{folder}: class folder has no image files (expected {', '.join(IMAGE_EXTENSIONS)})")
        files += images
        labels += [label] * len(images)

    if transform is not None and target is not None:
        raise InputError("size and transform: give one of them (transform brings each image to the size itself)")
    if transform is not None and grayscale is not None:
        images = [_transformed(transform, _to_channels(_read_image(f, max_pixels)[0], grayscale), f) for f in files]
    else:
        pixels, grey = zip(*(_read_image(f, max_pixels) for f in files))
        as_grey = all(grey) if grayscale is None else grayscale
        images = [_to_channels(p, as_grey) for p in pixels]
        if transform is not None:
            images = [_transformed(transform, img, f) for img, f in zip(images, files)]
    if target is None:
        shapes = {img.shape[1:] for img in images}
        if len(shapes) > 1:
            (h1, w1), (h2, w2) = sorted(shapes)[:2]
            raise InputError(f"{root}: images have different sizes (e.g. {h1}x{w1} and {h2}x{w2} pixels, "
                             "height x width); " + ("the transform must give one size" if transform is not None
                                                    else "pass size= to resize them to one size"))
        x = np.stack(images)
    else:
        x = np.concatenate([resize_bilinear(img[None], target) for img in images])
    names = tuple(d.name for d in class_dirs)
    return split_dataset(Dataset(x, np.array(labels, np.int64), names, root.name), test_fraction, seed)


def _transformed(transform: Callable[[np.ndarray], np.ndarray], image: np.ndarray, file: Path) -> np.ndarray:
    out = np.asarray(transform(image), np.float32)
    if out.ndim != 3 or out.shape[0] != image.shape[0]:
        raise InputError(f"{file}: transform gave shape {out.shape} for a {image.shape} image; expected (C, H, W) with "
                         f"C = {image.shape[0]}")
    return out


def _existing(path: object, name: str, *, want_dir: bool) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{name}: expected a file system path, got {describe(path)}")
    p = Path(path)
    kind = "directory" if want_dir else "file"
    if not p.exists():
        raise InputError(f"{p}: {kind} not found")
    if want_dir and not p.is_dir():
        raise InputError(f"{p}: expected a directory, got a file")
    if not want_dir and p.is_dir():
        raise InputError(f"{p}: expected a .npz file, got a directory")
    return p


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    with open_regular_file(file, "file") as handle:  # a FIFO or a device would block the reader
        if not zipfile.is_zipfile(handle):
            raise InputError(f"{file}: not an .npz archive (expected a zip file written by numpy.savez)")
        handle.seek(0)
        return _read_npz_archive(handle, file)


def _read_npz_archive(handle: object, file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(handle, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise InputError(f"{file}: missing array {' and '.join(map(repr, missing))}; expected keys 'x' "
                                 f"(images) and 'y' (labels), found {sorted(archive.files) or 'none'}")
            arrays = {}
            for key in ("x", "y", "class_names"):
                if key in archive.files:
                    arrays[key] = _read_member(archive, key, file)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{file}: could not read the .npz archive ({err})") from None
    return arrays


MAX_NPZ_ARRAY_BYTES = 16 << 30
"""Largest array read from a user's .npz (a dataset is loaded whole into memory)."""


def _check_member_header(archive: np.lib.npyio.NpzFile, key: str, file: Path) -> None:
    """Refuse a member whose .npy header declares more data than the member holds, or more than
    :data:`MAX_NPZ_ARRAY_BYTES`: numpy allocates the declared size before reading a byte of data."""
    name = f"{key}.npy"
    try:
        info = archive.zip.getinfo(name)
    except KeyError:
        return  # not a .npy member: _read_member says so
    with archive.zip.open(name) as member:
        try:
            version = np.lib.format.read_magic(member)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(member) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(member))
        except ValueError:
            return  # numpy's own read refuses it with its message
        header = member.tell()
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > MAX_NPZ_ARRAY_BYTES or declared > info.file_size - header:
        raise InputError(f"{file}: {key}: the header declares shape {tuple(shape)} of {dtype} ({declared:,} bytes), but the "
                         f"archive holds {max(info.file_size - header, 0):,} bytes for it (at most {MAX_NPZ_ARRAY_BYTES:,} "
                         "are read)")


def _read_member(archive: np.lib.npyio.NpzFile, key: str, file: Path) -> np.ndarray:
    _check_member_header(archive, key, file)
    try:
        value = archive[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(f"{file}: {key}: object arrays are not supported; save numbers "
                             "(or strings for class_names)") from None
        raise InputError(f"{file}: {key}: could not read the array ({err})") from None
    if not isinstance(value, np.ndarray):  # numpy hands back raw bytes for members that are not .npy
        raise InputError(f"{file}: {key}: not a numpy array (expected an archive written by numpy.savez)")
    return value


def _npz_images(x: np.ndarray, file: Path) -> np.ndarray:
    where = f"{file}: x"
    if x.dtype == np.uint8:
        scale = 255.0
    elif x.dtype.kind == "f":
        scale = 1.0
    elif x.dtype.kind in "iub":
        raise InputError(f"{where}: expected uint8 (0..255) or floats in [0, 1], got dtype {x.dtype}; "
                         "convert it to one of these")
    else:
        raise InputError(f"{where}: expected numeric images (uint8 or float), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3):
        if x.shape[3] not in (1, 3):
            raise InputError(f"{where}: expected 1 or 3 channels in axis 1 (N, C, H, W) or axis 3 (N, H, W, C), "
                             f"got shape {x.shape}")
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise InputError(f"{where}: expected shape (N, H, W), (N, C, H, W) or (N, H, W, C), got {x.shape}")
    if x.size == 0:
        raise InputError(f"{where}: no images (shape {x.shape})")
    if scale == 1.0:
        if not np.all(np.isfinite(x)):
            raise InputError(f"{where}: contains NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise InputError(f"{where}: float values must be in [0, 1], got min {x.min():g} and max {x.max():g}; "
                             "save uint8 for 0..255 data")
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(scale)


def _npz_labels(y: np.ndarray, file: Path, n: int) -> np.ndarray:
    where = f"{file}: y"
    if y.ndim != 1:
        raise InputError(f"{where}: expected a 1-D array of labels, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InputError(f"{where}: expected integer class labels, got non-integer values")
    elif y.dtype.kind not in "iu":
        raise InputError(f"{where}: expected integer class labels, got dtype {y.dtype}")
    if len(y) != n:
        raise InputError(f"{file}: x has {n} images but y has {len(y)} labels; expected one label per image")
    if y.min() < 0:
        raise InputError(f"{where}: negative label {y.min():g}; expected class indices 0..K-1")
    labels = y.astype(np.int64)
    if len(np.unique(labels)) < 2:
        raise InputError(f"{where}: only one class (label {labels[0]}) present; expected at least 2 classes")
    return labels


def _npz_names(names: np.ndarray, file: Path) -> tuple[str, ...]:
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise InputError(f"{file}: class_names: expected a 1-D array of strings, got dtype {names.dtype} "
                         f"and shape {names.shape}")
    decoded = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    return check_names(f"{file}: class_names", decoded)


def _check_size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise InputError(f"size: expected an int or (height, width), got {describe(size)}")
        return check_int("size[0]", size[0], minimum=1), check_int("size[1]", size[1], minimum=1)
    side = check_int("size", size, minimum=1)
    return side, side


def _read_image(file: Path, max_pixels: int) -> tuple[np.ndarray, bool]:
    """Pixels as float32 (H, W) if the file is single-channel, else (H, W, 3); values in [0, 1].

    The header's size is checked against ``max_pixels`` before any pixel is decoded."""
    from PIL import ImageOps  # imported here so that `import xaisdk.data` stays fast

    with open_image(file, "image file", max_pixels) as opened:
        try:
            image = ImageOps.exif_transpose(opened)
            image.load()
        except Exception as err:  # decoders raise many types (OSError, SyntaxError, struct.error, ...)
            raise InputError(f"{file}: not a readable image ({type(err).__name__}: {err})") from None
    if image.mode not in _GREY_MODES:
        return np.asarray(image.convert("RGB"), np.float32) / np.float32(255.0), False
    if image.mode == "1":
        return np.asarray(image, np.float32), True
    if image.mode in ("LA", "La"):
        image = image.getchannel(0)
    pixels = np.asarray(image, np.float32)
    full_scale = _GREY_MODES[image.mode]
    if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > full_scale:
        raise InputError(f"{file}: pixel values outside 0..{full_scale:g} for image mode {image.mode}")
    return pixels / np.float32(full_scale), True


def _to_channels(pixels: np.ndarray, grey: bool) -> np.ndarray:
    """(H, W) or (H, W, 3) -> (C, H, W) with C = 1 if grey else 3."""
    if pixels.ndim == 2:
        return pixels[None] if grey else np.repeat(pixels[None], 3, axis=0)
    if grey:
        luminance = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(luminance, 0.0, 1.0)[None]
    return pixels.transpose(2, 0, 1)
