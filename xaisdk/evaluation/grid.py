"""The evaluation grid: which (method, baseline) columns ``xaisdk evaluate`` computes, its
configuration and result types, and how one column's maps are made through an
:class:`~xaisdk.explainer.Explainer` (pairs, baselines, attributions).

Shared by :mod:`xaisdk.evaluation.evaluate` (the run) and :mod:`xaisdk.evaluation.studies`
(the studies beyond per-map metrics), which therefore do not import each other.
"""


from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from xaisdk.data import Split
from xaisdk.errors import InputError
from xaisdk.explainer import Explainer
from xaisdk.metrics._common import MetricResult

__all__ = ["BASELINES", "Column", "EvaluationConfig", "EvaluationResult", "METHODS", "METRICS", "attribute", "columns_for",
           "config_dict", "make_baselines"]


METHODS = {"ig": "IG", "eg": "EG", "deeplift": "DeepLIFT", "occlusion": "Occlusion", "deepshap": "DeepSHAP"}
BASELINES = {"zero": "Zero", "mdts": "MDTS", "ganmex": "GANMEX"}
# Metric names accepted by --metrics; "aopc" gives AOPC_L and AOPC_all (one flip curve),
# "localization" needs ground-truth masks (the shapes data).
METRICS = ("aopc", "gini", "faithfulness", "monotonicity", "inverse_localization", "deletion", "insertion",
           "aospc", "localization", "baseline_distance", "sensitivity", "randomization", "roar")
DEFAULT_METRICS = METRICS
_DRIVER = {"ig": "ig", "eg": "expected_gradients", "deeplift": "deeplift", "occlusion": "occlusion",
           "deepshap": "deepshap"}


@dataclass(frozen=True)
class Column:
    """One attribution configuration: a method and its baseline (None for EG)."""

    method: str
    baseline: str | None

    @property
    def label(self) -> str:
        return METHODS[self.method] + ("" if self.baseline is None else f"+{BASELINES[self.baseline]}")


def columns_for(methods: Sequence[str], baselines: Sequence[str]) -> list[Column]:
    """The report's columns, in the paper's order (EG has a single column).

    >>> [c.label for c in columns_for(["ig", "eg"], ["zero", "ganmex"])]
    ['IG+Zero', 'IG+GANMEX', 'EG']
    """
    for m in methods:
        if m not in METHODS:
            raise InputError(f"methods: unknown {m!r}; expected some of {', '.join(METHODS)}")
    for b in baselines:
        if b not in BASELINES:
            raise InputError(f"baselines: unknown {b!r}; expected some of {', '.join(BASELINES)}")
    if not methods:
        raise InputError("methods: give at least one method")
    if not baselines and any(m != "eg" for m in methods):
        raise InputError("baselines: give at least one baseline for the methods that take one")
    ordered = [m for m in METHODS if m in methods]
    return [Column(m, None) if m == "eg" else Column(m, b) for m in ordered
            for b in ([None] if m == "eg" else [b for b in BASELINES if b in baselines])]


@dataclass
class EvaluationConfig:
    """What ``evaluate`` runs, with the defaults used for the README tables (reasons inline)."""

    methods: tuple[str, ...] = ("ig", "eg", "deeplift", "occlusion")
    baselines: tuple[str, ...] = ("zero", "mdts", "ganmex")
    metrics: tuple[str, ...] = DEFAULT_METRICS
    samples: int = 100                 # test images evaluated (the first ones of the test split)
    targets: str = "random"            # "random" or "runner-up"
    seed: int = 0
    ig_steps: int = 200                # the GANMEX paper's IG-200
    eg_samples: int = 200              # EG baselines per image (same budget as IG-200)
    deepshap_references: int = 8       # DeepSHAP baseline set for MDTS: the 8 nearest target-class images
    occlusion_window: int = 1          # Occlusion-1, as in the paper
    aopc_L: int = 100                  # AOPC_100 (and AOPC_all from the same curve)
    flip_substrate: str = "flip"       # x -> 1 - x (GANMEX §4.1)
    single_feature_samples: int = 50   # faithfulness / monotonicity on the first images only (cost)
    monotonicity_draws: int = 8        # noise draws per pixel group
    monotonicity_group: int = 4        # pixels per group (784 / 4 = 196 groups)
    curve_step: int = 8                # deletion / insertion: pixels per step (99 points at 28x28)
    aospc_thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)   # ExplainGAN §5.4
    randomization_samples: int = 16
    randomization_ganmex_steps: int = 300   # GANMEX retrained against each randomized classifier
    roar_methods: tuple[str, ...] = ("ig", "eg")   # gradient family; Occlusion-1 on 1,800 images is slow
    roar_workers: int = 2
    roar_epochs: int = 10
    sensitivity_samples: int = 50
    progress: bool = True

    def validate(self) -> None:
        columns_for(self.methods, self.baselines)
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise InputError(f"metrics: unknown {', '.join(unknown)}; expected some of {', '.join(METRICS)}")
        if self.targets not in ("random", "runner-up"):
            raise InputError(f"targets: expected 'random' or 'runner-up', got {self.targets!r}")
        for name in ("samples", "ig_steps", "eg_samples", "aopc_L", "single_feature_samples", "randomization_samples",
                     "sensitivity_samples", "curve_step", "roar_workers", "roar_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name}: expected a positive integer, got {value!r}")


