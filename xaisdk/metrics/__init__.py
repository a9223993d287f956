"""Evaluation metrics of the papers xaisdk implements, and the ``xaisdk evaluate`` report.

Every per-map metric returns a :class:`MetricResult` (numbers per sample; mean / std / sem).
Names load on first use (PEP 562), so importing this package costs nothing and the numpy-only
metrics (perturbation curves, AOPC, deletion/insertion, AOSPC, faithfulness, monotonicity, Gini,
localization, similarity) never import torch; ROAR, randomization and the baseline checks do.

>>> from xaisdk.metrics import gini
>>> gini([[[0.0, 0.0], [0.0, 1.0]]]).per_sample.tolist()
[0.75]
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "MetricResult": "_common",
    "resolve_pairs": "_common",
    "perturbation_curve": "perturbation",
    "aopc": "perturbation",
    "aopc_from_curve": "perturbation",
    "deletion": "perturbation",
    "insertion": "perturbation",
    "aospc": "perturbation",
    "faithfulness": "faithfulness",
    "monotonicity": "faithfulness",
    "gini": "sparsity",
    "inverse_localization": "localization",
    "pointing_game": "localization",
    "mask_iou": "localization",
    "energy_in_mask": "localization",
    "box_localization_error": "localization",
    "ssim_similarity": "similarity",
    "spearman_similarity": "similarity",
    "hog_pearson_similarity": "similarity",
    "consistency": "similarity",
    "cascading_randomization": "randomization",
    "ganmex_retrainer": "randomization",
    "roar": "roar",
    "remove_top_pixels": "roar",
    "ClassDistances": "baselines",
    "class_distances": "baselines",
    "l2_distance": "baselines",
    "one_vs_one_pairs": "baselines",
    "predict": "baselines",
    "target_success": "baselines",
}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))


__all__ = sorted(_NAMES)
