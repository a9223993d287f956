"""xaisdk.runtime.images: user input -> model batch, image files, attribution PNGs (numpy + pillow only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaisdk.errors import InputError
from xaisdk.runtime.images import (
    as_model_batch,
    attribution_to_rgb,
    load_image,
    save_attribution_png,
    save_image_png,
)

REPO = Path(__file__).resolve().parents[1]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _floats(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return _rng(seed).random(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# as_model_batch: layouts
# --------------------------------------------------------------------------------------------------

RGB = (3, 4, 5)  # C, H, W all different, so every layout is unambiguous
GRAY = (1, 4, 5)


def _check(out: tuple[np.ndarray, bool], expected: np.ndarray, single: bool) -> None:
    batch, got_single = out
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    assert batch.shape == expected.shape
    np.testing.assert_array_equal(batch, expected)
    assert got_single is single


def test_nchw_batch_passes_through():
    nchw = _floats((2, *RGB))
    _check(as_model_batch(nchw, RGB), nchw, single=False)


def test_chw_single_image():
    chw = _floats(RGB)
    expected = chw.reshape(1, 3, 4, 5)
    _check(as_model_batch(chw, RGB), expected, single=True)


def test_nhwc_batch_is_transposed():
    nhwc = _floats((2, 4, 5, 3))
    expected = np.empty((2, 3, 4, 5), np.float32)
    for n in range(2):
        for c in range(3):
            expected[n, c] = nhwc[n, :, :, c]
    _check(as_model_batch(nhwc, RGB), expected, single=False)


def test_hwc_single_image_is_transposed():
    hwc = _floats((4, 5, 3))
    expected = np.stack([hwc[:, :, c] for c in range(3)])[np.newaxis]
    _check(as_model_batch(hwc, RGB), expected, single=True)


def test_gray_hw_single_image():
    hw = _floats((4, 5))
    _check(as_model_batch(hw, GRAY), hw.reshape(1, 1, 4, 5), single=True)


def test_gray_nhw_batch():
    nhw = _floats((3, 4, 5))
    expected = np.stack([nhw[n][np.newaxis] for n in range(3)])
    _check(as_model_batch(nhw, GRAY), expected, single=False)


def test_gray_hwc_and_nhwc():
    hw1 = _floats((4, 5, 1))
    _check(as_model_batch(hw1, GRAY), hw1[:, :, 0].reshape(1, 1, 4, 5), single=True)
    nhw1 = _floats((2, 4, 5, 1))
    _check(as_model_batch(nhw1, GRAY), nhw1[..., 0].reshape(2, 1, 4, 5), single=False)


def test_gray_one_hw_image_is_single_chw():
    # (1, H, W) matches (C, H, W) before (N, H, W): one image; the data is the same either way.
    x = _floats((1, 4, 5))
    _check(as_model_batch(x, GRAY), x.reshape(1, 1, 4, 5), single=True)


def test_nhw_not_accepted_for_rgb_model():
    with pytest.raises(InputError, match=r"expected \(N, 3, 4, 5\), \(3, 4, 5\), \(N, 4, 5, 3\) or \(4, 5, 3\); got \(2, 4, 5\)"):
        as_model_batch(_floats((2, 4, 5)), RGB)
    with pytest.raises(InputError, match=r"got \(4, 5\)"):
        as_model_batch(_floats((4, 5)), RGB)


def test_cube_is_read_channels_first():
    shape = (3, 3, 3)
    x = np.arange(27, dtype=np.float32).reshape(3, 3, 3) / 26
    _check(as_model_batch(x, shape), x[np.newaxis], single=True)
    xb = np.stack([x, 1 - x])
    _check(as_model_batch(xb, shape), xb, single=False)


def test_list_input_and_pil_input():
    nested = [[[0.0, 0.5, 1.0], [0.25, 0.75, 1.0]]]  # (1, 2, 3) float64 -> CHW for (1, 2, 3)
    _check(as_model_batch(nested, (1, 2, 3)), np.array(nested, np.float32)[np.newaxis], single=True)

    hwc = _rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    pil = Image.fromarray(hwc)
    expected = (hwc.transpose(2, 0, 1)[np.newaxis].astype(np.float64) / 255).astype(np.float32)
    _check(as_model_batch(pil, RGB), expected, single=True)
    _check(as_model_batch([pil, pil], RGB), np.concatenate([expected, expected]), single=False)

    gray = Image.fromarray(hwc[:, :, 0])
    _check(as_model_batch(gray, GRAY), expected[:, :1], single=True)


def test_non_contiguous_input():
    base = _floats((4, 3, 8, 10))
    view = base[::2, :, ::2, ::2]  # (2, 3, 4, 5), strided
    _check(as_model_batch(view, RGB), np.ascontiguousarray(view), single=False)


# --------------------------------------------------------------------------------------------------
# as_model_batch: dtypes and values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_range", "expected"),
    [
        ((0.0, 1.0), [0.0, 128 / 255, 1.0]),
        ((-1.0, 1.0), [-1.0, -1.0 + 2 * 128 / 255, 1.0]),
    ],
)
def test_uint8_mapping_exact(value_range, expected):
    x = np.array([[0, 128, 255]], dtype=np.uint8)
    batch, single = as_model_batch(x, (1, 1, 3), value_range)
    assert single
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch.reshape(-1), np.array(expected, dtype=np.float64).astype(np.float32))
    assert batch.reshape(-1)[0] == value_range[0] and batch.reshape(-1)[-1] == value_range[1]


def test_uint8_all_levels_linear():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    batch, _ = as_model_batch(x, (1, 16, 16), (-0.5, 2.0))
    expected = (-0.5 + 2.5 * np.arange(256) / 255).astype(np.float32).reshape(1, 1, 16, 16)
    np.testing.assert_array_equal(batch, expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ">f4"])
def test_floats_taken_as_is(dtype):
    x = np.array([[-1.0, -0.25, 0.5, 1.0]], dtype=dtype)
    batch, _ = as_model_batch(x, (1, 1, 4), (-1.0, 1.0))
    assert batch.dtype == np.float32 and batch.dtype.isnative
    np.testing.assert_array_equal(batch.reshape(-1), [-1.0, -0.25, 0.5, 1.0])


def test_float_range_tolerance():
    # Within 1e-4 of the span: passed through unchanged (not clipped).
    ok = np.array([[-0.00005, 1.00005]], dtype=np.float64)
    batch, _ = as_model_batch(ok, (1, 1, 2))
    np.testing.assert_array_equal(batch.reshape(-1), ok.astype(np.float32).reshape(-1))
    # Beyond it: refused.
    with pytest.raises(InputError, match=r"pixel values span \[0, 1.001\] but the model expects \[0, 1\]"):
        as_model_batch(np.array([[0.0, 1.001]]), (1, 1, 2))
    with pytest.raises(InputError, match=r"expects \[-1, 1\]"):
        as_model_batch(np.array([[-1.0003, 0.0]]), (1, 1, 2), (-1.0, 1.0))


def test_float_0_255_refused_with_hint():
    x = np.array([[0.0, 255.0]], dtype=np.float32)
    with pytest.raises(InputError) as info:
        as_model_batch(x, (1, 1, 2))
    msg = str(info.value)
    assert "pixel values span [0, 255] but the model expects [0, 1]" in msg
    assert "pass uint8 or scale your floats" in msg


@pytest.mark.parametrize(
    ("x", "phrase"),
    [
        (np.zeros((4, 5), dtype=bool), "dtype bool is not accepted"),
        (np.zeros((4, 5), dtype=np.int64), "dtype int64 is not accepted"),
        (np.zeros((4, 5), dtype=np.int32), "x.astype(np.uint8)"),
        (np.zeros((4, 5), dtype=np.uint16), "dtype uint16 is not accepted"),
        (np.zeros((4, 5), dtype=np.int8), "dtype int8"),
        (np.zeros((4, 5), dtype=np.complex64), "dtype complex64 is not accepted"),
        (np.zeros((4, 5), dtype=object), "dtype object is not accepted"),
        (np.full((4, 5), "a"), "is not accepted"),
        ("not an image", "is not accepted"),
        ([[0.0, 1.0], [0.5]], "cannot be read as an array"),
    ],
)
def test_rejected_dtypes(x, phrase):
    with pytest.raises(InputError) as info:
        as_model_batch(x, GRAY)
    assert phrase in str(info.value)
    if "dtype" in phrase:
        assert "uint8" in str(info.value) and "float32" in str(info.value)


def test_non_finite_values_counted():
    x = _floats((2, 4, 5, 3))
    x[0, 0, 0, 0] = np.nan
    x[1, 2, 3, 1] = np.nan
    x[1, 0, 0, 2] = np.inf
    with pytest.raises(InputError, match=r"3 of 120 values are not finite \(2 NaN, 1 infinite\)"):
        as_model_batch(x, RGB)


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (0, 4, 5, 3)])
def test_empty_batch_refused(shape):
    with pytest.raises(InputError, match="empty batch"):
        as_model_batch(np.zeros(shape, np.float32), RGB)


def test_empty_gray_nhw_refused():
    with pytest.raises(InputError, match="empty batch"):
        as_model_batch(np.zeros((0, 4, 5), np.uint8), GRAY)


def test_wrong_shape_message_lists_accepted_shapes():
    with pytest.raises(InputError) as info:
        as_model_batch(np.zeros((3, 32, 32), np.float32), (1, 28, 28))
    assert "expected (N, 1, 28, 28), (1, 28, 28), (N, 28, 28, 1), (28, 28, 1), (28, 28) or (N, 28, 28); got (3, 32, 32)" in str(
        info.value
    )


@pytest.mark.parametrize("shape", [(), (5,), (4, 5, 4), (2, 2, 3, 4, 5), (1, 1, 3, 4, 5), (4, 5, 3)])
def test_wrong_shapes_refused(shape):
    with pytest.raises(InputError, match="expected"):
        as_model_batch(np.zeros(shape, np.float32), (3, 4, 6))


def test_channel_mismatch_hint():
    with pytest.raises(InputError, match=r"got \(4, 5, 3\) \(the model takes 1-channel 4x5 images"):
        as_model_batch(np.zeros((4, 5, 3), np.uint8), GRAY)


@pytest.mark.parametrize(
    ("input_shape", "value_range", "phrase"),
    [
        ((3, 4), (0, 1), "input_shape"),
        ((3, 0, 4), (0, 1), "input_shape"),
        ((3.5, 4, 5), (0, 1), "input_shape"),
        ((3, 4, 5), (1, 0), "value_range"),
        ((3, 4, 5), (0, float("nan")), "value_range"),
        ((3, 4, 5), (0,), "value_range"),
    ],
)
def test_bad_model_arguments(input_shape, value_range, phrase):
    with pytest.raises(InputError, match=phrase):
        as_model_batch(np.zeros((3, 4, 5), np.float32), input_shape, value_range)


@pytest.mark.parametrize(
    "x",
    [
        _floats((2, 3, 4, 5)),  # already NCHW float32: must still be a copy
        _floats((4, 5, 3)),
        np.random.default_rng(2).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8),
        np.linspace(0, 1, 60).reshape(3, 4, 5),  # float64
    ],
)
def test_caller_array_untouched_and_not_shared(x):
    before = x.copy()
    flags_before = x.flags.writeable
    batch, _ = as_model_batch(x, RGB)
    np.testing.assert_array_equal(x, before)
    assert x.dtype == before.dtype and x.flags.writeable == flags_before
    assert not np.shares_memory(batch, x)
    batch[...] = -7.0  # writing the batch must not reach the caller's array
    np.testing.assert_array_equal(x, before)


def test_read_only_input_accepted():
    x = _floats((3, 4, 5))
    x.flags.writeable = False
    batch, _ = as_model_batch(x, RGB)
    assert batch.flags.writeable
    np.testing.assert_array_equal(batch[0], x)


# --------------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("shape", [(1, 6, 7), (3, 6, 7), (3, 3, 3)])
def test_png_round_trip(tmp_path, shape, value_range):
    low, high = value_range
    image = (low + (high - low) * _rng(3).random(shape)).astype(np.float32)
    path = tmp_path / "img.png"
    save_image_png(image, path, value_range=value_range, scale=1)
    levels = np.rint((image.astype(np.float64) - low) / (high - low) * 255).astype(np.uint8)
    with Image.open(path) as img:
        assert img.mode == ("L" if shape[0] == 1 else "RGB")
        raw = np.asarray(img)
    np.testing.assert_array_equal(raw, levels[0] if shape[0] == 1 else levels.transpose(1, 2, 0))

    loaded = load_image(path, shape, value_range)
    assert loaded.dtype == np.float32 and loaded.shape == shape and loaded.flags.c_contiguous
    expected = (low + (high - low) * levels.astype(np.float64) / 255).astype(np.float32)
    np.testing.assert_array_equal(loaded, expected)
    # Saving what was loaded gives the same pixels again.
    save_image_png(loaded, tmp_path / "again.png", value_range=value_range, scale=1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")), raw)


def test_load_image_matches_as_model_batch(tmp_path):
    hwc = _rng(4).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(hwc).save(tmp_path / "rgb.png")
    loaded = load_image(tmp_path / "rgb.png", (3, 6, 7), (-1, 1))
    batch, _ = as_model_batch(hwc, (3, 6, 7), (-1, 1))
    np.testing.assert_array_equal(loaded, batch[0])


def test_save_image_png_hw_uint8_and_scale(tmp_path):
    hw = np.array([[0, 255], [10, 20], [30, 40]], dtype=np.uint8)
    path = tmp_path / "nested" / "dir" / "x.png"
    save_image_png(hw, path, scale=3)
    with Image.open(path) as img:
        assert img.size == (6, 9)
        pixels = np.asarray(img)
    np.testing.assert_array_equal(pixels, np.kron(hw, np.ones((3, 3), np.uint8)))


def test_save_image_png_clips_out_of_range(tmp_path):
    save_image_png(np.array([[-0.5, 0.5, 1.5]]), tmp_path / "c.png", scale=1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), [[0, 128, 255]])


@pytest.mark.parametrize(
    ("image", "kwargs", "phrase"),
    [
        (np.zeros((2, 4, 4)), {}, r"expected \(1, H, W\), \(3, H, W\) or \(H, W\)"),
        (np.zeros((4, 4, 3)), {}, "expected"),
        (np.zeros((4,)), {}, "expected"),
        (np.zeros((4, 4), np.int64), {}, "dtype int64"),
        (np.full((4, 4), np.nan), {}, "not finite"),
        (np.zeros((4, 4)), {"scale": 0}, "scale"),
        (np.zeros((4, 4)), {"scale": 1.5}, "scale"),
    ],
)
def test_save_image_png_rejects(tmp_path, image, kwargs, phrase):
    with pytest.raises(InputError, match=phrase):
        save_image_png(image, tmp_path / "x.png", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_load_image_16_bit_gray_scaled(tmp_path):
    levels = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    loaded = load_image(tmp_path / "deep.png", (1, 1, 3))
    np.testing.assert_array_equal(loaded, (levels / 65535).astype(np.float32)[np.newaxis])


def test_load_image_converts_modes(tmp_path):
    rgb = _rng(5).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    gray_from_rgb = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png", GRAY), (gray_from_rgb / 255).astype(np.float32)[np.newaxis])

    gray = rgb[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    expected = np.broadcast_to((gray / 255).astype(np.float32), (3, 4, 5))
    np.testing.assert_array_equal(load_image(tmp_path / "gray.png", RGB), expected)

    rgba = np.dstack([rgb, np.full((4, 5), 9, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png", RGB), (rgb.transpose(2, 0, 1) / 255).astype(np.float32))


def test_load_image_jpeg(tmp_path):
    Image.new("RGB", (5, 4), (255, 0, 0)).save(tmp_path / "red.jpg", quality=95)
    loaded = load_image(tmp_path / "red.jpg", RGB)
    assert loaded.shape == RGB
    np.testing.assert_allclose(loaded.mean(axis=(1, 2)), [1.0, 0.0, 0.0], atol=0.02)


def test_load_image_wrong_size(tmp_path):
    Image.new("L", (32, 30)).save(tmp_path / "big.png")
    with pytest.raises(InputError) as info:
        load_image(tmp_path / "big.png", (1, 28, 28))
    msg = str(info.value)
    assert "big.png" in msg
    assert "32 wide x 30 high" in msg and "28 wide x 28 high" in msg


def test_load_image_missing_and_unreadable(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(InputError, match=r"nope\.png: no such file"):
        load_image(missing, GRAY)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png")
    with pytest.raises(InputError, match=r"junk\.png: not an image file"):
        load_image(junk, GRAY)
    truncated = tmp_path / "cut.png"
    Image.fromarray(_rng(6).integers(0, 256, (4, 5), dtype=np.uint8)).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:-30])
    with pytest.raises(InputError, match=r"cut\.png"):
        load_image(truncated, GRAY)
    with pytest.raises(InputError, match="is a directory|cannot read"):
        load_image(tmp_path, GRAY)


@pytest.mark.parametrize("channels", [2, 4])
def test_load_image_wrong_channel_count(tmp_path, channels):
    Image.new("RGB", (5, 4)).save(tmp_path / "x.png")
    with pytest.raises(InputError, match=f"model takes {channels}"):
        load_image(tmp_path / "x.png", (channels, 4, 5))


def test_load_image_float_mode_refused(tmp_path):
    Image.fromarray(np.zeros((4, 5), np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(InputError, match="no fixed pixel range"):
        load_image(tmp_path / "f.tiff", GRAY)


# --------------------------------------------------------------------------------------------------
# Attribution maps
# --------------------------------------------------------------------------------------------------


def test_attribution_colours_at_key_points():
    attr = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]])
    rgb = attribution_to_rgb(attr, limit=2.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 6, 3)
    np.testing.assert_array_equal(
        rgb[0],
        [
            [0, 0, 255],  # -limit: pure blue
            [128, 128, 255],  # half way to blue (127.5 rounds to even 128)
            [255, 255, 255],  # 0: white
            [255, 128, 128],
            [255, 0, 0],  # +limit: pure red
            [255, 0, 0],  # beyond limit: clipped
        ],
    )


def test_attribution_default_limit_is_max_abs_and_channels_summed():
    attr = np.zeros((3, 2, 2))
    attr[0, 0, 0], attr[1, 0, 0], attr[2, 0, 0] = 1.0, 1.0, 2.0  # sums to 4: the max |value|
    attr[:, 1, 1] = -1.0  # sums to -3
    attr[0, 0, 1], attr[2, 0, 1] = 2.0, -2.0  # sums to 0
    rgb = attribution_to_rgb(attr)
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(rgb[1, 0], [255, 255, 255])
    b = round(255 * (1 - 3 / 4))
    np.testing.assert_array_equal(rgb[1, 1], [b, b, 255])


def test_attribution_symmetric():
    attr = _rng(7).normal(size=(5, 6))
    pos, neg = attribution_to_rgb(attr), attribution_to_rgb(-attr)
    np.testing.assert_array_equal(pos[..., 0], neg[..., 2])
    np.testing.assert_array_equal(pos[..., 1], neg[..., 1])
    np.testing.assert_array_equal(pos[..., 2], neg[..., 0])


def test_attribution_all_zero_is_white():
    with np.errstate(all="raise"):
        rgb = attribution_to_rgb(np.zeros((1, 3, 4), np.float32))
    assert rgb.shape == (3, 4, 3)
    assert (rgb == 255).all()


@pytest.mark.parametrize(
    ("attr", "kwargs", "phrase"),
    [
        (np.zeros(5), {}, r"expected \(C, H, W\) or \(H, W\)"),
        (np.zeros((1, 1, 2, 2)), {}, "expected"),
        (np.array([[0.0, np.nan]]), {}, r"1 of 2 values are not finite"),
        (np.zeros((2, 2), complex), {}, "dtype complex128"),
        (np.zeros((2, 2)), {"limit": 0.0}, "limit"),
        (np.zeros((2, 2)), {"limit": -1.0}, "limit"),
        (np.zeros((2, 2)), {"limit": float("inf")}, "limit"),
        (np.zeros((0, 2)), {}, "empty"),
    ],
)
def test_attribution_rejects(attr, kwargs, phrase):
    with pytest.raises(InputError, match=phrase):
        attribution_to_rgb(attr, **kwargs)


def test_save_attribution_png(tmp_path):
    attr = _rng(8).normal(size=(3, 7, 5))
    path = tmp_path / "made" / "for" / "you" / "attr.png"
    save_attribution_png(attr, path, scale=3)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == (5 * 3, 7 * 3)
        pixels = np.asarray(img)
    expected = attribution_to_rgb(attr).repeat(3, axis=0).repeat(3, axis=1)
    np.testing.assert_array_equal(pixels, expected)
    assert [p.name for p in path.parent.iterdir()] == ["attr.png"]  # no temporary files left behind


def test_save_attribution_png_default_scale_and_overwrite(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"old")
    save_attribution_png(np.ones((2, 3)), path)
    with Image.open(path) as img:
        assert img.size == (12, 8)
    mode = path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    path.write_bytes(b"old")

    def boom(self, fp, format=None, **params):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(InputError, match="disk full"):
        save_attribution_png(np.ones((2, 3)), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_save_into_path_under_a_file_refused(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InputError, match="cannot create directory"):
        save_attribution_png(np.ones((2, 2)), tmp_path / "file" / "a.png")


# --------------------------------------------------------------------------------------------------
# Torch-free
# --------------------------------------------------------------------------------------------------


def test_import_does_not_import_torch():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = (
        "import sys, xaisdk.runtime.images; "
        "bad = [m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
