"""Load test of ``xaisdk serve`` on the loopback interface: throughput and latency with and without
cross-request batching, overload shedding, clients that go away, slow clients and malformed requests,
all measured against real server processes in one run.

    python benchmarks/serve_load.py            # full run, about 6-8 minutes on 2 cores
    python benchmarks/serve_load.py --quick    # smoke run, under 2 minutes (writes to $TMPDIR/serve_load_quick/)

Needs the full install (torch to export the bundles) plus the server packages (``pip install -e '.[dev]'``).
Servers are started as ``python -m xaisdk.cli serve BUNDLE --port P ...`` subprocesses on free
127.0.0.1 ports; the clients are threads using only the standard library (``http.client``, one
keep-alive connection per client thread, closed-loop: each client sends its next request when the
previous answer arrived).

Models:

- ``digits``: the shipped GANMEX digits model (``xaisdk/weights/digits_ganmex.pt``) exported to a
  bundle; requests are KServe V1 ``:explain`` calls for one real test digit of
  ``xaisdk.data.load_digits()`` as a base64 PNG, IG with ``n_steps=200``, the GANMEX baseline, target
  ``"runner-up"``.
- ``cifar32``: the CIFAR CNN of ``xaisdk.models.build_classifier("cifar_cnn")`` (3x32x32, 10 classes)
  with seeded random weights, saved with ``save_classifier`` and exported with ``export_bundle`` (no
  generator); requests are seeded random 32x32 RGB PNGs, IG from the zero baseline with ``n_steps``
  given by ``--cifar-steps`` (default 50: one IG-200 request of this network takes about 0.5 s on
  2 cores, so 64 closed-loop clients at 200 steps would wait longer than the 30 s deadline).

Every 200 answer of the sweep is checked against the same explanation computed in this process with
``Explainer.load(bundle)`` (max abs difference <= 1e-4 x max |reference|, the slim tests' tolerance);
a wrong answer counts as an error. Writes ``benchmarks/results/serve_<date>.json`` (device, versions,
date and command from ``xaisdk.bench.environment.describe_environment``), ``.md`` (tables) and
``.png`` (throughput and p99 latency against clients). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
TOLERANCE = 1e-4  # max abs difference / max |reference|, as in tests_slim/test_serving_without_torch.py
STARTED = time.perf_counter()
WORKAROUNDS: list[str] = []  # none needed: every server runs with its default options unless listed


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- models and requests --------------------------------------------------------------------------
@dataclass
class Workload:
    """One model's bundle and the valid requests sent to it (with the answers expected)."""

    name: str
    bundle: Path
    parameters: dict[str, Any]
    bodies: list[bytes] = field(default_factory=list)
    references: list[np.ndarray] = field(default_factory=list)
    predict_bodies: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    description: str = ""

    @property
    def explain_path(self) -> str:
        return f"/v1/models/{self.name}:explain"

    @property
    def predict_path(self) -> str:
        return f"/v1/models/{self.name}:predict"


