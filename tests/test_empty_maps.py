"""No method returns an empty map as if it were an explanation.

On the shipped digits classifier (torch and its exported bundle on ONNX Runtime), every method and,
for the removal methods, every filler gives finite maps that are not all zero, including one-vs-one
against the least likely class, where the probability rounds to 1 in float64 (log-odds of 40-60).
Meaningful perturbation's default objective is checked for faithfulness against the classifier's own
logit margin, and its gradient against torch autograd; a model whose score does not depend on the
input, or a baseline equal to the input, raises ``InputError`` instead of returning zeros.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from xaisdk import Explainer, load_shipped_ganmex
from xaisdk.attribution import lime, meaningful_perturbation, sliding_patch
from xaisdk.data import load_digits
from xaisdk.deploy.export import export_bundle
from xaisdk.errors import InputError
from xaisdk.explainer import ALIASES, METHODS, REMOVAL
from xaisdk.methods.empty_maps import check_maps, empty_images
from xaisdk.methods.removal import Remover, Score
from xaisdk.models import load_shipped_inpainter
from xaisdk.runtime.backend import class_weights
from xaisdk.runtime.inpainting import FILLERS, composite, filler_images
from xaisdk.torch_runtime.torch_backend import as_backend

mp_module = importlib.import_module("xaisdk.methods.meaningful_perturbation")

N_IMAGES = 3


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def explainers(tmp_path_factory):
    ganmex, inpainter = load_shipped_ganmex("digits"), load_shipped_inpainter("digits")
    bundle = tmp_path_factory.mktemp("empty_maps") / "bundle"
    export_bundle(ganmex, bundle, inpainter=inpainter)
    return {"torch": Explainer(ganmex, inpainter=inpainter), "onnxruntime": Explainer.load(bundle)}


@pytest.fixture(scope="module")
def saturated(digits, explainers):
    """Test digits with the largest margin to their least likely class, and that class as the target."""
    logits = explainers["torch"].logits(digits.test.x).astype(np.float64)
    order = np.argsort(logits.min(1) - logits.max(1))[:N_IMAGES]
    margins = logits[order].max(1) - logits[order].min(1)
    assert margins.min() > 40  # sigmoid(40) == 1.0 in float64: the case that gave all-zero maps
    return digits.test.x[order], logits[order].argmin(1)


def _options(method: str, digits) -> dict:
    if method == "expected_gradients":
        return {"references": digits.train.x[:32]}
    if method == "lime":
        return {"n_samples": 300}
    return {}


def _assert_useful(maps: np.ndarray) -> None:
    flat = maps.reshape(len(maps), -1)
    assert np.isfinite(flat).all()
    assert (np.abs(flat).max(1) > 0).all()
    assert (np.ptp(flat, axis=1) > 0).all()  # not constant either


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("method", [m for m in METHODS if m not in REMOVAL])
def test_gradient_and_baseline_methods_give_maps_on_saturated_digits(explainers, saturated, digits, backend, method):
    x, target = saturated
    e = explainers[backend].explain(x, target=target, method=method, **_options(method, digits))
    _assert_useful(e.attributions)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("filler", FILLERS)
@pytest.mark.parametrize("method", REMOVAL)
def test_removal_methods_give_maps_for_every_filler(explainers, saturated, digits, backend, method, filler):
    """One-vs-one against the least likely class: the probability is exactly 1.0 in float64 before and
    after most removals; the maps must still be finite and not all zero (they were, for all three)."""
    x, target = saturated
    if backend == "torch" and method == "meaningful_perturbation" and filler == "inpaint":
        x, target = x[:1], target[:1]  # the torch inpainter's mask gradient is the slow path; one digit suffices
    e = explainers[backend].explain(x, target=target, method=method, filler=filler, **_options(method, digits))
    _assert_useful(e.attributions)


@pytest.mark.parametrize("filler", ["blur", "inpaint"])
def test_mp_default_options_one_vs_all_as_in_the_issue(explainers, digits, filler):
    """``explain(x, method="mp", filler=...)`` with default options on the bundle: all-zero maps before."""
    e = explainers["onnxruntime"].explain(digits.test.x[:4], target=None, method=ALIASES.get("mp", "mp"), filler=filler)
    _assert_useful(e.attributions)


def test_the_papers_probability_objective_is_refused_not_returned_empty(explainers, saturated):
    """``objective="score"`` (the saturating probability) still ends at an empty mask on these digits:
    now an InputError that says so, never zeros."""
    x, target = saturated
    with pytest.raises(InputError, match=r"meaningful_perturbation: the map of image \d+.* is all zero: .*lower l1"):
        explainers["onnxruntime"].explain(x, target=target, method="mp", filler="blur", objective="score")


# --- faithfulness of meaningful perturbation --------------------------------------------------------


def _margin(model: torch.nn.Module, images: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """S_source - S_target from the torch classifier itself (independent of the backend under test)."""
    with torch.no_grad():
        z = model(torch.from_numpy(images)).double().numpy()
    rows = np.arange(len(images))
    return z[rows, source] - z[rows, target]


@pytest.mark.parametrize("filler", ["blur", "gray", "inpaint"])
def test_mp_top_pixels_lower_the_margin_more_than_random_pixels(explainers, digits, filler):
    explainer = explainers["onnxruntime"]
    x = digits.test.x[20:28]
    logits = explainer.logits(x)
    source, target = logits.argmax(1), np.argsort(logits, 1)[:, -2]
    maps = explainer.explain(x, target=target, method="mp", filler=filler).attributions
    model = load_shipped_ganmex("digits").classifier.model.eval()
    k, rng = 80, np.random.default_rng(0)
    top = np.zeros((len(x), 28 * 28), np.float32)
    np.put_along_axis(top, np.argsort(-maps.reshape(len(x), -1), 1)[:, :k], 1.0, 1)
    random = np.zeros_like(top)
    for row in random:
        row[rng.choice(row.size, k, replace=False)] = 1.0
    before = _margin(model, x, source, target)
    drops = []
    for mask in (top, random):
        mask = mask.reshape(x.shape)
        fill = explainer.inpainter.inpaint(x, mask) if filler == "inpaint" else filler_images(x, filler, value_range=(0.0, 1.0))
        drops.append(before - _margin(model, composite(x, fill, mask), source, target))
    top_drop, random_drop = drops
    assert top_drop.mean() > 2 * max(random_drop.mean(), 0.1)
    assert np.mean(top_drop > random_drop) >= 0.75


# --- the objective's gradient against autograd -------------------------------------------------------


@pytest.mark.parametrize("one_vs_one", [False, True])
def test_nonsaturating_objective_gradient_matches_autograd(one_vs_one):
    """softplus(log-odds) / softplus(log-odds at x) through the jitter, composite and upsampling, on a
    confident non-linear net (a margin of ~40, where the probability's gradient is ~1e-17)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))
    with torch.no_grad():
        net[3].weight.mul_(10.0)
        net[3].bias[0] += 40.0  # class 0 wins by a margin of ~40
    height = width = 10
    backend = as_backend(net, input_shape=(1, height, width))
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(3, 1, height, width)).astype(np.float32)
    with torch.no_grad():
        z = net(torch.from_numpy(x)).numpy()
    source, target = z.argmax(1).tolist(), z.argmin(1).tolist() if one_vs_one else None
    weights = class_weights(source, target, 5)
    score = Score(weights, "probability")
    remover = Remover(x, "gray", None, value_range=(0.0, 1.0))
    scale = mp_module._input_scale(backend, x, score, 8)
    problem = mp_module._Problem(backend, x, score, remover, mp_module.upsampling_matrix(3, height),
                                 mp_module.upsampling_matrix(3, width), 0.3, 0.7, 3.0, 8, "nonsaturating", scale)
    m = rng.uniform(size=(3, 1, 3, 3))
    shifts = [(0, 0), (1, 1)]
    value, grad = problem.value_and_gradient(m, shifts)

    net64 = net.double()
    mt = torch.tensor(m, requires_grad=True)
    big = torch.nn.functional.interpolate(mt, size=(height, width), mode="bilinear", align_corners=False)
    xt = torch.tensor(x, dtype=torch.float64)
    mixed = xt * (1 - big) + torch.tensor(remover.fill, dtype=torch.float64) * big
    index = torch.arange(3), torch.tensor(source)

    def log_odds(images: torch.Tensor) -> torch.Tensor:
        z = net64(images)
        if target is None:
            others = z.clone()
            others[index] = -torch.inf
            return z[index] - torch.logsumexp(others, 1)
        return z[index] - z[torch.arange(3), torch.tensor(target)]

    unit = torch.nn.functional.softplus(log_odds(xt)).detach()
    total = 0.0
    for dy, dx in shifts:
        rows = torch.clamp(torch.arange(height) + dy, max=height - 1)
        cols = torch.clamp(torch.arange(width) + dx, max=width - 1)
        total = total + torch.nn.functional.softplus(log_odds(mixed[:, :, rows][:, :, :, cols])) / unit / len(shifts)
    tv = ((mt[:, :, 1:] - mt[:, :, :-1]).abs() ** 3).mean((1, 2, 3)) + ((mt[..., 1:] - mt[..., :-1]).abs() ** 3).mean((1, 2, 3))
    objective = total + 0.3 * mt.mean((1, 2, 3)) + 0.7 * tv
    objective.sum().backward()
    net.float()
    assert unit.min() > 20  # confident: sigmoid'(margin) < 1e-8, the old objective's gradient
    np.testing.assert_allclose(value, objective.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(grad, mt.grad.numpy(), atol=1e-5 * float(np.abs(mt.grad.numpy()).max()))
    assert np.abs(grad - (0.3 / 9 + 0.7 * mp_module._tv(m, 3.0)[1])).max() > 1e-3  # the score term is not lost


# --- saturated probabilities: exact differences ------------------------------------------------------


def test_score_drop_of_saturated_probabilities_is_exact():
    """sigmoid(a) - sigmoid(b) from the log-odds against the complement form e^-b/(1+e^-b) - e^-a/(1+e^-a),
    exact in float64 for a, b > 0 (where plain subtraction of probabilities gives 0)."""
    score = Score(class_weights([0], [1], 2), "probability")
    a = np.array([40.0, 55.0, 60.0, 3.0, -50.0, 7.0])
    b = np.array([39.5, 54.0, 60.0, -2.0, -49.0, 7.5])
    complement = lambda t: np.exp(-t) / (1 + np.exp(-t))  # noqa: E731 - 1 - sigmoid(t)
    reference = np.where(np.minimum(a, b) > 0, complement(b) - complement(a), 1 / (1 + np.exp(-a)) - 1 / (1 + np.exp(-b)))
    np.testing.assert_allclose(score.drop(a, b), reference, rtol=1e-10, atol=0)
    assert (1 / (1 + np.exp(-a[:2])) - 1 / (1 + np.exp(-b[:2])) == 0).all()  # what the old subtraction gave


def test_sliding_patch_on_a_saturated_linear_model_equals_the_analytic_drop():
    """A linear model with a one-vs-one margin of ~60: each patch's probability drop, computed
    analytically from the logits, is ~1e-26 and must come out as such, not 0."""
    weight = np.zeros((2, 1, 8, 8), np.float32)
    weight[0, 0, 2:6, 2:6] = 4.0
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(weight.reshape(2, -1)))
    backend = as_backend(net, input_shape=(1, 8, 8))
    x = np.full((1, 1, 8, 8), 0.95, np.float32)
    w = class_weights([0], [1], 2)
    _, grid = sliding_patch(backend, x, w, patch=3, filler="zero", return_grid=True)
    t0 = float((weight[0] * x[0]).sum())
    starts = np.arange(6)
    covered = np.array([[(np.clip(np.arange(r, r + 3), 2, 5) == np.arange(r, r + 3)).sum()
                         * (np.clip(np.arange(c, c + 3), 2, 5) == np.arange(c, c + 3)).sum() for c in starts] for r in starts])
    t1 = t0 - 4.0 * 0.95 * covered
    complement = lambda t: np.exp(-t) / (1 + np.exp(-t))  # noqa: E731
    np.testing.assert_allclose(grid[0], complement(t1) - complement(t0), rtol=1e-4)
    assert t0 > 55 and grid.max() > 0


