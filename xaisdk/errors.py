"""Exceptions raised by xaisdk for problems in what the caller passed in."""


class InputError(ValueError):
    """Bad input from the caller: wrong shape, dtype, range, file format or argument.

    The message names the argument and what was expected, so that a CLI can print it as it is.

    >>> try:
    ...     raise InputError("x: expected 4 dimensions (N, C, H, W), got 2")
    ... except ValueError as err:
    ...     print(err)
    x: expected 4 dimensions (N, C, H, W), got 2
    """


class OutputError(InputError):
    """A file or folder could not be written: no space left, no permission, a read-only file system,
    a file where a folder is expected. ``errno`` is that of the operating system's error (or None).

    >>> err = OutputError("cannot write /full/model.pt: No space left on device", errno=28)
    >>> isinstance(err, InputError), err.errno
    (True, 28)
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
