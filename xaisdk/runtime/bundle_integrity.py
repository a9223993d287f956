"""What a bundle may make a process read and run: bounded, regular files inside the bundle folder, a
manifest of bounded size and nesting, and ONNX graphs whose weights are all in the hashed bytes.

Used by :mod:`xaisdk.runtime.bundle` and by the ONNX Runtime loaders of bare ``.onnx`` files. Standard
library and numpy only (no onnx, no protobuf package): :func:`scan_onnx` walks the few ModelProto
fields it needs straight from the wire format.

- :func:`read_inside` reads a file by name from a folder: the resolved path (symlinks followed) must lie
  inside the folder, it must be a regular file (a FIFO or device is refused without blocking), its size
  is checked against the size the manifest declares and a hard cap before one byte is read.
- :func:`load_json` refuses a manifest larger than a cap or nested deeper than :data:`MAX_JSON_DEPTH`
  before ``json.loads`` sees it (a 100,000-deep document would raise RecursionError).
- :func:`scan_onnx` refuses tensors stored as external data (ONNX Runtime would read those files from
  paths inside the graph, unverified, relative to the working directory for a graph loaded from bytes)
  and nodes outside the default ONNX domain (e.g. ``com.microsoft`` contrib ops, which the exporter
  never writes and TensorRT cannot parse).

>>> scan_onnx(b"")  # an empty ModelProto has nothing to refuse (ONNX Runtime refuses it later)
>>> try:
...     scan_onnx(b"\\x3a\\x05", "m.onnx")  # field 7 (graph), 5 bytes announced, none there
... except InputError as err:
...     print(err)
m.onnx: not a valid ONNX file (field 7 runs past the end of its message at byte 2)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from xaisdk.errors import InputError
from xaisdk.input_files import open_regular_file

__all__ = ["MAX_GRAPH_BYTES", "MAX_JSON_DEPTH", "MAX_MANIFEST_BYTES", "json_depth", "load_json", "read_inside",
           "read_onnx_file", "scan_onnx"]

MAX_MANIFEST_BYTES = 16 << 20
"""Largest manifest read (an exported one is a few KB; 100,000 class names fit)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays accepted in a manifest (an exported one has 5)."""
MAX_GRAPH_BYTES = (2 << 30) - 1
"""Largest graph file read: protobuf's 2 GiB limit, above which ONNX needs external data (refused)."""
MAX_PROTO_DEPTH = 100
"""Deepest nesting of protobuf messages (subgraphs of If/Loop nodes); protobuf's own default limit."""

# JSON string literals (escapes included), removed before counting brackets.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _where(path: Path | str | None) -> str:
    return f"{path}: " if path is not None else ""


def read_inside(folder: Path, name: str, *, limit: int, size: int | None = None, what: str = "bundle file") -> bytes:
    """The bytes of ``folder / name``: a regular file whose resolved path lies inside ``folder``, of
    ``size`` bytes when given, and at most ``limit``. Anything else raises :class:`InputError`.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.onnx").write_bytes(b"abc")
    >>> read_inside(folder, "a.onnx", limit=10, size=3)
    b'abc'
    >>> read_inside(folder, "a.onnx", limit=10, size=5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: .../a.onnx: the file is 3 bytes but the manifest records 5 ...
    """
    root = folder.resolve()
    path = folder / name
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise InputError(f"{folder}: {what} {name} is missing") from None
    except (OSError, RuntimeError) as err:  # a symlink loop, a permission problem
        raise InputError(f"{path}: cannot resolve the path ({err})") from None
    if real != root and root not in real.parents:
        raise InputError(f"{path}: links to {real}, outside the bundle folder {root}; bundle files must lie inside it")
    try:  # the final name was resolved above: a link swapped in since is refused, not followed
        opened = open_regular_file(real, "file", follow_symlinks=False)
    except InputError as err:  # a folder, FIFO or device in a file's place
        raise InputError(f"{folder}: {what} {name} is missing (not a regular file there: {err})") from None
    with opened as handle:
        info = os.fstat(handle.fileno())
        if size is not None and info.st_size != size:
            raise InputError(f"{path}: the file is {info.st_size} bytes but the manifest records {size} "
                             "(file changed or truncated after export; re-export the bundle)")
        if info.st_size > limit:
            raise InputError(f"{path}: the file is {info.st_size} bytes, more than the {limit} bytes allowed")
        data = _read_at_most(handle, min(info.st_size, limit) + 1)
    if len(data) > limit or (size is not None and len(data) != size):
        raise InputError(f"{path}: the file changed size while it was read")
    return data


