"""Evaluation metrics (torch + numpy)."""

from xaisdk.metrics.baselines import (
    ClassDistances,
    class_distances,
    l2_distance,
    one_vs_one_pairs,
    predict,
    target_success,
)

__all__ = ["ClassDistances", "class_distances", "l2_distance", "one_vs_one_pairs", "predict", "target_success"]
