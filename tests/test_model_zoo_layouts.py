"""The reference model zoo: torchvision's ImageNet layouts rebuilt in plain torch, checked for
torchvision's exact parameter counts and state-dict names, 1,000-class output at 224 px, deterministic
eval-mode behaviour, and torch Integrated Gradients agreeing with Captum's on every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from xaisdk.attribution import integrated_gradients
from xaisdk.bench.zoo import ZOO, build
from xaisdk.bench.zoo.blocks import StochasticDepth
from xaisdk.bench.zoo.swin import relative_position_index, shift_mask
from xaisdk.errors import InputError
from xaisdk.models import WeightedScore, class_weights

# torchvision 0.2x's published parameter counts (weights documentation, num_params).
TORCHVISION_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "convnext_tiny": 28_589_128,
    "regnet_y_400mf": 4_344_144,
    "densenet121": 7_978_856,
    "vgg11_bn": 132_868_840,
    "vit_b_16": 86_567_656,
    "swin_t": 28_288_354,
}

# Names from torchvision's state dicts, so that a torchvision checkpoint's keys land on the same modules.
TORCHVISION_KEYS = {
    "resnet18": ["conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_var", "fc.bias"],
    "resnet50": ["layer1.0.conv3.weight", "layer1.0.downsample.1.running_mean", "layer3.5.bn3.weight"],
    "mobilenet_v3_small": ["features.0.0.weight", "features.1.block.1.fc1.weight", "features.2.block.0.1.running_var",
                           "features.12.0.weight", "classifier.3.weight"],
    "efficientnet_b0": ["features.1.0.block.0.0.weight", "features.1.0.block.1.fc2.bias", "features.6.3.block.3.1.weight",
                        "features.8.1.running_mean", "classifier.1.weight"],
    "convnext_tiny": ["features.0.1.weight", "features.1.0.layer_scale", "features.1.0.block.0.weight",
                      "features.1.0.block.2.weight", "features.2.1.weight", "features.5.8.block.5.bias", "classifier.0.weight",
                      "classifier.2.weight"],
    "regnet_y_400mf": ["stem.0.weight", "trunk_output.block1.block1-0.proj.0.weight", "trunk_output.block2.block2-2.f.b.0.weight",
                       "trunk_output.block4.block4-5.f.se.fc1.weight", "fc.weight"],
    "densenet121": ["features.conv0.weight", "features.denseblock4.denselayer16.conv2.weight", "features.transition3.norm.bias",
                    "features.norm5.running_var", "classifier.weight"],
    "vgg11_bn": ["features.0.weight", "features.1.running_mean", "features.25.weight", "classifier.6.weight"],
    "vit_b_16": ["class_token", "conv_proj.weight", "encoder.pos_embedding",
                 "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
                 "encoder.layers.encoder_layer_11.self_attention.out_proj.bias", "encoder.layers.encoder_layer_11.mlp.3.weight",
                 "encoder.ln.weight", "heads.head.weight"],
    "swin_t": ["features.0.0.weight", "features.0.2.weight", "features.1.1.attn.relative_position_bias_table",
               "features.1.1.attn.relative_position_index", "features.2.reduction.weight", "features.5.5.mlp.3.bias",
               "features.7.1.norm2.weight", "norm.weight", "head.weight"],
}


def small(name: str, seed: int = 0, num_classes: int = 10) -> nn.Module:
    entry = ZOO[name]
    return build(name, num_classes=num_classes, seed=seed, width=entry.small_width, image_size=entry.small_size)


def small_input(name: str, n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, ZOO[name].small_size, ZOO[name].small_size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(TORCHVISION_PARAMETERS))
def full(request) -> tuple[str, nn.Module]:
    """One full-size model at a time (the module scope groups the tests by model)."""
    return request.param, build(request.param)


def test_registry_holds_the_ten_layouts():
    assert list(ZOO) == list(TORCHVISION_PARAMETERS)
    for name, entry in ZOO.items():
        assert entry.name == name and entry.input_shape == (3, 224, 224)
        assert entry.parameters == TORCHVISION_PARAMETERS[name]


def test_parameter_count_is_torchvisions(full):
    name, model = full
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[name]


def test_state_dict_names_are_torchvisions(full):
    name, model = full
    keys = model.state_dict().keys()
    assert [k for k in TORCHVISION_KEYS[name] if k not in keys] == []


def test_output_at_224_px(full):
    name, model = full
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        out = model(torch.rand(1, *ZOO[name].input_shape, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all() and out.std() > 0


def test_batch_norms_carry_non_trivial_statistics(full):
    """Folding a batch norm into its conv must matter: statistics and affine parameters are far from
    (0, 1), and the statistics are those of real activations, so the logits depend on the input."""
    name, model = full
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        assert (bn.running_mean != 0).all() and (bn.running_var != 1).all()
        assert (bn.weight != 1).all() and (bn.bias != 0).all()
    spread = np.mean([float((bn.running_var.log().std())) for bn in norms]) if norms else None
    assert spread is None or spread > 0.1


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMETERS))
def test_eval_mode_is_deterministic(name):
    state = torch.get_rng_state()
    a, b = small(name), small(name)
    assert torch.equal(torch.get_rng_state(), state), "build must leave torch's global RNG as it was"
    for (key, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), key
    x = small_input(name, 2, seed=1)
    with torch.no_grad():
        first, again, twin = a(x), a(x), b(x)
    assert torch.equal(first, again) and torch.equal(first, twin)


def test_seed_changes_every_parameter():
    a, b = small("resnet18", seed=0), small("resnet18", seed=1)
    for (key, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert p.dtype == torch.int64 or not torch.equal(p, q), key  # num_batches_tracked is a counter


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMETERS))
def test_integrated_gradients_match_captum(name):
    model = small(name, seed=2)
    x, baseline = small_input(name, 2, seed=3), small_input(name, 2, seed=4) * 0.2
    source, target = np.array([1, 7]), np.array([4, 0])
    # rows in chunks of 5, so that the batches differ from Captum's single batch of 16
    ours = integrated_gradients(model, x, source=source, target=target, baseline=baseline.numpy(), n_steps=8,
                                rule="riemann_middle", batch_size=5)
    theirs = IntegratedGradients(WeightedScore(model)).attribute(
        x, baseline, additional_forward_args=(class_weights(source, target, 10),), n_steps=8, method="riemann_middle"
    ).detach().numpy()
    assert np.abs(theirs).max() > 0
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


@pytest.mark.parametrize("name,blocks,last", [("efficientnet_b0", 16, 0.2 * 15 / 16), ("convnext_tiny", 18, 0.1),
                                              ("swin_t", 12, 0.2)])
def test_stochastic_depth_follows_torchvisions_schedule(name, blocks, last):
    """One module per block, its rate rising linearly from 0; rows dropped in training, none in eval."""
    model = small(name)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert len(rates) == blocks and rates[0] == 0.0 and rates == sorted(rates)
    assert rates[-1] == pytest.approx(last)
    drop = StochasticDepth(0.5)
    x = torch.ones(400, 3)
    assert torch.equal(drop.eval()(x), x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rows = drop.train()(x)[:, 0]
    assert set(rows.tolist()) == {0.0, 2.0} and 150 < int((rows == 0).sum()) < 250


def test_swin_relative_position_index_by_enumeration():
    window = 7
    index = relative_position_index(window).view(window * window, window * window)
    for i in range(window * window):
        for j in range(window * window):
            (a, b), (c, d) = divmod(i, window), divmod(j, window)
            assert index[i, j] == (a - c + window - 1) * (2 * window - 1) + (b - d + window - 1)


def test_swin_shift_mask_separates_regions_the_roll_brought_together():
    size, window, shift = 14, 7, 3
    mask = shift_mask(size, size, window, shift)
    assert mask.shape == (4, 49, 49)
    band = [0 if p < size - window else 1 if p < size - shift else 2 for p in range(size)]
    for w in range(4):
        top, left = (w // 2) * window, (w % 2) * window
        label = [(band[top + t // window], band[left + t % window]) for t in range(window * window)]
        expected = torch.tensor([[0.0 if label[p] == label[q] else -100.0 for q in range(49)] for p in range(49)])
        assert torch.equal(mask[w], expected)
    assert (mask[0] == 0).all() and (mask[3] != 0).any()


def test_swin_shifts_every_second_block():
    model = build("swin_t", width=0.125)
    shifts = [block.attn.shift for stage in model.features[1::2] for block in stage]
    assert shifts == [0, 3, 0, 3, 0, 3, 0, 3, 0, 3, 0, 3]
    assert model.features[1][1].attn.window == 7


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "alexnet"}, "name: unknown 'alexnet'"),
    ({"name": "vit_b_16", "image_size": 40}, "multiple of 16"),
    ({"name": "swin_t", "image_size": 48}, "multiple of 32"),
    ({"name": "resnet18", "image_size": 16}, "at least 32 px"),
    ({"name": "resnet18", "width": 0}, "width: expected a number in (0, 1]"),
    ({"name": "resnet18", "num_classes": 0}, "num_classes: expected a positive integer"),
    ({"name": "resnet18", "seed": -1}, "seed: expected a non-negative integer"),
])
def test_build_rejects_bad_arguments(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("]", r"\]")):
        build(name, **kwargs)
