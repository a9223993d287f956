"""Recipe for the shipped ExplainGAN (xaisdk/weights/digits_explaingan_3v8.pt) and its evaluation.

1. Trains the binary classifier: ``train_classifier`` (mnist_cnn, defaults, seed 0) on the digits split
   restricted to 3 and 8 (relabelled 0 / 1, class names ("3", "8")).
2. Trains ExplainGAN against it with the digits defaults of ``ExplainGANTrainingConfig`` (seed 0, one
   thread) on the training split, split into S_0 / S_1 by the classifier's predictions.
3. Checks the flip rate on the test split (>= MIN_FLIP_RATE) and writes an inference-only checkpoint
   (classifier + encoders + decoder + configs; no discriminators or optimizer state).
4. With ``--evaluate DIR``: also trains the two ablations (``no_mask``, ``no_reconstruction``; shorter:
   ``--ablation-steps``) and writes DIR/metrics.json (flip rate, mask area, AOSPC vs gradient and
   occlusion, substitutability, for all three; device, versions, date, command) and DIR/explaingan.png.

    python export/train_digits_explaingan.py                       # writes the shipped weights
    python export/train_digits_explaingan.py --evaluate benchmarks/results/explaingan_digits_<date>

Takes about 5 minutes on one core (plus about 6 with --evaluate).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from xaisdk.counterfactual.explaingan import ExplainGAN
from xaisdk.metrics.explaingan_eval import evaluate_explaingan, save_explaingan_figure
from xaisdk.models.explaingan import save_explaingan
from xaisdk.train.explaingan import (
    ExplainGANTrainingConfig,
    binary_digits_split,
    train_binary_digits_classifier,
    train_explaingan,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "xaisdk" / "weights" / "digits_explaingan_3v8.pt"
CONFIG = ExplainGANTrainingConfig(seed=0)
MIN_FLIP_RATE = 0.9
MAX_MASK_AREA = 0.25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--samples", type=Path, default=None, help="folder for the PNG sample grids")
    parser.add_argument("--steps", type=int, default=CONFIG.steps)
    parser.add_argument("--evaluate", type=Path, default=None, help="folder for metrics.json and the figure")
    parser.add_argument("--ablation-steps", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the recipe's timings were taken on one thread
    split = binary_digits_split(3, 8, seed=0)
    classifier = train_binary_digits_classifier(3, 8, seed=0)
    print(f"classifier 3 vs 8: test accuracy {classifier.metadata['test_accuracy']:.4f}")
    config = replace(CONFIG, steps=args.steps)
    spec = {"name": "digits_3v8", "options": {"seed": 0, "classes": [3, 8]}}
    model, history = train_explaingan(split, classifier, config, samples_dir=args.samples, data_spec=spec)
    eg = ExplainGAN(model)
    test = eg.transform(split.test.x)
    flip, area = float(test.flipped.mean()), float(test.mask.mean())
    model.training["test"] = {"flip_rate": flip, "mask_area": area, "images": len(split.test)}
    print(f"trained {config.steps} steps in {history['seconds']:.0f} s; test: flip rate {flip:.4f}, mask area {area:.4f}")
    if flip < MIN_FLIP_RATE or area > MAX_MASK_AREA:
        print(f"flip rate < {MIN_FLIP_RATE} or mask area > {MAX_MASK_AREA}: not writing the checkpoint", file=sys.stderr)
        return 1
    save_explaingan(args.out, model)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    if args.evaluate is None:
        return 0

    models = {"full": (model, history)}
    for flag in ("no_mask", "no_reconstruction"):
        ablation_config = replace(CONFIG, steps=args.ablation_steps, **{flag: True})
        models[flag] = train_explaingan(split, classifier, ablation_config, data_spec=spec)
    results = {}
    for name, (m, hist) in models.items():
        start = time.perf_counter()
        results[name] = {"steps": m.training["steps_done"], "train_seconds": hist["seconds"],
                         "config": asdict(ExplainGANTrainingConfig.from_dict(m.training["config"])),
                         **evaluate_explaingan(m, split, seed=0)}
        results[name]["eval_seconds"] = time.perf_counter() - start
        r = results[name]
        print(f"{name}: flip {r['flip_rate']:.4f} area {r['mask_area']:.4f} aospc "
              f"{ {k: v['0.5'] for k, v in r['aospc'].items()} } substitutability "
              f"{ {k: round(v['percent'], 1) for k, v in r['substitutability'].items() if isinstance(v, dict)} }")
    from xaisdk.bench.environment import describe_environment

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    report = {"environment": describe_environment(command), "classifier_test_accuracy":
              classifier.metadata["test_accuracy"], "data": spec, "train_images": len(split.train),
              "test_images": len(split.test), "goals": {"min_flip_rate": MIN_FLIP_RATE, "max_mask_area": MAX_MASK_AREA},
              "models": results}
    args.evaluate.mkdir(parents=True, exist_ok=True)
    (args.evaluate / "metrics.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    picks = np.concatenate([np.flatnonzero(split.test.y == 0)[:3], np.flatnonzero(split.test.y == 1)[:3]])
    save_explaingan_figure(args.evaluate / "explaingan.png", {k: v[0] for k, v in models.items()},
                           split.test.x[picks], title="ExplainGAN, digits 3 vs 8 (test images)")
    print(f"wrote {args.evaluate}/metrics.json and explaingan.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
