"""Similarity of attribution maps (xaisdk.metrics.similarity) against independent references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

from xaisdk import InputError
from xaisdk.metrics.similarity import (
    SIMILARITY_METRICS,
    consistency,
    hog_pearson_similarity,
    normalize_maps,
    similarities,
    spearman_similarity,
    ssim_similarity,
)


def _maps(rng: np.random.Generator, n: int = 4, c: int = 1, size: int = 28) -> np.ndarray:
    """Smooth-ish random maps (a blob plus noise), so that SSIM and HOG see some structure."""
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(6, size - 6, size=(n, c, 2))
    blob = np.exp(-((yy - centres[..., :1, None]) ** 2 + (xx - centres[..., 1:, None]) ** 2) / 20.0)
    return blob + 0.3 * rng.normal(size=(n, c, size, size))


def _reference_abs_normalized(m: np.ndarray, q: float = 99.0) -> np.ndarray:
    """The saliency library's VisualizeImageGrayscale, written out for one (C, H, W) map."""
    s = np.abs(m).sum(0)
    lo, hi = s.min(), np.percentile(s, q)
    return np.clip((s - lo) / (hi - lo), 0, 1)


# --- identical / opposite maps ------------------------------------------------------------------


def test_identical_maps_give_one_for_every_measure(rng):
    a = _maps(rng, c=3)
    for name, fn in SIMILARITY_METRICS.items():
        np.testing.assert_allclose(fn(a, a).per_sample, 1.0, atol=1e-12, err_msg=name)


def test_negation_gives_minus_one_signed_and_one_absolute(rng):
    a = _maps(rng)
    np.testing.assert_allclose(spearman_similarity(a, -a, absolute=False).per_sample, -1.0, atol=1e-12)
    np.testing.assert_allclose(spearman_similarity(a, -a).per_sample, 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim_similarity(a, -a).per_sample, 1.0, atol=1e-12)
    np.testing.assert_allclose(hog_pearson_similarity(a, -a).per_sample, 1.0, atol=1e-12)
    # Signed SSIM is not sign-aware: its luminance and structure terms both flip sign (documented).
    signed = ssim_similarity(a, -a, absolute=False).per_sample
    assert np.all(signed < 0.9)
    want = [structural_similarity(m, -m, data_range=2.0) for m in normalize_maps(a, absolute=False)]
    np.testing.assert_allclose(signed, want, rtol=1e-12)


def test_unrelated_maps_are_not_similar(rng):
    a, b = rng.normal(size=(2, 16, 28, 28))
    assert abs(spearman_similarity(a, b).mean) < 0.1
    assert abs(spearman_similarity(a, b, absolute=False).mean) < 0.1
    assert ssim_similarity(a, b).mean < 0.2
    assert hog_pearson_similarity(a, b).mean < 0.3


# --- references ---------------------------------------------------------------------------------


@pytest.mark.parametrize("absolute", [True, False])
def test_spearman_matches_scipy_with_ties_and_channels(rng, absolute):
    a = np.round(rng.normal(size=(5, 3, 12, 12)), 1)  # rounding makes ties
    b = np.round(a + rng.normal(size=a.shape), 1)
    got = spearman_similarity(a, b, absolute=absolute).per_sample
    reduce = (lambda m: np.abs(m).sum(0)) if absolute else (lambda m: m.sum(0))
    want = [spearmanr(reduce(a[i]).ravel(), reduce(b[i]).ravel()).statistic for i in range(len(a))]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert 0.2 < np.mean(got) < 0.95


