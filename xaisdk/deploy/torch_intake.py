"""Torch models from anywhere, as xaisdk classifiers: a module built by code, TorchScript, xaisdk checkpoints.

Nothing here unpickles arbitrary objects. Weights are read with ``torch.load(weights_only=True)``;
a file made by ``torch.save(model)`` (a pickled module, which runs code on load) is refused with the
ways that work: a state dict with the code that builds the model (``--factory module:function
--weights sd.pt``), TorchScript, or ONNX. TorchScript archives are read by ``torch.jit.load``, which
builds TorchScript code and tensors only.

The pixel pipeline (:class:`~xaisdk.runtime.preprocessing.Preprocessing`) becomes the first layer of
the classifier (:class:`PixelPipeline`), so explanations are w.r.t. RGB pixels in [0, 1].

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
>>> clf = classifier_from_module(net, input_shape=(3, 2, 2), preprocessing=Preprocessing(mean=(0.5,), std=(0.25,)))
>>> clf.num_classes, clf.value_range, clf.metadata["preprocessing"]["mean"]
(3, (0.0, 1.0), [0.5])
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaisdk.errors import InputError
from xaisdk.input_files import open_regular_file
from xaisdk.models.checkpoint import Classifier
from xaisdk.runtime.preprocessing import Preprocessing

__all__ = ["PixelPipeline", "classifier_from_module", "load_factory", "load_torch_classifier", "read_class_names",
           "read_input_shape"]

MAX_CLASS_FILE_BYTES = 4 << 20


class PixelPipeline(nn.Module):
    """``model((pixels[:, order] - mean) / std)``: the user's model behind its pixel pipeline."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, channels: int) -> None:
        super().__init__()
        self.model = model
        mean, std = preprocessing.per_channel(channels)
        self.register_buffer("mean", torch.from_numpy(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.from_numpy(std).reshape(1, -1, 1, 1))
        self.bgr = preprocessing.channel_order == "BGR"
        self.register_buffer("order", torch.tensor([2, 1, 0]))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            pixels = torch.index_select(pixels, 1, self.order)
        return self.model((pixels - self.mean) / self.std)


def read_input_shape(value: Any) -> tuple[int, int, int]:
    """(C, H, W) from a sequence or a string like ``"3,224,224"``.

    >>> read_input_shape("3,224,224")
    (3, 224, 224)
    """
    parts = value.replace("x", ",").split(",") if isinstance(value, str) else value
    try:
        dims = tuple(int(str(p).strip()) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"input shape: expected three integers C,H,W (e.g. 3,224,224), got {value!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise InputError(f"input shape: expected three positive integers C,H,W (e.g. 3,224,224), got {value!r}")
    return dims  # type: ignore[return-value]


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines at the end ignored).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "labels.txt")
    >>> _ = open(p, "w").write("cat\\ndog\\n")
    >>> read_class_names(p)
    ('cat', 'dog')
    """
    with open_regular_file(path, "class names file") as handle:
        data = handle.read(MAX_CLASS_FILE_BYTES + 1)
    if len(data) > MAX_CLASS_FILE_BYTES:
        raise InputError(f"{path}: more than {MAX_CLASS_FILE_BYTES} bytes; expected one class name per line")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; expected one class name per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(line.strip() for line in lines)
    if len(names) < 2 or any(not n for n in names):
        raise InputError(f"{path}: expected at least two non-empty class names, one per line")
    if len(set(names)) != len(names):
        raise InputError(f"{path}: class names must be unique")
    return names


def _probe_classes(module: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """The number of classes; refuses a forward that fails, returns no logits or cuts autograd off."""
    probe = torch.zeros(2, *input_shape, requires_grad=True)
    try:
        with torch.enable_grad():
            out = module(probe)
    except Exception as err:  # a user's forward can raise anything on the wrong shape
        raise InputError(f"the model does not run on inputs of shape (N, {', '.join(map(str, input_shape))}): "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; check --input-shape") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 2:
        shown = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"the model must return logits (N, K) with K >= 2 classes, got {shown}")
    reaches_input = out.requires_grad and torch.autograd.grad(out.sum(), probe, allow_unused=True)[0] is not None
    if not reaches_input:
        raise InputError("the model's logits do not depend on its input through torch autograd: its forward runs "
                         "under torch.no_grad() or torch.inference_mode(), or detaches the input; gradient methods and "
                         "export need a differentiable forward: remove those from forward (model.eval() is enough)")
    return int(out.shape[1])


def classifier_from_module(module: nn.Module, *, input_shape: Sequence[int], class_names: Sequence[str] | None = None,
                           preprocessing: Preprocessing | None = None, arch: str | None = None,
                           source: str | None = None) -> Classifier:
    """A :class:`~xaisdk.models.Classifier` for any torch module returning logits (N, K).

    With a ``preprocessing`` other than the identity, the module is wrapped in :class:`PixelPipeline`
    and takes RGB pixels in [0, 1]; the pipeline is recorded in ``metadata["preprocessing"]``.
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, got {type(module).__name__}")
    shape = read_input_shape(input_shape)
    spec = preprocessing or Preprocessing()
    spec.check_channels(shape[0])
    module = module.eval()
    model = module if spec.is_identity else PixelPipeline(module, spec, shape[0]).eval()
    classes = _probe_classes(model, shape)
    names = tuple(str(n) for n in class_names) if class_names is not None else tuple(str(i) for i in range(classes))
    if len(names) != classes:
        raise InputError(f"class names: {len(names)} given for a model with {classes} outputs")
    metadata: dict[str, Any] = {"source": source} if source else {}
    if not spec.is_identity:
        metadata["preprocessing"] = spec.to_manifest()
    return Classifier(model, arch or type(module).__name__, {}, names, shape, (0.0, 1.0), metadata)


