"""LIME for images (Ribeiro et al. 2016; LIME and LIME-G of Agarwal & Nguyen, Sec. 3.4), against a Backend.

Each image is cut into SLIC superpixels (scikit-image). Sample 0 is the image itself (all
superpixels on); samples 1..N-1 switch each superpixel off with probability 1/2 and remove the off
ones with the filler (gray, zero, blur, noise, or inpainted: LIME-G). With ``z`` the 0/1 on-vector of
a sample, LIME weighs it by its kernel ``sqrt(exp(-d^2 / width^2))`` on the cosine distance
``d = 1 - cos(z, 1)`` to the original and fits the scores with a sparse linear model (scikit-learn's
``Lasso`` with those sample weights); superpixel k's coefficient is painted on its pixels. This is
the authors' ``lime_image`` recipe (samples, kernel, width 0.25, cosine distance) with the final
fit done by the Lasso.

Needs scikit-image and scikit-learn (the ``torch`` extra).

>>> import numpy as np
>>> from xaisdk.methods.drivers import _LinearBackend
>>> from xaisdk.runtime.backend import class_weights
>>> backend = _LinearBackend(np.eye(2, 4), input_shape=(1, 2, 2))   # class 0 is pixel (0, 0)
>>> segments = np.array([[0, 1], [2, 3]])                           # one superpixel per pixel
>>> attr = lime(backend, np.ones((1, 1, 2, 2), np.float32), class_weights([0], None, 2), segments=segments,
...             n_samples=64, filler="zero", output="logits", alpha=0.0)
>>> (np.round(attr[0, 0], 6) + 0.0).tolist()   # exact: the score is linear in the on/off vector
[[1.0, 0.0], [0.0, 0.0]]
"""

from __future__ import annotations

import warnings

import numpy as np

from xaisdk.errors import InputError
from xaisdk.methods.drivers import _chunk_size, _images, _weights
from xaisdk.methods.empty_maps import check_maps
from xaisdk.methods.removal import Remover, Score, check_number, check_positive_int, removal_scores
from xaisdk.runtime.backend import Backend
from xaisdk.runtime.inpainting import Inpainter

__all__ = ["ALPHA", "COMPACTNESS", "N_SEGMENTS", "lime", "lime_kernel", "superpixels"]

N_SEGMENTS = 50
"""Default superpixel count: the paper's S = 50 (a count, so it needs no rescaling to 28-32 px)."""
COMPACTNESS = 0.2
"""Default SLIC compactness (see :func:`superpixels`)."""
ALPHA = 0.01
"""Default Lasso strength, relative to the spread of the scores (see :func:`lime`)."""


def superpixels(x: np.ndarray, n_segments: int = N_SEGMENTS, compactness: float = COMPACTNESS) -> np.ndarray:
    """SLIC superpixels of each image of ``x`` (N, C, H, W): int64 labels (N, H, W), 0..S_n-1 per image.

    ``skimage.segmentation.slic`` with ``start_label=0``; one-channel images as grayscale
    (``channel_axis=None``), three-channel ones as RGB (SLIC converts them to CIELAB). SLIC rescales
    each image to [0, 1] first, so the value range does not matter. ``n_segments`` is SLIC's target;
    the actual count per image is usually close to it (49 at 50 on 28 x 28 digits).

    ``compactness=0.2`` was chosen on the digits and on RGB shapes (``make_shapes``) at 50
    superpixels: on [0, 1] grayscale digits 0.1 or less gives ragged, irregular pieces (about 40 of
    them), 0.3 and above the plain square grid that ignores the strokes, and 0.2 gives compact
    superpixels that follow the strokes (the best agreement with the stroke/background split, 96%
    of pixels, of the values tried). On RGB shapes SLIC measures colour in CIELAB (units up to 100),
    so every value from 0.1 to 1 gives the same object-following superpixels there; SLIC's usual
    10 cuts through the objects at this size.

    >>> from xaisdk.data import load_digits
    >>> segments = superpixels(load_digits().test.x[:2])
    >>> segments.shape, [int(s.max()) + 1 for s in segments]
    ((2, 28, 28), [49, 49])
    """
    images = np.asarray(x)
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(f"x: expected a non-empty batch of images (N, C, H, W), got shape {images.shape}")
    n_segments = check_positive_int(n_segments, "n_segments")
    compactness = check_number(compactness, "compactness", strict=True)
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise InputError("lime / superpixels need scikit-image: pip install scikit-image (or xaisdk[torch])") from None
    out = np.empty((images.shape[0], *images.shape[2:]), np.int64)
    for n, image in enumerate(images.astype(np.float64)):
        if image.shape[0] == 1:
            labels = slic(image[0], n_segments=n_segments, compactness=compactness, channel_axis=None, start_label=0)
        else:
            labels = slic(np.moveaxis(image, 0, -1), n_segments=n_segments, compactness=compactness, channel_axis=-1,
                          start_label=0)
        out[n] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)  # labels 0..S-1 without gaps
    return out


