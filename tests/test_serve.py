"""`xaisdk serve`, tested as a client sees it: real server processes on free loopback ports, real HTTP.

Answers are checked against the in-process :class:`xaisdk.Explainer` on the same bundle; every error
path by status code and message; concurrency (rows of different requests share backend calls and
still get their own answers); admission (503 + Retry-After), deadlines (504), readiness before
warm-up, graceful shutdown that finishes the requests in flight, metrics and the access log.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaisdk.data import load_digits
from xaisdk.errors import InputError
from xaisdk.explainer import Explainer, runner_up
from xaisdk.serve.batching import BatchingBackend, RequestAborted, RequestContext, request_context

MODEL = "digits"


# --- helpers ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `xaisdk serve` subprocess and a tiny HTTP client for it."""

    def __init__(self, bundle: Path, *options: str, wait_ready: bool = True) -> None:
        self.port = _free_port()
        self.log = io.BytesIO()
        cmd = [sys.executable, "-m", "xaisdk.cli", "serve", str(bundle), "--port", str(self.port), "--name", MODEL, *options]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.wait_live()
        if wait_ready:
            self.wait_ready()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.write(line)

    def request(self, method: str, path: str, body: object = None, *, raw: bytes | None = None,
                headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        try:
            parsed = json.loads(payload) if payload else None
        except json.JSONDecodeError:
            parsed = payload.decode("utf-8", "replace")
        return response.status, dict(response.getheaders()), parsed

    def wait_live(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.getvalue().decode()[-2000:]}")
            try:
                if self.request("GET", "/v2/health/live", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server never became live")

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.request("GET", "/v2/health/ready")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError("server never became ready")

    def metric(self, name: str) -> float:
        _, _, text = self.request("GET", "/metrics")
        total = 0.0
        for line in str(text).splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=5)
        return code


def _png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _close(got: np.ndarray, want: np.ndarray) -> None:
    scale = float(np.abs(want).max()) or 1.0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * scale)


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from xaisdk.deploy.export import export_bundle
    from xaisdk.models import shipped_ganmex_path

    path = tmp_path_factory.mktemp("serve") / "bundle"
    export_bundle(shipped_ganmex_path("digits"), path)
    return path


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.round(load_digits().test.x[:6, 0] * 255).astype(np.uint8)  # (6, 28, 28)


@pytest.fixture(scope="module")
def local(bundle) -> Explainer:
    return Explainer.load(bundle)


@pytest.fixture(scope="module")
def server(bundle):
    srv = Server(bundle, "--max-wait-ms", "20", "--max-body-mb", "1", "--max-images", "8", "--max-steps", "512",
                 "--direct-rows", "4096")  # every call goes through the batcher (the CPU default sends IG calls direct)
    yield srv
    assert srv.stop() == 0


# --- answers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,options", [("ig", {"n_steps": 64}), ("deeplift", {}), ("occlusion", {"window": 4, "stride": 4}),
                                            ("ig", {"n_steps": 32, "rule": "gausslegendre"}),
                                            ("ig", {"n_steps": "auto", "tolerance": 0.005}), ("ig", {})])
def test_v1_explain_equals_the_explainer(server, local, images, method, options):
    x = images[:3]
    status, _, body = server.request("POST", f"/v1/models/{MODEL}:explain", {
        "instances": [{"b64": _png_b64(im)} for im in x], "parameters": {"method": method, **options}})
    assert status == 200, body
    want = local.explain(x[:, None], "runner-up", method=method, baseline="ganmex", **options)
    rows = body["explanations"]
    assert [r["target"] for r in rows] == list(want.target) == list(runner_up(local.logits(x[:, None]), want.source))
    assert [r["source"] for r in rows] == list(want.source)
    _close(np.array([r["attributions"] for r in rows], np.float32), want.attributions)
    _close(np.array([r["score"] for r in rows]), want.score)
    if want.convergence_delta is not None:
        _close(np.array([r["convergence_delta"] for r in rows]), want.convergence_delta)
    if method == "ig":  # path points per image: the fixed count, or each image's own with "auto" (the default)
        assert [r["n_steps"] for r in rows] == np.broadcast_to(want.n_steps, 3).tolist()
        assert [r.get("converged") for r in rows] == ([None] * 3 if want.converged is None else want.converged.tolist())
    assert all(r["baseline"] == "ganmex" and r["target_name"] == str(r["target"]) for r in rows)


