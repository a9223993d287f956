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
