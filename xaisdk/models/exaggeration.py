"""Progressive Exaggeration (Singla et al., ICLR 2020): networks and checkpoints.

The explainer of a frozen classifier f is ``I_f(x, delta) = G(E(x), c_f(x, delta))``: an encoder E, and a
generator G conditioned on the bin index ``c_f(x, delta)`` of the desired output ``f(x) + delta``, with
[0, 1] cut into ``n_bins`` equal bins. Multi-class classifiers are explained one class against the rest:
``f(x) = softmax(logits(x))[target_class]``.

* :class:`Encoder`: a stem convolution and residual down-sampling blocks (plain batch norm).
* :class:`CondGenerator`: residual up-sampling blocks whose batch norms are *conditional* on the bin
  (:class:`ConditionalBatchNorm2d`: gamma and beta are looked up from the one-hot condition). Unlike the
  authors' code, the normalisation uses running statistics in eval mode (it is a plain
  ``BatchNorm2d(affine=False)`` underneath), so one image's explanation does not depend on the rest of its batch.
* :class:`OrdinalProjectionDiscriminator`: spectral-norm residual blocks give a feature ``phi(x)``; the output
  is ``psi(phi(x)) + r(c | x)`` with the ordinal term of the paper's Eq. 4 (Frank & Hall),
  ``r(c = k | x) = sum_{i < k} v_i^T phi(x)``; every ``v_i`` is its own parameter (the authors' code shared one).

Checkpoints (``kind = "xaisdk.exaggeration"``) carry the encoder + generator, their config, the target
class, the number of bins and the classifier: the full classifier payload, or (for the shipped digits
classifier, to keep the shipped file small) a reference ``{"shipped": "digits", "hash": ...}`` checked on load.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from xaisdk.errors import InputError
from xaisdk.input_files import MAX_BLOCKS
from xaisdk.models.checkpoint import (
    Classifier,
    atomic_torch_save,
    classifier_from_payload,
    classifier_payload,
    load_shipped_classifier,
    read_torch_file,
    weights_hash,
)
from xaisdk.models.config_checks import (
    build_with_weights,
    config_from_dict,
    in_file,
    require_dict,
    require_image_shape,
    require_int,
    require_value_range,
    require_width,
)

EXAGGERATION_KIND = "xaisdk.exaggeration"
EXAGGERATION_FORMAT_VERSION = 1
SHIPPED_EXAGGERATION = {"digits": "digits_exaggeration_8.pt"}
# Output bins of the explainer: the paper uses 10; each bin is an embedding row and a critic projection.
MAX_BINS = 1000


@dataclass(frozen=True)
class ExaggerationConfig:
    """Shape and width of the explainer networks.

    ``n_down`` stride-2 stages (2 for 28x28: 28 -> 14 -> 7) take ``base_channels`` to
    ``base_channels * 2**n_down`` channels in the encoder; the generator mirrors them.

    >>> ExaggerationConfig.for_input((1, 28, 28), n_bins=10).n_down
    2
    """

    in_channels: int
    height: int
    width: int
    n_bins: int = 10
    base_channels: int = 8
    n_down: int = 2
    disc_channels: int = 16
    value_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def for_input(cls, input_shape: tuple[int, int, int], **overrides: Any) -> ExaggerationConfig:
        """A config sized for images of ``input_shape`` (C, H, W).

        >>> ExaggerationConfig.for_input((3, 8, 8)).n_down
        1
        """
        channels, height, width = (int(v) for v in input_shape)
        n_down = 0
        while n_down < 2 and min(height, width) // 2 ** (n_down + 1) >= 3:
            n_down += 1
        data = {"in_channels": channels, "height": height, "width": width, "n_down": n_down} | overrides
        return cls.from_dict(data)

    def validate(self) -> None:
        """Check every field's type and bounds (:mod:`xaisdk.models.config_checks`); runs before any network is built.

        >>> ExaggerationConfig(1, 28, 28, base_channels=10**5).validate()
        Traceback (most recent call last):
        ...
        xaisdk.errors.InputError: exaggeration config: base_channels: expected an integer <= 8192, got 100000
        """
        where = "exaggeration config"
        require_image_shape(where, self.in_channels, self.height, self.width)
        require_int(where, "n_bins", self.n_bins, 2, MAX_BINS)
        n_down = require_int(where, "n_down", self.n_down, 0, MAX_BLOCKS)
        require_width(where, "base_channels", self.base_channels, n_down)
        require_width(where, "disc_channels", self.disc_channels, max(n_down - 1, 0))
        if min(self.height, self.width) // 2**n_down < 1:
            raise InputError(f"{where}: {n_down} down-sampling stages do not fit {self.height}x{self.width} images")
        require_value_range(where, self.value_range)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["value_range"] = list(self.value_range)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExaggerationConfig:
        """The config :meth:`to_dict` wrote, validated (value_range back to a tuple of floats).

        >>> ExaggerationConfig.from_dict({"in_channels": 1, "height": 8, "width": 8, "n_down": 1}).value_range
        (0.0, 1.0)
        """
        return config_from_dict(cls, data, "exaggeration config")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.height, self.width)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm without its own affine, then ``gamma(c) * x_hat + beta(c)`` with gamma, beta read from
    the one-hot (or soft) condition ``c`` of shape (N, n_bins).

    Eval mode normalises with the running statistics (as every ``BatchNorm2d`` does).

    >>> bn = ConditionalBatchNorm2d(4, 3).eval()
    >>> bn(torch.zeros(2, 4, 5, 5), F.one_hot(torch.tensor([0, 2]), 3).float()).shape
    torch.Size([2, 4, 5, 5])
    """

    def __init__(self, channels: int, n_bins: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Linear(n_bins, channels, bias=False)
        self.beta = nn.Linear(n_bins, channels, bias=False)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma(condition)[:, :, None, None]
        beta = self.beta(condition)[:, :, None, None]
        return gamma * self.norm(x) + beta


class _EncoderBlock(nn.Module):
    """BN-ReLU-Conv3-BN-ReLU-Conv3 with a 2x2 average-pool down-sampling, plus a 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
                                  nn.AvgPool2d(2))
        self.skip = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class Encoder(nn.Module):
    """``E(x)``: a (N, base * 2**n_down, H / 2**n_down, W / 2**n_down) code (sizes floor-divided).

    >>> e = Encoder(ExaggerationConfig.for_input((1, 28, 28), base_channels=4))
    >>> tuple(e(torch.rand(2, 1, 28, 28)).shape)
    (2, 16, 7, 7)
    """

    def __init__(self, config: ExaggerationConfig) -> None:
        super().__init__()
        width = config.base_channels
        self.stem = nn.Conv2d(config.in_channels, width, 3, padding=1)
        blocks = []
        for i in range(config.n_down):
            blocks.append(_EncoderBlock(width * 2**i, width * 2 ** (i + 1)))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class _GeneratorBlock(nn.Module):
    """CBN-ReLU-Up-Conv3-CBN-ReLU-Conv3 with a nearest-neighbour resize to ``size``, plus a 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, n_bins: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.bn1 = ConditionalBatchNorm2d(c_in, n_bins)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn2 = ConditionalBatchNorm2d(c_out, n_bins)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, condition)), size=self.size, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), condition)))
        return h + self.skip(F.interpolate(x, size=self.size, mode="nearest"))


