"""The reference zoo through xaisdk at native resolution: export, verification, agreement, IG-200 speed.

For every layout of :mod:`xaisdk.bench.zoo` (random weights, 224 px, 1000 classes) this measures, on
this machine: the export time and bundle size; the export's own checks (gradient graph vs torch
autograd and vs float64 finite differences); which methods the bundle offers (DeepLIFT or why not);
seconds for one image's IG-200 (Gauss-Legendre) on the torch backend and on ONNX Runtime; and the
agreement of the two maps, and of torch's map with Captum's ``IntegratedGradients`` (same nodes), as
max |difference| / max |reference|; and the distance of each float32 map from the same quadrature in
float64 (torch autograd on a float64 copy of the model), which says how far float32 itself is from the
answer. Baseline: the black image; target: the runner-up class.

Writes ``benchmarks/results/model_zoo_<date>.json`` (device, versions, date, command) and ``.md``.

    python benchmarks/model_zoo.py                      # every layout (about an hour on 2 cores)
    python benchmarks/model_zoo.py --models resnet18 vit_b_16 --steps 200
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients
from tqdm import tqdm

from xaisdk import Explainer
from xaisdk.bench.environment import describe_environment
from xaisdk.bench.zoo import ZOO, build
from xaisdk.deploy.export import export_bundle
from xaisdk.deploy.graph_checks import relative_error
from xaisdk.deploy.torch_intake import classifier_from_module
from xaisdk.runtime.backend import class_weights

RESULTS = Path(__file__).resolve().parent / "results"


def _rel_l1(got: np.ndarray, want: np.ndarray) -> float:
    """sum |got - want| / sum |want|: the share of the map's attribution mass that differs."""
    return float(np.abs(got - want).sum() / max(float(np.abs(want).sum()), 1e-30))


