"""The quickstart job: the GANMEX paper's Figure 2 on the shipped digits classifier.

Fig. 2.A explains a few test digits one-vs-one ("why the predicted class and not the target?") with
IG, DeepLIFT, Occlusion-1 and DeepSHAP, each relative to the Zero, MDTS and GANMEX baselines.
Fig. 2.B explains the misclassified test digits: why the predicted class and not the true one, relative
to the GANMEX baseline G(x, true class), the closest realistic image of the true class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xaisdk.baselines import MDTS
from xaisdk.data import load_digits
from xaisdk.deploy.export import export_bundle
from xaisdk.errors import InputError
from xaisdk.explainer import Explainer
from xaisdk.models import load_shipped_ganmex, shipped_ganmex_path
from xaisdk.models.exaggeration import shipped_exaggeration_path
from xaisdk.models.explaingan import shipped_explaingan_path
from xaisdk.viz import save_counterfactual_figure, save_grouped_saliency_grid

BASELINES = ("zero", "mdts", "ganmex")
METHODS = ("integrated_gradients", "deeplift", "occlusion", "deepshap")
# Methods whose attributions should sum to S(x) - S(baseline); the summary reports the error.
COMPLETE = ("integrated_gradients", "deeplift")
WHY_NOT_METHODS = ("integrated_gradients", "deeplift", "occlusion")
LABELS = {
    "zero": "Zero",
    "mdts": "MDTS",
    "ganmex": "GANMEX",
    "integrated_gradients": "IG",
    "deeplift": "DeepLIFT",
    "occlusion": "Occlusion-1",
    "deepshap": "DeepSHAP",
}
IG_STEPS = 200
MAX_MISCLASSIFIED = 4
FIGURE_A = "figure2_one_vs_one.png"
FIGURE_B = "figure2_why_not_true_class.png"
FIGURE_C = "counterfactuals.png"
SERIES_STEPS = 8
BUNDLE = "bundle"
COLOURS = "blue: evidence for the source class, red: for the target; each map on its own symmetric scale"


@dataclass
class QuickstartResult:
    out_dir: Path
    figures: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _score_delta(explainer: Explainer, x: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-row ``S_source - S_target`` (logits) of ``x``."""
    logits = explainer.logits(x)
    rows = np.arange(len(x))
    return logits[rows, source] - logits[rows, target]


