"""Shared plumbing of the feature-removal attributions (sliding patch, LIME, meaningful perturbation).

Three pieces, used by :mod:`~xaisdk.attribution.sliding_patch`, :mod:`~xaisdk.attribution.lime` and
:mod:`~xaisdk.attribution.meaningful_perturbation`:

- :class:`Score`, the attributed score ``s`` of each input computed from its logits.
  ``output="probability"`` (the default) is the paper's ``s``, a probability: the softmax
  probability of the source class for one-vs-all rows (``weights = e_source``) and, for one-vs-one
  rows (``e_source - e_target``), ``sigmoid(S_source - S_target) = p_source / (p_source + p_target)``,
  the source's probability in a two-way contest with the target. ``output="logits"`` is the weighted
  logit score ``sum_k weights[k] * logits[k]`` (any weight rows).
- :class:`Remover`, which builds perturbed images ``x * (1 - mask) + fill * mask`` for many masks at
  once: the classic fillers' images (:func:`~xaisdk.runtime.inpainting.filler_images`) are made once
  per input, ``filler="inpaint"`` asks the inpainter for a whole chunk of masks in one call.
- :func:`removal_scores`, which scores many perturbed images per input through ``backend.logits`` in
  chunks of ``chunk_size`` rows: one backend call (and at most one inpainter call) per chunk.

This module imports numpy only.

>>> import numpy as np
>>> Score(np.array([[1.0, 0.0, 0.0], [1.0, -1.0, 0.0]], np.float32), "probability").kind
'probability'
>>> score = Score(np.array([[1.0, -1.0, 0.0]], np.float32), "probability")
>>> round(float(score(np.array([[2.0, 0.0, 5.0]], np.float32), np.array([0]))[0]), 4)  # sigmoid(2)
0.8808
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import numpy as np

from xaisdk.errors import InputError
from xaisdk.limits import check_size
from xaisdk.methods.common import chunks
from xaisdk.runtime.backend import Backend
from xaisdk.runtime.inpainting import FILLERS, Inpainter, composite, filler_images

__all__ = [
    "OUTPUTS",
    "Remover",
    "Score",
    "check_filler",
    "check_number",
    "check_positive_int",
    "input_scores",
    "log_odds_and_gradient",
    "progress_bar",
    "removal_scores",
    "score_and_gradient",
]

OUTPUTS = ("probability", "logits")
_T = TypeVar("_T")


# --- argument checks ----------------------------------------------------------------------------


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else :class:`~xaisdk.InputError` naming ``name``; options
    that :class:`~xaisdk.limits.Limits` bounds (``steps``, ``n_samples``, ``n_segments``, ``n_jitter``)
    are capped here too, so direct calls obey the same limits as the Explainer.

    >>> check_positive_int(3, "stride")
    3
    """
    return check_size(value, name, minimum=minimum)


