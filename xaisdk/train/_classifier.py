"""The classifier a generator trains against: a frozen copy of it, and the check that the data fit it."""

from __future__ import annotations

import copy

import torch

from xaisdk.data import Dataset
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier

__all__ = ["check_input_shape", "frozen_classifier"]


def frozen_classifier(classifier: Classifier) -> torch.nn.Module:
    """A copy of the classifier's module in eval mode with ``requires_grad=False`` on every weight.

    Gradients still flow through it to its *input* (that is how the generators' class terms train them).

    >>> from xaisdk.models import load_shipped_classifier
    >>> any(p.requires_grad for p in frozen_classifier(load_shipped_classifier()).parameters())
    False
    """
    module = copy.deepcopy(classifier.model).eval()
    module.requires_grad_(False)
    return module


def check_input_shape(train: Dataset, classifier: Classifier) -> None:
    """The dataset's images have the shape the classifier takes.

    >>> from xaisdk.data import load_digits
    >>> from xaisdk.models import load_shipped_classifier
    >>> check_input_shape(load_digits().test, load_shipped_classifier())
    """
    if tuple(train.input_shape) != tuple(classifier.input_shape):
        raise InputError(f"dataset images are {tuple(train.input_shape)} but the classifier takes "
                         f"{tuple(classifier.input_shape)}")
