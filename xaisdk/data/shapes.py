"""Synthetic "object on a textured background" images with ground-truth masks.

In the spirit of the BAM benchmark (Yang & Kim 2019): each image shows one object pasted on a
background texture, and the class is decided by the object, the background or both, so the
pixels that truly explain the class are known (`Dataset.masks`). An optional confounder patch
adds a spurious, class-correlated feature outside the mask.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from xaisdk.data._checks import check_bool, check_int, check_names, check_real, check_seed, describe
from xaisdk.data.dataset import Dataset, Split
from xaisdk.errors import InputError

SHAPE_OBJECTS = ("circle", "square", "triangle", "diamond", "cross")
SHAPE_BACKGROUNDS = ("plain", "stripes", "dots")
CLASS_RULES = ("object", "background", "object_background")
# The keyword options of make_shapes that load_shapes passes through.
SHAPES_OPTIONS = ("image_size", "objects", "backgrounds", "class_rule", "object_scale", "colors", "confounder")

# Samples rendered per step: bounds the memory of the (chunk, S, S) coordinate arrays.
_CHUNK = 1024

# Colour ranges, per channel. The object is light on a dark background or dark on a light one
# (chosen at random per image), so every channel differs by >= 0.15 between the object and
# both background colours, and by >= 0.15 between the two texture colours.
_LIGHT_OBJECT = ((0.60, 1.00), (0.00, 0.15), (0.30, 0.45))  # object, background A, background B
_DARK_OBJECT = ((0.00, 0.40), (0.85, 1.00), (0.55, 0.70))


def make_shapes(
    n: int,
    *,
    image_size: int = 32,
    objects: Sequence[str] = ("circle", "square", "triangle"),
    backgrounds: Sequence[str] = ("plain", "stripes"),
    class_rule: str = "object",
    object_scale: tuple[float, float] = (0.3, 0.5),
    colors: bool = True,
    confounder: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Generate `n` images of one object on a background texture, with ground-truth masks.

    Objects: any of SHAPE_OBJECTS; backgrounds: any of SHAPE_BACKGROUNDS ("plain" is one colour,
    "stripes" and "dots" are two-colour textures with random orientation, period and phase).
    Per image, at random: object position (fully inside the image), bounding-box side
    (object_scale fraction of image_size), colours (RGB if colors else 1 grey channel; object and
    background differ by >= 0.15 in every channel) and texture parameters.

    class_rule and the mask (float32 (N, 1, H, W), 1 = pixels that determine the class):
      "object": class = object kind, names = objects; mask = the object's pixels.
      "background": class = background kind, names = backgrounds; mask = all non-object pixels.
      "object_background": class = (object, background) pair, names like "circle/stripes"
        (object-major order); both parts discriminate, so mask = every pixel.
    Classes are balanced (round-robin labels, shuffled).

    Confounder: exactly round(confounder * n0) of the n0 class-0 images (chosen at random), and
    no other image, get `confounder_patch(image_size)` (a black-and-white checkerboard) in the
    top-left corner. It is drawn last and its pixels are always 0 in the mask, since it is a
    spurious cue rather than the true feature. Same arguments, same arrays.

    >>> ds = make_shapes(6, seed=1)
    >>> ds.x.shape, np.bincount(ds.y).tolist(), ds.class_names
    ((6, 3, 32, 32), [2, 2, 2], ('circle', 'square', 'triangle'))
    """
    n = check_int("n", n, minimum=1, maximum=10_000_000)
    size = check_int("image_size", image_size, minimum=8, maximum=512)
    objects = check_names("objects", objects, allowed=SHAPE_OBJECTS)
    backgrounds = check_names("backgrounds", backgrounds, allowed=SHAPE_BACKGROUNDS)
    if not isinstance(class_rule, str) or class_rule not in CLASS_RULES:
        raise InputError(f"class_rule: expected one of {', '.join(CLASS_RULES)}, got {describe(class_rule)}")
    class_names = _class_names(class_rule, objects, backgrounds)
    if len(class_names) < 2:
        raise InputError(f"class_rule={class_rule!r} with objects={list(objects)} and backgrounds={list(backgrounds)} "
                         "gives a single class; give at least 2 kinds of what decides the class")
    scale = _check_scale(object_scale)
    colors = check_bool("colors", colors)
    confounder = check_real("confounder", confounder, low=0.0, high=1.0)
    rng = np.random.default_rng(check_seed(seed))

    p = _draw_parameters(rng, n, size, len(objects), len(backgrounds), class_rule, scale, 3 if colors else 1)
    patched = np.zeros(n, bool)
    class0 = np.flatnonzero(p["labels"] == 0)
    patched[rng.choice(class0, int(np.floor(confounder * len(class0) + 0.5)), replace=False)] = True

    x = np.empty((n, p["object_color"].shape[1], size, size), np.float32)
    masks = np.empty((n, 1, size, size), np.float32)
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(start + _CHUNK, n))
        chunk = {key: value[rows] for key, value in p.items()}
        x[rows], masks[rows] = _render(chunk, patched[rows], size, objects, backgrounds, class_rule)
    return Dataset(x, p["labels"], class_names, "shapes", masks)