def test_ssim_equals_a_direct_skimage_call_on_unit_range_maps(rng):
    # Maps already spanning [0, 1] exactly: min-max normalization (percentile=100) leaves them unchanged.
    a, b = rng.random((2, 3, 28, 28))
    for m in (a, b):
        m[:, 0, 0], m[:, 0, 1] = 0.0, 1.0
    got = ssim_similarity(a, b, percentile=100).per_sample
    want = [structural_similarity(a[i], b[i], data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_ssim_with_default_percentile_matches_reference_normalization(rng):
    a, b = _maps(rng, c=2), _maps(rng, c=2)
    got = ssim_similarity(a, b)
    want = [structural_similarity(_reference_abs_normalized(a[i]), _reference_abs_normalized(b[i]), data_range=1.0)
            for i in range(len(a))]
    np.testing.assert_allclose(got.per_sample, want, rtol=1e-12)
    assert got.details["data_range"] == 1.0


def test_signed_ssim_uses_maps_scaled_by_their_largest_magnitude(rng):
    a, b = rng.normal(size=(2, 3, 1, 20, 20))
    got = ssim_similarity(a, b, absolute=False, percentile=100)
    want = [structural_similarity(a[i, 0] / np.abs(a[i]).max(), b[i, 0] / np.abs(b[i]).max(), data_range=2.0)
            for i in range(3)]
    np.testing.assert_allclose(got.per_sample, want, rtol=1e-12)
    assert got.name == "ssim_signed" and got.details["data_range"] == 2.0


def test_hog_pearson_matches_skimage_hog_and_scipy_pearson(rng):
    a, b = _maps(rng), _maps(rng)
    got = hog_pearson_similarity(a, b)
    want = []
    for i in range(len(a)):
        fa = hog(_reference_abs_normalized(a[i]), orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2),
                 block_norm="L2-Hys")
        fb = hog(_reference_abs_normalized(b[i]), orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2),
                 block_norm="L2-Hys")
        want.append(pearsonr(fa, fb).statistic)
    np.testing.assert_allclose(got.per_sample, want, rtol=1e-10)
    assert got.details["features"] == 6 * 6 * 2 * 2 * 9  # 6x6 blocks x 2x2 cells x 9 orientations


def test_hog_parameters_are_used(rng):
    a, b = _maps(rng, n=2, size=16), _maps(rng, n=2, size=16)
    got = hog_pearson_similarity(a, b, pixels_per_cell=(4, 4), cells_per_block=(3, 3), orientations=4, percentile=100)
    assert got.details["features"] == 2 * 2 * 3 * 3 * 4
    norm = normalize_maps(a, percentile=100), normalize_maps(b, percentile=100)
    want = [pearsonr(*(hog(m[i], 4, (4, 4), (3, 3)) for m in norm)).statistic for i in range(2)]
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got.per_sample, want, rtol=1e-10)


# --- documented invariances ---------------------------------------------------------------------


