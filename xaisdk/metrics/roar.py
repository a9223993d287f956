"""ROAR, RemOve And Retrain (Hooker et al., 2019), for one-vs-one attribution maps (GANMEX §C.2).

The classes are divided into pairs ``(c, c')``. Each image of class ``c`` is explained by its
one-vs-one map ``A_{c -> c'}(x)`` (source = its label, target = the other class of its pair), each
image of ``c'`` by ``A_{c' -> c}(x')``. For every removal fraction ``f`` the top ``f`` of each image's
pixels (by that map) are replaced with a fill value in the training *and* the test images of the
pair, a fresh binary classifier is trained on the modified training images, and its accuracy on the
modified test images is the ROAR curve's point ``acc(f)``. A map that finds the features the
classes differ by makes ``acc`` fall fast; the same procedure with a random ranking is the baseline
the curve has to beat (without it, ROAR is not interpretable: retraining recovers from random
removal, and some data stay separable long after most pixels are gone).

Summary number (one per pair, averaged over pairs), the *area over the ROAR curve*, normalised
like AOPC (Samek et al., 2017) over the ``T`` points of the fraction grid, ``f_0 = 0`` included::

    AORoarC = 1/T * sum_t (acc(0) - acc(f_t))

It is an unweighted mean over the grid (not a trapezoid over ``f``), so it depends on the grid: use
the same fractions to compare methods. With chance-level accuracy 0.5 for a pair, it is at most
about ``0.5 * (T - 1) / T``.

Retraining is the cost (one training per pair, fraction and ranking): the jobs run in a pool of
processes (``workers``), each training single-threaded and seeded from ``(seed, pair, fraction)``,
so any number of workers gives the same numbers. The pool uses the ``"spawn"`` start method: a
script that calls :func:`roar` with ``workers > 1`` needs the usual ``if __name__ == "__main__":``
guard.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xaisdk.data import Dataset, Split
from xaisdk.errors import InputError
from xaisdk.metrics._common import MetricResult, _plain, as_maps, pixel_saliency
from xaisdk.models.checkpoint import Classifier
from xaisdk.train.classifier import ClassifierTrainingConfig, train_classifier

__all__ = [
    "DEFAULT_FRACTIONS",
    "ROAR_TRAINING",
    "RoarResult",
    "aoroarc",
    "default_pairs",
    "pair_maps",
    "remove_top_pixels",
    "retraining_config",
    "roar",
]

DEFAULT_FRACTIONS: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
"""Removal fractions of the ROAR curve: Hooker et al.'s grid (10%, 30%, 50%, 70%, 90%) plus 0."""

ROAR_TRAINING = ClassifierTrainingConfig(arch="mnist_cnn", epochs=12, batch_size=32, learning_rate=1e-3, max_shift=0)
"""Retraining of one pair classifier: GANMEX's MNIST CNN with 2 outputs, 12 epochs of Adam (lr 1e-3)
in batches of 32 — about 110 steps on the ~290 training images of a digit pair, where test accuracy
on unmodified digits has long reached ~99-100%. ``max_shift=0``: random translation would move the
removed pixels and the fill borders around, so the model would not see the images ROAR defines.
The seed is replaced per job."""

Attribute = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]
"""``attribute(x, source, target) -> maps``: one-vs-one maps (N, C, H, W) or (N, H, W) of images
``x`` (N, C, H, W) float32 for int64 class vectors ``source`` and ``target`` (N,)."""


# --------------------------------------------------------------------------------------- removal


def _removal_count(fraction: float, pixels: int) -> int:
    """Pixels removed at ``fraction``: ``fraction * pixels`` rounded half up."""
    return min(int(math.floor(fraction * pixels + 0.5)), pixels)


