"""``xaisdk export``: a classifier (and its GANMEX generator) as a verified ONNX bundle.

Writes, into one folder:

- ``classifier.onnx`` (x -> logits), exported by torch's TorchScript-based ONNX exporter, which
  names every node after its torch layer and folds eval-mode batch norm into the convolutions;
- ``classifier_grad.onnx`` (x, w -> score, grad) and, when the model's ops allow it,
  ``deeplift_grad.onnx`` (x, baseline, w -> multipliers, score, score_baseline), both built from
  the classifier graph by :mod:`xaisdk.deploy.onnx_grad` with standard ONNX ops only;
- ``generator_ganmex.onnx`` (x, target one-hot -> image) for GANMEX checkpoints;
- ``inpainter.onnx`` (x, mask -> image) when an inpainter checkpoint is given (``--inpainter``); its
  input shape and value range must be the classifier's;
- ``manifest.json`` (see :mod:`xaisdk.runtime.bundle`).

Export verifies itself before anything reaches ``out``: the ONNX checker, the TensorRT op
allow-list, ONNX Runtime against torch on real and random inputs (max relative error
``<= 1e-4`` for logits, gradients, generated and inpainted images; relative to the largest
reference magnitude; inpainted images must also keep every unmasked pixel exactly), DeepLIFT
attributions against a float64 torch reference (within 1e-4 or 4x torch float32's own error, see
``_deeplift_checks``), and central finite differences of a float64 copy of the torch model against
the gradient graph.
The bundle is assembled in a temporary folder and moved into place only when every check passes.

Replacing a bundle (``force=True``) is done by :mod:`xaisdk.deploy.bundle_folder`: the new bundle is
staged and verified next to ``out`` and swapped in so that ``out`` always holds a complete bundle.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from xaisdk.deploy.bundle_folder import (
    ACTIVE_TOKENS,
    carry_user_files,
    install_bundle,
    prepare_out,
    recover_bundle_folder,
    swap_folder,
    target_folder,
)
from xaisdk.deploy.export_errors import VerificationError
from xaisdk.deploy.graph_checks import TOLERANCE, checked_graph, completeness_error, random_class_pairs, relative_error
from xaisdk.deploy.manifest import COMPUTES, bundle_manifest, write_manifest
from xaisdk.deploy.onnx_grad import UnsupportedOpError, deeplift_graph, gradient_graph
from xaisdk.deploy.relu_path_export import add_relu_path, verify_relu_path
from xaisdk.deploy.torch_intake import classifier_from_module, load_torch_classifier
from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel
from xaisdk.models.inpainter import LearnedInpainter, load_inpainter
from xaisdk.models.score import WeightedScore, class_weights
from xaisdk.runtime.atomic_files import (
    atomic_file,
    output_error,
)
from xaisdk.runtime.bundle import MANIFEST, read_bundle, sha256_bytes
from xaisdk.runtime.preprocessing import Preprocessing

__all__ = ["DEFAULT_OPSET", "ExportReport", "VerificationError", "export_bundle", "export_inpainter_onnx",
           "recover_bundle_folder"]

DEFAULT_OPSET = 17
OPSETS = range(13, 21)
FD_STEP = 1e-6  # float64 central differences; small so that few ReLUs change state inside the step
DEEPLIFT_FLOOR_FACTOR = 4.0  # DeepLIFT graph vs float64: at most this times torch float32's own error
GRAD_FLOOR_FACTOR = 4.0  # gradient graph vs float64 where it misses torch float32: at most this times torch's own error
VERIFY_ROWS = 2  # rows per torch autograd call during verification (memory, see _in_rows)
FLOOR_CAP = 1e-3
"""The largest torch float32 error that counts as rounding (the deepest zoo layout, RegNetY, has 6.5e-5 at its
small size). Above it torch float32 and float64 took ReLU / max-pool decisions differently: the comparison
stays at ``TOLERANCE`` rather than grow with it (ResNet-50 at 224 px would otherwise have allowed 19%)."""
@dataclass
class ExportReport:
    """What :func:`export_bundle` wrote and measured."""

    path: Path
    files: dict[str, int]
    seconds: float
    checks: dict[str, float] = field(default_factory=dict)
    deeplift_unavailable: str | None = None
    kept: list[str] = field(default_factory=list)
    """Entries of the replaced folder that were not part of its bundle, carried over (``force=True``)."""
    recovered: list[str] = field(default_factory=list)
    """What was done about an export interrupted earlier (see :func:`recover_bundle_folder`)."""

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


class _GeneratorGraph(nn.Module):
    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.generator(x, target)


class _InpainterGraph(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.network(x, mask)


def _to_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str],
             opset: int, batch: int | None, what: str) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic = None if batch else {name: {0: "N"} for name in inputs + outputs}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            torch.onnx.export(module, args, buffer, input_names=inputs, output_names=outputs, opset_version=opset,
                              dynamo=False, dynamic_axes=dynamic, do_constant_folding=True)
    except Exception as err:  # the exporter raises many types for a layer it cannot translate
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedOpError(f"torch cannot export the {what} to ONNX: {first}") from None
    return onnx.load_from_string(buffer.getvalue())


def _real_inputs(classifier: Classifier, data: dict[str, Any], count: int) -> np.ndarray | None:
    """Up to ``count`` test images of the dataset the model was trained on, if it can be loaded here."""
    from xaisdk.data import load_dataset

    name = data.get("name") or classifier.metadata.get("dataset")
    options = data.get("options", {"seed": classifier.metadata["seed"]} if "seed" in classifier.metadata else {})
    if not isinstance(name, str):
        return None
    try:
        split = load_dataset(name, **options)
    except InputError:
        return None  # e.g. a user's image folder that is not on this machine
    x = np.asarray(split.test.x[:count], np.float32)
    return x if x.shape[1:] == classifier.input_shape else None


def _verification_inputs(classifier: Classifier, data: dict, rng: np.random.Generator, given: np.ndarray | None):
    low, high = classifier.value_range
    random = rng.uniform(low, high, size=(6, *classifier.input_shape)).astype(np.float32)
    real = given if given is not None else _real_inputs(classifier, data, 6)
    parts = [random] if real is None else [np.asarray(real, np.float32), random]
    return np.concatenate(parts), real is not None


def _verify(folder: Path, model: nn.Module, generator: nn.Module | None, x: np.ndarray, seed: int) -> dict[str, float]:
    from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(folder, providers=["CPUExecutionProvider"], warmup=False)
    rng = np.random.default_rng(seed)
    n, k = len(x), backend.num_classes
    source, target = random_class_pairs(rng, n, k)
    weights = class_weights(source, target, k)
    xt = torch.from_numpy(x)
    checks: dict[str, float] = {}
    with torch.no_grad():
        checks["logits_rel_err"] = relative_error(backend.logits(x), model(xt).numpy())
    with torch.no_grad():
        score = WeightedScore(model)(xt, weights)
    want = _in_rows(n, lambda rows: _autograd(model, x[rows], weights[rows]))
    got_score, got = backend.score_gradient(x, weights.numpy())
    checks["score_rel_err"] = relative_error(got_score, score.numpy())
    checks["grad_rel_err"] = relative_error(got, want)
    routed_exact = None
    if checks["grad_rel_err"] > TOLERANCE:
        recheck, routed_exact = _gradient_recheck(folder, model, x, weights, got, want)
        checks.update(recheck)
    checks.update(_finite_difference_checks(model, x, weights, got, want, rng, routed_exact))
    if routed_exact is None and checks["grad_fd_rel_err"] > checks["grad_fd_tolerance"]:
        checks.update(_finite_difference_recheck(folder, model, x, weights, got, want, rng))
    if backend.supports_deeplift:
        base = np.roll(x, 1, axis=0)
        attr = (x - base) * backend.deeplift_multipliers(x, base, weights.numpy())
        try:
            checks.update(_deeplift_checks(model, x, base, weights, attr))
            if checks["deeplift_rel_err"] > checks["deeplift_tolerance"]:
                checks.update(_deeplift_recheck(folder, model, x, base, weights, attr))
        except InputError:  # the torch reference cannot analyse the model (e.g. TorchScript): check completeness
            w = weights.numpy()
            checks["deeplift_completeness_rel_err"] = completeness_error(attr, (backend.logits(x) * w).sum(1),
                                                                         (backend.logits(base) * w).sum(1))
    if generator is not None:
        with torch.no_grad():
            want_img = generator(xt, torch.from_numpy(target)).numpy()
        checks["generator_rel_err"] = relative_error(backend.generate(x, target), want_img)
    return checks


def _in_rows(n: int, compute: Callable[[slice], np.ndarray]) -> np.ndarray:
    """``compute`` over the verification rows in slices of ``VERIFY_ROWS``, concatenated: torch autograd (and
    its float64 copies) holds every activation of every row at once (DenseNet-121 at 224 px ran a 24 GiB
    machine out of memory with 6 rows)."""
    return np.concatenate([compute(slice(i, i + VERIFY_ROWS)) for i in range(0, n, VERIFY_ROWS)])


def _autograd(net: nn.Module, x: np.ndarray, weights: torch.Tensor) -> np.ndarray:
    """d(sum_k weights * logits) / dx by torch autograd, in ``net``'s dtype."""
    dtype = next(net.parameters(), torch.empty(0)).dtype
    xt = torch.from_numpy(x).to(dtype).requires_grad_(True)
    (grad,) = torch.autograd.grad((net(xt) * weights.to(dtype)).sum(), xt)
    return grad.numpy()


