"""The quickstart job: explain a few digits one-vs-one with every method, write figures and a summary."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from xaisdk import attribution
from xaisdk.baselines import MDTS, TargetClassSample
from xaisdk.data import load_digits
from xaisdk.errors import InputError
from xaisdk.models import load_shipped_classifier
from xaisdk.viz import save_saliency_grid

METHOD_ORDER = (
    "gradient",
    "grad_x_input",
    "integrated_gradients",
    "expected_gradients",
    "deeplift",
    "deepshap",
    "occlusion",
)
# Methods whose attributions should sum to S(x) - S(baseline); the summary reports the error.
COMPLETE = ("integrated_gradients", "deeplift")


@dataclass
class QuickstartResult:
    out_dir: Path
    figures: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _runner_up(logits: np.ndarray) -> np.ndarray:
    return np.argsort(logits, axis=1)[:, -2]


def _explain_all(
    clf, train, x: np.ndarray, source: np.ndarray, target: np.ndarray, seed: int, bar
) -> tuple[np.ndarray, dict, dict, dict]:
    """Every method on ``x`` for the (source, target) pairs; baseline = MDTS of the target class."""
    baseline = MDTS(train)(x, target)
    deepshap_refs = TargetClassSample(train, seed=seed).references(target, per_input=16)
    common = dict(source=source, target=target)
    calls = {
        "gradient": lambda: attribution.gradient(clf, x, **common),
        "grad_x_input": lambda: attribution.grad_x_input(clf, x, **common),
        "integrated_gradients": lambda: attribution.integrated_gradients(
            clf, x, baseline=baseline, n_steps=200, return_convergence_delta=True, **common
        ),
        "expected_gradients": lambda: attribution.expected_gradients(
            clf, x, references=train, n_samples=200, seed=seed, **common
        ),
        "deeplift": lambda: attribution.deeplift(clf, x, baseline=baseline, return_convergence_delta=True, **common),
        "deepshap": lambda: attribution.deepshap(clf, x, baselines=deepshap_refs, **common),
        "occlusion": lambda: attribution.occlusion(clf, x, window=1, baseline=baseline, **common),
    }
    maps, seconds, deltas = {}, {}, {}
    for name in METHOD_ORDER:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        result = calls[name]()
        seconds[name] = time.perf_counter() - start
        if isinstance(result, tuple):
            result, delta = result
            deltas[name] = delta
        maps[name] = result
        bar.update(1)
    return baseline, maps, seconds, deltas


def run_quickstart(
    out_dir: str | Path,
    *,
    n_images: int = 4,
    targets: Sequence[int] = (),
    seed: int = 0,
    progress: bool = True,
) -> QuickstartResult:
    """Load the shipped digits classifier and explain ``n_images`` test digits one-vs-one.

    One grid per target choice: the runner-up class of each image (always), and each class in
    ``targets`` (images predicted as that class are left out of its grid). Writes
    ``saliency_<target>.png``, ``summary.txt`` and ``summary.json`` to ``out_dir``.

    >>> import tempfile
    >>> res = run_quickstart(tempfile.mkdtemp(), n_images=1, progress=False)
    >>> [p.name for p in res.figures]
    ['saliency_runner-up.png']
    """
    if not 1 <= int(n_images) <= 64:
        raise InputError(f"n_images must be in [1, 64], got {n_images}")
    out = Path(out_dir)
    clf = load_shipped_classifier("digits")
    for t in targets:
        if not 0 <= int(t) < clf.num_classes:
            raise InputError(f"target {t} is not a class index in [0, {clf.num_classes})")
    split = load_digits()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(split.test), size=int(n_images), replace=False))
    x, labels = split.test.x[pick], split.test.y[pick]
    with torch.no_grad():
        logits = clf.model(torch.from_numpy(x)).numpy()
    source = logits.argmax(1)
    jobs: list[tuple[str, np.ndarray]] = [("runner-up", np.arange(len(x)))]
    jobs += [(f"class-{int(t)}", np.flatnonzero(source != int(t))) for t in targets]
    jobs = [(name, rows) for name, rows in jobs if len(rows)]
    out.mkdir(parents=True, exist_ok=True)
    result = QuickstartResult(out_dir=out)
    summary: dict = {
        "classifier": {"arch": clf.arch, **{k: clf.metadata.get(k) for k in ("test_accuracy", "dataset")}},
        "images": [int(i) for i in pick],
        "labels": labels.tolist(),
        "predicted": source.tolist(),
        "grids": {},
    }
    bar = tqdm(total=len(jobs) * len(METHOD_ORDER), desc="quickstart", unit="method", disable=not progress)
    for name, rows in jobs:
        xs, src = x[rows], source[rows]
        tgt = _runner_up(logits[rows]) if name == "runner-up" else np.full(len(rows), int(name.split("-")[1]))
        baseline, maps, seconds, deltas = _explain_all(clf, split.train, xs, src, tgt, seed, bar)
        titles = [f"#{pick[r]}: {src[i]} vs {tgt[i]}" for i, r in enumerate(rows)]
        figure = save_saliency_grid(
            out / f"saliency_{name}.png",
            xs,
            baseline,
            maps,
            row_titles=titles,
            title=f"S_source - S_target, target = {name}; baseline = MDTS (nearest training image of the target)",
        )
        result.figures.append(figure)
        with torch.no_grad():
            delta_x = (logits[rows, src] - logits[rows, tgt]).tolist()
            logit_b = clf.model(torch.from_numpy(baseline)).numpy()
        summary["grids"][name] = {
            "figure": figure.name,
            "rows": [int(pick[r]) for r in rows],
            "source": src.tolist(),
            "target": tgt.tolist(),
            "score_delta_input": delta_x,
            "score_delta_baseline": (logit_b[np.arange(len(rows)), src] - logit_b[np.arange(len(rows)), tgt]).tolist(),
            "seconds": seconds,
            "completeness_error": {k: np.abs(v).max().item() for k, v in deltas.items()},
        }
    bar.close()
    result.summary = summary
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.txt").write_text(_summary_text(summary))
    return result


def _summary_text(summary: dict) -> str:
    acc = summary["classifier"].get("test_accuracy")
    lines = [
        "xaisdk quickstart: one-vs-one attribution on the shipped digits classifier",
        f"classifier: {summary['classifier']['arch']}, test accuracy {acc:.4f}" if acc is not None else "",
        f"test images {summary['images']}, labels {summary['labels']}, predicted {summary['predicted']}",
        "",
    ]
    for name, grid in summary["grids"].items():
        lines.append(f"[{name}] {grid['figure']}")
        for i, row in enumerate(grid["rows"]):
            lines.append(
                f"  image {row}: S_{grid['source'][i]} - S_{grid['target'][i]} = {grid['score_delta_input'][i]:.3f} "
                f"(baseline: {grid['score_delta_baseline'][i]:.3f})"
            )
        timing = ", ".join(f"{k} {v:.2f}s" for k, v in grid["seconds"].items())
        lines.append(f"  time: {timing}")
        errors = ", ".join(f"{k} {v:.2e}" for k, v in grid["completeness_error"].items())
        lines.append(f"  max |sum(attr) - (S(x) - S(baseline))|: {errors}")
        lines.append("")
    return "\n".join(line for line in lines if line is not None) + "\n"
