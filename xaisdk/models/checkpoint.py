"""Classifier checkpoints: architecture config + weights + class names + input spec in one file.

A checkpoint is a plain dict saved with ``torch.save`` and read with ``weights_only=True`` (no
pickled code is executed on load).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaisdk.errors import InputError
from xaisdk.input_files import open_regular_file
from xaisdk.models.classifiers import ARCHITECTURES, build_classifier, check_classifier_config, classifier_skeleton
from xaisdk.models.config_checks import (
    build_with_weights,
    in_file,
    require_class_names,
    require_dict,
    require_input_shape,
    require_value_range,
)

CHECKPOINT_KIND = "xaisdk.classifier"
FORMAT_VERSION = 1
SHIPPED = {"digits": "digits_mnist_cnn.pt"}


@dataclass
class Classifier:
    """A loaded classifier: the torch module (in eval mode) and what it expects.

    ``input_shape`` is (C, H, W); inputs are float32 NCHW in ``value_range``.
    """

    model: nn.Module
    arch: str
    config: dict[str, Any]
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    value_range: tuple[float, float] = (0.0, 1.0)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def weights_hash(classifier: Classifier) -> float:
    """A cheap fingerprint of a classifier's weights, recorded by the generator checkpoints trained against it
    (GANMEX, ExplainGAN, Exaggeration) and checked on load and resume.

    >>> isinstance(weights_hash(load_shipped_classifier("digits")), float)
    True
    """
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(classifier.model.state_dict().values())
                         if p.is_floating_point()))


def save_classifier(path: str | os.PathLike, classifier: Classifier) -> Path:
    """Write ``classifier`` to ``path`` atomically (a temporary file renamed into place).

    >>> import tempfile, os
    >>> from xaisdk.models import build_classifier
    >>> cfg = dict(in_channels=1, image_size=28, num_classes=2)
    >>> clf = Classifier(build_classifier("mnist_cnn", **cfg), "mnist_cnn", cfg, ("a", "b"), (1, 28, 28))
    >>> out = save_classifier(os.path.join(tempfile.mkdtemp(), "clf.pt"), clf)
    >>> load_classifier(out).class_names
    ('a', 'b')
    """
    return atomic_torch_save(classifier_payload(classifier), path)


def classifier_payload(classifier: Classifier) -> dict[str, Any]:
    """The plain-dict form of ``classifier`` that :func:`save_classifier` writes (also embedded in GANMEX files)."""
    return {
        "kind": CHECKPOINT_KIND,
        "format_version": FORMAT_VERSION,
        "arch": classifier.arch,
        "config": dict(classifier.config),
        "class_names": list(classifier.class_names),
        "input_shape": list(classifier.input_shape),
        "value_range": list(classifier.value_range),
        "metadata": dict(classifier.metadata),
        "state_dict": {k: v.detach().cpu() for k, v in classifier.model.state_dict().items()},
    }


def atomic_torch_save(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one, and the temporary file
    a killed save leaves behind is removed by the next save to ``path``
    (:mod:`xaisdk.runtime.atomic_files`). A full disk or an unwritable folder raises
    :class:`~xaisdk.errors.OutputError`.

    >>> import tempfile
    >>> out = atomic_torch_save({"step": 3}, os.path.join(tempfile.mkdtemp(), "run.pt"))
    >>> torch.load(out, weights_only=True)
    {'step': 3}
    """
    from xaisdk.runtime.atomic_files import atomic_file

    with atomic_file(path) as handle:
        torch.save(payload, handle)  # a handle, so that a write error arrives as OSError, not RuntimeError
    return Path(path)


def load_torch_payload(path: str | os.PathLike) -> object:
    """What ``torch.load(path, weights_only=True)`` returns, for a regular file only (a FIFO or a device
    is refused at once instead of blocking); missing and unreadable files raise :class:`InputError`.

    >>> sorted(load_torch_payload(shipped_classifier_path("digits")))[:3]
    ['arch', 'class_names', 'config']
    """
    with open_regular_file(path, "checkpoint file") as handle:
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a file that is not its format
            raise InputError(f"{Path(path)}: not a readable torch checkpoint ({type(err).__name__})") from None


def read_torch_file(path: str | os.PathLike, kind: str, what: str) -> dict[str, Any]:
    """Load ``path`` with ``weights_only=True`` and check it is an xaisdk file of ``kind``."""
    path = Path(path)
    payload = load_torch_payload(path)
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else None
        hint = f" (it is a {found!r} file)" if isinstance(found, str) else ""
        raise InputError(f"{path}: not an xaisdk {what} checkpoint{hint}")
    return payload


