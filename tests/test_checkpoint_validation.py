"""Checkpoints are validated before anything is built from them.

Every bad checkpoint here is a shipped one, loaded with ``torch.load(weights_only=True)``, with one
field edited and saved again: huge sizes, wrong types, reversed or non-numeric value ranges, non-dict
metadata, NaN/inf weights, weights that do not fit a config within bounds. Each must raise
:class:`xaisdk.InputError` naming the field, for every loader (classifier, GANMEX, ExplainGAN,
Exaggeration, inpainter, and ``load_model``), and without allocating what the config asks for (a
subprocess measures the peak memory). The shipped checkpoints still load.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from xaisdk.errors import InputError
from xaisdk.input_files import MAX_PARAMETERS
from xaisdk.models import load_classifier, load_ganmex, load_inpainter
from xaisdk.models.checkpoint import shipped_classifier_path
from xaisdk.models.classifiers import build_classifier
from xaisdk.models.config_checks import meta_build
from xaisdk.models.exaggeration import load_exaggeration, shipped_exaggeration_path
from xaisdk.models.explaingan import load_explaingan, shipped_explaingan_path
from xaisdk.models.ganmex import load_model, shipped_ganmex_path
from xaisdk.models.inpainter import shipped_inpainter_path

SHIPPED = {
    "classifier": (shipped_classifier_path("digits"), load_classifier),
    "ganmex": (shipped_ganmex_path("digits"), load_ganmex),
    "explaingan": (shipped_explaingan_path("digits_3v8"), load_explaingan),
    "exaggeration": (shipped_exaggeration_path("digits"), load_exaggeration),
    "inpainter": (shipped_inpainter_path("digits"), load_inpainter),
}


@pytest.fixture(scope="module")
def payloads() -> dict[str, dict[str, Any]]:
    return {name: torch.load(path, map_location="cpu", weights_only=True) for name, (path, _) in SHIPPED.items()}


def _set(*keys: str, value: Any) -> Callable[[dict], None]:
    """An edit that sets payload[k0][k1]...[kn] = value."""
    def edit(payload: dict) -> None:
        for key in keys[:-1]:
            payload = payload[key]
        payload[keys[-1]] = value
    return edit


def _poison(*keys: str, value: float) -> Callable[[dict], None]:
    """An edit that writes ``value`` (NaN or inf) into the first floating-point tensor of a state dict."""
    def edit(payload: dict) -> None:
        for key in keys:
            payload = payload[key]
        name = next(k for k, t in payload.items() if t.is_floating_point())
        payload[name] = payload[name].clone()
        payload[name].view(-1)[3] = value
    return edit


def _reshape(*keys: str) -> Callable[[dict], None]:
    """An edit that replaces the first weight of a state dict by a tensor one row too long."""
    def edit(payload: dict) -> None:
        for key in keys:
            payload = payload[key]
        name = next(iter(payload))
        payload[name] = torch.zeros(payload[name].shape[0] + 1, *payload[name].shape[1:])
    return edit


def _write(tmp_path: Path, payloads: dict, name: str, edit: Callable[[dict], None]) -> Path:
    payload = copy.deepcopy(payloads[name])
    edit(payload)
    path = tmp_path / f"bad_{name}.pt"
    torch.save(payload, path)
    return path


CASES = [
    # classifier: sizes, types, ranges, metadata, class names, weights
    ("classifier", _set("config", "hidden", value=10**7), "hidden: expected an integer <= 65536"),
    ("classifier", _set("config", "hidden", value=500_000), "hidden: expected an integer <= 65536"),
    ("classifier", _set("config", "hidden", value=4096), "do not fit"),  # within bounds, not the file's weights
    ("classifier", _set("config", "hidden", value=True), "hidden: expected an integer, got True"),
    ("classifier", _set("config", "hidden", value=256.0), "hidden: expected an integer"),
    ("classifier", _set("config", "hidden", value="256"), "hidden: expected an integer"),
    ("classifier", _set("config", "image_size", value=10**5), "image_size: expected an integer <= 8192"),
    ("classifier", _set("config", "channels", value=[32, 10**5]), r"channels\[1\]: expected an integer <= 8192"),
    ("classifier", _set("config", "channels", value=[32]), "channels: expected 2 channel counts"),
    ("classifier", _set("config", "dropout", value=float("nan")), "dropout"),
    ("classifier", _set("config", "colour", value=True), "unknown field colour"),
    ("classifier", _set("config", value=[1, 28, 10]), "config' has type list"),
    ("classifier", _set("input_shape", value=[1, 10**5, 10**5]), "input_shape: height: expected an integer <= 8192"),
    ("classifier", _set("input_shape", value=[1, 8192, 8192 + 1]), "input_shape: width"),
    ("classifier", _set("input_shape", value=[1, "28", 28]), "input_shape: height: expected an integer"),
    ("classifier", _set("input_shape", value=[3, 28, 28]), r"does not take \(3, 28, 28\) inputs"),
    ("classifier", _set("value_range", value=["0", "1"]), "value_range: expected two finite numbers"),
    ("classifier", _set("value_range", value=[1.0, 0.0]), "value_range: expected two finite numbers"),
    ("classifier", _set("value_range", value=[0.0, math.inf]), "value_range"),
    ("classifier", _set("value_range", value=[math.nan, 1.0]), "value_range"),
    ("classifier", _set("value_range", value=[0.0]), "value_range"),
    ("classifier", _set("value_range", value=[False, True]), "value_range"),
    ("classifier", _set("metadata", value=["dataset", "digits"]), "metadata: expected a dict"),
    ("classifier", _set("class_names", value=[str(i % 9) for i in range(10)]), "names must be distinct"),
    ("classifier", _set("class_names", value=list(range(10))), "expected non-empty strings"),
    ("classifier", _set("format_version", value=True), "'format_version' has type bool"),
    ("classifier", _poison("state_dict", value=math.nan), "holds 1 non-finite value"),
    ("classifier", _poison("state_dict", value=-math.inf), "holds 1 non-finite value"),
    ("classifier", _reshape("state_dict"), "do not fit its config: 'features.0.weight' has shape"),
    ("classifier", _set("state_dict", "extra", value=torch.zeros(2)), "unexpected 'extra'"),
    ("classifier", _set("state_dict", "head.1.bias", value=[0.0] * 256), "not a dense tensor"),
    # GANMEX: the generator config, the generator weights, the classifier inside
    ("ganmex", _set("generator", "config", "base_channels", value=10**5), "base_channels: expected an integer <= 8192"),
    ("ganmex", _set("generator", "config", "base_channels", value=4096), "doubled 2 times gives 16384 channels"),
    ("ganmex", _set("generator", "config", "n_res", value=10**6), "n_res: expected an integer <= 64"),
    ("ganmex", _set("generator", "config", "n_res", value=64), "generator weights do not fit its config: missing"),
    ("ganmex", _set("generator", "config", "height", value=10**5), "height: expected an integer <= 8192"),
    ("ganmex", _set("generator", "config", "num_classes", value=10**6), "num_classes: expected an integer <= 100000"),
    ("ganmex", _set("generator", "config", "value_range", value=["0", "1"]), "generator config: value_range"),
    ("ganmex", _set("generator", "config", "input_skip", value="yes"), "input_skip: expected True or False"),
    ("ganmex", _set("generator", "config", "n_down", value=2.0), "n_down: expected an integer"),
    ("ganmex", _poison("generator", "state_dict", value=math.nan), "generator weights: .* holds 1 non-finite"),
    ("ganmex", _poison("classifier", "state_dict", value=math.inf), "classifier weights: .* holds 1 non-finite"),
    ("ganmex", _set("classifier", "config", "hidden", value=10**7), "hidden: expected an integer <= 65536"),
    ("ganmex", _set("data", value=["digits"]), "data: expected a dict"),
    ("ganmex", _set("training", value="fast"), "training: expected a dict"),
    # ExplainGAN
    ("explaingan", _set("config", "input_shape", value=[1, 10**5, 10**5]), "input_shape: height"),
    ("explaingan", _set("config", "input_shape", value=[1, 28.0, 28]), "input_shape: height: expected an integer"),
    ("explaingan", _set("config", "code_channels", value=10**5), "code_channels: expected an integer <= 8192"),
    ("explaingan", _set("config", "critic_channels", value=4096), "doubled 2 times"),
    ("explaingan", _set("config", "value_range", value=[1, 0]), "value_range"),
    ("explaingan", _set("use_mask", value="False"), "use_mask: expected True or False"),
    ("explaingan", _poison("decoder", value=math.nan), "ExplainGAN decoder weights: .* non-finite"),
    ("explaingan", _poison("encoders", value=math.inf), "ExplainGAN encoder weights: .* non-finite"),
    ("explaingan", _set("config", "base_channels", value=64), "ExplainGAN encoder weights do not fit"),
    # Exaggeration
    ("exaggeration", _set("net", "config", "base_channels", value=10**5), "base_channels: expected an integer <= 8192"),
    ("exaggeration", _set("net", "config", "n_bins", value=10**6), "n_bins: expected an integer <= 1000"),
    ("exaggeration", _set("net", "config", "width", value=10**5), "width: expected an integer <= 8192"),
    ("exaggeration", _set("target_class", value="8"), "target_class: expected an integer"),
    ("exaggeration", _set("target_class", value=10), "target_class: expected an integer <= 9"),
    ("exaggeration", _set("n_bins", value=12), "n_bins 12 differs"),
    ("exaggeration", _set("classifier", "hash", value="0"), "'hash' a float"),
    ("exaggeration", _poison("net", "state_dict", value=math.nan), "explainer weights: .* non-finite"),
    ("exaggeration", _set("net", "config", "value_range", value=[0, "1"]), "value_range"),
    # inpainter
    ("inpainter", _set("config", "height", value=10**5), "height: expected an integer <= 8192"),
    ("inpainter", _set("config", "dilations", value=[2, 10**6]), r"dilations\[1\]: expected an integer <= 8192"),
    ("inpainter", _set("config", "dilations", value=[2] * 1000), "dilations: expected a list of at most 64"),
    ("inpainter", _set("config", "base_channels", value=10**5), "base_channels: expected an integer <= 8192"),
    ("inpainter", _set("config", "value_range", value=[1.0, 0.0]), "value_range"),
    ("inpainter", _poison("state_dict", value=math.inf), "inpainter weights: .* non-finite"),
    ("inpainter", _set("data", value=[1, 2]), "data: expected a dict"),
]


@pytest.mark.parametrize("name,edit,match", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_checkpoint_field_is_refused_naming_it(tmp_path, payloads, name, edit, match):
    path = _write(tmp_path, payloads, name, edit)
    loader = SHIPPED[name][1]
    with pytest.raises(InputError, match=match) as info:
        loader(path)
    assert str(path) in str(info.value)  # the message names the file
    if name in ("classifier", "ganmex"):  # the dispatching loader refuses it the same way
        with pytest.raises(InputError, match=match):
            load_model(path)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoints_still_load_and_resave(tmp_path, payloads, name):
    path, loader = SHIPPED[name]
    model = loader(path)
    assert model is not None
    copy_path = _write(tmp_path, payloads, name, lambda payload: None)  # an unedited copy goes through the same checks
    assert type(loader(copy_path)) is type(model)


def test_a_config_within_every_bound_is_still_refused_above_the_parameter_limit():
    """Field bounds alone allow e.g. an 8192-px MnistCNN with a 65536-wide layer; its size is counted on the
    meta device and refused before anything is allocated."""
    with pytest.raises(InputError, match="parameters, above the limit of 500,000,000"):
        build_classifier("mnist_cnn", image_size=8192, hidden=65536, num_classes=10)
    skeleton = meta_build(lambda: build_classifier("mnist_cnn", num_classes=10), "probe")
    assert sum(t.numel() for t in skeleton.state_dict().values()) < MAX_PARAMETERS


_MEMORY_PROBE = textwrap.dedent("""
    import copy, json, resource, sys, torch
    from xaisdk.errors import InputError
    from xaisdk.models import load_classifier, load_ganmex, load_inpainter
    from xaisdk.models.exaggeration import load_exaggeration
    cases = json.loads(sys.argv[1])
    loaders = {"classifier": load_classifier, "ganmex": load_ganmex, "inpainter": load_inpainter,
               "exaggeration": load_exaggeration}
    for name, good, _ in cases:
        loaders[name](good)  # warm up: the allocator's arenas and torch's kernels for a real load
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused = []
    for name, _, bad in cases:
        try:
            loaders[name](bad)
        except InputError as err:
            refused.append(str(err))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mb": (after - before) / 1024, "refused": refused}))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kilobytes on Linux")