def test_v1_tensor_instances_per_image_targets_and_png_overlay(server, local, images):
    x = images[:2]
    status, _, body = server.request("POST", f"/v1/models/{MODEL}:explain", {
        "instances": [{"image": x[0].tolist(), "target": 3}, {"image": (x[1] / 255.0).tolist(), "target": "5"}],
        "parameters": {"method": "ig", "n_steps": 48, "baseline": "zero", "output": "both", "source": None}})
    assert status == 200, body
    want = local.explain(x[:, None], [3, 5], method="ig", baseline="zero", n_steps=48)
    rows = body["explanations"]
    _close(np.array([r["attributions"] for r in rows], np.float32), want.attributions)
    overlay = Image.open(io.BytesIO(base64.b64decode(rows[0]["overlay_png_b64"])))
    assert overlay.size == (28, 28) and overlay.mode == "RGB"


def test_v1_predict_and_v2_infer_predict_equal_the_logits(server, local, images):
    x = images[:4]
    want = local.logits(x[:, None])
    status, _, body = server.request("POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": _png_b64(im)} for im in x]})
    assert status == 200, body
    _close(np.array([p["logits"] for p in body["predictions"]], np.float32), want)
    assert [p["label"] for p in body["predictions"]] == want.argmax(1).tolist()
    np.testing.assert_allclose([sum(p["probabilities"]) for p in body["predictions"]], 1.0, rtol=1e-9)
    status, _, body = server.request("POST", f"/v2/models/{MODEL}/infer", {
        "id": "r1", "inputs": [{"name": "image", "shape": [4, 1, 28, 28], "datatype": "UINT8", "data": x.ravel().tolist()}]})
    assert status == 200 and body["id"] == "r1" and body["model_name"] == MODEL, body
    outputs = {o["name"]: o for o in body["outputs"]}
    _close(np.array(outputs["logits"]["data"], np.float32).reshape(outputs["logits"]["shape"]), want)
    assert outputs["label"]["data"] == want.argmax(1).tolist()


@pytest.mark.parametrize("datatype", ["UINT8", "FP32", "BYTES"])
def test_v2_infer_explain_equals_the_explainer(server, local, images, datatype):
    x = images[2:4]
    if datatype == "BYTES":
        tensor = {"name": "image", "shape": [2], "datatype": "BYTES", "data": [_png_b64(im) for im in x]}
    elif datatype == "FP32":
        tensor = {"name": "image", "shape": [2, 28, 28], "datatype": "FP32", "data": (x / 255.0).ravel().tolist()}
    else:
        tensor = {"name": "image", "shape": [2, 28, 28], "datatype": "UINT8", "data": x.ravel().tolist()}
    status, _, body = server.request("POST", f"/v2/models/{MODEL}/infer", {
        "inputs": [tensor, {"name": "target", "shape": [2], "datatype": "INT64", "data": [0, 9]}],
        "parameters": {"explain": True, "method": "ig", "n_steps": 40}})
    assert status == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    want = local.explain(x[:, None], [0, 9], method="ig", baseline="ganmex", n_steps=40)
    got = np.array(outputs["attributions"]["data"], np.float32).reshape(outputs["attributions"]["shape"])
    _close(got, want.attributions)
    assert outputs["target"]["data"] == [0, 9] and outputs["source"]["data"] == list(want.source)
    _close(np.array(outputs["baseline_score"]["data"]), want.baseline_score)
    assert body["parameters"] == {"method": "ig", "baseline": "ganmex"}


def test_health_metadata_and_v1_model_routes(server):
    assert server.request("GET", "/v2/health/live")[2] == {"live": True}
    assert server.request("GET", "/v2/health/ready")[2] == {"ready": True}
    assert server.request("GET", f"/v2/models/{MODEL}/ready")[2] == {"name": MODEL, "ready": True}
    status, _, meta = server.request("GET", f"/v2/models/{MODEL}")
    assert status == 200 and meta["inputs"][0]["shape"] == [-1, 1, 28, 28] and meta["platform"] == "onnxruntime"
    assert meta["parameters"]["class_names"] == [str(i) for i in range(10)] and meta["parameters"]["has_generator"]
    assert server.request("GET", "/v1/models")[2] == {"models": [MODEL]}
    assert server.request("GET", f"/v1/models/{MODEL}")[2] == {"name": MODEL, "ready": True}


