"""Where a benchmark ran: CPU/GPU model, core count, library versions, date and command."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["cpu_name", "describe_environment"]

_PACKAGES = ("xaisdk", "torch", "numpy", "onnxruntime", "onnxruntime-gpu", "captum", "tensorrt", "cuda-python")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows).

    >>> isinstance(cpu_name(), str)
    True
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}


def describe_environment(command: str | None = None) -> dict:
    """Device, versions, date and command of this run, as every results JSON records them.

    >>> env = describe_environment("xaisdk bench")
    >>> sorted(env), env["device"]["cores"] == os.cpu_count()
    (['command', 'date', 'device', 'versions'], True)
    """
    threads = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        pass
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        # the xaisdk CLI sets OMP_WAIT_POLICY=PASSIVE (robust under contention), which makes torch's
        # OpenMP threads sleep between operators: torch runs up to 2x slower at 224 px than with the default
        "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": threads, "gpu": _gpu(),
                   "platform": platform.platform(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")},
        "versions": versions,
    }
