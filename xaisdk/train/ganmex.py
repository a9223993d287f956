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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaisdk.data import Dataset, Split, load_dataset, load_image_folder
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel, classifier_entry, ganmex_from_payload, read_ganmex_file, save_ganmex
from xaisdk.models.stargan import CriticConfig, GeneratorConfig, PatchCritic, StarGenerator
from xaisdk.runtime.preprocessing import Preprocessing, fit_images
from xaisdk.train._classifier import check_input_shape, frozen_classifier
from xaisdk.train._config import check_counts, check_rates, check_weights, config_from_dict
from xaisdk.train.grids import save_image_grid
from xaisdk.train.loop import TrainingLoop, seeded_generator

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
        check_counts(self, ("steps", "batch_size", "generator_channels", "generator_res_blocks", "critic_channels",
                            "log_every", "sample_every", "checkpoint_every"))
        check_rates(self, ("lr_generator", "lr_critic"))
        check_weights(self, ("lambda_cls", "lambda_rec", "lambda_sim"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GanmexTrainingConfig:
        return config_from_dict(cls, data)


# Hyper-parameters that define the model; a resumed run must keep them (step counts and logging may change).
_ARCHITECTURE_KEYS = ("standalone_classifier", "generator_channels", "generator_res_blocks", "generator_input_skip",
                      "critic_channels",
                      "batch_size", "seed", "lambda_cls", "lambda_rec", "lambda_sim", "lr_generator", "lr_critic")


def _check_data(train: Dataset, classifier: Classifier) -> None:
    check_input_shape(train, classifier)
    if train.num_classes != classifier.num_classes:
        raise InputError(f"dataset has {train.num_classes} classes but the classifier has {classifier.num_classes}")
    labels = np.unique(train.y)
    if len(labels) < 2:
        raise InputError("GANMEX training needs images of at least two classes")
    low, high = classifier.value_range
    if float(train.x.min()) < low - 1e-6 or float(train.x.max()) > high + 1e-6:
        raise InputError(f"dataset values span [{train.x.min():.3g}, {train.x.max():.3g}], outside the "
                         f"classifier's value range {classifier.value_range}")


def training_images(dataset: str | os.PathLike, classifier: Classifier, *, seed: int = 0) -> Split:
    """The images to train ``classifier``'s GANMEX generator on, split train/test with ``seed``.

    ``dataset``: 'digits', 'shapes', an .npz (see :func:`xaisdk.data.load_dataset`), or a folder of
    class folders whose images, of any size, are brought to the classifier's input shape by its resize
    policy (``metadata["preprocessing"]``; stretched when it has none) and to its channel count. A
    folder's classes are matched to the classifier's by name (the folder names must be its class
    names, e.g. from ``--classes labels.txt``), so the folders' sorted order does not matter.

    >>> from xaisdk.models import load_shipped_classifier
    >>> training_images("digits", load_shipped_classifier()).train.input_shape
    (1, 28, 28)
    """
    if not os.path.isdir(dataset) or os.fspath(dataset) in ("digits", "shapes"):
        return load_dataset(dataset, seed=seed)
    entry = classifier.metadata.get("preprocessing")
    policy = Preprocessing.from_manifest(entry) if entry is not None else Preprocessing()
    fit = Preprocessing(resize=policy.resize if policy.resize != "none" else "stretch",
                        resize_shorter_to=policy.resize_shorter_to)
    shape = classifier.input_shape
    split = load_image_folder(dataset, seed=seed, grayscale=shape[0] == 1,
                              transform=lambda image: fit_images(image[None], shape, fit)[0][0])
    folders = split.train.class_names
    if set(folders) != set(classifier.class_names):
        raise InputError(f"{dataset}: class folders {', '.join(folders)} are not the classifier's classes "
                         f"({', '.join(classifier.class_names)}); name each folder after its class (give the "
                         "classifier's class names in output order, e.g. --classes labels.txt)")
    index = np.array([classifier.class_names.index(name) for name in folders], np.int64)

    def relabel(part: Dataset) -> Dataset:
        return Dataset(part.x, index[part.y], classifier.class_names, part.name)

    return Split(relabel(split.train), relabel(split.test))


def _other_class(labels: torch.Tensor, num_classes: int, rng: torch.Generator) -> torch.Tensor:
    """A class drawn uniformly among the ``num_classes - 1`` classes other than each label."""
    shift = torch.randint(1, num_classes, labels.shape, generator=rng)
    return (labels + shift) % num_classes


def sample_grid(generator: StarGenerator, x: np.ndarray) -> np.ndarray:
    """``G(x_i, c)`` for every input and every class: an (N, 1 + K, C, H, W) array, inputs first.

    >>> generator = StarGenerator(GeneratorConfig.for_input((1, 28, 28), 3, base_channels=4, n_res=1))
    >>> sample_grid(generator, np.zeros((2, 1, 28, 28), np.float32)).shape
    (2, 4, 1, 28, 28)
    """
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
    """Draw :func:`sample_grid`'s output as a PNG: one row per input, columns input, class 0, class 1, ...

    >>> import tempfile
    >>> save_sample_grid(Path(tempfile.mkdtemp()) / "g.png", np.zeros((1, 3, 1, 8, 8)), ("a", "b")).suffix
    '.png'
    """
    return save_image_grid(path, grid, column_titles=("input", *class_names), title=title)


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
    stored_classifier = classifier_entry(classifier)  # once, and before training: refuses what cannot be stored
    rng = seeded_generator(config.seed)
    generator = StarGenerator(gen_config)
    critic = PatchCritic(critic_config)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr_critic, betas=(0.5, 0.999))
    loop = TrainingLoop("train ganmex", LOSS_TERMS, config, recorded=asdict(config), rng=rng,
                        optimizers={"opt_g": opt_g, "opt_d": opt_d}, out=out, samples_dir=samples_dir, progress=progress,
                        classifier=classifier)
    if resume:
        def restore(payload: dict[str, Any], state: dict[str, Any]) -> None:
            generator.load_state_dict(ganmex_from_payload(payload, loop.out).generator.state_dict())
            critic.load_state_dict(state["critic"]["state_dict"])

        loop.resume(read_ganmex_file, _ARCHITECTURE_KEYS, restore)
    frozen = frozen_classifier(classifier)
    x_all = torch.from_numpy(np.ascontiguousarray(train.x, dtype=np.float32))
    y_all = torch.from_numpy(train.y.astype(np.int64))
    grid_x = _grid_inputs(train)
    spec = dict(data_spec or {"name": train.name})

    def snapshot(step: int) -> GanmexModel:
        return GanmexModel(classifier, copy.deepcopy(generator).eval(), spec, loop.training_info(step))

    def save(path: Path, step: int, state: dict[str, Any]) -> None:
        critic_entry = {"config": critic_config.to_dict(), "state_dict": critic.state_dict()}
        save_ganmex(path, snapshot(step), training_state=state | {"critic": critic_entry}, classifier=stored_classifier)

    def draw(path: Path, step: int) -> None:
        save_sample_grid(path, sample_grid(generator, grid_x), classifier.class_names,
                         title=f"step {step}: input, then G(x, c) for each class c")

    def train_step() -> dict[str, torch.Tensor]:
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

        with torch.no_grad():
            success = (frozen(fake).argmax(1) == c_t).float().mean()
        return dict(zip(LOSS_TERMS, (loss_d, adversarial, classification, reconstruction, similarity, success)))

    loop.run(train_step, modules=(generator, critic), draw=draw, save=save,
             postfix={"cls": ("classification", ".3f"), "sim": ("similarity", ".3f"), "success": ("target_success", ".2f")})
    return snapshot(loop.steps_done), loop.result()
