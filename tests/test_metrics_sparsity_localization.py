"""Gini sparsity, inverse localization and mask localization metrics on hand-computed maps."""

from __future__ import annotations

import numpy as np
import pytest

from xaisdk import InputError
from xaisdk.data import make_shapes
from xaisdk.metrics.localization import (
    box_iou,
    box_localization_error,
    energy_in_mask,
    inverse_localization,
    mask_boxes,
    mask_iou,
    pointing_game,
    saliency_boxes,
)
from xaisdk.metrics.sparsity import gini, gini_index


def one_map(values: list[list[float]]) -> np.ndarray:
    return np.array([values], dtype=np.float64)


# ---------------------------------------------------------------- gini


@pytest.mark.parametrize(("values", "expected"), [
    ([0, 0, 0, 1], 0.75),  # one-hot: 1 - 1/n
    ([1, 1, 1, 1], 0.0),  # uniform
    ([1, 2, 3, 4], 0.25),  # (-3*1 - 1*2 + 1*3 + 3*4) / (4 * 10)
    ([0, 1], 0.5),
    ([5], 0.0),  # a single feature is uniform
    ([0, 0, 1, 1], 0.5),  # (-3*0 - 1*0 + 1 + 3) / (4 * 2)
])
def test_gini_hand_values(values: list[float], expected: float) -> None:
    assert gini_index(np.array([values], float))[0] == pytest.approx(expected)


def test_gini_matches_the_hurley_rickard_sum() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 2, 5, 4))
    c = np.sort(np.abs(a.reshape(3, -1)), axis=1)
    n = c.shape[1]
    k = np.arange(1, n + 1)
    expected = 1 - 2 * ((c / c.sum(1, keepdims=True)) * ((n - k + 0.5) / n)).sum(1)
    np.testing.assert_allclose(gini(a).per_sample, expected, rtol=1e-12)


def test_gini_one_hot_is_one_minus_one_over_n() -> None:
    a = np.zeros((2, 3, 4, 5))
    a[0, 1, 2, 3] = -7.0
    a[1, 0, 0, 0] = 0.1
    np.testing.assert_allclose(gini(a).per_sample, 1 - 1 / 60)


def test_gini_is_invariant_to_scale_and_sign() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 1, 6, 6))
    signs = rng.choice([-1.0, 1.0], size=a.shape)
    base = gini(a).per_sample
    np.testing.assert_allclose(gini(123.0 * a).per_sample, base, rtol=1e-12)
    np.testing.assert_allclose(gini(-a).per_sample, base, rtol=1e-12)
    np.testing.assert_allclose(gini(a * signs).per_sample, base, rtol=1e-12)


def test_gini_all_zero_map_is_nan_and_left_out_of_the_mean() -> None:
    a = np.zeros((2, 2, 2))
    a[1, 0, 0] = 1.0
    r = gini(a)
    assert np.isnan(r.per_sample[0]) and r.per_sample[1] == pytest.approx(0.75)
    assert r.count == 1 and r.mean == pytest.approx(0.75)


def test_gini_channel_reduction() -> None:
    # channels cancel in the signed sum: one pixel of four left
    a = np.zeros((1, 2, 2, 2))
    a[0, 0] = [[1.0, 2.0], [0.0, 0.0]]
    a[0, 1] = [[1.0, -2.0], [0.0, 0.0]]
    assert gini(a, reduce="sum").per_sample[0] == pytest.approx(0.75)
    assert gini(a, reduce="abs").per_sample[0] == pytest.approx(gini_index(np.array([[2.0, 4.0, 0, 0]]))[0])
    assert gini(a).details == {"reduce": None, "features": 8}


def test_gini_bad_input() -> None:
    with pytest.raises(InputError, match="attributions: expected a non-empty batch"):
        gini(np.ones((3, 4)))
    with pytest.raises(InputError, match="attributions: expected a non-empty batch"):
        gini(np.ones((0, 1, 2, 2)))
    with pytest.raises(InputError, match="finite"):
        gini(np.full((1, 2, 2), np.nan))
    with pytest.raises(InputError, match="finite"):
        gini(np.array([[["a"]]]))
    with pytest.raises(InputError, match="reduce"):
        gini(np.ones((1, 1, 2, 2)), reduce="mean")


# ---------------------------------------------------------------- inverse localization