def test_concurrent_requests_share_backend_calls_and_each_gets_its_own_answer(server, local, images):
    before_calls = server.metric('xaisdk_batch_requests_count{primitive="score_gradient"}')
    before_merged = server.metric('xaisdk_batch_requests_sum{primitive="score_gradient"}')
    targets = [(int(t) + 1 + k) % 10 for k, t in enumerate(local.predict(images[:, None]))]
    targets = [t if t != s else (t + 1) % 10 for t, s in zip(targets, local.predict(images[:, None]))]

    def one(k: int):  # n_steps="auto": batched gradient rounds (a fixed count takes the relu-path, one call per request)
        return server.request("POST", f"/v1/models/{MODEL}:explain", {
            "instances": [{"b64": _png_b64(images[k])}], "parameters": {"method": "ig", "n_steps": "auto", "target": targets[k]}})

    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(one, range(len(images))))
    for k, (status, _, body) in enumerate(answers):
        assert status == 200, body
        want = local.explain(images[k][None, None], targets[k], method="ig", baseline="ganmex", n_steps="auto")
        _close(np.array(body["explanations"][0]["attributions"], np.float32), want.attributions[0])
    calls = server.metric('xaisdk_batch_requests_count{primitive="score_gradient"}') - before_calls
    merged = server.metric('xaisdk_batch_requests_sum{primitive="score_gradient"}') - before_merged
    # every request's rounds went to score_gradient (one or more each), and at least two requests shared a call
    assert merged >= len(images) and calls < merged



def test_fixed_step_ig_takes_the_bundle_relu_path_per_request(server, local, images):
    """The digits bundle carries a relu-path split: a fixed-step IG request runs it in one call from its own thread
    (not as merged gradient rows), with the local Explainer's very numbers."""
    assert local.backend.uses_relu_path
    key = 'xaisdk_batch_requests_count{primitive="fused_integrated_gradients"}'
    before = server.metric(key)
    status, _, body = server.request("POST", f"/v1/models/{MODEL}:explain", {
        "instances": [{"b64": _png_b64(images[0])}], "parameters": {"method": "ig", "n_steps": 200, "target": 4}})
    assert status == 200, body
    want = local.explain(images[0][None, None], 4, method="ig", baseline="ganmex", n_steps=200)
    np.testing.assert_array_equal(np.array(body["explanations"][0]["attributions"], np.float32), want.attributions[0])
    assert server.metric(key) == before + 1


# --- errors -------------------------------------------------------------------------------------

BAD = [
    ("POST", f"/v1/models/{MODEL}:explain", b"{", 400, "not valid JSON"),
    ("POST", f"/v1/models/{MODEL}:explain", b"[1]", 400, "expected a JSON object"),
    ("POST", f"/v1/models/{MODEL}:explain", b'{"instances": []}', 400, "non-empty list"),
    ("POST", f"/v1/models/{MODEL}:explain", b'{"instances": [{"b64": "%%%"}]}', 400, "not valid base64"),
    ("POST", f"/v1/models/{MODEL}:explain", b'{"instances": [{"b64": "aGVsbG8="}]}', 400, "not an image"),
    ("POST", f"/v1/models/{MODEL}:explain", b'{"instances": [[[1, 2], [3, 4]]]}', 400, "image 0"),
    ("POST", f"/v1/models/{MODEL}:explain", b'{"instances": [[["a"]]]}', 400, "tensor"),
    ("POST", f"/v1/models/{MODEL}:explain", None, 400, "unknown option 'steps'"),
    ("POST", f"/v1/models/{MODEL}:explain", None, 400, "n_steps: 5000 is above the limit of 512"),
    ("POST", f"/v1/models/{MODEL}:explain", None, 400, "method: unknown 'magic'"),
    ("POST", f"/v1/models/{MODEL}:explain", None, 400, "unknown class name 'cat'"),
    ("POST", f"/v1/models/{MODEL}:explain", None, 400, "above this server's limit of 8"),
    ("POST", f"/v1/models/{MODEL}:explain", None, 400, "image is 20 x 20, the model takes 28 x 28"),
    ("POST", f"/v1/models/{MODEL}:explain", None, 400, "expected a number or one of"),
    ("POST", f"/v2/models/{MODEL}/infer", b'{"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "INT4", "data": []}]}',
     400, "datatype must be one of"),
    ("POST", f"/v2/models/{MODEL}/infer", b'{"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "UINT8", '
     b'"data": [1, 2]}]}',
     400, "2 values for shape [1, 28, 28]"),
    ("POST", f"/v2/models/{MODEL}/infer", b'{"inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "UINT8", '
     b'"data": [1, 2, 3, 300]}]}',
     400, "UINT8 data must be integers in 0..255"),
    ("POST", f"/v2/models/{MODEL}/infer", b'{"inputs": [], "parameters": {"method": "ig"}}', 400, 'without "explain": true'),
    ("POST", f"/v2/models/{MODEL}/infer", b'{"inputs": "x"}', 400, "non-empty list of tensors"),
    ("POST", "/v1/models/other:explain", b'{"instances": []}', 404, "unknown model 'other'"),
    ("POST", "/v2/models/other/infer", b'{"inputs": []}', 404, "unknown model 'other'"),
    ("GET", "/no/such/route", None, 404, "Not Found"),
    ("GET", f"/v1/models/{MODEL}:explain", None, 405, "Method Not Allowed"),
    ("DELETE", f"/v2/models/{MODEL}/infer", None, 405, "Method Not Allowed"),
]


