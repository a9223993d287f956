"""Image files and other paths a caller hands in: sizes are read from the header before decoding, and only
regular files are opened (a FIFO or a device would block a reader or stream without end)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaisdk.data import load_image_folder, load_npz
from xaisdk.errors import InputError
from xaisdk.input_files import MAX_IMAGE_PIXELS, open_image, open_regular_file
from xaisdk.models import load_classifier, load_ganmex, shipped_ganmex_path
from xaisdk.models.ganmex import load_model
from xaisdk.runtime.images import load_image

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")

HUGE_SIDE = 13000  # the bug report's PNG: 169 million pixels, 1.4 GB once decoded as float


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 1-bit pixels, with one tiny IDAT chunk: the header is
    all a size check may read."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """A real 13000 x 13000 1-bit PNG written by pillow (about 20 KB on disk)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (HUGE_SIDE, HUGE_SIDE)).save(path)
    return path


@pytest.fixture()
def special_paths(tmp_path) -> dict[str, Path]:
    """Paths that exist but are not regular files: a FIFO nobody writes to, a directory, a character device."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    return {"FIFO": fifo, "directory": tmp_path, "character device": Path("/dev/zero")}


@pytest.fixture(autouse=True)
def no_hang():
    """A reader that blocks on a FIFO would hang the test run: fail it after 20 s instead."""
    def fail(signum, frame):
        raise TimeoutError("blocked reading a path that is not a regular file")
    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# -------------------------------------------------------------------------------------------- image sizes


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_png_is_refused_from_its_header(huge_png):
    with pytest.raises(InputError, match=f"huge.png: image is {HUGE_SIDE} x {HUGE_SIDE} = 169000000 pixels, above the limit"):
        load_image(huge_png, (1, 28, 28))
    with pytest.raises(InputError, match="above the limit"):
        with open_image(huge_png):
            pass


@pytest.mark.parametrize("side", [20_000, 100_000])
def test_declared_sizes_beyond_pillows_own_limit_are_input_errors(tmp_path, side):
    """Pillow raises DecompressionBombError for these itself: it arrives as InputError naming the file."""
    path = tmp_path / "declared.png"
    path.write_bytes(_png_declaring(side, side))
    with pytest.raises(InputError, match="declared.png"):
        load_image(path, (1, 28, 28))


def test_wrong_size_within_the_cap_is_refused_before_decoding(tmp_path):
    """A header that declares 4000 x 3000 pixels (under the cap) with almost no pixel data: refused for its
    size, so nothing was decoded (decoding would have failed on the missing data first)."""
    path = tmp_path / "declared.png"
    path.write_bytes(_png_declaring(4000, 3000))
    with pytest.raises(InputError, match="4000 wide x 3000 high but the model takes 28 wide x 28 high"):
        load_image(path, (1, 28, 28))


def test_the_cap_is_documented_and_configurable_for_image_folders(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("L", (10, 10), 200).save(tmp_path / cls / f"x{i}.png")
    assert MAX_IMAGE_PIXELS == 2**26
    assert load_image_folder(tmp_path, test_fraction=0.5).train.x.shape[1:] == (1, 10, 10)
    with pytest.raises(InputError, match=r"x0.png: image is 10 x 10 = 100 pixels, above the limit of 99 pixels"):
        load_image_folder(tmp_path, test_fraction=0.5, max_pixels=99)
    with pytest.raises(InputError, match="max_pixels"):
        load_image_folder(tmp_path, max_pixels=0)


_MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys, warnings
    import numpy as np
    from PIL import Image
    from xaisdk.data import load_image_folder
    from xaisdk.errors import InputError
    from xaisdk.runtime.images import load_image
    warnings.simplefilter("ignore")
    huge, folder, small = sys.argv[1:4]
    load_image(small, (1, 28, 28))  # warm up pillow's decoder
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused = 0
    for call in (lambda: load_image(huge, (1, 28, 28)), lambda: load_image_folder(folder)):
        try:
            call()
        except InputError:
            refused += 1
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"refused": refused, "growth_mb": (after - before) / 1024}))
""")


def test_huge_image_costs_no_memory(tmp_path, huge_png):
    """Decoding the 13000^2 PNG takes 169 MB (one byte per pixel) before any conversion; the refusal takes none."""
    folder = tmp_path / "folder"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        Image.new("L", (28, 28)).save(folder / cls / "small.png")
    os.link(huge_png, folder / "a" / "huge.png")
    small = folder / "b" / "small.png"
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(huge_png), str(folder), str(small)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["refused"] == 2 and report["growth_mb"] < 40, report


# -------------------------------------------------------------------------------------------- regular files only


@pytest.mark.parametrize("kind", ["FIFO", "directory", "character device"])
def test_every_reader_refuses_paths_that_are_not_regular_files(special_paths, kind):
    path = special_paths[kind]
    readers = [
        lambda: open_regular_file(path),
        lambda: load_image(path, (1, 28, 28)),
        lambda: load_classifier(path),
        lambda: load_ganmex(path),
        lambda: load_model(path),
    ]
    if kind != "directory":  # a directory given as the .npz is refused by load_npz's own check
        readers.append(lambda: load_npz(path))
    for read in readers:
        with pytest.raises(InputError, match=f"is a {kind}|is an? {kind}|expected .*got a directory") as info:
            read()
        assert str(path) in str(info.value)


def test_a_fifo_inside_an_image_folder_is_skipped(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 6), 100, np.uint8)).save(tmp_path / cls / f"ok{i}.png")
    os.mkfifo(tmp_path / "a" / "pipe.png")
    split = load_image_folder(tmp_path, test_fraction=0.5)
    assert len(split.train) + len(split.test) == 4


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xaisdk.cli", *args], capture_output=True, text=True, timeout=120)


def _assert_one_line_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_cli_explain_refuses_a_fifo_and_a_huge_png_in_one_line(tmp_path, huge_png):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    model = str(shipped_ganmex_path("digits"))
    signal.alarm(0)  # the subprocess has its own timeout
    result = _run_cli("explain", "--bundle", model, "--input", str(fifo), "--target", "3", "--out", str(tmp_path / "o1"))
    _assert_one_line_failure(result, "pipe.png", "FIFO", "not a regular file")
    result = _run_cli("explain", "--bundle", model, "--input", str(huge_png), "--target", "3", "--out", str(tmp_path / "o2"))
    _assert_one_line_failure(result, "huge.png", "169000000 pixels, above the limit")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("shape", [(100_000, 3, 224, 224), (4, 1, 8, 8)])
def test_npz_header_declaring_more_than_it_holds_is_refused_before_allocating(tmp_path, shape):
    """numpy allocates what a .npy header declares before reading the data: a 60 GB shape over 64 bytes
    (and a small shape over too few bytes) is refused from the header."""
    import io
    import resource
    import zipfile

    from xaisdk.data import load_npz

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.arange(4))
    with zipfile.ZipFile(tmp_path / "forged.npz", "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 64)
        archive.writestr("y.npy", labels.getvalue())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=r"x: the header declares shape .* but the archive holds 64 bytes"):
        load_npz(tmp_path / "forged.npz")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing near 60 GB
    np.savez(tmp_path / "real.npz", x=np.zeros(shape if shape[0] < 10 else (4, 1, 8, 8), np.float32), y=np.arange(4) % 2)
    assert len(load_npz(tmp_path / "real.npz", test_fraction=0.5).train.x) == 2