def _attribute(explainer: Explainer, method: str, x: np.ndarray, source: np.ndarray, target: np.ndarray,
               baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """One method relative to one baseline per row: the attributions and, for IG/DeepLIFT, the completeness error."""
    options = {"integrated_gradients": {"n_steps": IG_STEPS}, "occlusion": {"window": 1}}.get(method, {})
    e = explainer.explain(x, target, source=source, method=method, baseline=baseline, **options)
    return e.attributions, e.convergence_delta if method in COMPLETE else None


def _explain(explainer: Explainer, x: np.ndarray, source: np.ndarray, target: np.ndarray, baselines: dict[str, np.ndarray],
             methods: Sequence[str], bar) -> tuple[dict, dict, dict]:
    """``maps[method][baseline]``, ``seconds[method][baseline]`` and per-row completeness errors."""
    maps: dict = {m: {} for m in methods}
    seconds: dict = {m: {} for m in methods}
    errors: dict = {m: {} for m in methods if m in COMPLETE}
    for method in methods:
        for name, baseline in baselines.items():
            bar.set_postfix_str(f"{LABELS[method]} / {LABELS[name]}")
            start = time.perf_counter()
            maps[method][name], delta = _attribute(explainer, method, x, source, target, baseline)
            seconds[method][name] = time.perf_counter() - start
            if delta is not None:
                errors[method][name] = np.abs(delta)
            bar.update(1)
    return maps, seconds, errors


def _timed(make: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    value = make()
    return value, time.perf_counter() - start


def _panel_summary(explainer, x, source, target, baselines, errors, seconds, baseline_seconds) -> dict:
    """Per-row score deltas, distances and completeness errors, and their aggregates, for one figure."""
    delta_x = _score_delta(explainer, x, source, target)
    delta_b = {name: _score_delta(explainer, b, source, target) for name, b in baselines.items()}
    predicted_b = {name: explainer.predict(b) for name, b in baselines.items()}
    l2 = {name: np.sqrt(((x - b) ** 2).reshape(len(x), -1).sum(1)) for name, b in baselines.items()}
    rows = []
    for i in range(len(x)):
        rows.append({
            "source": int(source[i]),
            "target": int(target[i]),
            "score_delta": {"input": float(delta_x[i]), **{k: float(v[i]) for k, v in delta_b.items()}},
            "baseline_predicted": {k: int(v[i]) for k, v in predicted_b.items()},
            "l2_distance": {k: float(v[i]) for k, v in l2.items()},
            "completeness_error": {m: {k: float(v[i]) for k, v in per.items()} for m, per in errors.items()},
        })
    return {
        "rows": rows,
        "mean_l2_distance": {k: float(v.mean()) for k, v in l2.items()},
        "max_completeness_error": {m: {k: float(v.max()) for k, v in per.items()} for m, per in errors.items()},
        "seconds": seconds,
        "baseline_seconds": baseline_seconds,
    }


def run_quickstart(
    out_dir: str | Path,
    *,
    n_images: int = 4,
    targets: Sequence[int] = (),
    seed: int = 0,
    progress: bool = True,
) -> QuickstartResult:
    """Explain test digits with the shipped GANMEX model in the layout of the GANMEX paper's Figure 2.

    ``figure2_one_vs_one.png`` (Fig. 2.A): ``n_images`` test digits (a seeded choice), each against its
    runner-up class and against every class in ``targets`` other than its predicted one; one row per
    (input, target) pair: the input, the Zero / MDTS / GANMEX baselines, then IG, DeepLIFT, Occlusion-1
    and DeepSHAP maps of ``S_predicted - S_target`` relative to each baseline.
    ``figure2_why_not_true_class.png`` (Fig. 2.B): up to 4 misclassified test digits, why the predicted
    class and not the true one, relative to the GANMEX baseline ``G(x, true class)`` (left out when the
    classifier misclassifies none). ``summary.txt`` and ``summary.json`` hold, per row, the score delta at
    the input and at each baseline, the distance ``||x - b||``, the IG / DeepLIFT completeness errors, and
    each method's time.

    >>> import tempfile
    >>> res = run_quickstart(tempfile.mkdtemp(), n_images=1, progress=False)
    >>> res.figures[0].name, len(res.summary["one_vs_one"]["rows"])
    ('figure2_one_vs_one.png', 1)
    """
    if not 1 <= int(n_images) <= 64:
        raise InputError(f"n_images must be in [1, 64], got {n_images}")
    out = Path(out_dir)
    gm = load_shipped_ganmex("digits")
    clf = gm.classifier
    extra: list[int] = []
    for t in targets:
        if not 0 <= int(t) < clf.num_classes:
            raise InputError(f"target {t} is not a class index in [0, {clf.num_classes})")
        if int(t) not in extra:
            extra.append(int(t))
    # Every explanation below runs on the exported bundle (ONNX Runtime), as a service would.
    export = export_bundle(gm, out / BUNDLE, force=True, explaingan=shipped_explaingan_path(),
                           exaggeration=shipped_exaggeration_path())
    explainer = Explainer.load(out / BUNDLE)
    split = load_digits()
    test = split.test
    test_predicted = explainer.predict(test.x)
    misclassified = np.flatnonzero(test_predicted != test.y)[:MAX_MISCLASSIFIED]

    # Fig. 2.A rows: every chosen image against its runner-up class, then against each extra target.
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(test), size=int(n_images), replace=False))
    logits = explainer.logits(test.x[pick])
    predicted, runner_up = logits.argmax(1), np.argsort(logits, axis=1)[:, -2]
    pairs: list[tuple[int, int, str]] = []  # (index into pick, target, why)
    for i in range(len(pick)):
        pairs.append((i, int(runner_up[i]), "runner-up"))
        pairs += [(i, t, "--target") for t in extra if t not in (predicted[i], runner_up[i])]
    which = np.array([i for i, _, _ in pairs])
    x, source = test.x[pick[which]], predicted[which]
    target = np.array([t for _, t, _ in pairs])

    out.mkdir(parents=True, exist_ok=True)
    result = QuickstartResult(out_dir=out)
    steps = len(METHODS) * len(BASELINES) + (len(WHY_NOT_METHODS) if len(misclassified) else 0)
    bar = tqdm(total=steps, desc="quickstart", unit="map", disable=not progress)

    mdts, mdts_s = _timed(lambda: MDTS(split.train)(x, target))
    ganmex, ganmex_s = _timed(lambda: explainer.counterfactual(x, target))
    baselines = {"zero": np.zeros_like(x), "mdts": mdts, "ganmex": ganmex}
    maps, seconds, errors = _explain(explainer, x, source, target, baselines, METHODS, bar)
    titles = [f"#{pick[i]}: {source[r]} -> {target[r]}" for r, i in enumerate(which)]
    result.figures.append(save_grouped_saliency_grid(
        out / FIGURE_A, x,
        {LABELS[k]: v for k, v in baselines.items()},
        {LABELS[m]: {LABELS[k]: v for k, v in per.items()} for m, per in maps.items()},
        row_titles=titles,
        title=f"Fig. 2.A  one-vs-one: why the predicted class (source) and not the target?  "
              f"Rows '#test image: source -> target'.\nMaps of S_source - S_target relative to each baseline; {COLOURS}.",
    ))
    panel_a = _panel_summary(explainer, x, source, target, baselines, errors, seconds,
                             {"zero": 0.0, "mdts": mdts_s, "ganmex": ganmex_s})
    for row, (i, _, why) in zip(panel_a["rows"], pairs):
        row.update(image=int(pick[i]), label=int(test.y[pick[i]]), why=why)
    panel_a["rows"] = [_ordered(row) for row in panel_a["rows"]]

    summary: dict = {
        "classifier": {"arch": clf.arch, **{k: clf.metadata.get(k) for k in ("test_accuracy", "dataset")}},
        "ganmex_checkpoint": shipped_ganmex_path("digits").name,
        "bundle": {"folder": BUNDLE, "backend": explainer.backend.name, "providers": explainer.backend.providers,
                   "export_seconds": export.seconds, "megabytes": export.total_bytes / 1e6},
        "images": [int(i) for i in pick],
        "labels": test.y[pick].tolist(),
        "predicted": predicted.tolist(),
        "runner_up": runner_up.tolist(),
        "extra_targets": extra,
        "ig_steps": IG_STEPS,
        "one_vs_one": {"figure": FIGURE_A, **panel_a},
    }

    # Fig. 2.B: why the predicted class c_m and not the true class c_o, baseline G(x, c_o).
    why_not: dict = {"figure": None, "misclassified": len(np.flatnonzero(test_predicted != test.y)), "rows": []}
    if len(misclassified):
        xm, pm, tm = test.x[misclassified], test_predicted[misclassified], test.y[misclassified]
        expected, gen_s = _timed(lambda: explainer.counterfactual(xm, tm))
        maps_m, seconds_m, errors_m = _explain(explainer, xm, pm, tm, {"ganmex": expected}, WHY_NOT_METHODS, bar)
        result.figures.append(save_grouped_saliency_grid(
            out / FIGURE_B, xm,
            {"GANMEX G(x, true)": expected},
            {"attribution, baseline GANMEX": {LABELS[m]: per["ganmex"] for m, per in maps_m.items()}},
            row_titles=[f"#{i}: predicted {p}, true {t}" for i, p, t in zip(misclassified, pm, tm)],
            baseline_group="expected image",
            title="Fig. 2.B  misclassified test digits: why the predicted class and not the true one?\n"
                  "Maps of S_predicted - S_true relative to G(x, true); blue: evidence for the predicted\n"
                  "class, red: for the true class; each map on its own symmetric scale.",
        ))
        panel_b = _panel_summary(explainer, xm, pm, tm, {"ganmex": expected}, errors_m, seconds_m, {"ganmex": gen_s})
        for row, i in zip(panel_b["rows"], misclassified):
            row.update(image=int(i), label=int(test.y[i]))
        panel_b["rows"] = [_ordered(row) for row in panel_b["rows"]]
        why_not.update(figure=FIGURE_B, **panel_b)
    summary["why_not_true_class"] = why_not
    summary["counterfactuals"] = _counterfactuals(explainer, test, out, result)
    bar.close()

    result.summary = summary
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.txt").write_text(_summary_text(summary))
    return result


