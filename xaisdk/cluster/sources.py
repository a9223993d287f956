"""Inputs of a dataset job cut into shards: a folder of image files, Parquet files or npz files.

A shard is the unit of resumption: its id names its output file, so the id depends only on what the
shard holds (the files' relative paths, or the file and row range), never on the order of a run.
:func:`plan_shards` lists the shards on the driver from names and headers only; :func:`read_shard`
decodes one shard on a worker and returns the readable images with their input ids, plus one
``(input id, reason)`` per input it could not read (the rest of the shard is kept).

Input ids: a folder image is its path relative to the folder; a Parquet row its ``id`` column when
the file has one, else ``<file>:<row>``; an npz row its ``ids`` array when the file has one, else
``<file>:<row>``.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xaisdk.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "Shard", "ShardData", "plan_shards", "read_shard"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGE_COLUMN = "image"
ID_COLUMN = "id"
NPZ_KEYS = ("x", "images")


@dataclass(frozen=True)
class Shard:
    """One unit of work: ``kind`` "images" (``files``, relative to ``root``), "parquet" or "npz"
    (rows ``start:stop`` of the file ``root/files[0]``)."""

    shard_id: str
    kind: str
    root: str
    files: tuple[str, ...]
    start: int = 0
    stop: int = 0

    def to_row(self) -> dict:
        return {"shard_id": self.shard_id, "kind": self.kind, "root": self.root, "files": "\n".join(self.files),
                "start": self.start, "stop": self.stop}

    @classmethod
    def from_row(cls, row: dict) -> Shard:
        return cls(str(row["shard_id"]), str(row["kind"]), str(row["root"]), tuple(str(row["files"]).split("\n")),
                   int(row["start"]), int(row["stop"]))


@dataclass
class ShardData:
    """What :func:`read_shard` decoded: ``images`` (N, C, H, W) float32, their ``ids``, and ``errors``."""

    ids: list[str]
    images: np.ndarray
    errors: list[tuple[str, str]]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "input"


def _expand(spec: str) -> tuple[str, list[Path]]:
    """(kind, files) of an --input: a folder (images, or the Parquet / npz files in it), a file or a glob."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        for kind, suffixes in (("parquet", (".parquet",)), ("npz", (".npz",))):
            if files and all(p.suffix.lower() in suffixes for p in files):
                return kind, files
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise InputError(f"--input {spec}: no image, Parquet or npz files in this folder "
                             f"(image files end in {', '.join(IMAGE_SUFFIXES)})")
        return "images", files  # every file: the ones that are not images go to the errors table
    files = sorted(Path(p) for p in glob.glob(spec, recursive=True)) if any(c in spec for c in "*?[") else [path]
    files = [p for p in files if p.is_file()]
    if not files:
        raise InputError(f"--input {spec}: no such folder or file (give a folder of images, *.parquet or *.npz)")
    kinds = {p.suffix.lower() for p in files}
    if kinds == {".parquet"}:
        return "parquet", files
    if kinds == {".npz"}:
        return "npz", files
    if kinds <= set(IMAGE_SUFFIXES):
        return "images", files
    raise InputError(f"--input {spec}: expected image files, or all .parquet, or all .npz files; got "
                     f"{', '.join(sorted(kinds))}")


def _rows(kind: str, path: Path) -> int:
    """Row count from a file's header (Parquet metadata, the npz array's header); unreadable files: 0."""
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        with np.load(path, allow_pickle=False) as data:
            key = next((k for k in NPZ_KEYS if k in data.files), None)
            return 0 if key is None else int(data[key].shape[0]) if data[key].ndim else 0
    except Exception:  # a broken file is one error row of its own shard, reported by read_shard
        return 0


def plan_shards(spec: str, shard_size: int = 256) -> list[Shard]:
    """The shards of ``spec`` (a folder, a file or a glob), ``shard_size`` inputs each, in a stable order.

    >>> import tempfile, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> np.savez(f"{folder}/part.npz", x=np.zeros((5, 1, 4, 4), np.float32))
    >>> [(s.kind, s.start, s.stop) for s in plan_shards(f"{folder}/*.npz", shard_size=2)]
    [('npz', 0, 2), ('npz', 2, 4), ('npz', 4, 5)]
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard size: expected a positive integer, got {shard_size!r}")
    kind, files = _expand(spec)
    root = Path(spec) if Path(spec).is_dir() else Path(os.path.commonpath([p.parent.resolve() for p in files]))
    root = root.resolve()
    rel = [p.resolve().relative_to(root).as_posix() for p in files]
    shards = []
    if kind == "images":
        for i in range(0, len(rel), shard_size):
            chunk = tuple(rel[i:i + shard_size])
            shards.append(Shard(f"images-{i // shard_size:06d}-{_digest(chr(10).join(chunk))}", kind, str(root), chunk))
        return shards
    for path, name in zip(files, rel):
        n = _rows(kind, path)
        for start in range(0, max(n, 1), shard_size):
            stop = min(start + shard_size, n)
            shards.append(Shard(f"{_safe(Path(name).stem)}-{_digest(name)}-{start:09d}", kind, str(root), (name,), start, stop))
    return shards


def read_shard(shard: Shard, input_shape: tuple[int, int, int], value_range: tuple[float, float]) -> ShardData:
    """Decode one shard into the model's float32 (N, C, H, W) input; unreadable inputs become errors."""
    readers = {"images": _read_images, "parquet": _read_parquet, "npz": _read_npz}
    ids, images, errors = readers[shard.kind](shard, tuple(input_shape), tuple(value_range))
    batch = np.stack(images).astype(np.float32, copy=False) if images else np.zeros((0, *input_shape), np.float32)
    return ShardData(ids, batch, errors)


