"""Reading a tampered or damaged bundle: every problem is an xaisdk.InputError naming it, never a crash."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from xaisdk.deploy.export import export_bundle
from xaisdk.errors import InputError
from xaisdk.models import shipped_ganmex_path
from xaisdk.runtime.bundle import read_bundle
from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

CPU = ["CPUExecutionProvider"]
GRAPH_FILES = ["classifier.onnx", "classifier_grad.onnx", "deeplift_grad.onnx", "generator_ganmex.onnx"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped GANMEX checkpoint exported once; tests tamper with copies."""
    return export_bundle(shipped_ganmex_path("digits"), tmp_path_factory.mktemp("exported") / "bundle").path


@pytest.fixture()
def bundle(exported, tmp_path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(exported, folder)
    return folder


def load_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def save_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))


def rehash(folder: Path, name: str) -> None:
    """Record the current bytes of ``name`` in the manifest, as a tamperer covering their tracks would."""
    manifest = load_manifest(folder)
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    save_manifest(folder, manifest)


def backend(folder: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(folder, providers=CPU, warmup=True)


def test_intact_copy_reads_and_runs(bundle):
    read = read_bundle(bundle)
    assert sorted(read.graphs) == ["classifier", "classifier_grad", "deeplift_grad", "generator_ganmex"]
    runtime = backend(bundle)
    assert runtime.logits(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)


# --------------------------------------------------------------------------- graph files


@pytest.mark.parametrize("name", GRAPH_FILES)
def test_one_byte_changed_is_a_hash_mismatch(bundle, name):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for load in (read_bundle, backend):
        with pytest.raises(InputError, match="sha256 does not match the manifest") as info:
            load(bundle)
        assert name in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_graph_with_updated_hash_is_refused_by_the_backend(bundle, keep):
    """The hash matches, so only the content tells: the reader's protobuf scan or ONNX Runtime refuses it."""
    path = bundle / "classifier_grad.onnx"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    rehash(bundle, "classifier_grad.onnx")
    with pytest.raises(InputError, match="not a valid ONNX file|ONNX Runtime cannot load this graph") as info:
        backend(bundle)
    assert "classifier_grad.onnx" in str(info.value)


def test_truncated_graph_never_crashes_the_process(bundle):
    """The same in a fresh process, at several cut points (inside the weights, at the end, after the
    graph but before the opset imports that ModelProto serializes last): the process must exit on its
    own terms with the InputError's message, never die of a signal or an uncaught exception."""
    path = bundle / "classifier.onnx"
    data = path.read_bytes()
    model = onnx.load_from_string(data)
    del model.opset_import[:]
    graph_only = len(model.SerializeToString())  # the serialized bytes up to (and with) the graph field
    assert data[:graph_only] == model.SerializeToString()
    cuts = sorted({1, 100, len(data) // 3, len(data) // 2, graph_only, len(data) - 3, len(data) - 1})
    script = textwrap.dedent("""
        import shutil, sys, hashlib, json
        from pathlib import Path
        from xaisdk.errors import InputError
        from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

        src, work = Path(sys.argv[1]), Path(sys.argv[2])
        data = (src / "classifier.onnx").read_bytes()
        failures = 0
        for cut in map(int, sys.argv[3:]):
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(src, work)
            (work / "classifier.onnx").write_bytes(data[:cut])
            manifest = json.loads((work / "manifest.json").read_text())
            manifest["files"]["classifier.onnx"]["sha256"] = hashlib.sha256(data[:cut]).hexdigest()
            manifest["files"]["classifier.onnx"]["bytes"] = cut
            (work / "manifest.json").write_text(json.dumps(manifest))
            try:
                OnnxRuntimeBackend(work, providers=["CPUExecutionProvider"])
            except InputError as err:
                print(f"cut {cut}: {err}", file=sys.stderr)
                failures += 1
        print("torch imported" if "torch" in sys.modules else "torch-free")
        sys.exit(3 if failures == len(sys.argv) - 3 else 4)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", script, str(bundle), str(bundle.parent / "work"), *map(str, cuts)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 3, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("cut ")]
    assert len(lines) == len(cuts)
    assert all(re.search("classifier.onnx: (ONNX Runtime cannot load this graph|not a valid ONNX file)", line)
               for line in lines), lines
    assert run.stdout.strip() == "torch-free"


def test_missing_graph_file(bundle):
    (bundle / "deeplift_grad.onnx").unlink()
    with pytest.raises(InputError, match="bundle file deeplift_grad.onnx is missing"):
        read_bundle(bundle)


def test_graph_file_replaced_by_a_folder(bundle):
    (bundle / "classifier.onnx").unlink()
    (bundle / "classifier.onnx").mkdir()
    with pytest.raises(InputError, match="bundle file classifier.onnx is missing"):
        read_bundle(bundle)


# --------------------------------------------------------------------------- the manifest file


def test_missing_manifest(bundle):
    (bundle / "manifest.json").unlink()
    with pytest.raises(InputError, match=r"not a bundle \(no manifest.json\)"):
        read_bundle(bundle)
    with pytest.raises(InputError, match="no manifest.json"):
        backend(bundle)


def test_missing_bundle_folder(tmp_path):
    with pytest.raises(InputError, match="no such bundle folder"):
        read_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize(("content", "message"), [
    (b'{"schema": "xaisdk.bundle", ', "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[1, 2, 3]", "not an xaisdk bundle manifest"),
    (b'"xaisdk.bundle"', "not an xaisdk bundle manifest"),
    (b'{"schema": "something.else", "schema_version": 1}', "not an xaisdk bundle manifest"),
])
def test_manifest_that_is_not_a_bundle_manifest(bundle, content, message):
    (bundle / "manifest.json").write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        read_bundle(bundle)
    assert "manifest.json" in str(info.value)


@pytest.mark.parametrize("version", [2, 0, "1", None, 1.5])
def test_wrong_schema_version(bundle, version):
    manifest = load_manifest(bundle)
    manifest["schema_version"] = version
    save_manifest(bundle, manifest)
    with pytest.raises(InputError, match=f"bundle schema version {version!r}; this xaisdk reads version 1"):
        read_bundle(bundle)


def _drop(*keys):
    def edit(manifest):
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return edit


def _set(value, *keys):
    def edit(manifest):
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


BROKEN_MANIFESTS = {
    "no schema_version": (_drop("schema_version"), "schema version None"),
    "no input": (_drop("input"), "manifest is missing 'input'"),
    "no class_names": (_drop("class_names"), "manifest is missing 'class_names'"),
    "no graphs": (_drop("graphs"), "manifest is missing 'graphs'"),
    "no files": (_drop("files"), "manifest is missing 'files'"),
    "no input shape": (_drop("input", "shape"), "manifest is missing 'shape'"),
    "no value_range": (_drop("input", "value_range"), "manifest is missing 'value_range'"),
    "no classifier graph": (_drop("graphs", "classifier"), r"lacks the required graphs \['classifier'\]"),
    "no graph file": (_drop("graphs", "classifier_grad", "file"), "manifest is missing 'file'"),
    "no graph inputs": (_drop("graphs", "classifier_grad", "inputs"), "manifest is missing 'inputs'"),
    "no sha256 record": (_drop("files", "classifier.onnx"), "no sha256 recorded for classifier.onnx"),
    "input is a list": (_set([1, 28, 28], "input"), "field 'input' has the wrong type"),
    "shape is a string": (_set("1x28x28", "input", "shape"), "field 'shape' has the wrong type"),
    "shape of floats": (_set([1, 28.0, 28], "input", "shape"), "input shape must be three positive integers"),
    "shape of bools": (_set([True, 28, 28], "input", "shape"), "input shape must be three positive integers"),
    "shape of two": (_set([28, 28], "input", "shape"), "input shape must be three positive integers"),
    "layout NHWC": (_set("NHWC", "input", "layout"), "unsupported input layout/dtype 'NHWC'"),
    "dtype float16": (_set("float16", "input", "dtype"), "unsupported input layout/dtype 'NCHW'/'float16'"),
    "value_range strings": (_set(["0", "1"], "input", "value_range"), "value_range must be"),
    "value_range reversed": (_set([1.0, 0.0], "input", "value_range"), "value_range must be"),
    "batch a string": (_set("4", "input", "batch"), "input batch must be a positive integer or null"),
    "batch zero": (_set(0, "input", "batch"), "input batch must be a positive integer or null"),
    "class_names a string": (_set("0123456789", "class_names"), "field 'class_names' has the wrong type"),
    "class_names of ints": (_set(list(range(10)), "class_names"), "class_names must list at least two names"),
    "one class": (_set(["0"], "class_names"), "class_names must list at least two names"),
    "graphs a list": (_set([], "graphs"), "field 'graphs' has the wrong type"),
    "files a list": (_set([], "files"), "field 'files' has the wrong type"),
    "graph a string": (_set("classifier.onnx", "graphs", "classifier"), "graph 'classifier' must be an object"),
    "file a number": (_set(3, "graphs", "classifier", "file"), "field 'file' has the wrong type"),
    "inputs a list": (_set(["x"], "graphs", "classifier", "inputs"), "field 'inputs' has the wrong type"),
    "unknown role": (_set({"file": "classifier.onnx", "inputs": {}, "outputs": {}}, "graphs", "explainer"),
                     r"unknown graph roles \['explainer'\]"),
    "sha256 a number": (_set({"sha256": 5}, "files", "classifier.onnx"), "no sha256 recorded for classifier.onnx"),
}


@pytest.mark.parametrize("case", list(BROKEN_MANIFESTS))
def test_manifest_with_missing_fields_or_wrong_types(bundle, case):
    edit, message = BROKEN_MANIFESTS[case]
    manifest = load_manifest(bundle)
    edit(manifest)
    save_manifest(bundle, manifest)
    for load in (read_bundle, backend):
        with pytest.raises(InputError, match=message) as info:
            load(bundle)
        assert "manifest.json" in str(info.value)


@pytest.mark.parametrize("name", ["../x.onnx", "sub/classifier.onnx", "/tmp/x.onnx", "", ".", ".."])
def test_graph_file_name_with_a_path_is_refused(bundle, name):
    """Even when the file there exists and its hash is recorded, only plain names inside the bundle count."""
    outside = (bundle / name) if name not in ("", ".", "..") and not name.startswith("/") else None
    if outside is not None:
        outside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bundle / "classifier.onnx", outside)
    manifest = load_manifest(bundle)
    manifest["graphs"]["classifier"]["file"] = name
    manifest["files"][name] = manifest["files"]["classifier.onnx"]
    save_manifest(bundle, manifest)
    with pytest.raises(InputError, match="must be a plain file name inside the bundle") as info:
        read_bundle(bundle)
    assert repr(name) in str(info.value)


# --------------------------------------------------------------------------- manifest vs graphs


def test_graph_io_names_differ_from_the_manifest(bundle):
    """A graph whose output was renamed (hash updated): the backend compares the graph with the manifest."""
    model = onnx.load(bundle / "classifier.onnx")
    for node in model.graph.node:
        node.output[:] = ["probs" if name == "logits" else name for name in node.output]
    model.graph.output[0].name = "probs"
    onnx.checker.check_model(model)
    (bundle / "classifier.onnx").write_bytes(model.SerializeToString())
    rehash(bundle, "classifier.onnx")
    read_bundle(bundle)  # the manifest itself is consistent
    with pytest.raises(InputError, match="differs from the manifest") as info:
        backend(bundle)
    assert "classifier.onnx" in str(info.value) and "probs" in str(info.value)


def test_role_pointing_at_another_graph(bundle):
    manifest = load_manifest(bundle)
    manifest["graphs"]["classifier"]["file"] = "classifier_grad.onnx"
    save_manifest(bundle, manifest)
    with pytest.raises(InputError, match="differs from the manifest"):
        backend(bundle)


def test_manifest_io_names_differ_from_the_role(bundle):
    manifest = load_manifest(bundle)
    manifest["graphs"]["classifier_grad"]["inputs"] = {"image": ["N", 1, 28, 28], "w": ["N", 10]}
    save_manifest(bundle, manifest)
    with pytest.raises(InputError, match=r"graph 'classifier_grad' must have inputs \['x', 'w'\]"):
        read_bundle(bundle)


@pytest.mark.parametrize(("edit", "tensor"), [
    (_set([1, 27, 27], "input", "shape"), "'x'"),
    (_set([3, 28, 28], "input", "shape"), "'x'"),
    (_set([str(i) for i in range(9)], "class_names"), "'logits'"),
    (_set([str(i) for i in range(11)], "class_names"), "'logits'"),
])
def test_manifest_input_spec_that_does_not_fit_the_graphs(bundle, edit, tensor):
    """The manifest is not hashed: an input shape or class count that the graphs do not have must be
    reported when the backend opens them, not as an ONNX Runtime error on the first run."""
    manifest = load_manifest(bundle)
    edit(manifest)
    save_manifest(bundle, manifest)
    with pytest.raises(InputError, match="relu_path: "):  # the relu-path's arrays no longer chain either
        read_bundle(bundle)
    manifest.pop("relu_path")  # without it, the graphs are what must disagree
    save_manifest(bundle, manifest)
    read_bundle(bundle)
    for warmup in (True, False):
        with pytest.raises(InputError, match="in the graph, but the manifest's input spec") as info:
            OnnxRuntimeBackend(bundle, providers=CPU, warmup=warmup)
        assert tensor in str(info.value) and "classifier.onnx" in str(info.value)


def test_manifest_batch_that_does_not_fit_the_graphs(bundle, tmp_path):
    """A fixed-batch bundle whose manifest claims a dynamic batch (and the other way round, which works)."""
    fixed = export_bundle(shipped_ganmex_path("digits"), tmp_path / "fixed", batch=3).path
    manifest = load_manifest(fixed)
    manifest["input"]["batch"] = None
    save_manifest(fixed, manifest)
    with pytest.raises(InputError, match=r"\[3, 1, 28, 28\] in the graph.*\['N', 1, 28, 28\]"):
        backend(fixed)

    manifest = load_manifest(bundle)
    manifest["input"]["batch"] = 4  # dynamic graphs run fixed chunks of 4 rows fine
    save_manifest(bundle, manifest)
    assert backend(bundle).logits(np.zeros((5, 1, 28, 28), np.float32)).shape == (5, 10)
