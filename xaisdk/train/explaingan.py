"""ExplainGAN training (Samangouei et al. 2018, Eq. 6-16) against a frozen binary classifier.

The data are split by the classifier's *predictions* (not the labels) into ``S_0`` and ``S_1`` (§3.1).
Each step draws ``batch_size`` images from each side; for side ``j``: ``z = E_j(x)``, reconstruction
``G_j(z)``, transformed ``t = G_{1-j}(z)``, mask ``m = G_m(z)``, composite ``c = x (1 - m) + t m``.

Loss terms (the generator minimises, the discriminators maximise Eq. 6):

* GAN (Eq. 7-8): ``D_j`` tells real images of ``S_j`` from the reconstructions of ``S_j`` and from the
  transformed images and composites made from ``S_{1-j}``. We use the **hinge** loss with
  spectral-norm discriminators instead of the paper's log loss: it is what this project's GANMEX
  training uses stably on a CPU, spectral norm needs no gradient penalty (no double
  back-propagation, which matters on a CPU), and the generator's term does not saturate when the
  discriminators get ahead early. (The log-loss variant was not tried.) The fake terms are averaged.
* classifier (Eq. 9-10): binary cross-entropy of the frozen classifier's decision logit on the
  composite against the other side ``1 - j``.
* reconstruction (Eq. 11): mean squared error ``|G_j(E_j(x)) - x|^2`` (per pixel).
* priors (Eq. 12-16): consistency ``|(1 - m) (x - t)|^2``, count ``max(mean m, kappa)``, smoothness
  (total variation: mean absolute difference of neighbouring mask pixels), entropy ``min(m, 1 - m)``.

Ablations: ``no_mask`` uses the transformed image directly (composite = t, no mask, no priors);
``no_reconstruction`` drops Eq. 11 and the GAN term on reconstructions.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaisdk.data import Dataset, Split
from xaisdk.data.digits import binary_digits_split
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.explaingan import (
    ExplainGANConfig,
    ExplainGANDecoder,
    ExplainGANDiscriminators,
    ExplainGANEncoders,
    ExplainGANModel,
    check_binary,
    compose,
    decision_logit,
    explaingan_from_payload,
    read_explaingan_file,
    save_explaingan,
)
from xaisdk.train._classifier import check_input_shape, frozen_classifier
from xaisdk.train._config import check_counts, check_rates, check_weights, config_from_dict
from xaisdk.train.grids import save_image_grid
from xaisdk.train.loop import TrainingLoop, seeded_generator

LOSS_TERMS = ("discriminator", "gan", "classifier", "reconstruction", "consistency", "count", "smoothness", "entropy",
              "flip_rate", "mask_area")


@dataclass
class ExplainGANTrainingConfig:
    """Hyper-parameters of :func:`train_explaingan`, tuned on digits 3 vs 8 (``export/train_digits_explaingan.py``).

    The paper gives no coefficient values (only that they were cross-validated and stable across
    datasets except ``kappa`` and the smoothness weight). Ours, found on digits 3 vs 8 (all the
    reconstruction and prior terms are per-pixel means, hence the large weights):

    * ``lambda_gan = 1``, ``lambda_cls = 1``: the reference scale.
    * ``lambda_rec = 100``: with 10 the GAN and classifier gradients swamped the per-pixel MSE and the
      decoder never learned to reconstruct (MSE stuck at ~0.13, blank images); at 100 reconstructions are
      recognisable after ~300 steps and the transformed head builds on them.
    * ``lambda_const = 100``: outside the mask the transformed image must equal the input; same scale
      as the reconstruction.
    * ``lambda_count = 10``, ``kappa = 0.1``: a pixel is worth masking when ``lambda_const (x - t)^2``
      exceeds ``lambda_count``, i.e. where the change is above ~0.3 of the value range; with 1 the mask
      covered 60-100% of the image. A 3 <-> 8 change touches roughly a tenth of the image (the left
      arcs), hence ``kappa``.
    * ``lambda_smooth = 2``, ``lambda_entropy = 2``: a compact, near-binary mask at this scale.
    * Adam (0.5, 0.999), discriminator lr 2x the generator's (TTUR), one discriminator step per
      generator step; 2500 steps of 2 x 16 images take about 4-5 minutes on one core.
    * ``no_mask`` / ``no_reconstruction``: the paper's ablations (see the module docstring).
    """

    steps: int = 2500
    batch_size: int = 16
    lr_generator: float = 2e-4
    lr_discriminator: float = 4e-4
    lambda_gan: float = 1.0
    lambda_cls: float = 1.0
    lambda_rec: float = 100.0
    lambda_const: float = 100.0
    lambda_count: float = 10.0
    kappa: float = 0.1
    lambda_smooth: float = 2.0
    lambda_entropy: float = 2.0
    no_mask: bool = False
    no_reconstruction: bool = False
    base_channels: int = 16
    code_channels: int = 64
    critic_channels: int = 16
    seed: int = 0
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500

    def validate(self) -> None:
        check_counts(self, ("steps", "batch_size", "base_channels", "code_channels", "critic_channels", "log_every",
                            "sample_every", "checkpoint_every"))
        check_rates(self, ("lr_generator", "lr_discriminator"))
        check_weights(self, ("lambda_gan", "lambda_cls", "lambda_rec", "lambda_const", "lambda_count", "lambda_smooth",
                             "lambda_entropy"))
        if not 0 <= self.kappa <= 1:
            raise InputError(f"kappa must be in [0, 1], got {self.kappa}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplainGANTrainingConfig:
        return config_from_dict(cls, data)


# What defines the run; a resumed run must keep them (steps and logging may change).
_RUN_KEYS = tuple(f.name for f in fields(ExplainGANTrainingConfig)
                  if f.name not in ("steps", "log_every", "sample_every", "checkpoint_every"))


@torch.no_grad()
def predicted_sides(classifier: Classifier, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The classifier's side ``j = [d(x) > 0]`` of each image (int64): the S_0 / S_1 split of §3.1.

    >>> from xaisdk.models.explaingan import load_shipped_explaingan
    >>> from xaisdk.data import load_digits
    >>> test = load_digits().test
    >>> x = test.x[test.y == 8][:4]
    >>> predicted_sides(load_shipped_explaingan().classifier, x).tolist()
    [1, 1, 1, 1]
    """
    module = classifier.model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return np.concatenate([(decision_logit(module, xt[s:s + batch_size]) > 0).long().numpy()
                           for s in range(0, len(xt), batch_size)]) if len(xt) else np.zeros(0, np.int64)


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertically and horizontally neighbouring pixels, per image.

    >>> total_variation(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])).tolist()
    [0.5]
    """
    dy = (mask[:, :, 1:] - mask[:, :, :-1]).abs().flatten(1).sum(1)
    dx = (mask[:, :, :, 1:] - mask[:, :, :, :-1]).abs().flatten(1).sum(1)
    n = mask[0, :, 1:].numel() + mask[0, :, :, 1:].numel()
    return (dx + dy) / n


def prior_terms(x: torch.Tensor, transformed: torch.Tensor, mask: torch.Tensor, kappa: float) -> dict[str, torch.Tensor]:
    """The mask priors of Eq. 13-16 for one batch, each averaged over the batch.

    >>> m = torch.full((1, 1, 2, 2), 0.25)
    >>> {k: round(float(v), 4) for k, v in prior_terms(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), m, 0.1).items()}
    {'consistency': 0.5625, 'count': 0.25, 'smoothness': 0.0, 'entropy': 0.25}
    """
    keep = 1 - mask
    return {
        "consistency": ((keep * (x - transformed)) ** 2).flatten(1).mean(1).mean(),
        "count": torch.clamp(mask.flatten(1).mean(1), min=kappa).mean(),
        "smoothness": total_variation(mask).mean(),
        "entropy": torch.minimum(mask, 1 - mask).flatten(1).mean(1).mean(),
    }


def _check_data(train: Dataset, sides: np.ndarray) -> None:
    if not np.isfinite(train.x).all():
        raise InputError("dataset images contain NaN or infinite values")
    counts = np.bincount(sides, minlength=2)
    if counts.min() < 1:
        raise InputError(f"the classifier predicts only one class on the training data ({counts.tolist()} images "
                         "per predicted side); ExplainGAN needs both S_0 and S_1")


def sample_rows(model: ExplainGANModel, x: np.ndarray) -> np.ndarray:
    """``(N, 5, C, H, W)``: input, reconstruction, transformed, mask (as an image), composite per input.

    >>> from xaisdk.models.explaingan import load_shipped_explaingan
    >>> sample_rows(load_shipped_explaingan(), np.zeros((2, 1, 28, 28), np.float32)).shape
    (2, 5, 1, 28, 28)
    """
    module = model.inference_module()
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        transformed, mask, composite, reconstruction, _, _ = module(xt)
    mask = mask.expand_as(xt)
    return torch.stack([xt, reconstruction, transformed, mask, composite], 1).numpy()


def save_sample_rows(path: str | os.PathLike, rows: np.ndarray, title: str = "") -> Path:
    """Draw :func:`sample_rows` as a PNG grid (one row per input).

    >>> import tempfile
    >>> save_sample_rows(Path(tempfile.mkdtemp()) / "rows.png", np.zeros((1, 5, 1, 8, 8), np.float32)).suffix
    '.png'
    """
    names = ("input", "reconstruction", "transformed", "mask", "composite")
    return save_image_grid(path, rows, column_titles=names, title=title, cell_size=(0.92, 0.95))


def _fakes_for(out: list[dict[str, torch.Tensor]], j: int, no_reconstruction: bool, use_mask: bool) -> list[torch.Tensor]:
    """The images D_j must call fake (Eq. 8): reconstructions of S_j, transformed images and composites of S_{1-j}."""
    other = out[1 - j]
    items = [] if no_reconstruction else [out[j]["rec"]]
    items.append(other["trans"])
    if use_mask:  # without a mask the composite is the transformed image: not counted twice
        items.append(other["comp"])
    return items


def train_explaingan(
    split: Split | Dataset,
    classifier: Classifier,
    config: ExplainGANTrainingConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    samples_dir: str | os.PathLike | None = None,
    resume: bool = False,
    data_spec: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[ExplainGANModel, dict[str, Any]]:
    """Train ExplainGAN for the binary ``classifier`` on ``split.train`` (or a bare Dataset; labels unused).

    Every ``checkpoint_every`` steps (and at the end) the model and the training state (discriminators,
    optimizers, RNG, history) are written to ``out`` atomically; every ``sample_every`` steps a PNG grid
    (input, reconstruction, transformed, mask, composite) goes to ``samples_dir``. ``resume=True``
    continues from ``out`` (same classifier and hyper-parameters; ``steps`` may grow) and gives the same
    weights as an uninterrupted run. Returns the model and the history of the loss terms.

    >>> from xaisdk.data import load_digits
    >>> from xaisdk.models.explaingan import load_shipped_explaingan
    >>> clf = load_shipped_explaingan().classifier
    >>> digits = load_digits().train
    >>> data = digits.subset((digits.y == 3) | (digits.y == 8))
    >>> cfg = ExplainGANTrainingConfig(steps=2, batch_size=4, base_channels=4, code_channels=8, critic_channels=4)
    >>> model, hist = train_explaingan(data, clf, cfg, progress=False)
    >>> sorted(hist["final"])[:3]
    ['classifier', 'consistency', 'count']
    """
    config = config or ExplainGANTrainingConfig()
    config.validate()
    check_binary(classifier)
    train = split.train if isinstance(split, Split) else split
    check_input_shape(train, classifier)
    sides = predicted_sides(classifier, train.x)
    _check_data(train, sides)
    net_config = ExplainGANConfig(classifier.input_shape, config.base_channels, config.code_channels,
                                  config.critic_channels, classifier.value_range)
    rng = seeded_generator(config.seed)
    encoders, decoder = ExplainGANEncoders(net_config), ExplainGANDecoder(net_config)
    critics = ExplainGANDiscriminators(net_config)
    opt_g = torch.optim.Adam([*encoders.parameters(), *decoder.parameters()], lr=config.lr_generator,
                             betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critics.parameters(), lr=config.lr_discriminator, betas=(0.5, 0.999))
    loop = TrainingLoop("train explaingan", LOSS_TERMS, config, recorded=asdict(config), rng=rng,
                        optimizers={"opt_g": opt_g, "opt_d": opt_d}, out=out, samples_dir=samples_dir, progress=progress,
                        classifier=classifier)
    if resume:
        def restore(payload: dict[str, Any], state: dict[str, Any]) -> None:
            restored = explaingan_from_payload(payload, loop.out)
            encoders.load_state_dict(restored.encoders.state_dict())
            decoder.load_state_dict(restored.decoder.state_dict())
            critics.load_state_dict(state["discriminators"])

        loop.resume(read_explaingan_file, _RUN_KEYS, restore)
    frozen = frozen_classifier(classifier)
    x_all = torch.from_numpy(np.ascontiguousarray(train.x, dtype=np.float32))
    pools = [x_all[torch.from_numpy(np.flatnonzero(sides == j))] for j in (0, 1)]
    grid_x = np.concatenate([pools[0][:3].numpy(), pools[1][:3].numpy()])
    spec = dict(data_spec or {"name": train.name})
    spec["side_counts"] = np.bincount(sides, minlength=2).tolist()
    use_mask = not config.no_mask

    def snapshot(step: int) -> ExplainGANModel:
        return ExplainGANModel(classifier, net_config, copy.deepcopy(encoders).eval(), copy.deepcopy(decoder).eval(),
                               use_mask, spec, loop.training_info(step))

    def save(path: Path, step: int, state: dict[str, Any]) -> None:
        save_explaingan(path, snapshot(step), training_state=state | {"discriminators": critics.state_dict()})

    def draw(path: Path, step: int) -> None:
        save_sample_rows(path, sample_rows(snapshot(step), grid_x), title=f"step {step}")

    def forward_side(x: torch.Tensor, j: int) -> dict[str, torch.Tensor]:
        z = encoders.encode(x, j)
        images = decoder(z)
        transformed, mask = images[1 - j], images[2]
        if not use_mask:
            mask = torch.ones_like(mask)
        return {"x": x, "rec": images[j], "trans": transformed, "mask": mask,
                "comp": compose(x, transformed, mask)}

    def train_step() -> dict[str, torch.Tensor]:
        batches = [pool[torch.randint(0, len(pool), (config.batch_size,), generator=rng)] for pool in pools]
        out_j = [forward_side(batches[j], j) for j in (0, 1)]

        # Discriminators: hinge loss on real S_j against the fakes.
        loss_d = torch.zeros(())
        for j in (0, 1):
            real = critics(batches[j], j)
            fake = critics(torch.cat([f.detach() for f in _fakes_for(out_j, j, config.no_reconstruction, use_mask)]), j)
            loss_d = loss_d + F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # Encoders and decoder: Eq. 6 against the discriminators just updated.
        gan = sum(-critics(torch.cat(_fakes_for(out_j, j, config.no_reconstruction, use_mask)), j).mean() for j in (0, 1))
        terms = {"gan": gan, "classifier": torch.zeros(()), "reconstruction": torch.zeros(()),
                 "consistency": torch.zeros(()), "count": torch.zeros(()), "smoothness": torch.zeros(()),
                 "entropy": torch.zeros(())}
        flips, areas = [], []
        for j in (0, 1):
            o = out_j[j]
            d = decision_logit(frozen, o["comp"])
            terms["classifier"] = terms["classifier"] + F.binary_cross_entropy_with_logits(d, torch.full_like(d, 1 - j))
            terms["reconstruction"] = terms["reconstruction"] + ((o["rec"] - o["x"]) ** 2).flatten(1).mean(1).mean()
            if use_mask:
                for name, value in prior_terms(o["x"], o["trans"], o["mask"], config.kappa).items():
                    terms[name] = terms[name] + value
            flips.append(((d > 0).long() == 1 - j).float().mean())
            areas.append(o["mask"].mean())
        weights = {"gan": config.lambda_gan, "classifier": config.lambda_cls,
                   "reconstruction": 0.0 if config.no_reconstruction else config.lambda_rec,
                   "consistency": config.lambda_const, "count": config.lambda_count,
                   "smoothness": config.lambda_smooth, "entropy": config.lambda_entropy}
        loss_g = sum(weights[name] * value for name, value in terms.items())
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        return {"discriminator": loss_d, **terms, "flip_rate": sum(flips) / 2, "mask_area": sum(areas) / 2}

    loop.run(train_step, modules=(encoders, decoder, critics), draw=draw, save=save,
             postfix={"cls": ("classifier", ".3f"), "rec": ("reconstruction", ".4f"), "flip": ("flip_rate", ".2f"),
                      "area": ("mask_area", ".3f")})
    return snapshot(loop.steps_done), loop.result()


def train_binary_digits_classifier(first: int = 3, second: int = 8, *, seed: int = 0, epochs: int = 30,
                                   hidden: int = 128, progress: bool = False) -> Classifier:
    """The shipped recipe's binary classifier: ``train_classifier`` (mnist_cnn with a ``hidden``-unit dense
    layer, otherwise the defaults) on :func:`binary_digits_split`, ``seed``; about 10 s on one core.

    ``hidden = 128`` instead of mnist_cnn's 256 halves the classifier (0.48M weights) so that the
    shipped ExplainGAN file, which carries it, stays under 3 MB; two digits need no more.

    >>> clf = train_binary_digits_classifier(epochs=1)
    >>> clf.class_names, clf.num_classes
    (('3', '8'), 2)
    """
    from xaisdk.train.classifier import ClassifierTrainingConfig, train_classifier

    split = binary_digits_split(first, second, seed=seed)
    config = ClassifierTrainingConfig(epochs=epochs, seed=seed, arch_config={"hidden": hidden})
    classifier, _ = train_classifier(split, config, progress=progress)
    return classifier
