"""Our Gini index agrees with Quantus' ``Sparseness`` (Chalasani et al. 2018) on random maps.

Quantus 0.6.0 ``Sparseness.evaluate_batch`` flattens each map, adds 1e-7 to every value (after
``abs``), sorts and returns ``sum_k (2k - n - 1) c_k / (n sum_k c_k)``, which is our Hurley &
Rickard form rearranged. So with ``abs=True, normalise=False`` it equals our ``gini`` of
``|a| + 1e-7`` exactly, and our ``gini`` of ``a`` up to that shift. Quantus is a test-only extra:
``pip install quantus==0.6.0`` (pulls pandas, opencv-python, cachetools; leaves torch alone).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaisdk.metrics.sparsity import gini

quantus = pytest.importorskip(
    "quantus", reason="quantus is not installed (test-only extra: pip install quantus==0.6.0)")


def quantus_sparseness(a: np.ndarray, **options: bool) -> np.ndarray:
    """Quantus' Sparseness of precomputed maps ``a`` (N, C, H, W); the model is only there to satisfy its API."""
    n, c, h, w = a.shape
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, 3)).eval()
    metric = quantus.Sparseness(disable_warnings=True, display_progressbar=False, **options)
    x = np.random.default_rng(0).random(a.shape).astype(np.float32)
    scores = metric(model=net, x_batch=x, y_batch=np.zeros(n, np.int64), a_batch=a.copy(), device="cpu")
    return np.asarray(scores, dtype=np.float64)


@pytest.fixture(scope="module")
def maps() -> np.ndarray:
    """Random maps of different sparsity: dense Gaussian, heavy-tailed, mostly-zero, one channel."""
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((3, 3, 8, 8))
    heavy = rng.standard_cauchy((3, 3, 8, 8))
    sparse = dense * (rng.random((3, 3, 8, 8)) < 0.1)
    return np.concatenate([dense, heavy, sparse])


def test_gini_equals_quantus_sparseness_exactly_with_its_offset(maps: np.ndarray) -> None:
    expected = quantus_sparseness(maps, abs=True, normalise=False)
    np.testing.assert_allclose(gini(np.abs(maps) + 1e-7).per_sample, expected, rtol=1e-12, atol=1e-15)


def test_gini_matches_quantus_sparseness_without_offset(maps: np.ndarray) -> None:
    ours = gini(maps).per_sample
    np.testing.assert_allclose(ours, quantus_sparseness(maps, abs=True, normalise=False), atol=1e-5)


def test_quantus_default_normalises_by_the_batch_max(maps: np.ndarray) -> None:
    # normalise_by_max divides the whole a_batch by one max |a| (over all axes, batch included), so the
    # 1e-7 offset weighs more for maps far below the batch's peak: with Cauchy maps in the batch the
    # defaults drift ~1e-3 from the scale-free index. Our gini of the same shifted values is exact.
    shifted = np.abs(maps) / np.abs(maps).max() + 1e-7
    np.testing.assert_allclose(gini(shifted).per_sample, quantus_sparseness(maps), rtol=1e-12, atol=1e-15)