def _nodes(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The Gauss-Legendre nodes and weights on [0, 1] of ``rule="gausslegendre"``."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


def float64_path_gradients(net: torch.nn.Module, image: np.ndarray, source: int, target: int, steps: int) -> np.ndarray:
    """Gradients of S_source - S_target at each node on the path from the black image, in float64, 8 rows a call."""
    net64 = copy.deepcopy(net).double().eval()
    x = torch.from_numpy(image).double()
    gradients = []
    for chunk in np.array_split(_nodes(steps)[0], -(-steps // 8)):
        points = (torch.from_numpy(chunk).view(-1, 1, 1, 1) * x).requires_grad_(True)
        logits = net64(points)
        (logits[:, source] - logits[:, target]).sum().backward()
        gradients.append(points.grad.numpy())
    return np.concatenate(gradients)


def float32_path_gradients(backend, image: np.ndarray, source: int, target: int, steps: int) -> np.ndarray:
    """The same gradients from a backend (torch autograd or the bundle's ONNX gradient graph)."""
    weights = class_weights(np.array([source]), np.array([target]), backend.num_classes)
    gradients = []
    for chunk in np.array_split(_nodes(steps)[0], -(-steps // 8)):
        points = (chunk.reshape(-1, 1, 1, 1) * image).astype(np.float32)
        gradients.append(backend.score_gradient(points, np.repeat(weights, len(points), axis=0))[1])
    return np.concatenate(gradients).astype(np.float64)


def path_agreement(image: np.ndarray, exact: np.ndarray, torch_path: np.ndarray, onnx_path: np.ndarray, steps: int) -> dict:
    """Where along the path float32 leaves float64, and how the backends agree elsewhere.

    A path point whose float32 gradient is over 1e-4 (max-norm) from float64 took a different ReLU or
    max-pool decision at a near-tie: such points are counted, and the backends' maps are compared again
    without them (both maps over the same remaining points, against the float64 map's maximum).
    """
    weights = _nodes(steps)[1].reshape(-1, 1, 1, 1)

    def per_point(path: np.ndarray) -> np.ndarray:
        flat_exact = np.abs(exact).reshape(steps, -1).max(1)
        return np.abs(path - exact).reshape(steps, -1).max(1) / np.maximum(flat_exact, 1e-30)

    flipped = (per_point(torch_path) > 1e-4) | (per_point(onnx_path) > 1e-4)
    if flipped.all():  # nothing left to compare
        return {"path_points_off_float64": int(flipped.sum()), "ig_onnx_vs_torch_same_decisions": None}
    scale = float(np.abs(image[0] * (weights * exact).sum(0)).max())
    keep = ~flipped[:, None, None, None]
    rest = np.abs(image[0] * (weights * keep * (onnx_path - torch_path)).sum(0)).max()
    return {"path_points_off_float64": int(flipped.sum()), "ig_onnx_vs_torch_same_decisions": float(rest / max(scale, 1e-30))}


def measure(name: str, steps: int, folder: Path, captum: bool) -> dict:
    """One layout's row (an ``error`` entry instead of numbers when a stage fails)."""
    row: dict = {"model": name, "parameters": ZOO[name].parameters}
    started = time.perf_counter()
    net = build(name)
    shape = ZOO[name].input_shape
    row["build_s"] = round(time.perf_counter() - started, 1)
    try:
        report = export_bundle(net, folder / name, input_shape=shape, force=True)
    except Exception as err:  # the row records why, the other layouts go on
        row["error"] = f"export: {type(err).__name__}: {str(err)[:300]}"
        return row
    row.update(export_s=round(report.seconds, 1), bundle_mb=round(report.total_bytes / 1e6, 1),
               grad_vs_autograd=report.checks["grad_rel_err"], grad_vs_float64_fd=report.checks["grad_fd_rel_err"],
               methods="ig, occlusion, gradient" + (", deeplift" if report.deeplift_unavailable is None else ""),
               deeplift_unavailable=report.deeplift_unavailable)
    image = np.random.default_rng(0).random((1, *shape)).astype(np.float32)
    # rows per backend call: the Explainer's default for the image size (27 at 224 px)
    options = {"target": "runner-up", "method": "ig", "baseline": "zero", "n_steps": steps, "rule": "gausslegendre"}
    torch_explainer = Explainer(classifier_from_module(net, input_shape=shape))
    onnx_explainer = Explainer.load(report.path)
    maps = {}
    for label, explainer in (("torch", torch_explainer), ("onnxruntime", onnx_explainer)):
        explainer.explain(image, **{**options, "n_steps": 2})  # warm-up
        t0 = time.perf_counter()
        e = explainer.explain(image, **options)
        row[f"ig{steps}_s_{label}"] = round(time.perf_counter() - t0, 2)
        maps[label] = e
    row["ig_onnx_vs_torch"] = relative_error(maps["onnxruntime"].attributions, maps["torch"].attributions)
    row["ig_onnx_vs_torch_l1"] = _rel_l1(maps["onnxruntime"].attributions, maps["torch"].attributions)
    source, target = int(maps["torch"].source[0]), int(maps["torch"].target[0])
    exact = float64_path_gradients(net, image, source, target, steps)
    exact_map = image * (_nodes(steps)[1].reshape(-1, 1, 1, 1) * exact).sum(0, keepdims=True)
    row["ig_torch_vs_float64"] = relative_error(maps["torch"].attributions, exact_map)
    row["ig_onnx_vs_float64"] = relative_error(maps["onnxruntime"].attributions, exact_map)
    row["ig_torch_vs_float64_l1"] = _rel_l1(maps["torch"].attributions, exact_map)
    row.update(path_agreement(image, exact, float32_path_gradients(torch_explainer.backend, image, source, target, steps),
                              float32_path_gradients(onnx_explainer.backend, image, source, target, steps), steps))
    e = maps["torch"]
    row["completeness_error"] = float(np.abs(e.convergence_delta).max() / max(float(np.abs(e.score - e.baseline_score).max()),
                                                                             1e-30))
    if captum:
        ig = IntegratedGradients(lambda t: net(t)[:, source] - net(t)[:, target])
        want = ig.attribute(torch.from_numpy(image), torch.zeros(1, *shape), n_steps=steps, method="gausslegendre",
                            internal_batch_size=25).detach().numpy()
        row["ig_torch_vs_captum"] = relative_error(maps["torch"].attributions, want)
    return row


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def _markdown(rows: list[dict], env: dict, steps: int) -> str:
    lines = [f"# Model zoo at 224 px ({env['date']})", "", f"Command: `{env['command']}`", "",
             f"Device: {env['device']}", "",
             f"| model | params | export s | bundle MB | grad vs autograd | grad vs f64 FD | IG-{steps} s torch | "
             f"IG-{steps} s ORT | ORT vs torch IG | same, L1 | torch vs float64 IG | same, L1 | ORT vs float64 IG | "
             "points off float64 | ORT vs torch IG, same decisions | torch vs Captum IG | methods |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['parameters']:,} | {r['error']} |||||||||||||||")
            continue
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['export_s']} | {r['bundle_mb']} | {r['grad_vs_autograd']:.1e} | "
                     f"{r['grad_vs_float64_fd']:.1e} | {r[f'ig{steps}_s_torch']} | {r[f'ig{steps}_s_onnxruntime']} | "
                     f"{r['ig_onnx_vs_torch']:.1e} | {r.get('ig_onnx_vs_torch_l1', float('nan')):.1e} | "
                     f"{r.get('ig_torch_vs_float64', float('nan')):.1e} | {r.get('ig_torch_vs_float64_l1', float('nan')):.1e} | "
                     f"{r.get('ig_onnx_vs_float64', float('nan')):.1e} | {r.get('path_points_off_float64', '')} | "
                     f"{_number(r.get('ig_onnx_vs_torch_same_decisions'))} | "
                     f"{r.get('ig_torch_vs_captum', float('nan')):.1e} | "
                     f"{r['methods']} |")
    reasons = [f"- {r['model']}: {r['deeplift_unavailable']}" for r in rows if r.get("deeplift_unavailable")]
    return "\n".join(lines + (["", "Why DeepLIFT is not offered:", *reasons] if reasons else [])) + "\n"


def _merged(earlier: dict | None, rows: list[dict]) -> list[dict]:
    """Today's earlier rows with these models' rows replaced (or appended)."""
    if not earlier:
        return rows
    fresh = {r["model"]: r for r in rows}
    return [fresh.pop(r["model"], r) for r in earlier["rows"]] + list(fresh.values())


def _write(stem: Path, env: dict, steps: int, rows: list[dict]) -> None:
    stem.with_suffix(".json").write_text(json.dumps({**env, "steps": steps, "rows": rows}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(_markdown(rows, env, steps))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--no-captum", action="store_true", help="skip the Captum comparison (halves the time)")
    parser.add_argument("--update", action="store_true", help="replace only these models' rows in today's results")
    args = parser.parse_args(argv)
    env = describe_environment("python " + " ".join(shlex.quote(a) for a in sys.argv))
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"model_zoo_{dt.date.today().isoformat()}"
    earlier = json.loads(stem.with_suffix(".json").read_text()) if args.update and stem.with_suffix(".json").exists() else None
    if earlier:
        env["command"] = f"{earlier['command']}; then {env['command']}"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in tqdm(args.models, desc="model zoo", unit="model"):
            rows.append(measure(name, args.steps, Path(folder), not args.no_captum))
            tqdm.write(json.dumps(rows[-1]))
            shutil.rmtree(Path(folder) / name, ignore_errors=True)  # VGG-11's bundle alone is 1 GB
            _write(stem, env, args.steps, _merged(earlier, rows))  # each row lands as soon as it is measured
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
