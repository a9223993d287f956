"""Deployment: ONNX export with input-gradient graphs (:mod:`xaisdk.deploy.export`, needs torch and
onnx) and, re-exported from the torch-free core, the bundle reader (:mod:`xaisdk.runtime.bundle`).

The names below are resolved on first use, so ``import xaisdk.deploy`` (and loading a bundle in a
serving image) never pulls in torch; ``from xaisdk.deploy import export_bundle`` imports the
exporter, and with it torch, only then.

>>> from xaisdk.deploy import read_bundle, export_bundle
>>> export_bundle.__module__, read_bundle.__module__
('xaisdk.deploy.export', 'xaisdk.runtime.bundle')
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Bundle", "export_bundle", "read_bundle"]

_HOMES = {"export_bundle": "xaisdk.deploy.export", "read_bundle": "xaisdk.runtime.bundle", "Bundle": "xaisdk.runtime.bundle"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'xaisdk.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