def _read_at_most(handle: Any, count: int) -> bytes:
    chunks, left = [], count
    while left > 0:
        chunk = handle.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def json_depth(data: bytes) -> int:
    """The deepest nesting of objects and arrays in the JSON text ``data`` (brackets inside strings
    do not count); a linear scan with no recursion, whatever the input.

    >>> json_depth(b'{"a": [1, {"b": "]]]["}]}'), json_depth(b"3")
    (3, 0)
    """
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def load_json(folder: Path, name: str, *, limit: int = MAX_MANIFEST_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse ``folder / name`` (read with :func:`read_inside`) as UTF-8 JSON of at most ``limit`` bytes
    and ``max_depth`` levels of nesting; non-finite numbers (``NaN``, ``Infinity``) are refused.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "m.json").write_text("[" * 100 + "]" * 100)
    >>> load_json(folder, "m.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: .../m.json: not valid JSON (nested 100 levels deep; at most 32 are allowed)
    """
    path = folder / name
    data = read_inside(folder, name, limit=limit)
    depth = json_depth(data)
    if depth > max_depth:
        raise InputError(f"{path}: not valid JSON (nested {depth} levels deep; at most {max_depth} are allowed)")

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a number JSON allows")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise InputError(f"{path}: not valid JSON ({err})") from None


# ---------------------------------------------------------------------------- ONNX wire format

_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _FUNCTION, _TRAINING = range(8)
# For each message type, the length-delimited fields that hold messages to look into (onnx.proto).
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _TENSOR: {},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _FUNCTION: {7: _NODE},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
}
_DEFAULT_DOMAINS = ("", "ai.onnx")
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class _Malformed(Exception):
    pass


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed(f"a truncated or overlong varint at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes, start: int, end: int):
    """(field number, wire type, value or (start, end) of the payload) of one message's fields; fixed-width
    fields and groups (a deprecated encoding protobuf still parses) are skipped."""
    pos = start
    while pos < end:
        number, wire, pos = _key(data, pos, end)
        if wire == 0:
            value, pos = _varint(data, pos, end)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _Malformed(f"field {number} runs past the end of its message at byte {pos}")
            yield number, wire, (pos, pos + length)
            pos += length
        else:
            pos = _skip(data, pos, end, number, wire)


def _key(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    key, pos = _varint(data, pos, end)
    if key >> 3 == 0:
        raise _Malformed(f"field number 0 at byte {pos}")
    return key >> 3, key & 7, pos


def _skip(data: bytes, pos: int, end: int, number: int, wire: int) -> int:
    """The position after a fixed-width field or a whole group (nested groups included) starting at ``pos``."""
    if wire in (1, 5):
        pos += 8 if wire == 1 else 4
        if pos > end:
            raise _Malformed(f"field {number} runs past the end of its message at byte {end}")
        return pos
    if wire != 3:
        raise _Malformed(f"wire type {wire} of field {number} at byte {pos}")
    open_groups = [number]
    while open_groups:
        if len(open_groups) > MAX_PROTO_DEPTH:
            raise _Malformed(f"groups nested more than {MAX_PROTO_DEPTH} levels deep at byte {pos}")
        if pos >= end:
            raise _Malformed(f"group {open_groups[-1]} is not closed")
        inner, wire, pos = _key(data, pos, end)
        if wire == 0:
            pos = _varint(data, pos, end)[1]
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            pos += length
            if pos > end:
                raise _Malformed(f"field {inner} runs past the end of its message at byte {end}")
        elif wire == 3:
            open_groups.append(inner)
        elif wire == 4:
            if inner != open_groups.pop():
                raise _Malformed(f"group end {inner} does not match its start at byte {pos}")
        else:
            pos = _skip(data, pos, end, inner, wire)
    return pos


def _text(data: bytes, span: tuple[int, int]) -> str:
    return data[span[0]:span[1]].decode("utf-8", "replace")


def scan_onnx(data: bytes, where: Path | str | None = None) -> None:
    """Refuse an ONNX model (serialized ModelProto ``data``) with tensors stored as external data, with
    nodes outside the default ONNX domain, nested deeper than protobuf allows, or not parseable as
    protobuf. Raises :class:`InputError` starting with ``where``; returns None for an acceptable model.

    Walks every graph, node, attribute, initializer, subgraph, local function and training graph,
    skipping tensor payloads by their length (a few ms for a 100 MB graph).

    >>> scan_onnx(b"\\x08\\x08")  # ir_version 8, nothing else: nothing to refuse
    """
    prefix = _where(where)
    stack = [(_MODEL, 0, len(data), 1)]
    try:
        while stack:
            kind, start, end, depth = stack.pop()
            if depth > MAX_PROTO_DEPTH:
                raise InputError(f"{prefix}graphs nested more than {MAX_PROTO_DEPTH} levels deep")
            children = _CHILDREN[kind]
            name = op_type = domain = None
            external = False
            for number, wire, value in _fields(data, start, end):
                if wire == 2 and number in children:
                    stack.append((children[number], *value, depth + 1))
                elif kind == _TENSOR:
                    if number == 14 and wire == 0 and value == _EXTERNAL or number == 13 and wire == 2:
                        external = True
                    elif number == 8 and wire == 2:
                        name = _text(data, value)
                elif kind == _NODE and wire == 2:
                    if number == 3:
                        name = _text(data, value)
                    elif number == 4:
                        op_type = _text(data, value)
                    elif number == 7:
                        domain = _text(data, value)
            if external:
                raise InputError(f"{prefix}tensor {name or '(unnamed)'!r} is stored as external data (a separate file "
                                 "that the bundle manifest does not hash); only graphs with all weights inside the "
                                 "file are run (re-export the model with `xaisdk export`)")
            if kind == _NODE and (domain or "") not in _DEFAULT_DOMAINS:
                raise InputError(f"{prefix}node {name or '(unnamed)'!r} uses {domain}::{op_type}, outside the default "
                                 "ONNX domain; only standard ONNX ops are run (as export allows)")
    except _Malformed as err:
        raise InputError(f"{prefix}not a valid ONNX file ({err})") from None


def read_onnx_file(path: str | os.PathLike, *, limit: int = MAX_GRAPH_BYTES) -> bytes:
    """The bytes of a bare ``.onnx`` file (a regular file of at most ``limit`` bytes, see
    :func:`read_inside`), checked by :func:`scan_onnx`: what a loader hashes and hands to ONNX Runtime."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    real = path.resolve()  # a file the caller names directly may be a link; only bundle files must stay inside
    data = read_inside(real.parent, real.name, limit=limit, what="ONNX file")
    scan_onnx(data, path)
    return data