def test_inverse_localization_centre_only_is_zero_and_edges_only_is_inf() -> None:
    a = np.zeros((3, 2, 6, 8))  # W = 8, default band = 2 columns on each side
    a[0, :, :, 2:6] = 1.0
    a[1, 0, :, 0] = -3.0
    a[2, 1, 1, 7] = 0.5
    a[2, 0, 0, 3] = 1.0
    r = inverse_localization(a)
    assert r.per_sample[0] == 0.0
    assert r.per_sample[1] == np.inf
    # edge: 0.5 over 2*2*6 pixels; centre: 1.0 over 4*6 pixels -> (0.5 / 24) / (1 / 24)
    assert r.per_sample[2] == pytest.approx(0.5)
    assert r.details == {"edge_fraction": 0.25, "edge_columns": 2}


def test_inverse_localization_uniform_is_one_and_zero_map_is_nan() -> None:
    a = np.ones((2, 28, 28))
    a[1] = 0.0
    r = inverse_localization(a)
    assert r.per_sample[0] == pytest.approx(1.0) and np.isnan(r.per_sample[1])
    assert r.details["edge_columns"] == 7


def test_inverse_localization_band_width_option() -> None:
    a = np.zeros((1, 1, 28))
    a[0, 0, :4] = 1.0  # MNIST's empty 4-pixel margin
    a[0, 0, 4:24] = 1.0
    assert inverse_localization(a, edge_fraction=4 / 28).details["edge_columns"] == 4
    assert inverse_localization(a, edge_fraction=4 / 28).per_sample[0] == pytest.approx((4 / 8) / 1)
    assert inverse_localization(a, edge_fraction=0.01).details["edge_columns"] == 1


def test_inverse_localization_sums_channels_in_abs() -> None:
    a = np.zeros((1, 2, 1, 4))
    a[0, 0, 0] = [1.0, 1.0, 0.0, 0.0]
    a[0, 1, 0] = [-1.0, 0.0, 0.0, 0.0]  # cancels in a signed sum, not in abs
    assert inverse_localization(a).per_sample[0] == pytest.approx(2.0 / 1.0)


@pytest.mark.parametrize("fraction", [0.0, 0.5, -0.1, "0.2", True, None])
def test_inverse_localization_bad_band(fraction: object) -> None:
    with pytest.raises(InputError, match="edge_fraction"):
        inverse_localization(np.ones((1, 4, 8)), edge_fraction=fraction)  # type: ignore[arg-type]


def test_inverse_localization_band_leaving_no_centre() -> None:
    with pytest.raises(InputError, match="leave no centre"):
        inverse_localization(np.ones((1, 4, 2)), edge_fraction=0.25)


# ---------------------------------------------------------------- mask metrics


@pytest.fixture
def square_masks() -> np.ndarray:
    """Two 6x6 masks: the top-left 2x2 square, and the bottom-right 3x3 square."""
    m = np.zeros((2, 6, 6), bool)
    m[0, :2, :2] = True
    m[1, 3:, 3:] = True
    return m


def test_pointing_game_hits_and_misses(square_masks: np.ndarray) -> None:
    a = np.zeros((3, 6, 6))
    a[0, 1, 1] = 2.0  # inside mask 0
    a[1, 0, 0] = 2.0  # outside mask 1
    a[2, 5, 5] = 2.0  # inside mask 1
    masks = square_masks[[0, 1, 1]]
    np.testing.assert_array_equal(pointing_game(a, masks).per_sample, [1.0, 0.0, 1.0])


def test_pointing_game_tolerance_is_euclidean_pixels(square_masks: np.ndarray) -> None:
    a = np.zeros((1, 6, 6))
    a[0, 3, 3] = 1.0  # from the mask's corner (1, 1): distance sqrt(8) = 2.83
    mask = square_masks[:1]
    assert pointing_game(a, mask, tolerance=2).per_sample[0] == 0.0
    assert pointing_game(a, mask, tolerance=2.8).per_sample[0] == 0.0
    assert pointing_game(a, mask, tolerance=2.9).per_sample[0] == 1.0
    assert pointing_game(a, mask, tolerance=3).details == {"tolerance": 3.0, "reduce": "sum"}


def test_pointing_game_signed_vs_abs(square_masks: np.ndarray) -> None:
    a = np.zeros((1, 6, 6))
    a[0, 0, 0] = 1.0  # positive evidence inside the mask
    a[0, 5, 5] = -4.0  # stronger negative evidence outside it
    assert pointing_game(a, square_masks[:1]).per_sample[0] == 1.0
    assert pointing_game(a, square_masks[:1], reduce="abs").per_sample[0] == 0.0


