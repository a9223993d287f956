"""GANMEX checkpoints: the explained classifier, its baseline generator, their configs and the data spec.

``ganmex.pt`` is what ``xaisdk train ganmex`` writes and ``xaisdk export --model`` reads. It may also
carry the training state (critic, optimizers, RNG, step) that ``--resume`` needs; the shipped file
leaves it out to stay small.

The classifier is stored so that loading never unpickles code (:func:`classifier_entry`): an xaisdk
architecture as its name, config and weights (format 1); any other torch module (a user's model from
``--factory``, TorchScript, with its pixel pipeline in front) as a TorchScript archive, its sha256
and a fingerprint of its weights (format 2). On load the archive's sha256 and the weights'
fingerprint are checked before the classifier is used, so a file altered after training is refused.
The file is self-contained: the code that built the model is not needed to load it.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
    weights_hash,
)
from xaisdk.models.classifiers import ARCHITECTURES
from xaisdk.models.config_checks import (
    build_with_weights,
    in_file,
    require_class_names,
    require_dict,
    require_input_shape,
    require_value_range,
)
from xaisdk.models.stargan import GeneratorConfig, StarGenerator
from xaisdk.runtime.preprocessing import Preprocessing

GANMEX_KIND = "xaisdk.ganmex"
GANMEX_FORMAT_VERSION = 2
"""Format 1: the classifier is an xaisdk architecture (still written for those); 2 adds TorchScript classifiers."""
TORCHSCRIPT_CLASSIFIER_KIND = "xaisdk.torchscript_classifier"
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


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch 2.13 marks torch.jit deprecated; the archive format it writes is still the one torch loads everywhere."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _to_torchscript(module: torch.nn.Module, input_shape: tuple[int, int, int]) -> torch.jit.ScriptModule:
    if isinstance(module, torch.jit.ScriptModule):
        return module
    try:
        return torch.jit.script(module)
    except Exception:  # scripting fails on many Python constructs; tracing is the fallback
        pass
    try:
        return torch.jit.trace(module, torch.rand(2, *input_shape), check_trace=False)
    except Exception as err:  # the tracer raises many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"the classifier cannot be stored in a GANMEX checkpoint: neither torch.jit.script nor "
                         f"torch.jit.trace takes it ({type(err).__name__}: {first}); give it as TorchScript "
                         "(torch.jit.script(model).save(FILE), then --classifier FILE)") from None


def _archive_sha256(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


def classifier_entry(classifier: Classifier) -> dict[str, Any]:
    """How a GANMEX checkpoint stores ``classifier``: :func:`~xaisdk.models.checkpoint.classifier_payload`
    for an xaisdk architecture, else a TorchScript archive of the whole module (pixel pipeline included)
    with its sha256 and weights fingerprint.

    The archive is loaded back and checked to give the module's logits on random images (batch sizes 1
    and 3, as a traced module must generalise); a module neither script nor trace reproduces is refused.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> entry = classifier_entry(Classifier(net, "Sequential", {}, ("a", "b", "c"), (3, 2, 2)))
    >>> entry["kind"], len(entry["archive_sha256"])
    ('xaisdk.torchscript_classifier', 64)
    """
    if ARCHITECTURES.get(classifier.arch) is type(classifier.model):
        return classifier_payload(classifier)
    module = copy.deepcopy(classifier.model).cpu().eval()
    with _quiet_jit():
        buffer = io.BytesIO()
        torch.jit.save(_to_torchscript(module, classifier.input_shape), buffer)
        archive = buffer.getvalue()
        reloaded = torch.jit.load(io.BytesIO(archive), map_location="cpu").eval()
    low, high = classifier.value_range
    probe = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in (1, 3):
            x = low + (high - low) * torch.rand(batch, *classifier.input_shape, generator=probe)
            want, got = module(x), reloaded(x)
            if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + float(want.abs().max()))):
                raise InputError("the classifier cannot be stored in a GANMEX checkpoint: its TorchScript form computes "
                                 f"other logits than the module (e.g. on a batch of {batch}: torch.jit.trace "
                                 "records one path through the forward); make its forward scriptable and give it as "
                                 "TorchScript (torch.jit.script(model).save(FILE), then --classifier FILE)")
    stored = Classifier(reloaded, classifier.arch, {}, classifier.class_names, classifier.input_shape,
                        classifier.value_range, dict(classifier.metadata))
    return {
        "kind": TORCHSCRIPT_CLASSIFIER_KIND,
        "arch": classifier.arch,
        "archive": archive,
        "archive_sha256": _archive_sha256(archive),
        "weights_hash": weights_hash(stored),
        "class_names": list(classifier.class_names),
        "input_shape": list(classifier.input_shape),
        "value_range": list(classifier.value_range),
        "metadata": dict(classifier.metadata),
    }


def _torchscript_classifier(entry: dict[str, Any], path: str | os.PathLike) -> Classifier:
    """The classifier of a :func:`classifier_entry` archive, after its sha256 and weights fingerprint are checked."""
    archive, recorded = entry.get("archive"), entry.get("archive_sha256")
    if not isinstance(archive, bytes) or not isinstance(recorded, str):
        raise InputError(f"{path}: the GANMEX checkpoint's classifier needs 'archive' (bytes) and 'archive_sha256'")
    if _archive_sha256(archive) != recorded:
        raise InputError(f"{path}: the classifier archive does not match the sha256 recorded when the generator was "
                         "trained (the file was altered); restore the file or train the generator again")
    where = "GANMEX checkpoint classifier"
    with in_file(path):
        class_names = require_class_names(where, entry.get("class_names"))
        input_shape = require_input_shape(where, entry.get("input_shape"))
        value_range = require_value_range(where, entry.get("value_range", (0.0, 1.0)))
        metadata = require_dict(where, "metadata", entry.get("metadata", {}))
        if "preprocessing" in metadata:
            Preprocessing.from_manifest(metadata["preprocessing"], f"{where}: preprocessing")
    try:
        with _quiet_jit():
            module = torch.jit.load(io.BytesIO(archive), map_location="cpu").eval()
    except Exception as err:  # torch.jit.load raises many types for a damaged archive
        raise InputError(f"{path}: the classifier archive is not loadable TorchScript ({type(err).__name__})") from None
    arch = entry.get("arch") if isinstance(entry.get("arch"), str) else "torchscript"
    classifier = Classifier(module, arch, {}, class_names, input_shape, value_range, metadata)
    fingerprint = entry.get("weights_hash")
    if not isinstance(fingerprint, float) or not np.isclose(weights_hash(classifier), fingerprint, rtol=1e-9, atol=0.0):
        raise InputError(f"{path}: the classifier's weights do not match the fingerprint recorded when the generator "
                         "was trained; restore the file or train the generator again")
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *input_shape))
    except Exception as err:  # the archived forward can raise anything
        raise InputError(f"{path}: the stored classifier does not run on {input_shape} inputs ({type(err).__name__})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, len(class_names)):
        raise InputError(f"{path}: the stored classifier gives outputs of shape "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}, "
                         f"not (N, {len(class_names)}) for its {len(class_names)} classes")
    return classifier


def ganmex_payload(model: GanmexModel, training_state: dict[str, Any] | None = None,
                   classifier: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict :func:`save_ganmex` writes; ``classifier``: the model's :func:`classifier_entry`, if already made."""
    entry = classifier if classifier is not None else classifier_entry(model.classifier)
    payload = {
        "kind": GANMEX_KIND,
        "format_version": 2 if entry.get("kind") == TORCHSCRIPT_CLASSIFIER_KIND else 1,
        "classifier": entry,
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


def save_ganmex(path: str | os.PathLike, model: GanmexModel, training_state: dict[str, Any] | None = None,
                classifier: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and, for ``--resume``, ``training_state``) to ``path`` atomically.

    ``classifier`` is the model's :func:`classifier_entry` when the caller made it once (a training run
    saves many times); by default it is made here.
    """
    return atomic_torch_save(ganmex_payload(model, training_state, classifier), path)


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
    entry = payload["classifier"]
    if entry.get("kind") == TORCHSCRIPT_CLASSIFIER_KIND:
        classifier = _torchscript_classifier(entry, path)
    else:
        classifier = classifier_from_payload(entry, path)
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
