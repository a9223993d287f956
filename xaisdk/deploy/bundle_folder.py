"""Replacing a bundle folder: nothing lost, nothing left (what ``xaisdk export --force`` does).

The new bundle is written and verified in a hidden staging folder next to ``out``,
``.{out}.new-{pid}-{token}``. Files and folders in ``out`` that the old manifest does not list
(the user's ``NOTES.txt``, the TensorRT ``engines/`` cache) are carried into the staging folder as
hard links (copies where the file system has none); a name the new bundle itself writes refuses the
export instead. Cached engines are keyed by the sha256 of the graph they were built from
(:mod:`xaisdk.runtime.engines`), so plans of the old graphs are never used with the new ones, and a
re-export of the same model keeps its engines. Then the staging folder replaces ``out``:

- where the system can swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``: ext4,
  xfs, btrfs, tmpfs), the two are exchanged: at every instant ``out`` is the complete old or the
  complete new bundle, also for a process reading it meanwhile; the old bundle, now under the
  staging name, is then deleted;
- elsewhere ``out`` is renamed to ``.{out}.old-{pid}-{token}`` (same token) and the staging folder
  to ``out``. A process killed between the two renames leaves no ``out``, but the pair on disk
  says what happened: an ``old`` folder proves that its ``new`` twin had passed every check.

Folders are chosen over replacing files inside ``out`` one by one because an old manifest next to
a new graph (or the reverse) would be a bundle that is neither. Every export (and
:func:`recover_bundle_folder`) first finishes or undoes an interrupted replacement (``out`` missing:
install the verified ``new`` of an ``old``/``new`` pair, else put the ``old`` back) and deletes
the staging and old folders of exporters that no longer run (the pid in the name is checked, so a
concurrent export's folders are left alone; folders named by earlier versions, without a pid,
once untouched for an hour). A failure to write (disk full, no permission, read-only file system)
raises :class:`~xaisdk.errors.OutputError` and leaves the previous bundle as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from xaisdk.errors import InputError, OutputError
from xaisdk.runtime.atomic_files import LEGACY_STALE_SECONDS, exchange_paths, fsync_folder, pid_alive
from xaisdk.runtime.bundle import MANIFEST, SCHEMA
from xaisdk.runtime.bundle_integrity import load_json

__all__ = ["ACTIVE_TOKENS", "carry_user_files", "install_bundle", "prepare_out", "recover_bundle_folder", "swap_folder",
           "target_folder"]


def _is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds an xaisdk bundle manifest (not merely some file named manifest.json)."""
    try:
        manifest = load_json(folder, MANIFEST)  # bounded: a hostile manifest in --out is refused, not parsed whole
    except (OSError, InputError):
        return False
    return isinstance(manifest, dict) and manifest.get("schema") == SCHEMA


def prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    ancestor = next((folder for folder in out.parents if os.path.lexists(folder)), None)
    if ancestor is not None and not ancestor.is_dir():  # refused now, not after minutes of export
        raise OutputError(f"cannot write {out}: {ancestor} is a file, not a folder", errno.ENOTDIR)
    if out.is_dir() and any(out.iterdir()):
        if not _is_bundle(out):
            raise InputError(f"{out}: folder is not empty and is not an xaisdk bundle; refusing to write into it")
        if not force:
            raise InputError(f"{out}: a bundle is already there; pass force=True (--force) to replace it")


ACTIVE_TOKENS: set[str] = set()  # tokens of the exports running in this process (their folders are in use)


def swap_folder(out: Path, kind: str, token: str) -> Path:
    """The hidden sibling of ``out`` where an export stages its bundle (``new``) or parks the old one (``old``)."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{token}")


@dataclass(frozen=True)
class _Leftover:
    """A staging (``new``) or parked (``old``) folder of an export to ``out``, and whether its exporter runs."""

    path: Path
    kind: str
    token: str
    alive: bool
    legacy: bool  # named by an earlier version: the old bundle sits one level down, at path / out.name


def _leftovers(out: Path) -> list[_Leftover]:
    """The swap folders next to ``out``: this version's (pid in the name) and earlier versions' (mkdtemp names)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(new|old)-(?:(\d+)-([0-9a-f]{{12}})|([a-z0-9_]{{8}}))")
    found, now = [], time.time()
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return found
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        kind, pid, token, legacy = match.groups()
        if legacy:
            alive = now - entry.stat(follow_symlinks=False).st_mtime <= LEGACY_STALE_SECONDS
            found.append(_Leftover(Path(entry.path), kind, legacy, alive, True))
        else:
            mine = int(pid) == os.getpid()
            alive = token in ACTIVE_TOKENS if mine else pid_alive(int(pid))
            found.append(_Leftover(Path(entry.path), kind, token, alive, False))
    return found


