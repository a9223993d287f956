"""Bundles: what runs is what was hashed. Hostile bundles crafted from a real export (external data,
swapped files, links out of the bundle, huge or deep manifests, sparse giant files, huge batches,
symbolic dims, contrib-domain ops, duplicate class names, corrupt protobuf in every graph slot) each
give an xaisdk.InputError naming the problem; an intact bundle still loads and matches torch."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from xaisdk import Explainer
from xaisdk.counterfactual.exaggeration import Exaggeration
from xaisdk.counterfactual.explaingan import ExplainGAN
from xaisdk.deploy.export import export_bundle
from xaisdk.errors import InputError
from xaisdk.models import load_shipped_ganmex, shipped_ganmex_path
from xaisdk.models.exaggeration import shipped_exaggeration_path
from xaisdk.models.explaingan import shipped_explaingan_path
from xaisdk.models.inpainter import shipped_inpainter_path
from xaisdk.runtime.bundle import MAX_BATCH, MAX_CLASSES, read_bundle
from xaisdk.runtime.bundle_integrity import MAX_GRAPH_BYTES, MAX_MANIFEST_BYTES, json_depth, scan_onnx
from xaisdk.runtime.exaggeration_onnx import OnnxExaggeration
from xaisdk.runtime.explaingan_onnx import OnnxExplainGAN
from xaisdk.runtime.onnx_inpainter import OnnxInpainter

CPU = ["CPUExecutionProvider"]
GRAPHS = ["classifier.onnx", "classifier_grad.onnx", "deeplift_grad.onnx", "generator_ganmex.onnx", "inpainter.onnx",
          "explaingan.onnx", "exaggeration.onnx"]
COUNTERFACTUAL_GRAPHS = ["explaingan.onnx", "exaggeration.onnx"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The shipped GANMEX classifier with every optional graph (inpainter, ExplainGAN, Exaggeration), once."""
    out = tmp_path_factory.mktemp("integrity") / "bundle"
    export_bundle(shipped_ganmex_path("digits"), out, inpainter=shipped_inpainter_path("digits"),
                  explaingan=shipped_explaingan_path(), exaggeration=shipped_exaggeration_path())
    return out


@pytest.fixture()
def bundle(exported, tmp_path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(exported, folder)
    return folder


@pytest.fixture(scope="module")
def images(digits) -> np.ndarray:
    test = digits.test
    return np.concatenate([test.x[test.y == 3][:2], test.x[test.y == 8][:2]]).astype(np.float32)


def load(folder: Path) -> Explainer:
    return Explainer.load(folder, providers=CPU)


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def save_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))


def rehash(folder: Path, *names: str) -> None:
    """Record the current bytes of ``names`` in the manifest, as a tamperer covering their tracks would."""
    manifest = manifest_of(folder)
    for name in names:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    save_manifest(folder, manifest)


def refused(folder: Path, match: str, name: str | None = None) -> str:
    """Both read_bundle and Explainer.load refuse ``folder`` with ``match``; the message names ``name``."""
    messages = []
    for reader in (read_bundle, load):
        with pytest.raises(InputError, match=match) as info:
            reader(folder)
        messages.append(str(info.value))
        if name is not None:
            assert name in str(info.value)
    return messages[0]


