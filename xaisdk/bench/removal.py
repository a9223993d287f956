"""Occlusion-1 against Captum, and the AOPC_all perturbation curve against a plain per-step torch loop."""

from __future__ import annotations

import warnings

import numpy as np

from xaisdk.bench.timing import latency
from xaisdk.bench.workload import Workload

__all__ = ["aopc_suite", "occlusion_suite", "per_step_flip_curve"]


def occlusion_suite(work: Workload, *, repeats: int, progress: bool = False) -> dict:
    """Occlusion with a 1x1 window and stride 1 (all 784 positions of a 28x28 digit), replacing the
    pixel by the GANMEX baseline's; per-image latency. Captum evaluates all 784 perturbations at once."""
    import torch
    from captum.attr import Occlusion
    from tqdm.auto import tqdm

    from xaisdk.methods import drivers
    from xaisdk.models import WeightedScore
    from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from xaisdk.torch_runtime.torch_backend import TorchBackend

    warnings.filterwarnings("ignore", category=UserWarning, module="captum")
    x, b, w = work.x, work.baseline, work.weights
    positions = int(np.prod(x.shape[2:]))
    captum = Occlusion(WeightedScore(work.module).eval())

    def captum_fn(i: int) -> np.ndarray:
        return captum.attribute(torch.from_numpy(x[i:i + 1]), sliding_window_shapes=(1, 1, 1),
                                baselines=torch.from_numpy(b[i:i + 1]), additional_forward_args=(torch.from_numpy(w[i:i + 1]),),
                                perturbations_per_eval=positions).numpy()

    def driver(backend):
        return lambda i: drivers.occlusion(backend, x[i:i + 1], w[i:i + 1], b[i:i + 1], window=1, stride=1, chunk_size=positions)

    contenders = {
        "captum (cpu)": captum_fn,
        "xaisdk torch (relu-path kernels)": driver(TorchBackend(work.model)),
        "xaisdk torch (batched occluded images)": driver(TorchBackend(work.model, fast_ig=False)),
        "xaisdk onnxruntime (batched occluded images)": driver(OnnxRuntimeBackend(work.bundle, max_batch=positions)),
    }
    n = min(work.n_images, 16)
    reference = np.concatenate([captum_fn(i) for i in range(4)])
    rows = {}
    for name, fn in tqdm(contenders.items(), desc="Occlusion-1", disable=not progress):
        rows[name] = latency(fn, n, repeats)
        ours = np.concatenate([fn(i) for i in range(4)])
        rows[name]["max_rel_diff_vs_captum"] = float(np.abs(ours - reference).max() / np.abs(reference).max())
    ours = {k: v for k, v in rows.items() if k.startswith("xaisdk")}
    best = min(ours, key=lambda k: ours[k]["p50_ms"])
    speedup = rows["captum (cpu)"]["p50_ms"] / rows[best]["p50_ms"]
    return {"what": "Occlusion-1 (1x1 window, stride 1, 784 positions) of S_pred - S_runner_up, baseline = GANMEX image",
            "settings": {"images": n, "repeats": repeats, "captum_perturbations_per_eval": positions},
            "rows": rows, "best": best, "speedup_vs_captum": speedup,
            "goal": {"speedup_vs_captum": ">= 5", "met": bool(speedup >= 5)}}


def per_step_flip_curve(module, x: np.ndarray, order: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The straightforward loop: flip one more pixel (x -> 1 - x, every channel), run the model, repeat.

    ``x`` (1, C, H, W); ``order`` (P,) pixel ranking; returns the P + 1 scores ``weights . logits``.
    """
    import torch

    current = torch.from_numpy(x.copy())
    flipped = 1.0 - current
    w = torch.from_numpy(weights)
    scores = []
    with torch.no_grad():
        scores.append(float((module(current) * w).sum()))
        for pixel in order:
            r, c = divmod(int(pixel), x.shape[3])
            current[:, :, r, c] = flipped[:, :, r, c]
            scores.append(float((module(current) * w).sum()))
    return np.asarray(scores, np.float32)


def aopc_suite(work: Workload, *, repeats: int, progress: bool = False) -> dict:
    """AOPC_all: the full pixel-flipping curve (all 784 pixels, one per step, x -> 1 - x) ranked by
    IG-200 maps; xaisdk's metric (C++ chunked rows, one model call per chunk) against the per-step loop."""
    from tqdm.auto import tqdm

    from xaisdk.methods import drivers
    from xaisdk.metrics.perturbation import perturbation_curve
    from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from xaisdk.runtime.perturbation import descending_order
    from xaisdk.torch_runtime.torch_backend import TorchBackend

    x, w = work.x, work.weights
    torch_backend = TorchBackend(work.model)
    maps = drivers.integrated_gradients(torch_backend, x, w, work.baseline, n_steps=work.steps)
    order = descending_order(maps.sum(1).reshape(len(x), -1).astype(np.float32))
    pixels = order.shape[1]

    def ours(backend):
        def run(i: int) -> np.ndarray:
            result = perturbation_curve(backend, x[i:i + 1], maps[i:i + 1], work.source[i:i + 1], work.target[i:i + 1],
                                        substrate="flip", chunk_size=pixels + 1)
            return result.curve[0]
        return run

    def loop(i: int) -> np.ndarray:
        return per_step_flip_curve(work.module, x[i:i + 1], order[i], w[i:i + 1])

    contenders = {"per-step torch loop": loop, "xaisdk torch": ours(torch_backend),
                  "xaisdk onnxruntime": ours(OnnxRuntimeBackend(work.bundle, max_batch=pixels + 1))}
    n = min(work.n_images, 8)
    reference = np.stack([loop(i) for i in range(2)])
    rows = {}
    for name, fn in tqdm(contenders.items(), desc="AOPC_all", disable=not progress):
        rows[name] = latency(fn, n, repeats)
        curve = np.stack([fn(i) for i in range(2)])
        rows[name]["max_abs_diff_vs_loop"] = float(np.abs(curve - reference).max())
    best = min((k for k in rows if k.startswith("xaisdk")), key=lambda k: rows[k]["p50_ms"])
    speedup = rows["per-step torch loop"]["p50_ms"] / rows[best]["p50_ms"]
    return {"what": f"AOPC_all curve: {pixels} steps of one pixel (x -> 1 - x), {pixels + 1} model evaluations per image",
            "settings": {"images": n, "repeats": repeats}, "rows": rows, "best": best, "speedup_vs_loop": speedup,
            "goal": {"speedup_vs_loop": ">= 10", "met": bool(speedup >= 10)}}
