"""Adaptive Integrated Gradients: per input, as many path points as a completeness tolerance needs.

The path ``x(a) = b + a (x - b)`` is cut into pieces, each integrated by the composite trapezoid
rule. Completeness holds piece by piece: the exact integral of the directional derivative over a
piece ``[a_i, a_i+1]`` is ``S(x(a_i+1)) - S(x(a_i))``, and both scores are known (a gradient call
returns the score with the gradient). So each piece's own completeness error
``e_i = sum(A_i) - (S(a_i+1) - S(a_i))`` is measured exactly, ``A_i`` being the piece's share of the
attributions. The pieces with the largest error per new point are refined: a piece of one interval
is cut in two at its midpoint (one new point, a new boundary), until an input has ``max_pieces``
pieces; then a piece's intervals are doubled (the trapezoid sum over the doubled grid is the old
one's half plus the new midpoints, so no point is computed twice). Memory is two images per piece.

An input stops when its completeness error ``|sum_i e_i| = |sum(attr) - (S(x) - S(b))|`` is at most
``tolerance * |S(x) - S(b)|``, or when the next refinement would pass ``max_steps`` gradient
evaluations (then it is reported as not converged). ``error_bound`` also reports
``sum_i |e_i| / |S(x) - S(b)|``, which errors of opposite sign in different pieces cannot hide.

Where the integrand is rough (a ReLU network's gradient jumps wherever a unit switches, most of all
near a flat baseline), the pieces there get the points; where it is smooth, a few points reach the
tolerance. Each input also stops as soon as it is done, instead of running as long as the worst
input of its batch needs, which is what one fixed ``n_steps`` for a whole set has to do.

Torch-free (numpy only). :func:`xaisdk.methods.drivers.integrated_gradients` with ``n_steps="auto"``
runs it over a backend.

>>> import numpy as np
>>> # S(z) = sum(z**3): the directional derivative is a polynomial, smooth along the path
>>> score_grad = lambda batch, sample: ((batch**3).sum(axis=(1, 2, 3)), 3 * batch**2)
>>> x = np.full((1, 1, 2, 2), 1.0, np.float32)
>>> result = adaptive_integrated_gradients(score_grad, x, 0.0, tolerance=1e-3)
>>> result.attributions.ravel().round(3).tolist(), result.steps.tolist(), bool(result.converged[0])
([1.0, 1.0, 1.0, 1.0], [33], True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xaisdk.errors import InputError
from xaisdk.limits import check_size
from xaisdk.methods.common import chunks
from xaisdk.runtime.arrays import as_float32

__all__ = ["AUTO", "AdaptiveIG", "DEFAULT_MAX_STEPS", "DEFAULT_SEGMENTS", "DEFAULT_TOLERANCE", "adaptive_integrated_gradients",
           "check_tolerance"]

AUTO = "auto"
"""The ``n_steps`` value that asks for this adaptive rule."""
DEFAULT_TOLERANCE = 0.01
"""Completeness error allowed, relative to ``|S(x) - S(b)|`` (1%)."""
DEFAULT_SEGMENTS = 4
"""Pieces of the path refined independently; the first pass evaluates ``segments + 1`` points."""
DEFAULT_MAX_STEPS = 512
"""Most gradient evaluations per input."""
DEFAULT_MAX_PIECES = 64
"""Most pieces per input; past it, pieces are refined by doubling their intervals (memory: two images per piece)."""

# Elements (float32) of path vectors held at once at most: inputs are processed in groups that fit
# (a 224-px RGB input with 64 pieces can hold 129 vectors, 78 MB, so 3 such inputs at a time).
STATE_ELEMENTS = 1 << 26

ScoreGradFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``fn(batch, sample_index) -> (scores (K,), gradients (K, ...))``: the score of row k's sample at row k."""


@dataclass(frozen=True)
class AdaptiveIG:
    """What :func:`adaptive_integrated_gradients` returns; every array has one entry per input."""

    attributions: np.ndarray
    """float32, shaped like ``x``."""
    steps: np.ndarray
    """int64: gradient evaluations (path points) used."""
    input_scores: np.ndarray
    """float32: ``S(x)``, from the path's end point."""
    baseline_scores: np.ndarray
    """float32: ``S(b)``, from the path's start point."""
    error_bound: np.ndarray
    """float32: ``sum_i |e_i| / |S(x) - S(b)|`` over the pieces, at least the relative completeness error
    (inf when the gap is 0)."""
    converged: np.ndarray
    """bool: whether ``|sum(attr) - (S(x) - S(b))| <= tolerance * |S(x) - S(b)|`` was reached within ``max_steps``."""

    @property
    def convergence_delta(self) -> np.ndarray:
        """``sum(attributions) - (S(x) - S(b))`` per input, float32."""
        total = self.attributions.reshape(len(self.attributions), -1).sum(axis=1, dtype=np.float64)
        return (total - (self.input_scores.astype(np.float64) - self.baseline_scores)).astype(np.float32)


