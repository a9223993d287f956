"""Sliding patch, LIME and meaningful perturbation (classic fillers and inpainting) against known answers.

The known-answer models are real torch modules behind ``as_backend``: class 0's logit is a
checkerboard filter (2 x 2 blocks of 4 x 4 pixels) on region A (rows 6-13, cols 14-21); in the pair model class 1's logit is the
same filter on region B (rows 16-23, cols 4-11), otherwise 0; class 2's logit is 0. An image carries
the matching checkerboard in A (and, where a test wants it, in B) on a random background, so class
0's evidence lives in A only; every filler (gray, zero, blur, noise, OpenCV inpainting) destroys the
checkerboard, so removing any part of A lowers the score and removing anything else does not change
it. LIME's known-answer tests use a fixed grid of 4 x 4 superpixels aligned with A (SLIC on a random
background gives arbitrary blobs; SLIC itself is tested separately, and on the digits).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.interpolate import RegularGridInterpolator
from sklearn.metrics import pairwise_distances

from xaisdk.attribution import lime, meaningful_perturbation, sliding_patch
from xaisdk.attribution.lime import lime_kernel, superpixels
from xaisdk.errors import InputError
from xaisdk.methods.removal import Remover, Score
from xaisdk.methods.sliding_patch import centred_upsample, patch_starts
from xaisdk.runtime.backend import class_weights
from xaisdk.runtime.inpainting import OpenCVInpainter, filler_images
from xaisdk.torch_runtime.torch_backend import as_backend

mp_module = importlib.import_module("xaisdk.methods.meaningful_perturbation")

SIZE = 28
A = (slice(6, 14), slice(14, 22))
B = (slice(16, 24), slice(4, 12))
GAIN = 0.1
# +-1 in 4 x 4 blocks (sums to 0); blocks rather than single pixels so that MP's 1-pixel jitter keeps
# most of the filter's response instead of flipping its sign
CHECKER = ((np.indices((8, 8)) // 4).sum(0) % 2) * 2.0 - 1.0
CLASSIC = ("gray", "zero", "blur", "noise")
FILLERS = (*CLASSIC, "inpaint")


def region_net(pair: bool = False) -> torch.nn.Module:
    """Linear 3-class model: logit 0 = GAIN * sum(checker * x[A]), logit 1 the same on B (``pair``) or 0,
    logit 2 = 0."""
    weight = np.zeros((3, SIZE, SIZE), np.float32)
    weight[0][A] = GAIN * CHECKER
    if pair:
        weight[1][B] = GAIN * CHECKER
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(weight.reshape(3, -1)))
        net[1].bias.zero_()
    return net.eval()


def region_images(n: int, seed: int = 0, in_b: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(0, 1, (n, 1, SIZE, SIZE)).astype(np.float32)
    x[:, 0][(slice(None), *A)] = 0.5 + 0.5 * CHECKER
    if in_b:
        x[:, 0][(slice(None), *B)] = 0.5 + 0.5 * CHECKER
    return x


# superpixels of 4 x 4 pixels whose borders (2, 6, 10, ...) align with A and B
GRID = ((np.arange(SIZE)[:, None] + 2) // 4) * 8 + (np.arange(SIZE)[None, :] + 2) // 4


def in_region(region: tuple[slice, slice], margin: int = 0) -> np.ndarray:
    rows, cols = region
    mask = np.zeros((SIZE, SIZE), bool)
    mask[max(rows.start - margin, 0):rows.stop + margin, max(cols.start - margin, 0):cols.stop + margin] = True
    return mask


def positive_share(maps: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per map: share of the positive attribution that falls inside ``region``."""
    positive = np.clip(maps[:, 0], 0, None)
    return (positive * region).sum((1, 2)) / positive.sum((1, 2))


def argmax_in(maps: np.ndarray, region: np.ndarray) -> bool:
    return all(region.ravel()[m[0].argmax()] for m in maps)


@pytest.fixture(scope="module")
def region_backend():
    return as_backend(region_net(), input_shape=(1, SIZE, SIZE))


@pytest.fixture(scope="module")
def pair_backend():
    return as_backend(region_net(pair=True), input_shape=(1, SIZE, SIZE))


