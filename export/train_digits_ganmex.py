"""Recipe for the shipped GANMEX digits model (xaisdk/weights/digits_ganmex.pt).

Trains the GANMEX StarGAN for the shipped digits classifier (frozen, used as the class discriminator)
on the training split of ``xaisdk.data.load_digits`` with a fixed seed, checks the target success
on the test split, and writes an inference-only checkpoint (classifier + generator + configs + data
spec; no critic or optimizer state, to keep the file small).

    python export/train_digits_ganmex.py                  # writes xaisdk/weights/digits_ganmex.pt
    python export/train_digits_ganmex.py --out x.pt       # anywhere else
    python export/train_digits_ganmex.py --samples DIR    # sample grids (PNG) every 500 steps

Takes about 6 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from xaisdk.data import load_digits
from xaisdk.metrics import l2_distance, one_vs_one_pairs, target_success
from xaisdk.models import load_shipped_classifier, save_ganmex
from xaisdk.train import GanmexTrainingConfig, train_ganmex

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "xaisdk" / "weights" / "digits_ganmex.pt"
CONFIG = GanmexTrainingConfig(steps=3000, batch_size=32, generator_channels=16, generator_res_blocks=4,
                              critic_channels=32, seed=0)
MIN_TARGET_SUCCESS = 0.95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--samples", type=Path, default=None, help="folder for the PNG sample grids")
    args = parser.parse_args()
    torch.set_num_threads(2)  # the recipe's numbers were taken with 2 threads
    split = load_digits()
    classifier = load_shipped_classifier("digits")
    model, history = train_ganmex(split, classifier, CONFIG, samples_dir=args.samples,
                                  data_spec={"name": "digits", "options": {"seed": 0}}, progress=True)
    idx, targets = one_vs_one_pairs(split.test.y, classifier.num_classes)
    baselines = model.baseline(split.test.x[idx], targets)
    success = target_success(classifier.model, baselines, targets)
    distance = float(l2_distance(split.test.x[idx], baselines).mean())
    model.training["test"] = {"target_success": success, "mean_l2_distance": distance, "pairs": len(idx)}
    print(f"trained {CONFIG.steps} steps in {history['seconds']:.0f} s; test pairs {len(idx)}: "
          f"target success {success:.4f}, mean ||x - G(x, c_t)||_2 {distance:.3f}")
    if success < MIN_TARGET_SUCCESS:
        print(f"target success {success:.4f} < {MIN_TARGET_SUCCESS}: not writing the checkpoint", file=sys.stderr)
        return 1
    save_ganmex(args.out, model)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