def check_tolerance(tolerance: object) -> float:
    """``tolerance`` as a float in (0, 1], or :class:`InputError`.

    >>> check_tolerance(0.01)
    0.01
    >>> check_tolerance(0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: tolerance: expected a number in (0, 1] (the completeness error allowed, ...), got 0
    """
    ok = isinstance(tolerance, (int, float, np.floating, np.integer)) and not isinstance(tolerance, bool)
    if not ok or not (0.0 < float(tolerance) <= 1.0):
        raise InputError("tolerance: expected a number in (0, 1] (the completeness error allowed, relative to "
                         f"|S(x) - S(b)|), got {tolerance!r}")
    return float(tolerance)


class _Path:
    """One input's path: pieces between boundary points, each integrated by a composite trapezoid rule.

    Piece i spans ``alphas[i]..alphas[i+1]`` with ``2**level[i]`` equal intervals; ``vectors`` are
    ``(x - b) * grad`` at the boundaries and ``inner[i]`` the plain sum of the same at the piece's
    interior points, so the piece's attributions are ``h/2 (P_a + P_b) + h * inner`` with ``h`` its
    interval width. Scalar sums of the vectors are kept alongside for the error of each piece.
    """

    def __init__(self, alphas: np.ndarray, scores: np.ndarray, vectors: list[np.ndarray]) -> None:
        self.alphas = [float(a) for a in alphas]
        self.scores = [float(s) for s in scores]
        self.vectors = vectors
        self.sums = [float(v.sum(dtype=np.float64)) for v in vectors]
        self.level = [0] * (len(alphas) - 1)
        self.inner: list[np.ndarray | None] = [None] * (len(alphas) - 1)
        self.inner_sums = [0.0] * (len(alphas) - 1)
        self.steps = len(alphas)

    def width(self, i: int) -> float:
        return (self.alphas[i + 1] - self.alphas[i]) / 2 ** self.level[i]

    def errors(self) -> np.ndarray:
        """Each piece's completeness error: its attribution sum minus its score change."""
        out = np.empty(len(self.level))
        for i in range(len(self.level)):
            h = self.width(i)
            out[i] = h / 2 * (self.sums[i] + self.sums[i + 1]) + h * self.inner_sums[i] - (self.scores[i + 1] - self.scores[i])
        return out

    def midpoints(self, i: int) -> np.ndarray:
        """The points that double piece i."""
        return self.alphas[i] + (np.arange(2 ** self.level[i]) + 0.5) * self.width(i)

    def split(self, i: int, score: float, vector: np.ndarray) -> None:
        """Cut piece i (one interval) at its midpoint, whose score and vector were just computed."""
        middle = (self.alphas[i] + self.alphas[i + 1]) / 2
        self.alphas.insert(i + 1, middle)
        self.scores.insert(i + 1, float(score))
        self.vectors.insert(i + 1, vector)
        self.sums.insert(i + 1, float(vector.sum(dtype=np.float64)))
        self.level.insert(i + 1, 0)
        self.inner.insert(i + 1, None)
        self.inner_sums.insert(i + 1, 0.0)

    def double(self, i: int, added: np.ndarray) -> None:
        """Add the plain sum of piece i's new midpoint vectors."""
        self.inner[i] = added if self.inner[i] is None else self.inner[i] + added
        self.inner_sums[i] = float(self.inner[i].sum(dtype=np.float64))
        self.level[i] += 1

    def attributions(self) -> np.ndarray:
        out = np.zeros_like(self.vectors[0])
        for i in range(len(self.level)):
            h = np.float32(self.width(i))
            out += h / 2 * (self.vectors[i] + self.vectors[i + 1])
            if self.inner[i] is not None:
                out += h * self.inner[i]
        return out


