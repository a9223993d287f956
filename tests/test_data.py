"""Tests for xaisdk.data: containers, splitting, digits, shapes, .npz and image-folder loaders."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits as sklearn_digits

from xaisdk.data import (
    SHAPE_OBJECTS,
    Dataset,
    Split,
    confounder_patch,
    load_dataset,
    load_digits,
    load_image_folder,
    load_npz,
    load_shapes,
    make_shapes,
    stratified_split,
)
from xaisdk.errors import InputError


def toy(n: int = 6, masks: bool = False) -> Dataset:
    x = np.linspace(0, 1, n * 16, dtype=np.float32).reshape(n, 1, 4, 4)
    m = (x > 0.5).astype(np.float32) if masks else None
    return Dataset(x, np.arange(n, dtype=np.int64) % 2, ("a", "b"), "toy", m)


def merged(split: Split) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([split.train.x, split.test.x]), np.concatenate([split.train.y, split.test.y])


# ---------------------------------------------------------------- Dataset, Split, stratified_split


def test_dataset_properties_subset_and_of_class():
    ds = toy(6, masks=True)
    assert len(ds) == 6 and ds.input_shape == (1, 4, 4) and ds.num_classes == 2
    picked = ds.subset(np.array([5, 0, 2]))
    assert picked.y.tolist() == [1, 0, 0]
    np.testing.assert_array_equal(picked.x[0], ds.x[5])
    np.testing.assert_array_equal(picked.masks[1], ds.masks[0])
    by_mask = ds.subset(ds.y == 1)
    assert len(by_mask) == 3 and set(by_mask.y.tolist()) == {1} and by_mask.masks.shape == (3, 1, 4, 4)
    assert ds.of_class(0).y.tolist() == [0, 0, 0]
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0
    assert "n=6" in repr(ds)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"x": np.zeros((2, 1, 4, 4))}, "float32"),
        ({"x": np.zeros((2, 4, 4), np.float32)}, "4 dimensions"),
        ({"x": np.full((2, 1, 4, 4), 1.5, np.float32)}, r"\[0, 1\]"),
        ({"x": np.full((2, 1, 4, 4), np.nan, np.float32)}, "NaN"),
        ({"y": np.array([0, 1], np.int32)}, "int64"),
        ({"y": np.array([0, 1, 1], np.int64)}, "shape"),
        ({"y": np.array([0, 2], np.int64)}, "labels in"),
        ({"class_names": ("a", "a")}, "distinct"),
        ({"masks": np.zeros((2, 3, 4, 4), np.float32)}, "masks"),
        ({"masks": np.full((2, 1, 4, 4), 0.5, np.float32)}, "0 or 1"),
    ],
)
def test_dataset_rejects_bad_fields(change, match):
    fields = {"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.array([0, 1], np.int64),
              "class_names": ("a", "b"), "name": "t"}
    fields.update(change)
    with pytest.raises(InputError, match=match):
        Dataset(**fields)


def test_subset_and_of_class_reject_bad_index():
    ds = toy(4)
    with pytest.raises(InputError, match="positions"):
        ds.subset(np.array([0, 4]))
    with pytest.raises(InputError, match="boolean mask"):
        ds.subset(np.array([True, False]))
    with pytest.raises(InputError, match="integer"):
        ds.subset(np.array([0.5]))
    with pytest.raises(InputError, match="c:"):
        ds.of_class(2)


def test_split_requires_matching_parts():
    other = Dataset(np.zeros((2, 1, 4, 4), np.float32), np.array([0, 1]), ("x", "y"), "other")
    with pytest.raises(InputError, match="class_names"):
        Split(toy(), other)


def test_stratified_split_per_class_counts_and_determinism():
    y = np.repeat([0, 1, 2, 3], [50, 20, 2, 1])
    train, test = stratified_split(y, 0.2, seed=3)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(y)))
    assert np.bincount(y[test], minlength=4).tolist() == [10, 4, 1, 0]  # a singleton class stays in train
    again = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(stratified_split(y, 0.2, seed=4)[1], test)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.array([0, 1, 0, 1]), 0.0, 0), "test_fraction"),
        ((np.array([0, 1, 0, 1]), 1.0, 0), "test_fraction"),
        ((np.array([0, 1, 0, 1]), 0.5, -1), "seed"),
        ((np.zeros((2, 2)), 0.5, 0), "1-D"),
        ((np.array([0.5, 1.0]), 0.5, 0), "integer"),
        ((np.array([0, 1]), 0.5, 0), "no class has 2"),
    ],
)
def test_stratified_split_rejects_bad_input(args, match):
    with pytest.raises(InputError, match=match):
        stratified_split(*args)


# ---------------------------------------------------------------- digits


def test_digits_shapes_classes_and_range():
    split = load_digits()
    x, y = merged(split)
    assert x.shape == (1797, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert split.train.class_names == tuple(str(d) for d in range(10)) and split.train.name == "digits"
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.99
    assert np.bincount(y).tolist() == np.bincount(sklearn_digits().target).tolist()


def test_digits_resize_preserves_images():
    bunch = sklearn_digits()
    train_idx, test_idx = stratified_split(bunch.target, 0.2, seed=0)
    original = bunch.images[np.concatenate([train_idx, test_idx])] / 16.0
    x, y = merged(load_digits(size=28))
    assert np.array_equal(y, bunch.target[np.concatenate([train_idx, test_idx])])
    # Area-averaging the 28x28 image back to 8x8 must give back the original strokes.
    down = F.interpolate(torch.from_numpy(x), size=(8, 8), mode="area").numpy()[:, 0]
    per_image = [np.corrcoef(d.ravel(), o.ravel())[0, 1] for d, o in zip(down, original)]
    assert np.corrcoef(down.ravel(), original.ravel())[0, 1] > 0.95
    assert np.median(per_image) > 0.95
    # size=8 is the identity: exactly the bundled values / 16.
    x8, _ = merged(load_digits(size=8))
    np.testing.assert_allclose(x8[:, 0], original, atol=1e-6)


def test_digits_split_is_stratified_deterministic_and_seeded():
    a, b, c = load_digits(size=8), load_digits(size=8), load_digits(size=8, seed=1)
    assert np.array_equal(a.test.x, b.test.x) and np.array_equal(a.train.y, b.train.y)
    assert not np.array_equal(a.test.x, c.test.x)
    class_total = np.bincount(sklearn_digits().target)
    test_counts = np.bincount(a.test.y, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * class_total) <= 1)
    train_idx, test_idx = stratified_split(sklearn_digits().target, 0.2, seed=0)
    assert np.intersect1d(train_idx, test_idx).size == 0 and len(train_idx) + len(test_idx) == 1797
    assert len(a.test) == len(test_idx) == 359


def test_digits_rejects_bad_arguments():
    with pytest.raises(InputError, match="size"):
        load_digits(size=2)
    with pytest.raises(InputError, match="test_fraction"):
        load_digits(test_fraction=1.5)


# ---------------------------------------------------------------- shapes


def test_shapes_deterministic_and_seeded():
    a, b, c = make_shapes(50, seed=5), make_shapes(50, seed=5), make_shapes(50, seed=6)
    for field in ("x", "y", "masks"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x, c.x)
    assert a.x.shape == (50, 3, 32, 32) and a.x.dtype == np.float32 and a.masks.dtype == np.float32
    assert a.name == "shapes" and a.class_names == ("circle", "square", "triangle")


def test_shapes_balanced_classes():
    assert np.bincount(make_shapes(300, seed=0).y).tolist() == [100, 100, 100]
    counts = np.bincount(make_shapes(301, objects=SHAPE_OBJECTS, seed=0).y)
    assert len(counts) == 5 and counts.max() - counts.min() == 1


def test_shapes_object_mask_is_exactly_the_object_on_plain_backgrounds():
    ds = make_shapes(120, backgrounds=("plain",), objects=("circle", "square"), seed=2)
    assert set(np.unique(ds.masks).tolist()) == {0.0, 1.0}
    for image, mask in zip(ds.x, ds.masks[:, 0].astype(bool)):
        inside, outside = image[:, mask], image[:, ~mask]
        # Plain background: one colour inside the mask (the object), another one outside.
        assert np.all(inside == inside[:, :1]) and np.all(outside == outside[:, :1])
        assert np.all(np.abs(inside[:, 0] - outside[:, 0]) >= 0.15 - 1e-6)


def test_shapes_mask_area_matches_object_scale():
    size, (low, high) = 32, (0.3, 0.5)
    ds = make_shapes(400, objects=("square", "circle"), image_size=size, object_scale=(low, high), seed=1)
    squares = ds.masks[ds.y == 0, 0]
    fraction = squares.mean(axis=(1, 2))
    # A square of side s px covers between floor(s)^2 and ceil(s)^2 pixel centres.
    assert fraction.min() >= (low * size - 1) ** 2 / size**2 and fraction.max() <= (high * size + 1) ** 2 / size**2
    height, width = squares.any(axis=2).sum(axis=1), squares.any(axis=1).sum(axis=1)
    assert np.all(squares.sum(axis=(1, 2)) == height * width)  # a filled axis-aligned rectangle ...
    assert np.all(np.abs(height - width) <= 1)  # ... that is square up to pixel rounding
    assert height.min() >= np.floor(low * size) and height.max() <= np.ceil(high * size)
    circles = ds.masks[ds.y == 1, 0].mean(axis=(1, 2)) / (np.pi / 4)
    assert circles.min() >= (low - 1 / size) ** 2 and circles.max() <= (high + 1 / size) ** 2


def test_shapes_background_and_combined_rules():
    bg = make_shapes(60, class_rule="background", backgrounds=("plain", "stripes", "dots"), seed=0)
    obj = make_shapes(60, class_rule="object", backgrounds=("plain", "stripes", "dots"), seed=0)
    assert bg.class_names == ("plain", "stripes", "dots")
    assert np.all(bg.masks.mean(axis=(1, 2, 3)) > 0.5)  # objects cover at most a quarter of the image
    plain = bg.of_class(0)
    assert all(len(np.unique(img[:, m[0] == 1].reshape(img.shape[0], -1), axis=1).T) == 1
               for img, m in zip(plain.x, plain.masks))
    combo = make_shapes(40, class_rule="object_background", objects=("circle", "square"), seed=0)
    assert combo.class_names == ("circle/plain", "circle/stripes", "square/plain", "square/stripes")
    assert np.all(combo.masks == 1.0)
    assert obj.masks.mean() < 0.3


def test_shapes_grayscale_and_small_images():
    ds = make_shapes(20, colors=False, image_size=8, seed=0)
    assert ds.x.shape == (20, 1, 8, 8) and np.all(ds.masks.sum(axis=(1, 2, 3)) >= 1)


def test_shapes_confounder_patch_correlates_with_class_0_and_is_outside_mask():
    ds = make_shapes(600, confounder=0.3, seed=4)
    patch = confounder_patch(32)
    side = patch.shape[0]
    has_patch = np.all(ds.x[:, :, :side, :side] == patch, axis=(1, 2, 3))
    assert has_patch[ds.y == 0].mean() == pytest.approx(0.3)  # exactly round(0.3 * 200) images
    assert not has_patch[ds.y != 0].any()
    assert np.all(ds.masks[has_patch, :, :side, :side] == 0)
    assert not np.any(np.all(make_shapes(300, seed=4).x[:, :, :side, :side] == patch, axis=(1, 2, 3)))
    full = make_shapes(90, confounder=1.0, class_rule="object_background", seed=1)
    assert np.all(full.masks[full.y == 0, :, :side, :side] == 0) and full.masks[full.y != 0].min() == 1.0


def test_shapes_generation_is_fast():
    start = time.perf_counter()
    make_shapes(2000, seed=0)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n:"),
        ({"image_size": 4}, "image_size"),
        ({"objects": ("hexagon",)}, "hexagon"),
        ({"objects": "circle"}, "objects"),
        ({"objects": ("circle",)}, "single class"),
        ({"backgrounds": ("plain", "plain")}, "distinct"),
        ({"class_rule": "colour"}, "class_rule"),
        ({"object_scale": (0.0, 0.5)}, "object_scale"),
        ({"object_scale": (0.5, 0.3)}, "low <= high"),
        ({"object_scale": (0.2, 1.5)}, "object_scale"),
        ({"object_scale": 0.5}, "pair"),
        ({"colors": "yes"}, "colors"),
        ({"confounder": 1.5}, "confounder"),
        ({"seed": -1}, "seed"),
    ],
)
def test_make_shapes_rejects_bad_arguments(kwargs, match):
    args = {"n": 10, **kwargs}
    with pytest.raises(InputError, match=match):
        make_shapes(**args)


def test_load_shapes_parts_use_different_seeds():
    split = load_shapes(60, 30, seed=1, image_size=16, colors=False)
    assert (len(split.train), len(split.test)) == (60, 30)
    assert split.train.x.shape[1:] == (1, 16, 16)
    assert not np.array_equal(split.train.x[:30], split.test.x)
    assert np.array_equal(load_shapes(60, 30, seed=1, image_size=16, colors=False).test.x, split.test.x)
    with pytest.raises(InputError, match="unknown option"):
        load_shapes(10, 10, bogus=1)


# ---------------------------------------------------------------- load_npz


def loaded_in_original_order(split: Split, y: np.ndarray, seed: int = 0) -> np.ndarray:
    train_idx, test_idx = stratified_split(y, 0.2, seed)
    x = np.empty((len(y),) + split.train.input_shape, np.float32)
    x[train_idx], x[test_idx] = split.train.x, split.test.x
    return x


def test_npz_round_trip_uint8_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 8, 6, 3), dtype=np.uint8)
    x[0, 0, 0] = 255
    y = np.arange(20) % 2
    np.savez(tmp_path / "rgb.npz", x=x, y=y, class_names=np.array(["cat", "dog"]))
    split = load_npz(tmp_path / "rgb.npz")
    assert split.train.class_names == ("cat", "dog") and split.train.name == "rgb"
    got = loaded_in_original_order(split, y)
    assert got.shape == (20, 3, 8, 6) and got[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(got, x.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    assert load_npz(tmp_path / "rgb.npz", class_names=["x", "y"]).test.class_names == ("x", "y")


def test_npz_round_trip_float_nchw_and_nhw(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((30, 1, 5, 7))
    y = np.arange(30) % 3
    np.savez(tmp_path / "f.npz", x=x, y=y.astype(np.float64))
    split = load_npz(tmp_path / "f.npz")
    assert split.train.class_names == ("0", "1", "2") and split.train.y.dtype == np.int64
    np.testing.assert_allclose(loaded_in_original_order(split, y), x.astype(np.float32))
    np.savez(tmp_path / "g.npz", x=x[:, 0].astype(np.float32), y=y)
    got = loaded_in_original_order(load_npz(tmp_path / "g.npz"), y)
    assert got.shape == (30, 1, 5, 7)
    np.testing.assert_array_equal(got[:, 0], x[:, 0].astype(np.float32))


def test_npz_channels_first_wins_when_ambiguous(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 3, 5, 3), np.uint8), y=np.array([0, 1, 0, 1]))
    assert load_npz(tmp_path / "a.npz", test_fraction=0.5).train.input_shape == (3, 5, 3)


NPZ_X = np.zeros((4, 1, 3, 3), np.float32)
NPZ_Y = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    "arrays, kwargs, match",
    [
        ({"y": NPZ_Y}, {}, "missing array 'x'"),
        ({"x": NPZ_X}, {}, "missing array 'y'"),
        ({"x": np.full((4, 1, 3, 3), "a"), "y": NPZ_Y}, {}, "numeric"),
        ({"x": NPZ_X.astype(np.int64), "y": NPZ_Y}, {}, "uint8"),
        ({"x": np.full((4, 1, 3, 3), np.nan), "y": NPZ_Y}, {}, "NaN"),
        ({"x": np.full((4, 1, 3, 3), np.inf), "y": NPZ_Y}, {}, "infinite"),
        ({"x": NPZ_X + 2, "y": NPZ_Y}, {}, r"\[0, 1\]"),
        ({"x": NPZ_X, "y": np.array([0, 1, 0.5, 1])}, {}, "integer"),
        ({"x": NPZ_X, "y": np.array(["a", "b", "a", "b"])}, {}, "integer"),
        ({"x": NPZ_X, "y": np.array([0, 1, 0])}, {}, "3 labels"),
        ({"x": NPZ_X, "y": np.array([0, -1, 0, 1])}, {}, "negative"),
        ({"x": NPZ_X, "y": np.array([0, 2, 0, 2])}, {"class_names": ["a", "b"]}, "at least 3 names"),
        ({"x": NPZ_X, "y": np.array([0, 2, 0, 2]), "class_names": np.array(["a"])}, {}, "at least 3 names"),
        ({"x": NPZ_X, "y": np.zeros(4, int)}, {}, "at least 2 classes"),
        ({"x": np.zeros((0, 1, 3, 3), np.float32), "y": np.zeros(0, int)}, {}, "no images"),
        ({"x": np.zeros((4, 3, 3), np.float32)[..., None, None], "y": NPZ_Y}, {}, "shape"),
        ({"x": np.zeros((4, 5, 5, 4), np.uint8), "y": NPZ_Y}, {}, "channels"),
    ],
)
def test_npz_rejects_malformed_archives(tmp_path, arrays, kwargs, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=match):
        load_npz(tmp_path / "bad.npz", **kwargs)


def test_npz_rejects_missing_non_zip_and_object_arrays(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(InputError, match="not an .npz archive"):
        load_npz(tmp_path / "text.npz")
    np.save(tmp_path / "plain.npy", NPZ_X)
    with pytest.raises(InputError, match="not an .npz archive"):
        load_npz(tmp_path / "plain.npy")
    with zipfile.ZipFile(tmp_path / "raw.npz", "w") as archive:
        archive.writestr("x.npy", b"not an array")
        archive.writestr("y.npy", b"not an array")
    with pytest.raises(InputError, match="x: not a numpy array"):
        load_npz(tmp_path / "raw.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([NPZ_X, 1], dtype=object), y=NPZ_Y)
    with pytest.raises(InputError, match="object arrays"):
        load_npz(tmp_path / "obj.npz")


# ---------------------------------------------------------------- load_image_folder


def write_images(root: Path, spec: dict[str, list[tuple[str, Image.Image]]]) -> Path:
    for class_name, files in spec.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for file_name, image in files:
            image.save(root / class_name / file_name)
    return root


def test_image_folder_grayscale_values_and_class_names(tmp_path):
    root = write_images(tmp_path / "gray", {
        "white": [(f"{i}.png", Image.new("L", (6, 4), 255)) for i in range(3)],
        "black": [(f"{i}.png", Image.new("L", (6, 4), 0)) for i in range(3)],
    })
    (root / "white" / ".DS_Store").write_bytes(b"\0junk")
    (root / "white" / "notes.txt").write_text("not an image")
    (root / ".hidden_class").mkdir()
    split = load_image_folder(root, test_fraction=1 / 3)
    assert split.train.class_names == ("black", "white") and split.train.name == "gray"
    x, y = merged(split)
    assert x.shape == (6, 1, 4, 6) and x.dtype == np.float32
    assert np.all(x[y == 1] == 1.0) and np.all(x[y == 0] == 0.0)
    assert np.bincount(split.test.y).tolist() == [1, 1]


def test_image_folder_rgb_mixed_and_grayscale_option(tmp_path):
    root = write_images(tmp_path / "rgb", {
        "red": [(f"{i}.png", Image.new("RGB", (5, 5), (255, 0, 0))) for i in range(2)],
        "grey": [(f"{i}.jpg", Image.new("L", (5, 5), 255)) for i in range(2)],
    })
    x, y = merged(load_image_folder(root, test_fraction=0.5))
    assert x.shape == (4, 3, 5, 5)  # one colour class makes the whole set RGB
    np.testing.assert_allclose(x[y == 1][:, :, 2, 2], [[1.0, 0.0, 0.0]] * 2)
    np.testing.assert_allclose(x[y == 0], 1.0, atol=2 / 255)  # grey repeated into 3 channels (jpeg: near 255)
    gray, gy = merged(load_image_folder(root, grayscale=True, test_fraction=0.5))
    assert gray.shape == (4, 1, 5, 5)
    np.testing.assert_allclose(gray[gy == 1], 0.299, atol=1e-3)


def test_image_folder_resizes_and_reads_16_bit(tmp_path):
    deep = Image.fromarray(np.full((3, 3), 65535, np.uint16))
    root = write_images(tmp_path / "mixed", {
        "a": [("big.png", Image.new("L", (10, 8), 255)), ("deep.png", deep)],
        "b": [("small.bmp", Image.new("L", (4, 4), 0)), ("other.tif", Image.new("L", (6, 6), 0))],
    })
    with pytest.raises(InputError, match="size="):
        load_image_folder(root)
    x, y = merged(load_image_folder(root, size=(5, 7), test_fraction=0.5))
    assert x.shape == (4, 1, 5, 7)
    np.testing.assert_allclose(x[y == 0], 1.0, atol=1e-6)  # 16-bit 65535 -> 1.0, 8-bit 255 -> 1.0
    np.testing.assert_allclose(x[y == 1], 0.0, atol=1e-6)


def test_image_folder_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(InputError, match="expected a directory"):
        load_image_folder(tmp_path / "file.png")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(InputError, match="class subfolders.*none"):
        load_image_folder(tmp_path / "empty_root")
    one = write_images(tmp_path / "one", {"only": [("a.png", Image.new("L", (4, 4)))]})
    with pytest.raises(InputError, match="only 'only'"):
        load_image_folder(one)
    empty = write_images(tmp_path / "empty", {"a": [("a.png", Image.new("L", (4, 4)))], "b": []})
    (empty / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="no image files"):
        load_image_folder(empty)
    corrupt = write_images(tmp_path / "corrupt", {"a": [("a.png", Image.new("L", (4, 4)))],
                                                  "b": [("b.png", Image.new("L", (4, 4)))]})
    (corrupt / "b" / "garbage.png").write_bytes(b"definitely not a png")
    with pytest.raises(InputError, match="garbage.png"):
        load_image_folder(corrupt)
    with pytest.raises(InputError, match="size"):
        load_image_folder(one, size=0)
    with pytest.raises(InputError, match="grayscale"):
        load_image_folder(one, grayscale="yes")


# ---------------------------------------------------------------- load_dataset


def test_load_dataset_dispatch(tmp_path):
    assert load_dataset("digits", size=8).train.input_shape == (1, 8, 8)
    assert len(load_dataset("shapes", n_train=12, n_test=6, image_size=16).test) == 6
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 3), np.uint8), y=NPZ_Y)
    assert load_dataset(str(tmp_path / "d.npz"), test_fraction=0.5).train.name == "d"
    root = write_images(tmp_path / "folder", {"a": [("a.png", Image.new("L", (4, 4)))] * 2,
                                              "b": [("b.png", Image.new("L", (4, 4))), ("c.png", Image.new("L", (4, 4)))]})
    assert load_dataset(root, test_fraction=0.5).train.class_names == ("a", "b")


def test_load_dataset_errors(tmp_path):
    with pytest.raises(InputError, match="'digits', 'shapes', a path to a .npz file"):
        load_dataset("mnist")
    with pytest.raises(InputError, match="not found"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(InputError, match="unknown option colour.*load_digits accepts size"):
        load_dataset("digits", colour=True)
    with pytest.raises(InputError, match="unknown option"):
        load_dataset("shapes", colour=True)
    with pytest.raises(InputError, match="expected"):
        load_dataset(3)
