"""The relu-path fast path answers only for the model's own function: adversarial models against Captum.

Each model below is built to fool a detector that looks at the layers and not at what runs: hooks of
every kind, forward overrides (subclass and instance), in-place swaps after the backend was built,
functional ops, parametrisations, training mode. For each, Integrated Gradients, Occlusion and the
perturbation rows of the torch backend (fast path on) must equal Captum / direct scoring of the model
as it is when the call is made.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Occlusion
from torch import nn
from torch.nn.utils import parametrize

from xaisdk.methods import drivers
from xaisdk.models.classifiers import MnistCNN
from xaisdk.torch_runtime.relu_path_ig import find_relu_conv_prefix
from xaisdk.torch_runtime.torch_backend import TorchBackend

SHAPE = (1, 12, 12)
CLASSES = 4
STEPS = 32


def _cnn(seed: int = 0) -> MnistCNN:
    torch.manual_seed(seed)
    return MnistCNN(in_channels=1, image_size=12, num_classes=CLASSES, channels=(4, 6), hidden=16).eval()


def _inputs(n: int = 2, low: float = 0.0, high: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = (low + (high - low) * rng.random((n, *SHAPE))).astype(np.float32)
    b = (low + (high - low) * rng.random((n, *SHAPE)) * 0.3).astype(np.float32)
    eye = np.eye(CLASSES, dtype=np.float32)
    weights = eye[np.arange(n) % CLASSES] - eye[(np.arange(n) + 1) % CLASSES]
    return x, b, weights


def _captum_ig(model: nn.Module, x: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    out = []
    for i in range(len(x)):  # one image at a time: Captum expands rows, the weights stay per image
        w = torch.from_numpy(weights[i : i + 1])
        ig = IntegratedGradients(lambda inp, w=w: (model(inp) * w).sum(1))
        attr = ig.attribute(torch.from_numpy(x[i : i + 1]), baselines=torch.from_numpy(b[i : i + 1]), n_steps=STEPS,
                            method="riemann_middle")
        out.append(attr.detach().numpy())
    return np.concatenate(out)


def _captum_occlusion(model: nn.Module, x: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    out = []
    for i in range(len(x)):
        w = torch.from_numpy(weights[i : i + 1])
        occ = Occlusion(lambda inp, w=w: (model(inp) * w).sum(1))
        attr = occ.attribute(torch.from_numpy(x[i : i + 1]), sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2),
                             baselines=torch.from_numpy(b[i : i + 1]))
        out.append(attr.detach().numpy())
    return np.concatenate(out)


def _direct_perturbed_scores(model: nn.Module, base, substrate, order, lo, hi, weights) -> np.ndarray:
    rows = np.repeat(base[:, None], lo.shape[1], axis=1).reshape(len(base), lo.shape[1], -1)  # (N, J, pixels)
    for n in range(len(base)):
        for j in range(lo.shape[1]):
            pixels = order[n, lo[n, j] : hi[n, j]]
            rows[n, j, pixels] = substrate[n].reshape(-1)[pixels]
    with torch.no_grad():
        logits = model(torch.from_numpy(rows.reshape(-1, *SHAPE).astype(np.float32))).numpy()
    return (logits.reshape(len(base), -1, CLASSES) * weights[:, None, :]).sum(-1)


def _check_all_paths(backend: TorchBackend, model: nn.Module, low: float = 0.0, high: float = 1.0) -> None:
    """IG, Occlusion and perturbation rows of ``backend`` equal the references computed on ``model`` now."""
    x, b, weights = _inputs(low=low, high=high)
    ig = drivers.integrated_gradients(backend, x, weights, b, n_steps=STEPS, rule="riemann_middle")
    expected = _captum_ig(model, x, b, weights)
    np.testing.assert_allclose(ig, expected, atol=2e-5 * max(1.0, np.abs(expected).max()))
    occ = drivers.occlusion(backend, x, weights, b, window=3, stride=2)
    expected = _captum_occlusion(model, x, b, weights)
    np.testing.assert_allclose(occ, expected, atol=2e-5 * max(1.0, np.abs(expected).max()))
    rng = np.random.default_rng(1)
    order = np.stack([rng.permutation(SHAPE[1] * SHAPE[2]) for _ in x]).astype(np.int64)
    hi_ = np.tile(np.array([0, 5, 20, 60, 144]), (len(x), 1)).astype(np.int64)
    lo_ = np.zeros_like(hi_)
    got = backend.perturbed_scores(x, b, order, lo_, hi_, weights)
    if got is not None:
        expected = _direct_perturbed_scores(model, x, b, order, lo_, hi_, weights)
        np.testing.assert_allclose(got, expected, atol=2e-5 * max(1.0, np.abs(expected).max()))


def test_the_plain_model_takes_the_fast_path_and_equals_captum():
    model = _cnn()
    backend = TorchBackend(model, input_shape=SHAPE)
    assert backend.relu_path() is not None
    _check_all_paths(backend, model)


# -- models that must not take the fast path: each mutation is applied after the backend was built ----------


def _hook_output_first(model):
    model.features[0].register_forward_hook(lambda mod, args, out: out * 1.7 + 0.05)


def _hook_input_second(model):
    model.features[2].register_forward_pre_hook(lambda mod, args: (args[0] * 0.5,))


def _hook_with_kwargs(model):
    model.features[0].register_forward_hook(lambda mod, args, kwargs, out: out - 0.1, with_kwargs=True)


def _hook_dense_layer(model):  # the dense head is followed by hand: a hook there is skipped too
    model.head[1].register_forward_hook(lambda mod, args, out: out.abs())


def _backward_hook_first(model):
    model.features[0].register_full_backward_hook(lambda mod, gin, gout: (gin[0] * 3.0,))


def _backward_pre_hook_second(model):
    model.features[2].register_full_backward_pre_hook(lambda mod, gout: (gout[0] * -1.0,))


def _instance_forward(model):
    original = model.forward
    model.forward = lambda x: original(torch.clamp(x * 1.5, 0.0, 1.0))


def _instance_conv_forward(model):
    conv = model.features[0]
    conv._conv_forward = lambda inp, w, b: nn.functional.conv2d(inp, w * 0.5, b, conv.stride, conv.padding)


def _swap_first_conv(model):
    torch.manual_seed(9)
    model.features[0] = nn.Conv2d(1, 4, kernel_size=6, stride=2, padding=2)


def _swap_relu_for_leaky(model):
    model.features[1] = nn.LeakyReLU(0.2)


def _swap_whole_features(model):
    torch.manual_seed(7)
    model.features = nn.Sequential(nn.Conv2d(1, 4, 6, 2, 2), nn.Tanh(), nn.Conv2d(4, 6, 6, 2, 2), nn.ReLU())


def _change_padding_mode(model):
    model.features[0].padding_mode = "reflect"


def _parametrize_weight(model):
    class Doubled(nn.Module):
        def forward(self, w):
            return 2.0 * w

    parametrize.register_parametrization(model.features[2], "weight", Doubled())


MUTATIONS = {
    "forward_hook_first_conv": _hook_output_first,
    "forward_pre_hook_second_conv": _hook_input_second,
    "forward_hook_with_kwargs": _hook_with_kwargs,
    "forward_hook_dense_layer": _hook_dense_layer,
    "backward_hook_first_conv": _backward_hook_first,
    "backward_pre_hook_second_conv": _backward_pre_hook_second,
    "instance_forward_override": _instance_forward,
    "instance_conv_method_override": _instance_conv_forward,
    "swap_first_conv": _swap_first_conv,
    "swap_relu_for_leaky_relu": _swap_relu_for_leaky,
    "swap_whole_features": _swap_whole_features,
    "padding_mode_changed": _change_padding_mode,
    "parametrized_weight": _parametrize_weight,
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_changes_after_construction_leave_the_fast_path_and_answers_stay_right(name):
    model = _cnn()
    backend = TorchBackend(model, input_shape=SHAPE)
    assert backend.relu_path() is not None
    MUTATIONS[name](model)
    model.eval()
    swapped_conv_only = name == "swap_first_conv"  # still conv -> ReLU -> conv: a new proof, on the new layer
    assert (backend.relu_path() is not None) == swapped_conv_only
    _check_all_paths(backend, model)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_models_built_that_way_never_take_the_fast_path(name):
    model = _cnn()
    MUTATIONS[name](model)
    model.eval()
    backend = TorchBackend(model, input_shape=SHAPE)
    assert (backend.relu_path() is not None) == (name == "swap_first_conv")
    _check_all_paths(backend, model)


class Clamped(MnistCNN):
    def forward(self, x):
        return super().forward(torch.clamp(x, 0.2, 0.8))


class Normalised(MnistCNN):
    def forward(self, x):
        return super().forward((x - 0.5) / 0.25)


class SameForward(MnistCNN):  # overrides nothing, but a subclass may: it is not taken
    pass


class ShiftedSequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x + 0.3)


@pytest.mark.parametrize("cls", [Clamped, Normalised, SameForward])
def test_subclasses_of_the_digits_cnn_are_left_to_the_loop(cls):
    torch.manual_seed(0)
    model = cls(in_channels=1, image_size=12, num_classes=CLASSES, channels=(4, 6), hidden=16).eval()
    backend = TorchBackend(model, input_shape=SHAPE)
    assert backend.relu_path() is None
    _check_all_paths(backend, model)


def test_functional_ops_between_layers_and_custom_containers_are_left_to_the_loop():
    class Scale(nn.Module):
        def forward(self, x):
            return x * 1.3

    torch.manual_seed(1)
    between = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), Scale(), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.Flatten(),
                            nn.Linear(6 * 3 * 3, CLASSES)).eval()
    shifted = ShiftedSequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.Flatten(),
                                nn.Linear(6 * 3 * 3, CLASSES)).eval()
    for model in (between, shifted):
        backend = TorchBackend(model, input_shape=SHAPE)
        assert backend.relu_path() is None
        _check_all_paths(backend, model)


def test_a_custom_tail_module_runs_as_itself_on_the_fast_path():
    class Squash(nn.Module):  # a functional op after the second conv: part of the tail, run by the model's module
        def forward(self, x):
            return torch.tanh(x) * 2.0

    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), Squash(), nn.Flatten(),
                          nn.Linear(6 * 3 * 3, CLASSES)).eval()
    backend = TorchBackend(model, input_shape=SHAPE)
    prefix = backend.relu_path()
    assert prefix is not None and prefix.dense_head is None
    _check_all_paths(backend, model)


def test_replaced_weights_are_read_at_each_call():
    model = _cnn()
    backend = TorchBackend(model, input_shape=SHAPE)
    torch.manual_seed(5)
    model.features[0].weight = nn.Parameter(torch.randn_like(model.features[0].weight))
    with torch.no_grad():
        model.head[1].weight.mul_(-1.5)
    assert backend.relu_path() is not None
    _check_all_paths(backend, model)


def test_process_wide_hooks_and_training_mode_leave_the_fast_path():
    from torch.nn.modules.module import register_module_forward_hook

    model = _cnn()
    backend = TorchBackend(model, input_shape=SHAPE)
    handle = register_module_forward_hook(lambda mod, args, out: out * 1.1 if isinstance(mod, nn.Conv2d) else None)
    try:
        assert backend.relu_path() is None
        _check_all_paths(backend, model)
    finally:
        handle.remove()
    assert backend.relu_path() is not None
    model.train()
    assert backend.relu_path() is None  # dropout now draws: no deterministic reference to compare with
    model.eval()
    assert backend.relu_path() is not None


def test_a_model_over_another_value_range_takes_the_fast_path_there():
    """Inputs and baselines in (-3, 3) (a normalised model): negative pixels, units switching both ways."""
    model = _cnn()
    backend = TorchBackend(model, input_shape=SHAPE, value_range=(-3.0, 3.0))
    assert backend.relu_path() is not None
    _check_all_paths(backend, model, low=-3.0, high=3.0)
    model.features[0].register_forward_pre_hook(lambda mod, args: (torch.where(args[0] < 0, 0.0, args[0]),))
    assert backend.relu_path() is None
    _check_all_paths(backend, model, low=-3.0, high=3.0)


def test_a_hook_that_comes_and_goes_costs_no_new_proof():
    model = _cnn()
    backend = TorchBackend(model, input_shape=SHAPE)
    first = backend.relu_path()
    handle = model.features[0].register_forward_hook(lambda mod, args, out: out)
    assert backend.relu_path() is None
    handle.remove()
    assert backend.relu_path() is first  # the proven state is remembered


def test_long_paths_and_many_windows_go_through_in_bounded_pieces():
    """Memory does not grow with n_steps: a path longer than one pass is summed in pieces, equal to one pass."""
    from xaisdk.torch_runtime.relu_path_ig import relu_path_integrated_gradients, relu_path_occluded_scores

    model = _cnn()
    prefix = find_relu_conv_prefix(model, SHAPE)
    x, b, weights = _inputs(3)
    alphas = (np.arange(300) + 0.5) / 300
    quad = np.full(300, 1 / 300)
    whole = relu_path_integrated_gradients(prefix, x, b, weights, alphas, quad, rows_per_pass=4096)
    pieces = relu_path_integrated_gradients(prefix, x, b, weights, alphas, quad, rows_per_pass=64)  # 5 pieces per image
    np.testing.assert_allclose(pieces, whole, atol=1e-6 * np.abs(whole).max())
    from xaisdk.methods.common import occlusion_covers

    rows, cols = occlusion_covers(12, 12, 2, 1)
    whole = relu_path_occluded_scores(prefix, x, b, weights, rows, cols, rows_per_pass=4096)
    bands = relu_path_occluded_scores(prefix, x, b, weights, rows, cols, rows_per_pass=20)  # one window row per call
    np.testing.assert_allclose(bands, whole, atol=1e-6 * np.abs(whole).max())


def test_tracing_a_model_never_breaks_forward_passes_on_other_threads():
    """torch.fx replaces nn.Module.__call__ process-wide while it traces (DeepLIFT's analysis does, at
    construction): the torch backends' forward passes on other threads wait for it instead of failing."""
    import threading
    import time

    class SlowToTrace(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(144, CLASSES))

        def forward(self, x):
            time.sleep(0.5)  # runs while fx traces: the window in which other threads' calls would fail
            return self.body(x)

    serving = TorchBackend(_cnn(), input_shape=SHAPE)
    x, b, weights = _inputs()
    expected = serving.logits(x)
    errors, done = [], threading.Event()

    def serve():
        while not done.is_set():
            try:
                np.testing.assert_allclose(serving.logits(x), expected, rtol=1e-6)
                serving.score_gradient(x, weights)
            except Exception as err:  # noqa: BLE001 - any failure on this thread is the defect under test
                errors.append(repr(err))

    worker = threading.Thread(target=serve)
    worker.start()
    try:
        time.sleep(0.05)
        traced = TorchBackend(SlowToTrace().eval(), input_shape=SHAPE)
    finally:
        done.set()
        worker.join()
    assert traced.supports_deeplift
    assert errors == []