def _bad_body(message: str, image: np.ndarray) -> bytes | None:
    good = {"instances": [{"b64": _png_b64(image)}]}
    bodies = {
        "unknown option 'steps'": {**good, "parameters": {"steps": 3}},
        "n_steps: 5000 is above the limit of 512": {**good, "parameters": {"n_steps": 5000}},
        "method: unknown 'magic'": {**good, "parameters": {"method": "magic"}},
        "unknown class name 'cat'": {**good, "parameters": {"target": "cat"}},
        "above this server's limit of 8": {"instances": good["instances"] * 9},
        "image is 20 x 20, the model takes 28 x 28": {"instances": [{"b64": _png_b64(np.zeros((20, 20), np.uint8))}]},
        "expected a number or one of": {**good, "parameters": {"baseline": "sunset"}},
    }
    return json.dumps(bodies[message]).encode() if message in bodies else None


@pytest.mark.parametrize("method,path,raw,status,message", BAD, ids=[f"{b[3]}-{b[4][:30]}" for b in BAD])
def test_bad_requests_get_a_4xx_with_the_reason(server, images, method, path, raw, status, message):
    body = raw if raw is not None else _bad_body(message, images[0])
    got_status, _, got = server.request(method, path, raw=body)
    assert got_status == status and message in got["error"], got


def test_oversized_body_is_413_and_the_server_stays_healthy(server, images):
    status, _, body = server.request("POST", f"/v1/models/{MODEL}:explain", raw=b" " * (2 << 20))
    assert status == 413 and "above the limit" in body["error"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # no Content-Length: chunked body
    conn.putrequest("POST", f"/v1/models/{MODEL}:predict")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b" " * 65536
    try:
        for _ in range(20):
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        assert response.status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer 413 and close before the rest is sent
    finally:
        conn.close()
    status, _, body = server.request("POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": _png_b64(images[0])}]})
    assert status == 200 and len(body["predictions"]) == 1


def test_metrics_and_the_access_log(server):
    server.request("GET", "/v2/health/live")
    server.request("GET", "/no/such/route")
    assert server.metric('xaisdk_requests_total{route="/v2/health/live",status="200"}') >= 1
    assert server.metric('xaisdk_requests_total{route="other",status="404"}') >= 1
    assert server.metric("xaisdk_request_seconds_count") >= 2
    assert server.metric("xaisdk_queue_depth") == 0
    time.sleep(0.2)
    lines = [json.loads(line) for line in server.log.getvalue().decode().splitlines() if line.startswith("{")]
    missing = [line for line in lines if line.get("path") == "/no/such/route" and line["status"] == 404]
    assert missing and {"time", "client", "method", "route", "ms", "bytes_out"} <= set(missing[0])


# --- admission, deadlines, readiness, shutdown ----------------------------------------------------

def _slow_body(images: np.ndarray, n_steps: int = 512) -> dict:
    return {"instances": [{"b64": _png_b64(im)} for im in images], "parameters": {"method": "ig", "n_steps": n_steps}}


