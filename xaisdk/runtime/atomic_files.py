"""Files written so that a crash leaves the old file or the whole new one, and no debris.

Every atomic writer in xaisdk (checkpoints, bundle graphs, TensorRT plans, PNGs) writes to a
temporary file next to its target, named ``.{target name}.{pid}.{random}.tmp``, flushes it to
disk and renames it over the target. A process killed mid-write (SIGKILL, the out-of-memory
killer) leaves that temporary file behind; the next write to the same target removes it
(:func:`remove_stale_temps`), recognised by the name pattern and by its process id no longer
running, so a temporary file of a live writer is never touched. Temporary files named by earlier
xaisdk versions (``.{name}.{8 random characters}.tmp``, no process id) are removed once they have
not been modified for :data:`LEGACY_STALE_SECONDS`.

Failures of the operating system (disk full, no permission, read-only file system, a file where a
folder is expected) become :class:`xaisdk.errors.OutputError` naming the target, not a traceback.

Torch-free: imported by the serving core and by the torch layers alike.

>>> import tempfile
>>> target = Path(tempfile.mkdtemp()) / "model.bin"
>>> atomic_write_bytes(target, b"weights").read_bytes()
b'weights'
>>> with atomic_file(target) as handle:
...     _ = handle.write(b"new weights")
>>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
(b'new weights', ['model.bin'])
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from xaisdk.errors import OutputError

__all__ = [
    "LEGACY_STALE_SECONDS",
    "atomic_file",
    "atomic_write_bytes",
    "exchange_paths",
    "fsync_folder",
    "output_error",
    "pid_alive",
    "remove_stale_temps",
    "temp_path",
]

LEGACY_STALE_SECONDS = 3600.0
"""Age (since last modification) after which a temporary file without a process id counts as abandoned."""

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this machine (a process of another user counts).

    >>> pid_alive(os.getpid()), pid_alive(0)
    (True, False)
    """
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: never call a pid dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_path(target: str | os.PathLike) -> Path:
    """A fresh temporary name next to ``target`` carrying this process's id.

    >>> temp_path("/data/model.pt").name.startswith(f".model.pt.{os.getpid()}.")
    True
    """
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _stale(entry: os.DirEntry, name: str, now: float) -> bool:
    tail = entry.name[len(name) + 2:-len(".tmp")]  # what lies between ".{name}." and ".tmp"
    ours = re.fullmatch(r"(\d+)\.[0-9a-f]{12}", tail)
    if ours:
        return not pid_alive(int(ours.group(1)))
    if re.fullmatch(r"[a-z0-9_]{8}", tail):  # tempfile.mkstemp's names (earlier versions)
        try:
            return now - entry.stat(follow_symlinks=False).st_mtime > LEGACY_STALE_SECONDS
        except OSError:
            return False
    return False


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers left next to ``target``; returns what was removed.

    Only regular files named like this module's (or an earlier version's) temporary files of exactly
    ``target`` are candidates, and only those whose writer no longer runs.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".model.pt.999999999.0123456789ab.tmp").write_bytes(b"cut short")  # pid beyond pid_max
    >>> [p.name for p in remove_stale_temps(folder / "model.pt")], list(folder.iterdir())
    (['.model.pt.999999999.0123456789ab.tmp'], [])
    """
    target = Path(target)
    prefix, removed, now = f".{target.name}.", [], time.time()
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        if entry.is_file(follow_symlinks=False) and _stale(entry, target.name, now):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def output_error(err: OSError, target: str | os.PathLike, action: str = "write") -> OutputError:
    """``err`` as an :class:`OutputError` naming ``target`` (and the path the system named, when another).

    >>> str(output_error(OSError(_errno.ENOSPC, "No space left on device", "/x/.m.pt.1.tmp"), "/x/m.pt"))
    'cannot write /x/m.pt: No space left on device'
    >>> str(output_error(NotADirectoryError(_errno.ENOTDIR, "Not a directory", "/x/a"), "/x/a/b/m.pt"))
    'cannot write /x/a/b/m.pt: Not a directory (/x/a)'
    """
    reason = err.strerror or str(err) or type(err).__name__
    where = os.fspath(target)
    named = os.fsdecode(err.filename) if err.filename is not None else None
    if named and Path(named) != Path(where) and not Path(named).name.startswith(f".{Path(where).name}."):
        reason += f" ({named})"
    return OutputError(f"cannot {action} {where}: {reason}", errno=err.errno)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush ``folder``'s entries (a rename in it) to disk, where the system allows it; best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is already atomic
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``target`` in one step when the block ends.

    Creates the parent folders, removes stale temporary files of ``target`` first, writes a
    temporary file with the usual permissions (``0o666`` less the umask), flushes it to disk and
    renames it over ``target``. If the block raises, ``target`` is left as it was and the temporary
    file is removed. OSError becomes :class:`OutputError`. ``handle.name`` is the temporary file's
    path, to check what was written before it goes live.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with atomic_file(target) as handle:
    ...     _ = handle.write(b"complete")
    >>> target.read_text()
    'complete'
    """
    target = Path(target)
    tmp = temp_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        handle = open(tmp, "xb")  # "x": O_EXCL; mode 0o666 less the umask (mkstemp would give 0o600)
    except OSError as err:
        raise output_error(err, target) from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_folder(target.parent)
    except OSError as err:
        raise output_error(err, target) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` with :func:`atomic_file`; returns ``target`` as a Path.

    >>> import tempfile
    >>> atomic_write_bytes(Path(tempfile.mkdtemp()) / "a" / "b.bin", b"\\x00\\x01").read_bytes()
    b'\\x00\\x01'
    """
    with atomic_file(target) as handle:
        handle.write(data)
    return Path(target)


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, changing nothing, where the system or the file system cannot (other systems,
    old kernels, some network file systems); raises OSError for any other failure.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a").write_text("A"), (root / "b").write_text("B")
    >>> swapped = exchange_paths(root / "a", root / "b")
    >>> (root / "a").read_text() == ("B" if swapped else "A")
    True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (_errno.ENOSYS, _errno.EINVAL, _errno.ENOTSUP, _errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))