def _counterfactuals(explainer: Explainer, test: Any, out: Path, result: QuickstartResult) -> dict:
    """ExplainGAN (digits 3 vs 8) and Progressive Exaggeration (class 8 against the rest) on the first
    test 3, from the bundle; the figure and what the summary reports of them."""
    index = int(np.flatnonzero(test.y == 3)[0])
    x = test.x[index:index + 1]
    transformation = explainer.counterfactual(x, kind="explaingan")
    series = explainer.counterfactual(x, kind="exaggeration", n_steps=SERIES_STEPS)
    names = explainer.explaingan.class_names
    target_class = explainer.class_names[explainer.exaggeration.target_class]
    result.figures.append(save_counterfactual_figure(
        out / FIGURE_C, x, transformation, series, names, target_class,
        title=f"test digit #{index}: ExplainGAN turns it into the other class of its {names[0]}-vs-{names[1]} classifier; "
              f"Progressive Exaggeration walks p({target_class}) across the boundary"))
    return {"figure": FIGURE_C, "image": index,
            "explaingan": {"classes": list(names), "source": names[int(transformation.source[0])],
                           "flipped_prob": float(transformation.flipped_prob[0]),
                           "mask_area": float(transformation.mask.mean())},
            "exaggeration": {"target_class": target_class, "desired": np.round(series.targets[0], 3).tolist(),
                             "f": np.round(series.outputs[0], 3).tolist()}}


