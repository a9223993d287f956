"""What decides whether a cached analysis of a torch module still holds, and safe torch.fx tracing.

- :func:`module_state`: a cheap fingerprint of a module's structure (which submodule sits where, types,
  modes, plain attributes, parameter shapes, hooks, methods replaced on instances). The relu-path fast
  path and the DeepLIFT plan are proven for one state and re-proven when it changes.
- :func:`hooked_module` / :func:`global_hooks_present`: hooks that make a module compute something
  its layers alone do not say.
- :data:`FX_TRACING`: ``torch.fx.symbolic_trace`` replaces ``nn.Module.__call__`` process-wide while it
  traces, so a forward pass on another thread at that moment fails ("module is not installed as a
  submodule"). Tracing takes this lock exclusively; the torch backends' forward passes take it shared.

>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
>>> before = module_state(net)
>>> handle = net[0].register_forward_hook(lambda mod, args, out: out)
>>> module_state(net) == before, hooked_module(net)
(False, '0')
>>> handle.remove()
>>> module_state(net) == before, hooked_module(net) is None
(True, True)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["FX_TRACING", "SharedExclusiveLock", "global_hooks_present", "hooked_module", "instance_override", "module_state"]

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")


def global_hooks_present() -> bool:
    """Whether a process-wide module hook (``torch.nn.modules.module.register_module_forward_hook`` etc.) is set."""
    from torch.nn.modules import module as module_mod

    return any(getattr(module_mod, name, None) for name in _GLOBAL_HOOKS)


def hooked_module(module: nn.Module) -> str | None:
    """The qualified name of the first submodule with a forward or backward hook (``""`` for the root), or None."""
    for name, sub in module.named_modules():
        if any(vars(sub).get(h) for h in HOOK_DICTS):
            return name
    return None


def instance_override(module: nn.Module) -> str | None:
    """``"name.method"`` of the first method replaced on a module instance (``m.forward = ...``), or None."""
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if callable(value) and not isinstance(value, (nn.Module, torch.Tensor)):
                return f"{name or '(the model itself)'}.{key}"
    return None


def _plain(value: object) -> bool:
    if isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return value == value  # NaN never equals itself: left out, or no state would match its own
    return isinstance(value, tuple) and all(_plain(v) for v in value)


def module_state(module: nn.Module) -> tuple:
    """A fingerprint of everything about ``module`` except parameter values: submodules and where they sit,
    types, train/eval modes, plain attributes (stride, padding, inplace, ...), parameter and buffer
    shapes and dtypes, hooks, methods replaced on instances. Equal tuples mean none of those changed;
    it costs tens of microseconds for a small CNN."""
    state = []
    for m in module.modules():
        d = vars(m)
        state.append((
            id(m), type(m), m.training,
            tuple((k, id(v)) for k, v in d["_modules"].items()),
            tuple((k, None if v is None else (id(v), tuple(v.shape), v.dtype)) for k, v in d["_parameters"].items()),
            tuple((k, None if v is None else (id(v), tuple(v.shape), v.dtype)) for k, v in d["_buffers"].items()),
            tuple(tuple(d.get(h, ())) for h in HOOK_DICTS),
            tuple((k, v) for k, v in d.items() if _plain(v)),
            tuple(k for k, v in d.items() if callable(v) and not isinstance(v, (nn.Module, torch.Tensor))),
        ))
    return tuple(state)


class SharedExclusiveLock:
    """Many holders of :meth:`shared` at once, or one of :meth:`exclusive`; a waiting exclusive holder
    keeps new shared holders out, so it is not starved. Re-entrant for shared holders on one thread.

    >>> lock = SharedExclusiveLock()
    >>> with lock.shared(), lock.shared():
    ...     pass
    >>> with lock.exclusive():
    ...     pass
    >>> with lock.shared(), lock.exclusive():  # a share is given up, not deadlocked on
    ...     pass
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._local = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._writer or self._waiting_writers:
                    self._cond.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._readers -= 1
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Exclusive; a thread that holds :meth:`shared` gives its share up meanwhile (it must not be in
        the middle of what the share protects) and takes it back after."""
        held = getattr(self._local, "depth", 0) > 0
        with self._cond:
            if held:
                self._readers -= 1
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                if held:
                    self._readers += 1
                self._cond.notify_all()


FX_TRACING = SharedExclusiveLock()
"""Held exclusively while torch.fx traces, shared by the torch backends' forward passes."""
