"""ExplainGAN inference: a transformed image on the other side of a binary classifier's boundary, the
mask of what changed and their composite (Samangouei et al. 2018).

The source side ``j`` of each image is the classifier's own decision (``[d(x) > 0]``, see
:func:`xaisdk.models.explaingan.decision_logit`), not a label: ExplainGAN explains what the classifier
sees. Only binary classifiers (2 logits, or 1 sigmoid logit) are accepted.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from xaisdk.errors import InputError
from xaisdk.models.explaingan import ExplainGANModel, load_explaingan, load_shipped_explaingan
from xaisdk.runtime.explaingan_onnx import ExplainGANResult, check_images

__all__ = ["ExplainGAN", "ExplainGANResult", "check_images"]


class ExplainGAN:
    """Decision-boundary crossing transformations for a binary classifier.

    Args:
        model: an :class:`~xaisdk.models.explaingan.ExplainGANModel`, a checkpoint path, or None for the
            shipped digits 3-vs-8 model.
        batch_size: most images per forward pass.

    >>> from xaisdk.data import load_digits
    >>> test = load_digits().test
    >>> eg = ExplainGAN()
    >>> r = eg.transform(test.x[test.y == 3][:4])
    >>> r.composite.shape, r.source.tolist(), bool(r.flipped.all())
    ((4, 1, 28, 28), [0, 0, 0, 0], True)
    """

    def __init__(self, model: ExplainGANModel | str | os.PathLike | None = None, batch_size: int = 256) -> None:
        if model is None:
            model = load_shipped_explaingan()
        elif isinstance(model, (str, os.PathLike)):
            model = load_explaingan(model)
        elif not isinstance(model, ExplainGANModel):
            raise InputError(f"model: expected an ExplainGANModel, a checkpoint path or None, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        self.model = model
        self.batch_size = int(batch_size)
        self.module = model.inference_module()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.classifier.class_names

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.classifier.input_shape)  # type: ignore[return-value]

    @torch.no_grad()
    def transform(self, x: np.ndarray | torch.Tensor) -> ExplainGANResult:
        """Transform each image to the other side of the classifier's boundary (see :class:`ExplainGANResult`)."""
        images = check_images(x, self.input_shape)
        parts: list[list[np.ndarray]] = [[] for _ in range(5)]
        for start in range(0, len(images), self.batch_size):
            chunk = torch.from_numpy(images[start:start + self.batch_size])
            transformed, mask, composite, _, source, flipped = self.module(chunk)
            for store, value in zip(parts, (transformed, mask, composite, source, flipped)):
                store.append(value.numpy())
        transformed, mask, composite, source, flipped = (np.concatenate(p) for p in parts)
        return ExplainGANResult(transformed, mask, composite, source.astype(np.int64), flipped)
