"""How far float32 Integrated Gradients are from a float64 reference: the relu-path kernels and the plain loop.

    python benchmarks/relu_path_precision.py [--n-images 100] [--steps 200]

Model: the shipped digits GANMEX checkpoint. Each test digit is explained as the service does by
default: predicted class vs runner-up, IG with midpoint steps from the GANMEX baseline. Three
computations of the same sum:

- ``relu_path``: :class:`~xaisdk.torch_runtime.torch_backend.TorchBackend` with its relu-path kernels (float32);
- ``plain_loop``: the same backend with ``fast_ig=False``, autograd per step (float32);
- ``float64``: a float64 copy of the model, autograd per step: the reference.

A ReLU unit whose pre-activation is within float32 rounding of 0 at a path point may be counted on in
one computation and off in another; such a unit moves one step's gradient by a whole column of the
second layer. The report gives, per image, the largest absolute difference to the reference relative
to the largest |attribution| of that image, and the difference of the sums relative to the score
gap |S(x) - S(b)|; the JSON goes to ``benchmarks/results/relu_path_precision_<date>.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xaisdk.bench.environment import describe_environment
from xaisdk.data import load_digits
from xaisdk.methods import drivers
from xaisdk.methods.quadrature import path_rule
from xaisdk.models import load_shipped_ganmex
from xaisdk.torch_runtime.torch_backend import TorchBackend

RESULTS = Path(__file__).resolve().parent / "results"


def float64_ig(model: torch.nn.Module, x: np.ndarray, b: np.ndarray, weights: np.ndarray, steps: int) -> np.ndarray:
    """IG of ``weights . logits`` with every operation in float64 (the reference)."""
    alphas, quad = path_rule("riemann_middle", steps)
    xt, bt = torch.from_numpy(x).double(), torch.from_numpy(b).double()
    w = torch.from_numpy(weights).double()
    out = torch.zeros_like(xt)
    for a, q in zip(alphas, quad):
        point = (bt + float(a) * (xt - bt)).requires_grad_(True)
        (grad,) = torch.autograd.grad((model(point) * w).sum(), point)
        out += float(q) * grad
    return ((xt - bt) * out).numpy()


def summarise(values: np.ndarray) -> dict:
    return {"median": float(np.median(values)), "p99": float(np.quantile(values, 0.99)), "max": float(values.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    gm = load_shipped_ganmex("digits")
    reference_model = copy.deepcopy(gm.classifier.model).double().eval()
    x = load_digits().test.x[: args.n_images]
    fast, plain = TorchBackend(gm), TorchBackend(gm, fast_ig=False)
    assert fast.relu_path() is not None and plain.relu_path() is None
    logits = fast.logits(x)
    ranked = np.argsort(-logits, axis=1)
    eye = np.eye(logits.shape[1], dtype=np.float32)
    weights = eye[ranked[:, 0]] - eye[ranked[:, 1]]
    baseline = fast.generate(x, ranked[:, 1])

    rows = []
    for i in tqdm(range(len(x)), desc="images"):
        sl = slice(i, i + 1)
        reference = float64_ig(reference_model, x[sl], baseline[sl], weights[sl], args.steps)
        with torch.no_grad():
            ends = reference_model(torch.from_numpy(np.concatenate([x[sl], baseline[sl]])).double())
            gap = float(((ends[0] - ends[1]) * torch.from_numpy(weights[i]).double()).sum())
        row = {"image": i, "score_gap": gap}
        for name, backend in (("relu_path", fast), ("plain_loop", plain)):
            got = drivers.integrated_gradients(backend, x[sl], weights[sl], baseline[sl], n_steps=args.steps).astype(np.float64)
            row[f"{name}_max_abs_rel"] = float(np.abs(got - reference).max() / np.abs(reference).max())
            row[f"{name}_sum_rel_gap"] = float(abs(got.sum() - reference.sum()) / abs(gap))
        rows.append(row)

    summary = {name: {key: summarise(np.array([r[f"{name}_{key}"] for r in rows])) for key in ("max_abs_rel", "sum_rel_gap")}
               for name in ("relu_path", "plain_loop")}
    result = {**describe_environment(), "model": "shipped digits GANMEX classifier", "n_images": len(x),
              "steps": args.steps, "rule": "riemann_middle", "target": "runner-up", "baseline": "GANMEX",
              "summary": summary, "per_image": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"relu_path_precision_{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=1))
    for name, parts in summary.items():
        rel = parts["max_abs_rel"]
        print(f"{name:10s}  max|diff|/max|attr|: median {rel['median']:.2e}  p99 {rel['p99']:.2e}  max {rel['max']:.2e};"
              f"  |sum diff|/|gap|: max {parts['sum_rel_gap']['max']:.2e}")
    print(out)


if __name__ == "__main__":
    main()