@dataclass(frozen=True)
class _Job:
    """One refinement: ``split`` evaluates a piece's midpoint, ``double`` all midpoints of its intervals."""

    path: int
    piece: int
    kind: str
    alphas: np.ndarray


def _refinements(paths: list[_Path], tolerance: float, max_steps: int, max_pieces: int) -> list[_Job]:
    """The next refinements: per input whose completeness error is above its tolerance, the pieces with
    the largest error per new point, until halving their errors would cover the excess. A piece of one
    interval is split (a new boundary, one point) while the input has fewer than ``max_pieces``
    pieces; otherwise its intervals are doubled."""
    jobs = []
    for p, path in enumerate(paths):
        errors = path.errors()
        allowed = tolerance * abs(path.scores[-1] - path.scores[0])
        excess = abs(errors.sum()) - allowed
        if excess <= 0:
            continue
        pieces = len(path.level)
        cost = np.array([2 ** level for level in path.level])
        covered = 0.0
        for i in np.argsort(-np.abs(errors) / cost, kind="stable"):
            if path.steps + cost[i] > max_steps or errors[i] == 0.0:
                continue
            splits = path.level[i] == 0 and pieces < max_pieces
            pieces += splits
            path.steps += int(cost[i])
            jobs.append(_Job(p, int(i), "split" if splits else "double",
                             np.array([(path.alphas[i] + path.alphas[i + 1]) / 2]) if splits else path.midpoints(int(i))))
            covered += abs(errors[i]) / 2  # a refinement halves a piece's error (a switch inside) or better (smooth)
            if covered >= excess:
                break
    return jobs