def test_huge_configs_are_refused_without_allocating(tmp_path, payloads):
    """The configs of the bug report (each would need 6 GB to 10**10 GB if built), and configs within every
    field bound whose network would still take 0.8 GB to 24 GB, are refused by a process whose peak memory
    does not grow: nothing the config asks for was allocated."""
    huge = [
        ("classifier", _set("config", "hidden", value=500_000)),  # 6.2 GB before the refusal in the report
        ("ganmex", _set("generator", "config", "n_res", value=10**6)),
        ("exaggeration", _set("net", "config", "base_channels", value=10**5)),
        ("inpainter", _set("config", "height", value=10**5)),
        ("classifier", _set("config", "hidden", value=65536)),  # 205 M weights: refused by the shape check
        ("ganmex", _set("generator", "config", "base_channels", value=2048)),  # 5.9 G weights: the parameter limit
    ]
    cases = []
    for i, (name, edit) in enumerate(huge):
        folder = tmp_path / str(i)
        folder.mkdir()
        cases.append((name, str(SHIPPED[name][0]), str(_write(folder, payloads, name, edit))))
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, json.dumps(cases)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["refused"]) == len(huge), report
    assert "do not fit" in report["refused"][4] and "above the limit of 500,000,000" in report["refused"][5], report
    assert report["growth_mb"] < 100, report  # building any of them would take 800 MB or more
