"""Training loops (torch)."""

from xaisdk.train.classifier import ClassifierTrainingConfig, accuracy, train_classifier
from xaisdk.train.ganmex import GanmexTrainingConfig, train_ganmex
from xaisdk.train.inpainter import InpainterTrainingConfig, train_inpainter

__all__ = ["ClassifierTrainingConfig", "accuracy", "train_classifier", "GanmexTrainingConfig", "train_ganmex",
           "InpainterTrainingConfig", "train_inpainter"]
