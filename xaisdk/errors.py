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