def write_model(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def first_activation(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(node for node in model.graph.node if node.op_type in ("Relu", "Elu"))


# --------------------------------------------------------------------------- the intact bundle


def test_intact_bundle_loads_and_matches_torch(exported, images):
    """The checks add no false alarm: every graph loads and the numbers are torch's."""
    served = load(exported)
    ganmex = load_shipped_ganmex("digits")
    with torch.no_grad():
        want = ganmex.classifier.model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(served.logits(images), want, rtol=1e-4, atol=1e-4)
    a, b = served.counterfactual(images, kind="explaingan"), ExplainGAN().transform(images)
    np.testing.assert_allclose(a.composite, b.composite, atol=1e-4)
    s = served.counterfactual(images, kind="exaggeration", n_steps=4)
    t = Exaggeration.shipped().series(images, n_steps=4)
    np.testing.assert_allclose(s.images, t.images, atol=1e-4)
    mask = np.zeros((len(images), 1, 28, 28), np.float32)
    mask[:, :, 8:20, 8:20] = 1
    inpainted = served.inpainter.inpaint(images, mask)
    np.testing.assert_array_equal(inpainted[mask == 0], images[mask == 0])


def test_what_runs_is_what_was_hashed(bundle, images):
    """Every graph runs from the bytes read and hashed at load: files swapped or deleted afterwards change
    nothing (a fresh load sees the change), and ExplainGAN / Exaggeration are never reopened by path."""
    served = load(bundle)
    before = (served.logits(images), served.counterfactual(images, kind="explaingan").composite,
              served.counterfactual(images, kind="exaggeration", n_steps=3).images)
    for name in COUNTERFACTUAL_GRAPHS:
        other = onnx.load(bundle / name)
        first = other.graph.initializer[0]
        first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * 0 + 0.5, first.name))
        write_model(other, bundle / name)
    for name in ["classifier.onnx", "classifier_grad.onnx"]:
        (bundle / name).unlink()
    after = (served.logits(images), served.counterfactual(images, kind="explaingan").composite,
             served.counterfactual(images, kind="exaggeration", n_steps=3).images)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(InputError, match="classifier.onnx is missing"):
        load(bundle)


@pytest.mark.parametrize("name", COUNTERFACTUAL_GRAPHS)
def test_swapped_counterfactual_graph_is_refused_at_load(bundle, name):
    """A counterfactual graph replaced after export (hash not updated) is refused, whichever way it is loaded."""
    other = onnx.load(bundle / name)
    other.graph.initializer[0].raw_data = bytes(len(other.graph.initializer[0].raw_data))
    write_model(other, bundle / name)
    refused(bundle, "sha256 does not match the manifest", name)
    with pytest.raises(InputError, match="sha256 does not match the manifest"):
        if name == "explaingan.onnx":
            OnnxExplainGAN(bundle)
        else:
            OnnxExaggeration(bundle, lambda x: np.zeros((len(x), 10), np.float32))


# --------------------------------------------------------------------------- external data


@pytest.mark.parametrize("name", GRAPHS)
def test_external_data_is_refused_even_when_listed_and_hashed(bundle, name, monkeypatch):
    """Weights moved to a side file: refused in every graph slot, with the side file listed and hashed in
    the manifest, and with a copy in the working directory (where ONNX Runtime would have looked)."""
    model = onnx.load(bundle / name)
    side = f"{name}.data"
    onnx.save_model(model, bundle / name, save_as_external_data=True, all_tensors_to_one_file=True, location=side,
                    size_threshold=1024)
    rehash(bundle, name, side)
    monkeypatch.chdir(bundle)
    assert ort.InferenceSession((bundle / name).read_bytes(), providers=CPU)  # ONNX Runtime alone would run it
    message = refused(bundle, "is stored as external data", name)
    assert "manifest does not hash" in message


def _external(tensor: onnx.TensorProto) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "/etc/weights.bin"
    return tensor


def _io(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])


def _model(nodes, initializers=(), sparse=(), functions=(), opsets=(("", 17),)) -> bytes:
    graph = helper.make_graph(nodes, "g", [_io("x")], [_io("y")], initializer=list(initializers),
                              sparse_initializer=list(sparse))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              functions=list(functions))
    return model.SerializeToString()


def _weights(name: str = "w") -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(2, np.float32), name)


def _if_node(branch_nodes, branch_init=()) -> onnx.NodeProto:
    branch = helper.make_graph(branch_nodes, "branch", [], [_io("y")], initializer=list(branch_init))
    return helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)