def _gradient_recheck(folder: Path, model: nn.Module, x: np.ndarray, weights: torch.Tensor, got: np.ndarray,
                      want: np.ndarray) -> tuple[dict[str, float], np.ndarray | None]:
    """The gradient graph ``got`` re-judged where it missed torch float32 autograd ``want`` by more than ``TOLERANCE``.

    Two things other than a wrong rule part the two (measured on the reference zoo, :mod:`xaisdk.bench.zoo`):

    - a ReLU input or a max-pool window at a near-tie (within ~1e-6 of its tensor's scale) resolved the
      other way by ONNX Runtime: one ReLU unit moved ResNet-50's gradient by 1.4e-2. The reference then
      becomes torch with ONNX Runtime's decisions imposed (:func:`~xaisdk.deploy.near_ties.routed_gradient`),
      accepted only if every differing decision is a near-tie in torch's own values
      (:data:`~xaisdk.deploy.near_ties.NEAR_TIE`); a routing rule that picks a clearly smaller value is not.
    - torch float32's own rounding: on RegNetY-400MF (deep, squeeze-excitation gates) torch float32 is
      6.5e-5 from float64 autograd and the graph 2.6e-5, so the two float32 results differ by 9e-5 to 1.5e-4.
      The graph is then judged against a float64 copy of the model (on the same routes), within
      ``TOLERANCE`` or ``GRAD_FLOOR_FACTOR`` times torch float32's own error, as DeepLIFT is.

    Returns the re-judged ``grad_rel_err`` with what it rests on (``grad_float32_rel_err``: the plain
    float32 comparison; ``grad_near_tie_flips`` / ``grad_near_tie_margin``; ``grad_float32_floor`` and
    ``grad_tolerance``), and the float64 gradient on ONNX Runtime's routes when near-ties were imposed.
    """
    from xaisdk.deploy.near_ties import NEAR_TIE, onnx_decision_inputs, routed_gradient

    result = {"grad_float32_rel_err": relative_error(got, want)}
    decisions = onnx_decision_inputs(onnx.load(str(folder / "classifier.onnx")), x)
    routed = routed_gradient(model, decisions, x, weights)
    model64 = copy.deepcopy(model).double().eval()
    if routed is not None and routed.max_margin <= NEAR_TIE:
        result.update(grad_near_tie_flips=float(routed.flips), grad_near_tie_margin=routed.max_margin)
        want = routed.grad
        routed64 = routed_gradient(model64, decisions, x, weights)
        exact = routed64.grad if routed64 is not None else None
    else:
        exact = None
    if exact is None:  # no routes imposed: plain float64 autograd
        exact = _in_rows(len(x), lambda rows: _autograd(model64, x[rows], weights[rows]))
    floor = relative_error(want, exact)
    result["grad_float32_floor"] = floor
    routed_exact = exact if "grad_near_tie_flips" in result else None
    if relative_error(got, want) <= TOLERANCE:  # the near-ties were all of it
        return {**result, "grad_rel_err": relative_error(got, want), "grad_tolerance": TOLERANCE}, routed_exact
    return ({**result, "grad_rel_err": relative_error(got, exact), "grad_tolerance": _floor_tolerance(floor)},
            routed_exact)


