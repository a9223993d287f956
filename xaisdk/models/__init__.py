"""Model architectures (torch) and their checkpoints."""

from xaisdk.models.checkpoint import (
    Classifier,
    load_classifier,
    load_shipped_classifier,
    save_classifier,
    shipped_classifier_path,
)
from xaisdk.models.classifiers import ARCHITECTURES, CifarCNN, MnistCNN, build_classifier
from xaisdk.models.score import WeightedScore, class_weights

__all__ = [
    "ARCHITECTURES",
    "CifarCNN",
    "Classifier",
    "MnistCNN",
    "build_classifier",
    "load_classifier",
    "load_shipped_classifier",
    "save_classifier",
    "shipped_classifier_path",
    "WeightedScore",
    "class_weights",
]