@pytest.fixture(scope="module")
def opencv() -> OpenCVInpainter:
    return OpenCVInpainter()


class CountingInpainter:
    """OpenCV inpainting that records how many masks each call gets (the batching contract)."""

    name = "counting"
    value_range = (0.0, 1.0)

    def __init__(self) -> None:
        self.inner = OpenCVInpainter()
        self.calls: list[int] = []

    def inpaint(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return self.inner.inpaint(x, mask)


class CountingBackend:
    """A backend that records the batch size of every logits / score_gradient call."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[int] = []
        for name in ("name", "input_shape", "num_classes", "value_range", "supports_deeplift", "has_generator"):
            setattr(self, name, getattr(inner, name))

    def logits(self, x):
        self.calls.append(len(x))
        return self.inner.logits(x)

    def score_gradient(self, x, weights):
        self.calls.append(len(x))
        return self.inner.score_gradient(x, weights)

    def deeplift_multipliers(self, x, baseline, weights):
        return self.inner.deeplift_multipliers(x, baseline, weights)

    def generate(self, x, target):
        return self.inner.generate(x, target)


# --- the attributed score --------------------------------------------------------------------------


def test_probability_scores_match_softmax():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (6, 5)).astype(np.float32)
    source, target = np.array([0, 1, 2, 3, 4, 0]), np.array([1, 2, 3, 4, 0, 4])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rows = np.arange(6)
    ova = Score(class_weights(source, None, 5), "probability")(logits, rows)
    ovo = Score(class_weights(source, target, 5), "probability")(logits, rows)
    np.testing.assert_allclose(ova, p[rows, source], rtol=1e-6)
    np.testing.assert_allclose(ovo, p[rows, source] / (p[rows, source] + p[rows, target]), rtol=1e-6)
    raw = Score(class_weights(source, target, 5), "logits")(logits, rows)
    np.testing.assert_allclose(raw, logits[rows, source] - logits[rows, target], rtol=1e-6)


def test_logit_gradient_is_the_probability_gradient():
    rng = np.random.default_rng(4)
    logits = torch.tensor(rng.normal(0, 2, (4, 5)), requires_grad=True)
    source, target = np.array([0, 2, 4, 1]), np.array([1, 0, 2, 3])
    for tgt in (None, target):
        score = Score(class_weights(source, tgt, 5), "probability")
        p = torch.softmax(logits, 1)[torch.arange(4), torch.from_numpy(source)]
        s = p if tgt is None else p / (p + torch.softmax(logits, 1)[torch.arange(4), torch.from_numpy(target)])
        (grad,) = torch.autograd.grad(s.sum(), logits)
        got = score.logit_gradient(logits.detach().numpy().astype(np.float32), np.arange(4))
        np.testing.assert_allclose(got, grad.numpy(), atol=1e-6)


# --- sliding patch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("filler", FILLERS)
def test_sliding_patch_finds_the_region(region_backend, opencv, filler):
    x = region_images(2)
    maps = sliding_patch(region_backend, x, class_weights([0, 0], None, 3), filler=filler, inpainter=opencv)
    assert maps.shape == (2, 1, SIZE, SIZE) and maps.dtype == np.float32
    assert argmax_in(maps, in_region(A))
    assert positive_share(maps, in_region(A, margin=2)).min() > 0.9  # the patch reaches 2 px beyond A


@pytest.mark.parametrize("filler", CLASSIC)
@pytest.mark.parametrize("output", ["logits", "probability"])
def test_sliding_patch_equals_the_analytic_drop_of_a_linear_model(pair_backend, filler, output):
    """Linear logits: removing a patch changes logit k by -sum_patch w_k * (x - fill)."""
    x = region_images(2, seed=1, in_b=True)
    x[1, 0, 0, :] = 0.9  # a second, different image
    weights = class_weights([0, 1], [1, 2], 3)
    maps, grid = sliding_patch(pair_backend, x, weights, patch=(5, 3), stride=(2, 3), filler=filler, output=output,
                               seed=7, return_grid=True)
    w = region_net(pair=True)[1].weight.detach().numpy().reshape(3, SIZE, SIZE).astype(np.float64)
    fill = filler_images(x, filler, seed=7).astype(np.float64)
    rows, cols = patch_starts(SIZE, 5, 2), patch_starts(SIZE, 3, 3)
    expected = np.empty((2, len(rows), len(cols)))
    for n, (s, t) in enumerate([(0, 1), (1, 2)]):
        z = (w * x[n, 0]).sum((1, 2))
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                dz = -(w[:, r:r + 5, c:c + 3] * (x[n, 0, r:r + 5, c:c + 3] - fill[n, 0, r:r + 5, c:c + 3])).sum((1, 2))
                before, after = z[s] - z[t], z[s] + dz[s] - z[t] - dz[t]
                if output == "probability":
                    before, after = 1 / (1 + np.exp(-before)), 1 / (1 + np.exp(-after))
                expected[n, i, j] = before - after
    np.testing.assert_allclose(grid, expected, atol=2e-5)
    assert grid.shape == (2, 12, 9)
    # the map at each patch centre is that patch's value
    np.testing.assert_allclose(maps[:, 0, rows[:, None] + 2, cols[None, :] + 1], grid, atol=1e-6)


def test_centred_upsample_is_bilinear_between_patch_centres():
    rng = np.random.default_rng(5)
    for patch, stride, size in [((5, 5), (1, 1), (28, 28)), ((29, 29), (3, 3), (224, 224)), ((4, 7), (3, 2), (20, 17))]:
        rows, cols = patch_starts(size[0], patch[0], stride[0]), patch_starts(size[1], patch[1], stride[1])
        grid = rng.normal(size=(2, len(rows), len(cols)))
        got = centred_upsample(grid, patch, stride, size)
        cy, cx = rows + (patch[0] - 1) / 2, cols + (patch[1] - 1) / 2
        py = np.clip(np.arange(size[0]), cy[0], cy[-1])
        px = np.clip(np.arange(size[1]), cx[0], cx[-1])
        points = np.stack(np.meshgrid(py, px, indexing="ij"), -1).reshape(-1, 2)
        for n in range(2):
            reference = RegularGridInterpolator((cy, cx), grid[n])(points).reshape(size)
            np.testing.assert_allclose(got[n], reference, atol=1e-5)
    assert (patch_starts(224, 29, 3).size, patch_starts(28, 5, 1).size) == (66, 24)


def test_sliding_patch_map_is_centred_on_what_the_model_sees():
    """A model that looks at one pixel: the upsampled map is symmetric about that pixel (no shift)."""
    weight = np.zeros((2, SIZE * SIZE), np.float32)
    weight[0, 9 * SIZE + 20] = 1.0
    net = torch.nn.Linear(SIZE * SIZE, 2)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(weight))
        net.bias.zero_()
    backend = as_backend(torch.nn.Sequential(torch.nn.Flatten(), net), input_shape=(1, SIZE, SIZE))
    maps = sliding_patch(backend, np.ones((1, 1, SIZE, SIZE), np.float32), class_weights([0], None, 2),
                         patch=5, filler="zero", output="logits")[0, 0]
    assert np.unravel_index(maps.argmax(), maps.shape) == (9, 20) or maps[9, 20] == maps.max()
    for k in range(1, 5):
        assert maps[9 - k, 20] == pytest.approx(maps[9 + k, 20]) and maps[9, 20 - k] == pytest.approx(maps[9, 20 + k])
    assert maps[9, 20] == 1.0 and maps[9, 23] == 0.0  # covered by every patch through it / by none


# --- LIME ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filler", FILLERS)
def test_lime_finds_the_region(region_backend, opencv, filler):
    x = region_images(2, seed=2)
    maps = lime(region_backend, x, class_weights([0, 0], None, 3), filler=filler, inpainter=opencv, n_samples=300,
                segments=GRID)
    assert maps.shape == (2, 1, SIZE, SIZE)
    assert argmax_in(maps, in_region(A))
    # inpainting fills a removed superpixel from its neighbours, so neighbours of A interact with A a little
    assert positive_share(maps, in_region(A)).min() > (0.8 if filler == "inpaint" else 0.9)


def test_lime_recovers_an_additive_model(region_backend):
    """With the zero filler the logit is exactly linear in the on/off vector: s(z) = sum_k z_k c_k,
    c_k = sum over superpixel k of w * x; the kernel-weighted Lasso with a tiny alpha returns c."""
    x = region_images(2, seed=3)
    segments = superpixels(x, n_segments=30)
    maps = lime(region_backend, x, class_weights([0, 0], None, 3), segments=segments, filler="zero",
                output="logits", alpha=1e-7, n_samples=400)
    w = region_net()[1].weight.detach().numpy()[0].reshape(SIZE, SIZE)
    for n in range(2):
        contribution = np.bincount(segments[n].ravel(), weights=(w * x[n, 0]).ravel())
        np.testing.assert_allclose(maps[n, 0], contribution[segments[n]], atol=1e-4)
    ls = lime(region_backend, x, class_weights([0, 0], None, 3), segments=segments, filler="zero", output="logits",
              alpha=0.0, n_samples=400)
    np.testing.assert_allclose(ls, maps, atol=1e-4)


def test_lime_kernel_is_limes_cosine_kernel():
    z = np.random.default_rng(6).integers(0, 2, (50, 12))
    z[0] = 1
    d = pairwise_distances(z, np.ones((1, 12)), metric="cosine").ravel()
    np.testing.assert_allclose(lime_kernel(z, 0.25), np.sqrt(np.exp(-(d**2) / 0.25**2)), atol=1e-12)
    assert lime_kernel(np.zeros((1, 4)))[0] == pytest.approx(np.sqrt(np.exp(-16.0)))


def test_superpixels_follow_slic():
    from skimage.segmentation import slic

    from xaisdk.data import make_shapes

    rgb = make_shapes(2, seed=0).x
    gray = region_images(1)
    segments = superpixels(gray, n_segments=40, compactness=0.3)
    np.testing.assert_array_equal(segments[0], slic(gray[0, 0].astype(np.float64), n_segments=40, compactness=0.3,
                                                    channel_axis=None, start_label=0))
    colour = superpixels(rgb)
    np.testing.assert_array_equal(colour[0], slic(rgb[0].transpose(1, 2, 0).astype(np.float64), n_segments=50,
                                                  compactness=0.2, channel_axis=-1, start_label=0))
    for labels in colour:
        assert labels.min() == 0 and set(np.unique(labels)) == set(range(labels.max() + 1))


# --- meaningful perturbation -----------------------------------------------------------------------


class AverageInpainter:
    """A differentiable inpainter: each removed pixel gets the mean of the kept pixels in its 5 x 5
    neighbourhood (normalised convolution); ``mask_vjp`` by torch autograd."""

    name = "average"
    value_range = (0.0, 1.0)

    @staticmethod
    def torch_inpaint(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = 1 - mask
        kernel = torch.ones(1, 1, 5, 5, dtype=x.dtype)
        channels = x.shape[1]
        total = F.conv2d(x * keep, kernel.repeat(channels, 1, 1, 1), padding=2, groups=channels)
        count = F.conv2d(keep, kernel, padding=2)
        return x * keep + mask * total / (count + 1e-3)

    def inpaint(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.torch_inpaint(torch.from_numpy(x), torch.from_numpy(mask)).numpy()

    def mask_vjp(self, x: np.ndarray, mask: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        m = torch.from_numpy(mask.astype(np.float64)).requires_grad_(True)
        out = self.torch_inpaint(torch.from_numpy(x.astype(np.float64)), m)
        (grad,) = torch.autograd.grad((out * torch.from_numpy(cotangent.astype(np.float64))).sum(), m)
        return grad.numpy()


class ConstantAverageInpainter(AverageInpainter):
    """The same inpainter without ``mask_vjp``: MP-G treats its output as constant within a step."""

    mask_vjp = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    "output,target,filler,inpainter",
    [("probability", None, "blur", None), ("probability", [1, 2, 0], "noise", None), ("logits", [1, 2, 0], "gray", None),
     ("probability", None, "inpaint", AverageInpainter()), ("probability", [1, 2, 0], "inpaint", ConstantAverageInpainter())],
)
def test_mp_gradient_matches_torch_autograd(output, target, filler, inpainter):
    """The hand-written chain rule (backend input gradient -> jitter shift adjoint -> composite ->
    MP-G straight-through -> bilinear upsampling adjoint, plus L1 and TV) against autograd of the
    same objective written in torch (a small non-linear conv net, shared weights in float64)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 8, 5))
    height, width, h, w = 12, 10, 3, 4
    backend = as_backend(net, input_shape=(2, height, width))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 2, height, width)).astype(np.float32)
    source = [0, 3, 4]
    weights = class_weights(source, target, 5)
    remover = Remover(x, filler, inpainter, value_range=(0.0, 1.0), seed=1)
    problem = mp_module._Problem(backend, x, Score(weights, output), remover, mp_module.upsampling_matrix(h, height),
                                 mp_module.upsampling_matrix(w, width), 0.3, 0.7, 3.0, 4)
    m = rng.uniform(size=(3, 1, h, w))
    shifts = [(0, 0), (1, 0), (2, 1), (1, 3)]
    value, grad = problem.value_and_gradient(m, shifts)

    net64 = net.double()
    mt = torch.tensor(m, requires_grad=True)
    big = F.interpolate(mt, size=(height, width), mode="bilinear", align_corners=False)
    xt = torch.tensor(x, dtype=torch.float64)
    if filler == "inpaint":
        hard = (big >= 0.5).double()
        straight = big + (hard - big).detach() if getattr(inpainter, "mask_vjp", None) else hard
        fill = AverageInpainter.torch_inpaint(xt, straight)
        if not getattr(inpainter, "mask_vjp", None):
            fill = fill.detach()
    else:
        fill = torch.tensor(remover.fill, dtype=torch.float64)
    mixed = xt * (1 - big) + fill * big
    wt = torch.tensor(weights, dtype=torch.float64)
    index = torch.arange(3), torch.tensor(source)
    total = 0.0
    for dy, dx in shifts:
        rows = torch.clamp(torch.arange(height) + dy, max=height - 1)
        cols = torch.clamp(torch.arange(width) + dx, max=width - 1)
        z = net64(mixed[:, :, rows][:, :, :, cols])
        if output == "logits":
            s = (z * wt).sum(1)
        elif target is None:
            s = torch.softmax(z, 1)[index]
        else:
            s = torch.sigmoid((z * wt).sum(1))
        total = total + s / len(shifts)
    tv = ((mt[:, :, 1:] - mt[:, :, :-1]).abs() ** 3).mean((1, 2, 3)) + ((mt[..., 1:] - mt[..., :-1]).abs() ** 3).mean((1, 2, 3))
    objective = total + 0.3 * mt.mean((1, 2, 3)) + 0.7 * tv
    objective.sum().backward()
    net.float()
    np.testing.assert_allclose(value, objective.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(grad, mt.grad.numpy(), atol=1e-6 * max(1.0, float(np.abs(mt.grad.numpy()).max())))
    assert np.abs(grad).max() > 1e-3


def test_mp_upsampling_matches_torch():
    m = np.random.default_rng(8).uniform(size=(2, 1, 7, 5))
    up = np.einsum("Hh,nchw,Ww->ncHW", mp_module.upsampling_matrix(7, 28), m, mp_module.upsampling_matrix(5, 23))
    reference = F.interpolate(torch.from_numpy(m), size=(28, 23), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(up, reference, atol=1e-12)


@pytest.mark.parametrize("filler", FILLERS)
def test_mp_finds_the_region(region_backend, opencv, filler):
    x = region_images(2, seed=4)
    maps = meaningful_perturbation(region_backend, x, class_weights([0, 0], None, 3), filler=filler, inpainter=opencv,
                                   steps=150)
    assert maps.shape == (2, 1, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    assert argmax_in(maps, in_region(A))
    inside, outside = maps[:, 0, in_region(A)].mean(1), maps[:, 0, ~in_region(A, margin=4)].mean(1)
    assert inside.min() > 0.9 and outside.max() < 0.2  # the TV term leaves a smooth halo around A


# --- one-vs-one, seeds, batching -------------------------------------------------------------------


def test_one_vs_one_attributes_the_target_region_negatively(pair_backend):
    x = region_images(1, seed=5, in_b=True)
    ova, ovo = class_weights([0], None, 3), class_weights([0], [1], 3)
    b_only = in_region(B) & ~in_region(A, margin=4)
    for method, options in [(sliding_patch, {}), (lime, {"n_samples": 300, "segments": GRID})]:
        alone = method(pair_backend, x, ova, output="logits", **options)[0, 0]
        pair = method(pair_backend, x, ovo, output="logits", **options)[0, 0]
        assert np.abs(alone[b_only]).max() < 0.05 * alone.max()  # S_0 ignores B
        assert pair[b_only].mean() < -0.2 * pair.max()  # S_0 - S_1: B is evidence for the target
    mp = meaningful_perturbation(pair_backend, x, ovo, steps=150)[0, 0]
    assert mp[in_region(A)].mean() > 0.5 and mp[b_only].mean() < 0.1  # removing B would raise the score


def test_seeded_runs_are_reproducible(region_backend):
    x = region_images(2, seed=6)
    w = class_weights([0, 0], None, 3)
    for method, options in [(sliding_patch, {"filler": "noise"}), (lime, {"n_samples": 100}),
                            (meaningful_perturbation, {"steps": 20})]:
        first = method(region_backend, x, w, seed=3, **options)
        np.testing.assert_array_equal(first, method(region_backend, x, w, seed=3, **options))
        assert not np.array_equal(first, method(region_backend, x, w, seed=4, **options))


def test_batched_and_unbatched_evaluation_agree(region_backend):
    x = region_images(3, seed=7)
    w = class_weights([0, 0, 0], [1, 2, 1], 3)
    inpainter = CountingInpainter()
    for method, options in [(sliding_patch, {"patch": 7, "stride": 3}), (lime, {"n_samples": 60}),
                            (meaningful_perturbation, {"steps": 15, "n_jitter": 2})]:
        for filler in ("noise", "inpaint"):
            reference = method(region_backend, x, w, filler=filler, inpainter=inpainter, **options)
            small = method(region_backend, x, w, filler=filler, inpainter=inpainter, chunk_size=5, **options)
            np.testing.assert_allclose(small, reference, atol=2e-6)
            one = method(region_backend, x[:1], w[:1], filler=filler, inpainter=inpainter, **options)
            np.testing.assert_allclose(one, reference[:1], atol=2e-6)


def test_perturbed_images_go_through_the_backend_in_chunks(region_backend):
    x = region_images(2, seed=8)
    w = class_weights([0, 0], None, 3)
    counting, inpainter = CountingBackend(region_backend), CountingInpainter()
    sliding_patch(counting, x, w, filler="inpaint", inpainter=inpainter, chunk_size=100)  # 2 x 576 patches
    assert counting.calls == [2] + [100] * 11 + [52] and inpainter.calls == [100] * 11 + [52]
    counting.calls.clear()
    inpainter.calls.clear()
    lime(counting, x, w, filler="inpaint", inpainter=inpainter, n_samples=150, chunk_size=128)
    assert counting.calls == [128, 128, 44] and inpainter.calls == [128, 128, 44]
    counting.calls.clear()
    inpainter.calls.clear()
    meaningful_perturbation(counting, x, w, filler="inpaint", inpainter=inpainter, steps=3)  # 4 jitter copies
    # the inputs' log-odds once; then per step one-vs-all: logits, then gradients; the inpainter fills the
    # hard masks and (no mask_vjp) their complements
    assert counting.calls == [2] + [8, 8] * 3 and inpainter.calls == [2, 2] * 3
    counting.calls.clear()
    meaningful_perturbation(counting, x, class_weights([0, 0], [1, 1], 3), steps=2, chunk_size=3)
    assert counting.calls == [2] + [3, 3, 2] * 2  # one-vs-one: one gradient call per chunk


def test_progress_bars(region_backend, capsys):
    x = region_images(1)
    w = class_weights([0], None, 3)
    sliding_patch(region_backend, x, w, chunk_size=200, progress=True)
    lime(region_backend, x, w, n_samples=50, chunk_size=20, progress=True)
    meaningful_perturbation(region_backend, x, w, steps=3, progress=True)
    err = capsys.readouterr().err
    assert "sliding patch" in err and "lime" in err and "meaningful perturbation" in err


def test_methods_on_the_shipped_digits_classifier(shipped, digits, opencv):
    """The real CNN and the real data: every method runs on a test digit (SLIC superpixels for LIME),
    maps are finite and classic and generative fillers disagree (the fillers matter)."""
    backend = as_backend(shipped)
    x = digits.test.x[:1]
    w = class_weights(backend.logits(x).argmax(1), None, 10)
    for method, options in [(sliding_patch, {}), (lime, {"n_samples": 100}), (meaningful_perturbation, {"steps": 20})]:
        classic = method(backend, x, w, **options)
        generative = method(backend, x, w, filler="inpaint", inpainter=opencv, **options)
        assert classic.shape == generative.shape == (1, 1, 28, 28)
        assert np.isfinite(classic).all() and np.isfinite(generative).all()
        assert not np.allclose(classic, generative)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [sliding_patch, lime, meaningful_perturbation])
def test_common_input_errors(region_backend, method):
    x = region_images(1)
    w = class_weights([0], None, 3)
    cases = [
        ({"filler": "pink"}, "filler"),
        ({"filler": "inpaint"}, "inpainter"),
        ({"filler": "inpaint", "inpainter": object()}, "inpainter"),
        ({"output": "odds"}, "output"),
        ({"chunk_size": 0}, "chunk_size"),
    ]
    for options, name in cases:
        with pytest.raises(InputError, match=name):
            method(region_backend, x, w, **options)
    with pytest.raises(InputError, match="^x: expected shape"):
        method(region_backend, x[:, :, :20], w)
    with pytest.raises(InputError, match="^x: expected shape"):
        method(region_backend, x[0], w)
    with pytest.raises(InputError, match="weights"):
        method(region_backend, x, w[:, :2])
    with pytest.raises(InputError, match="weights"):
        method(region_backend, x, np.array([[0.5, 0.5, 0.0]], np.float32))  # no class rows: no probability
    method(region_backend, x, np.array([[0.5, 0.5, 0.0]], np.float32), output="logits", **_FAST[method])


_FAST = {sliding_patch: {"stride": 4}, lime: {"n_samples": 20}, meaningful_perturbation: {"steps": 2}}


def test_method_specific_input_errors(region_backend):
    x = region_images(1)
    w = class_weights([0], None, 3)
    for options, name in [({"patch": 0}, "patch"), ({"patch": 29}, "patch"), ({"patch": True}, "patch"),
                          ({"patch": (3, 4, 5)}, "patch"), ({"stride": 0}, "stride"), ({"stride": 1.5}, "stride")]:
        with pytest.raises(InputError, match=name):
            sliding_patch(region_backend, x, w, **options)
    for options, name in [({"n_segments": 0}, "n_segments"), ({"n_samples": 1}, "n_samples"),
                          ({"compactness": 0}, "compactness"), ({"kernel_width": -1.0}, "kernel_width"),
                          ({"alpha": -0.1}, "alpha"), ({"segments": np.zeros((3, 3), int)}, "segments"),
                          ({"segments": np.zeros((SIZE, SIZE))}, "segments")]:
        with pytest.raises(InputError, match=name):
            lime(region_backend, x, w, **options)
    for options, name in [({"mask_size": 0}, "mask_size"), ({"mask_size": 40}, "mask_size"), ({"steps": 0}, "steps"),
                          ({"lr": 0.0}, "lr"), ({"l1": -1.0}, "l1"), ({"tv_beta": 0.5}, "tv_beta"),
                          ({"jitter": 28}, "jitter"), ({"jitter": -1}, "jitter"), ({"n_jitter": 0}, "n_jitter")]:
        with pytest.raises(InputError, match=name):
            meaningful_perturbation(region_backend, x, w, **options)