def test_gini_matches_quantus_on_one_channel_maps() -> None:
    a = np.random.default_rng(1).exponential(size=(4, 1, 6, 6)) ** 3
    np.testing.assert_allclose(gini(a).per_sample, quantus_sparseness(a, abs=True, normalise=False), atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Perturbation metrics vs Quantus 0.6.0 PixelFlipping, FaithfulnessEstimate, MonotonicityCorrelation.
#
# What Quantus does (metrics/faithfulness/*.py, evaluate_batch), on one-channel images where its
# "features" (flattened C*H*W entries) are our pixels:
#  - PixelFlipping: order = np.argsort(-a) (descending raw attribution once abs/normalise are off;
#    normalise_by_max is a positive scale and would not change it), cumulative perturbation of
#    features_in_step features per step, the model output of class y after each step. No k=0 point:
#    its curve is our curve[:, 1:]. softmax=False gives logits (our one-vs-all score, target=None),
#    softmax=True the probability (our deletion / insertion score). Its AUC is np.trapz(dx=1) over
#    those points, which numpy 2.x no longer has.
#  - FaithfulnessEstimate: same descending groups, non-cumulative; Pearson (its default, despite the
#    docstring) of the groups' summed attributions with y_pred - y_pred_perturbed. "black" is the
#    per-sample *minimum* of x, not 0: the same as our "zero" substrate only when min(x) == 0.
#  - MonotonicityCorrelation: ascending groups of (by default |a|), sum of |a| per group, importance
#    mean_s (f(x_s) - f(x))^2 / f(x)^2, Spearman. "uniform" draws from the global np.random, one
#    value per sample and call shared by the whole group. Spearman ignores the 1/f(x)^2 scale and the
#    order in which the groups are listed; with one feature per group (or non-negative maps) its
#    groups and magnitudes are ours, so it agrees once both see the same noise: a replaying
#    perturb_func feeds Quantus our seeded draws.
# ---------------------------------------------------------------------------------------------------

import warnings  # noqa: E402

from xaisdk.data import load_digits  # noqa: E402
from xaisdk.metrics.faithfulness import faithfulness, monotonicity  # noqa: E402
from xaisdk.metrics.perturbation import aopc, deletion, perturbation_curve  # noqa: E402
from xaisdk.models import load_shipped_classifier  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # Quantus runs the model once per step on a 3-image batch; on a shared 2-core machine torch's
    # default thread pool makes each such call ~15x slower than one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """The shipped digits classifier (eval mode: Quantus does not switch it) and three test digits
    with their true labels (not all predicted), plus random signed maps."""
    classifier = load_shipped_classifier("digits")
    classifier.model.eval()
    test = load_digits().test
    x, y = test.x[:3].copy(), np.asarray(test.y[:3], np.int64)
    assert (x.min(axis=(1, 2, 3)) == 0).all()      # so Quantus' "black" (per-image min) is our "zero"
    a = np.random.default_rng(0).standard_normal(x.shape)
    return classifier, x, y, a


def logits_of(classifier, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return classifier.model(torch.from_numpy(x)).double().numpy()[np.arange(len(y)), y]


def run_quantus(metric, classifier, x, y, a, softmax=False) -> np.ndarray:
    with warnings.catch_warnings():
        # "perturbation caused no change": zeroing / flipping pixels that already hold that value.
        warnings.simplefilter("ignore")
        scores = metric(model=classifier.model, x_batch=x, y_batch=y, a_batch=a.copy(), device="cpu",
                        softmax=softmax)
    return np.asarray(scores, dtype=np.float64)


def flip_by_indices(arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
    """Quantus batch perturb_func: x -> 1 - x on the given feature indices (N, I) of arr (N, F)."""
    out = arr.copy()
    rows = np.arange(len(arr))[:, None]
    out[rows, indices] = 1 - arr[rows, indices]
    return out


def assert_close(ours: np.ndarray, theirs: np.ndarray, rtol: float = 1e-5) -> None:
    """float32 models evaluated in different batches: relative to the values' scale."""
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * max(np.abs(theirs).max(), 1e-12))


