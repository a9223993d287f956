"""Training the learned inpainter (:mod:`xaisdk.models.inpainter`) on a dataset's training images.

Each step takes a batch of training images and a batch of hole masks drawn from a seeded pool of
:func:`xaisdk.data.random_masks` (boxes, brush strokes, superpixel unions), both randomly flipped,
and minimises the partial-convolution paper's reconstruction loss (Liu et al. 2018) on the raw
network output ``y``::

    L = hole_weight * mean(|y - x| * mask) + valid_weight * mean(|y - x| * (1 - mask))
        [+ adversarial_weight * -mean D(composite, mask)]

The optional adversarial term is a hinge loss against a spectral-norm PatchGAN critic that sees the
composited image and the mask (DeepFill v2's SN-PatchGAN). At the end the model is measured on the
held-out part: the mean absolute error over the hole pixels of seeded evaluation masks, next to the
same error of a mean-colour fill (each image's visible pixels averaged per channel).
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaisdk.data import Dataset, Split
from xaisdk.data.masks import MASK_KINDS, random_masks
from xaisdk.errors import InputError
from xaisdk.models.inpainter import (
    GatedUNet,
    InpainterConfig,
    LearnedInpainter,
    inpainter_from_payload,
    read_inpainter_file,
    save_inpainter,
)
from xaisdk.models.stargan import CriticConfig, PatchCritic
from xaisdk.runtime.inpainting import Inpainter, check_images_and_masks, composite
from xaisdk.train._config import config_from_dict
from xaisdk.train.grids import save_image_grid
from xaisdk.train.loop import TrainingLoop, seeded_generator

__all__ = ["InpainterTrainingConfig", "evaluate_inpainter", "heldout_masks", "masked_l1", "mean_colour_fill",
           "save_inpainting_grid",
           "train_inpainter"]

LOSS_TERMS = ("hole_l1", "valid_l1", "adversarial", "critic")


@dataclass
class InpainterTrainingConfig:
    """Hyper-parameters of :func:`train_inpainter` (the shipped models' choices and why).

    * ``hole_weight = 6``, ``valid_weight = 1``: the partial-convolution paper's weights; the network
      must also reproduce the visible pixels, which keeps its output calibrated at the hole borders.
    * ``adversarial_weight = 0``: no GAN term. Tried on shapes (32x32, plain and striped backgrounds)
      with weight 0.1 at the same CPU time (~105 s: 1,100 steps with the critic, which costs ~35% per
      step, against 1,500 without): held-out hole L1 0.140 against 0.119 (striped images only: 0.164
      against 0.146), and the fills of striped holes were not sharper (gradient energy inside the holes
      relative to the truth: 0.82 against 0.83). Within a few minutes of CPU the critic only takes
      steps away from the reconstruction; the term stays available for longer runs and other data.
    * ``base_channels = 16`` (16-32-64 channels, 357k weights, 1.4 MB): a CPU trains it in minutes.
    * Adam (0.9, 0.999) at ``lr = 1e-3``, batch 32; masks from a pool of 4096 (drawn again from ``seed``
      by every run, so a resumed run sees the same pool), coverage 5-70%.
    * ``flips``: random horizontal flips of the images and independent flips (and, for square images,
      transposes) of the masks; a regulariser for small datasets (on for digits, off for shapes, where
      it did not help: see ``export/train_inpainters.py``).
    """

    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    hole_weight: float = 6.0
    valid_weight: float = 1.0
    adversarial_weight: float = 0.0
    lr_critic: float = 4e-4
    critic_channels: int = 32
    base_channels: int = 16
    mask_kinds: tuple[str, ...] = MASK_KINDS
    coverage: tuple[float, float] = (0.05, 0.7)
    mask_pool: int = 4096
    flips: bool = True
    seed: int = 0
    eval_images: int = 500
    eval_seed: int = 1
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500

    def validate(self) -> None:
        for name in ("steps", "batch_size", "critic_channels", "base_channels", "mask_pool", "eval_images",
                     "log_every", "sample_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("seed", "eval_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InputError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "lr_critic"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a number > 0, got {value!r}")
        for name in ("hole_weight", "valid_weight", "adversarial_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.hole_weight == 0:
            raise InputError("hole_weight must be > 0: it is the loss on the pixels the inpainter fills")
        random_masks(1, 8, 8, kinds=self.mask_kinds, coverage=self.coverage, seed=0)  # checks kinds and coverage

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InpainterTrainingConfig:
        values = dict(data)
        for key in ("mask_kinds", "coverage"):
            if key in values:
                values[key] = tuple(values[key])
        return config_from_dict(cls, values)


# Hyper-parameters that define the run; a resumed run must keep them (step counts and logging may change).
_RUN_KEYS = ("batch_size", "lr", "hole_weight", "valid_weight", "adversarial_weight", "lr_critic", "critic_channels",
             "base_channels", "mask_kinds", "coverage", "mask_pool", "flips", "seed")


def mean_colour_fill(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` with its holes filled by the mean of each image's visible pixels, per channel (gray
    middle of [0, 1] for an image without visible pixels): the simplest filler to beat.

    >>> x = np.array([[[[0.0, 1.0], [0.5, 0.9]]]], np.float32); m = np.array([[[[0, 0], [0, 1]]]], np.float32)
    >>> mean_colour_fill(x, m).ravel().tolist()
    [0.0, 1.0, 0.5, 0.5]
    """
    images, masks = check_images_and_masks(x, mask)
    visible = 1 - masks
    count = visible.sum(axis=(2, 3), keepdims=True)
    mean = np.where(count > 0, (images * visible).sum(axis=(2, 3), keepdims=True) / np.maximum(count, 1), 0.5)
    return composite(images, np.broadcast_to(mean, images.shape).astype(np.float32), masks)


def masked_l1(filled: np.ndarray, x: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error between ``filled`` and ``x`` over the hole pixels (all channels) of ``mask``.

    >>> x = np.zeros((1, 2, 2, 2), np.float32); m = np.zeros((1, 1, 2, 2), np.float32); m[..., 0, 0] = 1
    >>> masked_l1(x + 0.5, x, m)
    0.5
    """
    images, masks = check_images_and_masks(x, mask)
    filled = np.asarray(filled, np.float64)
    if filled.shape != images.shape:
        raise InputError(f"filled: expected the shape of x {images.shape}, got {filled.shape}")
    holes = masks.sum() * images.shape[1]
    if holes == 0:
        raise InputError("mask: has no hole pixels to measure")
    return float((np.abs(filled - images) * masks).sum() / holes)


def heldout_masks(test: Dataset, config: InpainterTrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation images (the first ``eval_images`` of ``test``) and their seeded masks."""
    x = test.x[:config.eval_images]
    _, height, width = test.input_shape
    return x, random_masks(len(x), height, width, kinds=config.mask_kinds, coverage=config.coverage,
                           seed=config.eval_seed)


def save_inpainting_grid(path: str | os.PathLike, x: np.ndarray, mask: np.ndarray, filled: np.ndarray,
                         title: str = "") -> Path:
    """A PNG with one column per image and rows: input, masked input (holes in magenta/gray), inpainted.

    >>> import tempfile
    >>> x = np.random.default_rng(0).random((2, 1, 8, 8), np.float32); m = np.zeros((2, 1, 8, 8), np.float32)
    >>> save_inpainting_grid(Path(tempfile.mkdtemp()) / "g.png", x, m, x).suffix
    '.png'
    """
    hole_colour = np.array([1.0, 0.0, 1.0] if x.shape[1] == 3 else [0.5], np.float32)[:, None, None]
    shown = x * (1 - mask) + hole_colour * mask
    return save_image_grid(path, np.stack([x, shown, filled]), row_labels=("input", "holes", "inpainted"), title=title)


def _check_data(train: Dataset) -> None:
    if len(train) < 1:
        raise InputError("inpainter training needs at least one training image")
    if float(train.x.min()) < 0 or float(train.x.max()) > 1:
        raise InputError(f"dataset values span [{train.x.min():.3g}, {train.x.max():.3g}]; expected [0, 1]")
    _, height, width = train.input_shape
    if min(height, width) < 4:
        raise InputError(f"images of {height}x{width} are too small to inpaint (need at least 4x4)")


def _flip(batch: torch.Tensor, flags: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.where(flags.view(-1, 1, 1, 1), batch.flip(dim), batch)


def _augment(x: torch.Tensor, m: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    flags = torch.rand(4, len(x), generator=rng) < 0.5
    x = _flip(x, flags[0], 3)
    m = _flip(_flip(m, flags[1], 3), flags[2], 2)
    if m.shape[2] == m.shape[3]:
        m = torch.where(flags[3].view(-1, 1, 1, 1), m.transpose(2, 3), m)
    return x, m


def train_inpainter(
    split_or_dataset: Split | Dataset,
    config: InpainterTrainingConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    samples_dir: str | os.PathLike | None = None,
    resume: bool = False,
    data_spec: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[LearnedInpainter, dict[str, Any]]:
    """Train a :class:`~xaisdk.models.inpainter.LearnedInpainter` on ``split.train`` (or a bare Dataset).

    Every ``checkpoint_every`` steps (and at the end) the model and the training state are written
    to ``out`` atomically; every ``sample_every`` steps a PNG grid (inputs, holes, inpainted) goes to
    ``samples_dir``. ``resume=True`` continues from ``out`` (same hyper-parameters; ``steps`` may
    grow) and gives the same weights as an uninterrupted run. Returns the model and a history: the
    loss terms every ``log_every`` steps and, for a Split, ``heldout``: the hole L1 on the test part
    of the model and of the mean-colour fill.

    >>> from xaisdk.data import load_digits
    >>> cfg = InpainterTrainingConfig(steps=2, batch_size=4, base_channels=4, mask_pool=8, eval_images=8)
    >>> model, hist = train_inpainter(load_digits(), cfg, progress=False)
    >>> sorted(hist["heldout"])
    ['images', 'learned', 'mean_fill']
    """
    config = config or InpainterTrainingConfig()
    config.validate()
    train = split_or_dataset.train if isinstance(split_or_dataset, Split) else split_or_dataset
    if not isinstance(train, Dataset):
        raise InputError(f"split_or_dataset: expected a Split or a Dataset, got {type(split_or_dataset).__name__}")
    _check_data(train)
    channels, height, width = train.input_shape
    net_config = InpainterConfig.for_input(train.input_shape, base_channels=int(config.base_channels))
    rng = seeded_generator(config.seed)
    network = GatedUNet(net_config)
    adversarial = config.adversarial_weight > 0
    critic_config = CriticConfig.for_input((channels + 1, height, width), base_channels=config.critic_channels)
    critic = PatchCritic(critic_config) if adversarial else None
    opt = torch.optim.Adam(network.parameters(), lr=config.lr)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr_critic, betas=(0.5, 0.999)) if critic else None
    loop = TrainingLoop("train inpainter", LOSS_TERMS, config, recorded=_config_dict(config), rng=rng,
                        optimizers={"opt": opt} | ({"opt_d": opt_d} if opt_d else {}), out=out, samples_dir=samples_dir,
                        progress=progress)
    if resume:
        def restore(payload: dict[str, Any], state: dict[str, Any]) -> None:
            network.load_state_dict(inpainter_from_payload(payload, loop.out).network.state_dict())
            if critic is not None:
                critic.load_state_dict(state["critic"]["state_dict"])

        loop.resume(read_inpainter_file, _RUN_KEYS, restore)
    pool_seed = int(np.random.SeedSequence([int(config.seed), 0]).generate_state(1)[0])
    pool = torch.from_numpy(random_masks(config.mask_pool, height, width, kinds=config.mask_kinds,
                                         coverage=config.coverage, seed=pool_seed))
    x_all = torch.from_numpy(np.ascontiguousarray(train.x, dtype=np.float32))
    grid_x = train.x[:8]
    grid_m = random_masks(len(grid_x), height, width, kinds=config.mask_kinds, coverage=config.coverage,
                          seed=config.eval_seed)
    spec = dict(data_spec or {"name": train.name})

    def snapshot(step: int, extra: dict[str, Any] | None = None) -> LearnedInpainter:
        return LearnedInpainter(copy.deepcopy(network), spec, loop.training_info(step) | (extra or {}))

    def save(path: Path, step: int, state: dict[str, Any]) -> None:
        if critic is not None:
            state |= {"critic": {"config": critic_config.to_dict(), "state_dict": critic.state_dict()}}
        save_inpainter(path, snapshot(step), training_state=state)

    def draw(path: Path, step: int) -> None:
        network.eval()
        with torch.no_grad():
            filled = network(torch.from_numpy(grid_x), torch.from_numpy(grid_m)).numpy()
        network.train()
        save_inpainting_grid(path, grid_x, grid_m, filled, title=f"step {step}: input, holes, inpainted")

    def train_step() -> dict[str, torch.Tensor]:
        x = x_all[torch.randint(0, len(x_all), (config.batch_size,), generator=rng)]
        m = pool[torch.randint(0, len(pool), (config.batch_size,), generator=rng)]
        if config.flips:
            x, m = _augment(x, m, rng)
        raw = network.raw(x, m)
        error = (raw - x).abs()
        hole = (error * m).mean()
        valid = (error * (1 - m)).mean()
        loss = config.hole_weight * hole + config.valid_weight * valid
        adv_term = loss_d = torch.zeros(())
        if critic is not None:
            fake = x * (1 - m) + raw * m
            real_score, _ = critic(torch.cat([x, m], 1))
            fake_score, _ = critic(torch.cat([fake.detach(), m], 1))
            loss_d = F.relu(1 - real_score).mean() + F.relu(1 + fake_score).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            adv_term = -critic(torch.cat([fake, m], 1))[0].mean()
            loss = loss + config.adversarial_weight * adv_term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return dict(zip(LOSS_TERMS, (hole, valid, adv_term, loss_d)))

    loop.run(train_step, modules=(network,), draw=draw, save=save,
             postfix={"hole": ("hole_l1", ".4f"), "valid": ("valid_l1", ".4f")})
    steps_done = loop.steps_done
    heldout = None
    if isinstance(split_or_dataset, Split) and len(split_or_dataset.test):
        x_test, masks = heldout_masks(split_or_dataset.test, config)
        heldout = {"images": len(x_test),
                   "learned": masked_l1(snapshot(steps_done).inpaint(x_test, masks), x_test, masks),
                   "mean_fill": masked_l1(mean_colour_fill(x_test, masks), x_test, masks)}
    model = snapshot(steps_done, {"heldout": heldout} if heldout else None)
    result = loop.result()
    if heldout is not None:
        result["heldout"] = heldout
    return model, result


def evaluate_inpainter(inpainter: Inpainter, split: Split, config: InpainterTrainingConfig | None = None) -> float:
    """Hole L1 of any :class:`~xaisdk.runtime.inpainting.Inpainter` on ``split.test`` with the held-out masks
    that :func:`train_inpainter` reports (``config``'s ``eval_images``, ``eval_seed``, mask kinds, coverage).

    >>> from xaisdk.data import load_digits
    >>> from xaisdk.runtime.inpainting import OpenCVInpainter
    >>> round(evaluate_inpainter(OpenCVInpainter(), load_digits(), InpainterTrainingConfig(eval_images=20)), 2) > 0
    True
    """
    config = config or InpainterTrainingConfig()
    x, masks = heldout_masks(split.test, config)
    return masked_l1(inpainter.inpaint(x, masks), x, masks)


def _config_dict(config: InpainterTrainingConfig) -> dict[str, Any]:
    data = asdict(config)
    data["mask_kinds"] = list(config.mask_kinds)
    data["coverage"] = list(config.coverage)
    return data