def _fill_vector(fill: Any, channels: int) -> np.ndarray:
    array = np.asarray(fill, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(channels, float(array))
    if array.shape != (channels,) or not np.isfinite(array).all():
        raise InputError(f"fill: expected one number or one per channel ({channels}), got {np.shape(fill)}")
    return array.astype(np.float32)


def _remove_ranked(x: np.ndarray, order: np.ndarray, count: int, fill: np.ndarray) -> np.ndarray:
    """Copy of ``x`` (N, C, H, W) whose pixels ``order[:, :count]`` (flat indices) hold ``fill`` (C,)."""
    out = np.array(x, dtype=np.float32, copy=True)
    if count == 0 or len(out) == 0:
        return out
    n, c = out.shape[:2]
    flat = out.reshape(n, c, -1)
    rows = np.arange(n)[:, None]
    flat.transpose(0, 2, 1)[rows, order[:, :count]] = fill
    return out


def _ranking(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices by saliency, highest first, ties by lower index (stable sort)."""
    return np.argsort(-saliency, axis=1, kind="stable").astype(np.int32)


def remove_top_pixels(x: np.ndarray, maps: Any, fraction: float, fill: float | Sequence[float] = 0.0) -> np.ndarray:
    """``x`` (N, C, H, W) with the top ``fraction`` of each image's pixels replaced by ``fill``.

    Pixels are ranked by the signed per-pixel saliency of ``maps`` (N, C, H, W) or (N, H, W): the sum
    over channels (:func:`~xaisdk.metrics._common.pixel_saliency`), highest first; equal saliencies
    are taken in order of the pixel's flat index ``h * W + w`` (lower first). ``round(fraction * H * W)``
    pixels (half up) are removed, in all channels; ``fill`` is one number or one per channel.
    ``x`` is not modified.

    >>> x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)     # 2 channels, 2x2 pixels
    >>> m = np.array([[[1.0, 3.0], [3.0, 0.0]]])                    # pixels 1 and 2 tie at the top
    >>> remove_top_pixels(x, m, 0.25, fill=[-1, -2])[0].tolist()   # 1 of 4 pixels: the tie's first
    [[[0.0, -1.0], [2.0, 3.0]], [[4.0, -2.0], [6.0, 7.0]]]
    """
    images = np.asarray(x)
    if images.ndim != 4:
        raise InputError(f"x: expected images (N, C, H, W), got shape {images.shape}")
    fraction = _check_fractions([fraction])[0]
    saliency = pixel_saliency(as_maps(maps, images, "maps"))
    count = _removal_count(fraction, saliency.shape[1])
    return _remove_ranked(images, _ranking(saliency), count, _fill_vector(fill, images.shape[1]))


# --------------------------------------------------------------------------------------- AORoarC


def aoroarc(accuracy: Any) -> np.ndarray:
    """Area over the ROAR curve of each row of ``accuracy`` (P, T) (or one curve (T,)), whose first
    column is the accuracy at fraction 0: ``mean_t (acc[:, 0] - acc[:, t])`` over all T points.

    >>> aoroarc([[1.0, 0.9, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]]).tolist()
    [0.275, 0.0]
    """
    table = np.asarray(accuracy, dtype=np.float64)
    if table.ndim == 1:
        table = table[None]
    if table.ndim != 2 or table.shape[1] < 1:
        raise InputError(f"accuracy: expected a table (pairs, fractions), got shape {np.shape(accuracy)}")
    return (table[:, :1] - table).mean(axis=1)


# --------------------------------------------------------------------------------------- checks


def _check_fractions(fractions: Any) -> np.ndarray:
    try:
        array = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"fractions: expected numbers in [0, 1), got {fractions!r}") from None
    if array.ndim != 1 or len(array) == 0:
        raise InputError(f"fractions: expected a non-empty 1-D sequence, got shape {array.shape}")
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() >= 1.0:
        raise InputError(f"fractions: expected values in [0, 1) (1 would remove every pixel), got {array.tolist()}")
    if np.any(np.diff(array) <= 0):
        raise InputError(f"fractions: expected strictly increasing values, got {array.tolist()}")
    return array


def default_pairs(num_classes: int) -> tuple[tuple[int, int], ...]:
    """``(0, 1), (2, 3), ...``; with an odd number of classes the last class is in no pair.

    >>> default_pairs(5)
    ((0, 1), (2, 3))
    """
    if num_classes < 2:
        raise InputError(f"ROAR needs at least 2 classes, got {num_classes}")
    return tuple((c, c + 1) for c in range(0, num_classes - 1, 2))


def _check_pairs(pairs: Any, data: Split) -> tuple[tuple[int, int], ...]:
    num_classes = data.train.num_classes
    if pairs is None:
        resolved = default_pairs(num_classes)
    else:
        try:
            items = [tuple(p) for p in pairs]
        except TypeError:
            items = []
        if not items or any(len(p) != 2 or not all(_is_int(c) for c in p) for p in items):
            raise InputError(f"pairs: expected a non-empty sequence of (class, class) integer pairs, got {pairs!r}")
        resolved = tuple((int(a), int(b)) for a, b in items)
    seen: set[int] = set()
    for a, b in resolved:
        for c in (a, b):
            if not 0 <= c < num_classes:
                raise InputError(f"pairs: class {c} of pair ({a}, {b}) is not in [0, {num_classes - 1}]")
        if a == b:
            raise InputError(f"pairs: pair ({a}, {b}) needs two different classes")
        for c in (a, b):
            if c in seen:
                raise InputError(f"pairs: class {c} is in more than one pair; the classes are divided into pairs")
            seen.add(c)
            for part in ("train", "test"):
                if not np.any(getattr(data, part).y == c):
                    raise InputError(f"pairs: class {c} of pair ({a}, {b}) has no images in data.{part}")
    return resolved


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_workers(workers: Any) -> int:
    if workers is None:
        return min(2, os.cpu_count() or 1)
    if not _is_int(workers) or workers < 1:
        raise InputError(f"workers: expected an integer >= 1, got {workers!r}")
    return int(workers)


def _check_chunk_size(chunk_size: Any) -> int:
    if not _is_int(chunk_size) or chunk_size < 1:
        raise InputError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    return int(chunk_size)


def _resolve_fill(fill: Any, train: Dataset) -> np.ndarray:
    channels = train.input_shape[0]
    if isinstance(fill, str):
        if fill == "mean":
            return train.x.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        if fill == "zero":
            return np.zeros(channels, np.float32)
        raise InputError(f"fill: expected 'mean', 'zero', a number or one number per channel, got {fill!r}")
    vector = _fill_vector(fill, channels)
    if vector.min() < 0.0 or vector.max() > 1.0:
        raise InputError(f"fill: images are in [0, 1], so the fill value must be too, got {vector.tolist()}")
    return vector


# --------------------------------------------------------------------------------------- maps


def _partners(y: np.ndarray, pairs: tuple[tuple[int, int], ...], num_classes: int) -> np.ndarray:
    """The other class of each label's pair; -1 for classes in no pair."""
    partner = np.full(num_classes, -1, np.int64)
    for a, b in pairs:
        partner[a], partner[b] = b, a
    return partner[y]


def pair_maps(
    data: Split,
    attribute: Attribute,
    pairs: Sequence[tuple[int, int]] | None = None,
    *,
    chunk_size: int = 128,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The one-vs-one maps ROAR ranks pixels by, for ``data.train`` and ``data.test``: float32, shaped
    like the images (or (N, 1, H, W) when ``attribute`` gives (N, H, W) maps), row for row.

    An image of class ``c`` in pair ``(c, c')`` gets ``attribute(x, c, c')``; images of classes in no
    pair get zero maps (ROAR never reads them). ``attribute`` runs on chunks of ``chunk_size`` images,
    once per image, with a progress bar. Pass the result to :func:`roar` as ``maps`` to reuse it.

    >>> x = np.zeros((4, 1, 8, 8), np.float32); y = np.array([0, 1, 0, 1])
    >>> part = Dataset(x, y, ("a", "b"), "toy")
    >>> train_maps, test_maps = pair_maps(Split(part, part), lambda x, s, t: x[:, 0] + s[:, None, None], progress=False)
    >>> train_maps.shape, train_maps[:, 0, 0, 0].tolist()
    ((4, 1, 8, 8), [0.0, 1.0, 0.0, 1.0])
    """
    if not isinstance(data, Split):
        raise InputError(f"data: expected a xaisdk.data.Split, got {type(data).__name__}")
    if not callable(attribute):
        raise InputError(f"attribute: expected a callable attribute(x, source, target) -> maps, got {attribute!r}")
    resolved = _check_pairs(pairs, data)
    chunk_size = _check_chunk_size(chunk_size)
    parts = (data.train, data.test)
    rows = [np.flatnonzero(_partners(part.y, resolved, part.num_classes) >= 0) for part in parts]
    total = sum(math.ceil(len(r) / chunk_size) for r in rows)
    bar = tqdm(total=total, desc="ROAR maps", unit="chunk", disable=not progress)
    out = []
    try:
        for part, index in zip(parts, rows):
            maps: np.ndarray | None = None
            partner = _partners(part.y, resolved, part.num_classes)
            for start in range(0, len(index), chunk_size):
                sel = index[start:start + chunk_size]
                x = np.ascontiguousarray(part.x[sel])
                got = as_maps(attribute(x, part.y[sel].copy(), partner[sel].copy()), x, "attribute(x, source, target)")
                if maps is None:
                    maps = np.zeros((len(part), got.shape[1], *part.input_shape[1:]), np.float32)
                elif got.shape[1] != maps.shape[1]:
                    raise InputError("attribute(x, source, target): returned maps with a varying number of channels")
                maps[sel] = got
                bar.update(1)
            out.append(maps if maps is not None else np.zeros((len(part), 1, *part.input_shape[1:]), np.float32))
    finally:
        bar.close()
    return out[0], out[1]


# --------------------------------------------------------------------------------------- retraining


@dataclass(frozen=True)
class _Job:
    """One retraining: a pair's images, their pixel rankings and what to remove. Module-level and
    made of arrays, so it pickles to the worker processes (the arrays of a pair are shared objects
    in the parent; each job pickles about 1.5x the pair's images)."""

    key: tuple[int, str, int]
    x_train: np.ndarray
    y_train: np.ndarray
    order_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    order_test: np.ndarray
    count: int
    fill: np.ndarray
    class_names: tuple[str, str]
    config: ClassifierTrainingConfig


def _run_job(job: _Job) -> tuple[tuple[int, str, int], float]:
    """Train the pair classifier on the modified training images; its accuracy on the modified test images."""
    train = Dataset(_remove_ranked(job.x_train, job.order_train, job.count, job.fill), job.y_train,
                    job.class_names, "roar")
    test = Dataset(_remove_ranked(job.x_test, job.order_test, job.count, job.fill), job.y_test,
                   job.class_names, "roar")
    _, history = train_classifier(Split(train, test), job.config, progress=False)
    return job.key, float(history["test_accuracy"])


def _init_worker() -> None:
    torch.set_num_threads(1)


def _job_seed(seed: int, pair: tuple[int, int], fraction: float) -> int:
    """Training seed of (seed, pair, fraction); both rankings share it, so they differ only in what is removed."""
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, pair[0], pair[1], int(round(fraction * 1e9))]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def retraining_config(classifier: Classifier | None = None, **overrides: Any) -> ClassifierTrainingConfig:
    """:data:`ROAR_TRAINING`, with the architecture (and its options) of ``classifier`` when given,
    and any field of :class:`~xaisdk.train.classifier.ClassifierTrainingConfig` overridden.

    The input shape and the number of classes (2) come from the data, never from ``classifier``.

    >>> retraining_config(epochs=3).epochs, retraining_config().arch
    (3, 'mnist_cnn')
    """
    config = replace(ROAR_TRAINING, arch_config=dict(ROAR_TRAINING.arch_config))
    if classifier is not None:
        arch_config = {k: v for k, v in classifier.config.items() if k not in ("in_channels", "image_size", "num_classes")}
        config = replace(config, arch=classifier.arch, arch_config=arch_config)
    try:
        config = replace(config, **overrides)
    except TypeError as err:
        raise InputError(f"retraining_config: {err}") from None
    config.validate()
    return config


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> dict[tuple[int, str, int], float]:
    results: dict[tuple[int, str, int], float] = {}
    bar = tqdm(total=len(jobs), desc="ROAR retrain", unit="model", disable=not progress)
    try:
        if workers == 1 or len(jobs) <= 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as in the workers: same arithmetic, same numbers
            try:
                for job in jobs:
                    key, acc = _run_job(job)
                    results[key] = acc
                    bar.update(1)
            finally:
                torch.set_num_threads(threads)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn"),
                                     initializer=_init_worker) as pool:
                futures = [pool.submit(_run_job, job) for job in jobs]
                try:
                    for future in as_completed(futures):
                        key, acc = future.result()
                        results[key] = acc
                        bar.update(1)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return results


# --------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class RoarResult:
    """ROAR of one set of maps.

    ``accuracy`` (P, T): test accuracy of the pair classifier retrained with ``fractions[t]`` of the
    pixels removed by the maps' ranking, pair ``pairs[p]``; ``random_accuracy`` the same with a
    random ranking (None when not asked for). ``aoroarc`` / ``random_aoroarc`` are
    :class:`~xaisdk.metrics._common.MetricResult` with ``per_sample`` = AORoarC per pair, ``curve`` =
    the accuracy table and ``steps`` = ``fractions`` (so ``mean_curve()`` is the mean ROAR curve).
    ``details`` records the options (fill values, removed pixel counts, training config, seed).
    """

    fractions: np.ndarray
    pairs: tuple[tuple[int, int], ...]
    accuracy: np.ndarray
    random_accuracy: np.ndarray | None
    aoroarc: MetricResult
    random_aoroarc: MetricResult | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def excess(self) -> float:
        """Mean AORoarC minus the random ranking's (NaN without the random baseline): > 0 means the
        maps remove more of what the classes differ by than random pixels do."""
        return float("nan") if self.random_aoroarc is None else self.aoroarc.mean - self.random_aoroarc.mean

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: fractions, pairs, both accuracy tables, AORoarC per pair / mean / std, excess."""
        def summary(result: MetricResult | None, table: np.ndarray | None) -> dict[str, Any] | None:
            if result is None or table is None:
                return None
            out = result.to_dict(per_sample=True)
            out["accuracy"] = _plain(table)
            return out

        return _plain({
            "name": "roar",
            "fractions": self.fractions,
            "pairs": [list(p) for p in self.pairs],
            "aoroarc": summary(self.aoroarc, self.accuracy),
            "random": summary(self.random_aoroarc, self.random_accuracy),
            "excess": self.excess,
            "details": self.details,
        })


# --------------------------------------------------------------------------------------- ROAR


def roar(
    data: Split,
    attribute: Attribute | None = None,
    *,
    maps: tuple[Any, Any] | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    fill: str | float | Sequence[float] = "mean",
    training: ClassifierTrainingConfig | None = None,
    random_baseline: bool = True,
    workers: int | None = None,
    seed: int = 0,
    chunk_size: int = 128,
    progress: bool = True,
) -> RoarResult:
    """ROAR of one-vs-one maps on ``data`` (see the module docstring).

    Maps: either ``attribute(x, source, target)`` (evaluated once per train and test image of the
    pair classes, on the model being explained, via :func:`pair_maps`) or ``maps=(train_maps,
    test_maps)`` precomputed and aligned row for row with ``data.train`` / ``data.test``, each row the
    map of its image's label towards the other class of its pair.

    - ``pairs``: disjoint class pairs, default :func:`default_pairs` ((0, 1), (2, 3), ...).
    - ``fractions``: strictly increasing in [0, 1), default :data:`DEFAULT_FRACTIONS`; 0 is added
      in front when missing (the curve is measured against ``acc(0)``). ``round(f * H * W)`` pixels
      (half up) are removed, ranked as in :func:`remove_top_pixels`.
    - ``fill``: ``"mean"`` (per-channel mean of all training images, as Hooker et al.), ``"zero"``,
      or a number / one per channel in [0, 1].
    - ``training``: the pair classifiers' config, default :func:`retraining_config` (use
      ``retraining_config(classifier)`` for the explained model's architecture); its seed is
      replaced by one derived from ``(seed, pair, fraction)``, shared by both rankings.
    - ``random_baseline``: also run a random ranking (one random pixel order per image, seeded by
      ``seed``, nested over the fractions). Fraction 0 is trained once per pair for both.
    - ``workers``: processes for the retraining jobs (default ``min(2, os.cpu_count())``); 1 runs
      in this process. Every training is single-threaded, so the numbers do not depend on it.

    >>> import numpy as np
    >>> from xaisdk.data import load_digits
    >>> split = load_digits(size=8)
    >>> def ink(x, source, target):                # a map that ranks the brightest pixels first
    ...     return x
    >>> res = roar(split, ink, pairs=[(0, 1)], fractions=(0.0, 0.5), random_baseline=False,
    ...            training=retraining_config(epochs=2, arch_config={"channels": (4, 8), "hidden": 16}),
    ...            workers=1, progress=False)
    >>> res.accuracy.shape, res.aoroarc.per_sample.shape
    ((1, 2), (1,))
    """
    if not isinstance(data, Split):
        raise InputError(f"data: expected a xaisdk.data.Split, got {type(data).__name__}")
    if (attribute is None) == (maps is None):
        raise InputError("give either attribute (a callable) or maps=(train_maps, test_maps), not both or neither")
    resolved = _check_pairs(pairs, data)
    grid = _check_fractions(fractions)
    if grid[0] != 0.0:
        grid = np.concatenate([[0.0], grid])
    workers = _check_workers(workers)
    if not _is_int(seed) or seed < 0:
        raise InputError(f"seed: expected an integer >= 0, got {seed!r}")
    if training is None:
        training = retraining_config()
    elif not isinstance(training, ClassifierTrainingConfig):
        raise InputError(f"training: expected a ClassifierTrainingConfig, got {type(training).__name__}")
    training.validate()
    fill_vector = _resolve_fill(fill, data.train)
    parts = (data.train, data.test)

    if attribute is not None:
        all_maps = pair_maps(data, attribute, resolved, chunk_size=chunk_size, progress=progress)
    else:
        if not isinstance(maps, (tuple, list)) or len(maps) != 2:
            raise InputError("maps: expected a pair (train_maps, test_maps)")
        all_maps = tuple(as_maps(m, part.x, f"maps[{i}] ({name})")
                         for i, (m, part, name) in enumerate(zip(maps, parts, ("train", "test"))))

    pixels = int(np.prod(data.train.input_shape[1:]))
    counts = [_removal_count(f, pixels) for f in grid]
    rankings = ("attribution", "random") if random_baseline else ("attribution",)
    jobs: list[_Job] = []
    for p, pair in enumerate(resolved):
        arrays: dict[str, list[np.ndarray]] = {"x": [], "y": [], "attribution": [], "random": []}
        for i, part in enumerate(parts):
            index = np.flatnonzero(np.isin(part.y, pair))
            arrays["x"].append(np.ascontiguousarray(part.x[index]))
            arrays["y"].append((part.y[index] == pair[1]).astype(np.int64))
            saliency = pixel_saliency(np.asarray(all_maps[i][index], dtype=np.float64))
            arrays["attribution"].append(_ranking(saliency))
            if random_baseline:
                rng = np.random.default_rng([seed, pair[0], pair[1], i])
                arrays["random"].append(_ranking(rng.random(saliency.shape)))
        names = (data.train.class_names[pair[0]], data.train.class_names[pair[1]])
        for t, (fraction, count) in enumerate(zip(grid, counts)):
            config = replace(training, seed=_job_seed(seed, pair, float(fraction)))
            for ranking in (("none",) if count == 0 else rankings):
                order = arrays["attribution" if ranking == "none" else ranking]
                jobs.append(_Job((p, ranking, t), arrays["x"][0], arrays["y"][0], order[0], arrays["x"][1],
                                 arrays["y"][1], order[1], count, fill_vector, names, config))

    results = _run_jobs(jobs, workers, progress)

    def table(ranking: str) -> np.ndarray:
        out = np.empty((len(resolved), len(grid)))
        for p in range(len(resolved)):
            for t, count in enumerate(counts):
                out[p, t] = results[(p, "none" if count == 0 else ranking, t)]
        return out

    details = {
        "fill": fill if isinstance(fill, str) else "value",
        "fill_value": fill_vector,
        "removed_pixels": counts,
        "pixels": pixels,
        "seed": seed,
        "training": {"arch": training.arch, "epochs": training.epochs, "batch_size": training.batch_size,
                     "learning_rate": training.learning_rate, "weight_decay": training.weight_decay,
                     "max_shift": training.max_shift, "arch_config": dict(training.arch_config)},
        "train_sizes": [int(np.isin(data.train.y, pair).sum()) for pair in resolved],
        "test_sizes": [int(np.isin(data.test.y, pair).sum()) for pair in resolved],
        "normalization": "AORoarC = mean over all fractions (0 included) of acc(0) - acc(f)",
    }

    def metric(name: str, accuracy: np.ndarray) -> MetricResult:
        return MetricResult(name, aoroarc(accuracy), curve=accuracy, steps=grid.copy(),
                            details={"pairs": [list(p) for p in resolved]})

    accuracy = table("attribution")
    random_accuracy = table("random") if random_baseline else None
    return RoarResult(
        fractions=grid,
        pairs=resolved,
        accuracy=accuracy,
        random_accuracy=random_accuracy,
        aoroarc=metric("aoroarc", accuracy),
        random_aoroarc=None if random_accuracy is None else metric("aoroarc_random", random_accuracy),
        details=details,
    )