def _deeplift_checks(model: nn.Module, x: np.ndarray, base: np.ndarray, weights: torch.Tensor,
                     got: np.ndarray) -> dict[str, float]:
    """The DeepLIFT graph's attributions ``got`` against a float64 copy of the torch model.

    The rescale ratios ``(f(x) - f(b)) / (x - b)`` are ill-conditioned in float32 where a unit's ``x``
    and ``b`` nearly agree (``0.2 * x`` rounds, so a LeakyReLU(0.2) ratio is not exactly 0.2): torch's
    own float32 DeepLIFT then misses exact arithmetic by more than ``TOLERANCE`` (seen: 3.5e-3 on a
    3-block CNN with LeakyReLU(0.2), 5.5e-3 with tanh). So the graph must be within ``TOLERANCE``, or
    within ``DEEPLIFT_FLOOR_FACTOR`` times torch's own float32 error, of the float64 reference
    (``deeplift_tolerance``); a rule the graph computes differently is off by far more.
    """
    from xaisdk.attribution.deeplift import rescale_multipliers

    model64 = copy.deepcopy(model).double().eval()

    def attributions(net: nn.Module, dtype: torch.dtype, rows: slice) -> np.ndarray:
        xs, bs = torch.from_numpy(x[rows]).to(dtype), torch.from_numpy(base[rows]).to(dtype)
        return ((xs - bs) * rescale_multipliers(net, xs, bs, weights[rows].to(dtype))).numpy()

    exact = _in_rows(len(x), lambda rows: attributions(model64, torch.float64, rows))
    single = _in_rows(len(x), lambda rows: attributions(model, torch.float32, rows))
    floor = relative_error(single, exact)
    return {"deeplift_rel_err": relative_error(got, exact), "deeplift_float32_floor": floor,
            "deeplift_tolerance": _floor_tolerance(floor, DEEPLIFT_FLOOR_FACTOR)}


def _near_tie_images(folder: Path, model: nn.Module, x: np.ndarray, weights: torch.Tensor) -> np.ndarray | None:
    """Per image of ``x``: whether ONNX Runtime takes a ReLU or max-pool decision the other way than the float64
    model, at a near-tie (:data:`~xaisdk.deploy.near_ties.NEAR_TIE`); None when the decisions cannot be matched."""
    from xaisdk.deploy.near_ties import NEAR_TIE, onnx_decision_inputs, routed_gradient

    decisions = onnx_decision_inputs(onnx.load(str(folder / "classifier.onnx")), x)
    model64 = copy.deepcopy(model).double().eval()
    near = np.zeros(len(x), bool)
    for i in range(len(x)):
        one = slice(i, i + 1)
        routed = routed_gradient(model64, [(kind, value[one]) for kind, value in decisions], x[one], weights[one])
        if routed is None:
            return None
        near[i] = routed.flips > 0 and routed.max_margin <= NEAR_TIE
    return near


def _deeplift_recheck(folder: Path, model: nn.Module, x: np.ndarray, base: np.ndarray, weights: torch.Tensor,
                      got: np.ndarray) -> dict[str, float]:
    """The DeepLIFT check again without the pairs whose input or baseline holds a near-tie that ONNX Runtime
    resolves the other way: a max-pool window whose top two values are within rounding routes DeepLIFT's
    multipliers through either cell, and one such window in VGG-11-BN (small size, AVX-512 CPU) moved a pair's
    attributions by 2.9e-2 while every other pair stayed within 1.2e-5. Taken only when at least half the
    pairs remain (``base`` is ``x`` rolled by one, so pair i holds images i and i - 1); otherwise nothing changes."""
    near = _near_tie_images(folder, model, x, weights)
    if near is None or not near.any():
        return {}
    keep = ~(near | np.roll(near, 1))
    if 2 * int(keep.sum()) < len(x):
        return {}
    return {**_deeplift_checks(model, x[keep], base[keep], weights[keep], got[keep]),
            "deeplift_near_tie_pairs_left_out": float((~keep).sum())}


