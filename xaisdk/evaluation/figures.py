"""PNG figures of an evaluation: the GANMEX paper's Figure 3 panels and a ROAR plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xaisdk.evaluation.grid import EvaluationResult
from xaisdk.viz import plt, save_grouped_saliency_grid

__all__ = ["write_figures", "perturbation_curves", "gini_bars", "saliency_grid", "randomization_grid", "roar_curves"]


def _save(fig, path: Path, dpi: int = 120) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _style(label: str) -> dict:
    """Dashed for the non-class-targeted zero baseline, solid for class-targeted ones (as the paper)."""
    return {"linestyle": "--" if label.endswith("+Zero") else "-", "linewidth": 1.3}


def perturbation_curves(result: EvaluationResult, path: Path) -> Path:
    """Mean S_source - S_target against the number of flipped pixels, one line per column (Fig. 3.A)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, curve in result.curves.items():
        ax.plot(curve.steps, curve.mean_curve(), label=label, **_style(label))
    ax.axhline(0, color="0.5", linewidth=0.6)
    ax.set_xlabel("pixels flipped (x -> 1 - x), most salient first")
    ax.set_ylabel("mean score delta S_source - S_target")
    ax.set_title(f"Perturbation curves, {result.dataset} ({len(result.x)} images)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def gini_bars(result: EvaluationResult, path: Path) -> Path:
    """Mean Gini index per column with its standard error (Fig. 3.D)."""
    per = result.metrics["gini"]
    labels = list(per)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(labels)), 3.6))
    colours = ["#e0b000" if lab.endswith("+Zero") else "#3a9a3a" if lab.endswith("+GANMEX") else "#7f7fbf"
               for lab in labels]
    ax.bar(range(len(labels)), [per[lab].mean for lab in labels], yerr=[per[lab].sem for lab in labels],
           color=colours, capsize=2)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("Gini index (higher = sparser)")
    ax.set_title("Sparsity (yellow: zero baseline, green: GANMEX)", fontsize=10)
    return _save(fig, path)


def saliency_grid(result: EvaluationResult, path: Path, rows: int = 6) -> Path:
    """The first images: input, baselines, then every column's map, grouped by method."""
    k = min(rows, len(result.x))
    groups: dict[str, dict[str, np.ndarray]] = {}
    for column in result.columns:
        name = column.label.split("+")[0]
        groups.setdefault(name, {})[column.label.split("+")[-1] if "+" in column.label else name] = \
            result.maps[column.label][:k]
    names = result.class_names or tuple(str(i) for i in range(int(result.source.max()) + 1))
    titles = [f"{names[s]} vs {names[t]}" for s, t in zip(result.source[:k], result.target[:k])]
    baselines = {kind: images[:k] for kind, images in result.baselines.items()}
    return save_grouped_saliency_grid(path, result.x[:k], baselines, groups, titles,
                                      title="One-vs-one maps of S_source - S_target (blue: for the source class)")


def randomization_grid(result: EvaluationResult, path: Path, image: int = 0) -> Path:
    """One image's maps (and GANMEX baselines) at every cascade stage, one row per column (Fig. 3.G)."""
    study = result.extra["randomization"]
    stages = study["stages"]
    maps = study["_maps"]
    baselines = study.get("_baselines", {})
    rows = [(label, "map", [m[image] for m in stage_maps]) for label, stage_maps in maps.items()]
    for label, stage_baselines in baselines.items():
        if label.endswith("GANMEX") and not any(r[0] == "GANMEX baseline" for r in rows):
            rows.insert(0, ("GANMEX baseline", "image", [b[image] for b in stage_baselines]))
    fig, axes = plt.subplots(len(rows), len(stages), figsize=(1.25 * len(stages) + 1.2, 1.25 * len(rows)),
                             squeeze=False)
    for r, (label, kind, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if kind == "image":
                ax.imshow(panel[0] if panel.shape[0] == 1 else np.transpose(panel, (1, 2, 0)), cmap="gray", vmin=0, vmax=1)
            else:
                heat = panel.sum(0)
                limit = float(np.abs(heat).max()) or 1.0
                ax.imshow(heat, cmap="bwr_r", vmin=-limit, vmax=limit)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(stages[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle("Cascading randomization, output layer first (left: original model)", fontsize=9)
    return _save(fig, path, dpi=110)


def roar_curves(result: EvaluationResult, path: Path) -> Path:
    """Mean pair-classifier accuracy against the fraction of pixels removed, per ranking."""
    study = result.extra["roar"]
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for label, found in study["columns"].items():
        ax.plot(found["fractions"], np.mean(found["aoroarc"]["accuracy"], axis=0), marker="o", label=label,
                **_style(label))
    if study.get("random"):
        first = next(iter(study["columns"].values()))
        ax.plot(first["fractions"], np.mean(study["random"]["accuracy"], axis=0), color="0.4", linestyle=":",
                marker="x", label="random ranking")
    ax.set_xlabel("fraction of pixels removed (top of each image's one-vs-one map)")
    ax.set_ylabel("retrained pair classifier accuracy")
    ax.set_title("ROAR, one-vs-one", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_figures(result: EvaluationResult, out: Path) -> dict[str, Path]:
    """Every figure the result has data for, as ``{file name: path}``."""
    paths: dict[str, Path] = {}
    if result.curves:
        paths["perturbation_curves.png"] = perturbation_curves(result, out / "perturbation_curves.png")
    if "gini" in result.metrics:
        paths["gini.png"] = gini_bars(result, out / "gini.png")
    paths["saliency_grid.png"] = saliency_grid(result, out / "saliency_grid.png")
    if "randomization" in result.extra:
        paths["randomization_grid.png"] = randomization_grid(result, out / "randomization_grid.png")
    if "roar" in result.extra:
        paths["roar.png"] = roar_curves(result, out / "roar.png")
    return paths
