"""Joining or starting Ray: the one place xaisdk imports it (lazily, so nothing else needs it installed)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from xaisdk.errors import InputError

__all__ = ["import_ray", "ray_session"]


def import_ray() -> Any:
    """The ``ray`` module, or an InputError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is part of the extra, and what the jobs run on)
    except ImportError as err:
        raise InputError(f"this command runs on Ray ({err.name} is not installed): pip install 'xaisdk[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, progress: bool = True) -> Iterator[Any]:
    """Yield ``ray`` connected to a cluster: the one this process already joined, else ``address``
    (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``), else a new local instance on this machine's
    cores, shut down again at the end. ``progress``: Ray Data's progress bars.

    Example (starts Ray)::

        with ray_session() as ray:
            print(ray.cluster_resources()["CPU"])
    """
    ray = import_ray()
    ray.data.DataContext.get_current().enable_progress_bars = progress
    if ray.is_initialized():
        yield ray
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as err:
        raise InputError(f"--address {address}: cannot join a Ray cluster there ({err})") from None
    try:
        yield ray
    finally:
        ray.shutdown()
