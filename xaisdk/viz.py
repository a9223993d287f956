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


def as_displayable(x: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> something imshow draws: (H, W) grey or (H, W, 3) colour."""
    return x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0)).clip(0, 1)


def saliency_map(attr: np.ndarray) -> np.ndarray:
    """A (C, H, W) attribution summed over channels to one signed (H, W) map.

    >>> saliency_map(np.ones((3, 2, 2))).tolist()
    [[3.0, 3.0], [3.0, 3.0]]
    """
    return np.asarray(attr, dtype=np.float64).sum(axis=0)


def save_figure(fig, path: str | Path, *, dpi: int = 100) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating the folder) and close it; returns the path.

    >>> import tempfile
    >>> fig, ax = plt.subplots()
    >>> save_figure(fig, Path(tempfile.mkdtemp()) / "sub" / "f.png").name
    'f.png'
    """
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _draw_panel(ax, kind: str, value: np.ndarray) -> None:
    """Draw an image in [0, 1] (``kind="image"``) or a signed saliency map on its own symmetric scale."""
    if kind == "image":
        ax.imshow(as_displayable(value), cmap="gray" if value.shape[0] == 1 else None, vmin=0, vmax=1)
    else:
        heat = saliency_map(value)
        limit = float(np.abs(heat).max()) or 1.0
        ax.imshow(heat, cmap=SALIENCY_CMAP, vmin=-limit, vmax=limit)
    ax.set_xticks([])
    ax.set_yticks([])


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
    for r in range(rows):
        panels = [("image", images[r])]
        if baselines is not None:
            panels.append(("image", baselines[r]))
        panels += [("map", maps[name][r]) for name in maps]
        for c, (kind, value) in enumerate(panels):
            ax = axes[r, c]
            _draw_panel(ax, kind, value)
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        if row_titles is not None:
            axes[r, 0].set_ylabel(row_titles[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=110)


def save_grouped_saliency_grid(
    path: str | Path,
    images: np.ndarray,
    baselines: Mapping[str, np.ndarray],
    maps: Mapping[str, Mapping[str, np.ndarray]],
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    baseline_group: str = "baselines",
    panel_inches: float = 1.1,
    dpi: int = 110,
) -> Path:
    """One row per image, columns in labelled groups: the input; the baselines (one column each, e.g.
    Zero | MDTS | GANMEX); then one group per method (``maps[method][column]``, e.g. one map per baseline).

    Every array is shaped like ``images`` (N, C, H, W). Each group's name is written over its columns
    and underlined, each column's name over its first panel. Maps are drawn as in
    :func:`save_saliency_grid`: each on its own symmetric scale, blue positive, red negative.

    >>> import tempfile, os
    >>> x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    >>> maps = {"IG": {"zero": x - 0.5, "mean": 0.5 - x}, "Occlusion": {"zero": x, "mean": -x}}
    >>> out = save_grouped_saliency_grid(os.path.join(tempfile.mkdtemp(), "g.png"), x,
    ...                                  {"zero": 0 * x, "mean": 0 * x + x.mean()}, maps, ["a", "b"])
    >>> out.stat().st_size > 0
    True
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise InputError(f"images: expected (N, C, H, W), got {images.shape}")
    groups: list[tuple[str | None, list[tuple[str, str, np.ndarray]]]] = [(None, [("input", "image", images)])]
    if baselines:
        groups.append((baseline_group, [(name, "image", np.asarray(value)) for name, value in baselines.items()]))
    for group, columns in maps.items():
        if not columns:
            raise InputError(f"map group {group!r} has no columns")
        groups.append((group, [(name, "map", np.asarray(value)) for name, value in columns.items()]))
    for group, columns in groups:
        for name, _, value in columns:
            if value.shape != images.shape:
                raise InputError(f"{group or 'input'} / {name}: shape {value.shape} differs from images {images.shape}")
    rows = len(images)
    if row_titles is not None and len(row_titles) != rows:
        raise InputError(f"row_titles: {len(row_titles)} titles for {rows} rows")

    # Layout in inches: panels of panel_inches, small gaps inside a group, wider gaps between groups.
    panel, inner, between, row_gap = panel_inches, 0.05 * panel_inches, 0.3 * panel_inches, 0.08 * panel_inches
    column_title, group_title = 0.22, 0.26
    top = (0.15 + 0.17 * (title.count("\n") + 1) if title else 0.1) + group_title + column_title
    width = sum(len(cols) * panel + (len(cols) - 1) * inner for _, cols in groups) + (len(groups) - 1) * between
    height = top + rows * panel + (rows - 1) * row_gap + 0.05
    fig = plt.figure(figsize=(width, height))
    x0 = 0.0
    for group, columns in groups:
        left = x0
        for name, kind, value in columns:
            for r in range(rows):
                bottom = height - top - r * (panel + row_gap) - panel
                ax = fig.add_axes((x0 / width, bottom / height, panel / width, panel / height))
                _draw_panel(ax, kind, value[r])
                if r == 0:
                    ax.set_title(name, fontsize=8, pad=3)
                if x0 == 0.0 and row_titles is not None:
                    ax.text(-0.06, 0.5, row_titles[r], transform=ax.transAxes, ha="right", va="center", fontsize=8)
            x0 += panel + inner
        right = x0 - inner
        if group is not None:
            line_y = (height - top + column_title) / height
            fig.add_artist(plt.Line2D([(left + 0.04) / width, (right - 0.04) / width], [line_y, line_y],
                                      transform=fig.transFigure, color="0.3", linewidth=0.8))
            fig.text((left + right) / 2 / width, line_y + 0.04 / height, group, ha="center", va="bottom",
                     fontsize=9, fontweight="bold")
        x0 += between - inner
    if title:
        fig.text(0.5, (height - 0.08) / height, title, ha="center", va="top", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.1, facecolor="white")
    plt.close(fig)
    return path


def save_counterfactual_figure(path: str | Path, x: np.ndarray, transformation: object, series: object,
                               explaingan_names: Sequence[str], target_class: str, title: str = "") -> Path:
    """One ExplainGAN transformation per input (input, transformed, mask, composite) and one Progressive
    Exaggeration series per input (each image titled with the classifier's f of it), as a PNG.

    ``transformation``: an ``ExplainGANResult`` for ``x`` (N, C, H, W); ``series``: an
    ``ExaggerationSeries`` for ``x``; ``explaingan_names``: the ExplainGAN classifier's two class names.

    >>> import tempfile, os, types
    >>> x = np.zeros((1, 1, 4, 4))
    >>> t = types.SimpleNamespace(transformed=x, mask=x, composite=x, source=np.array([0]), flipped_prob=np.array([0.9]))
    >>> s = types.SimpleNamespace(images=np.zeros((1, 3, 1, 4, 4)), outputs=np.array([[0.1, 0.5, 0.9]]))
    >>> save_counterfactual_figure(os.path.join(tempfile.mkdtemp(), "cf.png"), x, t, s, ("3", "8"), "8").suffix
    '.png'
    """
    images = np.asarray(x)
    n, steps = len(images), int(np.asarray(series.outputs).shape[1])
    columns = max(4, steps)
    fig, axes = plt.subplots(2 * n, columns, figsize=(1.3 * columns, 1.45 * 2 * n + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        source = int(transformation.source[i])
        names = (explaingan_names[source], explaingan_names[1 - source])
        panels = [(images[i], "input"), (transformation.transformed[i], f"transformed ({names[1]})"),
                  (transformation.mask[i], "mask"),
                  (transformation.composite[i], f"composite\np({names[1]}) = {float(transformation.flipped_prob[i]):.2f}")]
        for ax, (value, label) in zip(axes[2 * i], panels):
            ax.axis("on")
            _draw_panel(ax, "image", np.asarray(value))
            ax.set_title(label, fontsize=7)
        axes[2 * i, 0].set_ylabel(f"ExplainGAN\n{names[0]} -> {names[1]}", fontsize=7)
        for j, ax in enumerate(axes[2 * i + 1][:steps]):
            ax.axis("on")
            _draw_panel(ax, "image", np.asarray(series.images[i, j]))
            ax.set_title(f"f = {float(series.outputs[i, j]):.2f}", fontsize=7)
        axes[2 * i + 1, 0].set_ylabel(f"Exaggeration\nf = p({target_class})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
