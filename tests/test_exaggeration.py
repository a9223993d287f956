"""Progressive Exaggeration: losses, networks, training, shipped weights, ONNX export and the torch-free runtime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xaisdk.counterfactual.exaggeration import Exaggeration
from xaisdk.data import load_digits
from xaisdk.deploy.exaggeration_export import export_exaggeration_onnx
from xaisdk.errors import InputError
from xaisdk.metrics.exaggeration_eval import compatibility, confounder_flips, frechet_distance, latent_closeness
from xaisdk.models import load_shipped_classifier
from xaisdk.models.exaggeration import (
    ConditionalBatchNorm2d,
    ExaggerationConfig,
    ExaggerationNet,
    OrdinalProjectionDiscriminator,
    bin_centers,
    bin_index,
    load_exaggeration,
    load_shipped_exaggeration,
)
from xaisdk.runtime.exaggeration_onnx import OnnxExaggeration, check_series_inputs, walk
from xaisdk.train.exaggeration import (
    ExaggerationTrainingConfig,
    frozen_classifier,
    generator_losses,
    train_exaggeration,
)

TINY = dict(base_channels=4, disc_channels=4, batch_size=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these small networks gain nothing from more, and the CI machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def classifier():
    return load_shipped_classifier("digits")


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_exaggeration("digits")


def test_short_training_moves_the_loss_terms_the_right_way(digits, classifier):
    """Reconstruction and cycle fall over the run; the compatibility KL ends lower with its term than without.

    (From a random start the KL may first rise, as the outputs leave the grey that f scores near 0.5, so
    the compatibility term is judged against the same seeded run with lambda_f = 0.)
    """
    data = digits.train.subset(range(200))
    runs = {}
    for lam in (30.0, 0.0):
        cfg = ExaggerationTrainingConfig(steps=60, log_every=20, base_channels=4, disc_channels=4, batch_size=16,
                                         lr_generator=1e-3, lambda_f=lam, seed=1)
        runs[lam] = train_exaggeration(data, classifier, cfg, progress=False)[1]
    hist = runs[30.0]
    assert hist["reconstruction"][-1] < 0.7 * hist["reconstruction"][0]
    assert hist["cycle"][-1] < 0.8 * hist["cycle"][0]
    assert hist["compatibility"][-1] < 0.8 * runs[0.0]["compatibility"][-1]
    assert hist["bin_accuracy"][-1] > runs[0.0]["bin_accuracy"][-1]


def test_kl_gradient_reaches_generator_and_matches_autograd(classifier):
    torch.manual_seed(0)
    cfg = ExaggerationConfig.for_input((1, 28, 28), base_channels=4, disc_channels=4)
    net = ExaggerationNet(cfg).eval()  # running statistics: the reference below can run the net on x alone
    f = frozen_classifier(classifier)
    x = torch.rand(6, 1, 28, 28)
    c0 = torch.tensor([0, 9, 0, 9, 3, 5])
    k = torch.tensor([9, 0, 4, 5, 7, 1])
    terms = generator_losses(net, None, f, 8, x, c0, k)
    got = torch.autograd.grad(terms["compatibility"], list(net.generator.parameters()), allow_unused=True)

    x_delta = net(x, F.one_hot(k, 10).float())
    q = torch.softmax(classifier.model(x_delta), 1)[:, 8].clamp(1e-6, 1 - 1e-6)
    p = ((k.double() + 0.5) / 10).float()
    kl = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).mean()
    want = torch.autograd.grad(kl, list(net.generator.parameters()), allow_unused=True)
    total = 0.0
    for g, w in zip(got, want):
        if w is None:
            assert g is None or float(g.abs().max()) == 0.0
            continue
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
        total += float(g.abs().sum())
    assert total > 0  # no stop-gradient: the classifier passes the KL gradient to the generator
    assert all(not p.requires_grad for p in f.parameters())


def test_ordinal_term_is_the_hand_sum_with_separate_v():
    torch.manual_seed(3)
    cfg = ExaggerationConfig.for_input((1, 28, 28), n_bins=6, disc_channels=4)
    disc = OrdinalProjectionDiscriminator(cfg).eval()
    with torch.no_grad():
        for v in disc.v:
            v.copy_(torch.randn_like(v))
    assert len(disc.v) == 5 and len({id(v) for v in disc.v}) == 5
    x = torch.rand(7, 1, 28, 28)
    bins = torch.tensor([0, 1, 2, 3, 4, 5, 5])
    phi = disc.phi(x)
    got = disc.ordinal(phi, bins)
    want = torch.stack([sum((phi[n] @ disc.v[i] for i in range(int(bins[n]))), torch.tensor(0.0))
                        for n in range(len(x))])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(disc(x, bins), disc.psi(phi).squeeze(1) + want, rtol=1e-5, atol=1e-5)
    # r(c = k) depends on v_i only for i < k
    grads = torch.autograd.grad(disc.ordinal(phi[:1].detach(), torch.tensor([3])).sum(), list(disc.v))
    assert all(float(g.abs().sum()) > 0 for g in grads[:3]) and all(float(g.abs().sum()) == 0 for g in grads[3:])


def test_conditional_batch_norm_uses_running_stats_in_eval():
    torch.manual_seed(0)
    bn = ConditionalBatchNorm2d(3, 4)
    with torch.no_grad():
        bn.gamma.weight.copy_(torch.randn(3, 4))
        bn.beta.weight.copy_(torch.randn(3, 4))
    bn.train()
    for _ in range(5):
        bn(torch.randn(8, 3, 5, 5) * 2 + 1, F.one_hot(torch.randint(0, 4, (8,)), 4).float())
    bn.eval()
    x = torch.randn(4, 3, 5, 5)
    c = F.one_hot(torch.tensor([0, 1, 2, 3]), 4).float()
    mean, var = bn.norm.running_mean, bn.norm.running_var
    want = ((x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.norm.eps)
            * (c @ bn.gamma.weight.T)[:, :, None, None] + (c @ bn.beta.weight.T)[:, :, None, None])
    torch.testing.assert_close(bn(x, c), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn(x[:1], c[:1]), want[:1], rtol=1e-5, atol=1e-5)  # no dependence on the batch
    assert not torch.allclose(mean, torch.zeros(3))


def test_shipped_weights_meet_the_compatibility_goal(digits, shipped):
    assert shipped.target_class == 8 and shipped.n_bins == 10
    result = compatibility(Exaggeration(shipped), digits.test.x[:60])
    assert result["pearson"] >= 0.9
    assert 0 <= latent_closeness(Exaggeration(shipped), digits.test.x[:20]) <= 100


def test_series_walks_across_the_boundary(digits, shipped):
    ex = Exaggeration(shipped)
    x = digits.test.x[:8]
    s = ex.series(x, 6)
    np.testing.assert_allclose(s.targets[:, 0], s.start, atol=1e-6)
    assert ((s.targets[:, -1] > 0.9) == (s.start < 0.5)).all()
    np.testing.assert_array_equal(s.bins, bin_index(torch.from_numpy(s.targets), 10).numpy())
    np.testing.assert_allclose(s.images[:, 0], ex.generate(x, s.bins[:, 0]), atol=1e-6)
    single = ex.series(x[:1], 6)  # eval mode: one image's series does not depend on its batch
    np.testing.assert_allclose(single.images[0], s.images[0], atol=1e-5)


def test_onnx_parity_and_torch_free_runtime(tmp_path, digits, shipped):
    info = export_exaggeration_onnx(shipped, tmp_path)
    assert info["max_abs_error"] <= 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    x = digits.test.x[:5]
    onehot = np.eye(10, dtype=np.float32)[[0, 3, 5, 7, 9]]
    with torch.no_grad():
        want = shipped.net(torch.from_numpy(x), torch.from_numpy(onehot)).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x, "condition": onehot})[0], want, atol=1e-4)

    def logits(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return shipped.classifier.model(torch.from_numpy(batch)).numpy()

    rt = OnnxExaggeration(info["path"], logits)
    assert (rt.target_class, rt.n_bins) == (8, 10)
    got, ref = rt.series(x, 7), Exaggeration(shipped).series(x, 7)
    np.testing.assert_array_equal(got.bins, ref.bins)
    np.testing.assert_allclose(got.images, ref.images, atol=1e-4)
    np.testing.assert_allclose(got.outputs, ref.outputs, atol=1e-4)
    code = "import sys, xaisdk.runtime.exaggeration_onnx; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_resume_continues_bit_for_bit(tmp_path, digits, classifier):
    data = digits.train.subset(range(64))
    full, _ = train_exaggeration(data, classifier, ExaggerationTrainingConfig(steps=6, **TINY), out=tmp_path / "a.pt",
                                 progress=False)
    train_exaggeration(data, classifier, ExaggerationTrainingConfig(steps=3, **TINY), out=tmp_path / "b.pt",
                       progress=False)
    resumed, _ = train_exaggeration(data, classifier, ExaggerationTrainingConfig(steps=6, **TINY), out=tmp_path / "b.pt",
                                    resume=True, progress=False)
    a, b = full.net.state_dict(), resumed.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert load_exaggeration(tmp_path / "b.pt").training["steps_done"] == 6
    with pytest.raises(InputError, match="different hyper-parameters"):
        train_exaggeration(data, classifier, ExaggerationTrainingConfig(steps=8, **(TINY | {"seed": 5})),
                           out=tmp_path / "b.pt", resume=True, progress=False)


def test_frechet_distance_matches_the_closed_form_for_gaussian_features():
    class Identity(torch.nn.Module):  # features = the input of the last Linear = the flattened image
        def __init__(self) -> None:
            super().__init__()
            self.out = torch.nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(x.flatten(1))

    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 1, 1, 2)).astype(np.float32)
    b = (rng.normal(0, 1, (4000, 1, 1, 2)) * 2 + 1).astype(np.float32)
    # N(0, I) vs N(1, 4I): |mu|^2 = 2, trace term = 2 * (1 + 4 - 2 * 2) = 2
    assert frechet_distance(a, b, Identity()) == pytest.approx(4.0, rel=0.08)


def test_bad_inputs_raise_input_error(digits, classifier, shipped):
    ex = Exaggeration(shipped)
    x = digits.test.x[:2]
    with pytest.raises(InputError, match="n_bins"):
        ExaggerationConfig.for_input((1, 28, 28), n_bins=1)
    with pytest.raises(InputError, match="n_bins"):
        train_exaggeration(digits, classifier, ExaggerationTrainingConfig(n_bins=1), progress=False)
    with pytest.raises(InputError, match="n_bins"):
        check_series_inputs(x, (1, 28, 28), 3, 1, None, 8)
    with pytest.raises(InputError, match="n_steps"):
        ex.series(x, 1)
    with pytest.raises(InputError, match="shape"):
        ex.series(x[0], 3)
    with pytest.raises(InputError, match="shape"):
        ex.series(np.zeros((2, 1, 16, 16), np.float32), 3)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ex.series(bad, 3)
    with pytest.raises(InputError, match="class 8"):
        ex.series(x, 3, target_class=3)
    with pytest.raises(InputError, match="target_class"):
        train_exaggeration(digits, classifier, ExaggerationTrainingConfig(target_class=10), progress=False)


def test_walk_and_bins_by_hand():
    assert bin_index(torch.tensor([0.0, 0.099, 0.1, 0.55, 1.0]), 10).tolist() == [0, 0, 1, 5, 9]
    np.testing.assert_allclose(bin_centers(5).numpy(), [0.1, 0.3, 0.5, 0.7, 0.9])
    targets, bins = walk(np.array([0.95, 0.2]), 3, 5)
    np.testing.assert_allclose(targets, [[0.95, 0.525, 0.1], [0.2, 0.55, 0.9]], atol=1e-6)
    assert bins.tolist() == [[4, 2, 0], [1, 2, 4]]


def test_confounder_flips_by_hand(digits, shipped):
    ex = Exaggeration(shipped)
    x = digits.test.x[:16]
    series = ex.series(x, 4)
    threshold = float(np.median(np.concatenate([x.mean((1, 2, 3)), series.images[:, -1].mean((1, 2, 3))])))

    class Bright(torch.nn.Module):  # "confounder present" = mean brightness above the threshold
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            m = batch.mean((1, 2, 3))
            return torch.stack([torch.zeros_like(m), m - threshold], 1)

    r = confounder_flips(ex, Bright(), x, 4)
    before = x.mean((1, 2, 3)) > threshold
    after = series.images[:, -1].mean((1, 2, 3)) > threshold
    towards = series.start < 0.5
    start = series.images[:, 0].mean((1, 2, 3)) > threshold
    assert r["flip_rate"] == pytest.approx(float((before != after).mean()))
    assert r["flip_rate_vs_start"] == pytest.approx(float((start != after).mean()))
    assert r["present_towards"] == pytest.approx(float(after[towards].mean()))
    assert r["present_away"] == pytest.approx(float(after[~towards].mean()))
    assert (r["n_towards"], r["n_away"]) == (int(towards.sum()), int((~towards).sum()))
