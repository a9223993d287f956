"""Training loop for the papers' classifiers (cross-entropy, Adam, seeded, progress bar)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xaisdk.data import Split
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.classifiers import ARCHITECTURES, build_classifier
from xaisdk.train.loop import seeded_generator


@dataclass
class ClassifierTrainingConfig:
    """Hyper-parameters of :func:`train_classifier`.

    ``max_shift`` is random-translation augmentation in pixels (0 turns it off): with 1,437 training
    digits it is what lifts test accuracy from ~97% to ~99%.
    """

    arch: str = "mnist_cnn"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_shift: int = 2
    seed: int = 0
    arch_config: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise InputError(f"arch: unknown architecture {self.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_shift < 0:
            raise InputError(f"max_shift must be >= 0, got {self.max_shift}")


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift], filling with zeros."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``.

    >>> from xaisdk.models import load_shipped_classifier
    >>> from xaisdk.data import load_digits
    >>> test = load_digits().test
    >>> accuracy(load_shipped_classifier().model, test.x, test.y) > 0.97
    True
    """
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[start : start + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[start : start + batch_size]).sum())
    return correct / max(len(x), 1)


def train_classifier(
    split: Split, config: ClassifierTrainingConfig | None = None, *, progress: bool = True
) -> tuple[Classifier, dict]:
    """Train a classifier on ``split.train`` and report accuracy on ``split.test``.

    Returns the trained :class:`~xaisdk.models.Classifier` (eval mode) and a history dict with the
    per-epoch loss and the final train/test accuracy (also stored in the classifier's metadata).

    >>> from xaisdk.data import load_digits
    >>> clf, hist = train_classifier(load_digits(), ClassifierTrainingConfig(epochs=1), progress=False)
    >>> 0.0 <= hist["test_accuracy"] <= 1.0
    True
    """
    config = config or ClassifierTrainingConfig()
    config.validate()
    train = split.train
    channels, height, width = train.input_shape
    if height != width:
        raise InputError(f"training needs square images, got {height}x{width}")
    generator = seeded_generator(config.seed)
    arch_config = {"in_channels": channels, "image_size": height, "num_classes": train.num_classes, **config.arch_config}
    model = build_classifier(config.arch, **arch_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    x_all = torch.from_numpy(np.ascontiguousarray(train.x, dtype=np.float32))
    y_all = torch.from_numpy(train.y.astype(np.int64))
    history: dict = {"loss": []}
    bar = tqdm(range(config.epochs), desc="train classifier", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        order = torch.randperm(len(x_all), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            xb = x_all[idx]
            if config.max_shift:
                xb = _random_shift(xb, config.max_shift, generator)
            loss = F.cross_entropy(model(xb), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        history["loss"].append(total / seen)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    model.eval()
    history["train_accuracy"] = accuracy(model, train.x, train.y)
    history["test_accuracy"] = accuracy(model, split.test.x, split.test.y)
    classifier = Classifier(
        model=model,
        arch=config.arch,
        config=arch_config,
        class_names=tuple(train.class_names),
        input_shape=(channels, height, width),
        metadata={
            "dataset": train.name,
            "train_size": len(train),
            "test_size": len(split.test),
            "train_accuracy": history["train_accuracy"],
            "test_accuracy": history["test_accuracy"],
            "epochs": config.epochs,
            "seed": config.seed,
            "learning_rate": config.learning_rate,
            "max_shift": config.max_shift,
        },
    )
    return classifier, history