HIDDEN_EXTERNAL = {
    "initializer": lambda: _model([helper.make_node("Add", ["x", "w"], ["y"])], [_external(_weights())]),
    "constant attribute": lambda: _model([helper.make_node("Constant", [], ["y"], value=_external(_weights("c")))]),
    "subgraph initializer": lambda: _model([_if_node([helper.make_node("Identity", ["w"], ["y"])],
                                                     [_external(_weights())])]),
    "subgraph constant": lambda: _model([_if_node([helper.make_node("Constant", [], ["y"],
                                                                    value=_external(_weights("c")))])]),
    "sparse initializer": lambda: _model([helper.make_node("Identity", ["x"], ["y"])], sparse=[
        helper.make_sparse_tensor(_external(_weights("s")), numpy_helper.from_array(np.array([0, 1], np.int64)), [2])]),
}
HIDDEN_DOMAIN = {
    "node": lambda: _model([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")],
                           opsets=(("", 17), ("com.microsoft", 1))),
    "subgraph node": lambda: _model([_if_node([helper.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft")])]),
    "local function": lambda: _model([helper.make_node("Mine", ["x"], ["y"], domain="custom")], functions=[
        helper.make_function("custom", "Mine", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                             [helper.make_opsetid("", 17)])], opsets=(("", 17), ("custom", 1))),
    "ai.onnx.ml": lambda: _model([helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml")],
                                 opsets=(("", 17), ("ai.onnx.ml", 3))),
}


@pytest.mark.parametrize("case", list(HIDDEN_EXTERNAL))
def test_scan_finds_external_data_wherever_a_tensor_can_hide(case):
    with pytest.raises(InputError, match="stored as external data"):
        scan_onnx(HIDDEN_EXTERNAL[case](), "g.onnx")


@pytest.mark.parametrize("case", list(HIDDEN_DOMAIN))
def test_scan_finds_ops_outside_the_default_domain_wherever_a_node_can_hide(case):
    with pytest.raises(InputError, match="outside the default ONNX domain"):
        scan_onnx(HIDDEN_DOMAIN[case](), "g.onnx")


def test_scan_accepts_standard_graphs_and_skips_unknown_fields_and_groups():
    plain = _model([_if_node([helper.make_node("Identity", ["w"], ["y"])], [_weights()])], [_weights("v")])
    assert scan_onnx(plain) is None
    group = bytes([(99 << 3 | 3) & 0x7F | 0x80, (99 << 3 | 3) >> 7, 0x08, 0x01,  # group 99 holding varint field 1
                   (99 << 3 | 4) & 0x7F | 0x80, (99 << 3 | 4) >> 7])
    assert scan_onnx(group + plain) is None
    with pytest.raises(InputError, match="external data"):  # the walk is not lost after the group
        scan_onnx(group + HIDDEN_EXTERNAL["initializer"]())


def test_scan_never_raises_anything_but_input_error(exported):
    """Random cuts and byte flips of a real graph: the scan returns or raises InputError, nothing else."""
    data = (exported / "explaingan.onnx").read_bytes()
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(150):
        damaged = bytearray(data[: int(rng.integers(0, len(data)))] if rng.random() < 0.5 else data)
        for at in rng.integers(0, max(len(damaged), 1), 3) if damaged else []:
            damaged[at] = int(rng.integers(0, 256))
        try:
            scan_onnx(bytes(damaged), "g.onnx")
            outcomes.add("accepted")
        except InputError as err:
            assert str(err).startswith("g.onnx: ")
            outcomes.add("refused")
    assert outcomes == {"accepted", "refused"}


# --------------------------------------------------------------------------- ops outside the default domain


@pytest.mark.parametrize("name", GRAPHS)
def test_contrib_domain_op_is_refused_in_every_graph(bundle, name):
    """com.microsoft::Gelu in place of a Relu (Elu): ONNX Runtime itself runs it, the bundle reader refuses it."""
    model = onnx.load(bundle / name)
    node = first_activation(model)
    node.op_type, node.domain = "Gelu", "com.microsoft"
    del node.attribute[:]
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    write_model(model, bundle / name)
    rehash(bundle, name)
    assert ort.InferenceSession((bundle / name).read_bytes(), providers=CPU)
    assert "com.microsoft::Gelu" in refused(bundle, "outside the default ONNX domain", name)


# --------------------------------------------------------------------------- links and special files


@pytest.mark.parametrize("name", [*GRAPHS, "manifest.json"])
def test_link_out_of_the_bundle_is_refused(bundle, tmp_path, name):
    """The same bytes (hash matches) reached through a symlink that leaves the bundle folder."""
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(bundle / name, outside)
    (bundle / name).symlink_to(outside)
    refused(bundle, "outside the bundle folder", name)


def test_links_inside_the_bundle_and_to_the_bundle_are_followed(bundle, tmp_path, images):
    (bundle / "store").mkdir()
    shutil.move(bundle / "explaingan.onnx", bundle / "store" / "explaingan.onnx")
    (bundle / "explaingan.onnx").symlink_to(Path("store") / "explaingan.onnx")
    alias = tmp_path / "alias"
    alias.symlink_to(bundle)
    assert load(alias).counterfactual(images, kind="explaingan").flipped.all()


@pytest.mark.parametrize("name", ["classifier.onnx", "exaggeration.onnx"])
def test_fifo_in_a_graph_slot_is_refused_without_hanging(bundle, name):
    (bundle / name).unlink()
    os.mkfifo(bundle / name)
    started = time.perf_counter()
    refused(bundle, "not a regular file", name)
    assert time.perf_counter() - started < 10


def test_symlink_loop_is_refused(bundle):
    (bundle / "exaggeration.onnx").unlink()
    (bundle / "exaggeration.onnx").symlink_to(bundle / "exaggeration.onnx")
    refused(bundle, "cannot resolve the path", "exaggeration.onnx")


# --------------------------------------------------------------------------- the manifest's own size and shape


def test_deeply_nested_manifest_is_refused_before_parsing(bundle):
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(bundle, "nested 100000 levels deep", "manifest.json")


def test_nesting_inside_an_otherwise_valid_manifest_is_bounded(bundle):
    manifest = manifest_of(bundle)
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    manifest["notes"] = deep
    save_manifest(bundle, manifest)
    refused(bundle, r"nested 4\d levels deep; at most 32", "manifest.json")


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(json.dumps({"a": "[[[[{{{{", "b": ["\\\"]]]", [1]]}).encode()) == 3


def test_huge_manifest_is_refused_before_reading(bundle):
    with open(bundle / "manifest.json", "r+b") as handle:
        handle.truncate(200 << 20)  # sparse: 200 MB of size, no data written
    started = time.perf_counter()
    refused(bundle, f"more than the {MAX_MANIFEST_BYTES} bytes allowed", "manifest.json")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(("number", "match"), [("NaN", "NaN is not a number JSON allows"),
                                               ("-Infinity", "-Infinity is not a number JSON allows"),
                                               ("1e400", r"value_range must be \[low, high\] with low < high, got \[0.0, inf\]")])
def test_non_finite_numbers_in_the_manifest_are_refused(bundle, number, match):
    manifest = manifest_of(bundle)
    manifest["input"]["value_range"] = [0.0, "HIGH"]
    save_manifest(bundle, manifest)
    (bundle / "manifest.json").write_text((bundle / "manifest.json").read_text().replace('"HIGH"', number))
    refused(bundle, match, "manifest.json")


# --------------------------------------------------------------------------- declared sizes


GIANT = 64 << 30


def _sparse(path: Path, size: int) -> None:
    path.unlink()
    with open(path, "wb") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("declared", ["as exported", "giant", "not recorded"])
def test_giant_sparse_graph_is_refused_before_reading(bundle, declared):
    """A 64 GiB sparse file in a graph slot: its size is compared with the manifest (or the hard cap)
    before a byte is read."""
    manifest = manifest_of(bundle)
    record = manifest["files"]["classifier.onnx"]
    if declared == "giant":
        record["bytes"] = GIANT
    elif declared == "not recorded":  # bundles written before sizes were recorded still read
        del record["bytes"]
    save_manifest(bundle, manifest)
    if declared == "not recorded":
        read_bundle(bundle)
    _sparse(bundle / "classifier.onnx", GIANT)
    started = time.perf_counter()
    match = {"as exported": f"is {GIANT} bytes but the manifest records", "giant": "the size recorded for classifier.onnx",
             "not recorded": f"more than the {MAX_GRAPH_BYTES} bytes allowed"}[declared]
    refused(bundle, match, "classifier.onnx")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("size", [-1, "3523957", True, 1.5, MAX_GRAPH_BYTES + 1])
def test_recorded_size_must_be_a_sane_integer(bundle, size):
    manifest = manifest_of(bundle)
    manifest["files"]["explaingan.onnx"]["bytes"] = size
    save_manifest(bundle, manifest)
    refused(bundle, "the size recorded for explaingan.onnx must be an integer", "manifest.json")


def test_recorded_sha256_must_be_hex(bundle):
    manifest = manifest_of(bundle)
    manifest["files"]["inpainter.onnx"]["sha256"] = "not a hash"
    save_manifest(bundle, manifest)
    refused(bundle, "the sha256 recorded for inpainter.onnx is not 64 hex digits", "manifest.json")


# --------------------------------------------------------------------------- input spec and class names


def _set(path: tuple[str, ...], value):
    def edit(manifest: dict) -> None:
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


ALLOCATIONS = {
    "batch 1e8": (_set(("input", "batch"), 10**8), f"more than the {MAX_BATCH} rows"),
    "batch just over": (_set(("input", "batch"), MAX_BATCH + 1), f"more than the {MAX_BATCH} rows"),
    "batch of big images": (lambda m: (_set(("input", "batch"), MAX_BATCH)(m), _set(("input", "shape"), [3, 224, 224])(m)),
                            "values per run"),
    "image 1e5 x 1e5": (_set(("input", "shape"), [1, 100_000, 100_000]), "values per image"),
    "too many classes": (_set(("class_names",), [f"c{i}" for i in range(MAX_CLASSES + 1)]), "at most 100000"),
    "duplicate class names": (_set(("class_names",), ["0", "1", "2", "3", "3", "5", "6", "7", "8", "1"]),
                              r"unique; \['1', '3'\] appear more than once"),
    "blank class name": (_set(("class_names",), ["0", " ", "2", "3", "4", "5", "6", "7", "8", "9"]), "non-blank"),
    "overlong class name": (_set(("class_names",), ["x" * 201, *"123456789"]), "at most 200 characters"),
}


@pytest.mark.parametrize("case", list(ALLOCATIONS))
def test_manifest_sizes_are_bounded_before_allocating(bundle, case):
    edit, match = ALLOCATIONS[case]
    manifest = manifest_of(bundle)
    edit(manifest)
    save_manifest(bundle, manifest)
    started = time.perf_counter()
    refused(bundle, match, "manifest.json")
    assert time.perf_counter() - started < 10


# --------------------------------------------------------------------------- graph I/O the manifest does not promise


@pytest.mark.parametrize("name", COUNTERFACTUAL_GRAPHS)
def test_symbolic_image_dims_in_counterfactual_graphs(bundle, name):
    """Symbolic C/H/W in the graph's input (once a raw ValueError: int('d1')) is a clean refusal."""
    model = onnx.load(bundle / name)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "d1"
    write_model(model, bundle / name)
    rehash(bundle, name)
    read_bundle(bundle)
    with pytest.raises(InputError, match=r"input 'x' must have fixed sizes after the batch, got \['N', 1, 'd1', 28\]"):
        load(bundle)


def test_counterfactual_graph_for_other_images(bundle):
    """An Exaggeration graph for 32-px-high images in a bundle of 28-px images (ONNX Runtime loads it)."""
    name = "exaggeration.onnx"
    model = onnx.load(bundle / name)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32
    write_model(model, bundle / name)
    rehash(bundle, name)
    with pytest.raises(InputError, match=r"takes \(1, 32, 28\) images but the bundle's images are \(1, 28, 28\)") as info:
        load(bundle)
    assert name in str(info.value)


@pytest.mark.parametrize(("key", "value", "match"), [
    ("xaisdk.n_bins", "ten", "graph metadata xaisdk.n_bins is 'ten', not an integer"),
    ("xaisdk.n_bins", "1", r"n_bins must be in \[2, "),
    ("xaisdk.target_class", "12", "target class 12 is not one of the bundle's 10 classes"),
])
def test_exaggeration_metadata_is_checked(bundle, key, value, match):
    model = onnx.load(bundle / "exaggeration.onnx")
    next(p for p in model.metadata_props if p.key == key).value = value
    write_model(model, bundle / "exaggeration.onnx")
    rehash(bundle, "exaggeration.onnx")
    with pytest.raises(InputError, match=match):
        load(bundle)


def test_explaingan_duplicate_class_names_in_metadata(bundle):
    model = onnx.load(bundle / "explaingan.onnx")
    next(p for p in model.metadata_props if p.key == "xaisdk.class_names").value = "3,3"
    write_model(model, bundle / "explaingan.onnx")
    rehash(bundle, "explaingan.onnx")
    with pytest.raises(InputError, match="must name two different classes"):
        load(bundle)


# --------------------------------------------------------------------------- corrupt graphs in every slot


CORRUPTIONS = {
    "garbage": lambda data: np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "text": lambda data: b"this is not a graph\n" * 10,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("name", GRAPHS)
def test_corrupt_graph_in_every_slot_is_a_clean_error(bundle, name, corruption):
    path = bundle / name
    path.write_bytes(CORRUPTIONS[corruption](path.read_bytes()))
    rehash(bundle, name)
    with pytest.raises(InputError, match="not a valid ONNX file|ONNX Runtime cannot load this graph") as info:
        load(bundle)
    assert name in str(info.value)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_bare_graph_files_give_clean_errors(exported, tmp_path, corruption):
    """The loaders of bare .onnx files (ExplainGAN, Exaggeration, inpainter): no raw ONNX Runtime
    Fail / InvalidProtobuf escapes."""
    logits = lambda x: np.zeros((len(x), 10), np.float32)  # noqa: E731
    loaders = {"explaingan.onnx": OnnxExplainGAN, "exaggeration.onnx": lambda p: OnnxExaggeration(p, logits),
               "inpainter.onnx": lambda p: OnnxInpainter(p, providers=CPU)}
    for name, loader in loaders.items():
        path = tmp_path / name
        path.write_bytes(CORRUPTIONS[corruption]((exported / name).read_bytes()))
        with pytest.raises(InputError, match="not a valid ONNX file|ONNX Runtime cannot load this graph") as info:
            loader(path)
        assert name in str(info.value)


def test_run_time_failure_of_a_graph_is_a_clean_error(tmp_path):
    """A graph that loads but fails when run (a Reshape to an impossible shape) raises InputError naming it."""
    shape = numpy_helper.from_array(np.array([3, 3], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["image"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28]),
                               helper.make_tensor_value_info("condition", TensorProto.FLOAT, ["N", 10])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, None)], initializer=[shape])
    path = tmp_path / "exaggeration.onnx"
    write_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    runtime = OnnxExaggeration(path, lambda x: np.zeros((len(x), 10), np.float32), target_class=1, n_bins=10)
    with pytest.raises(InputError, match="exaggeration.onnx: ONNX Runtime failed to run this graph"):
        runtime.generate(np.zeros((2, 1, 28, 28), np.float32), np.array([0, 1]))


# --------------------------------------------------------------------------- the serving path stays light


def test_bundle_reading_and_counterfactual_loaders_import_neither_torch_nor_onnx(exported):
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from xaisdk.runtime.bundle import read_bundle
        from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend
        from xaisdk.runtime.explaingan_onnx import OnnxExplainGAN
        from xaisdk.runtime.exaggeration_onnx import OnnxExaggeration
        from xaisdk.runtime.onnx_inpainter import OnnxInpainter

        bundle = read_bundle(sys.argv[1])
        backend = OnnxRuntimeBackend(bundle, providers=["CPUExecutionProvider"])
        OnnxExplainGAN(bundle).transform(np.zeros((1, 1, 28, 28), np.float32))
        OnnxExaggeration(bundle, backend.logits).series(np.zeros((1, 1, 28, 28), np.float32), 3)
        OnnxInpainter(bundle, providers=["CPUExecutionProvider"])
        heavy = sorted(m for m in ("torch", "onnx", "scipy", "matplotlib", "sklearn") if m in sys.modules)
        print("heavy:", heavy)
    """)
    run = subprocess.run([sys.executable, "-c", script, str(exported)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "heavy: []"