def png_b64(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def build_workloads(work: Path, n_images: int, cifar_steps: int) -> dict[str, Workload]:
    """Export both bundles into ``work`` and prepare the request bodies and reference attributions."""
    import torch

    from xaisdk.data import load_digits
    from xaisdk.deploy.export import export_bundle
    from xaisdk.explainer import Explainer
    from xaisdk.models import build_classifier, save_classifier, shipped_ganmex_path
    from xaisdk.models.checkpoint import Classifier

    log("exporting the digits GANMEX bundle")
    export_bundle(shipped_ganmex_path("digits"), work / "digits")
    log("building, saving and exporting the 32-px colour model (cifar_cnn, seeded random weights)")
    torch.manual_seed(0)
    config = {"in_channels": 3, "image_size": 32, "num_classes": 10}
    model = build_classifier("cifar_cnn", **config).eval()
    checkpoint = save_classifier(work / "cifar32.pt", Classifier(model, "cifar_cnn", config,
                                                                 tuple(f"class{i}" for i in range(10)), (3, 32, 32)))
    export_bundle(checkpoint, work / "cifar32")

    digits = np.round(load_digits().test.x[:n_images, 0] * 255).astype(np.uint8)  # (N, 28, 28)
    colour = np.random.default_rng(0).integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    workloads = {
        "digits": Workload("digits", work / "digits", {"method": "ig", "n_steps": 200, "target": "runner-up",
                                                       "baseline": "ganmex", "output": "tensor"},
                           description="shipped digits GANMEX bundle (1x28x28), real test digits as PNG, "
                                       "IG n_steps=200, GANMEX baseline, target runner-up"),
        "cifar32": Workload("cifar32", work / "cifar32", {"method": "ig", "n_steps": cifar_steps, "target": "runner-up",
                                                          "baseline": "zero", "output": "tensor"},
                            description=f"cifar_cnn (3x32x32, 10 classes, widths 32-64-128-256) with seeded random weights, "
                                        f"seeded random RGB PNGs, IG n_steps={cifar_steps}, zero baseline, target runner-up"),
    }
    for workload, images in ((workloads["digits"], digits), (workloads["cifar32"], colour)):
        explainer = Explainer.load(workload.bundle)
        for image in images:
            instance = {"b64": png_b64(image)}
            workload.bodies.append(json.dumps({"instances": [instance], "parameters": workload.parameters}).encode())
            workload.predict_bodies.append(json.dumps({"instances": [instance]}).encode())
            workload.labels.append(int(explainer.predict(image)))
            options = {k: v for k, v in workload.parameters.items() if k not in ("output", "method")}
            e = explainer.explain(image, method="ig", **options)
            workload.references.append(np.asarray(e.attributions, dtype=np.float64).reshape(explainer.backend.input_shape))
    return workloads


def label_matches(payload: bytes, label: int) -> bool:
    try:
        return int(json.loads(payload)["predictions"][0]["label"]) == label
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def answer_matches(payload: bytes, reference: np.ndarray) -> bool:
    try:
        rows = json.loads(payload)["explanations"]
        got = np.asarray(rows[0]["attributions"], dtype=np.float64)
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    return got.shape == reference.shape and float(np.abs(got - reference).max()) <= TOLERANCE * float(np.abs(reference).max())


def backend_scaling(workloads: dict[str, Workload], repeats: int) -> dict[str, Any]:
    """Milliseconds per row of the bundle's ``score_gradient`` (the IG primitive) against rows per call,
    in this process: how much a bigger merged call saves."""
    from xaisdk.explainer import Explainer

    out: dict[str, Any] = {}
    for name, workload in workloads.items():
        backend = Explainer.load(workload.bundle).backend
        shape, k = backend.input_shape, backend.num_classes
        rng = np.random.default_rng(0)
        rows_ms: dict[str, float] = {}
        for rows in (1, 8, 50, 200, 400, 800):
            x = rng.random((rows, *shape), dtype=np.float32)
            w = np.zeros((rows, k), np.float32)
            w[:, 0], w[:, 1] = 1, -1
            backend.score_gradient(x, w)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                backend.score_gradient(x, w)
                times.append(time.perf_counter() - start)
            rows_ms[str(rows)] = round(statistics.median(times) * 1000 / rows, 4)
        out[name] = {"ms_per_row": rows_ms}
        log(f"backend {name}: score_gradient ms/row by rows per call {rows_ms}")
    return out


# --- servers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """One ``xaisdk serve`` subprocess (stderr, the access log, to a file)."""

    def __init__(self, label: str, bundle: Path, options: list[str], logs: Path) -> None:
        self.label, self.port = label, free_port()
        self.argv = [sys.executable, "-m", "xaisdk.cli", "serve", str(bundle), "--host", HOST, "--port", str(self.port),
                     *options]
        self.options = options
        self.log_path = logs / f"{label}.log"
        self.exit_code: int | None = None
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        started = time.perf_counter()
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(180.0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - started
        log(f"server {label} ready on port {self.port} in {self.startup_s:.1f} s ({' '.join(options)})")

    def _wait_ready(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label}: server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                status, body = get(self.port, "/v2/health/ready")
                if status == 200:
                    return
                error = json.loads(body).get("error")
                if error:
                    raise RuntimeError(f"{self.label}: the model failed to load: {error}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.label}: not ready after {limit_s:g} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def rss_mb(self) -> float:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]

    def alive(self) -> bool:
        return self.process.poll() is None

    def metrics(self) -> dict[str, float]:
        return parse_metrics(get(self.port, "/metrics")[1].decode())

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.exit_code = self.process.returncode
        self._log.close()
        log(f"server {self.label} stopped with SIGTERM: exit code {self.exit_code}")
        return self.exit_code

    def record(self) -> dict[str, Any]:
        return {"command": ["python", "-m", "xaisdk.cli", "serve", "BUNDLE", "--host", HOST, "--port", "<free port>",
                            *self.options], "startup_s": round(self.startup_s, 2), "sigterm_exit_code": self.exit_code}


@contextlib.contextmanager
def running(label: str, bundle: Path, options: list[str], logs: Path, servers: dict[str, Any]) -> Iterator[Server]:
    server = Server(label, bundle, options, logs)
    try:
        yield server
    finally:
        server.stop()
        servers[label] = server.record()


def get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post(port: int, path: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format as {"name{labels}": value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def batch_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Backend calls, mean rows and mean requests per backend call between two /metrics scrapes."""
    out: dict[str, Any] = {}
    for primitive in ("score_gradient", "logits", "generate"):
        def delta(name: str, p: str = primitive) -> float:
            key = f'{name}{{primitive="{p}"}}'
            return after.get(key, 0.0) - before.get(key, 0.0)

        calls = delta("xaisdk_batch_rows_count")
        if calls:
            requests = delta("xaisdk_batch_requests_sum") / delta("xaisdk_batch_requests_count")
            out[primitive] = {"calls": int(calls), "mean_rows": round(delta("xaisdk_batch_rows_sum") / calls, 2),
                              "mean_requests": round(requests, 3)}
    return out


def server_healthy(server: Server, workload: Workload) -> dict[str, Any]:
    """Ready, live, and one valid request answered with the reference attributions."""
    ready = get(server.port, "/v2/health/ready")[0]
    live = get(server.port, "/v2/health/live")[0]
    status, payload = post(server.port, workload.explain_path, workload.bodies[0])
    correct = status == 200 and answer_matches(payload, workload.references[0])
    return {"alive": server.alive(), "ready_status": ready, "live_status": live, "valid_request_status": status,
            "valid_request_correct": correct}


# --- closed-loop load -----------------------------------------------------------------------------
@dataclass
class Outcome:
    start: float
    end: float
    status: int  # 0: the connection failed
    correct: bool
    retry_after: str | None = None
    error: str | None = None


def client_loop(port: int, workload: Workload, index: int, stop_at: float, outcomes: list[Outcome],
                pause_after_503: float = 0.0, predict: bool = False) -> None:
    """One client: keep-alive connection, one request at a time until ``stop_at``; explain requests, or
    predict requests with ``predict``."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    path, bodies = (workload.predict_path, workload.predict_bodies) if predict else (workload.explain_path, workload.bodies)
    n = 0
    while time.perf_counter() < stop_at:
        i = (index + n) % len(workload.bodies)
        n += 1
        start = time.perf_counter()
        try:
            conn.request("POST", path, body=bodies[i], headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as err:
            outcomes.append(Outcome(start, time.perf_counter(), 0, False, error=type(err).__name__))
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=120)
            continue
        end = time.perf_counter()
        correct = response.status == 200 and (label_matches(payload, workload.labels[i]) if predict
                                               else answer_matches(payload, workload.references[i]))
        outcomes.append(Outcome(start, end, response.status, correct, response.getheader("Retry-After")))
        if response.status == 503 and pause_after_503:
            time.sleep(pause_after_503)
    conn.close()


def run_clients(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def latency_summary(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p95, p99 = np.percentile(seconds, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4),
            "max": round(max(seconds), 4), "mean": round(statistics.fmean(seconds), 4)}


def summarize(outcomes: list[Outcome], began: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.correct]
    errors = Counter("wrong_answer" if o.status == 200 else (o.error or str(o.status)) for o in outcomes if not o.correct)
    elapsed = (max(o.end for o in outcomes) - began) if outcomes else 0.0
    return {"requests": len(outcomes), "ok": len(ok), "errors": dict(errors), "elapsed_s": round(elapsed, 3),
            "throughput_rps": round(len(ok) / elapsed, 3) if elapsed else 0.0,
            "latency_s": latency_summary([o.end - o.start for o in ok])}


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(server_pid: int) -> tuple[float, float, float]:
    """(whole machine busy, the server process, this process) CPU seconds so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    machine = (user + nice + system + irq + softirq + steal) / _TICK
    stat = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
    server = (int(stat[11]) + int(stat[12])) / _TICK  # utime, stime (fields 14 and 15)
    own = os.times()
    return machine, server, own.user + own.system


def other_cpu(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """CPU seconds spent by processes other than the server and this benchmark between two readings."""
    machine, server, own = (a - b for a, b in zip(after, before))
    return round(max(machine - server - own, 0.0), 2)


def load_cell(server: Server, workload: Workload, clients: int, duration: float, predict: bool = False) -> dict[str, Any]:
    outcomes: list[Outcome] = []
    cpu_before = cpu_seconds(server.process.pid)
    before = server.metrics()
    began = time.perf_counter()
    stop_at = began + duration
    run_clients([lambda c=c: client_loop(server.port, workload, c, stop_at, outcomes, predict=predict)
                 for c in range(clients)])
    after = server.metrics()
    cpu_after = cpu_seconds(server.process.pid)
    cpu = {"server_s": round(cpu_after[1] - cpu_before[1], 2), "benchmark_s": round(cpu_after[2] - cpu_before[2], 2),
           "other_processes_s": other_cpu(cpu_before, cpu_after)}
    return {**summarize(outcomes, began), "clients": clients, "batch": batch_stats(before, after), "cpu": cpu}


def sweep(server: Server, workload: Workload, mode: str, levels: list[int], duration: float,
          warmup_s: float) -> list[dict[str, Any]]:
    warm: list[Outcome] = []
    stop_at = time.perf_counter() + warmup_s
    run_clients([lambda c=c: client_loop(server.port, workload, c, stop_at, warm) for c in range(4)])
    rows = []
    for clients in levels:
        cell = {"model": workload.name, "mode": mode, **load_cell(server, workload, clients, duration)}
        lat = cell["latency_s"]
        grad = cell["batch"].get("score_gradient", {})
        p99 = "-" if lat["p99"] is None else f"{lat['p99']:.3f}"
        log(f"{workload.name} {mode} clients={clients}: {cell['throughput_rps']:.2f} req/s, p50 {lat['p50']} s, "
            f"p99 {p99} s, {cell['ok']} ok, errors {cell['errors'] or 0}; score_gradient rows/call "
            f"{grad.get('mean_rows')}, requests/call {grad.get('mean_requests')}; CPU s server/clients/other processes "
            f"{cell['cpu']['server_s']}/{cell['cpu']['benchmark_s']}/{cell['cpu']['other_processes_s']}")
        rows.append(cell)
    return rows


# --- robustness -----------------------------------------------------------------------------------
def overload(server: Server, workload: Workload, clients: int, duration: float) -> dict[str, Any]:
    """``clients`` closed-loop clients (twice max_queue) for ``duration`` s; RSS sampled every 0.25 s."""
    time.sleep(1.0)
    rss_before = server.rss_mb()
    samples: list[tuple[float, float]] = []
    outcomes: list[Outcome] = []
    stop_at = time.perf_counter() + duration
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            with contextlib.suppress(OSError, AttributeError):
                samples.append((round(time.perf_counter() - began, 2), round(server.rss_mb(), 1)))

    cpu_before = cpu_seconds(server.process.pid)
    began = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    before = server.metrics()
    run_clients([lambda c=c: client_loop(server.port, workload, c, stop_at, outcomes, pause_after_503=0.05)
                 for c in range(clients)])
    done.set()
    sampler.join()
    after = server.metrics()
    foreign_cpu = other_cpu(cpu_before, cpu_seconds(server.process.pid))
    time.sleep(2.0)
    rss_after = server.rss_mb()
    status = Counter(o.status for o in outcomes)
    mb = [m for _, m in samples]
    half = len(mb) // 2
    shed = [o for o in outcomes if o.status == 503]
    served = [o for o in outcomes if o.status == 200]
    failed = [o for o in outcomes if o.status not in (200, 503) or (o.status == 200 and not o.correct)]
    result = {
        "clients": clients, "duration_s": duration, "client_pause_after_503_s": 0.05,
        "requests": len(outcomes), "status_counts": {str(k): v for k, v in sorted(status.items())},
        "ok_correct": sum(o.correct for o in served), "shed_503": len(shed),
        "shed_503_with_retry_after": sum(o.retry_after is not None for o in shed),
        "retry_after_values": sorted({o.retry_after for o in shed if o.retry_after is not None}),
        "other_errors": len(failed) + sum(o.retry_after is None for o in shed),
        "throughput_ok_rps": round(len(served) / max(duration, 1e-9), 3),
        "latency_ok_s": latency_summary([o.end - o.start for o in served]),
        "latency_503_s": latency_summary([o.end - o.start for o in shed]),
        "rejected_queue_full_metric": after.get('xaisdk_rejected_total{reason="queue_full"}', 0.0)
        - before.get('xaisdk_rejected_total{reason="queue_full"}', 0.0),
        "rss_mb": {"before": round(rss_before, 1), "during_min": min(mb) if mb else None,
                   "during_max": max(mb) if mb else None,
                   "first_half_max": max(mb[:half]) if half else None, "second_half_max": max(mb[half:]) if mb else None,
                   "after": round(rss_after, 1), "samples": len(samples), "trace_s_mb": samples},
        "alive_after": server.alive(),
        "elapsed_s": round(time.perf_counter() - began, 2),
        "other_processes_cpu_s": foreign_cpu,
    }
    rss = {k: v for k, v in result["rss_mb"].items() if k != "trace_s_mb"}
    log(f"overload: {result['requests']} requests, status {result['status_counts']}, 503 with Retry-After "
        f"{result['shed_503_with_retry_after']}/{result['shed_503']}, other errors {result['other_errors']}, RSS MB {rss}")
    return result


def raw_request(path: str, body: bytes, *, extra_headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra_headers}\r\n").encode() + body


def disconnects(server: Server, workload: Workload, n: int, after_s: float) -> dict[str, Any]:
    """``n`` clients at once send a full explain request and close the socket ``after_s`` later, before
    the answer; then the queue must drain to 0 and the server must answer correctly."""
    before = server.metrics()
    closed_before_answer = []

    def one(i: int) -> None:
        s = socket.create_connection((HOST, server.port))
        s.sendall(raw_request(workload.explain_path, workload.bodies[i % len(workload.bodies)]))
        time.sleep(after_s)
        s.setblocking(False)
        try:
            answered = bool(s.recv(1))
        except BlockingIOError:
            answered = False
        closed_before_answer.append(not answered)
        s.close()

    began = time.perf_counter()
    run_clients([lambda i=i: one(i) for i in range(n)])
    depth_trace = []
    drained_after = None
    while time.perf_counter() - began < 60:
        depth = server.metrics().get("xaisdk_queue_depth", -1.0)
        depth_trace.append(depth)
        if depth == 0:
            drained_after = time.perf_counter() - began
            break
        time.sleep(0.1)
    after = server.metrics()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    result = {
        "clients": n, "closed_after_s": after_s, "closed_before_answer": sum(closed_before_answer),
        "queue_depth_max_seen": max(depth_trace) if depth_trace else None,
        "queue_depth_zero_after_s": None if drained_after is None else round(drained_after, 2),
        "rejected_client_gone_metric": delta('xaisdk_rejected_total{reason="client_gone"}'),
        "status_499_metric": delta('xaisdk_requests_total{route="/v1/models/{name}:explain",status="499"}'),
        "status_200_metric": delta('xaisdk_requests_total{route="/v1/models/{name}:explain",status="200"}'),
        "health_after": server_healthy(server, workload),
        "queue_depth_final": server.metrics().get("xaisdk_queue_depth"),
    }
    log(f"disconnects: {result['closed_before_answer']}/{n} closed before the answer, queue depth 0 after "
        f"{result['queue_depth_zero_after_s']} s, client_gone {result['rejected_client_gone_metric']}, "
        f"health {result['health_after']}")
    return result


def slow_client_loop(port: int, workload: Workload, index: int, stop_at: float, piece: int, pause: float,
                     outcomes: list[Outcome], upload_s: list[float]) -> None:
    """A client sending each request body ``piece`` bytes at a time, ``pause`` s apart."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    n = 0
    while time.perf_counter() < stop_at:
        i = (index + n) % len(workload.bodies)
        n += 1
        body = workload.bodies[i]
        start = time.perf_counter()
        try:
            conn.putrequest("POST", workload.explain_path)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            for k in range(0, len(body), piece):
                time.sleep(pause)
                conn.send(body[k:k + piece])
            sent = time.perf_counter()
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as err:
            outcomes.append(Outcome(start, time.perf_counter(), 0, False, error=type(err).__name__))
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=120)
            continue
        upload_s.append(sent - start)
        outcomes.append(Outcome(start, time.perf_counter(), response.status,
                                response.status == 200 and answer_matches(payload, workload.references[i])))
    conn.close()


def slow_clients(server: Server, workload: Workload, normal: int, slow: int, duration: float, piece: int,
                 pause: float) -> dict[str, Any]:
    """``normal`` clients alone, then the same with ``slow`` clients trickling their bodies in."""
    alone: list[Outcome] = []
    cpu_before = cpu_seconds(server.process.pid)
    began = time.perf_counter()
    stop_at = began + duration
    run_clients([lambda c=c: client_loop(server.port, workload, c, stop_at, alone) for c in range(normal)])
    phase1 = summarize(alone, began)
    mixed: list[Outcome] = []
    trickled: list[Outcome] = []
    upload: list[float] = []
    began = time.perf_counter()
    stop_at = began + duration
    run_clients([lambda c=c: client_loop(server.port, workload, c, stop_at, mixed) for c in range(normal)]
                + [lambda c=c: slow_client_loop(server.port, workload, c, stop_at, piece, pause, trickled, upload)
                   for c in range(slow)])
    result = {
        "normal_clients": normal, "slow_clients": slow, "piece_bytes": piece, "pause_s": pause,
        "body_bytes": len(workload.bodies[0]), "duration_s": duration,
        "normal_alone": phase1, "normal_with_slow": summarize(mixed, began), "slow": summarize(trickled, began),
        "slow_upload_s": latency_summary(upload),
        "other_processes_cpu_s": other_cpu(cpu_before, cpu_seconds(server.process.pid)),
        "health_after": server_healthy(server, workload),
    }
    mixed_lat, slow_lat = result["normal_with_slow"]["latency_s"], result["slow"]["latency_s"]
    log(f"slow clients: normal alone p50/p99 {phase1['latency_s']['p50']}/{phase1['latency_s']['p99']} s; with "
        f"{slow} slow: normal {mixed_lat['p50']}/{mixed_lat['p99']} s, slow {slow_lat['p50']}/{slow_lat['p99']} s "
        f"(upload {result['slow_upload_s']['p50']} s), errors {result['normal_with_slow']['errors']} / "
        f"{result['slow']['errors']}")
    return result


# --- malformed requests ---------------------------------------------------------------------------
@dataclass
class Bad:
    kind: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunked_bytes: int = 0  # > 0: a chunked body of this many bytes, no Content-Length
    hang_up: bool = False  # the client closes the connection after the answer (it never sent the body it declared)


def malformed_kinds(workload: Workload, max_steps: int, max_images: int, max_body: int) -> list[Bad]:
    from PIL import Image

    name, path = workload.name, workload.explain_path
    good = json.loads(workload.bodies[0])
    image = good["instances"][0]
    params = workload.parameters
    v2 = f"/v2/models/{name}/infer"
    big = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(big, format="PNG")

    def j(value: Any) -> bytes:
        return json.dumps(value).encode()

    pixels = np.zeros((28, 28)).tolist()
    pixels[3][3] = float("nan")
    return [
        Bad("bad_json", "POST", path, b'{"instances": [{"b64": '),
        Bad("empty_body", "POST", path, b""),
        Bad("top_level_list", "POST", path, j([image])),
        Bad("missing_instances", "POST", path, j({"parameters": params})),
        Bad("empty_instances", "POST", path, j({"instances": [], "parameters": params})),
        Bad("bad_base64", "POST", path, j({"instances": [{"b64": "!!not base64!!"}], "parameters": params})),
        Bad("not_an_image", "POST", path, j({"instances": [{"b64": base64.b64encode(b"GIF89a? no, text").decode()}]})),
        Bad("wrong_image_size", "POST", path, j({"instances": [{"b64": base64.b64encode(big.getvalue()).decode()}]})),
        Bad("nan_in_tensor", "POST", path, json.dumps({"instances": [pixels]}).encode()),
        Bad("too_many_images", "POST", path, j({"instances": [image] * (max_images + 1), "parameters": params})),
        Bad("unknown_parameter", "POST", path, j({"instances": [image], "parameters": {**params, "steps": 3}})),
        Bad("n_steps_above_cap", "POST", path, j({"instances": [image], "parameters": {**params, "n_steps": max_steps + 1}})),
        Bad("n_steps_not_integer", "POST", path, j({"instances": [image], "parameters": {**params, "n_steps": "200"}})),
        Bad("unknown_method", "POST", path, j({"instances": [image], "parameters": {**params, "method": "magic"}})),
        Bad("unknown_target_class", "POST", path, j({"instances": [image], "parameters": {**params, "target": "eleven"}})),
        Bad("unknown_model", "POST", "/v1/models/no-such-model:explain", workload.bodies[0]),
        Bad("unknown_route", "GET", "/v3/models"),
        Bad("wrong_method_get_explain", "GET", path),
        Bad("wrong_method_put_v2_infer", "PUT", v2, workload.bodies[0]),
        Bad("oversized_declared", "POST", path, None, {"Content-Length": str(max_body + 1)}, hang_up=True),
        Bad("oversized_chunked", "POST", path, None, chunked_bytes=max_body + 65536),
        Bad("v2_bad_datatype", "POST", v2, j({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "INT128",
                                                          "data": [0] * 784}]})),
        Bad("v2_shape_data_mismatch", "POST", v2, j({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "UINT8",
                                                                 "data": [0] * 100}]})),
        Bad("v2_uint8_out_of_range", "POST", v2, j({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "UINT8",
                                                                "data": [300] * 784}]})),
        Bad("v2_explain_not_bool", "POST", v2, j({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                             "data": [image["b64"]]}], "parameters": {"explain": "yes"}})),
    ]


