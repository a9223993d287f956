"""xaisdk: one-vs-one attribution and generated counterfactuals for image classifiers."""

from xaisdk.errors import InputError

__version__ = "0.1.0"

__all__ = ["InputError", "__version__"]
