"""Evaluation of ExplainGAN models (Samangouei et al. 2018, §5.4-5.5).

* :func:`flip_rate`: fraction of composites the classifier puts on the other side of its boundary.
* :func:`mask_area`: mean mask value (the paper's locality measure, the mask's share of the image).
* :func:`aospc_comparison`: AOSPC (Eq. 17, :func:`xaisdk.metrics.perturbation.aospc`, K = 10, the
  classifier's softmax probability of the source class as ``f``) of the mask used as a saliency map,
  against the gradient and occlusion maps of the same classifier (``S_source - S_target``), at the
  paper's thresholds 0.5, 0.7, 0.9. All maps are ranked by magnitude (``absolute=True``; the mask is
  non-negative, so this only matters for gradient and occlusion, whose sign the paper's Grad and
  Occlusion rows do not use).
* :func:`substitutability`: the paper's Table 2 (§5.5). For class ``c``, the training images of class
  ``c`` are replaced by the boundary-crossing images made from the training images the classifier
  puts on side ``1 - c`` (transformed images ``G_c(E_{1-c}(x))``, or composites ``C_c(x)``), labelled
  ``c``; the real images of class ``1 - c`` stay. A fresh classifier with the original's recipe
  (architecture and its configuration, ``train_classifier`` defaults otherwise) is
  trained on that set and its accuracy on the real test images is reported, also as a percentage of
  the original classifier's accuracy on them (the "ceiling").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaisdk.counterfactual.explaingan import ExplainGAN, check_images
from xaisdk.data import Dataset, Split
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.explaingan import ExplainGANModel

__all__ = ["flip_rate", "mask_area", "aospc_comparison", "substitutability", "evaluate_explaingan",
           "save_explaingan_figure"]


def _explainer(model: ExplainGANModel | ExplainGAN) -> ExplainGAN:
    return model if isinstance(model, ExplainGAN) else ExplainGAN(model)


def flip_rate(model: ExplainGANModel | ExplainGAN, x: np.ndarray) -> float:
    """Fraction of images whose composite the classifier assigns to the other class.

    >>> from xaisdk.data import binary_digits_split
    >>> flip_rate(ExplainGAN(), binary_digits_split().test.x[:8]) >= 0.75
    True
    """
    return float(_explainer(model).transform(x).flipped.mean())


def mask_area(model: ExplainGANModel | ExplainGAN, x: np.ndarray) -> float:
    """Mean mask value over images and pixels (1.0 for a ``no_mask`` model).

    >>> from xaisdk.data import binary_digits_split
    >>> 0 < mask_area(ExplainGAN(), binary_digits_split().test.x[:8]) < 0.3
    True
    """
    return float(_explainer(model).transform(x).mask.mean())


def aospc_comparison(model: ExplainGANModel | ExplainGAN, x: np.ndarray, *, thresholds: tuple[float, ...] = (0.5, 0.7, 0.9),
                     K: int = 10, occlusion_window: int = 3, seed: int = 0) -> dict[str, dict[str, float]]:
    """AOSPC of the ExplainGAN mask, the gradient and occlusion maps: ``{method: {threshold: mean}}``.

    Occlusion replaces a ``occlusion_window`` square (stride 1) with 0. Higher is better.

    >>> from xaisdk.data import binary_digits_split
    >>> r = aospc_comparison(ExplainGAN(), binary_digits_split().test.x[:4], thresholds=(0.5,), K=2)
    >>> sorted(r)
    ['explaingan', 'gradient', 'occlusion']
    """
    from xaisdk.attribution import gradient, occlusion
    from xaisdk.metrics.perturbation import aospc

    eg = _explainer(model)
    images = check_images(x, eg.input_shape)
    result = eg.transform(images)
    source = result.source
    target = 1 - source
    classifier = eg.model.classifier
    with torch.no_grad():
        outputs = classifier.model(torch.zeros(1, *classifier.input_shape)).shape[1]
    if outputs != 2:
        raise InputError("aospc_comparison needs a classifier with 2 logits (the AOSPC score is a softmax over them)")
    maps = {
        "explaingan": result.mask,
        "gradient": gradient(classifier, images, source=source, target=target),
        "occlusion": occlusion(classifier, images, source=source, target=target, window=occlusion_window, stride=1),
    }
    out: dict[str, dict[str, float]] = {}
    for name, saliency in maps.items():
        out[name] = {}
        for t in thresholds:
            r = aospc(classifier, images, saliency, source, target, threshold=t, K=K, absolute=True,
                      score="probability", seed=seed)
            out[name][str(t)] = float(r.mean)
    return out


def _fresh_accuracy(original: Classifier, train: Dataset, test: Dataset, epochs: int, seed: int) -> float:
    """Test accuracy of a classifier of ``original``'s architecture trained from scratch on ``train``."""
    from xaisdk.train.classifier import ClassifierTrainingConfig, train_classifier

    arch_config = {k: v for k, v in original.config.items() if k not in ("in_channels", "image_size", "num_classes")}
    config = ClassifierTrainingConfig(arch=original.arch, epochs=epochs, seed=seed, arch_config=arch_config)
    _, history = train_classifier(Split(train, test), config, progress=False)
    return float(history["test_accuracy"])


