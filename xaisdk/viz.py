"""Figures: saliency grids in the papers' colours (blue positive, red negative)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xaisdk.errors import InputError  # noqa: E402

SALIENCY_CMAP = "bwr_r"  # red for negative, white for zero, blue for positive


def _as_image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> something imshow draws: (H, W) grey or (H, W, 3) colour."""
    return x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0)).clip(0, 1)


def saliency_map(attr: np.ndarray) -> np.ndarray:
    """A (C, H, W) attribution summed over channels to one signed (H, W) map.

    >>> saliency_map(np.ones((3, 2, 2))).tolist()
    [[3.0, 3.0], [3.0, 3.0]]
    """
    return np.asarray(attr, dtype=np.float64).sum(axis=0)


def save_saliency_grid(
    path: str | Path,
    images: np.ndarray,
    baselines: np.ndarray | None,
    maps: Mapping[str, np.ndarray],
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """One row per image: the input, its baseline (if given), then one saliency map per method.

    Each map is drawn on a symmetric colour scale ``[-m, m]`` with ``m`` its own largest absolute
    value, blue for positive (evidence for the source class over the target) and red for negative.

    >>> import tempfile, os
    >>> x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    >>> out = save_saliency_grid(os.path.join(tempfile.mkdtemp(), "g.png"), x, None, {"grad": x - 0.5})
    >>> out.stat().st_size > 0
    True
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise InputError(f"images: expected (N, C, H, W), got {images.shape}")
    for name, value in maps.items():
        if np.shape(value) != images.shape:
            raise InputError(f"map {name!r}: shape {np.shape(value)} differs from images {images.shape}")
    columns = ["input"] + (["baseline"] if baselines is not None else []) + list(maps)
    rows = len(images)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows + 0.6), squeeze=False)
    grey = "gray" if images.shape[1] == 1 else None
    for r in range(rows):
        panels = [("image", images[r])]
        if baselines is not None:
            panels.append(("image", baselines[r]))
        panels += [("map", maps[name][r]) for name in maps]
        for c, (kind, value) in enumerate(panels):
            ax = axes[r, c]
            if kind == "image":
                ax.imshow(_as_image(value), cmap=grey, vmin=0, vmax=1)
            else:
                heat = saliency_map(value)
                limit = float(np.abs(heat).max()) or 1.0
                ax.imshow(heat, cmap=SALIENCY_CMAP, vmin=-limit, vmax=limit)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        if row_titles is not None:
            axes[r, 0].set_ylabel(row_titles[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
