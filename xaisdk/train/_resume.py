"""Resuming a training run from its checkpoint: the checks that the run may continue (it has a training
state, the same hyper-parameters, the same classifier, finite values) and the restoring of the
networks, optimizers, RNG and history that every trainer's loop (:mod:`xaisdk.train.loop`) needs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier, weights_hash
from xaisdk.runtime.atomic_files import remove_stale_temps

__all__ = ["resumable_state", "restore_loop", "saved_run_config"]


def saved_run_config(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The hyper-parameters a checkpoint's run was started with: those of its training state where it
    keeps them (Progressive Exaggeration does), else the model's ``training["config"]``.

    >>> saved_run_config({"training": {"config": {"seed": 1}}, "training_state": {"config": {"seed": 2}}})
    {'seed': 2}
    >>> saved_run_config({"training": {"config": {"seed": 1}}, "training_state": {"step": 3}})
    {'seed': 1}
    """
    state = payload.get("training_state")
    if isinstance(state, Mapping) and isinstance(state.get("config"), Mapping):
        return state["config"]
    return payload.get("training", {}).get("config", {})


def resumable_state(payload: Mapping[str, Any], path: Path, saved_config: Mapping[str, Any], config: Any,
                    run_keys: Sequence[str], classifier: Classifier | None) -> dict[str, Any]:
    """The checkpoint's training state, after checking the run may continue: it has one, the settings in
    ``run_keys`` are those it was started with (``config``: a mapping, or an object with them as
    attributes), and ``classifier`` (None: a run without one) is the one it trained against.
    Temporary files that a killed save of ``path`` left next to it are removed (the resumed run
    writes ``path`` again).

    >>> from xaisdk.models import load_shipped_classifier
    >>> clf = load_shipped_classifier("digits")
    >>> state = {"classifier_hash": weights_hash(clf), "step": 3}
    >>> config = type("Config", (), {"steps": 9, "seed": 0})()
    >>> resumable_state({"training_state": state}, Path("run.pt"), {"steps": 5, "seed": 0}, config, ["seed"], clf)["step"]
    3
    """
    state = payload.get("training_state")
    if not isinstance(state, dict):
        raise InputError(f"{path}: has no training state to resume from (it was saved for inference only)")
    def now(key: str) -> Any:
        return config[key] if isinstance(config, Mapping) else getattr(config, key)

    changed = [key for key in run_keys if key in saved_config and saved_config[key] != now(key)]
    if changed:
        details = ", ".join(f"{key}: {saved_config[key]!r} -> {now(key)!r}" for key in changed)
        raise InputError(f"{path}: cannot resume with different hyper-parameters ({details})")
    if classifier is not None and not np.isclose(state.get("classifier_hash", np.nan), weights_hash(classifier),
                                                 rtol=1e-9, atol=0):
        raise InputError(f"{path}: was trained against a different classifier")
    remove_stale_temps(path)
    return state


def restore_loop(state: Mapping[str, Any], path: Path, restore_networks: Callable[[], None],
                 optimizers: Mapping[str, torch.optim.Optimizer], rng: torch.Generator,
                 history: dict[str, Any]) -> tuple[int, float]:
    """Load the networks (``restore_networks``), the optimizers (each from the state entry of its name),
    the RNG and the history from ``state``; returns (steps done, seconds spent). A state that does not
    fit this run is an InputError; so are the InputErrors of ``restore_networks``, unchanged.

    >>> net = torch.nn.Linear(2, 1)
    >>> opt, rng, history = torch.optim.SGD(net.parameters(), lr=0.1), torch.Generator(), {}
    >>> state = {"step": 4, "seconds": 1.5, "opt": opt.state_dict(), "rng": rng.get_state(), "history": {"loss": [0.5]}}
    >>> restore_loop(state, Path("run.pt"), lambda: None, {"opt": opt}, rng, history), history
    ((4, 1.5), {'loss': [0.5]})
    """
    broken = _non_finite(state)
    if broken is not None:
        raise InputError(f"{path}: training state {broken} has NaN or infinite values; resume from an earlier checkpoint")
    try:
        restore_networks()
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state[name])
        rng.set_state(state["rng"])
    except InputError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise InputError(f"{path}: training state does not fit this run ({type(err).__name__}: {err})") from None
    for key, values in state.get("history", {}).items():
        history[key] = list(values)
    return int(state["step"]), float(state.get("seconds", 0.0))


def _non_finite(value: Any, where: str = "") -> str | None:
    """The path (``opt_g.state.3.exp_avg``) of the first floating tensor under ``value`` with a NaN or an
    infinity, or None: optimizer moments and critic weights are checked like the networks' weights.

    >>> _non_finite({"opt_g": {"state": {0: {"exp_avg": torch.tensor([1.0, float("nan")])}}}})
    'opt_g.state.0.exp_avg'
    >>> _non_finite({"step": 3, "opt_d": {"state": {0: {"exp_avg": torch.zeros(2)}}}}) is None
    True
    """
    if isinstance(value, torch.Tensor):
        return where if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None