def load_shapes(n_train: int = 2000, n_test: int = 500, *, seed: int = 0, **kwargs: Any) -> Split:
    """A train and a test set from `make_shapes`, generated with two seeds derived from `seed`.

    kwargs are make_shapes' options (image_size, objects, backgrounds, class_rule, object_scale,
    colors, confounder). The train part is not `make_shapes(n_train, seed=seed)`: both seeds come
    from numpy.random.SeedSequence(seed), so the parts are independent draws.

    >>> split = load_shapes(30, 9, image_size=16)
    >>> len(split.train), len(split.test), split.test.x.shape[1:]
    (30, 9, (3, 16, 16))
    """
    unknown = sorted(set(kwargs) - set(SHAPES_OPTIONS))
    if unknown:
        raise InputError(f"load_shapes: unknown option {', '.join(unknown)}; "
                         f"accepted: n_train, n_test, seed, {', '.join(SHAPES_OPTIONS)}")
    n_train = check_int("n_train", n_train, minimum=1)
    n_test = check_int("n_test", n_test, minimum=1)
    train_seed, test_seed = (int(s) for s in np.random.SeedSequence(check_seed(seed)).generate_state(2))
    return Split(make_shapes(n_train, seed=train_seed, **kwargs), make_shapes(n_test, seed=test_seed, **kwargs))