def test_pointing_game_ties_and_undefined(square_masks: np.ndarray) -> None:
    a = np.zeros((3, 6, 6))
    a[0, 0, 0] = a[0, 5, 0] = a[0, 0, 5] = a[0, 1, 1] = 1.0  # 2 of 4 maxima hit
    a[2, 0, 0] = 1.0
    masks = square_masks[[0, 0, 0]].copy()
    masks[2] = False  # empty mask
    r = pointing_game(a, masks)  # map 1 is constant
    assert r.per_sample[0] == 0.5
    assert np.isnan(r.per_sample[1]) and np.isnan(r.per_sample[2]) and r.count == 1


def test_mask_iou_top_fraction(square_masks: np.ndarray) -> None:
    a = np.zeros((1, 6, 6))
    a[0, :2, :2] = [[4.0, 3.0], [2.0, 1.0]]
    a[0, 5, 5] = 0.5
    a[0, 4, 4] = -1.0
    # 36 pixels: 2/36 -> top 2 (IoU 2/4); 4/36 -> the square (1); 5/36 -> square + the 0.5 (4/5);
    # 8/36 -> rank 8 is a 0 tied with 29 others: all 35 non-negative pixels are kept (4/35)
    r = mask_iou(a, square_masks[:1], thresholds=(2 / 36, 4 / 36, 5 / 36, 8 / 36))
    np.testing.assert_allclose(r.curve[0], [0.5, 1.0, 0.8, 4 / 35])
    assert r.per_sample[0] == pytest.approx(np.mean([0.5, 1.0, 0.8, 4 / 35]))
    np.testing.assert_allclose(r.steps, [2 / 36, 4 / 36, 5 / 36, 8 / 36])
    assert r.details == {"mode": "top_fraction", "reduce": "sum"}


def test_mask_iou_relative_max(square_masks: np.ndarray) -> None:
    a = np.zeros((2, 6, 6))
    a[0, :2, :2] = [[4.0, 3.0], [2.0, 1.0]]
    a[0, 5, 5] = 3.0
    a[1] = -1.0  # no positive maximum: nothing to keep
    r = mask_iou(a, square_masks[[0, 0]], thresholds=(0.2, 0.5, 1.0), mode="relative_max")
    # >= 0.8: the square + (5, 5) -> 4/5; >= 2: {4, 3, 2, 3} -> 3/5; >= 4: {4} -> 1/4
    np.testing.assert_allclose(r.curve[0], [0.8, 0.6, 0.25])
    assert np.isnan(r.curve[1]).all() and np.isnan(r.per_sample[1])