def _floor_tolerance(floor: float, factor: float = GRAD_FLOOR_FACTOR) -> float:
    """``factor`` times torch float32's own error where that error is rounding (at most ``FLOOR_CAP``), else ``TOLERANCE``."""
    return max(TOLERANCE, factor * floor) if floor <= FLOOR_CAP else TOLERANCE


def _failed_checks(checks: dict[str, float]) -> dict[str, float]:
    """The checks beyond their tolerance (``TOLERANCE``; DeepLIFT's own, see :func:`_deeplift_checks`)."""
    limits = {"deeplift_rel_err": checks.get("deeplift_tolerance", TOLERANCE),
              "grad_rel_err": checks.get("grad_tolerance", TOLERANCE),
              "grad_fd_rel_err": checks.get("grad_fd_tolerance", TOLERANCE)}
    about_reference = ("deeplift_float32_floor", "deeplift_tolerance", "grad_float32_rel_err", "grad_near_tie_flips",
                       "grad_near_tie_margin", "grad_float32_floor", "grad_tolerance", "grad_fd_float32_floor",
                       "grad_fd_tolerance", "grad_fd_near_tie_flips", "grad_fd_near_tie_margin",
                       "deeplift_near_tie_pairs_left_out")
    return {k: v for k, v in checks.items() if k not in about_reference and not v <= limits.get(k, TOLERANCE)}


def deeplift_drop_reason(checks: dict[str, float]) -> str | None:
    """Why the DeepLIFT graph is dropped, with what the tolerance rested on; None when it passed its checks.

    >>> why = deeplift_drop_reason({"deeplift_rel_err": 0.0153, "deeplift_float32_floor": 0.0123, "deeplift_tolerance": 1e-4})
    >>> print(why[:111])
    the DeepLIFT graph failed verification (deeplift_rel_err 0.0153, tolerance 0.0001; torch's own float32 DeepLIFT
    >>> deeplift_drop_reason({"deeplift_rel_err": 5e-5}) is None
    True
    """
    missed = {k: v for k, v in _failed_checks(checks).items() if k.startswith("deeplift")}
    if not missed:
        return None
    reason = (f"the DeepLIFT graph failed verification ({', '.join(f'{k} {v:.3g}' for k, v in missed.items())}, "
              f"tolerance {checks.get('deeplift_tolerance', TOLERANCE):.3g}")
    floor = checks.get("deeplift_float32_floor")
    if floor is not None and floor > FLOOR_CAP:
        # VGG-11-BN at 224 px: torch's own float32 DeepLIFT is 1.2e-2 from float64, the graph 1.5e-2
        reason += (f"; torch's own float32 DeepLIFT is {floor:.3g} from float64 on these inputs: rescale ratios of units "
                   "whose input and baseline values nearly agree are below float32 resolution, so no float32 "
                   "DeepLIFT is reliable for this model")
    return reason + "); use integrated gradients"


def _drop_failed_deeplift(staging: Path, manifest: dict[str, Any], files: dict[str, Any], checks: dict[str, float]) -> str | None:
    """A DeepLIFT graph that misses its check costs only itself: removed from the staged bundle, with the reason."""
    reason = deeplift_drop_reason(checks)
    if reason is None:
        return None
    (staging / "deeplift_grad.onnx").unlink()
    files.pop("deeplift_grad.onnx")
    manifest["graphs"].pop("deeplift_grad")
    manifest["deeplift_unavailable"] = reason
    for key in [k for k in checks if k.startswith("deeplift")]:
        checks.pop(key)
    return reason


def autograd_gap(model: nn.Module, x: np.ndarray, rng: np.random.Generator, directions: int = 3) -> float:
    """How far torch autograd's directional derivatives are from float64 central differences of the model's
    outputs (both in float64): about 1e-9 for a differentiable forward, large where it detaches or
    replaces a backward.

    >>> class Detached(nn.Module):
    ...     def forward(self, x):
    ...         h = x.flatten(1)[:, :2]
    ...         return h + h.detach() ** 2
    >>> x = np.full((1, 1, 1, 2), 0.5, np.float32)
    >>> rng = np.random.default_rng(0)
    >>> autograd_gap(nn.Flatten(), x, rng) < 1e-6, autograd_gap(Detached(), x, rng) > 0.1
    (True, True)
    """
    model64 = copy.deepcopy(model).double().eval()
    x64 = torch.from_numpy(x).double().requires_grad_(True)
    out = model64(x64)
    weights = class_weights(*random_class_pairs(rng, len(x), out.shape[1]), out.shape[1]).double()
    (grad,) = torch.autograd.grad((out * weights).sum(), x64)
    x64 = x64.detach()
    analytic, fd = [], []
    for _ in range(directions):
        v = _unit_direction(rng, x.shape)
        fd.append(_central_difference(model64, x64, weights, v))
        analytic.append((grad.numpy() * v).reshape(len(x), -1).sum(1))
    return relative_error(np.concatenate(analytic), np.concatenate(fd))