@dataclass
class EvaluationResult:
    """Everything ``evaluate`` measured; ``report.write_report`` turns it into files."""

    config: EvaluationConfig
    dataset: str
    model: str
    backend: str
    columns: list[Column]
    index: np.ndarray
    x: np.ndarray
    source: np.ndarray
    target: np.ndarray
    baselines: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    metrics: dict[str, dict[str, MetricResult]] = field(default_factory=dict)   # metric -> column -> result
    curves: dict[str, MetricResult] = field(default_factory=dict)               # column -> flip curve
    extra: dict[str, Any] = field(default_factory=dict)                          # roar, randomization, ...
    timings: dict[str, float] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()


def _pairs(explainer: Explainer, x: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    logits = explainer.logits(x)
    source = logits.argmax(1).astype(np.int64)
    if kind == "runner-up":
        return source, np.argsort(-logits, axis=1, kind="stable")[:, 1].astype(np.int64)
    k = logits.shape[1]
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, k - 1, len(x))
    return source, (draw + (draw >= source)).astype(np.int64)   # uniform over the other classes


def nearest_of_class(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, target: np.ndarray,
                     k: int) -> np.ndarray:
    """(N, k, C, H, W): the ``k`` training images of each row's target class closest to it in L2
    (DeepSHAP's set version of :class:`~xaisdk.baselines.MDTS`, which gives the single nearest).

    >>> tx = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1); ty = np.array([0, 1, 1, 1])
    >>> nearest_of_class(tx, ty, np.full((1, 1, 1, 1), 2.2, np.float32), np.array([1]), 2)[0, :, 0, 0, 0].tolist()
    [2.0, 3.0]
    """
    out = np.empty((len(x), k, *x.shape[1:]), np.float32)
    flat = train_x.reshape(len(train_x), -1).astype(np.float64)
    for c in np.unique(target):
        rows = np.flatnonzero(target == c)
        pool = np.flatnonzero(train_y == c)
        if len(pool) < k:
            raise InputError(f"only {len(pool)} training images of class {c}; DeepSHAP needs {k}")
        q = x[rows].reshape(len(rows), -1).astype(np.float64)
        d = (q * q).sum(1)[:, None] - 2 * q @ flat[pool].T + (flat[pool] ** 2).sum(1)[None]
        best = np.argsort(d, axis=1, kind="stable")[:, :k]
        out[rows] = train_x[pool[best]]
    return out


def make_baselines(explainer: Explainer, split: Split, x: np.ndarray, target: np.ndarray,
                   kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Baseline images per kind: zero, MDTS (nearest target-class training image), GANMEX G(x, target)."""
    out: dict[str, np.ndarray] = {}
    for kind in kinds:
        if kind == "zero":
            out[kind] = np.zeros_like(x)
        elif kind == "mdts":
            from xaisdk.baselines import MDTS

            out[kind] = MDTS(split.train)(x, target)
        elif kind == "ganmex":
            out[kind] = explainer.counterfactual_batch(x, target)
    return out


def attribute(explainer: Explainer, column: Column, x: np.ndarray, source: np.ndarray, target: np.ndarray,
              baselines: dict[str, np.ndarray], split: Split, config: EvaluationConfig,
              seed: int | None = None) -> np.ndarray:
    """One column's maps (N, C, H, W) of ``S_source - S_target``."""
    options: dict[str, Any] = {}
    baseline: Any = None
    if column.method == "ig":
        options["n_steps"] = config.ig_steps
    elif column.method == "eg":
        options.update(references=split.train.x, reference_labels=split.train.y, n_samples=config.eg_samples,
                       seed=config.seed if seed is None else seed)
    elif column.method == "occlusion":
        options.update(window=config.occlusion_window, stride=1)
    if column.baseline is not None:
        baseline = baselines[column.baseline]
        if column.method == "deepshap" and column.baseline == "mdts":
            baseline = nearest_of_class(split.train.x, split.train.y, x, target, config.deepshap_references)
    explanation = explainer.explain(x, target, source=source, method=_DRIVER[column.method], baseline=baseline,
                                    **options)
    return np.asarray(explanation.attributions, dtype=np.float32)


def config_dict(config: EvaluationConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
