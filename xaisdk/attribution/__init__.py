"""One-vs-one attribution methods.

Every method attributes ``S_source - S_target`` (``S_source`` alone when ``target`` is None) and
returns a numpy array shaped like ``x``. The functions named here are the torch reference
implementations; :mod:`xaisdk.methods.drivers` holds the same methods written against the
:class:`~xaisdk.runtime.backend.Backend` protocol (torch or ONNX Runtime). The feature-removal
methods ``sliding_patch``, ``lime`` and ``meaningful_perturbation`` (classic or inpainting fillers)
are Backend drivers only: they take ``(backend, x, weights)`` and return per-pixel maps (N, 1, H, W).

Importing this package (or :mod:`~xaisdk.methods.quadrature`, :mod:`~xaisdk.methods.drivers`)
does not import torch: the torch methods load on first use (PEP 562).

>>> from xaisdk.attribution import RULES
>>> "gausslegendre" in RULES
True
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from xaisdk.methods.quadrature import RULES, path_rule

# public name -> submodule defining it; METHODS lists them in this order
_TORCH_METHODS = {
    "gradient": "gradient",
    "grad_x_input": "gradient",
    "integrated_gradients": "integrated_gradients",
    "expected_gradients": "expected_gradients",
    "deeplift": "deeplift",
    "deepshap": "deeplift",
    "occlusion": "occlusion",
}
# the feature-removal Backend drivers (LIME needs scikit-image/-learn)
_REMOVAL_METHODS = ("sliding_patch", "lime", "meaningful_perturbation")


def _method(name: str) -> Any:
    return getattr(importlib.import_module(f"{__name__}.{_TORCH_METHODS[name]}"), name)


def __getattr__(name: str) -> Any:
    """Load ``METHODS``, the torch methods and the removal drivers on first access."""
    if name == "METHODS":
        value: Any = {method: _method(method) for method in _TORCH_METHODS}
    elif name in _TORCH_METHODS:
        value = _method(name)
    elif name == "sliding_patch":
        from xaisdk.methods.sliding_patch import sliding_patch as value
    elif name == "meaningful_perturbation":
        from xaisdk.methods.meaningful_perturbation import meaningful_perturbation as value
    elif name == "lime":
        from xaisdk.attribution.lime import lime as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """After importing a submodule the import system binds it on its package, which would make
    ``xaisdk.attribution.deeplift`` the module ``deeplift.py`` rather than the function of that name
    once something imported ``xaisdk.attribution.deeplift`` directly. This keeps the functions."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (name in _TORCH_METHODS or name in _REMOVAL_METHODS) and isinstance(value, types.ModuleType):
            return  # the function is loaded by __getattr__ instead
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "METHODS",
    "RULES",
    "deeplift",
    "deepshap",
    "expected_gradients",
    "grad_x_input",
    "gradient",
    "integrated_gradients",
    "lime",
    "meaningful_perturbation",
    "occlusion",
    "path_rule",
    "sliding_patch",
]