def _unit_direction(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A random direction per row, of unit length."""
    v = rng.standard_normal(shape)
    return v / np.sqrt((v.reshape(shape[0], -1) ** 2).sum(1)).reshape(-1, *([1] * (len(shape) - 1)))


def _central_difference(model64: nn.Module, x64: torch.Tensor, weights64: torch.Tensor, v: np.ndarray) -> np.ndarray:
    """Float64 central differences of ``sum_k weights * logits`` along ``v``, per row (step ``FD_STEP``)."""
    step = torch.from_numpy(v) * FD_STEP
    with torch.no_grad():
        plus, minus = (model64(x64 + step) * weights64).sum(1), (model64(x64 - step) * weights64).sum(1)
    return ((plus - minus) / (2 * FD_STEP)).numpy()


def _finite_difference_checks(model: nn.Module, x: np.ndarray, weights: torch.Tensor, grad: np.ndarray,
                              torch_grad: np.ndarray, rng: np.random.Generator, routed_exact: np.ndarray | None = None,
                              directions: int = 3) -> dict[str, float]:
    """The graph's directional derivatives against float64 central differences of the model.

    Where ONNX Runtime resolved near-ties the other way (``routed_exact``: the float64 gradient on its
    routes, see :func:`_gradient_recheck`), differences of the unrouted model would measure those
    units, not the rules: the directional derivatives are then taken from ``routed_exact``.

    Judged like DeepLIFT: within ``TOLERANCE``, or within ``GRAD_FLOOR_FACTOR`` times torch float32
    autograd's own gap to the same differences. Deep float32 networks at 224 px miss float64 by more
    than 1e-4 by themselves (MobileNetV3-Small with random weights: torch float32 autograd is 5.4e-4 from
    float64 autograd), and a wrong rule is off by far more.
    """
    model64 = copy.deepcopy(model).double().eval()
    x64, w64 = torch.from_numpy(x).double(), weights.double()
    fd, analytic, reference = [], [], []
    for _ in range(directions):
        v = _unit_direction(rng, x.shape)
        if routed_exact is None:
            fd.append(_central_difference(model64, x64, w64, v))
        else:
            fd.append((routed_exact.astype(np.float64) * v).reshape(len(x), -1).sum(1))
        analytic.append((grad.astype(np.float64) * v).reshape(len(x), -1).sum(1))
        reference.append((torch_grad.astype(np.float64) * v).reshape(len(x), -1).sum(1))
    exact = np.concatenate(fd)
    # On imposed routes torch's own (unrouted) float32 gradient is no floor: the check is then strict.
    floor = relative_error(np.concatenate(reference), exact) if routed_exact is None else 0.0
    return {"grad_fd_rel_err": relative_error(np.concatenate(analytic), exact), "grad_fd_float32_floor": floor,
            "grad_fd_tolerance": _floor_tolerance(floor)}


def _finite_difference_recheck(folder: Path, model: nn.Module, x: np.ndarray, weights: torch.Tensor, grad: np.ndarray,
                               torch_grad: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """The finite-difference check again, on ONNX Runtime's routes, where the graph matched torch float32 but both
    missed float64 differences: float64 took a ReLU or max-pool decision at a near-tie the other way (seen on
    ResNet-50 at its small size on an AVX-512 CPU: torch float32 and the graph 3.4e-2 from float64, 1e-6 from each
    other). The reference becomes the float64 model's gradient with ONNX Runtime's decisions imposed,
    accepted only where every decision it changes is a near-tie in float64's own values
    (:data:`~xaisdk.deploy.near_ties.NEAR_TIE`); otherwise nothing changes and the check stays failed."""
    from xaisdk.deploy.near_ties import NEAR_TIE, onnx_decision_inputs, routed_gradient

    decisions = onnx_decision_inputs(onnx.load(str(folder / "classifier.onnx")), x)
    routed64 = routed_gradient(copy.deepcopy(model).double().eval(), decisions, x, weights)
    if routed64 is None or routed64.max_margin > NEAR_TIE:
        return {}
    return {**_finite_difference_checks(model, x, weights, grad, torch_grad, rng, routed64.grad),
            "grad_fd_near_tie_flips": float(routed64.flips), "grad_fd_near_tie_margin": routed64.max_margin}


def _resolve(model: Classifier | GanmexModel | nn.Module | str | os.PathLike, input_shape: Any, class_names: Any,
             preprocessing: Preprocessing | None) -> tuple[Classifier, GanmexModel | None, str | None]:
    """The classifier (and GANMEX model) to export: loaded from a path, built around a plain module, or as given."""
    source = None
    user_options = input_shape is not None or class_names is not None or preprocessing is not None
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        model = load_torch_classifier(model, input_shape=input_shape, class_names=class_names, preprocessing=preprocessing)
    elif isinstance(model, nn.Module):
        if input_shape is None:
            raise InputError("input_shape: a torch module does not state it; pass input_shape=(C, H, W)")
        model = classifier_from_module(model, input_shape=input_shape, class_names=class_names, preprocessing=preprocessing)
    elif user_options:
        raise InputError("input_shape, class_names and preprocessing apply to a plain nn.Module or a model file; "
                         f"a {type(model).__name__} carries its own")
    if isinstance(model, GanmexModel):
        return model.classifier, model, source
    if isinstance(model, Classifier):
        return model, None, source or model.metadata.get("source")
    raise InputError(f"model: expected an nn.Module, Classifier, GanmexModel or checkpoint path, got {type(model).__name__}")


def _check_arguments(opset: Any, batch: Any) -> tuple[int, int | None]:
    """``opset`` and ``batch`` as ints (``batch`` may be None); anything else raises InputError."""
    def is_int(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(opset) or int(opset) not in OPSETS:
        raise InputError(f"opset must be an integer in {OPSETS.start}..{OPSETS.stop - 1}, got {opset!r}")
    if batch is not None and (not is_int(batch) or int(batch) < 1):
        raise InputError(f"batch must be an integer >= 1 (or None for a dynamic batch), got {batch!r}")
    return int(opset), None if batch is None else int(batch)


def _write_file(path: Path, data: bytes) -> None:
    """Write a file of the private staging folder, flushed to disk before the folder is installed."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def export_bundle(model: nn.Module | Classifier | GanmexModel | str | os.PathLike, out: str | os.PathLike, *,
                  opset: int = DEFAULT_OPSET, batch: int | None = None, force: bool = False,
                  verify_inputs: np.ndarray | None = None, seed: int = 0,
                  inpainter: LearnedInpainter | str | os.PathLike | None = None,
                  explaingan: Any = None, exaggeration: Any = None, input_shape: Any = None,
                  class_names: Any = None, preprocessing: Preprocessing | None = None) -> ExportReport:
    """Export ``model`` to the bundle folder ``out``.

    ``model``: any ``torch.nn.Module`` returning logits (with ``input_shape=(C, H, W)``, optional
    ``class_names`` and ``preprocessing``, a :class:`~xaisdk.runtime.preprocessing.Preprocessing`
    whose per-channel mean/std, channel order and resize policy become part of the bundle: its graphs
    then take RGB pixels in [0, 1]), a TorchScript file (same options), or an xaisdk classifier or
    GANMEX checkpoint (path or loaded). ONNX files go through
    :func:`xaisdk.deploy.onnx_intake.export_onnx_classifier`.

    ``inpainter`` (a checkpoint path or a loaded :class:`~xaisdk.models.inpainter.LearnedInpainter`)
    adds ``inpainter.onnx``; its input shape and value range must match the classifier's.
    ``explaingan`` (an ExplainGAN checkpoint or model) adds ``explaingan.onnx``, which carries its own
    binary classifier; ``exaggeration`` (a Progressive Exaggeration checkpoint or model) adds
    ``exaggeration.onnx`` and must explain this very classifier (its f runs on ``classifier.onnx``).
    Both are verified against torch (:mod:`xaisdk.deploy.explaingan_export`, ``exaggeration_export``).
    ``batch`` fixes the graphs' batch size (default: dynamic). ``verify_inputs`` adds images to the
    verification set (by default, test images of the model's dataset when it can be loaded, plus
    random ones). Raises :class:`UnsupportedOpError` (an :class:`xaisdk.InputError`) for a layer
    with no gradient rule, :class:`VerificationError` when a check fails, ``InputError`` when
    ``out`` holds something other than a bundle (or a bundle, without ``force``), and
    :class:`~xaisdk.errors.OutputError` when the bundle cannot be written (disk full, no permission).
    ``force=True`` replaces the bundle in ``out`` without ever leaving ``out`` without a complete one,
    and keeps the files there that are not part of it (``report.kept``); see the module docstring.

    >>> import tempfile, os
    >>> from xaisdk.models import shipped_classifier_path
    >>> report = export_bundle(shipped_classifier_path("digits"), os.path.join(tempfile.mkdtemp(), "bundle"))
    >>> sorted(report.files), report.checks["grad_rel_err"] < 1e-4
    (['classifier.onnx', 'classifier_grad.onnx', 'deeplift_grad.onnx', 'manifest.json', 'relu_path.bin'], True)
    """
    started = time.perf_counter()
    opset, batch = _check_arguments(opset, batch)
    out = target_folder(out)
    try:
        recovered = recover_bundle_folder(out)
        prepare_out(out, force)
    except OSError as err:
        raise output_error(err, out) from None
    classifier, ganmex, source = _resolve(model, input_shape, class_names, preprocessing)
    inpainter_model, inpainter_source = _resolve_inpainter(inpainter, classifier)
    counterfactuals = _resolve_counterfactuals(explaingan, exaggeration, classifier)
    module = copy.deepcopy(classifier.model).cpu().eval()
    example = torch.zeros(batch or 2, *classifier.input_shape)
    forward = _to_onnx(module, (example,), ["x"], ["logits"], int(opset), batch, "classifier")
    graphs: dict[str, bytes] = {"classifier": checked_graph(forward, "classifier"),
                                "classifier_grad": checked_graph(gradient_graph(forward), "classifier_grad")}
    deeplift_unavailable = None
    try:
        graphs["deeplift_grad"] = checked_graph(deeplift_graph(forward), "deeplift_grad")
    except UnsupportedOpError as err:
        deeplift_unavailable = str(err)
    generator = None
    if ganmex is not None:
        generator = copy.deepcopy(ganmex.generator).cpu().eval()
        onehot = torch.zeros(batch or 2, classifier.num_classes)
        onehot[:, 0] = 1
        gen_graph = _to_onnx(_GeneratorGraph(generator), (example, onehot), ["x", "target"], ["image"], int(opset),
                             batch, "GANMEX generator")
        graphs["generator_ganmex"] = checked_graph(gen_graph, "generator_ganmex")
    if inpainter_model is not None:
        graphs["inpainter"] = _inpainter_graph(inpainter_model, int(opset), batch)

    token = uuid.uuid4().hex[:12]
    ACTIVE_TOKENS.add(token)
    try:
        files, checks, kept, dropped = _write_bundle(out, token, graphs, classifier, ganmex, module, generator, inpainter_model,
                                            inpainter_source, counterfactuals, opset, batch, source, deeplift_unavailable,
                                            verify_inputs, seed)
        sizes = {name: (out / name).stat().st_size for name in [*files, MANIFEST]}
    except OSError as err:
        raise output_error(err, out) from None
    finally:
        ACTIVE_TOKENS.discard(token)
    return ExportReport(out, sizes, time.perf_counter() - started, checks, dropped or deeplift_unavailable, kept, recovered)