def lime_kernel(on: np.ndarray, kernel_width: float = 0.25) -> np.ndarray:
    """LIME's sample weights ``sqrt(exp(-d^2 / kernel_width^2))`` of on/off vectors ``on`` (M, S),
    ``d`` the cosine distance to the all-on vector: ``1 - sqrt(k / S)`` with k superpixels on
    (1 when none is on, as scikit-learn's cosine distance of a zero vector).

    >>> lime_kernel(np.array([[1, 1, 1, 1], [1, 0, 0, 0]])).round(4).tolist()
    [1.0, 0.1353]
    """
    on = np.asarray(on, np.float64)
    distance = 1.0 - np.sqrt(on.sum(1) / on.shape[1])
    return np.sqrt(np.exp(-(distance**2) / kernel_width**2))


def _segments(segments: object, n: int, size: tuple[int, int]) -> np.ndarray:
    labels = np.asarray(segments)
    if labels.ndim == 2:
        labels = np.broadcast_to(labels, (n, *labels.shape))
    if labels.shape != (n, *size) or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
        raise InputError(f"segments: expected integer labels ({n}, {size[0]}, {size[1]}) or {size}, got "
                         f"{labels.dtype} of shape {np.shape(segments)}")
    return np.stack([np.unique(s, return_inverse=True)[1].reshape(size) for s in labels])


def _fit(on: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, alpha: float, image: int = 0,
         allow_empty: bool = False) -> np.ndarray:
    """Coefficients of the weighted sparse linear fit of ``y`` on ``on`` (with an intercept):
    ``Lasso(alpha * weighted std of y)``, or weighted least squares for ``alpha=0``. The fit runs on
    ``y`` divided by that spread (the same coefficients, scaled back), so scores that differ by
    1e-20 are fitted as well as probabilities. Scores that are all equal raise
    :class:`~xaisdk.InputError` (``image`` names the input): no superpixel changes them (all-zero
    coefficients with ``allow_empty``)."""
    from sklearn.linear_model import Lasso, LinearRegression

    mean = np.average(y, weights=sample_weight)
    spread = float(np.sqrt(np.average((y - mean) ** 2, weights=sample_weight)))
    if spread == 0 and allow_empty:
        return np.zeros(on.shape[1])
    if spread == 0 or not np.isfinite(spread):
        what = "the same score" if spread == 0 else "non-finite scores"
        raise InputError(f"lime: every perturbed sample of image {image} has {what}: removing its superpixels does not "
                         "change the model's output (the filler equals the image, or the model does not depend on it)")
    model = LinearRegression() if alpha == 0 else Lasso(alpha=alpha, max_iter=10000)
    with warnings.catch_warnings():
        # a Lasso stopped at max_iter still gives usable coefficients (LIME's own fit has no such check)
        warnings.simplefilter("ignore", category=UserWarning)
        model.fit(on, (y - mean) / spread, sample_weight=sample_weight)
    return np.asarray(model.coef_, np.float64) * spread