def test_a_full_house_answers_503_with_retry_after_and_the_deadline_504(bundle, images):
    # 16 images x 65536 path points hold the relu-path for tens of seconds on any CPU, so the 1 s deadline
    # always passes first; the abandoned request must then stop within one pass of the loop, not at its end
    srv = Server(bundle, "--max-queue", "1", "--timeout-s", "1", "--max-steps", "65536")
    try:
        many = np.concatenate([images] * 3)[:16]
        slow = {"instances": [{"b64": _png_b64(im)} for im in many], "parameters": {"method": "ig", "n_steps": 65536}}
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(srv.request, "POST", f"/v1/models/{MODEL}:explain", slow)
            end = time.monotonic() + 10
            while srv.metric("xaisdk_queue_depth") < 1 and time.monotonic() < end:
                time.sleep(0.01)
            predict = {"instances": [{"b64": _png_b64(images[0])}]}
            status, headers, body = srv.request("POST", f"/v1/models/{MODEL}:predict", predict)
            assert status == 503 and headers.get("retry-after") == "1" and "max_queue 1" in body["error"]
            status, _, body = first.result()
        assert status == 504 and "deadline of 1 s" in body["error"]
        end = time.monotonic() + 10  # the abandoned request stops at its next backend call or relu-path pass
        while srv.metric("xaisdk_queue_depth") > 0 and time.monotonic() < end:
            time.sleep(0.05)
        assert srv.metric("xaisdk_queue_depth") == 0
        assert srv.metric('xaisdk_rejected_total{reason="queue_full"}') == 1
        assert srv.request("POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": _png_b64(images[0])}]})[0] == 200
    finally:
        assert srv.stop() == 0
    assert "Traceback" not in srv.log.getvalue().decode()  # an abandoned request is an access-log line, not an error


def test_ready_only_after_load_and_warm_up(bundle, images):
    srv = Server(bundle, "--warmup", "30", wait_ready=False)
    try:
        status, headers, body = srv.request("GET", "/v2/health/ready")
        assert status == 503 and body["ready"] is False
        status, headers, body = srv.request("POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": _png_b64(images[0])}]})
        assert status == 503 and headers.get("retry-after") == "1" and "loading" in body["error"]
        assert srv.request("GET", "/v2/health/live")[0] == 200
        srv.wait_ready()
        assert srv.request("GET", f"/v2/models/{MODEL}/ready")[2]["ready"] is True
    finally:
        assert srv.stop() == 0


def test_shutdown_finishes_the_requests_in_flight(bundle, images):
    srv = Server(bundle, "--max-steps", "4096")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(srv.request, "POST", f"/v1/models/{MODEL}:explain", _slow_body(images, 2048))
        end = time.monotonic() + 10
        while srv.metric("xaisdk_queue_depth") < 1 and time.monotonic() < end:
            time.sleep(0.01)
        srv.process.send_signal(signal.SIGTERM)
        status, _, body = slow.result()
    assert status == 200 and len(body["explanations"]) == len(images)
    # the server exits by itself after the drain: a second SIGTERM from stop() could land during the interpreter's
    # shutdown, after Python restored the default handler (seen as -15 when the request finished quickly)
    assert srv.process.wait(timeout=60) == 0
    assert srv.stop() == 0
    with pytest.raises(OSError):
        srv.request("GET", "/v2/health/live", timeout=2)


def test_a_missing_bundle_is_a_clean_cli_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "xaisdk.cli", "serve", str(tmp_path / "nope")], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 1 and "Traceback" not in result.stderr and "nope" in result.stderr


# --- the batcher in process ----------------------------------------------------------------------

class _Linear:
    """A numpy backend whose logits are x @ W: gradients and scores known in closed form."""

    name, input_shape, num_classes, value_range = "linear", (1, 2, 2), 3, (0.0, 1.0)
    supports_deeplift = has_generator = False

    def __init__(self) -> None:
        self.W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
        self.calls: list[int] = []

    def logits(self, x):
        self.calls.append(len(x))
        return x.reshape(len(x), -1) @ self.W

    def score_gradient(self, x, weights):
        if np.any(weights > 5):
            raise InputError("weights too large")
        self.calls.append(len(x))
        return (self.logits(x) * weights).sum(1), (weights @ self.W.T).reshape(x.shape)


