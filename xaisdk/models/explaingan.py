"""ExplainGAN networks (Samangouei et al. 2018), scaled to small single-image inputs such as 28x28 digits.

The explained classifier must be **binary**: two logits, or one logit read as ``sigmoid = P(class 1)``.
Either way it is reduced to one decision logit ``d(x)`` (``l_1 - l_0`` for two logits); the source side
of an image is ``j = [d(x) > 0]``. A classifier with any other number of outputs is refused with an
:class:`~xaisdk.errors.InputError` naming the count.

Networks (DCGAN-like, as the paper's §5.2, at a quarter of DCGAN's width so that they train on a CPU):

* two class encoders ``E_0``, ``E_1``: each its own two stride-2 convolutions (H -> H/4), then shared
  last layers giving a spatial code ``z`` (``code_channels`` x H/4 x W/4). A spatial code keeps the
  stroke positions, so reconstructions are recognisable after a few hundred steps;
* one decoder: a shared trunk (two stride-2 transposed convolutions back to H x W) and three heads:
  ``G_0(z)`` and ``G_1(z)`` (images of class 0 / 1, sigmoid scaled to the value range) and the mask
  ``G_m(z)`` in [0, 1] (sigmoid). For ``x`` of side ``j``, ``G_j`` is the reconstruction and
  ``G_{1-j}`` the transformed image;
* composite ``C_{1-j}(x) = x * (1 - m) + G_{1-j}(z) * m`` (Eq. 5): exactly ``x`` where ``m = 0``;
* two realism discriminators ``D_0``, ``D_1``: each its own first convolution, shared last layers,
  spectral norm everywhere (hinge loss needs no gradient penalty; see :mod:`xaisdk.train.explaingan`).

:class:`ExplainGANModel` bundles the classifier (it travels inside the checkpoint, like GANMEX's) with
the encoders and decoder; the discriminators live only in the training state. A one-logit classifier
works in memory (training and torch inference, tested), but the classifier checkpoint format ties the
number of outputs to the number of class names, so such an ExplainGAN cannot be saved and loaded back;
save two-logit classifiers.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import spectral_norm

from xaisdk.errors import InputError
from xaisdk.models.checkpoint import (
    Classifier,
    atomic_torch_save,
    classifier_from_payload,
    classifier_payload,
    read_torch_file,
)
from xaisdk.models.config_checks import (
    build_with_weights,
    in_file,
    require_bool,
    require_dict,
    require_input_shape,
    require_value_range,
    require_width,
)

EXPLAINGAN_KIND = "xaisdk.explaingan"
EXPLAINGAN_FORMAT_VERSION = 1
SHIPPED_EXPLAINGAN = {"digits_3v8": "digits_explaingan_3v8.pt"}


@dataclass
class ExplainGANConfig:
    """Shapes and widths of the ExplainGAN networks.

    ``base_channels`` (16) and ``code_channels`` (64) were enough on 28x28 digits: the shipped model
    has 0.12M encoder + decoder weights and trains in about 4 minutes on one core. ``value_range`` is the classifier's
    input range; generated images are ``lo + (hi - lo) * sigmoid(.)``.

    >>> ExplainGANConfig((1, 28, 28)).code_shape
    (64, 7, 7)
    """

    input_shape: tuple[int, int, int]
    base_channels: int = 16
    code_channels: int = 64
    critic_channels: int = 16
    value_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        """Check every field's type and bounds (:mod:`xaisdk.models.config_checks`) before any network is built."""
        where = "ExplainGAN config"
        self.input_shape = require_input_shape(where, self.input_shape)
        self.value_range = require_value_range(where, self.value_range)
        _, h, w = self.input_shape
        if h % 4 or w % 4 or h < 8 or w < 8:
            raise InputError(f"input_shape: ExplainGAN needs H and W divisible by 4 and >= 8, got {h}x{w}")
        require_width(where, "base_channels", self.base_channels, 1)  # the encoders' second layer has 2x
        require_width(where, "code_channels", self.code_channels)
        require_width(where, "critic_channels", self.critic_channels, 2)  # the critics' last layers have 4x

    @property
    def code_shape(self) -> tuple[int, int, int]:
        _, h, w = self.input_shape
        return self.code_channels, h // 4, w // 4

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplainGANConfig:
        """The config :meth:`to_dict` wrote (unknown keys ignored), validated.

        >>> ExplainGANConfig.from_dict({"input_shape": [1, 28, 28], "value_range": [0, 1]}).value_range
        (0.0, 1.0)
        """
        if not isinstance(data, dict):
            raise InputError(f"ExplainGAN config: expected a dict, got {type(data).__name__}")
        if "input_shape" not in data:
            raise InputError("ExplainGAN config: missing 'input_shape'")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class ExplainGANEncoders(nn.Module):
    """``E_0`` and ``E_1``: class-specific opening layers, shared last layers -> code ``z``."""

    def __init__(self, config: ExplainGANConfig) -> None:
        super().__init__()
        c, b = config.input_shape[0], config.base_channels

        def opening() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c, b, 4, 2, 1), _act(), nn.Conv2d(b, 2 * b, 4, 2, 1), _act())

        self.own = nn.ModuleList([opening(), opening()])
        self.shared = nn.Sequential(nn.Conv2d(2 * b, config.code_channels, 3, 1, 1), _act(),
                                    nn.Conv2d(config.code_channels, config.code_channels, 3, 1, 1))

    def forward(self, x: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """``z = E_side(x)`` per sample; ``side`` is a 0/1 tensor (N,). Both openings run on the whole
        batch and are selected with ``where`` so that the same code exports to one ONNX graph."""
        pick = side.reshape(-1, 1, 1, 1).bool()
        return self.shared(torch.where(pick, self.own[1](x), self.own[0](x)))

    def encode(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """``E_side(x)`` for a batch all of one side (training: no wasted opening)."""
        return self.shared(self.own[side](x))


class ExplainGANDecoder(nn.Module):
    """The decoder ``G``: shared trunk, heads ``G_0``, ``G_1`` (images) and ``G_m`` (mask)."""

    def __init__(self, config: ExplainGANConfig) -> None:
        super().__init__()
        c, b = config.input_shape[0], config.base_channels
        self.lo, self.hi = config.value_range
        self.trunk = nn.Sequential(nn.ConvTranspose2d(config.code_channels, 2 * b, 4, 2, 1), nn.ReLU(),
                                   nn.ConvTranspose2d(2 * b, b, 4, 2, 1), nn.ReLU())

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(b, b, 3, 1, 1), nn.ReLU(), nn.Conv2d(b, out, 3, 1, 1))

        self.images = nn.ModuleList([head(c), head(c)])
        self.mask = head(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(G_0(z), G_1(z), G_m(z))``."""
        h = self.trunk(z)
        g0, g1 = (self.lo + (self.hi - self.lo) * torch.sigmoid(head(h)) for head in self.images)
        return g0, g1, torch.sigmoid(self.mask(h))


class ExplainGANDiscriminators(nn.Module):
    """``D_0`` and ``D_1``: class-specific first convolution, shared last layers, spectral norm; one
    realism logit per image."""

    def __init__(self, config: ExplainGANConfig) -> None:
        super().__init__()
        c, b = config.input_shape[0], config.critic_channels
        _, h, w = config.input_shape
        self.own = nn.ModuleList([nn.Sequential(spectral_norm(nn.Conv2d(c, b, 4, 2, 1)), _act()) for _ in range(2)])
        self.shared = nn.Sequential(spectral_norm(nn.Conv2d(b, 2 * b, 4, 2, 1)), _act(),
                                    spectral_norm(nn.Conv2d(2 * b, 4 * b, 3, 1, 1)), _act(), nn.Flatten(),
                                    spectral_norm(nn.Linear(4 * b * (h // 4) * (w // 4), 1)))

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        return self.shared(self.own[side](x)).squeeze(1)


def decision_logit(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The binary classifier's logit for class 1: ``l_1 - l_0`` (two logits) or the single logit.

    >>> net = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad(): _ = net.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    >>> decision_logit(net, torch.tensor([[1.0, 1.0]])).tolist()
    [2.0]
    """
    logits = module(x)
    if logits.ndim != 2 or logits.shape[1] not in (1, 2):
        raise InputError(f"ExplainGAN needs a binary classifier (2 logits, or 1 sigmoid logit); this one has "
                         f"{logits.shape[1] if logits.ndim == 2 else tuple(logits.shape)} outputs")
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


def check_binary(classifier: Classifier) -> int:
    """Number of logits (1 or 2) of ``classifier``; :class:`InputError` naming the class count otherwise.

    >>> from xaisdk.models import load_shipped_classifier
    >>> try:
    ...     check_binary(load_shipped_classifier())
    ... except InputError as err:
    ...     print(str(err)[:60])
    ExplainGAN needs a binary classifier (2 classes); this one h
    """
    if len(classifier.class_names) != 2:
        raise InputError(f"ExplainGAN needs a binary classifier (2 classes); this one has "
                         f"{len(classifier.class_names)} classes ({', '.join(classifier.class_names[:12])})")
    with torch.no_grad():
        outputs = classifier.model.eval()(torch.zeros(1, *classifier.input_shape))
    if outputs.ndim != 2 or outputs.shape[1] not in (1, 2):
        raise InputError(f"ExplainGAN needs a binary classifier (2 logits, or 1 sigmoid logit); this one has "
                         f"{outputs.shape[-1]} outputs")
    return int(outputs.shape[1])


class ExplainGANInference(nn.Module):
    """The inference graph: ``x -> (transformed, mask, composite, reconstruction, source, flipped_prob)``.

    ``source`` (int64) is the classifier's side ``j = [d(x) > 0]``; ``transformed = G_{1-j}(z)``,
    ``composite = x (1 - m) + transformed m`` and ``flipped_prob`` = the classifier's probability of
    the other class ``1 - j`` on the composite. With ``use_mask=False`` (the ``no_mask`` ablation) the
    mask is all ones and the composite is the transformed image. The same module serves torch
    inference and the ONNX export, so both compute the same thing.
    """

    def __init__(self, classifier: nn.Module, encoders: ExplainGANEncoders, decoder: ExplainGANDecoder,
                 use_mask: bool = True) -> None:
        super().__init__()
        self.classifier, self.encoders, self.decoder, self.use_mask = classifier, encoders, decoder, use_mask

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        side = decision_logit(self.classifier, x) > 0
        z = self.encoders(x, side)
        g0, g1, mask = self.decoder(z)
        pick = side.reshape(-1, 1, 1, 1)
        transformed = torch.where(pick, g0, g1)
        reconstruction = torch.where(pick, g1, g0)
        if not self.use_mask:
            mask = torch.ones_like(mask)
        composite = compose(x, transformed, mask)
        d = decision_logit(self.classifier, composite)
        flipped_prob = torch.sigmoid(torch.where(side, -d, d))
        return transformed, mask, composite, reconstruction, side.to(torch.int64), flipped_prob


def compose(x: torch.Tensor, transformed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The composite of Eq. 5, ``x * (1 - m) + t * m`` (the mask broadcast over channels).

    >>> compose(torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.0, 0.25]]]])).tolist()
    [[[[1.0, 0.75]]]]
    """
    return x * (1 - mask) + transformed * mask


@dataclass
class ExplainGANModel:
    """A binary classifier and the ExplainGAN encoders and decoder trained to explain it.

    ``use_mask`` is False for a model trained with the ``no_mask`` ablation. ``data`` is the data spec
    and ``training`` the hyper-parameters and final statistics.
    """

    classifier: Classifier
    config: ExplainGANConfig
    encoders: ExplainGANEncoders
    decoder: ExplainGANDecoder
    use_mask: bool = True
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_binary(self.classifier)
        if tuple(self.config.input_shape) != tuple(self.classifier.input_shape):
            raise InputError(f"ExplainGAN networks make {self.config.input_shape} images but the classifier takes "
                             f"{tuple(self.classifier.input_shape)}")
        self.encoders.eval()
        self.decoder.eval()

    def inference_module(self) -> ExplainGANInference:
        """The :class:`ExplainGANInference` graph over this model's networks (eval mode)."""
        return ExplainGANInference(self.classifier.model, self.encoders, self.decoder, self.use_mask).eval()


