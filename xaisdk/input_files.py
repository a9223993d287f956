"""Limits on what xaisdk reads from files, and the one way it opens them.

A service that explains images hands file paths and checkpoints from its callers to xaisdk, so nothing
read from a file may decide on its own how much memory is allocated. These bounds are generous for real
models (a 224-px ImageNet ResNet, a 1024-px medical-image model, a hyperspectral cube) and far below
what takes a machine down:

===========================  ==================  ============================================================
constant                     value               what it bounds
===========================  ==================  ============================================================
``MAX_IMAGE_SIDE``           8192                height or width of a model input, a config's image size
``MAX_IMAGE_PIXELS``         67,108,864 (2**26)  height x width of an image file (checked from its header,
                                                 before decoding) and of a model input (e.g. 8192 x 8192)
``MAX_IN_CHANNELS``          512                 channels of a model input
``MAX_CHANNELS``             8192                width of any convolution layer a config asks for
``MAX_HIDDEN``               65536               width of a fully connected layer
``MAX_BLOCKS``               64                  residual blocks, down-sampling stages, dilated layers
``MAX_CLASSES``              100,000             classes of a classifier or generator
``MAX_PARAMETERS``           500,000,000         parameters of one network built from a config (2 GB in
                                                 float32), counted before any memory is allocated
===========================  ==================  ============================================================

Only regular files are opened: a FIFO, a device or a socket given as a path would block a reader
forever or stream without end, so :func:`open_regular_file` refuses them without blocking.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Union

from xaisdk.errors import InputError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_BLOCKS",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_HIDDEN",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
    "MAX_IN_CHANNELS",
    "MAX_PARAMETERS",
    "check_image_size",
    "open_image",
    "open_regular_file",
]

MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 2**26
MAX_IN_CHANNELS = 512
MAX_CHANNELS = 8192
MAX_HIDDEN = 65536
MAX_BLOCKS = 64
MAX_CLASSES = 100_000
MAX_PARAMETERS = 500_000_000

PathLike = Union[str, "os.PathLike[str]"]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular_file(path: PathLike, what: str = "file", *, follow_symlinks: bool = True) -> IO[bytes]:
    """Open ``path`` for reading in binary mode if it is a regular file (symlinks to one are followed).

    The file is opened without blocking and checked on the open descriptor, so a FIFO, a device or a
    socket is refused at once (and cannot be swapped in between a check and the open); with
    ``follow_symlinks=False`` a link as the last component is refused too. ``what`` names
    the file in messages: ``"<path>: no such <what>"``, ``"<path>: is a FIFO (named pipe), not a
    regular <what>"``.

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "a.bin"), "wb") as out:
    ...     _ = out.write(b"xyz")
    >>> with open_regular_file(os.path.join(folder, "a.bin")) as handle:
    ...     handle.read()
    b'xyz'
    >>> try:
    ...     open_regular_file(folder, "image file")
    ... except InputError as err:
    ...     print(str(err).replace(folder, "<folder>"))
    <folder>: is a directory, not a regular image file
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise InputError(f"{name}: no such {what}") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not a regular {what}") from None
    except OSError as err:
        raise InputError(f"{name}: cannot open {what}: {err.strerror or err}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{name}: is {_kind(mode)}, not a regular {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_image_size(width: int, height: int, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image of ``width`` x ``height`` pixels above ``max_pixels`` (``where`` names it).

    >>> check_image_size(13000, 13000, "big.png")
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: big.png: image is 13000 x 13000 = 169000000 pixels, above the limit of 67108864 pixels
    """
    if width * height > max_pixels:
        raise InputError(f"{where}: image is {width} x {height} = {width * height} pixels, "
                         f"above the limit of {max_pixels} pixels")


@contextlib.contextmanager
def open_image(path: PathLike, what: str = "image file", max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """Open an image file lazily: only its header is read, and its size is checked before any decoding.

    Yields the pillow image (call ``.load()`` or convert it inside the ``with`` block). Refused with
    :class:`xaisdk.InputError` naming the path: paths that are not regular files (see
    :func:`open_regular_file`), files pillow cannot identify, and images whose header declares more than
    ``max_pixels`` pixels (pillow's own decompression-bomb refusal included). Errors raised while
    decoding inside the block are the caller's to handle.

    >>> import tempfile, os
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> Image.new("L", (7, 3)).save(path)
    >>> with open_image(path) as img:
    ...     img.size
    (7, 3)
    >>> try:
    ...     with open_image(path, max_pixels=20) as img:
    ...         pass
    ... except InputError as err:
    ...     print(str(err).replace(path, "<path>"))
    <path>: image is 7 x 3 = 21 pixels, above the limit of 20 pixels
    """
    with open_regular_file(path, what) as handle, image_from_stream(handle, os.fspath(path), max_pixels) as img:
        yield img


@contextlib.contextmanager
def image_from_stream(stream: IO[bytes], name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """:func:`open_image` for bytes already at hand (a file object, ``io.BytesIO``): the header is read
    and its size checked against ``max_pixels`` before any decoding; refusals name ``name``.

    >>> import io
    >>> with image_from_stream(io.BytesIO(b"not an image"), "upload") as img:
    ...     pass
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: upload: not an image file pillow can read
    """
    from PIL import Image, UnidentifiedImageError  # here: `import xaisdk` stays fast

    try:
        img = Image.open(stream)
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file pillow can read") from None
    except Image.DecompressionBombError as err:
        raise InputError(f"{name}: {err}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # a header pillow recognises but cannot parse
        raise InputError(f"{name}: cannot read image header: {err}") from None
    with img:
        check_image_size(img.width, img.height, name, max_pixels)
        yield img
