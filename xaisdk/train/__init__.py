"""Training loops (torch)."""

from xaisdk.train.classifier import ClassifierTrainingConfig, accuracy, train_classifier

__all__ = ["ClassifierTrainingConfig", "accuracy", "train_classifier"]
