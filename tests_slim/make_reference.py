"""Prepare the slim-environment check (run with the full install): a bundle of the shipped GANMEX
model (with the shipped ExplainGAN and Progressive Exaggeration graphs) and reference explanations and
counterfactuals computed with torch, written to the folder given.

    python tests_slim/make_reference.py /tmp/work
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from xaisdk.counterfactual.exaggeration import Exaggeration
from xaisdk.counterfactual.explaingan import ExplainGAN
from xaisdk.data import load_digits
from xaisdk.deploy.export import export_bundle
from xaisdk.explainer import Explainer
from xaisdk.models import load_shipped_ganmex, shipped_ganmex_path
from xaisdk.models.exaggeration import shipped_exaggeration_path
from xaisdk.models.explaingan import shipped_explaingan_path
from xaisdk.runtime.images import save_image_png

CASES = [("ig", {"n_steps": 64}), ("deeplift", {}), ("occlusion", {"window": 4, "stride": 4})]


def main(work: Path) -> None:
    export_bundle(shipped_ganmex_path("digits"), work / "bundle", force=True, explaingan=shipped_explaingan_path(),
                  exaggeration=shipped_exaggeration_path())
    x = load_digits().test.x[:3]
    uint8 = np.round(x * 255).astype(np.uint8)
    for i, image in enumerate(uint8):
        save_image_png(image, work / f"digit{i}.png", scale=1)
    explainer = Explainer(load_shipped_ganmex("digits"), explaingan=ExplainGAN(), exaggeration=Exaggeration.shipped())
    target = (explainer.predict(uint8) + 1) % 10
    reference = {"x": uint8, "target": target}
    for method, options in CASES:
        e = explainer.explain(uint8, target, method=method, **options)
        reference[f"{method}_attributions"] = e.attributions
        reference[f"{method}_score"] = e.score
    transformation = explainer.counterfactual(uint8, kind="explaingan")
    reference["explaingan_composite"], reference["explaingan_mask"] = transformation.composite, transformation.mask
    series = explainer.counterfactual(uint8, kind="exaggeration", n_steps=6)
    reference["exaggeration_images"], reference["exaggeration_outputs"] = series.images, series.outputs
    np.savez(work / "reference.npz", **reference)
    print(f"wrote {work / 'bundle'} and {work / 'reference.npz'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
