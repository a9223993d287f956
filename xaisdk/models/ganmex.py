"""GANMEX checkpoints: the explained classifier, its baseline generator, their configs and the data spec.

``ganmex.pt`` is what ``xaisdk train ganmex`` writes and ``xaisdk export --model`` reads. It may also
carry the training state (critic, optimizers, RNG, step) that ``--resume`` needs; the shipped file
leaves it out to stay small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaisdk.errors import InputError
from xaisdk.models.checkpoint import (
    CHECKPOINT_KIND,
    Classifier,
    atomic_torch_save,
    classifier_from_payload,
    classifier_payload,
    load_torch_payload,
    read_torch_file,
)
from xaisdk.models.config_checks import build_with_weights, in_file, require_dict
from xaisdk.models.stargan import GeneratorConfig, StarGenerator

GANMEX_KIND = "xaisdk.ganmex"
GANMEX_FORMAT_VERSION = 1
SHIPPED_GANMEX = {"digits": "digits_ganmex.pt"}


@dataclass
class GanmexModel:
    """A classifier and the StarGAN generator trained to make its class-targeted baselines.

    ``data`` is the dataset spec the generator was trained on (``{"name": "digits", "options": {...}}``);
    ``training`` holds the training hyper-parameters and final statistics.
    """

    classifier: Classifier
    generator: StarGenerator
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_compatible(self.classifier, self.generator.config)
        self.generator.eval()

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @torch.no_grad()
    def baseline(self, x: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor | int,
                 batch_size: int = 256) -> np.ndarray:
        """``G(x, target)``: the closest realistic image of class ``target`` for each input (numpy float32).

        >>> from xaisdk.data import load_digits
        >>> gm = load_shipped_ganmex("digits")
        >>> x = load_digits().test.x[:2]
        >>> gm.baseline(x, 7).shape
        (2, 1, 28, 28)
        """
        return generate_baselines(self.generator, x, target, batch_size)


def check_compatible(classifier: Classifier, config: GeneratorConfig, where: str = "GANMEX model") -> None:
    """Raise :class:`InputError` unless ``config`` makes images the classifier takes, over its classes."""
    if tuple(config.input_shape) != tuple(classifier.input_shape):
        raise InputError(f"{where}: the generator makes {config.input_shape} images but the classifier takes "
                         f"{tuple(classifier.input_shape)}")
    if config.num_classes != classifier.num_classes:
        raise InputError(f"{where}: the generator has {config.num_classes} classes but the classifier has "
                         f"{classifier.num_classes}")
    if tuple(config.value_range) != tuple(classifier.value_range):
        raise InputError(f"{where}: the generator's value range {config.value_range} differs from the "
                         f"classifier's {classifier.value_range}")


@torch.no_grad()
def generate_baselines(generator: torch.nn.Module, x: np.ndarray | torch.Tensor,
                       target: np.ndarray | torch.Tensor | int, batch_size: int = 256) -> np.ndarray:
    """Run ``generator(x, target)`` in eval mode over chunks of ``batch_size``; ``target`` per sample or one int."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
    if xt.ndim == 3:
        raise InputError(f"x: expected a batch (N, C, H, W), got shape {tuple(xt.shape)}; add a batch axis")
    targets = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target)
    if targets.ndim == 0:
        targets = np.full(len(xt), targets)
    if targets.shape != (len(xt),) or not np.issubdtype(targets.dtype, np.integer):
        raise InputError(f"target: expected one integer class or {len(xt)} of them, got {targets.dtype} {targets.shape}")
    was_training = generator.training
    generator.eval()
    try:
        out = [generator(xt[s:s + batch_size], torch.from_numpy(targets[s:s + batch_size].astype(np.int64)))
               for s in range(0, len(xt), batch_size)]
    finally:
        generator.train(was_training)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def ganmex_payload(model: GanmexModel, training_state: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = {
        "kind": GANMEX_KIND,
        "format_version": GANMEX_FORMAT_VERSION,
        "classifier": classifier_payload(model.classifier),
        "generator": {
            "config": model.generator.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.generator.state_dict().items()},
        },
        "data": dict(model.data),
        "training": dict(model.training),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    return payload


def save_ganmex(path: str | os.PathLike, model: GanmexModel, training_state: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and, for ``--resume``, ``training_state``) to ``path`` atomically."""
    return atomic_torch_save(ganmex_payload(model, training_state), path)


def read_ganmex_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload of a GANMEX checkpoint, format-checked (used by ``--resume``)."""
    return _checked_ganmex_payload(read_torch_file(path, GANMEX_KIND, "GANMEX"), path)


def _checked_ganmex_payload(payload: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{path}: GANMEX checkpoint without a format version")
    if version > GANMEX_FORMAT_VERSION:
        raise InputError(f"{path}: GANMEX format {version} is newer than this xaisdk reads ({GANMEX_FORMAT_VERSION})")
    for key in ("classifier", "generator"):
        if not isinstance(payload.get(key), dict):
            raise InputError(f"{path}: GANMEX checkpoint is missing its {key}")
    return payload


def ganmex_from_payload(payload: dict[str, Any], path: str | os.PathLike) -> GanmexModel:
    """Rebuild a :class:`GanmexModel` from :func:`ganmex_payload`'s dict; ``path`` names it in errors.

    The classifier and the generator config are checked before either network is built, and the
    generator's weights before they are loaded (:mod:`xaisdk.models.config_checks`).
    """
    classifier = classifier_from_payload(payload["classifier"], path)
    gen = payload["generator"]
    if not isinstance(gen.get("config"), dict) or not isinstance(gen.get("state_dict"), dict):
        raise InputError(f"{path}: GANMEX generator entry needs 'config' and 'state_dict'")
    with in_file(path):
        config = GeneratorConfig.from_dict(gen["config"])
        check_compatible(classifier, config, where=str(path))
        generator = build_with_weights(lambda: StarGenerator(config), gen["state_dict"], "generator")
        data = require_dict("GANMEX checkpoint", "data", payload.get("data", {}))
        training = require_dict("GANMEX checkpoint", "training", payload.get("training", {}))
    return GanmexModel(classifier, generator, data, training)


def load_ganmex(path: str | os.PathLike) -> GanmexModel:
    """Load a GANMEX checkpoint written by ``xaisdk train ganmex`` (CPU, eval mode).

    Files of another kind, truncated files, and a generator that does not fit the classifier's input
    shape, class count or value range raise :class:`xaisdk.InputError`.

    >>> gm = load_ganmex(shipped_ganmex_path("digits"))
    >>> gm.generator.config.input_shape, gm.num_classes
    ((1, 28, 28), 10)
    """
    return ganmex_from_payload(read_ganmex_file(path), path)


def load_model(path: str | os.PathLike) -> Classifier | GanmexModel:
    """Load a classifier checkpoint or a GANMEX checkpoint, whichever ``path`` holds.

    >>> load_model(shipped_ganmex_path("digits")).__class__.__name__
    'GanmexModel'
    """
    payload = load_torch_payload(path)  # missing, unreadable, a FIFO or a device: InputError
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind == GANMEX_KIND:
        return ganmex_from_payload(_checked_ganmex_payload(payload, path), path)  # type: ignore[arg-type]
    if kind == CHECKPOINT_KIND:
        return classifier_from_payload(payload, path)  # type: ignore[arg-type]
    hint = f" (it is a {kind!r} file)" if isinstance(kind, str) else ""
    raise InputError(f"{Path(path)}: not an xaisdk classifier or GANMEX checkpoint{hint}")


def shipped_ganmex_path(name: str = "digits") -> Path:
    """Path of a GANMEX checkpoint shipped inside the package (``"digits"``).

    >>> shipped_ganmex_path().name
    'digits_ganmex.pt'
    """
    if name not in SHIPPED_GANMEX:
        raise InputError(f"no shipped GANMEX model {name!r}; shipped: {', '.join(sorted(SHIPPED_GANMEX))}")
    return Path(str(resources.files("xaisdk") / "weights" / SHIPPED_GANMEX[name]))


def load_shipped_ganmex(name: str = "digits") -> GanmexModel:
    """The shipped GANMEX model: the shipped digits classifier and its baseline generator.

    >>> load_shipped_ganmex().classifier.arch
    'mnist_cnn'
    """
    return load_ganmex(shipped_ganmex_path(name))
