"""Recipe for the shipped learned inpainters (xaisdk/weights/digits_inpainter.pt, shapes_inpainter.pt).

Trains the gated-convolution U-Net of :mod:`xaisdk.models.inpainter` with a fixed seed on

* digits: the train part of ``xaisdk.data.load_digits()`` (1,438 images, 1x28x28);
* shapes: the train part of ``load_shapes(n_train=8000, seed=0)`` (3x32x32; the default objects
  circle/square/triangle on plain or striped backgrounds), so that it generalises to any shapes images
  drawn with these options;

then measures the hole L1 on the held-out test part with seeded masks (500 images at most, the
masks of :func:`xaisdk.train.inpainter.heldout_masks`) next to a mean-colour fill and OpenCV's Telea
inpainting, refuses to write a model that does not beat the mean-colour fill by ``MIN_GAIN``, and
writes inference-only checkpoints (no optimizer state: 1.4 MB each).

    python export/train_inpainters.py                      # both, into xaisdk/weights/
    python export/train_inpainters.py --only shapes        # one of them
    python export/train_inpainters.py --out-dir DIR --samples DIR

Measured on 2 CPU cores while another process kept one of them busy: digits 3,000 steps in 330 s,
shapes 2,500 steps in 292 s (plus ~10 s for masks and evaluation); on an idle machine the steps are
~35% faster. The seconds are in the printed summary and in each checkpoint's ``training["seconds"]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Sleeping (not spinning) OpenMP workers: when another process holds one of the 2 cores, spinning
# torch threads made a step 30x slower (1.7 s instead of 0.05 s); sleeping ones 1.5x (0.10 s), at a
# cost of 0.07 s instead of 0.05 s on an idle machine. Read when torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from xaisdk.data import load_digits, load_shapes  # noqa: E402
from xaisdk.models import save_inpainter  # noqa: E402
from xaisdk.runtime.inpainting import OpenCVInpainter  # noqa: E402
from xaisdk.train.inpainter import InpainterTrainingConfig, evaluate_inpainter, train_inpainter  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "xaisdk" / "weights"
RECIPES = {
    "digits": {"load": lambda: load_digits(), "data": {"name": "digits", "options": {}},
               "config": InpainterTrainingConfig(steps=3000, batch_size=32, lr=1e-3, flips=True, seed=0)},
    # 8,000 images (and 4,096 masks) are variety enough: flips did not help here (held-out hole L1 after
    # 1,500 steps 0.119 with, 0.112 without); on the 1,438 digits they cost nothing (0.0798 both ways)
    "shapes": {"load": lambda: load_shapes(n_train=8000, seed=0),
               "data": {"name": "shapes", "options": {"n_train": 8000, "seed": 0}},
               "config": InpainterTrainingConfig(steps=2500, batch_size=32, lr=1e-3, flips=False, seed=0)},
}
MIN_GAIN = 0.25  # the learned hole L1 must be at least 25% below the mean-colour fill's


def train_one(name: str, out_dir: Path, samples: Path | None) -> dict:
    recipe = RECIPES[name]
    split = recipe["load"]()
    config = recipe["config"]
    model, history = train_inpainter(split, config, samples_dir=None if samples is None else samples / name,
                                     data_spec=recipe["data"], progress=True)
    heldout = dict(history["heldout"])
    heldout["opencv_telea"] = evaluate_inpainter(OpenCVInpainter("telea"), split, config)
    heldout["opencv_ns"] = evaluate_inpainter(OpenCVInpainter("ns"), split, config)
    model.training["heldout"] = heldout
    summary = {"name": name, "steps": config.steps, "seconds": round(history["seconds"], 1),
               "parameters": sum(p.numel() for p in model.network.parameters()), **heldout}
    gain = 1 - heldout["learned"] / heldout["mean_fill"]
    if gain < MIN_GAIN:
        print(f"{name}: learned hole L1 only {gain:.0%} below the mean-colour fill: not writing it", file=sys.stderr)
        return summary | {"written": None}
    path = save_inpainter(out_dir / f"{name}_inpainter.pt", model)
    return summary | {"written": str(path), "megabytes": round(path.stat().st_size / 1e6, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(RECIPES), default=None)
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS)
    parser.add_argument("--samples", type=Path, default=None, help="folder for the PNG sample grids")
    args = parser.parse_args()
    torch.set_num_threads(2)  # the recipe's numbers were taken with 2 threads
    results = [train_one(name, args.out_dir, args.samples) for name in ([args.only] if args.only else RECIPES)]
    print(json.dumps(results, indent=1))
    return 0 if all(r["written"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
