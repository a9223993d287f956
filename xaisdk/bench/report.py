"""Benchmark results as JSON, a markdown table and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["markdown", "write_results"]

_COLUMNS = ("p50_ms", "p95_ms", "images_per_s_batch_64", "max_rel_diff_vs_captum_cpu", "max_rel_diff_vs_captum",
            "max_abs_diff_vs_loop", "seconds", "queries_per_s", "gflops", "index_agreement", "ms", "effective_gflops",
            "s_per_image", "steps_mean", "steps_max", "converged", "max_rel_error", "reached", "onnxruntime_speedup",
            "maps_rel_l1")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(result: dict) -> str:
    """One table per suite: a row per implementation, the goal and whether it was met.

    >>> print(markdown({"command": "c", "date": "d", "device": {"cpu": "x", "cores": 2, "gpu": None}, "suites": {
    ...     "ig": {"what": "IG", "rows": {"a": {"p50_ms": 1.0}}, "goal": {"speedup": ">= 3", "met": True}}}}))
    ... # doctest: +NORMALIZE_WHITESPACE
    # xaisdk bench
    <BLANKLINE>
    `c` on x (2 cores), GPU: none, d
    <BLANKLINE>
    ## ig: IG
    <BLANKLINE>
    | implementation | p50_ms |
    |---|---|
    | a | 1 |
    <BLANKLINE>
    Goal: speedup >= 3: **met**
    <BLANKLINE>
    """
    device = result["device"]
    gpu = device.get("gpu") or {}
    where = f"{device['cpu']} ({device['cores']} cores), GPU: {gpu.get('name', 'none')}"
    lines = ["# xaisdk bench", "", f"`{result['command']}` on {where}, {result['date']}", ""]
    for name, suite in result["suites"].items():
        lines += [f"## {name}: {suite['what']}", ""]
        rows = suite.get("rows", {})
        columns = [c for c in _COLUMNS if any(c in row for row in rows.values())]
        lines += ["| implementation | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for impl, row in rows.items():
            lines.append(f"| {impl} | " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
        lines.append("")
        for model, entry in suite.get("models", {}).items():
            lines.append(_model_line(model, entry))
        for impl, why in suite.get("skipped", {}).items():
            lines.append(f"- not run: {impl}: {why}")
        goal = dict(suite.get("goal", {}))
        if goal:
            met = goal.pop("met")
            measured = {k: suite[k] for k in goal if k in suite}
            shown = ", ".join(f"{k} {_cell(measured[k])} (goal {v})" if k in measured else f"{k} {v}" for k, v in goal.items())
            lines.append(f"Goal: {shown}: **{'met' if met else 'NOT met'}**")
        lines.append("")
    return "\n".join(lines)


def _model_line(model: str, entry: dict) -> str:
    """One model of the tolerance suite: speed-ups over Captum ("at least" when Captum never got there)."""
    bound = "" if entry["captum_reached"] else ">= "
    parts = [f"torch {bound}{entry['torch_speedup']:.2f}x (goal {entry['goal']['torch']})",
             f"onnxruntime {bound}{entry['onnxruntime_speedup']:.2f}x (goal {entry['goal']['onnxruntime']})"]
    if "fixed_ig200" in entry:
        fixed = entry["fixed_ig200"]
        how = "relu-path" if fixed.get("relu_path") else "plain loop, goal >= 1.3"
        parts.append(f"fixed IG-200 torch {fixed['speedup']:.2f}x ({how})")
        if "contended" in fixed:
            parts.append(f"fixed IG-200 with a competing process {fixed['contended']['speedup']:.2f}x, "
                         f"{fixed['contended']['kept']:.2f} of uncontended (goal >= 0.8)")
    if "contended" in entry:
        parts.append(f"with a competing process torch {entry['contended']['torch_speedup']:.2f}x, "
                     f"{entry['contended']['kept']:.2f} of uncontended (goal >= 0.8)")
    return f"- {model}: " + "; ".join(parts) + f": **{'met' if entry['goal']['met'] else 'NOT met'}**"


def _chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [(name, suite) for name, suite in result["suites"].items()
             if any("p50_ms" in row for row in suite.get("rows", {}).values())]
    if not timed:
        return
    fig, axes = plt.subplots(len(timed), 1, figsize=(8, 1.2 + 0.45 * sum(len(s["rows"]) for _, s in timed)), squeeze=False)
    for ax, (name, suite) in zip(axes[:, 0], timed):
        names = [n for n, r in suite["rows"].items() if "p50_ms" in r]
        values = [suite["rows"][n]["p50_ms"] for n in names]
        bars = ax.barh(names[::-1], values[::-1], color=["#c84" if n.startswith("xaisdk") else "#888" for n in names[::-1]])
        ax.bar_label(bars, fmt="%.1f ms", padding=3, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 2, max(values) * 4)
        ax.set_title(f"{name}: p50 ms per image (log scale, lower is better)", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"xaisdk bench on {result['device']['cpu']} ({result['device']['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(result: dict, out_dir: Path, name: str) -> list[Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>.png`` in ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md", out_dir / f"{name}.png"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result))
    _chart(result, paths[2])
    return [p for p in paths if p.exists()]