@pytest.mark.parametrize("step", [1, 16])
def test_flip_curve_equals_quantus_pixel_flipping(digits, step: int) -> None:
    classifier, x, y, a = digits
    metric = quantus.PixelFlipping(features_in_step=step, abs=False, normalise=False,
                                   perturb_func=flip_by_indices, disable_warnings=True)
    theirs = run_quantus(metric, classifier, x, y, a)
    ours = perturbation_curve(classifier, x, a, y, substrate="flip", step=step)
    assert theirs.shape == (3, 784 // step) and ours.curve.shape == (3, 784 // step + 1)
    assert_close(ours.curve[:, 1:], theirs)                     # Quantus has no unperturbed point
    assert_close(ours.curve[:, 0], logits_of(classifier, x, y))
    # AOPC_L from Quantus' curve: 1/(L+1) sum_{k=0..L} (f(x_0) - f(x_k)), the k=0 term being 0.
    f0 = logits_of(classifier, x, y)[:, None]
    L = 10
    expected = (f0 - theirs[:, :L]).sum(1) / (L + 1)
    assert_close(aopc(classifier, x, a, y, L=L, substrate="flip", step=step).per_sample, expected)


def test_quantus_pixel_flipping_default_normalise_keeps_the_order(digits) -> None:
    # normalise_by_max divides the whole batch by one positive number: same order, same curve.
    classifier, x, y, a = digits
    metric = quantus.PixelFlipping(features_in_step=49, abs=False, perturb_func=flip_by_indices,
                                   disable_warnings=True)
    assert_close(perturbation_curve(classifier, x, a, y, step=49).curve[:, 1:], run_quantus(metric, classifier, x, y, a))


def test_deletion_equals_quantus_pixel_flipping_black_softmax(digits, monkeypatch) -> None:
    classifier, x, y, a = digits
    step = 16
    metric = quantus.PixelFlipping(features_in_step=step, abs=False, normalise=False, perturb_baseline="black",
                                   disable_warnings=True)
    theirs = run_quantus(metric, classifier, x, y, a, softmax=True)
    ours = deletion(classifier, x, a, y, step=step)
    assert_close(ours.curve[:, 1:], theirs)
    # Areas: Quantus integrates its curve (no k=0 point) with dx=1 over steps; ours, the whole curve
    # over the fraction of pixels removed. numpy 2.x removed np.trapz, which Quantus'
    # calculate_auc calls, so lend it np.trapezoid (the same rule) for this call only.
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    metric = quantus.PixelFlipping(features_in_step=step, abs=False, normalise=False, perturb_baseline="black",
                                   return_auc_per_sample=True, disable_warnings=True)
    quantus_auc = run_quantus(metric, classifier, x, y, a, softmax=True)
    expected = step / 784 * (quantus_auc + (ours.curve[:, 0] + ours.curve[:, 1]) / 2)
    assert_close(ours.per_sample, expected)


@pytest.mark.parametrize("step", [1, 16])
def test_faithfulness_equals_quantus_faithfulness_estimate(digits, step: int) -> None:
    classifier, x, y, a = digits
    metric = quantus.FaithfulnessEstimate(features_in_step=step, abs=False, normalise=False,
                                          perturb_baseline="black", disable_warnings=True,
                                          similarity_func=quantus.similarity_func.correlation_pearson)
    theirs = run_quantus(metric, classifier, x, y, a)
    ours = faithfulness(classifier, x, a, y, substrate="zero", features_in_step=step).per_sample
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


class ReplayUniform:
    """A Quantus perturb_func that sets the given features to our monotonicity's noise: draw s of
    image n is row n * S + s of ``default_rng(seed).uniform(0, 1, (N * S, C, H, W))`` (float32),
    and Quantus calls it S times per group, in draw order."""

    def __init__(self, shape: tuple[int, ...], n_samples: int, seed: int = 0) -> None:
        n = shape[0]
        noise = np.random.default_rng(seed).uniform(0.0, 1.0, size=(n * n_samples, *shape[1:])).astype(np.float32)
        self.noise = noise.reshape(n, n_samples, -1)
        self.n_samples, self.calls = n_samples, 0

    def __call__(self, arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
        draw = self.calls % self.n_samples
        self.calls += 1
        out = arr.copy()
        rows = np.arange(len(arr))[:, None]
        out[rows, indices] = self.noise[:, draw][rows, indices]
        return out


@pytest.mark.parametrize(("step", "n_samples", "signed"), [(1, 2, True), (16, 3, False)])
def test_monotonicity_equals_quantus_with_the_same_noise(digits, step: int, n_samples: int, signed: bool) -> None:
    classifier, x, y, a = digits
    maps = a if signed else np.abs(a)       # groups of several pixels coincide for non-negative maps only
    metric = quantus.MonotonicityCorrelation(features_in_step=step, nr_samples=n_samples, normalise=False,
                                             perturb_func=ReplayUniform(x.shape, n_samples), disable_warnings=True)
    theirs = run_quantus(metric, classifier, x, y, maps)
    # Some pixels move the logit (~10) by ~1e-5, so their importance (~1e-10) carries float32 rounding
    # of the perturbed logit, which depends on the batch's shape (oneDNN): scored 3 images a call, as
    # Quantus does, the ranks are Quantus' bit for bit; in our default chunks of 256 a few of those
    # near-zero importances swap ranks, moving Spearman by ~3e-5.
    ours = monotonicity(classifier, x, maps, y, n_samples=n_samples, features_in_step=step, chunk_size=len(x))
    np.testing.assert_allclose(ours.per_sample, theirs, atol=1e-9)
    default = monotonicity(classifier, x, maps, y, n_samples=n_samples, features_in_step=step)
    np.testing.assert_allclose(default.per_sample, theirs, atol=2e-4)
