"""The HTTP face of ``xaisdk serve``: KServe V1 and Open Inference Protocol V2 routes over one
:class:`~xaisdk.serve.service.ModelService` (FastAPI on uvicorn).

Status codes: 400 for a bad request (the :class:`~xaisdk.InputError` message in ``{"error": ...}``),
404 for an unknown model or route, 405 for a wrong method, 413 for a body above the limit, 503 with
``Retry-After`` while the model loads or when ``max_queue`` requests are already in, 504 past the
deadline. A 500 means a bug in the server, never bad input.

>>> app = create_app(ServerConfig(bundle="bundle/", name="digits"))
>>> sorted(r.path for r in app.routes if r.path.startswith("/v2/health"))
['/v2/health/live', '/v2/health/ready']
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from xaisdk.errors import InputError
from xaisdk.explainer import RUNNER_UP
from xaisdk.runtime.arrays import softmax
from xaisdk.runtime.preprocessing import model_batch, resizes_any_size
from xaisdk.serve.batching import RequestAborted
from xaisdk.serve.observability import ACCESS_LOG, ServerMetrics, access_line
from xaisdk.serve.protocol import decode_instances, decode_v2_inputs, explanation_rows, parse_options
from xaisdk.serve.service import ModelService, Overloaded, ServerConfig

__all__ = ["create_app"]

RETRY_AFTER_S = 1


class _Refusal(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":"), allow_nan=False).encode(), status_code=status,
                    media_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refusal(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise _Refusal(413, f"request body of {declared} bytes is above the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, f"request body is above the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise _Refusal(400, f"request body is not valid JSON ({type(err).__name__}: {err})") from None


def _body_object(body: Any, key: str) -> dict:
    if not isinstance(body, dict):
        raise InputError(f"request body: expected a JSON object with {key!r}, got {type(body).__name__}")
    return body


def _per_image(value: Any, extras: list[dict], key: str) -> Any:
    """The classes of ``key`` per image: the instances' own, the request parameter's for the others."""
    given = [e.get(key) for e in extras]
    if all(v is None for v in given):
        return value
    if any(v is None for v in given) and (value is None or value == RUNNER_UP):
        raise InputError(f"instances: {key} is given for some images only; give it for all, or one class in parameters")
    return [value if v is None else v for v in given]


def _model_batch(explainer: Any, images: list[np.ndarray]) -> np.ndarray:
    """Each image in the model's layout and value range (one at a time: a stack of (H, W) images would
    read as one (C, H, W) image), brought to the model's size by the bundle's resize policy, as one
    float32 (N, C, H, W) batch."""
    backend = explainer.backend
    rows = []
    for i, image in enumerate(images):
        try:
            batch, single = model_batch(image, backend)
        except InputError as err:
            raise InputError(f"image {i}: {err}") from None
        if not single:
            raise InputError(f"image {i}: expected one image, got a batch of shape {np.shape(image)}")
        rows.append(batch)
    return np.concatenate(rows)


def _explain(explainer: Any, images: list[np.ndarray], options: Any, target: Any, source: Any) -> Any:
    batch = _model_batch(explainer, images)
    return explainer.explain(batch, target, source=source, method=options.method, baseline=options.baseline,
                             **options.method_options)


def _predictions(explainer: Any, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(explainer.logits(_model_batch(explainer, images)), dtype=np.float64)
    return logits, softmax(logits)


def create_app(config: ServerConfig, *, service: ModelService | None = None, load: bool = True) -> FastAPI:
    """The FastAPI application serving ``config.bundle`` as model ``config.name``; with ``load`` the
    bundle starts loading when the application starts (readiness turns true once it is warmed up)."""
    metrics = ServerMetrics()
    service = service or ModelService(config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load:
            service.start()
        yield
        service.close()

    app = FastAPI(title="xaisdk serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.metrics = metrics

    def route(request: Request, template: str) -> None:
        request.scope["xaisdk.route"] = template

    def model(name: str) -> Any:
        if name != config.name:
            raise _Refusal(404, f"unknown model {name!r}; this server serves {config.name!r}")
        if service.load_error is not None:
            raise _Refusal(503, f"the model failed to load: {service.load_error}")
        if not service.ready.is_set():
            raise _Refusal(503, "the model is loading", {"Retry-After": str(RETRY_AFTER_S)})
        return service.explainer

    async def answer(request: Request, work: Callable[[Any], Any]) -> Response:
        try:
            return _json(200, await service.run(work, request.is_disconnected))
        except Overloaded as err:
            return _error(503, str(err), {"Retry-After": str(RETRY_AFTER_S)})
        except RequestAborted as err:
            if err.reason == "deadline":
                return _error(504, f"the request took longer than the deadline of {config.timeout_s:g} s")
            return _error(499, "the client closed the connection")
        except InputError as err:
            return _error(400, str(err))

    # --- health and metadata ------------------------------------------------------------------
    @app.get("/v2/health/live")
    async def live(request: Request) -> Response:
        route(request, "/v2/health/live")
        return _json(200, {"live": True})

    @app.get("/v2/health/ready")
    async def ready(request: Request) -> Response:
        route(request, "/v2/health/ready")
        ok = service.ready.is_set()
        return _json(200 if ok else 503, {"ready": ok, **({"error": service.load_error} if service.load_error else {})})

    @app.get("/v2/models/{name}/ready")
    async def model_ready(request: Request, name: str) -> Response:
        route(request, "/v2/models/{name}/ready")
        if name != config.name:
            return _error(404, f"unknown model {name!r}; this server serves {config.name!r}")
        ok = service.ready.is_set()
        return _json(200 if ok else 503, {"name": name, "ready": ok})

    @app.get("/v2/models/{name}")
    async def model_metadata(request: Request, name: str) -> Response:
        route(request, "/v2/models/{name}")
        explainer = model(name)
        c, h, w = explainer.backend.input_shape
        k = explainer.backend.num_classes
        return _json(200, {
            "name": name, "versions": ["1"], "platform": explainer.backend.name,
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, c, h, w]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                        {"name": "attributions", "datatype": "FP32", "shape": [-1, c, h, w]}],
            "parameters": {"class_names": list(explainer.class_names), "value_range": list(explainer.backend.value_range),
                           "has_generator": bool(explainer.backend.has_generator),
                           "supports_deeplift": bool(explainer.backend.supports_deeplift)},
        })

    @app.get("/v1/models")
    async def v1_models(request: Request) -> Response:
        route(request, "/v1/models")
        return _json(200, {"models": [config.name]})

    @app.get("/v1/models/{name}")
    async def v1_model(request: Request, name: str) -> Response:
        route(request, "/v1/models/{name}")
        if name.endswith((":predict", ":explain")):
            return _error(405, "Method Not Allowed: use POST", {"Allow": "POST"})
        if name != config.name:
            return _error(404, f"unknown model {name!r}; this server serves {config.name!r}")
        return _json(200, {"name": name, "ready": service.ready.is_set()})

    # --- KServe V1 ----------------------------------------------------------------------------
    @app.post("/v1/models/{name}:predict")
    async def v1_predict(request: Request, name: str) -> Response:
        route(request, "/v1/models/{name}:predict")
        explainer = model(name)
        body = _body_object(await _read_json(request, config.max_body_bytes), "instances")
        shape, resizes = explainer.backend.input_shape, resizes_any_size(explainer.backend)

        def work(explainer: Any) -> dict:
            images, _ = decode_instances(body.get("instances"), shape, config.max_images, resizes=resizes)
            logits, probabilities = _predictions(explainer, images)
            names = explainer.class_names
            return {"predictions": [{"label": int(i), "label_name": names[int(i)], "logits": lg.tolist(),
                                     "probabilities": p.tolist()}
                                    for i, lg, p in zip(logits.argmax(1), logits, probabilities)]}

        return await answer(request, work)

    @app.post("/v1/models/{name}:explain")
    async def v1_explain(request: Request, name: str) -> Response:
        route(request, "/v1/models/{name}:explain")
        explainer = model(name)
        body = _body_object(await _read_json(request, config.max_body_bytes), "instances")
        options = parse_options(body.get("parameters"), has_generator=explainer.backend.has_generator)
        shape, resizes = explainer.backend.input_shape, resizes_any_size(explainer.backend)

        def work(explainer: Any) -> dict:
            images, extras = decode_instances(body.get("instances"), shape, config.max_images, resizes=resizes)
            target = _per_image(options.target, extras, "target")
            source = _per_image(options.source, extras, "source")
            explanation = _explain(explainer, images, options, target, source)
            return {"explanations": explanation_rows(explanation, explainer.class_names, options.baseline, options.output)}

        return await answer(request, work)

    # --- Open Inference Protocol V2 -----------------------------------------------------------
    @app.post("/v2/models/{name}/infer")
    async def v2_infer(request: Request, name: str) -> Response:
        route(request, "/v2/models/{name}/infer")
        explainer = model(name)
        body = _body_object(await _read_json(request, config.max_body_bytes), "inputs")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InputError("parameters: expected an object")
        explain = parameters.get("explain", False)
        if not isinstance(explain, bool):
            raise InputError("parameters.explain: expected true or false")
        request_id = body.get("id", "")
        if not isinstance(request_id, str):
            raise InputError("id: expected a string")
        options = parse_options(parameters, has_generator=explainer.backend.has_generator)
        if not explain and set(parameters) - {"explain", "content_type", "headers"}:
            raise InputError("parameters: explanation options were given without \"explain\": true")
        shape, resizes = explainer.backend.input_shape, resizes_any_size(explainer.backend)

        def work(explainer: Any) -> dict:
            images, classes = decode_v2_inputs(body.get("inputs"), shape, config.max_images, resizes=resizes)
            n = len(images)
            head = {"model_name": name, "model_version": "1", "id": request_id}
            if not explain:
                logits, probabilities = _predictions(explainer, images)
                k = logits.shape[1]
                return {**head, "outputs": [
                    {"name": "logits", "datatype": "FP32", "shape": [n, k], "data": logits.ravel().tolist()},
                    {"name": "probabilities", "datatype": "FP32", "shape": [n, k], "data": probabilities.ravel().tolist()},
                    {"name": "label", "datatype": "INT64", "shape": [n], "data": logits.argmax(1).tolist()}]}
            e = _explain(explainer, images, options, classes.get("target", options.target), classes.get("source", options.source))
            outputs = []
            if options.output in ("tensor", "both"):
                outputs.append({"name": "attributions", "datatype": "FP32", "shape": list(e.attributions.shape),
                                "data": e.attributions.ravel().tolist()})
            outputs += [
                {"name": "source", "datatype": "INT64", "shape": [n], "data": np.atleast_1d(e.source).tolist()},
                {"name": "target", "datatype": "INT64", "shape": [n],
                 "data": [-1] * n if e.target is None else np.atleast_1d(e.target).tolist()},
                {"name": "score", "datatype": "FP32", "shape": [n], "data": np.atleast_1d(e.score).tolist()},
            ]
            for key in ("baseline_score", "convergence_delta"):
                value = getattr(e, key)
                if value is not None:
                    outputs.append({"name": key, "datatype": "FP32", "shape": [n], "data": np.atleast_1d(value).tolist()})
            if options.output in ("png", "both"):
                rows = explanation_rows(e, explainer.class_names, options.baseline, "png")
                outputs.append({"name": "overlay_png", "datatype": "BYTES", "shape": [n],
                                "data": [row["overlay_png_b64"] for row in rows]})
            return {**head, "parameters": {"method": e.method, "baseline": options.baseline if not isinstance(
                options.baseline, np.ndarray) else "array"}, "outputs": outputs}

        return await answer(request, work)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        route(request, "/metrics")
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # --- errors -------------------------------------------------------------------------------
    @app.exception_handler(_Refusal)
    async def refused(_: Request, err: _Refusal) -> Response:
        return _error(err.status, err.message, err.headers)

    @app.exception_handler(InputError)
    async def bad_input(_: Request, err: InputError) -> Response:
        return _error(400, str(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> Response:
        return _error(err.status_code, str(err.detail), getattr(err, "headers", None))

    app.add_middleware(_AccessLog, metrics=metrics)
    return app


class _AccessLog:
    """Pure ASGI middleware: one JSON access-log line and the request metrics per HTTP request."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, sent = 500, 0

        async def counting_send(message: dict) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            seconds = time.perf_counter() - started
            template = scope.get("xaisdk.route", "other")
            self.metrics.observe_request(template, status, seconds)
            client = scope.get("client") or ("", 0)
            ACCESS_LOG.info(access_line(id=uuid.uuid4().hex[:12], client=f"{client[0]}:{client[1]}",
                                        method=scope.get("method"), path=scope.get("path"), route=template,
                                        status=status, ms=round(seconds * 1000, 2), bytes_out=sent))
