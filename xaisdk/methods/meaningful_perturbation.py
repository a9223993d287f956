"""Meaningful perturbation (Fong & Vedaldi 2017; MP and MP-G of Agarwal & Nguyen, Sec. 3.5), against a Backend.

MP learns, per image, the smallest smooth region whose removal destroys the score (the *deletion*
game). A small mask ``m`` (``mask_size``, values in [0, 1], 1 = removed) is upsampled bilinearly to
the image, ``M = up(m)``, and mixes the image with a filler ``f``: ``x~ = x * (1 - M) + f * M``.
Adam minimises, for each image independently,

    l1 * mean(m) + tv * TV_beta(m) + mean_tau phi(shift_tau(x~))

where ``TV_beta(m)`` is the mean of ``|m[i+1, j] - m[i, j]|^beta`` plus the mean of
``|m[i, j+1] - m[i, j]|^beta``, ``shift_tau`` translates the image by ``tau = (dy, dx)`` pixels
(``0 <= dy, dx <= jitter``; the vacated border repeats the edge pixels) and ``s`` is the
attributed score of :class:`~xaisdk.methods.removal.Score`; after each step ``m`` is clipped to
[0, 1]. The attribution map is ``M``: large where removing the pixels lowers ``s``.

``phi`` is what the deletion game minimises (``objective``). The paper's ``phi = s``, the probability,
saturates on a confident classifier: at a log-odds of 15 (a typical digit) its gradient is 3e-7, the
L1 term wins every cell and the mask collapses to nothing (on the shipped digits, MP and MP-G gave
all-zero maps for most test digits). The log-probability ``log s`` saturates the same way (its
gradient is ``1 - s``). The default ``objective="nonsaturating"`` minimises
``phi = -log(1 - s(x~)) / -log(1 - s(x))`` instead: ``softplus(t) / softplus(t(x))`` of the
log-odds ``t`` (:meth:`~xaisdk.methods.removal.Score.log_odds`; one-vs-one, ``t`` is the logit
margin ``S_source - S_target`` that every other method attributes). While the source wins, ``phi`` is
the margin in units of the input's margin, so its gradient does not vanish; once the removal flips the
decision it decays like ``s`` does, so removing more than needed earns nothing, as in the paper's
game. Dividing by the input's value makes ``phi(x) = 1`` for every input, so the paper's L1 and TV
weights keep their meaning (a fraction of the evidence to remove) on any classifier, confident or not.
``objective="score"`` is the paper's ``phi = s`` (and ``output="logits"`` always minimises the
weighted logit score itself).

The gradient is assembled by hand from the backend's input gradient ``ds/dx``
(``backend.score_gradient``; for probabilities the class weights are the gradient of ``s`` w.r.t.
the logits at the current logits, so the weighted-logit gradient is the probability's gradient):
the adjoint of the shift, of the composite (``sum over channels of (f - x) * ds/dx~``) and of the
bilinear upsampling (its transposed matrix). All images and all jitter copies of a step go through
one backend call (chunks of ``chunk_size`` rows when there are more); one-vs-all probabilities
need one ``logits`` call before it.

``filler="blur"`` is MP; ``filler="inpaint"`` is MP-G: ``f = inpaint(x, [M >= 0.5])``, the mask
binarised at 0.5 because the inpainter takes binary masks, recomputed at every step (one inpainter
call per chunk). Its gradient w.r.t. ``M`` goes straight through the binarisation: when the
inpainter has ``mask_vjp(x, mask, cotangent)`` (the gradient of ``sum(cotangent * inpaint(x, mask))``
w.r.t. the mask, as :class:`xaisdk.models.inpainter.LearnedInpainter` offers) the term
``mask_vjp(x, [M >= 0.5], M * ds/dx~)`` is added, as if ``d[M >= 0.5]/dM`` were 1; an inpainter
without it (e.g. :class:`~xaisdk.runtime.inpainting.OpenCVInpainter` or a bundle's ONNX inpainter) is
treated as constant within each step, so only the composite carries the gradient. Its fill equals the
image outside ``[M >= 0.5]``, which would leave the cells below 0.5 without a score gradient: the mask
could only shrink (on the shipped bundle 4 of 40 test digits ended all zero). So, as a straight-through
surrogate, the gradient of those pixels uses the inpainter's fill of everything outside the hard mask,
``inpaint(x, 1 - [M >= 0.5])`` (one more inpainter call per chunk and step); the objective's value is
unchanged.

A map that comes out all zero or constant (nothing or everything removed) raises
:class:`~xaisdk.InputError` (see :mod:`xaisdk.methods.empty_maps`) instead of being returned.

>>> import numpy as np
>>> from xaisdk.methods.drivers import _LinearBackend
>>> from xaisdk.runtime.backend import class_weights
>>> w = np.zeros((2, 16, 16)); w[0, :4, :4] = 0.5                # class 0 looks at the top-left 4 x 4 pixels
>>> backend = _LinearBackend(w.reshape(2, -1), input_shape=(1, 16, 16))
>>> maps, m = meaningful_perturbation(backend, np.ones((1, 1, 16, 16), np.float32), class_weights([0], [1], 2),
...                                   filler="zero", steps=100, return_mask=True)
>>> m[0, 0].round(1)                                             # the 4 x 4 mask; a cell is 4 x 4 pixels
array([[1. , 1. , 0.5, 0.2],
       [1. , 0.8, 0.3, 0. ],
       [0.5, 0.3, 0.1, 0. ],
       [0.2, 0. , 0. , 0. ]], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xaisdk.errors import InputError
from xaisdk.methods.common import chunks
from xaisdk.methods.drivers import _chunk_size, _images, _weights
from xaisdk.methods.empty_maps import check_maps
from xaisdk.methods.removal import (
    Remover,
    Score,
    _sigmoid,
    check_number,
    check_positive_int,
    input_scores,
    log_odds_and_gradient,
    score_and_gradient,
)
from xaisdk.runtime.backend import Backend
from xaisdk.runtime.inpainting import Inpainter, composite

__all__ = ["JITTER", "L1", "OBJECTIVES", "TV", "meaningful_perturbation", "upsampling_matrix"]

OBJECTIVES = ("nonsaturating", "score")
"""What the deletion game minimises (see :func:`meaningful_perturbation`)."""

L1 = 0.08
"""Default weight of ``mean(m)`` (see :func:`meaningful_perturbation`)."""
TV = 0.2
"""Default weight of ``TV_beta(m)``."""
JITTER = 1
"""Default largest jitter shift in pixels: the paper's 4 px at 224 is 0.5 px at 28."""


