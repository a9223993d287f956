"""Evaluation of a Progressive Exaggeration explainer (Singla et al., ICLR 2020, Section 4).

* :func:`compatibility`: every test image through every bin; the Pearson correlation of the desired output
  ``f(x) + delta`` (the bin centre) with the classifier's actual output ``f(x_delta)`` (the paper's Fig. 3).
* :func:`self_consistency`: ``|I(x, 0) - x|_1`` and ``|I(I(x, delta), -delta) - x|_1`` (mean absolute
  error per pixel). The reverse step conditions on ``c_f(x, 0)``, the bin the walk came from, as in the
  cycle loss (Eq. 6).
* :func:`latent_closeness`: Eq. 10, the percentage of (image, delta) pairs for which the explanation of x
  is nearer to x in the encoder's space than every other image's explanation for the same delta.
* :func:`frechet_distance`: the Frechet distance between Gaussians fitted to the penultimate-layer features
  (the input of the last linear layer) of a classifier trained on the same data. On digits this is the
  "Frechet distance on xaisdk digits-classifier features"; it is *not* FID (no Inception network).
* :func:`confounder_flips`: the bias test of the paper's Table 3 (how often the walk changes a confounder,
  according to an oracle classifier of the confounder).
* The saliency map of the two ends of the series is :meth:`ExaggerationSeries.saliency`; figures:
  :func:`save_compatibility_plot`, :func:`save_series_figure`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaisdk.counterfactual.exaggeration import Exaggeration
from xaisdk.errors import InputError
from xaisdk.models.exaggeration import bin_centers

FRECHET_NAME = "Frechet distance on xaisdk digits-classifier features"


def _all_bins(ex: Exaggeration, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, n_bins, C, H, W) of every input through every bin, their f, and the bin centres."""
    arr = ex._check(x)
    n_bins = ex.n_bins
    rows = np.repeat(arr, n_bins, axis=0)
    bins = np.tile(np.arange(n_bins), len(arr))
    images = ex.generate(rows, bins)
    outputs = ex.f(images).reshape(len(arr), n_bins)
    desired = np.tile(bin_centers(n_bins).numpy(), (len(arr), 1))
    return images.reshape(len(arr), n_bins, *arr.shape[1:]), outputs, desired


def compatibility(ex: Exaggeration, x: np.ndarray) -> dict[str, Any]:
    """Pearson correlation of ``f(x) + delta`` and ``f(x_delta)`` over every input and every bin.

    Returns ``pearson``, ``mean_abs_error`` (|desired - actual|), ``bin_accuracy`` (fraction of explanations
    that land in the requested bin), and the ``desired`` / ``actual`` arrays (N, n_bins).

    >>> from xaisdk.data import load_digits
    >>> r = compatibility(Exaggeration.shipped(), load_digits().test.x[:20])
    >>> r["pearson"] > 0.9
    True
    """
    _, actual, desired = _all_bins(ex, x)
    pearson = float(np.corrcoef(desired.ravel(), actual.ravel())[0, 1])
    n_bins = ex.n_bins
    landed = np.clip(np.floor(actual * n_bins), 0, n_bins - 1) == np.arange(n_bins)[None, :]
    return {"pearson": pearson, "mean_abs_error": float(np.abs(desired - actual).mean()),
            "bin_accuracy": float(landed.mean()), "desired": desired, "actual": actual}


def self_consistency(ex: Exaggeration, x: np.ndarray) -> dict[str, float]:
    """``identity_l1 = mean |I(x, 0) - x|`` and ``cycle_l1 = mean over bins of |I(I(x, delta), -delta) - x|``.

    >>> from xaisdk.data import load_digits
    >>> r = self_consistency(Exaggeration.shipped(), load_digits().test.x[:10])
    >>> sorted(r)
    ['cycle_l1', 'identity_l1']
    """
    arr = ex._check(x)
    c0 = np.clip(np.floor(ex.f(arr) * ex.n_bins), 0, ex.n_bins - 1).astype(np.int64)
    identity = float(np.abs(ex.generate(arr, c0) - arr).mean())
    images, _, _ = _all_bins(ex, arr)
    flat = images.reshape(-1, *arr.shape[1:])
    back = ex.generate(flat, np.repeat(c0, ex.n_bins)).reshape(images.shape)
    cycle = float(np.abs(back - arr[:, None]).mean())
    return {"identity_l1": identity, "cycle_l1": cycle}