def _write_bundle(out: Path, token: str, graphs: dict[str, bytes], classifier: Classifier, ganmex: GanmexModel | None,
                  module: nn.Module, generator: nn.Module | None, inpainter_model: LearnedInpainter | None,
                  inpainter_source: str | None, counterfactuals: dict[str, Any], opset: int, batch: int | None,
                  source: str | None, deeplift_unavailable: str | None, verify_inputs: np.ndarray | None,
                  seed: int) -> tuple[dict[str, Any], dict[str, float], list[str], str | None]:
    """Write, verify and install the bundle (staged under ``token``); returns its files, checks, the kept names and
    why a DeepLIFT graph that failed its check was dropped (None when none was)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = swap_folder(out, "new", token)
    staging.mkdir()  # mode 0o777 less the umask, like any folder the user makes
    try:
        files = {}
        for role, data in graphs.items():
            _write_file(staging / f"{role}.onnx", data)
            files[f"{role}.onnx"] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        manifest = _manifest(classifier, ganmex, graphs, files, opset, batch, source, deeplift_unavailable)
        add_relu_path(staging, manifest, graphs["classifier"])
        counterfactual_checks = _add_counterfactuals(staging, manifest, counterfactuals, opset, seed)
        if inpainter_model is not None:
            manifest["inpainter"] = {"name": inpainter_model.name, "source": inpainter_source,
                                     "data": inpainter_model.data,
                                     "parameters": sum(p.numel() for p in inpainter_model.network.parameters())}
        rng = np.random.default_rng(seed)
        x, real = _verification_inputs(classifier, ganmex.data if ganmex else {}, rng, verify_inputs)
        write_manifest(staging, manifest)
        relu_path_checks = verify_relu_path(staging, manifest, x, seed)
        write_manifest(staging, manifest)  # again: a split that failed its check is gone
        checks = {**_verify(staging, module, generator, x, seed), **counterfactual_checks, **relu_path_checks}
        if inpainter_model is not None:
            checks["inpainter_rel_err"] = _verify_inpainter(staging / "inpainter.onnx", inpainter_model, x, seed)
        dropped = _drop_failed_deeplift(staging, manifest, files, checks)
        failed = _failed_checks(checks)
        if failed:
            why = ""
            if {"grad_rel_err", "grad_fd_rel_err"} & set(failed):
                gap = autograd_gap(module, x[:VERIFY_ROWS], rng)
                if gap > FLOOR_CAP:
                    why = (f"; torch's own autograd is {gap:.2g} from float64 differences of the model's outputs: its "
                           "forward detaches part of the graph or has a custom backward (torch.autograd.Function), so "
                           "autograd is not the derivative of the function the graphs differentiate; remove the detach")
            raise VerificationError(f"exported graphs disagree with torch beyond {TOLERANCE:g} (relative): {failed}{why}")
        manifest["verification"] = {"tolerance": TOLERANCE, "inputs": len(x), "real_inputs": real, **checks}
        write_manifest(staging, manifest)
        read_bundle(staging)  # the bundle reads back as a loader will read it
        kept = carry_user_files(out, staging)
        install_bundle(staging, out, token)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files, checks, kept, dropped



def _manifest(classifier: Classifier, ganmex: GanmexModel | None, graphs: dict[str, bytes], files: dict,
              opset: int, batch: int | None, source: str | None, deeplift_unavailable: str | None) -> dict[str, Any]:
    pipeline = classifier.metadata.get("preprocessing")
    return bundle_manifest(input_shape=classifier.input_shape, value_range=classifier.value_range,
                           class_names=classifier.class_names, arch=classifier.arch, roles=list(graphs), files=files,
                           opset=opset, batch=batch, source=source, deeplift_unavailable=deeplift_unavailable,
                           ganmex=ganmex is not None, preprocessing=pipeline)


def _resolve_counterfactuals(explaingan: Any, exaggeration: Any, classifier: Classifier) -> dict[str, Any]:
    """The loaded ExplainGAN / Exaggeration models to add to a bundle; InputError unless they fit ``classifier``."""
    found: dict[str, Any] = {}
    if explaingan is not None:
        from xaisdk.models.explaingan import ExplainGANModel, load_explaingan

        model = load_explaingan(explaingan) if isinstance(explaingan, (str, os.PathLike)) else explaingan
        if not isinstance(model, ExplainGANModel):
            raise InputError(f"explaingan: expected an ExplainGAN checkpoint or model, got {type(model).__name__}")
        if tuple(model.classifier.input_shape) != tuple(classifier.input_shape):
            raise InputError(f"explaingan: works on {tuple(model.classifier.input_shape)} images but the classifier takes "
                             f"{tuple(classifier.input_shape)}")
        found["explaingan"] = model
    if exaggeration is not None:
        from xaisdk.models.exaggeration import ExaggerationModel, load_exaggeration

        model = load_exaggeration(exaggeration) if isinstance(exaggeration, (str, os.PathLike)) else exaggeration
        if not isinstance(model, ExaggerationModel):
            raise InputError(f"exaggeration: expected a Progressive Exaggeration checkpoint or model, got {type(model).__name__}")
        mine, theirs = classifier.model.state_dict(), model.classifier.model.state_dict()
        if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
            raise InputError("exaggeration: it explains another classifier than the one exported here; its f(x) would "
                             "come from the wrong model (export the classifier it was trained for)")
        found["exaggeration"] = model
    return found


def _add_counterfactuals(staging: Path, manifest: dict[str, Any], models: dict[str, Any], opset: int,
                         seed: int) -> dict[str, float]:
    """Write and verify each counterfactual graph into ``staging`` and describe it in ``manifest``;
    returns the verification errors (max absolute difference to torch)."""
    checks: dict[str, float] = {}
    rows = manifest["input"]["batch"] or "N"
    image = [rows, *manifest["input"]["shape"]]
    for role, model in models.items():
        if role == "explaingan":
            from xaisdk.deploy.explaingan_export import export_explaingan_onnx

            report = export_explaingan_onnx(model, staging, opset=opset, seed=seed)
            ports = {"inputs": {"x": image},
                  "outputs": {"transformed": image, "mask": [rows, 1, *image[2:]], "composite": image, "source": [rows],
                              "flipped_prob": [rows]}}
            about = {"class_names": list(model.classifier.class_names)}
        else:
            from xaisdk.deploy.exaggeration_export import export_exaggeration_onnx

            report = export_exaggeration_onnx(model, staging, opset=opset, seed=seed)
            ports = {"inputs": {"x": image, "condition": [rows, model.n_bins]}, "outputs": {"image": image}}
            about = {"target_class": int(model.target_class), "n_bins": int(model.n_bins)}
        data = (staging / f"{role}.onnx").read_bytes()
        manifest["files"][f"{role}.onnx"] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        manifest["graphs"][role] = {"file": f"{role}.onnx", "computes": COMPUTES[role], **ports}
        manifest["model"][role] = about
        checks[f"{role}_abs_err"] = float(report["max_abs_error"])
    return checks


def _resolve_inpainter(inpainter: LearnedInpainter | str | os.PathLike | None,
                       classifier: Classifier | None) -> tuple[LearnedInpainter | None, str | None]:
    """The loaded inpainter and where it came from; InputError unless it fits the classifier's input."""
    if inpainter is None:
        return None, None
    source = None
    if isinstance(inpainter, (str, os.PathLike)):
        source = str(inpainter)
        inpainter = load_inpainter(inpainter)
    if not isinstance(inpainter, LearnedInpainter):
        raise InputError(f"inpainter: expected a LearnedInpainter or a checkpoint path, got {type(inpainter).__name__}")
    if classifier is not None:
        where = f"inpainter {source}" if source else "inpainter"
        if tuple(inpainter.input_shape) != tuple(classifier.input_shape):
            raise InputError(f"{where}: inpaints {tuple(inpainter.input_shape)} images but the classifier takes "
                             f"{tuple(classifier.input_shape)}")
        if tuple(inpainter.value_range) != tuple(classifier.value_range):
            raise InputError(f"{where}: its value range {tuple(inpainter.value_range)} differs from the classifier's "
                             f"{tuple(classifier.value_range)}")
    return inpainter, source