def load_factory(factory: str) -> nn.Module:
    """Call ``module:function`` (or ``path/to/file.py:function``) with no arguments; it must return an nn.Module.

    The current folder is importable, as for ``python -m``.

    >>> load_factory("torch.nn:Identity")
    Identity()
    """
    if not isinstance(factory, str) or factory.count(":") != 1 or not all(factory.split(":")):
        raise InputError(f"factory: expected 'module:function' or 'file.py:function', got {factory!r}")
    where, name = factory.split(":")
    try:
        if where.endswith(".py"):
            if not Path(where).is_file():
                raise InputError(f"factory: {where}: no such file")
            spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except InputError:
        raise
    except Exception as err:  # the user's module may fail to import in any way
        raise InputError(f"factory: cannot import {where!r}: {type(err).__name__}: {err}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise InputError(f"factory: {where!r} has no callable {name!r}")
    try:
        built = function()
    except Exception as err:
        raise InputError(f"factory: {factory}() failed: {type(err).__name__}: {err}") from None
    if not isinstance(built, nn.Module):
        raise InputError(f"factory: {factory}() returned {type(built).__name__}, not a torch.nn.Module")
    return built


def _weights_only_load(path: str | os.PathLike, what: str) -> Any:
    with open_regular_file(path, what) as handle:
        head = handle.read(2)
        handle.seek(0)
        if not zipfile.is_zipfile(handle) and head[:1] != b"\x80":  # neither torch.save's zip nor a legacy pickle
            raise InputError(f"{path}: not a readable torch checkpoint (torch.save writes a zip archive)")
        handle.seek(0)
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise InputError(
                f"{path}: holds pickled Python objects (e.g. torch.save(model)), which xaisdk never loads because "
                "unpickling runs code; save model.state_dict() and pass --factory module:function --weights FILE, "
                "or save TorchScript (torch.jit.script(model).save(FILE)), or export ONNX") from None
        except Exception as err:
            raise InputError(f"{path}: not a readable torch file ({type(err).__name__})") from None


def _state_dict(loaded: Any, path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # training-framework checkpoints keep the weights under this key
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                                for k, v in loaded.items()):
        raise InputError(f"{path}: expected a state dict (names -> tensors), as model.state_dict() gives")
    return loaded


def _apply_weights(module: nn.Module, weights: str | os.PathLike) -> None:
    state = _state_dict(_weights_only_load(weights, "weights file"), weights)
    result = module.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} (e.g. {', '.join(result.missing_keys[:3])})")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} (e.g. {', '.join(result.unexpected_keys[:3])})")
    if problems:
        raise InputError(f"{weights}: the weights do not fit the model the factory builds: " + "; ".join(problems))


def _is_torchscript(path: str | os.PathLike) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_torch_classifier(path: str | os.PathLike | None = None, *, factory: str | None = None,
                          weights: str | os.PathLike | None = None, input_shape: Sequence[int] | None = None,
                          class_names: Sequence[str] | None = None,
                          preprocessing: Preprocessing | None = None) -> Any:
    """A classifier from an xaisdk checkpoint, a TorchScript file, or ``factory`` (+ ``weights``).

    Returns what :func:`xaisdk.deploy.export_bundle` takes: the loaded xaisdk checkpoint (classifier
    or GANMEX) as it is, else a :class:`~xaisdk.models.Classifier` built by
    :func:`classifier_from_module` (``input_shape`` required).

    >>> clf = load_torch_classifier(factory="torch.nn:Flatten", input_shape=(2, 1, 1))
    >>> clf.num_classes, clf.class_names
    (2, ('0', '1'))
    """
    if (path is None) == (factory is None):
        raise InputError("give a model file or a factory (module:function), not both and not neither")
    if weights is not None and factory is None:
        raise InputError("--weights goes with --factory (the code that builds the model the weights belong to)")
    if factory is not None:
        module = load_factory(factory)
        if weights is not None:
            _apply_weights(module, weights)
        source = factory if weights is None else f"{factory} + {weights}"
    elif _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise InputError(f"{path}: not a loadable TorchScript file ({type(err).__name__})") from None
        source = str(path)
    else:
        loaded = _weights_only_load(path, "checkpoint")
        if isinstance(loaded, Mapping) and isinstance(loaded.get("kind"), str) and str(loaded["kind"]).startswith("xaisdk"):
            from xaisdk.models.ganmex import load_model

            if input_shape is not None or preprocessing is not None or class_names is not None:
                raise InputError(f"{path}: an xaisdk checkpoint carries its input shape, classes and value range; "
                                 "drop --input-shape/--classes/--mean/--std/--resize")
            return load_model(path)
        _state_dict(loaded, path)  # a state dict gets the factory hint; anything else the format error
        raise InputError(f"{path}: holds only weights (a state dict); give the code that builds the model: "
                         f"--factory module:function --weights {path}")
    if input_shape is None:
        raise InputError("input shape: a torch model does not state it; give --input-shape C,H,W (e.g. 3,224,224)")
    return classifier_from_module(module, input_shape=input_shape, class_names=class_names, preprocessing=preprocessing,
                                  source=source)