def check_number(value: object, name: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    """``value`` as a finite float >= ``minimum`` (> when ``strict``), else :class:`~xaisdk.InputError`.

    >>> check_number(0.5, "lr", strict=True)
    0.5
    """
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        number = float(value)  # type: ignore[arg-type]
        ok = bool(np.isfinite(number)) and (number > minimum if strict else number >= minimum)
    if not ok:
        raise InputError(f"{name}: expected a finite number {'>' if strict else '>='} {minimum}, got {value!r}")
    return number


def check_filler(filler: object, inpainter: object) -> str:
    """``filler`` checked against :data:`~xaisdk.runtime.inpainting.FILLERS`; ``"inpaint"`` needs an
    :class:`~xaisdk.runtime.inpainting.Inpainter`.

    >>> check_filler("blur", None)
    'blur'
    """
    if not isinstance(filler, str) or filler not in FILLERS:
        raise InputError(f"filler: unknown {filler!r}; expected one of {', '.join(FILLERS)}")
    if filler == "inpaint" and not isinstance(inpainter, Inpainter):
        got = "none" if inpainter is None else type(inpainter).__name__
        raise InputError(f"inpainter: filler 'inpaint' needs an Inpainter (an object with inpaint(x, mask), e.g. "
                         f"xaisdk.models.inpainter.LearnedInpainter or OpenCVInpainter), got {got}")
    return filler


def progress_bar(pieces: Sequence[_T], desc: str, progress: bool, unit: str = "chunk") -> Iterable[_T]:
    """``pieces``, under a tqdm bar when ``progress`` and there is more than one.

    >>> list(progress_bar([1, 2], "x", False))
    [1, 2]
    """
    if not progress or len(pieces) < 2:
        return pieces
    from tqdm.auto import tqdm

    return tqdm(pieces, desc=desc, unit=unit)


# --- the attributed score -----------------------------------------------------------------------


class Score:
    """The attributed score ``s`` of each input, from its logits (see the module docstring).

    ``weights`` (N, K) are the checked class-weight rows; ``output`` is ``"probability"`` or
    ``"logits"``. For ``"probability"`` every row must be ``e_source`` (one-vs-all) or
    ``e_source - e_target`` (one-vs-one), as :func:`~xaisdk.runtime.backend.class_weights` makes them.
    Call it with logits and, per logit row, the index of its input.

    >>> score = Score(np.array([[0.0, 1.0]], np.float32), "probability")
    >>> [round(v, 4) for v in score(np.array([[0.0, 0.0], [0.0, 1.0]], np.float32), np.array([0, 0])).tolist()]
    [0.5, 0.7311]
    """

    def __init__(self, weights: np.ndarray, output: str) -> None:
        if not isinstance(output, str) or output not in OUTPUTS:
            raise InputError(f"output: unknown {output!r}; expected one of {', '.join(OUTPUTS)}")
        self.kind = output
        self.weights = np.asarray(weights, np.float32)
        n, k = self.weights.shape
        self.source = np.full(n, -1, np.int64)
        self.target = np.full(n, -1, np.int64)  # -1: one-vs-all
        if output == "probability":
            plus, minus = self.weights == 1, self.weights == -1
            valid = (plus.sum(1) == 1) & (minus.sum(1) <= 1) & ((plus | minus | (self.weights == 0)).all(1))
            if not valid.all():
                bad = int(np.flatnonzero(~valid)[0])
                raise InputError(f"weights: output='probability' needs rows e_source (one-vs-all) or e_source - e_target "
                                 f"(one-vs-one) from xaisdk.runtime.backend.class_weights; row {bad} is "
                                 f"{self.weights[bad].tolist()} (use output='logits' for other weights)")
            self.source = plus.argmax(1)
            self.target = np.where(minus.any(1), minus.argmax(1), -1)

    def __call__(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores (len(rows),) float64 of logit rows whose inputs are ``rows``."""
        z = np.asarray(logits, np.float64)
        weighted = (z * self.weights[rows]).sum(1)
        if self.kind == "logits":
            return weighted
        pairwise = self.target[rows] >= 0
        out = np.empty(len(z))
        out[pairwise] = _sigmoid(weighted[pairwise])
        alone = ~pairwise
        if alone.any():
            za = z[alone]
            top = za.max(1, keepdims=True)
            log_sum = np.log(np.exp(za - top).sum(1)) + top[:, 0]
            out[alone] = np.exp(za[np.arange(len(za)), self.source[rows][alone]] - log_sum)
        return out

    def log_odds(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``t = log(s / (1 - s))`` (float64 (len(rows),)) of probability scores, computed from the logits
        so that it stays exact where ``s`` rounds to 0 or 1: ``S_source - S_target`` one-vs-one,
        ``z_source - logsumexp_(k != source) z_k`` one-vs-all.

        >>> score = Score(np.array([[1.0, 0.0, 0.0]], np.float32), "probability")
        >>> float(score(np.array([[60.0, 0.0, 0.0]], np.float32), np.array([0]))[0])   # saturated
        1.0
        >>> round(float(score.log_odds(np.array([[60.0, 0.0, 0.0]], np.float32), np.array([0]))[0]), 4)  # 60 - log 2
        59.3069
        """
        self._need_probability("log_odds")
        z = np.asarray(logits, np.float64)
        out = (z * self.weights[rows]).sum(1)
        alone = self.target[rows] < 0
        if alone.any():
            out[alone] = z[alone, self.source[rows][alone]] - _logsumexp_others(z[alone], self.source[rows][alone])
        return out

    def log_odds_gradient(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``dt/dlogits`` (len(rows), K) float32 of :meth:`log_odds`: the weight row one-vs-one,
        ``e_source - q`` one-vs-all (``q`` the softmax over the other classes, 0 at the source).

        >>> score = Score(np.array([[1.0, 0.0, 0.0]], np.float32), "probability")
        >>> score.log_odds_gradient(np.zeros((1, 3), np.float32), np.array([0])).tolist()
        [[1.0, -0.5, -0.5]]
        """
        self._need_probability("log_odds_gradient")
        out = self.weights[rows].astype(np.float64)
        alone = self.target[rows] < 0
        if alone.any():
            z = np.asarray(logits, np.float64)[alone]
            source = self.source[rows][alone]
            others = z.copy()
            others[np.arange(len(z)), source] = -np.inf
            q = np.exp(others - others.max(1, keepdims=True))
            out[alone] = self.weights[rows][alone] - q / q.sum(1, keepdims=True)
        return out.astype(np.float32)

    def raw(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """What :meth:`drop` takes (float64): :meth:`log_odds` for probabilities, ``s`` for logits."""
        return self.log_odds(logits, rows) if self.kind == "probability" else self(logits, rows)

    def drop(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """``s(before) - s(after)`` of :meth:`raw` values, float64 with full relative precision.

        Probabilities of a confident classifier round to 1 in float64 once the log-odds pass ~37 (a
        one-vs-one margin of 50 is common between a digit and an unlike class), so subtracting ``s``
        values would return exact zeros; the difference of two sigmoids is computed from the
        log-odds instead.

        >>> score = Score(np.array([[1.0, -1.0]], np.float32), "probability")
        >>> print(f"{score.drop(np.array([50.0]), np.array([49.0]))[0]:.4g}")   # e^-49 - e^-50, not 0
        3.314e-22
        """
        a, b = np.broadcast_arrays(np.asarray(before, np.float64), np.asarray(after, np.float64))
        if self.kind == "logits":
            return a - b
        return _sigmoid_difference(a, b)

    def _need_probability(self, what: str) -> None:
        if self.kind != "probability":
            raise InputError(f"output: {what} is defined for output='probability', not {self.kind!r}")

    def logit_gradient(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``ds/dlogits`` (len(rows), K) float32: weight rows whose weighted-logit gradient is the gradient of ``s``.

        >>> score = Score(np.array([[1.0, 0.0]], np.float32), "probability")
        >>> score.logit_gradient(np.zeros((1, 2), np.float32), np.array([0])).tolist()  # p(1 - p), -p p
        [[0.25, -0.25]]
        """
        w = self.weights[rows].astype(np.float64)
        if self.kind == "logits":
            return w.astype(np.float32)
        s = self(logits, rows)
        pairwise = self.target[rows] >= 0
        out = np.empty_like(w)
        out[pairwise] = (s * (1 - s))[pairwise, None] * w[pairwise]  # d sigmoid(w.z) / dz
        alone = ~pairwise
        if alone.any():
            z = np.asarray(logits, np.float64)[alone]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            out[alone] = s[alone, None] * (w[alone] - p)  # d p_s / dz = p_s (e_s - p)
        return out.astype(np.float32)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -t))


def _logsumexp_others(z: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """``logsumexp`` of each row of ``z`` (float64 (B, K)) without its column ``skip[b]``."""
    others = z.copy()
    others[np.arange(len(z)), skip] = -np.inf
    top = others.max(1)
    return np.log(np.exp(others - top[:, None]).sum(1)) + top


def _log_cosh(u: np.ndarray) -> np.ndarray:
    u = np.abs(u)
    return u + np.log1p(np.exp(-2 * u)) - np.log(2.0)


def _sigmoid_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sigmoid(a) - sigmoid(b)`` with full relative precision for any finite log-odds:
    ``sinh((a - b) / 2) / (2 cosh(a / 2) cosh(b / 2))``, evaluated in logs."""
    half = np.abs(a - b) / 2
    with np.errstate(divide="ignore"):  # a == b: log(0) = -inf, exp(-inf) = 0
        log_sinh = half + np.log(-np.expm1(-2 * half)) - np.log(2.0)
    return np.sign(a - b) * np.exp(log_sinh - np.log(2.0) - _log_cosh(a / 2) - _log_cosh(b / 2))


def log_odds_and_gradient(backend: Backend, images: np.ndarray, rows: np.ndarray,
                          score: Score) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`Score.log_odds` of each image (float64 (B,)) and its gradient w.r.t. the image (float32).

    One ``backend.score_gradient`` call (the weighted logit score is the log-odds one-vs-one), plus
    one ``backend.logits`` call first for one-vs-all rows. Unlike the probability, its gradient does
    not vanish on a confident classifier.

    >>> from xaisdk.methods.drivers import _LinearBackend
    >>> backend = _LinearBackend(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> t, g = log_odds_and_gradient(backend, np.array([[[[30.0, 0.0]]]], np.float32), np.array([0]),
    ...                              Score(np.array([[1.0, -1.0]], np.float32), "probability"))
    >>> t.tolist(), g.ravel().tolist()
    ([30.0], [1.0, -1.0])
    """
    if (score.target[rows] < 0).any():
        logits = np.asarray(backend.logits(images), np.float32)
        _, grads = backend.score_gradient(images, score.log_odds_gradient(logits, rows))
        return score.log_odds(logits, rows), np.asarray(grads, np.float32)
    weighted, grads = backend.score_gradient(images, score.weights[rows])
    return np.asarray(weighted, np.float64), np.asarray(grads, np.float32)


def score_and_gradient(backend: Backend, images: np.ndarray, rows: np.ndarray, score: Score) -> tuple[np.ndarray, np.ndarray]:
    """``s`` of each image (float64 (B,)) and its gradient w.r.t. the image (float32, like ``images``).

    One ``backend.score_gradient`` call, plus one ``backend.logits`` call first for one-vs-all
    probabilities (the softmax needs every logit; the other scores are a function of the weighted
    logit score alone, so its gradient is rescaled instead).

    >>> from xaisdk.methods.drivers import _LinearBackend
    >>> backend = _LinearBackend(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> s, g = score_and_gradient(backend, np.zeros((1, 1, 1, 2), np.float32), np.array([0]),
    ...                           Score(np.array([[1.0, -1.0]], np.float32), "probability"))
    >>> s.tolist(), g.ravel().tolist()
    ([0.5], [0.25, -0.25])
    """
    if score.kind == "probability" and (score.target[rows] < 0).any():
        logits = np.asarray(backend.logits(images), np.float32)
        weighted, grads = backend.score_gradient(images, score.logit_gradient(logits, rows))
        return score(logits, rows), np.asarray(grads, np.float32)
    weighted, grads = backend.score_gradient(images, score.weights[rows])
    weighted = np.asarray(weighted, np.float64)
    grads = np.asarray(grads, np.float32)
    if score.kind == "logits":
        return weighted, grads
    s = _sigmoid(weighted)
    return s, grads * (s * (1 - s)).astype(np.float32).reshape((-1,) + (1,) * (grads.ndim - 1))


# --- perturbed images and their scores ----------------------------------------------------------


class Remover:
    """Builds perturbed images: ``x[n]`` with the pixels of a mask replaced by the filler.

    Classic fillers (``"gray"``, ``"zero"``, ``"blur"``, ``"noise"``) make one filler image per input
    here (``"noise"``: one seeded noise image per input, shared by all of its masks, so that every
    perturbed sample of an input is a deterministic function of its mask). ``"inpaint"`` calls
    ``inpainter.inpaint`` once per call of this object, on all of its masks together.

    >>> remover = Remover(np.ones((1, 1, 1, 2), np.float32), "zero", None, value_range=(0.0, 1.0))
    >>> remover(np.array([0, 0]), np.array([[[[1.0, 0.0]]], [[[0.0, 1.0]]]], np.float32)).reshape(2, 2).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """

    def __init__(self, x: np.ndarray, filler: str, inpainter: Inpainter | None, *, value_range: tuple[float, float],
                 blur_sigma: float | None = None, seed: int = 0) -> None:
        self.x = x
        self.filler = check_filler(filler, inpainter)
        self.inpainter = inpainter
        self.fill = None if filler == "inpaint" else filler_images(x, filler, value_range=value_range,
                                                                   blur_sigma=blur_sigma, seed=seed)

    def fills(self, sample: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """The filler images of ``x[sample]`` for binary ``masks`` (B, 1, H, W)."""
        if self.fill is not None:
            return self.fill[sample]
        images = self.x[sample]
        fill = np.asarray(self.inpainter.inpaint(images, masks), np.float32)  # type: ignore[union-attr]
        if fill.shape != images.shape:
            raise InputError(f"inpainter {getattr(self.inpainter, 'name', '?')!r} returned shape {fill.shape} "
                             f"for images {images.shape}")
        return fill

    def __call__(self, sample: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``x[sample]`` with ``masks`` (B, 1, H, W; 1 = remove) filled."""
        return composite(self.x[sample], self.fills(sample, masks), masks)


MaskFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``make_masks(sample, index)`` -> float32 0/1 masks (B, 1, H, W) of the perturbations ``index`` of inputs ``sample``."""


def removal_scores(backend: Backend, remover: Remover, score: Score, per_input: int, make_masks: MaskFn, *,
                   chunk_size: int, progress: bool = False, desc: str = "removal", raw: bool = False) -> np.ndarray:
    """``s`` of every perturbed image, float64 (N, per_input): perturbation ``j`` of input ``n`` removes
    ``make_masks([n], [j])``. The N * per_input images go through the backend ``chunk_size`` at a
    time (one ``logits`` call and, for ``"inpaint"``, one ``inpaint`` call per chunk); masks and
    images exist one chunk at a time. ``raw`` returns :meth:`Score.raw` values instead (for
    :meth:`Score.drop`, which keeps the differences of saturated probabilities).

    >>> from xaisdk.methods.drivers import _LinearBackend
    >>> backend = _LinearBackend(np.array([[1.0, 2.0], [0.0, 0.0]]))
    >>> x = np.ones((1, 1, 1, 2), np.float32)
    >>> masks = lambda sample, j: np.eye(2, dtype=np.float32)[j].reshape(-1, 1, 1, 2)
    >>> removal_scores(backend, Remover(x, "zero", None, value_range=(0.0, 1.0)),
    ...                Score(np.array([[1.0, 0.0]], np.float32), "logits"), 2, masks, chunk_size=1).tolist()
    [[2.0, 1.0]]
    """
    n = len(remover.x)
    out = np.empty(n * per_input)
    for sl in progress_bar(list(chunks(n * per_input, chunk_size)), desc, progress):
        sample, index = np.divmod(np.arange(sl.start, sl.stop), per_input)
        perturbed = remover(sample, make_masks(sample, index))
        out[sl] = (score.raw if raw else score)(np.asarray(backend.logits(perturbed), np.float32), sample)
    return out.reshape(n, per_input)


def input_scores(backend: Backend, x: np.ndarray, score: Score, chunk_size: int, raw: bool = False) -> np.ndarray:
    """``s(x[n])`` of the unperturbed inputs, float64 (N,) (:meth:`Score.raw` values when ``raw``).

    >>> from xaisdk.methods.drivers import _LinearBackend
    >>> input_scores(_LinearBackend(np.array([[1.0, 2.0]])), np.ones((1, 1, 1, 2), np.float32),
    ...              Score(np.array([[1.0]], np.float32), "logits"), 8).tolist()
    [3.0]
    """
    out = np.empty(len(x))
    for sl in chunks(len(x), chunk_size):
        out[sl] = (score.raw if raw else score)(np.asarray(backend.logits(x[sl]), np.float32), np.arange(sl.start, sl.stop))
    return out
