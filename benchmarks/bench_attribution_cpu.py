"""CPU latency of xaisdk's torch attribution methods against Captum, in the same run.

    python benchmarks/bench_attribution_cpu.py [--n-images 32] [--repeats 3]

Explains ``--n-images`` test digits with the shipped classifier, one-vs-one (predicted class vs
runner-up, MDTS baseline), and times each method with xaisdk and with Captum on the same inputs
(median of ``--repeats`` runs after one warm-up). Also times the C++ IG loop against its numpy
reference over the same torch gradient. Writes ``benchmarks/results/attribution_cpu_<date>.json``
(device, versions, date, command) and a PNG bar chart next to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import xaisdk
from xaisdk import attribution
from xaisdk.baselines import MDTS, TargetClassSample
from xaisdk.bench.environment import cpu_name
from xaisdk.data import load_digits
from xaisdk.models import WeightedScore, class_weights, load_shipped_classifier
from xaisdk.runtime import ig_loop, integrated_gradients_loop, integrated_gradients_reference

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    warnings.filterwarnings("ignore", category=UserWarning, module="captum")  # its per-call hook notices
    import captum
    from captum.attr import DeepLift, DeepLiftShap, IntegratedGradients, Occlusion

    clf = load_shipped_classifier("digits")
    split = load_digits()
    x_np = split.test.x[: args.n_images]
    x = torch.from_numpy(x_np)
    with torch.no_grad():
        logits = clf.model(x).numpy()
    source, target = logits.argmax(1), np.argsort(logits, 1)[:, -2]
    baseline_np = MDTS(split.train)(x_np, target)
    baseline = torch.from_numpy(baseline_np)
    refs_np = TargetClassSample(split.train, seed=0).references(target, per_input=16)
    w = class_weights(source, target, clf.num_classes)
    delta_model = WeightedScore(clf.model).eval()
    common = dict(source=source, target=target)

    cases: dict[str, dict[str, object]] = {
        "integrated_gradients_200": {
            "xaisdk": lambda: attribution.integrated_gradients(clf, x_np, baseline=baseline_np, n_steps=200, **common),
            "captum (internal_batch_size=1024)": lambda: IntegratedGradients(delta_model).attribute(
                x, baseline, additional_forward_args=(w,), n_steps=200, internal_batch_size=1024
            ),
            "captum (default: all steps in one batch)": lambda: IntegratedGradients(delta_model).attribute(
                x, baseline, additional_forward_args=(w,), n_steps=200
            ),
        },
        "deeplift": {
            "xaisdk": lambda: attribution.deeplift(clf, x_np, baseline=baseline_np, **common),
            "captum": lambda: DeepLift(delta_model).attribute(x, baseline, additional_forward_args=(w,)),
        },
        "deepshap_16_shared_baselines": {
            "xaisdk": lambda: attribution.deepshap(clf, x_np, baselines=refs_np[0], **common),
            "captum": lambda: DeepLiftShap(delta_model).attribute(x, torch.from_numpy(refs_np[0]), additional_forward_args=(w,)),
        },
        "occlusion_1": {
            "xaisdk": lambda: attribution.occlusion(clf, x_np, window=1, baseline=baseline_np, **common),
            "captum (perturbations_per_eval=1, default)": lambda: Occlusion(delta_model).attribute(
                x, sliding_window_shapes=(1, 1, 1), baselines=baseline, additional_forward_args=(w,)
            ),
            "captum (perturbations_per_eval=32)": lambda: Occlusion(delta_model).attribute(
                x, sliding_window_shapes=(1, 1, 1), baselines=baseline, additional_forward_args=(w,), perturbations_per_eval=32
            ),
        },
    }

    alphas, weights = attribution.path_rule("riemann_middle", 200)

    def numpy_grad(batch: np.ndarray, rows=[0]) -> np.ndarray:  # noqa: B006 - a running row counter
        sample = (np.arange(rows[0], rows[0] + len(batch)) // len(alphas)) % len(x_np)
        rows[0] += len(batch)
        xt = torch.from_numpy(batch.copy()).requires_grad_(True)
        return torch.autograd.grad((clf.model(xt) * w[sample]).sum(), xt)[0].numpy()

    cases["ig_loop_numpy_backend_200"] = {
        f"xaisdk C++ loop ({ig_loop.BACKEND})": lambda: integrated_gradients_loop(
            numpy_grad, x_np, baseline_np, alphas, weights, chunk_size=1024
        ),
        "xaisdk numpy reference": lambda: integrated_gradients_reference(
            numpy_grad, x_np, baseline_np, alphas, weights, chunk_size=1024
        ),
    }

    results = {}
    for case, runners in cases.items():
        results[case] = {}
        for name, fn in runners.items():
            seconds = median_seconds(fn, args.repeats)
            results[case][name] = seconds
            print(f"{case:32s} {name:45s} {seconds * 1000:9.1f} ms", flush=True)

    today = dt.date.today().isoformat()
    record = {
        "benchmark": "attribution_cpu",
        "device": f"CPU: {cpu_name()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})",
        "versions": {
            "xaisdk": xaisdk.__version__,
            "torch": torch.__version__,
            "captum": captum.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "workload": {
            "images": int(len(x_np)),
            "model": "shipped digits MnistCNN (1x28x28)",
            "score": "S_predicted - S_runner_up (logits)",
            "baseline": "MDTS",
            "repeats": args.repeats,
            "statistic": "median seconds after one warm-up",
        },
        "seconds": results,
    }
    out = args.out or RESULTS / f"attribution_cpu_{today}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    _plot(results, out.with_suffix(".png"), record["device"])
    print(f"wrote {out} and {out.with_suffix('.png')}")


def _plot(results: dict, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6))
    for ax, (case, runners) in zip(axes, results.items()):
        names = list(runners)
        values = [runners[n] * 1000 for n in names]
        colours = ["tab:blue" if n.startswith("xaisdk") else "tab:gray" for n in names]
        ax.barh(range(len(names)), values, color=colours)
        ax.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms (median)")
        ax.set_title(case, fontsize=9)
    fig.suptitle(device, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
