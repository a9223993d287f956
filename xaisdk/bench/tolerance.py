"""Time to a completeness tolerance: xaisdk's adaptive IG (``n_steps="auto"``) against Captum's best
fixed rule, per model, in one run.

For each model the images are explained as predicted class vs runner-up. Captum gets, for each of
its quadrature rules, the smallest ``n_steps`` in :data:`LADDER` at which every image's completeness
error ``|sum(attr) - (S(x) - S(b))|`` is within ``tolerance`` of ``|S(x) - S(b)|``; its time is that
of the fastest rule that gets there (a rule's ladder stops once its time passes the best found).
When no rule gets there at 512 steps, Captum's time at 512 steps is a lower bound and the ratio is
reported as "at least". xaisdk runs ``n_steps="auto"`` with the same tolerance on the torch backend
(batched gradient calls; the relu-path kernels serve fixed-step IG) and on the exported bundle with ONNX Runtime. The
scores that define the error come from one forward pass of the torch model, the same for everyone.

xaisdk's times and the fixed-rule race are medians of 3 runs; Captum's ladder is timed once per rung.
Also: fixed IG-200 (midpoint rule) against Captum's (the relu-path kernels serve it where the model
qualifies: the digits CNN, and CifarCNN through its folded batch norm), and the tolerance race and
fixed IG-200 again with one competing CPU-bound process on the machine.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xaisdk.bench.timing import competing_process

__all__ = ["CAPTUM_RULES", "LADDER", "ToleranceCase", "runner_up_weights", "tolerance_cases", "tolerance_suite"]

LADDER = (16, 32, 64, 128, 256, 512)
CAPTUM_RULES = ("riemann_middle", "riemann_trapezoid", "gausslegendre", "riemann_left", "riemann_right")
GOALS = {"digits_cnn": {"torch": 5.0, "onnxruntime": 2.0}, "cifar_cnn": {"torch": 3.0, "onnxruntime": 2.0},
         "resnet18_224": {"torch": 3.0, "onnxruntime": 2.0}}


@dataclass
class ToleranceCase:
    """One model and its images, baselines and class weights (predicted class vs runner-up)."""

    name: str
    what: str
    module: object
    x: np.ndarray
    baseline: np.ndarray
    weights: np.ndarray
    chunk: int  # rows per backend call for xaisdk and Captum's internal batch size (tuned for Captum, see tune_chunk)
    chunk_candidates: tuple[int, ...] = (16, 64, 256)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def gaps(self) -> np.ndarray:
        """``S(x) - S(b)`` per image from one float32 forward pass of the torch model."""
        import torch

        with torch.no_grad():
            sx = (self.module(torch.from_numpy(self.x)).numpy() * self.weights).sum(1)
            sb = (self.module(torch.from_numpy(self.baseline)).numpy() * self.weights).sum(1)
        return (sx - sb).astype(np.float64)


def runner_up_weights(module, x: np.ndarray) -> np.ndarray:
    """Class weights (N, K) of "predicted class minus runner-up" for each image under the torch ``module``."""
    import torch

    from xaisdk.runtime.backend import class_weights

    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    order = np.argsort(logits, 1)
    return class_weights(order[:, -1], order[:, -2], logits.shape[1])


def tolerance_cases(quick: bool = False) -> list[ToleranceCase]:
    """The digits CNN from its GANMEX baseline; a CifarCNN trained on 32-px shapes for 3 epochs, and the
    zoo's ResNet-18 at 224 px (seeded random weights), both from the black image."""
    import torch

    from xaisdk.bench.zoo import build
    from xaisdk.data import load_digits
    from xaisdk.data.shapes import load_shapes, make_shapes
    from xaisdk.models import load_shipped_ganmex
    from xaisdk.train.classifier import ClassifierTrainingConfig, train_classifier

    small, large = (4, 2) if quick else (16, 4)  # quick: a smoke run without the 224-px model
    ganmex = load_shipped_ganmex("digits")
    digits_net = ganmex.classifier.model.eval()
    x = np.ascontiguousarray(load_digits().test.x[:small])
    weights = runner_up_weights(digits_net, x)
    target = np.argmax(-weights, 1)
    cases = [ToleranceCase("digits_cnn", "shipped digits CNN (1x28x28), GANMEX baseline", digits_net, x,
                           np.ascontiguousarray(ganmex.baseline(x, target), np.float32), weights, 64)]
    split = load_shapes(2000, 200, image_size=32, class_rule="object_background", seed=0)
    clf, history = train_classifier(split, ClassifierTrainingConfig(arch="cifar_cnn", epochs=3, max_shift=0, seed=0),
                                    progress=False)
    cifar = clf.model.eval()
    x = make_shapes(small, image_size=32, seed=7, class_rule="object_background").x.astype(np.float32)
    cases.append(ToleranceCase("cifar_cnn", f"CifarCNN (3x32x32) trained 3 epochs on shapes (test accuracy "
                               f"{history['test_accuracy']:.2f}), black baseline", cifar, x, np.zeros_like(x),
                               runner_up_weights(cifar, x), 64))
    if quick:
        return cases
    torch.manual_seed(0)
    resnet = build("resnet18")
    x = make_shapes(large, image_size=224, seed=1).x.astype(np.float32)
    cases.append(ToleranceCase("resnet18_224", "ResNet-18 (3x224x224, seeded random weights, 1000 classes), black "
                               "baseline", resnet, x, np.zeros_like(x), runner_up_weights(resnet, x), 27, (9, 27, 54)))
    return cases