def _inpainter_graph(inpainter: LearnedInpainter, opset: int, batch: int | None) -> bytes:
    network = copy.deepcopy(inpainter.network).cpu().eval()
    rows = batch or 2
    x = torch.full((rows, *inpainter.input_shape), inpainter.config.fill_value)
    mask = torch.zeros(rows, 1, *inpainter.input_shape[1:])
    graph = _to_onnx(_InpainterGraph(network), (x, mask), ["x", "mask"], ["image"], opset, batch, "inpainter")
    # what a bare inpainter.onnx needs to be used on its own (xaisdk.runtime.onnx_inpainter reads it)
    onnx.helper.set_model_props(graph, {"xaisdk.role": "inpainter", "xaisdk.name": inpainter.name,
                                        "xaisdk.value_range": json.dumps(list(inpainter.value_range))})
    return checked_graph(graph, "inpainter")


def _verify_inpainter(path: Path, inpainter: LearnedInpainter, x: np.ndarray, seed: int) -> float:
    """Relative error of the ONNX inpainter against torch on ``x`` with seeded random masks; raises
    :class:`VerificationError` if it changes a single unmasked pixel."""
    from xaisdk.data.masks import random_masks
    from xaisdk.runtime.onnx_inpainter import OnnxInpainter

    _, height, width = inpainter.input_shape
    masks = random_masks(len(x), height, width, seed=seed)
    got = OnnxInpainter(path, providers=["CPUExecutionProvider"]).graph_output(x, masks)
    with torch.no_grad():
        want = inpainter.network(torch.from_numpy(x), torch.from_numpy(masks)).numpy()
    kept = np.broadcast_to(masks == 0, x.shape)
    if not np.array_equal(got[kept], x[kept]):
        raise VerificationError("inpainter.onnx changes pixels outside the mask")
    return relative_error(got, want)