def send_bad(conn: http.client.HTTPConnection, bad: Bad) -> tuple[int, bool]:
    """Status of one malformed request and whether the server closed the connection after it."""
    if bad.chunked_bytes:
        piece = b"x" * 65536
        pieces = [piece] * (bad.chunked_bytes // len(piece))
        conn.request(bad.method, bad.path, body=iter(pieces), headers={"Content-Type": "application/json"},
                     encode_chunked=True)
    elif bad.body is None:
        conn.putrequest(bad.method, bad.path)
        for k, v in bad.headers.items():
            conn.putheader(k, v)
        conn.endheaders()
    else:
        conn.request(bad.method, bad.path, body=bad.body, headers={"Content-Type": "application/json", **bad.headers})
    response = conn.getresponse()
    response.read()
    return response.status, response.will_close


def malformed(server: Server, workload: Workload, total: int, max_steps: int, max_images: int,
              max_body: int) -> dict[str, Any]:
    kinds = malformed_kinds(workload, max_steps, max_images, max_body)
    by_kind: dict[str, Counter] = {b.kind: Counter() for b in kinds}
    closed_by_server = 0
    conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
    began = time.perf_counter()
    for n in range(total):
        bad = kinds[n % len(kinds)]
        try:
            status, closed = send_bad(conn, bad)
        except (OSError, http.client.HTTPException) as err:
            status, closed = 0, True
            by_kind[bad.kind][f"connection error {type(err).__name__}"] += 1
        else:
            by_kind[bad.kind][str(status)] += 1
        if closed and not bad.hang_up:
            closed_by_server += 1
        if closed or bad.hang_up:
            conn.close()
            conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
    conn.close()
    elapsed = time.perf_counter() - began
    not_4xx = {k: {s: c for s, c in v.items() if not s.startswith("4")} for k, v in by_kind.items()}
    not_4xx = {k: v for k, v in not_4xx.items() if v}
    result = {
        "requests": total, "kinds": len(kinds), "elapsed_s": round(elapsed, 2),
        "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "all_4xx": not not_4xx, "not_4xx": not_4xx, "connections_closed_by_server": closed_by_server,
        "health_after": server_healthy(server, workload),
    }
    log(f"malformed: {total} requests of {len(kinds)} kinds in {elapsed:.1f} s, all 4xx: {result['all_4xx']} "
        f"{not_4xx or ''}; health after {result['health_after']}")
    return result


# --- report ---------------------------------------------------------------------------------------
def goal(rows: list[dict[str, Any]], clients: int, timeout_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in sorted({r["model"] for r in rows}):
        cell = {r["mode"]: r for r in rows if r["model"] == model and r["clients"] == clients}
        if {"batched", "unbatched"} - set(cell):
            continue
        b, u = cell["batched"], cell["unbatched"]
        ratio = b["throughput_rps"] / u["throughput_rps"] if u["throughput_rps"] else None
        p99 = b["latency_s"]["p99"]
        out[model] = {"clients": clients, "batched_rps": b["throughput_rps"], "unbatched_rps": u["throughput_rps"],
                      "ratio": None if ratio is None else round(ratio, 3), "batched_p99_s": p99, "deadline_s": timeout_s,
                      "batched_errors": sum(b["errors"].values()), "unbatched_errors": sum(u["errors"].values()),
                      "batch": b["batch"],
                      "met": bool(ratio is not None and ratio >= 2.0 and p99 is not None and p99 <= timeout_s
                                  and not b["errors"] and not u["errors"])}
    return out


def fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# `xaisdk serve` load test, {result['date']}", "",
             f"Command: `{env['command']}`; device: {env['device']['cpu']}, {env['device']['cores']} cores, GPU: "
             f"{env['device']['gpu'] or 'none'}; xaisdk {env['versions'].get('xaisdk')}, onnxruntime "
             f"{env['versions'].get('onnxruntime')}, Python {env['versions'].get('python')}. Machine load average "
             f"(1/5/15 min) before the run {result['load_average']['before']}, after {result['load_average']['after']}.", "",
             "Loopback, closed-loop clients (one keep-alive connection each), "
             f"{result['settings']['duration_s']} s per cell; every 200 answer checked against the in-process explanation.", ""]
    for name, w in result["settings"]["models"].items():
        lines.append(f"- `{name}`: {w['description']}")
    lines += ["", "Servers:", ""]
    for label, s in result["servers"].items():
        lines.append(f"- `{label}`: `{' '.join(s['command'])}` (ready in {s['startup_s']} s, SIGTERM exit code "
                     f"{s['sigterm_exit_code']})")
    if result.get("workarounds"):
        lines += ["", "Workarounds:", ""] + [f"- {w}" for w in result["workarounds"]]
    lines += ["", "## Throughput and latency", "",
              "| model | mode | clients | req/s | p50 s | p95 s | p99 s | ok | errors | gradient rows / backend call "
              "| requests / backend call | CPU s: server / clients / other processes |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in result["sweep"]:
        lat, grad = r["latency_s"], r["batch"].get("score_gradient", {})
        lines.append(f"| {r['model']} | {r['mode']} | {r['clients']} | {fmt(r['throughput_rps'])} | {fmt(lat['p50'], 3)} | "
                     f"{fmt(lat['p95'], 3)} | {fmt(lat['p99'], 3)} | {r['ok']} | {r['errors'] or 0} | "
                     f"{fmt(grad.get('mean_rows'), 1)} | {fmt(grad.get('mean_requests'))} | {r['cpu']['server_s']} / "
                     f"{r['cpu']['benchmark_s']} / {r['cpu']['other_processes_s']} |")
    lines += ["", "## Goal: batched >= 2x unbatched at 16 clients, p99 within the deadline, 0 errors", ""]
    for model, g in result["goal"].items():
        lines.append(f"- `{model}`: batched {fmt(g['batched_rps'])} req/s vs unbatched {fmt(g['unbatched_rps'])} req/s = "
                     f"**{fmt(g['ratio'])}x**; batched p99 {fmt(g['batched_p99_s'], 3)} s (deadline {g['deadline_s']:g} s); "
                     f"errors {g['batched_errors']} / {g['unbatched_errors']}: **{'met' if g['met'] else 'not met'}**")
    if result.get("predict_probe"):
        lines += ["", "One-row requests (V1 `:predict`, 16 clients), where a request has few rows of its own:", "",
                  "| model | mode | req/s | p50 s | p99 s | errors | logits rows / backend call | requests / backend call |",
                  "|---|---|---:|---:|---:|---|---:|---:|"]
        for r in result["predict_probe"]:
            lg = r["batch"].get("logits", {})
            lines.append(f"| {r['model']} | {r['mode']} | {fmt(r['throughput_rps'], 1)} | {fmt(r['latency_s']['p50'], 4)} | "
                         f"{fmt(r['latency_s']['p99'], 4)} | {r['errors'] or 0} | {fmt(lg.get('mean_rows'), 1)} | "
                         f"{fmt(lg.get('mean_requests'))} |")
    scaling = result.get("backend_scaling") or {}
    if scaling:
        lines += ["", "Bundle `score_gradient` cost per row against rows per call (in process, no server):", "",
                  "| model | " + " | ".join(f"{k} rows" for k in next(iter(scaling.values()))["ms_per_row"]) + " |",
                  "|---|" + "---:|" * len(next(iter(scaling.values()))["ms_per_row"])]
        for model, s in scaling.items():
            lines.append(f"| {model} ms/row | " + " | ".join(fmt(v, 3) for v in s["ms_per_row"].values()) + " |")
    o = result["overload"]
    lines += ["", "## Overload", "",
              f"{o['clients']} clients against `--max-queue {result['settings']['overload_max_queue']}` for {o['duration_s']} s "
              f"(clients retry {o['client_pause_after_503_s']} s after a 503): {o['requests']} requests, status counts "
              f"{o['status_counts']}; 503 with Retry-After {o['shed_503_with_retry_after']} of {o['shed_503']} "
              f"(values {o['retry_after_values']}); other errors {o['other_errors']}; "
              f"served {fmt(o['throughput_ok_rps'])} req/s, "
              f"p99 {fmt(o['latency_ok_s']['p99'], 3)} s; 503 p99 {fmt(o['latency_503_s']['p99'], 4)} s; server alive "
              f"{o['alive_after']}; CPU of other processes meanwhile {o['other_processes_cpu_s']} s.", "",
              f"RSS (MB): before {o['rss_mb']['before']}, during {o['rss_mb']['during_min']}-{o['rss_mb']['during_max']} "
              f"({o['rss_mb']['samples']} samples every 0.25 s; highest in the first half {o['rss_mb']['first_half_max']}, "
              f"in the second half {o['rss_mb']['second_half_max']}), after {o['rss_mb']['after']}."]
    d = result["disconnects"]
    lines += ["", "## Clients that disconnect mid-request", "",
              f"{d['clients']} clients sent a full explain request and closed the socket {d['closed_after_s']} s later "
              f"({d['closed_before_answer']} before any answer byte). Queue depth seen up to {d['queue_depth_max_seen']}, "
              f"back to {d['queue_depth_final']} after {d['queue_depth_zero_after_s']} s; `client_gone` rejections "
              f"{d['rejected_client_gone_metric']:g}, 499s {d['status_499_metric']:g}, 200s {d['status_200_metric']:g}. "
              f"After: {d['health_after']}."]
    s = result["slow_clients"]
    lines += ["", "## Slow clients", "",
              f"{s['slow_clients']} clients sending the {s['body_bytes']}-byte body {s['piece_bytes']} bytes every "
              f"{s['pause_s']} s (upload p50 {s['slow_upload_s']['p50']} s), next to {s['normal_clients']} normal clients:", "",
              "| | requests ok | errors | p50 s | p95 s | p99 s |", "|---|---:|---|---:|---:|---:|"]
    for label, key in (("normal clients alone", "normal_alone"), ("normal clients, with slow ones", "normal_with_slow"),
                       ("slow clients (incl. upload)", "slow")):
        r = s[key]
        lines.append(f"| {label} | {r['ok']} | {r['errors'] or 0} | {fmt(r['latency_s']['p50'], 3)} | "
                     f"{fmt(r['latency_s']['p95'], 3)} | {fmt(r['latency_s']['p99'], 3)} |")
    lines.append(f"\nCPU of other processes meanwhile: {s['other_processes_cpu_s']} s. After: {s['health_after']}.")
    m = result["malformed"]
    lines += ["", "## Malformed requests", "",
              f"{m['requests']} requests of {m['kinds']} kinds in {m['elapsed_s']} s; all 4xx: **{m['all_4xx']}**; "
              f"connections closed by the server: {m['connections_closed_by_server']}. After: {m['health_after']}.", "",
              "| kind | status: count |", "|---|---|"]
    for kind, counts in m["by_kind"].items():
        lines.append(f"| {kind} | {', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["settings"]["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.6 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for mode, style in (("batched", "o-"), ("unbatched", "s--")):
            cells = [r for r in result["sweep"] if r["model"] == model and r["mode"] == mode]
            x = [r["clients"] for r in cells]
            axes[row][0].plot(x, [r["throughput_rps"] for r in cells], style, label=mode)
            axes[row][1].plot(x, [r["latency_s"]["p99"] for r in cells], style, label=mode)
        params = result["settings"]["models"][model]["parameters"]
        axes[row][0].set_title(f"{model}: throughput (IG n_steps={params['n_steps']}, {params['baseline']} baseline)")
        axes[row][1].set_title(f"{model}: p99 latency")
        axes[row][0].set_ylabel("requests / s")
        axes[row][1].set_ylabel("seconds")
        for ax in axes[row]:
            ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.set_xticks(x, [str(v) for v in x])
            ax.set_xlabel("concurrent clients")
            ax.grid(alpha=0.3)
            ax.legend()
    env = result["environment"]["device"]
    fig.suptitle(f"xaisdk serve on {env['cpu']} ({env['cores']} cores), loopback, {result['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 16 clients, short cells (< 2 min)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load cell (default 12; quick 2)")
    parser.add_argument("--cifar-steps", type=int, default=50, help="IG n_steps of the 32-px colour model requests")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for serve_<date>.{json,md,png} (default benchmarks/results; with --quick a temp folder)")
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "serve_load_quick" if args.quick else RESULTS

    from xaisdk.bench.environment import describe_environment

    quick = args.quick
    duration = args.duration if args.duration is not None else (2.0 if quick else 12.0)
    levels = [1, 16] if quick else [1, 4, 16, 64]
    timeout_s, max_steps, max_images = 30.0, 1024, 16
    sweep_queue, overload_queue, small_body_mb = 128, 8, 1
    common = ["--max-batch", "512", "--max-wait-ms", "2", "--timeout-s", f"{timeout_s:g}", "--max-body-mb", "16",
              "--max-images", str(max_images), "--max-steps", str(max_steps)]
    warmup = {"digits": "1", "cifar32": "1"}
    command = " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]])
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    work = Path(tempfile.mkdtemp(prefix="serve_load_"))
    logs = work / "logs"
    logs.mkdir()
    servers: dict[str, Any] = {}
    load_before = os.getloadavg()
    log(f"load average before the run (1, 5, 15 min): {load_before}")
    try:
        workloads = build_workloads(work, n_images=4 if quick else 8, cifar_steps=args.cifar_steps)
        scaling = backend_scaling(workloads, repeats=2 if quick else 5)
        rows: list[dict[str, Any]] = []
        predict_rows: list[dict[str, Any]] = []
        robustness: dict[str, Any] = {}
        for name, workload in workloads.items():
            for mode, extra in (("batched", []), ("unbatched", ["--no-batching"])):
                label = f"{name}-{mode}"
                options = [*common, "--warmup", warmup[name], "--max-queue", str(sweep_queue), *extra]
                with running(label, workload.bundle, options, logs, servers) as srv:
                    meta = json.loads(get(srv.port, f"/v2/models/{name}")[1])
                    assert meta["name"] == name, meta
                    rows += sweep(srv, workload, mode, levels, duration, warmup_s=1.0 if quick else 3.0)
                    if name == "digits":
                        cell = load_cell(srv, workload, 16, duration, predict=True)
                        predict_rows.append({"model": name, "mode": mode, "request": "predict", **cell})
                        log(f"{name} {mode} predict, 16 clients: {cell['throughput_rps']:.1f} req/s, p99 "
                            f"{cell['latency_s']['p99']} s, errors {cell['errors'] or 0}, logits rows/call "
                            f"{cell['batch'].get('logits', {}).get('mean_rows')}")
                    if label == "digits-batched":
                        robustness["disconnects"] = disconnects(srv, workload, n=8 if quick else 32, after_s=0.1)
                        robustness["slow_clients"] = slow_clients(srv, workload, normal=4, slow=3 if quick else 4,
                                                                  duration=duration, piece=32, pause=0.05)
        digits = workloads["digits"]
        options = [*common, "--warmup", warmup["digits"], "--max-queue", str(overload_queue)]
        options[options.index("--max-body-mb") + 1] = str(small_body_mb)
        with running("digits-overload", digits.bundle, options, logs, servers) as srv:
            robustness["overload"] = overload(srv, digits, clients=2 * overload_queue, duration=4.0 if quick else 15.0)
            robustness["malformed"] = malformed(srv, digits, 200 if quick else 1000, max_steps, max_images,
                                                small_body_mb * 2**20)
        result: dict[str, Any] = {
            "environment": describe_environment(command),
            "date": date,
            "quick": quick,
            "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()],
                             "note": "1/5/15-minute load of the whole machine, this run's servers and clients included"},
            "settings": {
                "duration_s": duration, "clients": levels, "sweep_max_queue": sweep_queue,
                "overload_max_queue": overload_queue, "overload_and_malformed_max_body_mb": small_body_mb,
                "timeout_s": timeout_s, "tolerance": TOLERANCE,
                "latency": "per request, from sending to the last byte of the answer, client side; percentiles "
                           "numpy linear; throughput = correct answers / (last answer - cell start)",
                "models": {n: {"description": w.description, "parameters": w.parameters, "images": len(w.bodies),
                               "body_bytes": [len(b) for b in w.bodies]} for n, w in workloads.items()},
            },
            "servers": servers,
            "workarounds": WORKAROUNDS,
            "backend_scaling": scaling,
            "sweep": rows,
            "predict_probe": predict_rows,
            "goal": goal(rows, 16 if 16 in levels else levels[-1], timeout_s),
            **robustness,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"serve_{date}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    plot(result, stem.with_suffix(".png"))
    for model, g in result["goal"].items():
        log(f"goal {model} at {g['clients']} clients: batched/unbatched = {g['ratio']}x, p99 {g['batched_p99_s']} s, "
            f"met: {g['met']}")
    log(f"wrote {stem}.json, .md, .png")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