def _captum(case: ToleranceCase, rule: str, steps: int) -> np.ndarray:
    import torch
    from captum.attr import IntegratedGradients

    from xaisdk.models import WeightedScore

    method = IntegratedGradients(WeightedScore(case.module).eval())
    return method.attribute(torch.from_numpy(case.x), baselines=torch.from_numpy(case.baseline),
                            additional_forward_args=(torch.from_numpy(case.weights),), n_steps=steps, method=rule,
                            internal_batch_size=case.chunk).detach().numpy()


def tune_chunk(case: ToleranceCase) -> dict:
    """Set ``case.chunk`` to Captum's fastest internal batch size among the candidates (IG-32 on the images);
    xaisdk then uses the same rows per call."""
    timed = {}
    for size in case.chunk_candidates:
        case.chunk = size
        _captum(case, "riemann_middle", 16)
        timed[size] = _timed(lambda: _captum(case, "riemann_middle", 32))[1]
    case.chunk = min(timed, key=timed.get)
    return {"captum_ig32_seconds": timed, "chosen": case.chunk}


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _relative_errors(attr: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    return np.abs(attr.reshape(len(attr), -1).sum(1, dtype=np.float64) - gaps) / np.abs(gaps)


def captum_to_tolerance(case: ToleranceCase, tolerance: float, progress: bool = False,
                        ladder: tuple[int, ...] = LADDER) -> dict:
    """Per rule: the smallest ``ladder`` ``n_steps`` reaching ``tolerance`` on every image and its seconds."""
    gaps = case.gaps()
    rules: dict = {}
    best_s = np.inf
    for rule in CAPTUM_RULES:
        rules[rule] = {"reached_at": None, "ladder": {}}
        for steps in ladder:
            attr, seconds = _timed(lambda rule=rule, steps=steps: _captum(case, rule, steps))
            worst = float(_relative_errors(attr, gaps).max())
            rules[rule]["ladder"][steps] = {"seconds": seconds, "max_rel_error": worst}
            if progress:
                print(f"  captum {case.name} {rule} n_steps={steps}: {seconds:.2f} s, max error {worst:.4f}", flush=True)
            if worst <= tolerance:
                rules[rule].update(reached_at=steps, seconds=seconds)
                best_s = min(best_s, seconds)
                break
            if seconds > best_s:
                break  # this rule cannot beat one that already got there
    reached = {r: v for r, v in rules.items() if v["reached_at"] is not None}
    if reached:
        best = min(reached, key=lambda r: reached[r]["seconds"])
        return {"rules": rules, "best_rule": best, "best_steps": reached[best]["reached_at"],
                "seconds": reached[best]["seconds"], "reached": True}
    at_most = {r: v["ladder"][ladder[-1]]["seconds"] for r, v in rules.items() if ladder[-1] in v["ladder"]}
    best = min(at_most, key=at_most.get)
    return {"rules": rules, "best_rule": best, "best_steps": ladder[-1], "seconds": at_most[best], "reached": False}


def _xaisdk_auto(backend, case: ToleranceCase, tolerance: float) -> dict:
    from xaisdk.methods import drivers

    run = lambda: drivers.integrated_gradients_adaptive(backend, case.x, case.weights, case.baseline,  # noqa: E731
                                                        tolerance=tolerance, chunk_size=case.chunk)
    run()  # warm-up (sessions, kernels, caches, the torch backend's layout choice)
    result, seconds = _timed(run)
    seconds = float(np.median([seconds] + [_timed(run)[1] for _ in range(2)]))
    errors = _relative_errors(result.attributions, case.gaps())
    return {"seconds": seconds, "steps_mean": float(result.steps.mean()), "steps_max": int(result.steps.max()),
            "converged": int(result.converged.sum()), "images": len(case.x), "max_rel_error": float(errors.max())}


def _bundle(case: ToleranceCase, folder: Path):
    from xaisdk.deploy.export import export_bundle
    from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

    report = export_bundle(case.module, folder / case.name, input_shape=case.input_shape, force=True)
    return OnnxRuntimeBackend(report.path)


def _fixed_ig200(case: ToleranceCase, torch_backend, contention: bool) -> dict:
    """IG-200 (midpoint) on the torch backend against Captum's, same rows per call; with ``contention``,
    also both with a competing CPU-bound process (the relu-path kernels' threading under load)."""
    from xaisdk.methods import drivers

    ours = lambda: drivers.integrated_gradients(torch_backend, case.x, case.weights, case.baseline,  # noqa: E731
                                                n_steps=200, chunk_size=case.chunk)
    captum = lambda: _captum(case, "riemann_middle", 200)  # noqa: E731
    ours()
    ours_s = float(np.median([_timed(ours)[1] for _ in range(3)]))
    captum_s = float(np.median([_timed(captum)[1] for _ in range(3)]))
    out = {"xaisdk_torch_s": ours_s, "captum_s": captum_s, "speedup": captum_s / ours_s,
           "relu_path": torch_backend.relu_path() is not None}
    if contention:  # medians of 3: a single contended run swings with the scheduler
        busy = float(np.median([_contended(captum) for _ in range(3)])) / float(np.median([_contended(ours) for _ in range(3)]))
        out["contended"] = {"speedup": busy, "kept": busy / out["speedup"], "goal": ">= 0.8 of the uncontended ratio"}
    return out


def _contended(fn: Callable[[], object]) -> float:
    """Seconds of ``fn()`` while another process keeps one core busy."""
    with competing_process():
        return _timed(fn)[1]


def tolerance_suite(*, tolerance: float = 0.01, quick: bool = False, progress: bool = False,
                    contention: bool = True) -> dict:
    """Run the race on every case (see the module docstring) and return rows, ratios and goals."""
    from xaisdk.methods import drivers
    from xaisdk.torch_runtime.torch_backend import TorchBackend

    rows: dict = {}
    ratios: dict = {}
    goals_met = True
    with tempfile.TemporaryDirectory(prefix="xaisdk-bench-tolerance-") as tmp:
        for case in tolerance_cases(quick):
            if progress:
                print(f"{case.name}: {case.what}", flush=True)
            tuning = tune_chunk(case)
            torch_backend = TorchBackend(case.module, input_shape=case.input_shape)
            captum = captum_to_tolerance(case, tolerance, progress, LADDER[:2] if quick else LADDER)
            ours = _xaisdk_auto(torch_backend, case, tolerance)
            onnx = _xaisdk_auto(_bundle(case, Path(tmp)), case, tolerance)
            n = len(case.x)
            rows[f"{case.name}: captum ({captum['best_rule']}, n_steps={captum['best_steps']})"] = {
                "s_per_image": captum["seconds"] / n, "reached": captum["reached"]}
            rows[f"{case.name}: xaisdk torch (auto)"] = {"s_per_image": ours["seconds"] / n, **ours}
            rows[f"{case.name}: xaisdk onnxruntime (auto)"] = {"s_per_image": onnx["seconds"] / n, **onnx}
            entry = {"captum": captum, "rows_per_call": tuning, "torch_speedup": captum["seconds"] / ours["seconds"],
                     "onnxruntime_speedup": captum["seconds"] / onnx["seconds"],
                     "captum_reached": captum["reached"], "what": case.what, "images": n}
            goal = GOALS[case.name]
            entry["goal"] = {"torch": f">= {goal['torch']}", "onnxruntime": f">= {goal['onnxruntime']}",
                             "met": bool(entry["torch_speedup"] >= goal["torch"]
                                         and entry["onnxruntime_speedup"] >= goal["onnxruntime"])}
            goals_met &= entry["goal"]["met"]
            entry["fixed_ig200"] = _fixed_ig200(case, TorchBackend(case.module, input_shape=case.input_shape),
                                                contention and case.name != "resnet18_224")
            if contention and case.name != "resnet18_224":
                rule, steps = captum["best_rule"], captum["best_steps"]
                captum_busy = _contended(lambda case=case, rule=rule, steps=steps: _captum(case, rule, steps))
                ours_busy = _contended(lambda case=case, backend=torch_backend: drivers.integrated_gradients_adaptive(
                    backend, case.x, case.weights, case.baseline, tolerance=tolerance, chunk_size=case.chunk))
                busy_ratio = captum_busy / ours_busy
                entry["contended"] = {"captum_s": captum_busy, "xaisdk_torch_s": ours_busy, "torch_speedup": busy_ratio,
                                      "kept": busy_ratio / entry["torch_speedup"], "goal": ">= 0.8 of the uncontended ratio"}
            ratios[case.name] = entry
    return {"what": f"Time to a completeness error <= {tolerance:.0%} of |S(x) - S(b)| on every image, predicted class vs "
                    "runner-up: xaisdk n_steps='auto' vs Captum 0.9's fastest rule at the smallest n_steps in "
                    f"{list(LADDER)} that gets there",
            "settings": {"tolerance": tolerance, "ladder": list(LADDER), "captum_rules": list(CAPTUM_RULES)},
            "rows": rows, "models": ratios, "goal": {"all_models": "see models[*].goal", "met": bool(goals_met)}}