def _require(payload: dict, key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in payload:
        raise InputError(f"{path}: not a valid xaisdk classifier checkpoint (missing {key!r})")
    value = payload[key]
    if not isinstance(value, kind):
        raise InputError(f"{path}: checkpoint field {key!r} has type {type(value).__name__}")
    return value


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Load a checkpoint written by :func:`save_classifier` (or ``xaisdk train classifier``).

    The model comes back on the CPU in eval mode. Missing files, other file formats and checkpoints
    whose weights do not fit their architecture raise :class:`xaisdk.InputError`.

    >>> clf = load_classifier(shipped_classifier_path("digits"))
    >>> clf.arch, clf.input_shape, clf.num_classes
    ('mnist_cnn', (1, 28, 28), 10)
    """
    path = Path(path)
    return classifier_from_payload(read_torch_file(path, CHECKPOINT_KIND, "classifier"), path)


def classifier_from_payload(payload: dict[str, Any], path: str | os.PathLike) -> Classifier:
    """Rebuild a :class:`Classifier` from :func:`classifier_payload`'s dict; ``path`` names it in errors.

    Every field is checked before anything is built (:mod:`xaisdk.models.config_checks`): the config
    against its architecture's types and bounds, the network's size on the meta device, its number of
    outputs against the class names, then the weights (same keys and shapes, no NaN or inf).
    """
    path = Path(path)
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise InputError(f"{path}: does not hold an xaisdk classifier")
    version = _require(payload, "format_version", int, path)
    if isinstance(version, bool):
        raise InputError(f"{path}: checkpoint field 'format_version' has type bool")
    if version > FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format {version} is newer than this xaisdk reads ({FORMAT_VERSION})")
    arch = _require(payload, "arch", str, path)
    if arch not in ARCHITECTURES:
        raise InputError(f"{path}: unknown architecture {arch!r}")
    where = "classifier checkpoint"
    with in_file(path):
        config = check_classifier_config(arch, _require(payload, "config", dict, path))
        class_names = require_class_names(where, _require(payload, "class_names", (list, tuple), path))
        input_shape = require_input_shape(where, _require(payload, "input_shape", (list, tuple), path))
        value_range = require_value_range(where, payload.get("value_range", (0.0, 1.0)))
        metadata = require_dict(where, "metadata", payload.get("metadata", {}))
        state = _require(payload, "state_dict", dict, path)
        skeleton = classifier_skeleton(arch, config)
        num_outputs = _count_outputs(skeleton, input_shape, arch)
        if num_outputs != len(class_names):
            raise InputError(f"model has {num_outputs} outputs but {len(class_names)} class names")
        model = build_with_weights(lambda: build_classifier(arch, **config), state, "classifier", skeleton)
    return Classifier(model=model, arch=arch, config=config, class_names=class_names, input_shape=input_shape,
                      value_range=value_range, metadata=metadata)


def _count_outputs(skeleton: nn.Module, input_shape: tuple[int, int, int], arch: str) -> int:
    """The number of logits ``skeleton`` (on the meta device) gives for one ``input_shape`` image."""
    try:
        with torch.no_grad():
            out = skeleton(torch.zeros(1, *input_shape, device="meta"))
    except (RuntimeError, ValueError) as err:
        raise InputError(f"architecture {arch!r} with this config does not take {input_shape} inputs "
                         f"({str(err).strip().splitlines()[0]})") from None
    if out.ndim != 2:
        raise InputError(f"architecture {arch!r} gives outputs of shape {tuple(out.shape)}, not (N, classes)")
    return int(out.shape[1])


def shipped_classifier_path(name: str = "digits") -> Path:
    """Path of a classifier checkpoint shipped inside the package (``"digits"``).

    >>> shipped_classifier_path("digits").name
    'digits_mnist_cnn.pt'
    """
    if name not in SHIPPED:
        raise InputError(f"no shipped classifier {name!r}; shipped: {', '.join(sorted(SHIPPED))}")
    return Path(str(resources.files("xaisdk") / "weights" / SHIPPED[name]))


def load_shipped_classifier(name: str = "digits") -> Classifier:
    """Load a classifier shipped with xaisdk.

    >>> load_shipped_classifier("digits").class_names[:3]
    ('0', '1', '2')
    """
    return load_classifier(shipped_classifier_path(name))
