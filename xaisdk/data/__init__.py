"""Datasets for xaisdk: built-in digits and synthetic shapes, and loaders for the caller's own images.

All images are float32 (N, C, H, W) in [0, 1] with int64 labels; every random choice takes a seed.
"""

from xaisdk.data.dataset import Dataset, Split, stratified_split
from xaisdk.data.digits import DIGIT_COLORS, binary_digits_split, dominant_channel, load_colored_digits, load_digits
from xaisdk.data.load import load_dataset
from xaisdk.data.masks import MASK_KINDS, random_masks
from xaisdk.data.shapes import SHAPE_BACKGROUNDS, SHAPE_OBJECTS, confounder_patch, load_shapes, make_shapes
from xaisdk.data.user import IMAGE_EXTENSIONS, load_image_folder, load_npz

__all__ = [
    "Dataset",
    "Split",
    "stratified_split",
    "load_digits",
    "binary_digits_split",
    "load_colored_digits",
    "dominant_channel",
    "DIGIT_COLORS",
    "make_shapes",
    "load_shapes",
    "confounder_patch",
    "SHAPE_OBJECTS",
    "SHAPE_BACKGROUNDS",
    "load_npz",
    "load_image_folder",
    "IMAGE_EXTENSIONS",
    "load_dataset",
    "MASK_KINDS",
    "random_masks",
]