def test_mask_iou_defaults_and_empty_mask(square_masks: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    masks = square_masks.copy()
    masks[1] = False
    r = mask_iou(rng.standard_normal((2, 3, 6, 6)), masks)
    np.testing.assert_allclose(r.steps, [0.05, 0.1, 0.2, 0.3, 0.5])
    assert np.isfinite(r.curve[0]).all() and np.isnan(r.curve[1]).all() and np.isnan(r.per_sample[1])
    assert len(mask_iou(np.ones((1, 6, 6)), masks[:1], mode="relative_max").steps) == 4


def test_mask_iou_bad_options(square_masks: np.ndarray) -> None:
    a = np.ones((2, 6, 6))
    for bad in [(), (0.0,), (1.5,), ("x",), [[0.1]]]:
        with pytest.raises(InputError, match="thresholds"):
            mask_iou(a, square_masks, thresholds=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="mode"):
        mask_iou(a, square_masks, mode="top_k")


def test_energy_in_mask(square_masks: np.ndarray) -> None:
    a = np.zeros((3, 6, 6))
    a[0, :2, :2] = 1.0
    a[0, 5, 5] = 2.0
    a[0, 4, 4] = -10.0  # negative saliency is not energy
    a[1] = -1.0  # no positive saliency
    a[2] = 1.0  # uniform: scores the mask's area fraction
    r = energy_in_mask(a, square_masks[[0, 0, 0]])
    assert r.per_sample[0] == pytest.approx(4 / 6)
    assert np.isnan(r.per_sample[1])
    assert r.per_sample[2] == pytest.approx(4 / 36)
    assert r.details["chance"] == pytest.approx(4 / 36)
    assert energy_in_mask(a[:1], square_masks[:1], reduce="abs").per_sample[0] == pytest.approx(4 / 16)


def test_masks_accepted_as_dataset_masks() -> None:
    ds = make_shapes(4, image_size=16, seed=3)
    inside = ds.masks[:, 0] * (1.0 + np.arange(16 * 16).reshape(16, 16) / 1000)  # peak inside each object
    maps = np.repeat(inside[:, None], 3, axis=1) / 3
    np.testing.assert_array_equal(pointing_game(maps, ds.masks).per_sample, 1.0)
    np.testing.assert_allclose(energy_in_mask(maps, ds.masks).per_sample, 1.0)
    r = mask_iou(maps, ds.masks, thresholds=(1.0,), mode="relative_max")  # keeps the single peak pixel
    np.testing.assert_allclose(r.curve[:, 0], 1 / ds.masks.reshape(4, -1).sum(1))


def test_mask_metrics_bad_masks(square_masks: np.ndarray) -> None:
    a = np.ones((2, 6, 6))
    with pytest.raises(InputError, match=r"masks: expected \(N, H, W\)"):
        pointing_game(a, square_masks[:1])
    with pytest.raises(InputError, match=r"masks: expected \(N, H, W\)"):
        mask_iou(a, np.ones((2, 3, 6, 6), bool))
    with pytest.raises(InputError, match="0/1"):
        energy_in_mask(a, square_masks * 0.5)
    with pytest.raises(InputError, match="tolerance"):
        pointing_game(a, square_masks, tolerance=-1)
    with pytest.raises(InputError, match="reduce"):
        energy_in_mask(a, square_masks, reduce="max")


# ---------------------------------------------------------------- bounding-box localization


def test_saliency_boxes_match_skimage_regionprops() -> None:
    from skimage.measure import label, regionprops

    rng = np.random.default_rng(0)
    maps = rng.random((20, 1, 16, 16)) ** 3
    for alpha in (0.3, 0.6):
        boxes = saliency_boxes(maps, alpha)
        for m, box in zip(maps[:, 0], boxes):
            regions = regionprops(label(m >= alpha * m.max(), connectivity=2))
            largest = max(regions, key=lambda r: r.area)
            top, left, bottom, right = largest.bbox  # skimage: exclusive end
            if sum(r.area == largest.area for r in regions) == 1:  # ties may pick either component
                assert box.tolist() == [top, left, bottom - 1, right - 1]


def test_box_iou_equals_pixel_set_iou() -> None:
    rng = np.random.default_rng(1)
    a = np.sort(rng.integers(0, 10, (50, 2, 2)), axis=1).transpose(0, 2, 1).reshape(50, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.integers(0, 10, (50, 2, 2)), axis=1).transpose(0, 2, 1).reshape(50, 4)[:, [0, 2, 1, 3]]

    def pixels(box: np.ndarray) -> np.ndarray:
        grid = np.zeros((10, 10), bool)
        grid[box[0]:box[2] + 1, box[1]:box[3] + 1] = True
        return grid

    want = [(pixels(p) & pixels(q)).sum() / (pixels(p) | pixels(q)).sum() for p, q in zip(a, b)]
    np.testing.assert_allclose(box_iou(a, b), want)
    assert box_iou(np.array([[-1, -1, -1, -1]]), np.array([[0, 0, 1, 1]])).tolist() == [0.0]


def test_box_localization_error_on_shapes_masks() -> None:
    ds = make_shapes(12, image_size=16, seed=4)
    perfect = ds.masks.astype(np.float64)
    r = box_localization_error(perfect, ds.masks, held_out=perfect, held_out_masks=ds.masks)
    assert r.mean == 0.0 and r.details["alpha_from"] == "held_out"
    boxes = mask_boxes(ds.masks)
    whole = np.tile([[0, 0, 15, 15]], (12, 1))
    assert r.details["whole_image_error"] == pytest.approx(np.mean(box_iou(whole, boxes) < 0.5))
    flipped = perfect[:, :, ::-1, ::-1]  # the object's box mirrored: misses unless it is central
    expected = np.mean(box_iou(mask_boxes(ds.masks[:, :, ::-1, ::-1]), boxes) < 0.5)
    assert box_localization_error(flipped, ds.masks, alphas=(0.5,)).mean == pytest.approx(expected)
    with pytest.raises(InputError, match="alphas"):
        box_localization_error(perfect, ds.masks, alphas=(1.5,))
    with pytest.raises(InputError, match="held_out_masks"):
        box_localization_error(perfect, ds.masks, held_out=perfect)