def explaingan_payload(model: ExplainGANModel, training_state: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = {
        "kind": EXPLAINGAN_KIND,
        "format_version": EXPLAINGAN_FORMAT_VERSION,
        "classifier": classifier_payload(model.classifier),
        "config": model.config.to_dict(),
        "use_mask": bool(model.use_mask),
        "encoders": {k: v.detach().cpu() for k, v in model.encoders.state_dict().items()},
        "decoder": {k: v.detach().cpu() for k, v in model.decoder.state_dict().items()},
        "data": dict(model.data),
        "training": dict(model.training),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    return payload


def save_explaingan(path: str | os.PathLike, model: ExplainGANModel,
                    training_state: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and, for resuming, ``training_state``) to ``path`` atomically.

    >>> import os, tempfile
    >>> m = load_shipped_explaingan()
    >>> out = save_explaingan(os.path.join(tempfile.mkdtemp(), "eg.pt"), m)
    >>> load_explaingan(out).classifier.class_names
    ('3', '8')
    """
    return atomic_torch_save(explaingan_payload(model, training_state), path)


def read_explaingan_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload of an ExplainGAN checkpoint, format-checked (used when resuming)."""
    payload = read_torch_file(path, EXPLAINGAN_KIND, "ExplainGAN")
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise InputError(f"{path}: ExplainGAN checkpoint without a format version")
    if version > EXPLAINGAN_FORMAT_VERSION:
        raise InputError(f"{path}: ExplainGAN format {version} is newer than this xaisdk reads "
                         f"({EXPLAINGAN_FORMAT_VERSION})")
    for key in ("classifier", "config", "encoders", "decoder"):
        if not isinstance(payload.get(key), dict):
            raise InputError(f"{path}: ExplainGAN checkpoint is missing its {key}")
    return payload


def explaingan_from_payload(payload: dict[str, Any], path: str | os.PathLike) -> ExplainGANModel:
    """Rebuild an :class:`ExplainGANModel` from :func:`explaingan_payload`'s dict; ``path`` names it in errors.

    The classifier and the config are checked before any network is built, and the encoder and decoder
    weights before they are loaded (:mod:`xaisdk.models.config_checks`).
    """
    classifier = classifier_from_payload(payload["classifier"], path)
    where = "ExplainGAN checkpoint"
    with in_file(path):
        config = ExplainGANConfig.from_dict(payload["config"])
        use_mask = require_bool(where, "use_mask", payload.get("use_mask", True))
        data = require_dict(where, "data", payload.get("data", {}))
        training = require_dict(where, "training", payload.get("training", {}))
        encoders = build_with_weights(lambda: ExplainGANEncoders(config), payload["encoders"], "ExplainGAN encoder")
        decoder = build_with_weights(lambda: ExplainGANDecoder(config), payload["decoder"], "ExplainGAN decoder")
    return ExplainGANModel(classifier, config, encoders, decoder, use_mask, data, training)


def load_explaingan(path: str | os.PathLike) -> ExplainGANModel:
    """Load an ExplainGAN checkpoint (CPU, eval mode); other files raise :class:`InputError`.

    >>> load_explaingan(shipped_explaingan_path()).config.input_shape
    (1, 28, 28)
    """
    return explaingan_from_payload(read_explaingan_file(path), path)


def shipped_explaingan_path(name: str = "digits_3v8") -> Path:
    """Path of an ExplainGAN checkpoint shipped inside the package (``"digits_3v8"``).

    >>> shipped_explaingan_path().name
    'digits_explaingan_3v8.pt'
    """
    if name not in SHIPPED_EXPLAINGAN:
        raise InputError(f"no shipped ExplainGAN model {name!r}; shipped: {', '.join(sorted(SHIPPED_EXPLAINGAN))}")
    return Path(str(resources.files("xaisdk") / "weights" / SHIPPED_EXPLAINGAN[name]))


def load_shipped_explaingan(name: str = "digits_3v8") -> ExplainGANModel:
    """The shipped ExplainGAN: a digits 3-vs-8 classifier (classes ("3", "8")) and its explainer.

    >>> load_shipped_explaingan().classifier.class_names
    ('3', '8')
    """
    return load_explaingan(shipped_explaingan_path(name))
