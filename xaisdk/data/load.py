"""One entry point that picks a loader from a dataset spec string."""

from __future__ import annotations

import inspect
import os
from functools import partial
from typing import Any, Callable

from xaisdk.data._checks import describe
from xaisdk.data.dataset import Split
from xaisdk.data.digits import load_digits
from xaisdk.data.shapes import load_shapes
from xaisdk.data.user import load_image_folder, load_npz
from xaisdk.errors import InputError

ACCEPTED_SPECS = ("'digits'", "'shapes'", "a path to a .npz file", "an existing directory of class subfolders")


def load_dataset(spec: str | os.PathLike, **kwargs: Any) -> Split:
    """Load a Split from a spec: "digits", "shapes", a path ending in .npz, or an existing directory.

    The names are matched first, so a directory called "digits" must be given as "./digits".
    kwargs go to the chosen loader (load_digits, load_shapes, load_npz, load_image_folder);
    an option that loader does not take raises InputError listing the accepted ones.

    >>> split = load_dataset("shapes", n_train=20, n_test=10, image_size=16)
    >>> len(split.train), split.train.class_names
    (20, ('circle', 'square', 'triangle'))
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise InputError(f"dataset: expected {', '.join(ACCEPTED_SPECS)}; got {describe(spec)}")
    text = os.fspath(spec)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    loader: Callable[..., Split]
    if text == "digits":
        loader = load_digits
    elif text == "shapes":
        loader = load_shapes
    elif text.lower().endswith(".npz"):
        loader = partial(load_npz, text)
    elif os.path.isdir(text):
        loader = partial(load_image_folder, text)
    else:
        raise InputError(f"dataset {text!r}: not recognised; expected {', '.join(ACCEPTED_SPECS[:-1])} "
                         f"or {ACCEPTED_SPECS[-1]}")
    _check_options(loader, kwargs, text)
    return loader(**kwargs)


def _check_options(loader: Callable[..., Split], kwargs: dict[str, Any], spec: str) -> None:
    function = loader.func if isinstance(loader, partial) else loader
    parameters = list(inspect.signature(function).parameters.values())
    if isinstance(loader, partial):
        parameters = parameters[len(loader.args):]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return  # the loader checks its own extra options
    accepted = [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise InputError(f"dataset {spec!r}: unknown option {', '.join(unknown)}; "
                         f"{function.__name__} accepts {', '.join(accepted)}")
