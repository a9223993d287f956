"""GANMEX training: a StarGAN whose class discriminator is the frozen classifier being explained.

Generator loss (the GANMEX paper's Eq. 9, with the hinge form of the adversarial term)::

    L_G = -mean D_src(G(x, c_t))                       realism
          + lambda_cls * CE(S(G(x, c_t)), c_t)         the *explained* classifier calls it c_t
          + lambda_rec * |x - G(G(x, c_t), c_o)|_1     cycle back to the original class
          + lambda_sim * |x - G(x, c_t)|_1             stay close to the input

``c_o`` is the input's label and ``c_t`` is drawn uniformly among the other classes. The critic learns
realism only (hinge loss, spectral norm: no gradient penalty, so no double back-propagation, which
matters on a CPU); the classifier is a frozen copy and is never updated. With
``standalone_classifier=True`` (the paper's Appendix D ablation) the critic grows StarGAN's own class
head, trained on real images from scratch, and the generator's class term uses it instead of S.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xaisdk.data import Dataset, Split
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier, weights_hash
from xaisdk.models.ganmex import GanmexModel, ganmex_from_payload, read_ganmex_file, save_ganmex
from xaisdk.models.stargan import CriticConfig, GeneratorConfig, PatchCritic, StarGenerator
from xaisdk.train._resume import restore_loop, resumable_state

LOSS_TERMS = ("critic", "adversarial", "classification", "reconstruction", "similarity", "target_success")


@dataclass
class GanmexTrainingConfig:
    """Hyper-parameters of :func:`train_ganmex`, tuned on the digits (see ``export/train_digits_ganmex.py``).

    * ``lambda_cls = 1``: StarGAN's default; the frozen classifier is a strong, well-calibrated signal,
      so more only pushes images toward adversarial-looking strokes.
    * ``lambda_rec = 5``: half of StarGAN's 10; the cycle term mainly speeds up convergence here (the
      similarity term already keeps the image anchored to its input).
    * ``lambda_sim = 5``: the minimum-distance term of Eq. 1. Raised until the mean baseline distance
      stopped falling without the target success dropping under 95%.
    * ``generator_channels = 16`` (16-32-64 channels, 4 residual blocks, 370k weights): on 28x28 digits
      as good as 32 (same target success, similar distance) at a third of the training time on a CPU.
    * ``generator_input_skip = True``: the generator outputs a change to its input in logit space (see
      :mod:`xaisdk.models.stargan`); without it the coloured-digits generator collapsed to prototypes.
    * Adam with betas (0.5, 0.999) and a critic learning rate 4x the generator's (TTUR), one critic step
      per generator step: the usual setting for hinge loss with spectral norm.
    """

    steps: int = 3000
    batch_size: int = 32
    lr_generator: float = 2e-4
    lr_critic: float = 4e-4
    lambda_cls: float = 1.0
    lambda_rec: float = 5.0
    lambda_sim: float = 5.0
    standalone_classifier: bool = False
    generator_channels: int = 16
    generator_res_blocks: int = 4
    generator_input_skip: bool = True
    critic_channels: int = 32
    seed: int = 0
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500

    def validate(self) -> None:
        for name in ("steps", "batch_size", "generator_channels", "generator_res_blocks", "critic_channels",
                     "log_every", "sample_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_generator", "lr_critic"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lambda_cls", "lambda_rec", "lambda_sim"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {value}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GanmexTrainingConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Hyper-parameters that define the model; a resumed run must keep them (step counts and logging may change).
_ARCHITECTURE_KEYS = ("standalone_classifier", "generator_channels", "generator_res_blocks", "generator_input_skip",
                      "critic_channels",
                      "batch_size", "seed", "lambda_cls", "lambda_rec", "lambda_sim", "lr_generator", "lr_critic")


def _check_data(train: Dataset, classifier: Classifier) -> None:
    if tuple(train.input_shape) != tuple(classifier.input_shape):
        raise InputError(f"dataset images are {tuple(train.input_shape)} but the classifier takes "
                         f"{tuple(classifier.input_shape)}")
    if train.num_classes != classifier.num_classes:
        raise InputError(f"dataset has {train.num_classes} classes but the classifier has {classifier.num_classes}")
    labels = np.unique(train.y)
    if len(labels) < 2:
        raise InputError("GANMEX training needs images of at least two classes")
    low, high = classifier.value_range
    if float(train.x.min()) < low - 1e-6 or float(train.x.max()) > high + 1e-6:
        raise InputError(f"dataset values span [{train.x.min():.3g}, {train.x.max():.3g}], outside the "
                         f"classifier's value range {classifier.value_range}")


def _frozen_copy(classifier: Classifier) -> torch.nn.Module:
    module = copy.deepcopy(classifier.model).eval()
    module.requires_grad_(False)
    return module


def _other_class(labels: torch.Tensor, num_classes: int, rng: torch.Generator) -> torch.Tensor:
    """A class drawn uniformly among the ``num_classes - 1`` classes other than each label."""
    shift = torch.randint(1, num_classes, labels.shape, generator=rng)
    return (labels + shift) % num_classes


def sample_grid(generator: StarGenerator, x: np.ndarray) -> np.ndarray:
    """``G(x_i, c)`` for every input and every class: an (N, 1 + K, C, H, W) array, inputs first."""
    k = generator.config.num_classes
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        rows = xt.repeat_interleave(k, 0)
        targets = torch.arange(k).repeat(len(xt))
        out = generator(rows, targets).view(len(xt), k, *xt.shape[1:])
    generator.train(was_training)
    return torch.cat([xt[:, None], out], 1).numpy()


def save_sample_grid(path: str | os.PathLike, grid: np.ndarray, class_names: tuple[str, ...], title: str = "") -> Path:
    """Draw :func:`sample_grid`'s output as a PNG: one row per input, columns input, class 0, class 1, ..."""
    from xaisdk.viz import as_displayable, plt  # viz selects the file-only matplotlib backend first

    n, cols = grid.shape[:2]
    fig, axes = plt.subplots(n, cols, figsize=(0.9 * cols, 0.9 * n + 0.4), squeeze=False)
    for i in range(n):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(as_displayable(grid[i, j]), cmap="gray" if grid.shape[2] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("input" if j == 0 else class_names[j - 1], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _grid_inputs(train: Dataset, per_class: int = 1) -> np.ndarray:
    picks = [np.flatnonzero(train.y == c)[:per_class] for c in range(train.num_classes)]
    return train.x[np.concatenate(picks)]


def train_ganmex(
    split: Split | Dataset,
    classifier: Classifier,
    config: GanmexTrainingConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    samples_dir: str | os.PathLike | None = None,
    resume: bool = False,
    data_spec: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[GanmexModel, dict[str, Any]]:
    """Train a GANMEX generator for ``classifier`` on ``split.train`` (or a bare Dataset).

    Every ``checkpoint_every`` steps (and at the end) the model and the training state are written to
    ``out`` atomically; every ``sample_every`` steps a PNG grid goes to ``samples_dir``. ``resume=True``
    continues from ``out`` (same classifier and hyper-parameters; ``steps`` may grow) and gives the
    same weights as an uninterrupted run. Returns the model and a history of the loss terms.

    >>> from xaisdk.data import load_digits
    >>> from xaisdk.models import load_shipped_classifier
    >>> cfg = GanmexTrainingConfig(steps=2, batch_size=4, generator_channels=4, generator_res_blocks=1,
    ...                            critic_channels=4)
    >>> gm, hist = train_ganmex(load_digits().train.subset(range(40)), load_shipped_classifier(), cfg, progress=False)
    >>> sorted(hist["final"])[:3]
    ['adversarial', 'classification', 'critic']
    """
    config = config or GanmexTrainingConfig()
    config.validate()
    train = split.train if isinstance(split, Split) else split
    _check_data(train, classifier)
    k = classifier.num_classes
    gen_config = GeneratorConfig.for_input(classifier.input_shape, k, value_range=classifier.value_range,
                                           base_channels=config.generator_channels, n_res=config.generator_res_blocks,
                                           input_skip=config.generator_input_skip)
    critic_config = CriticConfig.for_input(classifier.input_shape, num_classes=k if config.standalone_classifier else 0,
                                           base_channels=config.critic_channels)
    torch.manual_seed(config.seed)
    rng = torch.Generator().manual_seed(config.seed)
    generator = StarGenerator(gen_config)
    critic = PatchCritic(critic_config)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr_critic, betas=(0.5, 0.999))
    history: dict[str, Any] = {term: [] for term in LOSS_TERMS} | {"step": []}
    start_step, elapsed = 0, 0.0
    out_path = Path(out) if out is not None else None
    if resume:
        if out_path is None:
            raise InputError("resume needs the checkpoint path (out)")
        start_step, elapsed = _restore(out_path, classifier, config, generator, critic, opt_g, opt_d, rng, history)
    frozen = _frozen_copy(classifier)
    x_all = torch.from_numpy(np.ascontiguousarray(train.x, dtype=np.float32))
    y_all = torch.from_numpy(train.y.astype(np.int64))
    grid_x = _grid_inputs(train)
    spec = dict(data_spec or {"name": train.name})
    running = {term: 0.0 for term in LOSS_TERMS}
    counted = 0

    def snapshot(step: int) -> GanmexModel:
        model = GanmexModel(classifier, copy.deepcopy(generator).eval(), spec, {
            "config": asdict(config), "steps_done": step, "seconds": elapsed,
            "final": {t: (history[t][-1] if history[t] else None) for t in LOSS_TERMS}})
        return model

    def write_checkpoint(step: int) -> None:
        if out_path is None:
            return
        state = {"step": step, "seconds": elapsed, "critic": {"config": critic_config.to_dict(),
                                                              "state_dict": critic.state_dict()},
                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": rng.get_state(),
                 "history": history, "classifier_hash": weights_hash(classifier)}
        save_ganmex(out_path, snapshot(step), training_state=state)

    generator.train()
    critic.train()
    bar = tqdm(range(start_step, config.steps), desc="train ganmex", unit="step", disable=not progress,
               initial=start_step, total=config.steps)
    for step in bar:
        tick = time.perf_counter()
        idx = torch.randint(0, len(x_all), (config.batch_size,), generator=rng)
        x, c_o = x_all[idx], y_all[idx]
        c_t = _other_class(c_o, k, rng)

        # Critic: realism only (plus its own class head in the stand-alone ablation).
        fake = generator(x, c_t)  # kept with its graph: the generator step below reuses it
        real_src, real_cls = critic(x)
        fake_src, _ = critic(fake.detach())
        loss_d = F.relu(1 - real_src).mean() + F.relu(1 + fake_src).mean()
        if config.standalone_classifier:
            loss_d = loss_d + config.lambda_cls * F.cross_entropy(real_cls, c_o)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # Generator: Eq. 9, against the critic just updated.
        fake_src, fake_cls = critic(fake)
        adversarial = -fake_src.mean()
        class_logits = fake_cls if config.standalone_classifier else frozen(fake)
        classification = F.cross_entropy(class_logits, c_t)
        similarity = (fake - x).abs().mean()
        loss_g = adversarial + config.lambda_cls * classification + config.lambda_sim * similarity
        if config.lambda_rec > 0:
            reconstruction = (generator(fake, c_o) - x).abs().mean()
            loss_g = loss_g + config.lambda_rec * reconstruction
        else:  # still measured, so that runs with and without the cycle term can be compared
            with torch.no_grad():
                reconstruction = (generator(fake, c_o) - x).abs().mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        elapsed += time.perf_counter() - tick

        with torch.no_grad():
            success = (frozen(fake).argmax(1) == c_t).float().mean()
        for term, value in zip(LOSS_TERMS, (loss_d, adversarial, classification, reconstruction, similarity, success)):
            running[term] += float(value.detach())
        counted += 1
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            history["step"].append(done)
            for term in LOSS_TERMS:
                history[term].append(running[term] / counted)
                running[term] = 0.0
            counted = 0
            bar.set_postfix(cls=f"{history['classification'][-1]:.3f}", sim=f"{history['similarity'][-1]:.3f}",
                            success=f"{history['target_success'][-1]:.2f}")
        if samples_dir is not None and (done % config.sample_every == 0 or done == config.steps):
            save_sample_grid(Path(samples_dir) / f"step_{done:06d}.png", sample_grid(generator, grid_x),
                             classifier.class_names, title=f"step {done}: input, then G(x, c) for each class c")
        if done % config.checkpoint_every == 0 or done == config.steps:
            write_checkpoint(done)
    generator.eval()
    model = snapshot(max(config.steps, start_step))
    result = {"final": model.training["final"], "seconds": elapsed, **history}
    return model, result


def _restore(path: Path, classifier: Classifier, config: GanmexTrainingConfig, generator: StarGenerator,
             critic: PatchCritic, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, rng: torch.Generator,
             history: dict[str, Any]) -> tuple[int, float]:
    payload = read_ganmex_file(path)
    state = resumable_state(payload, path, payload.get("training", {}).get("config", {}), config, _ARCHITECTURE_KEYS,
                            classifier)
    restored = ganmex_from_payload(payload, path)

    def networks() -> None:
        generator.load_state_dict(restored.generator.state_dict())
        critic.load_state_dict(state["critic"]["state_dict"])

    return restore_loop(state, path, networks, opt_g, opt_d, rng, history)
