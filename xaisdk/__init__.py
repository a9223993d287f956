"""xaisdk: one-vs-one attribution and generated counterfactuals for image classifiers."""

from typing import Any

from xaisdk.errors import InputError

__version__ = "0.1.0"

# Re-exported lazily, so that ``import xaisdk`` (and the torch-free runtime) does not import torch;
# the Explainer itself imports torch only for torch models.
_LAZY = {
    "load_classifier": "xaisdk.models",
    "load_shipped_classifier": "xaisdk.models",
    "load_ganmex": "xaisdk.models",
    "load_shipped_ganmex": "xaisdk.models",
    "Explainer": "xaisdk.explainer",
    "Explanation": "xaisdk.explainer",
    "Limits": "xaisdk.limits",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xaisdk' has no attribute {name!r}")


__all__ = ["InputError", "__version__", *_LAZY]