def export_inpainter_onnx(inpainter: LearnedInpainter | str | os.PathLike, path: str | os.PathLike, *,
                          opset: int = DEFAULT_OPSET, batch: int | None = None, seed: int = 0) -> Path:
    """Write ``inpainter`` alone as a verified ONNX graph (inputs ``x``, ``mask``; output ``image``) to ``path``.

    The file carries its value range and name as model metadata, so that
    :class:`~xaisdk.runtime.onnx_inpainter.OnnxInpainter` can run it without a bundle. Verified like
    :func:`export_bundle`'s graphs (ONNX checker, TensorRT op list, ONNX Runtime vs torch <= 1e-4).

    >>> import tempfile
    >>> from xaisdk.models import shipped_inpainter_path
    >>> export_inpainter_onnx(shipped_inpainter_path("digits"), Path(tempfile.mkdtemp()) / "inp.onnx").suffix
    '.onnx'
    """
    opset, batch = _check_arguments(opset, batch)
    model, _ = _resolve_inpainter(inpainter, None)
    data = _inpainter_graph(model, opset, batch)
    path = Path(path)
    rng = np.random.default_rng(seed)
    low, high = model.value_range
    x = rng.uniform(low, high, size=(6, *model.input_shape)).astype(np.float32)
    with atomic_file(path) as handle:
        handle.write(data)
        handle.flush()
        err = _verify_inpainter(Path(handle.name), model, x, seed)  # the written file, before it goes live
        if not err <= TOLERANCE:
            raise VerificationError(f"inpainter.onnx disagrees with torch beyond {TOLERANCE:g} (relative): {err:.3g}")
    return path