def upsampling_matrix(small: int, size: int) -> np.ndarray:
    """(size, small) float64 matrix of bilinear upsampling along one axis, pixel centres aligned as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.

    >>> upsampling_matrix(2, 4).tolist()
    [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    """
    source = np.maximum((np.arange(size) + 0.5) * (small / size) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), small - 1)
    high = np.minimum(low + 1, small - 1)
    frac = source - low
    out = np.zeros((size, small))
    np.add.at(out, (np.arange(size), low), 1 - frac)
    np.add.at(out, (np.arange(size), high), frac)
    return out


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` (..., H, W) translated: ``out[i, j] = a[min(i + dy, H - 1), min(j + dx, W - 1)]``."""
    height, width = a.shape[-2:]
    rows = np.minimum(np.arange(height) + dy, height - 1)
    cols = np.minimum(np.arange(width) + dx, width - 1)
    return a[..., rows[:, None], cols[None, :]]


def _shift_adjoint_axis(g: np.ndarray, d: int, axis: int) -> np.ndarray:
    if d == 0:
        return g
    size = g.shape[axis]
    out = np.zeros_like(g)
    take = [slice(None)] * g.ndim
    put = [slice(None)] * g.ndim
    take[axis], put[axis] = slice(0, size - d), slice(d, size)
    out[tuple(put)] += g[tuple(take)]  # out[i] = a[i + d] for i < size - d
    take[axis], put[axis] = slice(size - d, size), slice(size - 1, size)
    out[tuple(put)] += g[tuple(take)].sum(axis=axis, keepdims=True)  # the rest repeat a[size - 1]
    return out


def _shift_adjoint(g: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The transpose of :func:`_shift` applied to ``g``."""
    return _shift_adjoint_axis(_shift_adjoint_axis(g, dy, g.ndim - 2), dx, g.ndim - 1)


def _tv(m: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """``TV_beta`` of each mask (N,) and its gradient (like ``m``, (N, 1, h, w))."""
    value = np.zeros(len(m))
    grad = np.zeros_like(m)
    for axis in (2, 3):
        if m.shape[axis] < 2:
            continue
        diff = np.diff(m, axis=axis)
        count = diff[0].size
        value += (np.abs(diff) ** beta).reshape(len(m), -1).sum(1) / count
        d = beta * np.abs(diff) ** (beta - 1) * np.sign(diff) / count  # d/d diff
        pad_low = [(0, 0)] * m.ndim
        pad_high = [(0, 0)] * m.ndim
        pad_low[axis], pad_high[axis] = (1, 0), (0, 1)
        grad += np.pad(d, pad_low) - np.pad(d, pad_high)  # diff[i] = m[i + 1] - m[i]
    return value, grad


@dataclass
class _Problem:
    """The MP objective of a batch; :meth:`value_and_gradient` is one optimisation step's work."""

    backend: Backend
    x: np.ndarray
    score: Score
    remover: Remover
    rows: np.ndarray  # (H, h) upsampling along the rows
    cols: np.ndarray  # (W, w)
    l1: float
    tv: float
    tv_beta: float
    chunk_size: int
    objective: str = "score"  # "score": minimise s; "nonsaturating": softplus(log-odds) / scale (probabilities)
    scale: np.ndarray | None = None  # (N,) softplus of each input's log-odds, for "nonsaturating"
    surrogate: bool = False  # inpainter without mask_vjp: gradient fill outside the hard mask (see meaningful_perturbation)

    def _outside_fill(self, hard: np.ndarray) -> np.ndarray:
        """The inpainter's fill of the pixels outside the binarised masks ``hard`` (one call per chunk)."""
        out = np.empty_like(self.x)
        for sl in chunks(len(self.x), self.chunk_size):
            out[sl] = self.remover.fills(np.arange(sl.start, sl.stop), 1 - hard[sl])
        return out

    def scores_and_gradients(self, batch: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The attributed term of the objective for each image of ``batch`` (float64) and its input gradient."""
        if self.objective == "score" or self.score.kind != "probability":
            return score_and_gradient(self.backend, batch, sample, self.score)
        t, dt = log_odds_and_gradient(self.backend, batch, sample, self.score)
        scale = self.scale[sample]  # type: ignore[index]
        slope = (_sigmoid(t) / scale).astype(np.float32).reshape((-1,) + (1,) * (dt.ndim - 1))
        return np.logaddexp(0.0, t) / scale, dt * slope

    def upsample(self, m: np.ndarray) -> np.ndarray:
        return np.einsum("Hh,nchw,Ww->ncHW", self.rows, m, self.cols)

    def value_and_gradient(self, m: np.ndarray, shifts: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Objective per image (N,) and its gradient w.r.t. the small masks ``m`` (N, 1, h, w), float64."""
        n = len(self.x)
        big = self.upsample(m).astype(np.float32)
        inpainting = self.remover.fill is None
        hard = (big >= 0.5).astype(np.float32)
        if inpainting:
            fill = np.empty_like(self.x)
            for sl in chunks(n, self.chunk_size):
                fill[sl] = self.remover.fills(np.arange(sl.start, sl.stop), hard[sl])
        else:
            fill = self.remover.fill
        mixed = composite(self.x, fill, big)
        batch = np.concatenate([_shift(mixed, dy, dx) for dy, dx in shifts])  # shift-major: row j * n + i
        sample = np.tile(np.arange(n), len(shifts))
        scores = np.empty(len(batch))
        grads = np.empty_like(batch)
        for sl in chunks(len(batch), self.chunk_size):
            scores[sl], grads[sl] = self.scores_and_gradients(batch[sl], sample[sl])
        grad_mixed = np.zeros(self.x.shape)
        for j, (dy, dx) in enumerate(shifts):
            grad_mixed += _shift_adjoint(grads[j * n:(j + 1) * n].astype(np.float64), dy, dx)
        grad_mixed /= len(shifts)
        vjp = getattr(self.remover.inpainter, "mask_vjp", None) if inpainting else None
        if inpainting and vjp is None and self.surrogate:
            fill = hard * fill + (1 - hard) * self._outside_fill(hard)
        grad_big = (grad_mixed * (fill - self.x)).sum(1, keepdims=True)
        if vjp is not None:
            cotangent = (grad_mixed * big).astype(np.float32)
            for sl in chunks(n, self.chunk_size):
                grad_big[sl] += np.asarray(vjp(self.x[sl], hard[sl], cotangent[sl]), np.float64).reshape(grad_big[sl].shape)
        tv_value, tv_grad = _tv(m, self.tv_beta)
        area = m[0].size
        value = scores.reshape(len(shifts), n).mean(0) + self.l1 * m.reshape(n, -1).mean(1) + self.tv * tv_value
        grad = np.einsum("Hh,ncHW,Ww->nchw", self.rows, grad_big, self.cols) + self.l1 / area + self.tv * tv_grad
        return value, grad


def _mask_size(value: object, height: int, width: int) -> tuple[int, int]:
    if value is None:
        return max(1, round(height / 4)), max(1, round(width / 4))
    items = value if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise InputError(f"mask_size: expected a positive int or (height, width), got {value!r}")
    h, w = check_positive_int(items[0], "mask_size"), check_positive_int(items[1], "mask_size")
    if h > height or w > width:
        raise InputError(f"mask_size: {(h, w)} is larger than the images {(height, width)}")
    return h, w


def meaningful_perturbation(
    backend: Backend,
    x: np.ndarray,
    weights: np.ndarray,
    *,
    filler: str = "blur",
    inpainter: Inpainter | None = None,
    mask_size: int | tuple[int, int] | None = None,
    steps: int = 300,
    lr: float = 0.1,
    l1: float = L1,
    tv: float = TV,
    tv_beta: float = 3.0,
    jitter: int = JITTER,
    n_jitter: int | None = None,
    output: str = "probability",
    objective: str = "nonsaturating",
    blur_sigma: float | None = None,
    seed: int = 0,
    chunk_size: int = 256,
    progress: bool = False,
    return_mask: bool = False,
    allow_empty: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Meaningful-perturbation maps ``M``, float32 ``(N, 1, H, W)`` in [0, 1] (see the module docstring).

    ``filler``: ``"blur"`` (MP; Gaussian of ``blur_sigma``), ``"gray"``, ``"zero"``, ``"noise"`` or
    ``"inpaint"`` (MP-G, with ``inpainter``). The small mask (``mask_size``, default a quarter of
    the image side: 7 x 7 at 28 px) starts uniform in [0, 1] (drawn from ``seed``, as the paper) and
    takes ``steps`` Adam steps of size ``lr`` (the paper's 300 and 0.1). Each step averages ``s``
    over jittered copies: all ``(jitter + 1)^2`` shifts when ``n_jitter`` is None (the exact
    expectation; 4 copies at the default ``jitter=1``), else ``n_jitter`` shifts drawn at random
    each step (with replacement, the same for every image of the batch). ``output`` as in
    :class:`~xaisdk.methods.removal.Score`; ``objective``: ``"nonsaturating"`` (default) or
    ``"score"`` (see the module docstring); the defaults of ``l1`` and ``tv`` assume an objective
    of 1 at the input (the default objective, or probabilities). Images are optimised independently: a batch gives each image
    the map it gets alone with the same initial mask. ``return_mask`` also returns the small masks
    ``m`` (float32 (N, 1, h, w)). ``progress`` shows a bar over the steps. A map that keeps no region or
    removes everything raises :class:`~xaisdk.InputError` unless ``allow_empty`` (for evaluations
    that count such maps).

    Hyper-parameters scaled from Fong & Vedaldi's (28 x 28 mask on 224 px; l1 1e-4 and tv 1e-2 on
    *sums* over the mask cells; TV exponent 3; jitter up to 4 px; 300 Adam steps of 0.1). The mask
    side goes from H/8 to H/4: a 3.5-cell mask at 28 px could not follow a digit, a 4-pixel cell is
    about a stroke wide. Their sums become means here, so a weight is what the term costs for the
    whole mask in units of the score: their L1 weight is 1e-4 x 784 cells, ``l1=0.08``. Their TV
    total (1e-2 x 756 pairs per direction = 7.56) does not carry over to a 7 x 7 mask (with exponent
    3 the cost of an edge depends on the cell size): on 20 test digits with the blur filler and the
    shipped classifier it over-smoothed the masks (mean probability after removing the learnt mask
    0.71, against 0.56 at ``tv=0.2`` for a similar area, 27-32% of the image; 0.59 at ``tv=1``),
    so ``tv=0.2``. The blur keeps the library's default, a tenth of the shorter side (2.8 px at 28),
    the blur of every other filler and substrate: the paper's sigma of 10 px at 224 would be 1.25 px,
    which leaves 99.7% of the shipped classifier's test predictions unchanged (95% at 2.8 px), so
    there would be almost nothing for the mask to remove.

    The numbers above were measured with the probability objective. With the default non-saturating
    objective and the same weights, on 12 shipped-bundle test digits, one-vs-one against the
    runner-up class, the masks cover 52% of the image with blur (a 2.8 px blur leaves most digits
    legible, so much of the digit must go), 41% with the inpainter and 18% with gray; removing the
    80 highest-ranked pixels lowers ``S_source - S_target`` by 3.7 (blur), 1.4 (inpainter) and 15.4
    (gray) on average, against 0.7, 0.0 and 2.1 for 80 random pixels.

    >>> from xaisdk.methods.drivers import _LinearBackend
    >>> from xaisdk.runtime.backend import class_weights
    >>> w = np.zeros((2, 64)); w[0, 9] = 2                            # class 0 looks at pixel (1, 1)
    >>> backend = _LinearBackend(w, input_shape=(1, 8, 8))
    >>> maps, m = meaningful_perturbation(backend, np.ones((3, 1, 8, 8), np.float32), class_weights([0, 0, 0], None, 2),
    ...                                   filler="zero", steps=50, return_mask=True)
    >>> maps.shape, m.shape, bool(maps.min() >= 0 and maps.max() <= 1)
    ((3, 1, 8, 8), (3, 1, 2, 2), True)
    """
    xs = _images(backend, x)
    w = _weights(backend, weights, len(xs))
    if xs.ndim != 4:
        raise InputError(f"x: meaningful_perturbation needs images (N, C, H, W), got shape {xs.shape}")
    n, _, height, width = xs.shape
    h, w_small = _mask_size(mask_size, height, width)
    steps = check_positive_int(steps, "steps")
    lr = check_number(lr, "lr", strict=True)
    l1 = check_number(l1, "l1")
    tv = check_number(tv, "tv")
    tv_beta = check_number(tv_beta, "tv_beta", minimum=1.0)
    jitter = check_positive_int(jitter, "jitter", minimum=0)
    if jitter >= min(height, width):
        raise InputError(f"jitter: expected less than the image side {min(height, width)}, got {jitter}")
    if n_jitter is not None:
        n_jitter = check_positive_int(n_jitter, "n_jitter")
    if objective not in OBJECTIVES:
        raise InputError(f"objective: unknown {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    score = Score(w, output)
    size = _chunk_size(chunk_size)
    problem = _Problem(
        backend, xs, score,
        Remover(xs, filler, inpainter, value_range=backend.value_range, blur_sigma=blur_sigma, seed=seed),
        upsampling_matrix(h, height), upsampling_matrix(w_small, width), l1, tv, tv_beta, size,
        objective, _input_scale(backend, xs, score, size) if objective == "nonsaturating" and output == "probability" else None,
        surrogate=True)

    init_seed, jitter_seed = np.random.SeedSequence(seed).spawn(2)
    m = np.random.default_rng(init_seed).uniform(0.0, 1.0, size=(n, 1, h, w_small))
    jitter_rng = np.random.default_rng(jitter_seed)
    all_shifts = [(dy, dx) for dy in range(jitter + 1) for dx in range(jitter + 1)]
    first, second = np.zeros_like(m), np.zeros_like(m)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # Adam's defaults (torch.optim.Adam)
    loop = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm

        loop = tqdm(loop, desc="meaningful perturbation", unit="step")
    for t in loop:
        shifts = all_shifts if n_jitter is None else [all_shifts[i] for i in jitter_rng.integers(0, len(all_shifts), n_jitter)]
        _, grad = problem.value_and_gradient(m, shifts)
        first = beta1 * first + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad**2
        step = lr * (first / (1 - beta1**t)) / (np.sqrt(second / (1 - beta2**t)) + eps)
        m = np.clip(m - step, 0.0, 1.0)
    maps = check_maps(problem.upsample(m).astype(np.float32), "meaningful_perturbation", constant=True,
                      allow_empty=allow_empty, why=(
        "the optimisation kept no region (all zero) or removed everything (constant): no region's removal outweighs "
        "the mask's cost l1 * area + tv * TV, or the score does not depend on the input under this filler; lower l1 / tv, "
        "or choose another filler"))
    return (maps, m.astype(np.float32)) if return_mask else maps


def _input_scale(backend: Backend, x: np.ndarray, score: Score, chunk_size: int) -> np.ndarray:
    """``softplus(t)`` of each input's log-odds ``t``: ``-log(1 - s(x))``, the non-saturating objective's unit."""
    t = input_scores(backend, x, score, chunk_size, raw=True)
    scale = np.logaddexp(0.0, t)
    if not (np.isfinite(t).all() and (scale > 1e-300).all()):
        i = int(np.flatnonzero(~(np.isfinite(t) & (scale > 1e-300)))[0])
        raise InputError(f"meaningful_perturbation: image {i} has log-odds {t[i]:.4g} for its source class (probability "
                         "0 in float64 or non-finite logits): there is no evidence to remove")
    return scale