class _Evaluator:
    """Path points for the loop: rows of (input, alpha) in chunks of ``chunk_size`` through ``score_grad``."""

    def __init__(self, score_grad: ScoreGradFn, chunk_size: int, x: np.ndarray, base: np.ndarray) -> None:
        self.score_grad = score_grad
        self.chunk_size = chunk_size
        self.feature_shape = x.shape[1:]
        n = len(x)
        self.start = base.reshape(n, -1)
        self.diff = x.reshape(n, -1) - self.start

    def points(self, samples: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ``(x - b) * grad`` at each (sample, alpha) row."""
        scores = np.empty(len(samples))
        vectors = np.empty((len(samples), self.diff.shape[1]), np.float32)
        for sl in chunks(len(samples), self.chunk_size):
            n = samples[sl]
            batch = self.start[n] + alphas[sl, None].astype(np.float32) * self.diff[n]
            got, grads = self.score_grad(batch.reshape(len(n), *self.feature_shape), n)
            scores[sl] = np.asarray(got, np.float64)
            vectors[sl] = self.diff[n] * np.asarray(grads, np.float32).reshape(len(n), -1)
            if not (np.isfinite(scores[sl]).all() and np.isfinite(vectors[sl]).all()):  # before refining on NaN
                raise InputError("the gradients or scores along the path are not finite (NaN or inf)")
        return scores, vectors


def _run_jobs(evaluator: _Evaluator, paths: list[_Path], offset: int, jobs: list[_Job]) -> int:
    """Evaluate every job's points in shared chunks and apply them; returns the number of points."""
    counts = np.array([len(job.alphas) for job in jobs])
    job_of_row = np.repeat(np.arange(len(jobs)), counts)
    samples = np.array([job.path + offset for job in jobs])[job_of_row]
    alphas = np.concatenate([job.alphas for job in jobs])
    scores, vectors = evaluator.points(samples, alphas)
    firsts = np.cumsum(counts) - counts
    # later pieces first, so that a split does not move the pieces still to be refined on the same path
    for j in sorted(range(len(jobs)), key=lambda j: (jobs[j].path, -jobs[j].piece)):
        job, rows = jobs[j], slice(firsts[j], firsts[j] + counts[j])
        if job.kind == "split":
            paths[job.path].split(job.piece, scores[rows][0], vectors[rows][0].copy())
        else:
            paths[job.path].double(job.piece, vectors[rows].sum(axis=0))
    return int(counts.sum())


def adaptive_integrated_gradients(
    score_grad: ScoreGradFn,
    x: np.ndarray,
    baseline: np.ndarray | float,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = DEFAULT_MAX_STEPS,
    segments: int = DEFAULT_SEGMENTS,
    max_pieces: int = DEFAULT_MAX_PIECES,
    chunk_size: int = 256,
    progress: bool = False,
) -> AdaptiveIG:
    """Integrated Gradients of ``score_grad``'s score, refined per input until ``tolerance`` (see the module docstring).

    Args:
        score_grad: scores and gradients of a batch of path points (:data:`ScoreGradFn`); ``sample_index``
            says which input each row belongs to (for per-input class weights).
        x: inputs ``(N, ...)``.
        baseline: same shape as ``x`` or broadcastable to it.
        tolerance: allowed completeness error ``|sum(attr) - (S(x) - S(b))|`` relative to ``|S(x) - S(b)|``, in (0, 1].
        max_steps: most gradient evaluations per input (at least ``segments + 1``; bounded by
            ``Limits.n_steps``).
        segments: pieces of the path's first pass (``segments + 1`` points), >= 1.
        max_pieces: most pieces per input; past it, pieces double their intervals instead of splitting.
        chunk_size: rows per ``score_grad`` call.
        progress: show a tqdm bar over the points.

    Returns:
        :class:`AdaptiveIG`.

    >>> import numpy as np
    >>> # a ReLU: the integrand jumps where the unit switches on, at a = 0.3
    >>> relu = lambda batch, sample: (np.maximum(batch - 0.3, 0).sum(axis=(1, 2, 3)), (batch > 0.3).astype(np.float32))
    >>> result = adaptive_integrated_gradients(relu, np.ones((1, 1, 1, 1), np.float32), 0.0, tolerance=0.01)
    >>> round(float(result.attributions.sum()), 3), result.steps.tolist(), float(result.error_bound[0]) <= 0.01
    (0.703, [8], True)
    """
    tolerance = check_tolerance(tolerance)
    segments = check_size(segments, "segments", cap=None, minimum=1)
    max_steps = check_size(max_steps, "max_steps", cap="n_steps", minimum=segments + 1)
    max_pieces = check_size(max_pieces, "max_pieces", cap=None, minimum=segments)
    chunk_size = check_size(chunk_size, "chunk_size")
    xs = as_float32(x, "x")
    if xs.ndim < 2:
        raise InputError(f"x: expected a batch (N, ...), got shape {xs.shape}")
    try:
        base = np.ascontiguousarray(np.broadcast_to(as_float32(baseline, "baseline"), xs.shape))
    except ValueError:
        raise InputError(f"baseline: shape {np.shape(baseline)} does not broadcast to x's {xs.shape}") from None
    n_inputs, features = len(xs), int(np.prod(xs.shape[1:]))
    evaluator = _Evaluator(score_grad, chunk_size, xs, base)
    out = np.empty((n_inputs, features), np.float32)
    steps = np.empty(n_inputs, np.int64)
    ends = np.empty((n_inputs, 2), np.float64)
    bound = np.empty(n_inputs, np.float64)
    converged = np.empty(n_inputs, bool)
    grid = np.arange(segments + 1) / segments
    # a path holds at most 2 * max_pieces + 1 vectors (boundaries and piece interiors)
    group_size = max(1, STATE_ELEMENTS // ((2 * max_pieces + 1) * features))
    bar = _progress(progress)
    for sl in chunks(n_inputs, group_size):
        n = sl.stop - sl.start
        first_scores, first_vectors = evaluator.points(np.repeat(np.arange(sl.start, sl.stop), segments + 1), np.tile(grid, n))
        first_vectors = first_vectors.reshape(n, segments + 1, features)
        paths = [_Path(grid, first_scores[i * (segments + 1):(i + 1) * (segments + 1)], list(first_vectors[i]))
                 for i in range(n)]
        bar.update(n * (segments + 1))
        while jobs := _refinements(paths, tolerance, max_steps, max_pieces):
            bar.update(_run_jobs(evaluator, paths, sl.start, jobs))
        for i, path in enumerate(paths):
            errors = path.errors()
            gap = abs(path.scores[-1] - path.scores[0])
            out[sl.start + i] = path.attributions()
            steps[sl.start + i] = path.steps
            ends[sl.start + i] = path.scores[0], path.scores[-1]
            bound[sl.start + i] = np.abs(errors).sum() / gap if gap > 0 else np.inf
            converged[sl.start + i] = abs(errors.sum()) <= tolerance * gap
    bar.close()
    return AdaptiveIG(out.reshape(xs.shape), steps, ends[:, 1].astype(np.float32), ends[:, 0].astype(np.float32),
                      bound.astype(np.float32), converged)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(desc="IG (adaptive)", unit="point")
