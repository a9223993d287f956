"""The bundle path against torch: IG on every layout of the 224-px model zoo, ONNX Runtime vs torch.

Each layout (:mod:`xaisdk.bench.zoo`, seeded random weights) is exported to a bundle; the same IG
(``steps`` midpoint points, predicted class vs runner-up, black baseline, 27 rows per call as the
Explainer uses at 224 px) runs on :class:`~xaisdk.torch_runtime.torch_backend.TorchBackend` and on
:class:`~xaisdk.runtime.onnxruntime_backend.OnnxRuntimeBackend` (as it loads by default, row-parallel on the
CPU; optionally also with ``row_parallel=False``: one multi-threaded session per call), alternating, ``repeats`` times each;
the medians are compared. The machine's speed drifts by 10-20% over minutes here, so alternating
runs compare like with like. The two maps must agree (relative L1 reported).

The goal, from the issue on speed: ONNX Runtime at least as fast as torch on every layout.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

from xaisdk.bench.timing import competing_process

__all__ = ["DEFAULT_MODELS", "bundle_speed_suite"]

DEFAULT_MODELS = ("mobilenet_v3_small", "regnet_y_400mf", "resnet18", "efficientnet_b0", "densenet121", "convnext_tiny",
                  "swin_t", "resnet50", "vgg11_bn", "vit_b_16")
QUICK_MODELS = ("mobilenet_v3_small", "resnet18")
ROWS_PER_CALL = 27


def _one_layout(name: str, folder: Path, steps: int, repeats: int, contention: bool, one_session: bool) -> dict:
    import torch

    from xaisdk.bench.tolerance import runner_up_weights
    from xaisdk.bench.zoo import ZOO, build
    from xaisdk.deploy.export import export_bundle
    from xaisdk.methods import drivers
    from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from xaisdk.torch_runtime.torch_backend import TorchBackend

    torch.manual_seed(0)
    net = build(name).eval()
    shape = ZOO[name].input_shape
    started = time.perf_counter()
    report = export_bundle(net, folder / name, input_shape=shape, force=True)
    export_s = time.perf_counter() - started
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    weights = runner_up_weights(net, x)
    baseline = np.zeros_like(x)
    backends = {"torch": TorchBackend(net, input_shape=shape), "onnxruntime": OnnxRuntimeBackend(report.path)}
    if one_session:  # a third copy of the model's working memory: ViT-B/16 at 27 rows does not fit in 24 GiB
        backends["onnxruntime_one_session"] = OnnxRuntimeBackend(report.path, row_parallel=False)
    seconds: dict[str, list[float]] = {label: [] for label in backends}
    maps = {}
    for backend in backends.values():  # warm-up: sessions, oneDNN primitives, the layout choice
        drivers.integrated_gradients(backend, x, weights, baseline, n_steps=ROWS_PER_CALL, chunk_size=ROWS_PER_CALL)
    with competing_process() if contention else contextlib.nullcontext():
        for _ in range(repeats):
            for label, backend in backends.items():
                t0 = time.perf_counter()
                maps[label] = drivers.integrated_gradients(backend, x, weights, baseline, n_steps=steps,
                                                           chunk_size=ROWS_PER_CALL)
                seconds[label].append(time.perf_counter() - t0)
    torch_s, onnx_s = (float(np.median(seconds[k])) for k in ("torch", "onnxruntime"))
    l1 = float(np.abs(maps["onnxruntime"] - maps["torch"]).sum() / max(np.abs(maps["torch"]).sum(), 1e-30))
    entry = {"export_s": round(export_s, 1), "torch_s": torch_s, "onnxruntime_s": onnx_s, "onnxruntime_speedup": torch_s / onnx_s,
             "maps_rel_l1": l1, "torch_runs_s": seconds["torch"], "onnxruntime_runs_s": seconds["onnxruntime"]}
    if one_session:
        whole_s = float(np.median(seconds["onnxruntime_one_session"]))
        entry.update(one_session_s=whole_s, one_session_speedup=torch_s / whole_s,
                     one_session_runs_s=seconds["onnxruntime_one_session"])
    return entry


def bundle_speed_suite(models: tuple[str, ...] | None = None, *, quick: bool = False, steps: int = 54, repeats: int = 3,
                       progress: bool = False, contention: bool = False, one_session: bool = False) -> dict:
    """IG seconds per image on torch and on the exported bundle for each zoo layout (see the module docstring);
    with ``contention``, while another process keeps one core busy; with ``one_session``, also the bundle with
    ``row_parallel=False``."""
    models = models or (QUICK_MODELS if quick else DEFAULT_MODELS)
    if quick:
        steps, repeats = ROWS_PER_CALL, 1
    rows: dict = {}
    layouts: dict = {}
    with tempfile.TemporaryDirectory(prefix="xaisdk-bench-bundle-") as tmp:
        for name in models:
            entry = _one_layout(name, Path(tmp), steps, repeats, contention, one_session)
            layouts[name] = entry
            rows[f"{name}: torch"] = {"seconds": entry["torch_s"]}
            rows[f"{name}: onnxruntime"] = {"seconds": entry["onnxruntime_s"],
                                            "onnxruntime_speedup": entry["onnxruntime_speedup"],
                                            "maps_rel_l1": entry["maps_rel_l1"]}
            if one_session:
                rows[f"{name}: onnxruntime, one multi-threaded session"] = {"seconds": entry["one_session_s"],
                                                                            "onnxruntime_speedup": entry["one_session_speedup"]}
            if progress:
                print(f"  {name}: torch {entry['torch_s']:.2f} s, onnxruntime {entry['onnxruntime_s']:.2f} s "
                      f"({entry['onnxruntime_speedup']:.2f}x)", flush=True)
    slower = [name for name, entry in layouts.items() if entry["onnxruntime_speedup"] < 1.0]
    return {"what": f"IG ({steps} points, {ROWS_PER_CALL} rows per call, one 224-px image, predicted class vs runner-up) "
                    f"on the exported bundle with ONNX Runtime vs on torch, median of {repeats} alternating runs"
                    + (", while another process keeps one core busy" if contention else ""),
            "settings": {"steps": steps, "repeats": repeats, "rows_per_call": ROWS_PER_CALL, "contention": contention,
                         "one_session": one_session},
            "rows": rows, "layouts": layouts,
            "goal": {"onnxruntime_speedup": ">= 1 on every layout", "slower_layouts": ", ".join(slower) or "none",
                     "met": not slower}}
