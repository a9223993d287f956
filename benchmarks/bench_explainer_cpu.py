"""Deployment on the CPU: export time, bundle size, and per-image IG-200 latency of the Explainer on
the torch backend and on the ONNX Runtime backend (the exported bundle), against Captum, in one run.

    python benchmarks/bench_explainer_cpu.py [--n-images 16] [--repeats 3]

Model: the shipped digits GANMEX checkpoint. Each of ``--n-images`` test digits is explained alone
(a service's request: one image, batch 1), predicted class vs runner-up, IG with 200 midpoint steps
from the GANMEX baseline; the baseline image is made once up front so the three contenders time
the same work, and the end-to-end time with ``baseline="ganmex"`` (generator included) is
reported for both backends as well. The latency is the median over images and repeats after one
warm-up. Captum runs ``IntegratedGradients`` on ``S_source - S_target`` with
``method="riemann_middle"`` and all 200 steps in one batch. Writes
``benchmarks/results/explainer_cpu_<date>.json`` (device, versions, date, command) and a PNG chart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import xaisdk
from xaisdk.data import load_digits
from xaisdk.deploy.export import export_bundle
from xaisdk.explainer import Explainer
from xaisdk.models import WeightedScore, class_weights, load_shipped_ganmex, shipped_ganmex_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution_cpu import cpu_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 200


def per_image_latency(fn, n_images: int, repeats: int) -> float:
    """Median seconds of ``fn(i)`` over images ``i`` and repeats, after one warm-up call."""
    fn(0)
    times = []
    for _ in range(repeats):
        for i in range(n_images):
            start = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning, module="captum")
    import captum
    import onnxruntime
    from captum.attr import IntegratedGradients

    work = Path(tempfile.mkdtemp())
    export_times = []
    for _ in range(3):
        report = export_bundle(shipped_ganmex_path("digits"), work / "bundle", force=True)
        export_times.append(report.seconds)
    on_ort = Explainer.load(work / "bundle")
    on_ort_spinning = Explainer.load(work / "bundle", spin_wait=True)
    gm = load_shipped_ganmex("digits")
    on_torch = Explainer(gm)

    x = load_digits().test.x[: args.n_images]
    logits = on_torch.logits(x)
    source, target = logits.argmax(1), np.argsort(logits, 1)[:, -2]
    baseline = gm.baseline(x, target)
    weights = class_weights(source, target, 10)
    ig_captum = IntegratedGradients(WeightedScore(gm.classifier.model).eval())

    def captum_ig(i: int) -> np.ndarray:
        return ig_captum.attribute(torch.from_numpy(x[i:i + 1]), baselines=torch.from_numpy(baseline[i:i + 1]),
                                   additional_forward_args=(weights[i:i + 1],), n_steps=STEPS,
                                   method="riemann_middle", internal_batch_size=STEPS).detach().numpy()

    def xaisdk_ig(explainer: Explainer, given_baseline: bool):
        def run(i: int) -> np.ndarray:
            b = baseline[i] if given_baseline else "ganmex"
            return explainer.explain(x[i], int(target[i]), source=int(source[i]), baseline=b, n_steps=STEPS).attributions
        return run

    contenders = {
        "captum (torch)": captum_ig,
        "xaisdk torch backend": xaisdk_ig(on_torch, True),
        "xaisdk onnxruntime backend": xaisdk_ig(on_ort, True),
        "xaisdk onnxruntime backend, spin_wait=True": xaisdk_ig(on_ort_spinning, True),
        "xaisdk torch backend, baseline='ganmex'": xaisdk_ig(on_torch, False),
        "xaisdk onnxruntime backend, baseline='ganmex'": xaisdk_ig(on_ort, False),
    }
    latency = {name: per_image_latency(fn, args.n_images, args.repeats) for name, fn in contenders.items()}
    reference = np.stack([captum_ig(i)[0] for i in range(args.n_images)])
    agreement = {}
    for name in ("xaisdk torch backend", "xaisdk onnxruntime backend"):
        ours = np.stack([contenders[name](i) for i in range(args.n_images)])
        agreement[name] = float(np.abs(ours - reference).max() / np.abs(reference).max())
    files = {p.name: p.stat().st_size for p in sorted((work / "bundle").iterdir())}

    date = dt.date.today().isoformat()
    result = {
        "benchmark": "explainer_cpu",
        "date": date,
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "platform": platform.platform()},
        "versions": {"xaisdk": xaisdk.__version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "captum": captum.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "model": "shipped digits GANMEX (mnist_cnn classifier + StarGAN generator), 1x28x28",
        "export_seconds": {"median": statistics.median(export_times), "runs": export_times},
        "bundle_bytes": {"total": sum(files.values()), **files},
        "ig_steps": STEPS,
        "n_images": args.n_images,
        "repeats": args.repeats,
        "latency_ms_per_image": {k: v * 1e3 for k, v in latency.items()},
        "max_rel_diff_vs_captum": agreement,
        "onnxruntime_providers": on_ort.backend.providers,
    }
    out = args.out or RESULTS / f"explainer_cpu_{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _chart(result, out.with_suffix(".png"))
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: result[k] for k in ("export_seconds", "bundle_bytes", "latency_ms_per_image",
                                              "max_rel_diff_vs_captum")}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def _chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["latency_ms_per_image"])
    values = [result["latency_ms_per_image"][n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    bars = ax.barh(names[::-1], values[::-1], color="#48c")
    ax.bar_label(bars, fmt="%.1f ms", padding=3)
    ax.set_xlabel(f"ms per image, IG-{result['ig_steps']} (median; lower is better)")
    ax.set_title(f"Explainer latency on {result['device']['cpu']} ({result['device']['cores']} cores)", fontsize=9)
    ax.set_xlim(0, max(values) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
