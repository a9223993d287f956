"""Turn an :class:`~xaisdk.evaluation.evaluate.EvaluationResult` into ``metrics.json``, ``report.md``
and PNG figures (perturbation curves, Gini bars, saliency grid, cascading-randomization grid, ROAR).

``report.md`` lays the per-map metrics out as the GANMEX paper's Tables 2/3: one row per metric,
one column per method x baseline, the best value of each row in bold (by the metric's direction).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from xaisdk.evaluation.grid import EvaluationResult, config_dict
from xaisdk.metrics._common import _plain, run_environment

__all__ = ["DIRECTIONS", "write_report", "result_dict"]

# +1: higher is better, -1: lower is better, 0: no direction (descriptive).
DIRECTIONS = {"aopc": 1, "gini": 1, "faithfulness": 1, "monotonicity": 1, "inverse_localization": -1,
              "deletion": -1, "insertion": 1, "aospc": 1, "pointing_game": 1, "mask_iou": 1}
DESCRIPTIONS = {
    "aopc": "area over the flip curve of S_source - S_target (x -> 1 - x, pixels by descending map value)",
    "gini": "Gini index of |A| (sparsity)",
    "faithfulness": "Pearson(attribution, score drop when the pixel is set to 0), per image",
    "monotonicity": "Spearman(|attribution|, E[(f(x) - f(x with noise))^2]), per image",
    "inverse_localization": "mean |A| on the left/right quarter bands / mean |A| in the centre",
    "deletion": "AUC of p(source) as top pixels are zeroed (Petsiuk)",
    "insertion": "AUC of p(source) as top pixels are restored into a blurred image (Petsiuk)",
    "aospc": "area over the segment perturbation curve, K = 10, uniform noise (ExplainGAN)",
    "pointing_game": "fraction of maps whose maximum lies on the object mask",
    "mask_iou": "IoU of the top-q pixels with the object mask, mean over q",
}


def _direction(metric: str) -> int:
    for prefix, value in DIRECTIONS.items():
        if metric.startswith(prefix):
            return value
    return 0


def _description(metric: str) -> str:
    for prefix, text in DESCRIPTIONS.items():
        if metric.startswith(prefix):
            return text
    return ""


def result_dict(result: EvaluationResult, command: str = "") -> dict[str, Any]:
    """The JSON document of a run: setup, per-metric per-column summaries, curves, studies."""

    extra = {name: {k: v for k, v in value.items() if not k.startswith("_")} for name, value in result.extra.items()}
    return _plain({
        **run_environment(command),
        "dataset": result.dataset,
        "model": result.model,
        "backend": result.backend,
        "config": config_dict(result.config),
        "samples": len(result.x),
        "columns": [c.label for c in result.columns],
        "pairs": {"source": result.source, "target": result.target},
        "metrics": {metric: {label: r.to_dict() for label, r in per.items()} for metric, per in result.metrics.items()},
        "flip_curves": {label: {"steps": c.steps, "mean_curve": c.mean_curve()} for label, c in result.curves.items()},
        "studies": extra,
        "timings_s": result.timings,
    })


def _cell(mean: float, std: float | None = None, bold: bool = False) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    text = f"{mean:.3f}" if abs(mean) < 100 else f"{mean:.1f}"
    return f"**{text}**" if bold else text


def _metric_table(result: EvaluationResult) -> list[str]:
    labels = [c.label for c in result.columns]
    lines = ["| metric | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for metric, per in result.metrics.items():
        means = np.array([per[label].mean if label in per else np.nan for label in labels])
        direction = _direction(metric)
        best = None
        if direction and np.isfinite(means).any():
            best = np.nanargmax(means * direction)
        cells = [_cell(m, bold=(i == best)) for i, m in enumerate(means)]
        arrow = {1: " (higher better)", -1: " (lower better)"}.get(direction, "")
        lines.append(f"| {metric}{arrow} | " + " | ".join(cells) + " |")
    return lines


def _sem_table(result: EvaluationResult) -> list[str]:
    labels = [c.label for c in result.columns]
    lines = ["| metric | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for metric, per in result.metrics.items():
        cells = [f"{per[label].sem:.3f} (n={per[label].count})" if label in per else "n/a" for label in labels]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def _baseline_section(study: dict[str, Any]) -> list[str]:
    lines = ["## Baselines (GANMEX Table 1)", "",
             f"D_intra = {study['D_intra']:.2f}, D_inter = {study['D_inter']:.2f} (training images).", "",
             "| baseline | mean ||x - B(x)||_2 | std | classifier calls B(x) the target |", "|---|---|---|---|"]
    for kind, v in study["baselines"].items():
        lines.append(f"| {kind} | {v['mean_l2']:.2f} | {v['std_l2']:.2f} | {100 * v['target_success']:.1f}% |")
    return lines + [""]


def _sensitivity_section(study: dict[str, Any]) -> list[str]:
    lines = ["## Sensitivity to seeds and hyper-parameters", "",
             f"Mean over pairs of runs and over the first {study['samples']} images (1 = identical maps).", "",
             "| runs | SSIM | HOG-Pearson | Spearman |", "|---|---|---|---|"]
    for name, metrics in study["studies"].items():
        cells = [_cell(metrics[m]["mean"]) if m in metrics else "n/a" for m in ("ssim", "hog_pearson", "spearman")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _randomization_section(study: dict[str, Any]) -> list[str]:
    stages = study.get("stages", [])
    lines = ["## Cascading randomization (Adebayo et al.; GANMEX Fig. 3.G)", "",
             f"Similarity of each stage's maps to the original maps ({study['samples']} images); layers are "
             "re-initialized from the output down, cumulatively. Lower = the maps follow the model.", ""]
    for metric in ("ssim", "spearman", "hog_pearson"):
        lines += [f"**{metric}**", "", "| column | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
        for label, per_stage in study["groups"].items():
            lines.append(f"| {label} | " + " | ".join(_cell(per_stage[s][metric]) for s in stages) + " |")
        lines.append("")
    change = study.get("ganmex_baseline_change")
    if change:
        lines += ["GANMEX baselines, mean ||B_stage - B_original||: " + ", ".join(f"{c:.2f}" for c in change), ""]
    return lines


def _roar_section(study: dict[str, Any]) -> list[str]:
    lines = ["## ROAR, one-vs-one (GANMEX §C.2)", "",
             "Pair classifiers retrained on images with the top fraction of pixels removed (per-channel training "
             "mean); AORoarC = mean over fractions of acc(0) - acc(f). Higher = the maps find what the classes "
             "differ by.", "", "| ranking | AORoarC (mean over pairs) | std | excess over random |", "|---|---|---|---|"]
    random = study.get("random")
    for label, found in study["columns"].items():
        a = found["aoroarc"]
        excess = a["mean"] - random["mean"] if random and a["mean"] is not None and random["mean"] is not None else None
        lines.append(f"| {label} | {_cell(a['mean'])} | {_cell(a['std'])} | {_cell(excess)} |")
    if random:
        lines.append(f"| random ranking | {_cell(random['mean'])} | {_cell(random['std'])} | 0 |")
    return lines + [""]


def write_report(result: EvaluationResult, out: str | Path, command: str = "") -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and the figures into ``out``; returns their paths."""
    from xaisdk.evaluation import figures

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    document = result_dict(result, command)
    paths["metrics.json"] = out / "metrics.json"
    paths["metrics.json"].write_text(json.dumps(document, indent=1))
    paths.update(figures.write_figures(result, out))
    pairs = "random other class" if result.config.targets == "random" else "runner-up class"
    lines = [f"# Evaluation: {result.model or 'model'} on {result.dataset or 'data'}", "",
             f"{len(result.x)} test images, each explained one-vs-one: source = predicted class, target = "
             f"{pairs} (seed {result.config.seed}); backend: {result.backend}. Command: `{command}`", "",
             "## Per-map metrics (GANMEX Tables 2/3 layout: mean over images; best per row in bold)", ""]
    lines += _metric_table(result)
    lines += ["", "Standard errors of the means:", ""] + _sem_table(result)
    lines += ["", "Definitions:", ""]
    lines += [f"- **{m}**: {_description(m)}" for m in result.metrics if _description(m)]
    lines.append("")
    if "baseline_distance" in result.extra:
        lines += _baseline_section(result.extra["baseline_distance"])
    if "sensitivity" in result.extra:
        lines += _sensitivity_section(result.extra["sensitivity"])
    if "randomization" in result.extra:
        lines += _randomization_section(result.extra["randomization"])
    if "roar" in result.extra:
        lines += _roar_section(result.extra["roar"])
    lines += ["## Figures", ""] + [f"- `{p.name}`" for k, p in paths.items() if k.endswith(".png")]
    paths["report.md"] = out / "report.md"
    paths["report.md"].write_text("\n".join(lines) + "\n")
    return paths