def confounder_patch(image_size: int) -> np.ndarray:
    """The confounder patch of `make_shapes`: a float32 (p, p) 1/0 checkerboard, p = max(2, image_size // 8).

    It sits at rows [0, p) and columns [0, p) of every channel.

    >>> confounder_patch(16).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    side = max(2, check_int("image_size", image_size, minimum=8) // 8)
    i, j = np.indices((side, side))
    return ((i + j) % 2 == 0).astype(np.float32)


def _class_names(rule: str, objects: tuple[str, ...], backgrounds: tuple[str, ...]) -> tuple[str, ...]:
    if rule == "object":
        return objects
    if rule == "background":
        return backgrounds
    return tuple(f"{o}/{b}" for o in objects for b in backgrounds)


def _check_scale(value: object) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 2:
        raise InputError(f"object_scale: expected a pair (low, high) with 0 < low <= high <= 1, got {describe(value)}")
    low = check_real("object_scale[0]", value[0], low=0.0, high=1.0, open_low=True)
    high = check_real("object_scale[1]", value[1], low=0.0, high=1.0, open_low=True)
    if low > high:
        raise InputError(f"object_scale: expected low <= high, got ({low}, {high})")
    return low, high


def _draw_parameters(rng: np.random.Generator, n: int, size: int, n_objects: int, n_backgrounds: int,
                     rule: str, scale: tuple[float, float], channels: int) -> dict[str, np.ndarray]:
    num_classes = {"object": n_objects, "background": n_backgrounds}.get(rule, n_objects * n_backgrounds)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % num_classes)
    object_kind = rng.integers(n_objects, size=n)
    background_kind = rng.integers(n_backgrounds, size=n)
    if rule == "object":
        object_kind = labels
    elif rule == "background":
        background_kind = labels
    else:
        object_kind, background_kind = labels // n_backgrounds, labels % n_backgrounds

    side = rng.uniform(scale[0], scale[1], n) * size
    # Centres keep the whole bounding box [c - side/2, c + side/2] inside [0, size].
    centre = side[:, None] / 2 + rng.random((n, 2)) * (size - side[:, None])

    light = rng.random(n) < 0.5
    colours = []
    for (lo_light, hi_light), (lo_dark, hi_dark) in zip(_LIGHT_OBJECT, _DARK_OBJECT):
        u = rng.random((n, channels))
        colours.append(np.where(light[:, None], lo_light + (hi_light - lo_light) * u,
                                lo_dark + (hi_dark - lo_dark) * u).astype(np.float32))

    angle = rng.uniform(0.0, np.pi, n)
    period = np.maximum(3.0, rng.uniform(0.15, 0.3, n) * size)
    phase = rng.random((n, 2)) * period[:, None]
    return {"labels": labels, "object_kind": object_kind, "background_kind": background_kind,
            "half": side / 2, "centre": centre, "object_color": colours[0], "color_a": colours[1],
            "color_b": colours[2], "angle": angle, "period": period, "phase": phase}


def _render(p: dict[str, np.ndarray], patched: np.ndarray, size: int, objects: tuple[str, ...],
            backgrounds: tuple[str, ...], rule: str) -> tuple[np.ndarray, np.ndarray]:
    m = len(p["labels"])
    coords = np.arange(size) + 0.5  # pixel centres
    xs, ys = coords[None, None, :], coords[None, :, None]

    # Object coordinates: (u, v) in [-1, 1]^2 over the bounding box, v pointing down.
    u = (xs - p["centre"][:, 0, None, None]) / p["half"][:, None, None]
    v = (ys - p["centre"][:, 1, None, None]) / p["half"][:, None, None]
    inside = _select(p["object_kind"], objects, _OBJECTS, u, v)
    # A tiny object may fall between pixel centres; the pixel under its centre always belongs to it.
    centre_px = np.minimum(p["centre"].astype(np.int64), size - 1)
    inside[np.arange(m), centre_px[:, 1], centre_px[:, 0]] = True

    cos, sin = np.cos(p["angle"])[:, None, None], np.sin(p["angle"])[:, None, None]
    along = xs * cos + ys * sin + p["phase"][:, 0, None, None]
    across = -xs * sin + ys * cos + p["phase"][:, 1, None, None]
    second_colour = _select(p["background_kind"], backgrounds, _TEXTURES, along, across,
                            p["period"][:, None, None])

    def paint(colour: np.ndarray) -> np.ndarray:
        return colour[:, :, None, None]

    image = np.where(second_colour[:, None], paint(p["color_b"]), paint(p["color_a"]))
    image = np.where(inside[:, None], paint(p["object_color"]), image)

    patch = confounder_patch(size)
    side = patch.shape[0]
    image[patched, :, :side, :side] = patch
    on_patch = np.zeros((m, size, size), bool)
    on_patch[patched, :side, :side] = True

    if rule == "object":
        mask = inside & ~on_patch
    elif rule == "background":
        mask = ~inside & ~on_patch
    else:
        mask = ~on_patch
    return image.astype(np.float32, copy=False), mask[:, None].astype(np.float32)


def _select(kinds: np.ndarray, names: tuple[str, ...], table: dict[str, Callable[..., np.ndarray]],
            *args: np.ndarray) -> np.ndarray:
    """Evaluate table[names[k]] on the samples of each kind k; returns bool (m, S, S)."""
    shape = np.broadcast_shapes(*(a.shape for a in args[:2]))
    out = np.zeros(shape, bool)
    for k, name in enumerate(names):
        rows = kinds == k
        if rows.any():
            out[rows] = table[name](*(a[rows] for a in args))
    return out


_OBJECTS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0),
    # Apex at the top centre of the box, base along its bottom edge.
    "triangle": lambda u, v: (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    "cross": lambda u, v: ((np.abs(u) <= 1 / 3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 1 / 3) & (np.abs(u) <= 1.0)),
}

# True where the texture shows its second colour; `along`/`across` are rotated, shifted coordinates.
_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "plain": lambda along, across, period: np.zeros(np.broadcast_shapes(along.shape, across.shape), bool),
    "stripes": lambda along, across, period: np.mod(along, period) < period / 2,
    "dots": lambda along, across, period: (
        (np.mod(along, period) - period / 2) ** 2 + (np.mod(across, period) - period / 2) ** 2
        <= (0.3 * period) ** 2
    ),
}