def substitutability(model: ExplainGANModel | ExplainGAN, split: Split, *, epochs: int = 30,
                     seed: int = 0) -> dict[str, Any]:
    """The paper's Table 2 substitutability on ``split`` (labels 0/1; see the module docstring).

    Returns ``ceiling`` (the original classifier's test accuracy) and, for ``transformed_0``,
    ``transformed_1``, ``composite_0``, ``composite_1``, the retrained classifier's test accuracy and
    ``percent`` of the ceiling. Each retraining is ``train_classifier`` with the original's architecture and
    configuration, ``epochs`` and ``seed``.

    Example (about a minute)::

        substitutability(load_shipped_explaingan(), binary_digits_split(3, 8))
    """
    eg = _explainer(model)
    train, test = split.train, split.test
    if train.num_classes != 2:
        raise InputError(f"substitutability needs a two-class split, got {train.num_classes} classes")
    from xaisdk.train.classifier import accuracy

    ceiling = float(accuracy(eg.model.classifier.model, test.x, test.y))
    crossed = eg.transform(train.x)
    out: dict[str, Any] = {"ceiling": ceiling, "epochs": epochs, "seed": seed}
    for kind, images in (("transformed", crossed.transformed), ("composite", crossed.composite)):
        for c in (0, 1):
            made = crossed.source == 1 - c
            keep = train.y == 1 - c
            x = np.concatenate([train.x[keep], images[made]])
            y = np.concatenate([train.y[keep], np.full(int(made.sum()), c, np.int64)])
            substituted = Dataset(x, y, train.class_names, f"{train.name}_{kind}_{c}")
            acc = _fresh_accuracy(eg.model.classifier, substituted, test, epochs, seed)
            out[f"{kind}_{c}"] = {"accuracy": acc, "percent": 100.0 * acc / ceiling if ceiling > 0 else float("nan"),
                                  "substituted": int(made.sum())}
    return out


def evaluate_explaingan(model: ExplainGANModel | ExplainGAN, split: Split, *, aospc_images: int = 72,
                        substitutability_epochs: int = 30, seed: int = 0) -> dict[str, Any]:
    """Flip rate and mask area on ``split.test``, AOSPC on its first ``aospc_images`` images and
    substitutability (:func:`substitutability`); one dict of numbers.

    Example (about a minute)::

        evaluate_explaingan(load_shipped_explaingan(), binary_digits_split(3, 8))
    """
    eg = _explainer(model)
    test = split.test
    result = eg.transform(test.x)
    per_side = {eg.class_names[j]: float(result.flipped[result.source == j].mean()) if (result.source == j).any()
                else float("nan") for j in (0, 1)}
    return {
        "test_images": len(test),
        "flip_rate": float(result.flipped.mean()),
        "flip_rate_by_source": per_side,
        "mask_area": float(result.mask.mean()),
        "aospc": aospc_comparison(eg, test.x[:aospc_images], seed=seed),
        "aospc_images": min(aospc_images, len(test)),
        "substitutability": substitutability(eg, split, epochs=substitutability_epochs, seed=seed),
    }


def save_explaingan_figure(path: str | Path, models: dict[str, ExplainGANModel | ExplainGAN], x: np.ndarray,
                           title: str = "") -> Path:
    """PNG: one row per image; for each named model its transformed image, mask and composite, with
    the classifier's probability of the other class on the composite above it.

    >>> import tempfile, os
    >>> from xaisdk.data import binary_digits_split
    >>> p = save_explaingan_figure(os.path.join(tempfile.mkdtemp(), "f.png"), {"full": ExplainGAN()},
    ...                            binary_digits_split().test.x[:2])
    >>> p.stat().st_size > 0
    True
    """
    from xaisdk.viz import plt, save_figure  # viz selects the file-only matplotlib backend first

    images = np.asarray(x, dtype=np.float32)
    results = {name: _explainer(m).transform(images) for name, m in models.items()}
    cols = 1 + 3 * len(results)
    fig, axes = plt.subplots(len(images), cols, figsize=(0.95 * cols, 1.0 * len(images) + 0.5), squeeze=False)
    for i in range(len(images)):
        panels = [("input", images[i, 0], "")]
        for name, r in results.items():
            panels += [(f"{name}\ntransformed", r.transformed[i, 0], ""), (f"{name}\nmask", r.mask[i, 0], ""),
                       (f"{name}\ncomposite", r.composite[i, 0], f"p={r.flipped_prob[i]:.2f}")]
        for j, (label, image, note) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=6)
            if note:
                ax.set_xlabel(note, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path, dpi=90)
