"""Write a :class:`~xaisdk.metrics.removal_study.RemovalStudyResult` as ``metrics.json``, ``report.md``
and PNG figures laid out as paper 004's Table 1 / Table S3 / Table 2 and Figures 1-3."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from xaisdk.metrics._common import _plain, run_environment
from xaisdk.metrics.removal_study import RemovalStudyResult, config_dict

__all__ = ["removal_result_dict", "write_removal_report"]

FILLER_TITLES = {"real": "Real", "blur": "Blur", "gray": "Gray", "noise": "Random noise", "inpaint": "Inpaint (learned)",
                 "telea": "Inpaint (OpenCV Telea)", "zero": "Zero"}
SIMILARITY_TITLES = {"ssim": "SSIM", "hog_pearson": "Pearson correlation of HOGs", "spearman": "Spearman"}


def removal_result_dict(result: RemovalStudyResult, command: str = "") -> dict[str, Any]:
    """The JSON document of a run: setup, and every part's numbers."""
    return _plain({
        **run_environment(command),
        "dataset": result.dataset,
        "inpainter": result.inpainter,
        "config": config_dict(result.config),
        "samples": len(result.x),
        "fillers": {"object_masks": result.mask_origin, **result.fillers},  # per removed shape: outline, box
        "robustness": {label: {k: r.to_dict() for k, r in per.items()} for label, per in result.robustness.items()},
        "mp_perturbed_area": {label: r.to_dict() for label, r in result.mp_area.items()},
        "localization": {label: r.to_dict() for label, r in result.localization.items()},
        "deletion_insertion": {label: {k: r.to_dict() for k, r in per.items()} for label, per in result.deletion.items()},
        "timings_s": result.timings,
    })