def test_positive_scaling_and_symmetry(rng):
    a, b = _maps(rng), _maps(rng)
    for name, fn in SIMILARITY_METRICS.items():
        ref = fn(a, b).per_sample
        np.testing.assert_allclose(fn(7.5 * a, 0.01 * b).per_sample, ref, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(fn(b, a).per_sample, ref, rtol=1e-9, err_msg=name)


def test_spearman_is_invariant_to_increasing_transforms(rng):
    a, b = _maps(rng), _maps(rng)
    np.testing.assert_allclose(spearman_similarity(np.abs(a) ** 3, b).per_sample, spearman_similarity(a, b).per_sample,
                               rtol=1e-12)
    np.testing.assert_allclose(spearman_similarity(np.tanh(a), b, absolute=False).per_sample,
                               spearman_similarity(a, b, absolute=False).per_sample, rtol=1e-12)


def test_normalize_maps_ranges_and_sparse_maps(rng):
    a = _maps(rng, c=3)
    unsigned, signed = normalize_maps(a), normalize_maps(a, absolute=False)
    assert unsigned.shape == (4, 28, 28) and unsigned.min() == 0.0 and unsigned.max() == 1.0
    assert signed.min() >= -1.0 and signed.max() <= 1.0 and np.abs(signed).max() == 1.0
    sparse = np.zeros((1, 28, 28))
    sparse[0, 3, 4], sparse[0, 10, 10] = 2.0, -4.0  # 2 of 784 pixels: the 99th percentile is 0
    out = normalize_maps(sparse)
    assert out[0, 10, 10] == 1.0 and out[0, 3, 4] == 0.5 and np.isfinite(out).all()


# --- undefined values ---------------------------------------------------------------------------


def test_constant_maps_give_nan_not_zero(rng):
    a, b = _maps(rng), _maps(rng)
    b[1] = 0.3  # constant map
    a[2] = 0.0
    for name, fn in SIMILARITY_METRICS.items():
        result = fn(a, b)
        assert np.isnan(result.per_sample[[1, 2]]).all(), name
        assert np.isfinite(result.per_sample[[0, 3]]).all(), name
        assert result.count == 2 and result.mean == pytest.approx(np.mean(result.per_sample[[0, 3]]))
    assert spearman_similarity(a, b).details["undefined"] == 2
    assert np.isnan(normalize_maps(b)[1]).all()


# --- several metrics, several runs --------------------------------------------------------------


def test_similarities_by_name(rng):
    a, b = _maps(rng), _maps(rng)
    out = similarities(a, b, ["spearman_signed", "ssim"])
    assert list(out) == ["spearman_signed", "ssim"]
    np.testing.assert_array_equal(out["ssim"].per_sample, ssim_similarity(a, b).per_sample)


def test_consistency_is_the_mean_over_every_pair(rng):
    base = _maps(rng, n=3)
    runs = [base + 0.5 * rng.normal(size=base.shape) for _ in range(4)]
    out = consistency(runs)
    assert set(out) == {"ssim", "hog_pearson", "spearman"}
    for name, result in out.items():
        pairs = list(itertools.combinations(range(4), 2))
        table = np.array([SIMILARITY_METRICS[name](runs[i], runs[j]).per_sample for i, j in pairs])
        np.testing.assert_allclose(result.per_sample, table.mean(0), rtol=1e-12)
        assert result.details["pairs"] == 6 and result.details["runs"] == 4
        assert result.details["pair_index"] == [list(p) for p in pairs]
        np.testing.assert_allclose(result.details["pair_means"], table.mean(1), rtol=1e-12)
    identical = consistency([base, base.copy(), base * 2])
    for result in identical.values():
        np.testing.assert_allclose(result.per_sample, 1.0, atol=1e-12)


def test_consistency_skips_undefined_pairs(rng):
    runs = [_maps(rng, n=2) for _ in range(3)]
    runs[2][0] = 1.0  # sample 0 constant in run 2: only the pair (0, 1) is defined for it
    out = consistency(runs, metrics=["spearman"])["spearman"]
    want = spearman_similarity(runs[0], runs[1]).per_sample[0]
    assert out.per_sample[0] == pytest.approx(want, rel=1e-12)
    runs[1][0] = 1.0
    runs[0][0] = 1.0
    assert np.isnan(consistency(runs, metrics=["spearman"])["spearman"].per_sample[0])


def test_consistency_summary_is_json_ready(rng):
    import json

    runs = [_maps(rng, n=2) for _ in range(3)]
    text = json.dumps({k: r.to_dict() for k, r in consistency(runs).items()})
    assert '"pairs": 3' in text


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((2, 28, 28)), np.zeros((3, 28, 28)), "same shape"),
    (np.zeros((2, 1, 28, 28)), np.zeros((2, 2, 28, 28)), "same shape"),
    (np.full((1, 28, 28), np.nan), np.zeros((1, 28, 28)), "finite"),
    (np.zeros((1, 28, 28)), np.full((1, 28, 28), np.inf), "finite"),
    (np.zeros((28, 28)), np.zeros((28, 28)), "expected non-empty maps"),
    (np.zeros((0, 28, 28)), np.zeros((0, 28, 28)), "non-empty"),
    (np.array([["a"]]), np.zeros((1, 1)), "maps"),
])
def test_bad_maps_raise_input_error(a, b, message):
    for fn in SIMILARITY_METRICS.values():
        with pytest.raises(InputError, match=message):
            fn(a, b)


def test_bad_options_raise_input_error(rng):
    a = _maps(rng, n=1)
    small = rng.normal(size=(1, 6, 6))
    with pytest.raises(InputError, match="7x7 window"):
        ssim_similarity(small, small)
    with pytest.raises(InputError, match="fewer than one block"):
        hog_pearson_similarity(small, small)
    with pytest.raises(InputError, match="pixels_per_cell"):
        hog_pearson_similarity(a, a, pixels_per_cell=(0, 4))
    with pytest.raises(InputError, match="orientations"):
        hog_pearson_similarity(a, a, orientations=0)
    with pytest.raises(InputError, match="percentile"):
        ssim_similarity(a, a, percentile=0)
    with pytest.raises(InputError, match="unknown 'pearson'"):
        similarities(a, a, ["pearson"])


def test_consistency_bad_runs_raise_input_error(rng):
    a = _maps(rng, n=2)
    with pytest.raises(InputError, match="at least 2"):
        consistency([a])
    with pytest.raises(InputError, match="at least 2"):
        consistency(np.stack([a, a]))
    with pytest.raises(InputError, match=r"runs\[2\]: shape"):
        consistency([a, a, a[:1]])
    with pytest.raises(InputError, match=r"runs\[1\]"):
        consistency([a, np.full_like(a, np.nan)])
    with pytest.raises(InputError, match="unknown"):
        consistency([a, a], metrics=[])