def _ordered(row: dict) -> dict:
    """The row's keys in reading order: which image and pair first, then the numbers."""
    first = ("image", "label", "source", "target", "why")
    return {**{k: row[k] for k in first if k in row}, **{k: v for k, v in row.items() if k not in first}}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(line[c])) for line in [header, *rows]) for c in range(len(header))]
    lines = []
    for line in [header, *rows]:
        cells = [str(line[0]).ljust(widths[0])] + [str(v).rjust(w) for v, w in zip(line[1:], widths[1:])]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def _panel_text(panel: dict, names: Sequence[str], row_label: Callable[[dict], str]) -> list[str]:
    labels = [LABELS[k] for k in names]
    lines = ["  S(x), S(b): S_source - S_target at the input x and at each baseline b (negative: the classifier calls b "
             "the target class); class(b): the class predicted for b; |x-b|: the L2 distance ||x - b||"]
    header = ["row", "S(x)", *[f"S({k})" for k in labels], *[f"class({k})" for k in labels],
              *[f"|x-{k}|" for k in labels]]
    body = [[row_label(row), f"{row['score_delta']['input']:.2f}",
             *[f"{row['score_delta'][k]:.2f}" for k in names],
             *[str(row["baseline_predicted"][k]) for k in names],
             *[f"{row['l2_distance'][k]:.2f}" for k in names]] for row in panel["rows"]]
    lines += _table(header, body)
    mean = panel["mean_l2_distance"]
    lines.append("  mean ||x - b||: " + ", ".join(f"{LABELS[k]} {mean[k]:.2f}" for k in names))
    lines.append("  seconds per method and baseline:")
    lines += _table(["", *labels], [[LABELS[m], *[f"{per[k]:.2f}" for k in names]] for m, per in panel["seconds"].items()],
                    indent="    ")
    made = [f"{LABELS[k]} {s:.2f} s" for k, s in panel["baseline_seconds"].items() if k != "zero"]
    lines.append("  making the baselines: " + ", ".join(made))
    lines.append("  max |sum(attr) - (S(x) - S(b))| (completeness error):")
    lines += _table(["", *labels], [[LABELS[m], *[f"{per[k]:.1e}" for k in names]]
                                    for m, per in panel["max_completeness_error"].items()], indent="    ")
    return lines


def _summary_text(summary: dict) -> str:
    acc = summary["classifier"].get("test_accuracy")
    accuracy = f", test accuracy {acc:.4f}" if acc is not None else ""
    lines = [
        "xaisdk quickstart: the GANMEX paper's Figure 2 on the shipped digits classifier",
        f"classifier: {summary['classifier']['arch']}{accuracy}; baseline generator: {summary['ganmex_checkpoint']}",
        f"explanations from the exported bundle {summary['bundle']['folder']}/ ({summary['bundle']['megabytes']:.1f} MB, "
        f"exported and verified in {summary['bundle']['export_seconds']:.1f} s) on {summary['bundle']['backend']} "
        f"({', '.join(summary['bundle']['providers'])})",
        f"test images {summary['images']}, labels {summary['labels']}, predicted {summary['predicted']}, "
        f"runner-up {summary['runner_up']}",
        "",
    ]
    panel = summary["one_vs_one"]
    lines.append(f"[Fig. 2.A] {panel['figure']}: why the predicted class (source) and not the target? "
                 f"IG ({summary['ig_steps']} steps), DeepLIFT, Occlusion-1, DeepSHAP with Zero, MDTS, GANMEX baselines")
    lines += _panel_text(panel, BASELINES, lambda r: f"#{r['image']}: {r['source']} -> {r['target']} ({r['why']})")
    lines.append("  (DeepSHAP averages DeepLIFT over the baselines given; with one baseline per input it equals DeepLIFT.)")
    lines.append("")
    panel = summary["why_not_true_class"]
    if panel["figure"] is None:
        lines.append("[Fig. 2.B] no figure: the classifier misclassifies none of the test digits")
    else:
        lines.append(f"[Fig. 2.B] {panel['figure']}: {len(panel['rows'])} of the {panel['misclassified']} misclassified "
                     "test digits: why the predicted class (source) and not the true one (target)? "
                     "Baseline GANMEX G(x, true class)")
        lines += _panel_text(panel, ("ganmex",),
                             lambda r: f"#{r['image']}: predicted {r['source']}, true {r['target']}")
    panel = summary["counterfactuals"]
    eg, ex = panel["explaingan"], panel["exaggeration"]
    lines.append("")
    lines.append(f"[counterfactuals] {panel['figure']}: test digit #{panel['image']}. ExplainGAN ({eg['classes'][0]} vs "
                 f"{eg['classes'][1]}): from {eg['source']}, composite p(other class) {eg['flipped_prob']:.3f}, mask area "
                 f"{eg['mask_area']:.3f}. Progressive Exaggeration, f = p({ex['target_class']}): desired "
                 f"{', '.join(f'{v:.2f}' for v in ex['desired'])}; got {', '.join(f'{v:.2f}' for v in ex['f'])}")
    return "\n".join(lines) + "\n"
