"""Paper 004's evaluation of generative feature removal (SP vs SP-G, LIME vs LIME-G, MP vs MP-G) on our data.

Four parts, each optional (:data:`PARTS`):

- ``"fillers"`` (the paper's Table 1): remove each image's object (the ground-truth mask, or for
  datasets without masks the dilated strokes, see :func:`object_masks`) with every filler, then the
  classifier's accuracy and mean probability of the true class on the filled images, and how alike
  the filled image and the original still are (SSIM, mean absolute difference). The paper also
  reports MS-SSIM and LPIPS: MS-SSIM needs images larger than 28-32 px and LPIPS needs downloaded
  network weights, so neither is computed here.
- ``"robustness"`` (Section 4.3 / Table S3): for every evaluated image, the maps of SP and SP-G over
  the patch sizes, of LIME and LIME-G over the seeds at two superpixel counts, and of MP and MP-G
  over the seeds (random initialisations); each run set is compared pairwise with SSIM, Pearson
  correlation of HOG features and Spearman rank correlation
  (:func:`~xaisdk.metrics.similarity.consistency`), reported as mean +- std over images.
- ``"localization"`` (Table 2, needs ground-truth masks): each method's default map turned into a
  box (largest connected component above ``alpha * max``), missed when its IoU with the object's
  box is below 0.5; alpha chosen on held-out images (the ones after the evaluated ones).
- ``"deletion"`` (Section 4.4): deletion and insertion AUCs of the default maps.

MP's perturbed area (Table S1: the fraction of the image where the learned mask is >= 0.5) comes
with the robustness part. Default settings are the paper's scaled from 224 px to our 28-32 px
images; see :class:`RemovalStudyConfig`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from xaisdk.data import Dataset
from xaisdk.errors import InputError
from xaisdk.metrics._common import MetricResult
from xaisdk.runtime.backend import Backend, class_weights
from xaisdk.runtime.inpainting import Inpainter, OpenCVInpainter, remove

__all__ = ["PARTS", "METHOD_LABELS", "RemovalStudyConfig", "RemovalStudyResult", "object_masks", "run_removal_study"]

PARTS = ("fillers", "robustness", "localization", "deletion")
# Short label -> (method, generative?).
METHOD_LABELS = {"SP": ("sp", False), "SP-G": ("sp", True), "LIME": ("lime", False), "LIME-G": ("lime", True),
                 "MP": ("mp", False), "MP-G": ("mp", True)}
CLASSIC_FILLER = {"sp": "gray", "lime": "gray", "mp": "blur"}  # the paper's: gray patch / gray superpixels / blur
TABLE1_FILLERS = ("blur", "gray", "noise", "inpaint", "telea")


@dataclass
class RemovalStudyConfig:
    """What :func:`run_removal_study` computes.

    * ``samples`` evaluated test images (the first ones) and ``held_out`` images after them for the
      localization threshold; ``targets="none"``: one-vs-all on the predicted class, as the paper
      (``"runner-up"``: one-vs-one against the second-highest class).
    * ``patch_sizes`` (stride ``patch_stride``): the paper's {5, 17, 29, 41, 53} px on 224 px images
      are 2-24 % of the side; on 28 px that is about 1-7 px, so {3, 5, 7, 9, 11} (the smallest patch
      that still covers a digit stroke is 3). Default patch for the other parts: ``patch_sizes[1]``.
    * ``lime_segments``: two superpixel counts (low and high resolution, the paper's 50 and 150 on
      224 px); ``lime_samples`` = 500 and five seeds as the paper's robustness test.
    * ``mp_steps`` = 300 Adam steps (the paper), five initialisations (``seeds``).
    """

    parts: tuple[str, ...] = PARTS
    samples: int = 50
    held_out: int = 50
    targets: str = "none"
    patch_sizes: tuple[int, ...] = (3, 5, 7, 9, 11)
    patch_stride: int = 1
    lime_segments: tuple[int, int] = (50, 100)
    lime_samples: int = 500
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    mp_steps: int = 300
    fillers: tuple[str, ...] = TABLE1_FILLERS
    deletion_step: int = 4
    chunk_size: int = 512
    progress: bool = False

    def validate(self) -> None:
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise InputError(f"parts: expected some of {', '.join(PARTS)}, got {list(self.parts)}")
        for name in ("samples", "mp_steps", "lime_samples", "patch_stride", "deletion_step", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name}: expected a positive integer, got {value!r}")
        if isinstance(self.held_out, bool) or not isinstance(self.held_out, (int, np.integer)) or self.held_out < 0:
            raise InputError(f"held_out: expected an integer >= 0, got {self.held_out!r}")
        if self.targets not in ("none", "runner-up"):
            raise InputError(f"targets: expected 'none' or 'runner-up', got {self.targets!r}")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"seeds: expected at least two different seeds, got {list(self.seeds)}")
        if len(self.patch_sizes) < 2 or any(p < 1 for p in self.patch_sizes):
            raise InputError(f"patch_sizes: expected at least two sizes >= 1, got {list(self.patch_sizes)}")
        if len(self.lime_segments) != 2 or any(s < 2 for s in self.lime_segments):
            raise InputError(f"lime_segments: expected two superpixel counts >= 2, got {list(self.lime_segments)}")
        bad = sorted(set(self.fillers) - set(TABLE1_FILLERS))
        if bad:
            raise InputError(f"fillers: unknown {', '.join(bad)}; expected some of {', '.join(TABLE1_FILLERS)}")


@dataclass
class RemovalStudyResult:
    """Numbers (and the arrays the figures need) of one :func:`run_removal_study` run."""

    dataset: str
    config: RemovalStudyConfig
    inpainter: str
    x: np.ndarray
    source: np.ndarray
    target: np.ndarray | None
    class_names: tuple[str, ...]
    fillers: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """Per removed shape (``"outline"``: the object's pixels; ``"box"``: its bounding box), per filler, the numbers."""
    mask_origin: str = ""
    filler_examples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    robustness: dict[str, dict[str, MetricResult]] = field(default_factory=dict)
    mp_area: dict[str, MetricResult] = field(default_factory=dict)
    localization: dict[str, MetricResult] = field(default_factory=dict)
    deletion: dict[str, dict[str, MetricResult]] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def object_masks(dataset: Dataset, threshold: float = 0.25, dilate: int = 1) -> tuple[np.ndarray, str]:
    """The pixels that make each image's object, (N, 1, H, W) float32, and where they come from:
    the dataset's ground-truth masks when it has them, else the pixels brighter than ``threshold``
    in any channel dilated by ``dilate`` pixels (the strokes of a digit on its dark background).

    >>> from xaisdk.data import load_digits
    >>> masks, origin = object_masks(load_digits().test.subset(np.arange(2)))
    >>> masks.shape, origin
    ((2, 1, 28, 28), 'strokes (pixels > 0.25, dilated 1 px)')
    """
    if dataset.masks is not None:
        return dataset.masks, "ground truth"
    from scipy import ndimage

    strokes = dataset.x.max(axis=1) > threshold
    if dilate:
        strokes = ndimage.binary_dilation(strokes, np.ones((1, 3, 3), bool), iterations=dilate)
    return strokes[:, None].astype(np.float32), f"strokes (pixels > {threshold:g}, dilated {dilate} px)"


def _probabilities(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(1, keepdims=True)


def _logits(backend: Backend, x: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([np.asarray(backend.logits(x[i:i + chunk]), np.float32) for i in range(0, len(x), chunk)])


def filler_table(backend: Backend, dataset: Dataset, inpainter: Inpainter, fillers: tuple[str, ...] = TABLE1_FILLERS,
                 *, shape: str = "outline", chunk_size: int = 512,
                 seed: int = 0) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], str]:
    """Table 1: per filler, accuracy / mean p(true class) of the classifier on images whose object
    was removed, and SSIM / mean |difference| to the original. Returns the table, the filled images
    (for a figure) and where the object masks came from. ``shape="box"`` removes the object's whole
    bounding box instead of its outline: an inpainter is given the mask, and an outline mask can
    spell the object it removes (a digit's strokes), which a box does not.
    """
    from skimage.metrics import structural_similarity

    masks, origin = object_masks(dataset)
    if shape == "box":
        from xaisdk.metrics.localization import mask_boxes

        boxes = np.zeros_like(masks)
        for i, (top, left, bottom, right) in enumerate(mask_boxes(masks)):
            if top >= 0:
                boxes[i, 0, top:bottom + 1, left:right + 1] = 1
        masks, origin = boxes, f"bounding boxes of {origin}"
    elif shape != "outline":
        raise InputError(f"shape: expected 'outline' or 'box', got {shape!r}")
    low, high = backend.value_range
    table: dict[str, dict[str, float]] = {}
    examples: dict[str, np.ndarray] = {"real": dataset.x}
    for name in ("real",) + tuple(fillers):
        if name == "real":
            filled = dataset.x
        elif name == "telea":
            filled = OpenCVInpainter("telea", value_range=backend.value_range).inpaint(dataset.x, masks)
        else:
            filled = remove(dataset.x, masks, name, inpainter=inpainter, value_range=backend.value_range, seed=seed)
        p = _probabilities(_logits(backend, filled, chunk_size))
        ssim = [structural_similarity(a.transpose(1, 2, 0), b.transpose(1, 2, 0), channel_axis=2, data_range=high - low)
                for a, b in zip(dataset.x, filled)]
        table[name] = {"accuracy": float(np.mean(p.argmax(1) == dataset.y)),
                       "p_true": float(np.mean(p[np.arange(len(p)), dataset.y])),
                       "ssim": float(np.mean(ssim)), "l1": float(np.mean(np.abs(filled - dataset.x)))}
        examples[name] = filled
    return table, examples, origin


def _method_runner(backend: Backend, inpainter: Inpainter, config: RemovalStudyConfig
                   ) -> Callable[[str, bool, np.ndarray, np.ndarray, dict[str, Any]], np.ndarray]:
    from xaisdk.attribution.lime import lime
    from xaisdk.methods.meaningful_perturbation import meaningful_perturbation
    from xaisdk.methods.sliding_patch import sliding_patch

    functions = {"sp": sliding_patch, "lime": lime, "mp": meaningful_perturbation}

    def run(method: str, generative: bool, x: np.ndarray, weights: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        filler = "inpaint" if generative else CLASSIC_FILLER[method]
        extra = {"inpainter": inpainter} if generative else {}
        extra["allow_empty"] = True  # a blank map is a result of the study: its metrics are NaN, left out of the means
        if method != "mp":
            extra["chunk_size"] = config.chunk_size
        return functions[method](backend, x, weights, filler=filler, progress=config.progress, **extra, **options)

    return run


def _sweeps(label: str, method: str, config: RemovalStudyConfig) -> list[tuple[str, list[dict[str, Any]], int]]:
    """The robustness runs of one method: (row name, the options of each run, which run is the default)."""
    if method == "sp":
        return [(label, [{"patch": p, "stride": config.patch_stride} for p in config.patch_sizes], 1)]
    if method == "lime":
        return [(f"{label} ({segments})", [{"n_segments": segments, "n_samples": config.lime_samples, "seed": s}
                                           for s in config.seeds], 0) for segments in config.lime_segments]
    return [(label, [{"steps": config.mp_steps, "seed": s} for s in config.seeds], 0)]


def _default_options(method: str, config: RemovalStudyConfig) -> dict[str, Any]:
    """The options of the default run of ``method`` (what the localization and deletion parts use)."""
    _, sweep, default = _sweeps(method.upper(), method, config)[0]
    return sweep[default]


def _deletion(backend: Backend, x: np.ndarray, maps: np.ndarray, source: np.ndarray, step: int, chunk: int) -> MetricResult:
    from xaisdk.metrics.perturbation import deletion

    return deletion(backend, x, maps, source, step=step, chunk_size=chunk)


def _insertion(backend: Backend, x: np.ndarray, maps: np.ndarray, source: np.ndarray, step: int, chunk: int) -> MetricResult:
    from xaisdk.metrics.perturbation import insertion

    return insertion(backend, x, maps, source, step=step, chunk_size=chunk)


def _pairs(backend: Backend, x: np.ndarray, targets: str, chunk: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    logits = _logits(backend, x, chunk)
    order = np.argsort(-logits, axis=1)
    source = order[:, 0]
    target = order[:, 1] if targets == "runner-up" else None
    return source, target, class_weights(source, target, backend.num_classes)


def run_removal_study(backend: Backend, inpainter: Inpainter, test: Dataset, config: RemovalStudyConfig | None = None,
                      *, log: Callable[[str], None] | None = None) -> RemovalStudyResult:
    """Run the parts of ``config`` on the first ``config.samples`` images of ``test`` (see the module
    docstring). ``backend`` is the classifier (any :class:`~xaisdk.runtime.backend.Backend`),
    ``inpainter`` the generative filler (:class:`~xaisdk.models.inpainter.LearnedInpainter`, an ONNX
    one, or :class:`~xaisdk.runtime.inpainting.OpenCVInpainter`).
    """
    from xaisdk.metrics.localization import box_localization_error
    from xaisdk.metrics.similarity import consistency

    config = config or RemovalStudyConfig()
    config.validate()
    say = log or (lambda message: None)
    if test.input_shape != tuple(backend.input_shape):
        raise InputError(f"dataset images are {test.input_shape}, the classifier takes {tuple(backend.input_shape)}")
    n = min(config.samples, len(test))
    evaluated = test.subset(np.arange(n))
    x = evaluated.x
    source, target, weights = _pairs(backend, x, config.targets, config.chunk_size)
    result = RemovalStudyResult(test.name, config, getattr(inpainter, "name", type(inpainter).__name__), x, source,
                                target, test.class_names)
    run = _method_runner(backend, inpainter, config)

    def timed(label: str, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        say(f"{label} ...")
        value = work(*args, **kwargs)
        result.timings[label] = result.timings.get(label, 0.0) + time.perf_counter() - start
        return value

    if "fillers" in config.parts:
        for shape in ("outline", "box"):
            table, examples, origin = timed("fillers", filler_table, backend, evaluated, inpainter, config.fillers, shape=shape)
            result.fillers[shape] = table
            result.filler_examples[shape] = {k: v[:6] for k, v in examples.items()}
            if shape == "outline":
                result.mask_origin = origin

    defaults: dict[str, np.ndarray] = {}
    if "robustness" in config.parts:
        for label, (method, generative) in METHOD_LABELS.items():
            for name, sweep, default in _sweeps(label, method, config):
                runs = [timed(label, run, method, generative, x, weights, options) for options in sweep]
                defaults.setdefault(label, runs[default])
                result.robustness[name] = consistency(runs)
                if method == "mp":
                    area = np.mean([(r.max(axis=1) >= 0.5).reshape(n, -1).mean(1) for r in runs], axis=0)
                    result.mp_area[label] = MetricResult("perturbed_area", area)
    if ("localization" in config.parts or "deletion" in config.parts) and not defaults:
        for label, (method, generative) in METHOD_LABELS.items():
            defaults[label] = timed(label, run, method, generative, x, weights, _default_options(method, config))
    result.maps = {label: maps[:8] for label, maps in defaults.items()}

    if "localization" in config.parts:
        if test.masks is None:
            say("localization skipped: the dataset has no ground-truth masks")
        else:
            held = test.subset(np.arange(n, min(n + config.held_out, len(test))))
            held_weights = _pairs(backend, held.x, config.targets, config.chunk_size)[2] if len(held) else None
            for label, (method, generative) in METHOD_LABELS.items():
                held_maps = None
                if len(held):
                    held_maps = timed(f"{label} held-out", run, method, generative, held.x, held_weights,
                                      _default_options(method, config))
                result.localization[label] = box_localization_error(
                    defaults[label], evaluated.masks, held_out=held_maps, held_out_masks=held.masks if len(held) else None)

    if "deletion" in config.parts:
        for label, maps in defaults.items():
            result.deletion[label] = {kind: timed("deletion / insertion", function, backend, x, maps, source,
                                                  config.deletion_step, config.chunk_size)
                                      for kind, function in (("deletion", _deletion), ("insertion", _insertion))}
    return result


def config_dict(config: RemovalStudyConfig) -> dict[str, Any]:
    """The config as plain JSON values (without the progress flag)."""
    return {k: v for k, v in asdict(config).items() if k != "progress"}
