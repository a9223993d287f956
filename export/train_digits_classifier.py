"""Recipe for the shipped digits classifier (xaisdk/weights/digits_mnist_cnn.pt).

Trains GANMEX's MNIST CNN on scikit-learn's digits (28x28, the fixed seeded split of
``xaisdk.data.load_digits``) and refuses to write weights below 97% test accuracy.

    python export/train_digits_classifier.py            # writes xaisdk/weights/digits_mnist_cnn.pt
    python export/train_digits_classifier.py --out x.pt # anywhere else

Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from xaisdk.data import load_digits
from xaisdk.models import save_classifier
from xaisdk.train import ClassifierTrainingConfig, train_classifier

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "xaisdk" / "weights" / "digits_mnist_cnn.pt"
CONFIG = ClassifierTrainingConfig(arch="mnist_cnn", epochs=30, batch_size=64, learning_rate=1e-3, max_shift=2, seed=0)
MIN_TEST_ACCURACY = 0.97


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)  # the recipe's numbers were taken with 2 threads
    classifier, history = train_classifier(load_digits(), CONFIG, progress=True)
    acc = history["test_accuracy"]
    print(f"train accuracy {history['train_accuracy']:.4f}, test accuracy {acc:.4f}")
    if acc < MIN_TEST_ACCURACY:
        print(f"test accuracy {acc:.4f} < {MIN_TEST_ACCURACY}: not writing weights", file=sys.stderr)
        return 1
    save_classifier(args.out, classifier)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