def _fmt(value: float, std: float | None = None, bold: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    text = f"{value:.3f}" + (f" ± {std:.3f}" if std is not None and np.isfinite(std) else "")
    return f"**{text}**" if bold else text


def _filler_lines(result: RemovalStudyResult, shape: str) -> list[str]:
    table = result.fillers[shape]
    names = list(table)
    removed = f"the objects' pixels ({result.mask_origin})" if shape == "outline" else \
        f"the objects' bounding boxes (from {result.mask_origin})"
    lines = [f"Removed: {removed}; {len(result.x)} images.", "",
             "| metric | " + " | ".join(FILLER_TITLES.get(n, n) for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    rows = (("accuracy", "classifier accuracy (lower = more of the class evidence removed)"),
            ("p_true", "mean p(true class)"), ("ssim", "SSIM to the original (lower = more changed)"),
            ("l1", "mean |filled - original|"))
    for key, title in rows:
        lines.append(f"| {title} | " + " | ".join(_fmt(table[n][key]) for n in names) + " |")
    return lines


def _partner(label: str) -> str:
    """The other half of a classic / generative pair: "SP" <-> "SP-G", "LIME (25)" <-> "LIME-G (25)"."""
    if "-G" in label:
        return label.replace("-G", "", 1)
    method, _, rest = label.partition(" ")
    return f"{method}-G" + (f" {rest}" if rest else "")


def _robustness_lines(result: RemovalStudyResult) -> list[str]:
    metrics = list(SIMILARITY_TITLES)
    lines = ["| method | " + " | ".join(SIMILARITY_TITLES[m] for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    ordered: list[str] = []
    for label in result.robustness:  # classic row, then its generative partner
        for name in (label, _partner(label)) if "-G" not in label else (_partner(label), label):
            if name in result.robustness and name not in ordered:
                ordered.append(name)
    for label in ordered:
        per = result.robustness[label]
        partner = _partner(label)
        cells = []
        for m in metrics:
            mine = per[m].mean
            other = result.robustness.get(partner, {}).get(m)
            better = other is not None and np.isfinite(mine) and mine > other.mean
            cells.append(_fmt(mine, per[m].std, bold=better))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _localization_lines(result: RemovalStudyResult) -> list[str]:
    labels = list(result.localization)
    first = result.localization[labels[0]]
    lines = ["| | whole image | " + " | ".join(labels) + " |", "|---" * (len(labels) + 2) + "|",
             "| alpha* | - | " + " | ".join(f"{result.localization[k].details['alpha']:.2f}" for k in labels) + " |",
             f"| error (%) | {100 * first.details['whole_image_error']:.1f} | "
             + " | ".join(f"{100 * result.localization[k].mean:.1f}" for k in labels) + " |",
             "", f"alpha* chosen on {first.details['alpha_from']} images; a miss is IoU < "
             f"{first.details['iou_threshold']} between the map's box and the object's box."]
    return lines


def _deletion_lines(result: RemovalStudyResult) -> list[str]:
    labels = list(result.deletion)
    lines = ["| metric | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for key, direction in (("deletion", -1), ("insertion", 1)):
        means = np.array([result.deletion[k][key].mean for k in labels])
        best = int(np.nanargmax(means * direction)) if np.isfinite(means).any() else -1
        arrow = "lower" if direction < 0 else "higher"
        cells = [_fmt(m, result.deletion[k][key].sem, bold=i == best) for i, (k, m) in enumerate(zip(labels, means))]
        lines.append(f"| {key} AUC ({arrow} better) | " + " | ".join(cells) + " |")
    return lines


def _report(result: RemovalStudyResult, command: str, figures: dict[str, Path]) -> str:
    c = result.config
    pairs = "one-vs-all on the predicted class (as the paper)" if result.target is None else \
        "one-vs-one: predicted class vs runner-up"
    lines = [f"# Generative feature removal on {result.dataset} (paper 004's evaluation)", "",
             f"Command: `{command}`", "",
             f"{len(result.x)} test images; {pairs}; generative filler: `{result.inpainter}`; classic fillers: "
             "SP gray, LIME gray, MP blur.", ""]
    if result.fillers:
        lines += ["## Filler effectiveness (Table 1)", ""]
        for shape in result.fillers:
            lines += _filler_lines(result, shape) + [""]
    if result.robustness:
        lines += ["## Robustness to hyper-parameters and seeds (Section 4.3, Table S3)", "",
                  f"Mean ± std over images of the similarity between runs (all pairs): SP over patch sizes "
                  f"{list(c.patch_sizes)} (stride {c.patch_stride}); LIME over seeds {list(c.seeds)} with "
                  f"{c.lime_samples} samples at {c.lime_segments[0]} and {c.lime_segments[1]} superpixels; MP over "
                  f"the same seeds (initialisations), {c.mp_steps} steps. Bold: the better of each classic / "
                  "generative pair. Higher = more robust.", ""] + _robustness_lines(result) + [""]
    if result.mp_area:
        lines += ["MP's perturbed area (Table S1; fraction of pixels with mask >= 0.5, mean over seeds): "
                  + ", ".join(f"{k} {100 * r.mean:.1f} ± {100 * r.std:.1f} %" for k, r in result.mp_area.items()), ""]
    if result.localization:
        lines += ["## Object localization (Table 2)", ""] + _localization_lines(result) + [""]
    if result.deletion:
        lines += ["## Deletion and insertion (Section 4.4)", "",
                  f"AUC of p(source) as the top pixels are zeroed / restored into a blurred image, "
                  f"{c.deletion_step} pixels per step; ± standard error.", ""] + _deletion_lines(result) + [""]
    if figures:
        lines += ["## Figures", ""] + [f"- `{p.name}`" for p in figures.values()] + [""]
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    lines += [f"Time: {timings}."]
    return "\n".join(lines) + "\n"


def _figures(result: RemovalStudyResult, out: Path) -> dict[str, Path]:
    from xaisdk.viz import as_displayable, plt, save_grouped_saliency_grid

    paths: dict[str, Path] = {}
    for shape, images in result.filler_examples.items():
        names = list(images)
        rows = len(images[names[0]])
        fig, axes = plt.subplots(rows, len(names), figsize=(1.2 * len(names), 1.2 * rows + 0.3), squeeze=False)
        for j, name in enumerate(names):
            for i in range(rows):
                ax = axes[i, j]
                ax.imshow(as_displayable(images[name][i]), cmap="gray" if images[name].shape[1] == 1 else None, vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(FILLER_TITLES.get(name, name), fontsize=7)
        fig.suptitle(f"object removed: {'its pixels' if shape == 'outline' else 'its bounding box'}", fontsize=8)
        fig.tight_layout()
        paths[f"fillers_{shape}"] = out / f"fillers_{shape}.png"
        fig.savefig(paths[f"fillers_{shape}"], dpi=110)
        plt.close(fig)
    if result.maps:
        k = min(6, len(result.x))
        groups: dict[str, dict[str, np.ndarray]] = {}
        for label, maps in result.maps.items():
            method = label.replace("-G", "")
            groups.setdefault(method, {})[label] = np.broadcast_to(maps[:k], result.x[:k].shape)
        titles = [result.class_names[s] for s in result.source[:k]]
        paths["maps"] = save_grouped_saliency_grid(out / "maps.png", result.x[:k], {}, groups, titles,
                                                   title="Classic vs generative removal (blue: evidence for the class)")
    if result.robustness:
        labels = list(result.robustness)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for ax, metric in zip(axes, SIMILARITY_TITLES):
            means = [result.robustness[label][metric].mean for label in labels]
            stds = [result.robustness[label][metric].std for label in labels]
            colours = ["#9ecae1" if "-G" in label else "#3182bd" for label in labels]
            ax.bar(range(len(labels)), means, yerr=stds, color=colours, capsize=2)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
            ax.set_title(SIMILARITY_TITLES[metric], fontsize=9)
        fig.suptitle("Similarity between runs (higher = more robust); light: generative filler", fontsize=9)
        fig.tight_layout()
        paths["robustness"] = out / "robustness.png"
        fig.savefig(paths["robustness"], dpi=110)
        plt.close(fig)
    return paths


def write_removal_report(result: RemovalStudyResult, out: str | os.PathLike, command: str = "") -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and the PNG figures into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(result, out)
    (out / "metrics.json").write_text(json.dumps(removal_result_dict(result, command), indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_report(result, command, figures), encoding="utf-8")
    return {"metrics": out / "metrics.json", "report": out / "report.md", **figures}

