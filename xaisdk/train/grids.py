"""The PNG image grid that every trainer's sample drawing writes (one image per cell, titles, labels)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["save_image_grid"]


def save_image_grid(path: str | os.PathLike, images: np.ndarray, *, column_titles: Sequence[str] = (),
                    cell_labels: Sequence[Sequence[str]] | None = None, row_labels: Sequence[str] = (),
                    title: str = "", cell_size: tuple[float, float] = (0.9, 0.9), fontsize: float = 7) -> Path:
    """Draw ``images`` (rows, columns, C, H, W; values in [0, 1]) as a PNG at ``path`` (folders made).

    ``column_titles`` go over the first row, ``cell_labels`` (a string per cell, "" for none) over every
    image, below its column title; ``row_labels`` to the left of the first column. A cell is
    ``cell_size`` inches (width, height), plus 0.4 inch for the title.

    >>> import tempfile
    >>> grid = np.zeros((2, 3, 1, 8, 8), np.float32)
    >>> save_image_grid(Path(tempfile.mkdtemp()) / "g.png", grid, column_titles=("a", "b", "c")).suffix
    '.png'
    """
    from xaisdk.viz import as_displayable, plt, save_figure  # viz selects the file-only matplotlib backend first

    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cell_size[0] * cols, cell_size[1] * rows + 0.4), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(as_displayable(images[i, j]), cmap="gray" if images.shape[2] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            label = "\n".join(part for part in (column_titles[j] if i == 0 and column_titles else "",
                                                cell_labels[i][j] if cell_labels is not None else "") if part)
            if label:
                ax.set_title(label, fontsize=fontsize)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path, dpi=80)