@torch.no_grad()
def _codes(ex: Exaggeration, x: np.ndarray) -> np.ndarray:
    return ex.net.encoder(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).flatten(1).numpy()


def latent_closeness(ex: Exaggeration, x: np.ndarray) -> float:
    """Eq. 10: percentage of (x, delta) with ``|E(x) - E(x_delta)| < min over other x' of |E(x) - E(x'_delta)|``.

    >>> from xaisdk.data import load_digits
    >>> 0 <= latent_closeness(Exaggeration.shipped(), load_digits().test.x[:10]) <= 100
    True
    """
    arr = ex._check(x)
    if len(arr) < 2:
        raise InputError("latent_closeness needs at least 2 images")
    images, _, _ = _all_bins(ex, arr)
    z = _codes(ex, arr)
    hits = []
    for k in range(ex.n_bins):
        zk = _codes(ex, images[:, k])
        d = ((z[:, None, :] - zk[None, :, :]) ** 2).sum(-1)  # d[i, j] = |E(x_i) - E(x_j, delta_k)|^2
        own = np.diag(d).copy()
        np.fill_diagonal(d, np.inf)
        hits.append(own < d.min(1))
    return float(100.0 * np.mean(hits))


@torch.no_grad()
def penultimate_features(module: torch.nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The input of the module's last ``nn.Linear`` layer (eval mode), (N, D) float64.

    >>> from xaisdk.models import load_shipped_classifier
    >>> penultimate_features(load_shipped_classifier().model, np.zeros((2, 1, 28, 28), np.float32)).shape
    (2, 256)
    """
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise InputError("penultimate_features: the classifier has no nn.Linear layer")
    grabbed: list[torch.Tensor] = []
    handle = linears[-1].register_forward_hook(lambda _m, inputs, _o: grabbed.append(inputs[0].detach()))
    was_training = module.training
    module.eval()
    try:
        for s in range(0, len(x), batch_size):
            module(torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], dtype=np.float32)))
    finally:
        handle.remove()
        module.train(was_training)
    return torch.cat(grabbed).flatten(1).double().numpy()


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """``Tr((A B)^(1/2))`` as ``Tr((A^(1/2) B A^(1/2))^(1/2))``: symmetric PSD, so stable for singular covariances."""
    root_a = _psd_sqrt(a)
    w = np.linalg.eigvalsh(root_a @ b @ root_a)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(real: np.ndarray, generated: np.ndarray, module: torch.nn.Module) -> float:
    """Frechet distance between Gaussians fitted to ``module``'s penultimate features of two image sets.

    ``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``. With the shipped digits classifier this is
    the "Frechet distance on xaisdk digits-classifier features" (not FID).

    >>> from xaisdk.data import load_digits
    >>> from xaisdk.models import load_shipped_classifier
    >>> x = load_digits().test.x
    >>> round(frechet_distance(x, x, load_shipped_classifier().model), 6)
    0.0
    """
    a, b = penultimate_features(module, real), penultimate_features(module, generated)
    if len(a) < 2 or len(b) < 2:
        raise InputError("frechet_distance needs at least 2 images in each set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * _trace_sqrt_product(cov_a, cov_b))
    return max(value, 0.0)


@torch.no_grad()
def confounder_flips(ex: Exaggeration, oracle: torch.nn.Module, x: np.ndarray, n_steps: int = 10) -> dict[str, float]:
    """The paper's bias test (Table 3): does the walk to the far end change a confounder?

    ``oracle`` is a classifier of the confounder (argmax 1 = present). For each input the far end of its
    series (:meth:`Exaggeration.series`) is compared with the input. Returns ``flip_rate`` (fraction whose
    confounder prediction changed between x and the far end), ``flip_rate_vs_start`` (the same between the
    series' first image ``I(x, 0)`` and its far end: it leaves out a confounder the generator cannot draw at
    all), and for walks *towards* the target class (``f(x) < 0.5``) and *away* from it, the fraction of
    far-end images the oracle calls confounded (``present_towards``, ``present_away``) with the counts;
    ``present_inputs`` and ``present_start`` are the fractions for the inputs and for ``I(x, 0)``.

    >>> from xaisdk.data import load_digits
    >>> ex = Exaggeration.shipped()
    >>> r = confounder_flips(ex, ex.f_module, load_digits().test.x[:4], n_steps=2)
    >>> 0.0 <= r["flip_rate"] <= 1.0
    True
    """
    arr = ex._check(x, n_steps)
    series = ex.series(arr, n_steps)
    oracle.eval()

    def present(images: np.ndarray) -> np.ndarray:
        return oracle(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).argmax(1).numpy() == 1

    before, start, after = present(arr), present(series.images[:, 0]), present(series.images[:, -1])
    towards = series.start < 0.5
    return {"flip_rate": float((before != after).mean()), "flip_rate_vs_start": float((start != after).mean()),
            "present_start": float(start.mean()),
            "present_towards": float(after[towards].mean()) if towards.any() else float("nan"),
            "present_away": float(after[~towards].mean()) if (~towards).any() else float("nan"),
            "present_inputs": float(before.mean()), "n_towards": int(towards.sum()), "n_away": int((~towards).sum())}


def save_compatibility_plot(path: str | os.PathLike, desired: np.ndarray, actual: np.ndarray, title: str = "") -> Path:
    """Scatter + per-bin mean of the actual ``f(x_delta)`` against the desired ``f(x) + delta`` (PNG).

    >>> import tempfile
    >>> save_compatibility_plot(Path(tempfile.mkdtemp()) / "c.png", np.ones((2, 3)), np.ones((2, 3))).exists()
    True
    """
    from xaisdk.viz import plt, save_figure

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(desired.ravel(), actual.ravel(), s=4, alpha=0.25, label="explanations")
    centres = desired[0]
    ax.plot(centres, actual.mean(0), "o-", color="C1", label="mean per bin")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="ideal")
    ax.set_xlabel("desired f(x) + delta")
    ax.set_ylabel("actual f(x_delta)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="upper left")
    if title:
        ax.set_title(title, fontsize=8)
    return save_figure(fig, path, dpi=100)


def save_series_figure(path: str | os.PathLike, ex: Exaggeration, x: np.ndarray, n_steps: int = 8) -> Path:
    """One row per input: the input, the series with f over each image, then the saliency |last - first| (PNG).

    >>> import tempfile
    >>> from xaisdk.data import load_digits
    >>> save_series_figure(Path(tempfile.mkdtemp()) / "s.png", Exaggeration.shipped(), load_digits().test.x[:2], 3).exists()
    True
    """
    from xaisdk.viz import as_displayable, plt, save_figure

    arr = ex._check(x, n_steps)
    series = ex.series(arr, n_steps)
    sal = series.saliency()
    n = len(series.images)
    fig, axes = plt.subplots(n, n_steps + 2, figsize=(0.95 * (n_steps + 2), 1.05 * n + 0.4), squeeze=False)
    for i in range(n):
        panels = [(arr[i], f"input f={series.start[i]:.2f}")]
        panels += [(series.images[i, j], f"f={series.outputs[i, j]:.2f}") for j in range(n_steps)]
        for j, (img, label) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(as_displayable(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_title(label, fontsize=6)
            ax.axis("off")
        axes[i, -1].imshow(sal[i], cmap="hot")
        axes[i, -1].set_title("|last-first|", fontsize=6)
        axes[i, -1].axis("off")
    fig.suptitle(f"input, then the series I(x, delta) from f(x) to the far end; f = p(class {ex.target_class})", fontsize=7)
    return save_figure(fig, path, dpi=90)


def evaluate_exaggeration(ex: Exaggeration, x: np.ndarray, real_reference: np.ndarray | None = None) -> dict[str, Any]:
    """All numbers of this module on ``x`` (compatibility without its arrays, self-consistency, latent
    closeness, Frechet distances of real vs generated and, with ``real_reference``, of real vs real).

    >>> from xaisdk.data import load_digits
    >>> r = evaluate_exaggeration(Exaggeration.shipped(), load_digits().test.x[:12])
    >>> r["compatibility"]["pearson"] > 0.9
    True
    """
    arr = ex._check(x)
    comp = compatibility(ex, arr)
    images, _, _ = _all_bins(ex, arr)
    module = ex.f_module
    frechet = {"name": FRECHET_NAME,
               "real_vs_generated_all_bins": frechet_distance(arr, images.reshape(-1, *arr.shape[1:]), module),
               "real_vs_reconstruction": frechet_distance(arr, ex.explain(arr, 0.0), module)}
    if real_reference is not None:
        frechet["real_vs_real_reference"] = frechet_distance(arr, ex._check(real_reference), module)
    return {
        "n_images": len(arr),
        "compatibility": {k: v for k, v in comp.items() if k not in ("desired", "actual")},
        "self_consistency": self_consistency(ex, arr),
        "latent_closeness_percent": latent_closeness(ex, arr),
        "frechet": frechet,
    }
