"""The export's verification failure, shared by the classifier and generator exporters."""

from xaisdk.errors import InputError

__all__ = ["VerificationError"]


class VerificationError(InputError):
    """An exported graph disagrees with the torch model beyond the tolerance.

    >>> issubclass(VerificationError, InputError)
    True
    """