def lime(
    backend: Backend,
    x: np.ndarray,
    weights: np.ndarray,
    *,
    n_segments: int = N_SEGMENTS,
    compactness: float = COMPACTNESS,
    n_samples: int = 1000,
    filler: str = "gray",
    inpainter: Inpainter | None = None,
    kernel_width: float = 0.25,
    alpha: float = ALPHA,
    output: str = "probability",
    blur_sigma: float | None = None,
    seed: int = 0,
    chunk_size: int = 256,
    progress: bool = False,
    segments: np.ndarray | None = None,
    allow_empty: bool = False,
) -> np.ndarray:
    """LIME attribution maps, float32 ``(N, 1, H, W)``: each pixel carries its superpixel's
    coefficient (larger = keeping the superpixel raises the score more).

    Superpixels come from :func:`superpixels` (``n_segments``, ``compactness``) unless ``segments``
    (integer labels ``(N, H, W)``, or ``(H, W)`` for all images) are given: a study comparing
    superpixel counts can compute them once and pass them. ``n_samples`` perturbed images per input
    (the first is the input itself; the paper's N = 1000), drawn from ``seed`` image after image.
    ``filler``: ``"gray"`` (LIME's), ``"zero"``, ``"blur"``, ``"noise"`` or ``"inpaint"`` (LIME-G,
    with ``inpainter``). ``s`` and ``output`` as in :class:`~xaisdk.methods.removal.Score`. The
    N x ``n_samples`` images go through the backend ``chunk_size`` at a time (inpainting too).

    The fit is scikit-learn's ``Lasso`` with LIME's kernel (``kernel_width``) as sample weights and
    an intercept; ``alpha`` is relative to the spread of the scores: the Lasso's strength is
    ``alpha`` times the kernel-weighted standard deviation of the N scores, so one default serves
    probabilities, saturated probabilities (a confident digit under blur moves its probability by
    a few hundredths only) and logits alike (with an absolute strength, 1e-4 already zeroed a fifth
    of the blur-filled digit maps). ``alpha=0`` fits weighted least squares. ``alpha=0.01`` was
    tuned on 20 test digits (gray, blur and inpainting fillers): it sets the weakest ~30% of the
    superpixels to exactly 0 while the rest stay within a 0.99 correlation of the least-squares
    coefficients; 0.03 keeps ~40% of them (correlation 0.92), 0.1 under 10% and leaves some maps
    all zero.

    The scores are fitted as differences to the input's (:meth:`~xaisdk.methods.removal.Score.drop`,
    from the log-odds): a confident classifier's probability rounds to 1 in float64 once its log-odds
    pass ~37 (one-vs-one against an unlike class, common on the digits), which made every sample score
    the same and the map all zero. A map that is still all zero, or an image whose samples all score
    the same, raises :class:`~xaisdk.InputError` (see :mod:`xaisdk.methods.empty_maps`), unless
    ``allow_empty`` (for evaluations that count such maps: they get all-zero maps).

    >>> from xaisdk.methods.drivers import _LinearBackend
    >>> from xaisdk.runtime.backend import class_weights
    >>> backend = _LinearBackend(np.stack([np.eye(1, 16, 5)[0], np.zeros(16)]), input_shape=(1, 4, 4))
    >>> attr = lime(backend, np.ones((1, 1, 4, 4), np.float32), class_weights([0], None, 2), n_samples=100,
    ...             segments=np.repeat(np.repeat(np.arange(4).reshape(2, 2), 2, 0), 2, 1), output="logits",
    ...             filler="zero")
    >>> (attr[0, 0].astype(float).round(2) + 0.0).tolist()   # pixel 5's superpixel: 1, shrunk a little by the Lasso
    [[0.98, 0.98, 0.0, 0.0], [0.98, 0.98, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    xs = _images(backend, x)
    w = _weights(backend, weights, len(xs))
    if xs.ndim != 4:
        raise InputError(f"x: lime needs images (N, C, H, W), got shape {xs.shape}")
    n, _, height, width = xs.shape
    n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
    kernel_width = check_number(kernel_width, "kernel_width", strict=True)
    alpha = check_number(alpha, "alpha")
    size = _chunk_size(chunk_size)
    score = Score(w, output)
    remover = Remover(xs, filler, inpainter, value_range=backend.value_range, blur_sigma=blur_sigma, seed=seed)
    labels = superpixels(xs, n_segments, compactness) if segments is None else _segments(segments, n, (height, width))
    counts = labels.reshape(n, -1).max(1) + 1

    rng = np.random.default_rng(seed)
    on = np.ones((n, n_samples, int(counts.max())), np.uint8)  # columns past an image's count stay on (unused)
    for i, count in enumerate(counts):
        on[i, 1:, :count] = rng.integers(0, 2, size=(n_samples - 1, count), dtype=np.uint8)
    flat_labels = labels.reshape(n, -1)

    def make_masks(sample: np.ndarray, index: np.ndarray) -> np.ndarray:
        kept = np.take_along_axis(on[sample, index], flat_labels[sample], axis=1)
        return (1 - kept).astype(np.float32).reshape(len(sample), 1, height, width)

    raw = removal_scores(backend, remover, score, n_samples, make_masks, chunk_size=size, progress=progress,
                         desc="lime", raw=True)
    gains = -score.drop(raw[:, :1], raw)  # s(sample) - s(input): exact where probabilities round to 1
    maps = np.empty((n, 1, height, width), np.float32)
    for i, count in enumerate(counts):
        z = on[i, :, :count].astype(np.float64)
        coef = _fit(z, gains[i], lime_kernel(z, kernel_width), alpha, image=i, allow_empty=allow_empty)
        maps[i, 0] = coef[labels[i]]
    return check_maps(maps, "lime", allow_empty=allow_empty,
                      why=f"the Lasso set every superpixel's coefficient to 0 (alpha={alpha:g}; lower "
                      "it) or they are below float32's range (use output='logits')")