class CondGenerator(nn.Module):
    """``G(z, c)``: an image in the config's value range from the code ``z`` and the one-hot bin ``c``.

    >>> cfg = ExaggerationConfig.for_input((1, 28, 28), base_channels=4)
    >>> g = CondGenerator(cfg).eval()
    >>> z = Encoder(cfg)(torch.rand(2, 1, 28, 28))
    >>> tuple(g(z, F.one_hot(torch.tensor([0, 9]), 10).float()).shape)
    (2, 1, 28, 28)
    """

    def __init__(self, config: ExaggerationConfig) -> None:
        super().__init__()
        self.config = config
        sizes = [(config.height // 2**i, config.width // 2**i) for i in range(config.n_down)]
        width = config.base_channels
        self.blocks = nn.ModuleList(
            _GeneratorBlock(width * 2 ** (i + 1), width * 2**i, config.n_bins, sizes[i])
            for i in reversed(range(config.n_down)))
        if config.n_down == 0:
            self.blocks = nn.ModuleList([_GeneratorBlock(width, width, config.n_bins, (config.height, config.width))])
        self.out_bn = ConditionalBatchNorm2d(width, config.n_bins)
        self.out_conv = nn.Conv2d(width, config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = z
        for block in self.blocks:
            h = block(h, condition)
        low, high = self.config.value_range
        return low + (high - low) * torch.sigmoid(self.out_conv(F.relu(self.out_bn(h, condition))))


class ExaggerationNet(nn.Module):
    """Encoder and generator together: ``forward(x, condition_onehot) = G(E(x), c)`` (the exported graph).

    >>> net = ExaggerationNet(ExaggerationConfig.for_input((1, 28, 28), base_channels=4)).eval()
    >>> tuple(net(torch.rand(3, 1, 28, 28), F.one_hot(torch.tensor([1, 2, 3]), 10).float()).shape)
    (3, 1, 28, 28)
    """

    def __init__(self, config: ExaggerationConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.generator = CondGenerator(config)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(x), condition)


class _DiscBlock(nn.Module):
    """ReLU-Conv3-ReLU-Conv3 (spectral norm) with optional 2x2 average-pool down-sampling, plus a shortcut."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool) -> None:
        super().__init__()
        self.first, self.down = first, down
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        s = self.skip(x)
        if self.down:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return h + s


class OrdinalProjectionDiscriminator(nn.Module):
    """``D(x, c) = psi(phi(x)) + r(c | x)`` with ``r(c = k | x) = sum_{i < k} v_i^T phi(x)`` (Eq. 4).

    ``phi`` is spectral-norm residual blocks, ReLU and a global sum over positions; ``v_0 .. v_{n_bins-2}``
    are separate parameters (``self.v[i]``). The condition is the bin index, (N,) int64.

    >>> d = OrdinalProjectionDiscriminator(ExaggerationConfig.for_input((1, 28, 28), disc_channels=4))
    >>> tuple(d(torch.rand(2, 1, 28, 28), torch.tensor([0, 9])).shape)
    (2,)
    """

    def __init__(self, config: ExaggerationConfig) -> None:
        super().__init__()
        width = config.disc_channels
        blocks: list[nn.Module] = [_DiscBlock(config.in_channels, width, down=config.n_down > 0, first=True)]
        channels = width
        for _ in range(1, config.n_down):
            blocks.append(_DiscBlock(channels, channels * 2, down=True, first=False))
            channels *= 2
        blocks.append(_DiscBlock(channels, channels, down=False, first=False))
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = channels
        self.psi = spectral_norm(nn.Linear(channels, 1))
        self.v = nn.ParameterList(nn.Parameter(torch.randn(channels) * 0.02) for _ in range(config.n_bins - 1))

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.blocks(x)).sum(dim=(2, 3))

    def ordinal(self, features: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """``r(c = k | x)`` for each row: the sum of ``v_i^T phi`` over ``i < k``."""
        projections = torch.stack([features @ v for v in self.v], dim=1)  # (N, n_bins - 1)
        below = torch.arange(len(self.v), device=bins.device)[None, :] < bins[:, None]
        return (projections * below).sum(1)

    def forward(self, x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        features = self.phi(x)
        return self.psi(features).squeeze(1) + self.ordinal(features, bins)


# ----------------------------------------------------------------------------------------------- model + files


def bin_index(p: torch.Tensor, n_bins: int) -> torch.Tensor:
    """``c``: the bin of each probability in [0, 1] cut into ``n_bins`` equal bins (1.0 goes to the last).

    >>> bin_index(torch.tensor([0.0, 0.05, 0.1, 0.99, 1.0]), 10).tolist()
    [0, 0, 1, 9, 9]
    """
    return (p.clamp(0, 1) * n_bins).floor().long().clamp(0, n_bins - 1)


def bin_centers(n_bins: int) -> torch.Tensor:
    """The centre of each bin: ``(k + 0.5) / n_bins``.

    >>> bin_centers(4).tolist()
    [0.125, 0.375, 0.625, 0.875]
    """
    return (torch.arange(n_bins, dtype=torch.float32) + 0.5) / n_bins


def target_probability(classifier_module: nn.Module, x: torch.Tensor, target_class: int) -> torch.Tensor:
    """``f(x)``: the softmax probability of ``target_class`` (one class against the rest), differentiable in x.

    >>> clf = load_shipped_classifier("digits")
    >>> float(target_probability(clf.model, torch.zeros(1, 1, 28, 28), 8).detach()[0]) <= 1.0
    True
    """
    return torch.softmax(classifier_module(x), dim=1)[:, target_class]


@dataclass
class ExaggerationModel:
    """A classifier, the explained class and the trained explainer network (eval mode).

    ``data`` is the training data spec and ``training`` the hyper-parameters and final statistics.
    """

    classifier: Classifier
    net: ExaggerationNet
    target_class: int
    data: dict[str, Any]
    training: dict[str, Any]

    def __post_init__(self) -> None:
        cfg = self.net.config
        if tuple(cfg.input_shape) != tuple(self.classifier.input_shape):
            raise InputError(f"exaggeration model: the explainer makes {cfg.input_shape} images but the classifier "
                             f"takes {tuple(self.classifier.input_shape)}")
        if not 0 <= int(self.target_class) < self.classifier.num_classes:
            raise InputError(f"target_class {self.target_class} is not a class of the classifier "
                             f"(0..{self.classifier.num_classes - 1})")
        self.net.eval()

    @property
    def n_bins(self) -> int:
        return self.net.config.n_bins


def _classifier_entry(classifier: Classifier) -> dict[str, Any]:
    shipped = load_shipped_classifier("digits")
    h = weights_hash(classifier)
    if classifier.arch == shipped.arch and abs(h - weights_hash(shipped)) <= 1e-9 * max(1.0, abs(h)):
        return {"shipped": "digits", "hash": h}
    return {"payload": classifier_payload(classifier), "hash": h}


def exaggeration_payload(model: ExaggerationModel, training_state: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = {
        "kind": EXAGGERATION_KIND,
        "format_version": EXAGGERATION_FORMAT_VERSION,
        "classifier": _classifier_entry(model.classifier),
        "target_class": int(model.target_class),
        "n_bins": int(model.n_bins),
        "net": {"config": model.net.config.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()}},
        "data": dict(model.data),
        "training": dict(model.training),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    return payload


def save_exaggeration(path: str | os.PathLike, model: ExaggerationModel,
                      training_state: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and, for resuming, ``training_state``) to ``path`` atomically.

    >>> import tempfile
    >>> m = load_shipped_exaggeration()
    >>> out = save_exaggeration(Path(tempfile.mkdtemp()) / "e.pt", m)
    >>> load_exaggeration(out).target_class == m.target_class
    True
    """
    return atomic_torch_save(exaggeration_payload(model, training_state), path)


def read_exaggeration_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload of an exaggeration checkpoint, format-checked (used by resume)."""
    payload = read_torch_file(path, EXAGGERATION_KIND, "exaggeration")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > EXAGGERATION_FORMAT_VERSION:
        raise InputError(f"{path}: unsupported exaggeration format version {version!r}")
    for key in ("classifier", "net"):
        if not isinstance(payload.get(key), dict):
            raise InputError(f"{path}: exaggeration checkpoint is missing its {key}")
    return payload


def exaggeration_from_payload(payload: dict[str, Any], path: str | os.PathLike) -> ExaggerationModel:
    """Rebuild an :class:`ExaggerationModel` from :func:`exaggeration_payload`'s dict; ``path`` names it in errors.

    The classifier entry, the explainer config and the scalar fields are checked before the explainer is
    built, and its weights before they are loaded (:mod:`xaisdk.models.config_checks`).
    """
    classifier = _classifier_from_entry(payload["classifier"], path)
    net_entry = payload["net"]
    if not isinstance(net_entry.get("config"), dict) or not isinstance(net_entry.get("state_dict"), dict):
        raise InputError(f"{path}: explainer entry needs 'config' and 'state_dict'")
    where = "exaggeration checkpoint"
    with in_file(path):
        config = ExaggerationConfig.from_dict(net_entry["config"])
        n_bins = require_int(where, "n_bins", payload.get("n_bins", config.n_bins), 2, MAX_BINS)
        if n_bins != config.n_bins:
            raise InputError(f"n_bins {n_bins} differs from the network's {config.n_bins}")
        target_class = require_int(where, "target_class", payload.get("target_class"), 0, classifier.num_classes - 1)
        data = require_dict(where, "data", payload.get("data", {}))
        training = require_dict(where, "training", payload.get("training", {}))
        net = build_with_weights(lambda: ExaggerationNet(config), net_entry["state_dict"], "explainer")
    return ExaggerationModel(classifier, net, target_class, data, training)


def _classifier_from_entry(entry: dict[str, Any], path: str | os.PathLike) -> Classifier:
    """The classifier an exaggeration checkpoint names: the shipped one (its weights hash checked) or its payload."""
    if "shipped" in entry:
        if not isinstance(entry["shipped"], str) or not isinstance(entry.get("hash"), float):
            raise InputError(f"{path}: classifier entry: 'shipped' must be a name and 'hash' a float")
        classifier = load_shipped_classifier(entry["shipped"])
        h = weights_hash(classifier)
        if abs(h - entry["hash"]) > 1e-9 * max(1.0, abs(h)):
            raise InputError(f"{path}: was trained for a shipped {entry['shipped']!r} classifier whose weights differ "
                             "from the one installed")
        return classifier
    if isinstance(entry.get("payload"), dict):
        return classifier_from_payload(entry["payload"], path)
    raise InputError(f"{path}: classifier entry needs 'shipped' or 'payload'")


def load_exaggeration(path: str | os.PathLike) -> ExaggerationModel:
    """Load a checkpoint written by :func:`xaisdk.train.exaggeration.train_exaggeration` (CPU, eval mode).

    >>> m = load_exaggeration(shipped_exaggeration_path("digits"))
    >>> m.target_class, m.n_bins
    (8, 10)
    """
    return exaggeration_from_payload(read_exaggeration_file(path), path)


def shipped_exaggeration_path(name: str = "digits") -> Path:
    """Path of a shipped exaggeration checkpoint (``"digits"``: the digits classifier, class 8 vs the rest).

    >>> shipped_exaggeration_path().name
    'digits_exaggeration_8.pt'
    """
    if name not in SHIPPED_EXAGGERATION:
        raise InputError(f"no shipped exaggeration model {name!r}; shipped: {', '.join(sorted(SHIPPED_EXAGGERATION))}")
    return Path(str(resources.files("xaisdk") / "weights" / SHIPPED_EXAGGERATION[name]))


def load_shipped_exaggeration(name: str = "digits") -> ExaggerationModel:
    """The shipped explainer of the shipped digits classifier for class 8 against the rest.

    >>> load_shipped_exaggeration().classifier.arch
    'mnist_cnn'
    """
    return load_exaggeration(shipped_exaggeration_path(name))