# --- degenerate inputs: an error, not zeros ----------------------------------------------------------


@pytest.fixture(scope="module")
def flat_backend():
    """A model whose logits do not depend on the input at all (zero weights, a bias)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 3))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([5.0, 1.0, -1.0]))
    return as_backend(net.eval(), input_shape=(1, 28, 28))


@pytest.mark.parametrize("objective", ["nonsaturating", "score"])
def test_mp_on_a_flat_objective_raises(flat_backend, digits, objective):
    with pytest.raises(InputError, match="meaningful_perturbation: the map of image 0 .*is all zero"):
        meaningful_perturbation(flat_backend, digits.test.x[:2], class_weights([0, 0], [1, 2], 3), filler="gray",
                                steps=40, objective=objective)
    kept = meaningful_perturbation(flat_backend, digits.test.x[:2], class_weights([0, 0], [1, 2], 3), filler="gray",
                                   steps=40, objective=objective, allow_empty=True)
    assert not kept.any()  # what the removal study counts as a blank map


def test_removal_methods_on_a_flat_model_raise(flat_backend, digits):
    x, w = digits.test.x[:2], class_weights([0, 0], None, 3)
    with pytest.raises(InputError, match="sliding_patch: the map of image 0 .*no patch position changes the score"):
        sliding_patch(flat_backend, x, w, filler="gray", stride=4)
    with pytest.raises(InputError, match="lime: every perturbed sample of image 0 has the same score"):
        lime(flat_backend, x, w, filler="gray", n_samples=20)
    # an evaluation that counts blank maps (the removal study) asks for them explicitly and gets zeros
    assert not sliding_patch(flat_backend, x, w, filler="gray", stride=4, allow_empty=True).any()
    assert not lime(flat_backend, x, w, filler="gray", n_samples=20, allow_empty=True).any()


def test_filler_equal_to_the_image_raises(explainers, digits):
    """Gray filler on an all-gray image: nothing is removed, so nothing can be attributed."""
    x = np.full((1, 1, 28, 28), 0.5, np.float32)
    for method in REMOVAL:
        with pytest.raises(InputError, match=method):
            explainers["onnxruntime"].explain(x, target=None, method=method, filler="gray", **_options(method, digits))


@pytest.mark.parametrize("method", ["ig", "deeplift", "deepshap", "occlusion"])
def test_baseline_equal_to_the_input_raises(explainers, digits, method):
    x = digits.test.x[:2]
    with pytest.raises(InputError, match=f"{method}: the map of image 0 .*the baseline equals the input"):
        explainers["onnxruntime"].explain(x, target=[1, 2], method=method, baseline=x)


def test_gradient_of_a_flat_model_raises(flat_backend, digits):
    with pytest.raises(InputError, match="gradient: the map of image 0 .*gradient is exactly zero"):
        Explainer(flat_backend).explain(digits.test.x[:2], target=1, method="gradient")


def test_empty_and_non_finite_maps_are_found():
    maps = np.zeros((4, 1, 3, 3), np.float32)
    maps[0, 0, 1, 1] = 1e-30  # tiny is not empty
    maps[2] = 0.7  # constant
    maps[3, 0, 0, 0] = np.nan
    empty, broken = empty_images(maps)
    assert empty.tolist() == [1] and broken.tolist() == [3]
    assert empty_images(maps, constant=True)[0].tolist() == [1, 2]
    with pytest.raises(InputError, match="image 3 has NaN"):
        check_maps(maps, "x", why="-")
    with pytest.raises(InputError, match=r"image 1 is constant \(0.7"):
        check_maps(maps[[0, 2]], "x", why="-", constant=True)
