"""Run by .ci/run in the slim environment (``pip install '.[serve,server]'``: no torch): ``xaisdk serve``
started as a subprocess on a free loopback port answers KServe V1 and Open Inference Protocol V2
requests with the torch reference attributions, never imports torch, and exits 0 on SIGTERM.

Needs ``XAISDK_SLIM_WORK``: the folder ``make_reference.py`` filled with a bundle and torch-backend
reference explanations (as for ``test_serving_without_torch.py``). The server runs under
``python -X importtime``, so every module it ever imports is listed in its log. The tests share one
server and run in file order; the last one stops it.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

WORK = Path(os.environ.get("XAISDK_SLIM_WORK", ""))
CASES = [("ig", {"n_steps": 64}), ("deeplift", {}), ("occlusion", {"window": 4, "stride": 4})]
HOST = "127.0.0.1"
NAME = "bundle"  # the model name defaults to the bundle folder's name


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    assert (WORK / "reference.npz").is_file(), "set XAISDK_SLIM_WORK to the folder make_reference.py wrote"
    return dict(np.load(WORK / "reference.npz"))


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            response = conn.getresponse()
            payload = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        if headers.get("content-type", "").startswith("application/json"):
            return response.status, headers, json.loads(payload)
        return response.status, headers, payload.decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "xaisdk.cli", "serve", str(WORK / "bundle"),
                                    "--host", HOST, "--port", str(port), "--max-steps", "256"],
                                   stdout=out, stderr=subprocess.STDOUT)
    srv = Server(process, port, log)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the server was not ready after 120 s:\n{log.read_text()[-3000:]}"
        try:
            if srv.request("GET", "/v2/health/ready")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    yield srv
    if process.poll() is None:
        process.kill()
        process.wait()


def png_b64(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def instances(reference: dict[str, np.ndarray]) -> list[dict]:
    return [{"b64": png_b64(image[0])} for image in reference["x"]]  # x: (3, 1, 28, 28) uint8


def assert_matches(got: np.ndarray, score: Any, reference: dict[str, np.ndarray], method: str) -> None:
    """The slim tests' tolerance: max abs difference <= 1e-4 x max |reference|; scores to rtol 1e-4."""
    want = reference[f"{method}_attributions"]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.allclose(score, reference[f"{method}_score"], rtol=1e-4, atol=1e-5)


def test_environment_has_no_torch():
    assert importlib.util.find_spec("torch") is None, "torch is installed in the slim environment"
    for needed in ("fastapi", "uvicorn", "prometheus_client", "onnxruntime"):
        assert importlib.util.find_spec(needed) is not None, f"{needed} is missing: pip install '.[serve,server]'"


def test_health_and_metadata(server):
    status, _, body = server.request("GET", "/v2/health/live")
    assert (status, body) == (200, {"live": True})
    status, _, body = server.request("GET", "/v2/health/ready")
    assert (status, body) == (200, {"ready": True})
    status, _, meta = server.request("GET", f"/v2/models/{NAME}")
    assert status == 200 and meta["name"] == NAME and meta["platform"] == "onnxruntime"
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert meta["parameters"]["has_generator"] is True
    assert server.request("GET", f"/v2/models/{NAME}/ready")[0] == 200
    assert server.request("GET", "/v2/models/other/ready")[0] == 404


def test_v1_predict(server, reference):
    status, _, body = server.request("POST", f"/v1/models/{NAME}:predict", {"instances": instances(reference)})
    assert status == 200, body
    labels = [p["label"] for p in body["predictions"]]
    assert labels == ((reference["target"] - 1) % 10).tolist()  # make_reference.py: target = predicted + 1 mod 10
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-6 for p in body["predictions"])


@pytest.mark.parametrize("method,options", CASES)
def test_v1_explain_matches_torch(server, reference, method, options):
    request = {"instances": instances(reference),
               "parameters": {"method": method, "target": reference["target"].tolist(), **options}}
    status, _, body = server.request("POST", f"/v1/models/{NAME}:explain", request)
    assert status == 200, body
    rows = body["explanations"]
    assert [r["target"] for r in rows] == reference["target"].tolist()
    assert all(r["baseline"] == "ganmex" and r["method"] == method for r in rows)
    assert_matches(np.asarray([r["attributions"] for r in rows]), [r["score"] for r in rows], reference, method)


def test_v1_explain_per_image_target_and_png(server, reference):
    request = {"instances": [{"image": i, "target": int(t)} for i, t in zip(instances(reference), reference["target"])],
               "parameters": {"n_steps": 64, "output": "both"}}
    status, _, body = server.request("POST", f"/v1/models/{NAME}:explain", request)
    assert status == 200, body
    rows = body["explanations"]
    assert_matches(np.asarray([r["attributions"] for r in rows]), [r["score"] for r in rows], reference, "ig")
    assert base64.b64decode(rows[0]["overlay_png_b64"]).startswith(b"\x89PNG")


def test_v2_infer_explain_matches_torch(server, reference):
    x, target = reference["x"], reference["target"]
    request = {"id": "slim-1", "inputs": [
        {"name": "image", "shape": list(x.shape), "datatype": "UINT8", "data": x.ravel().tolist()},
        {"name": "target", "shape": [len(target)], "datatype": "INT64", "data": target.tolist()}],
        "parameters": {"explain": True, "method": "ig", "n_steps": 64}}
    status, _, body = server.request("POST", f"/v2/models/{NAME}/infer", request)
    assert status == 200, body
    assert body["model_name"] == NAME and body["id"] == "slim-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    attributions = np.asarray(outputs["attributions"]["data"], dtype=np.float64).reshape(outputs["attributions"]["shape"])
    assert outputs["target"]["data"] == target.tolist()
    assert_matches(attributions, outputs["score"]["data"], reference, "ig")


def test_v2_infer_predict_bytes(server, reference):
    data = [i["b64"] for i in instances(reference)]
    request = {"inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}]}
    status, _, body = server.request("POST", f"/v2/models/{NAME}/infer", request)
    assert status == 200, body
    labels = {o["name"]: o for o in body["outputs"]}["label"]["data"]
    assert labels == ((reference["target"] - 1) % 10).tolist()


def test_bad_requests_are_4xx(server, reference):
    status, _, body = server.request("POST", f"/v1/models/{NAME}:explain", {"instances": instances(reference)[:1],
                                                                          "parameters": {"n_steps": 257}})
    assert status == 400 and "n_steps" in body["error"]
    assert server.request("POST", "/v1/models/other:explain", {"instances": []})[0] == 404
    assert server.request("GET", f"/v1/models/{NAME}:explain")[0] == 405
    status, _, body = server.request("POST", f"/v2/models/{NAME}/infer", {"inputs": [
        {"name": "image", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 10}]})
    assert status == 400 and "shape" in body["error"]


def test_metrics(server):
    status, _, text = server.request("GET", "/metrics")
    assert status == 200
    assert re.search(r'^xaisdk_requests_total\{route="/v1/models/\{name\}:explain",status="200"\} [1-9]', text, re.M)
    assert re.search(r"^xaisdk_queue_depth 0\.0$", text, re.M)


def test_server_never_imports_torch_and_stops_on_sigterm(server):
    maps = Path(f"/proc/{server.process.pid}/maps")
    if maps.exists():
        assert "libtorch" not in maps.read_text()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    log = server.log.read_text(errors="replace")
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", log, re.M)
    assert "xaisdk.serve.app" in imported and "onnxruntime" in imported  # -X importtime did list the imports
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