def test_the_batcher_merges_calls_and_returns_each_caller_its_rows():
    inner = _Linear()
    rng = np.random.default_rng(0)
    xs = [rng.random((k, 1, 2, 2), dtype=np.float32) for k in (1, 3, 2, 5)]
    ws = [rng.standard_normal((len(x), 3)).astype(np.float32) for x in xs]
    with BatchingBackend(inner, max_batch=64, max_wait_ms=200) as backend:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: backend.score_gradient(xs[i], ws[i]), range(4)))
    for x, w, (score, grad) in zip(xs, ws, results):
        np.testing.assert_allclose(score, ((x.reshape(len(x), -1) @ inner.W) * w).sum(1), rtol=1e-6)
        np.testing.assert_allclose(grad, (w @ inner.W.T).reshape(x.shape), rtol=1e-6)
    assert len(inner.calls) < 2 * 4  # fewer backend calls than requests (each score_gradient logs two)


def test_one_bad_call_does_not_fail_the_calls_it_was_merged_with():
    inner = _Linear()
    x = np.ones((2, 1, 2, 2), np.float32)
    good, bad = np.ones((2, 3), np.float32), np.full((2, 3), 9.0, np.float32)
    with BatchingBackend(inner, max_batch=64, max_wait_ms=200) as backend:
        with ThreadPoolExecutor(2) as pool:
            ok = pool.submit(backend.score_gradient, x, good)
            failing = pool.submit(backend.score_gradient, x, bad)
            assert ok.result()[0].shape == (2,)
            with pytest.raises(InputError, match="weights too large"):
                failing.result()


def test_a_request_past_its_deadline_or_cancelled_stops_at_its_next_backend_call():
    inner = _Linear()
    x = np.ones((1, 1, 2, 2), np.float32)
    for enabled in (True, False):
        with BatchingBackend(inner, enabled=enabled) as backend:
            with request_context(RequestContext(deadline=time.monotonic() - 1)):
                with pytest.raises(RequestAborted, match="deadline"):
                    backend.logits(x)
            context = RequestContext()
            context.cancelled.set()
            with request_context(context):
                with pytest.raises(RequestAborted, match="cancelled"):
                    backend.logits(x)
            assert backend.logits(x).shape == (1, 3)  # outside a request: no deadline