def _read_images(shard: Shard, shape: tuple, value_range: tuple) -> tuple[list, list, list]:
    from xaisdk.runtime.images import load_image

    ids, images, errors = [], [], []
    for name in shard.files:
        try:
            images.append(load_image(Path(shard.root) / name, shape, value_range))
            ids.append(name)
        except InputError as err:
            errors.append((name, str(err).replace(str(Path(shard.root) / name), name)))
    return ids, images, errors


def _as_image(value: object, where: str, shape: tuple, value_range: tuple) -> np.ndarray:
    """One stored image: encoded bytes (PNG, JPEG...) or numbers (uint8 or float in the model's range)."""
    from xaisdk.runtime.images import as_model_batch

    if isinstance(value, (bytes, bytearray)):
        array = _decode_bytes(bytes(value), where, shape)
    else:
        array = np.asarray(value)
    if array.ndim == 1 and array.size == int(np.prod(shape)):
        array = array.reshape(shape)
    batch, _ = as_model_batch(array, shape, value_range)
    return batch[0]


def _decode_bytes(data: bytes, where: str, shape: tuple) -> np.ndarray:
    """Encoded image bytes as 8-bit (C, H, W) pixels, with the size and channel rules of ``load_image``."""
    from xaisdk.input_files import image_from_stream

    c, h, w = shape
    with image_from_stream(io.BytesIO(data), where) as img:
        if img.size != (w, h):
            raise InputError(f"{where}: image is {img.size[0]} wide x {img.size[1]} high but the model takes {w} wide x "
                             f"{h} high; resize or crop it first (images are not resized automatically)")
        try:
            pixels = np.asarray(img.convert("L" if c == 1 else "RGB"))
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise InputError(f"{where}: cannot read image: {err}") from None
    return pixels[np.newaxis] if c == 1 else pixels.transpose(2, 0, 1)


def _read_parquet(shard: Shard, shape: tuple, value_range: tuple) -> tuple[list, list, list]:
    import pyarrow.parquet as pq

    name = shard.files[0]
    try:
        table = pq.read_table(Path(shard.root) / name)
        if IMAGE_COLUMN not in table.column_names:
            raise InputError(f"no {IMAGE_COLUMN!r} column (columns: {', '.join(table.column_names)})")
        table = table.slice(shard.start, shard.stop - shard.start)
    except InputError as err:
        return [], [], [(name, str(err))]
    except Exception as err:  # pyarrow's errors for corrupt files have no common base class worth naming
        return [], [], [(name, f"not a readable Parquet file: {err}")]
    values = table.column(IMAGE_COLUMN).to_pylist()
    given = table.column(ID_COLUMN).to_pylist() if ID_COLUMN in table.column_names else None
    return _decode_rows(name, shard.start, values, given, shape, value_range)


def _read_npz(shard: Shard, shape: tuple, value_range: tuple) -> tuple[list, list, list]:
    name = shard.files[0]
    try:
        with np.load(Path(shard.root) / name, allow_pickle=False) as data:
            key = next((k for k in NPZ_KEYS if k in data.files), None)
            if key is None:
                raise InputError(f"no array named {' or '.join(NPZ_KEYS)} (arrays: {', '.join(data.files)})")
            values = data[key][shard.start:shard.stop]
            given = [str(v) for v in data["ids"][shard.start:shard.stop]] if "ids" in data.files else None
    except InputError as err:
        return [], [], [(name, str(err))]
    except Exception as err:  # zipfile / numpy format errors of a corrupt file
        return [], [], [(name, f"not a readable npz file: {err}")]
    return _decode_rows(name, shard.start, list(values), given, shape, value_range)


def _decode_rows(name: str, start: int, values: list, given: list | None, shape: tuple,
                 value_range: tuple) -> tuple[list, list, list]:
    ids, images, errors = [], [], []
    for offset, value in enumerate(values):
        input_id = str(given[offset]) if given is not None else f"{name}:{start + offset}"
        try:
            images.append(_as_image(value, input_id, shape, value_range))
            ids.append(input_id)
        except InputError as err:
            errors.append((input_id, str(err)))
    return ids, images, errors