def _newest(items: list[_Leftover]) -> _Leftover:
    return max(items, key=lambda item: item.path.stat().st_mtime)


def _restore(out: Path, dead: list[_Leftover]) -> str | None:
    """Put a bundle back at the missing ``out`` from the folders of a killed export; what was done, or None."""
    olds = {item.token: item for item in dead if item.kind == "old"}
    news = {item.token: item for item in dead if item.kind == "new" and not item.legacy}
    paired = [news[token] for token, old in olds.items() if token in news and not old.legacy]
    if paired:
        os.rename(_newest(paired).path, out)  # its old twin exists, so it had passed every check
        return f"{out}: finished replacing the bundle that an interrupted export had verified"
    if olds:
        old = _newest(list(olds.values()))
        os.rename(old.path / out.name if old.legacy else old.path, out)
        return f"{out}: put back the previous bundle that an interrupted export had moved aside"
    return None


def recover_bundle_folder(out: str | os.PathLike) -> list[str]:
    """Finish or undo a replacement of the bundle folder ``out`` that a killed export left half done,
    and delete the staging folders of exports that no longer run; returns what was done (empty if
    nothing). :func:`export_bundle` calls it first; call it yourself to get a bundle back at ``out``
    without exporting (the module docstring describes the folders involved).

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "bundle"
    >>> (out.parent / ".bundle.new-999999999-0123456789ab").mkdir()  # a killed export's staging folder
    >>> recover_bundle_folder(out), sorted(p.name for p in out.parent.iterdir())
    (['removed .bundle.new-999999999-0123456789ab (left by an interrupted export)'], [])
    """
    out = target_folder(out)
    notes = []
    dead = [item for item in _leftovers(out) if not item.alive]
    if dead and not os.path.lexists(out):
        restored = _restore(out, dead)
        if restored:
            notes.append(restored)
    for item in dead:
        if os.path.lexists(item.path):
            shutil.rmtree(item.path)
            notes.append(f"removed {item.path.name} (left by an interrupted export)")
    return notes


def target_folder(out: str | os.PathLike) -> Path:
    """``out`` as a Path; a symbolic link stands for the folder it points to (that folder is replaced, not the link)."""
    out = Path(out)
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def _bundle_names(out: Path) -> set[str]:
    """The top-level names in the bundle folder ``out`` that belong to its bundle (its manifest lists them)."""
    manifest = load_json(out, MANIFEST)
    listed = [*manifest.get("files", {})]
    listed += [graph.get("file", "") for graph in manifest.get("graphs", {}).values() if isinstance(graph, dict)]
    return {MANIFEST} | {Path(str(name)).parts[0] for name in listed if str(name) and Path(str(name)).parts}


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` whose files are hard links to the same data (real copies where links fail)."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        for child in src.iterdir():
            _link_tree(child, dst / child.name)
        shutil.copystat(src, dst)
    else:
        try:
            os.link(src, dst)
        except OSError:
            if not src.is_file():
                raise InputError(f"{src}: cannot carry this special file into the new bundle folder; move it away") from None
            shutil.copy2(src, dst)


def carry_user_files(out: Path, staging: Path) -> list[str]:
    """Carry what ``out`` holds beside its bundle into ``staging``; returns those names. A name that the
    new bundle writes too is refused: replacing it would delete a file the exporter did not write."""
    present = os.listdir(out) if out.is_dir() else []
    if not present:
        return []
    owned, written = _bundle_names(out), set(os.listdir(staging))
    kept = sorted(name for name in present if name not in owned)
    clash = [name for name in kept if name in written]
    if clash:
        raise InputError(f"{out}: {', '.join(clash)} is not part of the bundle there but the new bundle writes that "
                         "name; move it away first (--force replaces the bundle and keeps everything else)")
    for name in kept:
        _link_tree(out / name, staging / name)
    return kept


def install_bundle(staging: Path, out: Path, token: str) -> None:
    """Put the verified bundle in ``staging`` at ``out`` (the module docstring says how and why)."""
    fsync_folder(staging)
    if not os.path.lexists(out):
        os.rename(staging, out)
    elif exchange_paths(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # the old bundle now; a failure here is cleaned up next time
    else:
        old = swap_folder(out, "old", token)
        os.rename(out, old)
        try:
            os.rename(staging, out)
        except BaseException:
            with contextlib.suppress(OSError):  # else the next export puts it back (recover_bundle_folder)
                os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_folder(out.parent)