class _CancelAfter(RequestContext):
    """A request context that counts its checks and turns cancelled after ``allowed`` of them."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed, self.checks = allowed, 0

    def check(self) -> None:
        self.checks += 1
        if self.checks > self.allowed:
            self.cancelled.set()
        super().check()


def test_a_long_relu_path_call_stops_between_its_passes(bundle, images):
    from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

    inner = OnnxRuntimeBackend(bundle)
    assert inner.uses_relu_path
    x = (images[:2, None] / 255.0).astype(np.float32)
    baseline, weights = np.zeros_like(x), np.eye(inner.num_classes, dtype=np.float32)[[3, 5]]
    alphas = ((np.arange(8192) + 0.5) / 8192).astype(np.float32)
    quadrature = np.full(8192, 1 / 8192, np.float32)
    with BatchingBackend(inner) as backend:
        whole = _CancelAfter(10**6)
        with request_context(whole):
            got = backend.fused_integrated_gradients(x, baseline, weights, alphas, quadrature)
        np.testing.assert_array_equal(got, inner.fused_integrated_gradients(x, baseline, weights, alphas, quadrature))
        assert whole.checks >= 4  # one before the call, then one per pass: a long path takes several passes
        stopped = _CancelAfter(2)
        with request_context(stopped), pytest.raises(RequestAborted, match="cancelled"):
            backend.fused_integrated_gradients(x, baseline, weights, alphas, quadrature)
        assert stopped.checks == 3  # the call's own check, the first pass, then refused before the second


def test_the_batcher_does_not_wait_for_rows_that_cannot_come():
    inner = _Linear()
    x = np.ones((1, 1, 2, 2), np.float32)
    with BatchingBackend(inner, max_wait_ms=20_000, callers=lambda: 1) as backend:
        started = time.monotonic()
        backend.logits(x)
        assert time.monotonic() - started < 10  # one request in the house: no 20 s wait for company


def test_the_batcher_runs_merged_calls_on_several_workers_at_once():
    both_inside = threading.Barrier(2, timeout=10)

    class Meeting(_Linear):
        def logits(self, x):
            both_inside.wait()  # passes only if two backend calls run at the same time
            return super().logits(x)

    x = np.ones((1, 1, 2, 2), np.float32)
    with BatchingBackend(Meeting(), max_batch=1, max_wait_ms=0, workers=2) as backend:
        with ThreadPoolExecutor(2) as pool:
            assert [f.result().shape for f in [pool.submit(backend.logits, x) for _ in range(2)]] == [(1, 3), (1, 3)]


def test_a_bundle_without_a_generator_gets_ready_and_defaults_to_the_zero_baseline(tmp_path, images, local):
    from xaisdk.deploy.export import export_bundle
    from xaisdk.models import shipped_classifier_path

    export_bundle(shipped_classifier_path("digits"), tmp_path / "classifier")
    srv = Server(tmp_path / "classifier", "--warmup", "2")
    try:
        status, _, body = srv.request("POST", f"/v1/models/{MODEL}:explain", {
            "instances": [{"b64": _png_b64(images[0])}], "parameters": {"n_steps": 32}})
        assert status == 200 and body["explanations"][0]["baseline"] == "zero", body
        want = local.explain(images[:1, None], "runner-up", method="ig", baseline="zero", n_steps=32)
        _close(np.array([body["explanations"][0]["attributions"]], np.float32), want.attributions)
        assert "Traceback" not in srv.log.getvalue().decode()
    finally:
        assert srv.stop() == 0


def test_big_calls_skip_the_batcher_and_run_in_the_callers_thread():
    seen = []

    class Where(_Linear):
        def logits(self, x):
            seen.append((len(x), threading.current_thread().name))
            return super().logits(x)

    with BatchingBackend(Where(), direct_rows=3) as backend:
        backend.logits(np.ones((2, 1, 2, 2), np.float32))
        backend.logits(np.ones((3, 1, 2, 2), np.float32))
    assert seen[0][1].startswith("xaisdk-batcher") and seen[1] == (3, threading.current_thread().name)


def test_per_image_targets_for_some_images_need_one_class_in_parameters(server, local, images):
    instances = [{"image": images[0].tolist(), "target": 3}, {"image": images[1].tolist()}]
    status, _, body = server.request("POST", f"/v1/models/{MODEL}:explain", {"instances": instances})
    assert status == 400 and "target is given for some images only" in body["error"]
    status, _, body = server.request("POST", f"/v1/models/{MODEL}:explain", {
        "instances": instances, "parameters": {"target": 7, "n_steps": 16}})
    assert status == 200 and [r["target"] for r in body["explanations"]] == [3, 7], body


def test_a_bundle_with_a_resize_policy_takes_photos_of_any_size(tmp_path):
    """A service posts camera JPEG/PNGs as they come: the bundle's pixel pipeline (resize, then per-channel
    normalisation in the graphs) makes them the model's input, exactly as the Explainer does locally."""
    import torch
    from torch import nn

    from xaisdk.deploy.export import export_bundle
    from xaisdk.runtime.preprocessing import Preprocessing

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 4)).eval()
    pipeline = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="shorter-side-crop")
    export_bundle(net, tmp_path / "photo", input_shape=(3, 32, 32), preprocessing=pipeline, force=True)
    local = Explainer.load(tmp_path / "photo")
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rng.integers(0, 256, (90, 40, 3), dtype=np.uint8)]
    srv = Server(tmp_path / "photo", "--warmup", "2")
    try:
        status, _, body = srv.request("POST", f"/v1/models/{MODEL}:explain", {
            "instances": [{"b64": _png_b64(p)} for p in photos], "parameters": {"n_steps": 16, "target": 1}})
        assert status == 200, body
        for photo, row in zip(photos, body["explanations"]):
            want = local.explain(photo, 1, method="ig", baseline="zero", n_steps=16)
            assert row["shape"] == [3, 32, 32]
            _close(np.array([row["attributions"]], np.float32), want.attributions[None])
        status, _, body = srv.request("POST", "/v2/models/" + MODEL + "/infer", {
            "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [_png_b64(photos[1])]}]})
        assert status == 200, body
        logits = np.array(body["outputs"][0]["data"], np.float64)
        np.testing.assert_allclose(logits, local.logits(photos[1]), rtol=1e-5, atol=1e-5)
    finally:
        assert srv.stop() == 0
