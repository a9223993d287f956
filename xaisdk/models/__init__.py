"""Model architectures (torch) and their checkpoints."""

from xaisdk.models.checkpoint import (
    Classifier,
    load_classifier,
    load_shipped_classifier,
    save_classifier,
    shipped_classifier_path,
)
from xaisdk.models.classifiers import ARCHITECTURES, CifarCNN, MnistCNN, build_classifier
from xaisdk.models.ganmex import (
    GanmexModel,
    load_ganmex,
    load_shipped_ganmex,
    save_ganmex,
    shipped_ganmex_path,
)
from xaisdk.models.ganmex_baseline import GanmexBaseline, resolve_generator
from xaisdk.models.inpainter import (
    GatedUNet,
    InpainterConfig,
    LearnedInpainter,
    load_inpainter,
    load_shipped_inpainter,
    save_inpainter,
    shipped_inpainter_path,
)
from xaisdk.models.randomize import randomized_copy, weighted_layers
from xaisdk.models.score import WeightedScore, class_weights
from xaisdk.models.stargan import CriticConfig, GeneratorConfig, PatchCritic, StarGenerator

__all__ = [
    "GanmexBaseline",
    "resolve_generator",
    "CriticConfig",
    "GanmexModel",
    "GeneratorConfig",
    "PatchCritic",
    "StarGenerator",
    "load_ganmex",
    "randomized_copy",
    "weighted_layers",
    "load_shipped_ganmex",
    "save_ganmex",
    "shipped_ganmex_path",
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
    "GatedUNet",
    "InpainterConfig",
    "LearnedInpainter",
    "load_inpainter",
    "load_shipped_inpainter",
    "save_inpainter",
    "shipped_inpainter_path",
]
