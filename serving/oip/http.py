"""The Open Inference Protocol over HTTP/REST, plus plain /healthz and /readyz (aiohttp, on the gateway's loop).

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready    200, or 400 when not ready (the protocol's "false")
    GET  /v2/models/{name}[/versions/{v}]      model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer   JSON tensors; also the binary tensor extension
                                               (Inference-Header-Content-Length), as tritonclient sends by default
    GET  /healthz | /readyz                    200 "ok" / 503 while loading or the backend is down

Same checks, limits and error messages as the gRPC side (serving/oip/models.py); errors are
{"error": message} with the HTTP status of the gRPC code. With a token every path but the health ones needs
`Authorization: Bearer <token>`. Calls are counted as method "http/<Name>" in the request series (health
calls as probes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

from aiohttp import web

from serving.core.auth import token_refused
from serving.core.errors import DeadlineExceeded, InvalidInput, NotFound, ResourceExhausted, Unavailable, Unsupported
from serving.core.metrics import ServingMetrics
from serving.oip.models import TensorModels
from serving.oip.tensors import datatype_of, from_raw, from_values, to_raw

log = logging.getLogger("serving.http")

BINARY_HEADER = "Inference-Header-Content-Length"
_STATUSES = (  # error -> (HTTP status, the gRPC code name counted in the metrics)
    (InvalidInput, 400, "INVALID_ARGUMENT"), (NotFound, 404, "NOT_FOUND"),
    (ResourceExhausted, 429, "RESOURCE_EXHAUSTED"), (Unavailable, 503, "UNAVAILABLE"),
    (DeadlineExceeded, 504, "DEADLINE_EXCEEDED"), (Unsupported, 501, "UNIMPLEMENTED"),
)
EXTENSIONS = ["binary_tensor_data"]
OPEN_ROUTES = {"health_live", "health_ready", "health_v2_live", "health_v2_ready"}  # no token: probes
MAX_JSON_BYTES = 8 << 20  # the JSON part of a request, and the outputs a reply sends as JSON


def create_app(models: TensorModels, metrics: ServingMetrics, token: str = "", max_body_bytes: int = 64 << 20):
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_middleware(metrics, token)])
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    app.router.add_get("/healthz", _health(lambda: True, "ok"), name="health_live")
    app.router.add_get("/readyz", _health(models.ready, "ready", models.degraded), name="health_ready")
    app.router.add_get("/v2/health/live", _v2_health(lambda: True, "live"), name="health_v2_live")
    app.router.add_get("/v2/health/ready", _v2_health(models.ready, "ready"), name="health_v2_ready")
    app.router.add_get("/v2", _server_metadata(models), name="ServerMetadata")
    for path in (model, versioned):
        suffix = "_v" if path is versioned else ""
        app.router.add_get(path, _model_metadata(models), name="ModelMetadata" + suffix)
        app.router.add_get(path + "/ready", _model_ready(models), name="ModelReady" + suffix)
        app.router.add_post(path + "/infer", _infer(models), name="ModelInfer" + suffix)
    return app


def _health(ready, word: str, degraded=lambda: ""):
    async def handle(request):
        if ready():  # degraded: still serving (200), and says what capacity is lost
            lacking = degraded()
            return web.Response(text=f"{word} (degraded: {lacking})\n" if lacking else f"{word}\n")
        return web.Response(status=503, text="not ready: loading models, or the backend is down\n")

    return handle


def _flag(value: bool, key: str):
    return web.json_response({key: value}, status=200 if value else 400)


def _v2_health(check, key: str):
    async def handle(request):
        return _flag(check(), key)

    return handle


def _server_metadata(models: TensorModels):
    async def handle(request):
        return web.json_response({**models.server_metadata(), "extensions": EXTENSIONS})

    return handle


def _model_metadata(models: TensorModels):
    async def handle(request):
        return web.json_response(models.model(request.match_info["name"], request.match_info.get("version", "")).metadata())

    return handle


def _model_ready(models: TensorModels):
    async def handle(request):
        return _flag(models.model_ready(request.match_info["name"], request.match_info.get("version", "")), "ready")

    return handle


def _infer(models: TensorModels):
    async def handle(request):
        body = await request.read()
        # JSON is parsed off the event loop (the gRPC calls share it), and its part of the body is bounded:
        # parsed, a JSON number takes ~5x its text
        header, inputs = await asyncio.to_thread(_decode_request, body, request.headers.get(BINARY_HEADER))
        wanted = header.get("outputs") or []
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
            raise InvalidInput('outputs: must be a list of {"name": ...}')
        binary_all = bool(_parameters(header, "parameters").get("binary_data_output"))
        binary = {o["name"]: bool(_parameters(o, f"outputs[{o['name']}].parameters").get("binary_data", binary_all))
                  for o in wanted}
        model = models.model(request.match_info["name"], request.match_info.get("version", ""))
        _check_json_reply(model.spec, inputs, binary, binary_all)
        model, outputs = await models.infer(model.spec.name, model.version, inputs, list(binary))
        head, tail = await asyncio.to_thread(_encode_reply, model, header.get("id"), outputs, binary, binary_all)
        if not tail:
            return web.Response(body=head, content_type="application/json")
        return web.Response(body=head + tail, content_type="application/octet-stream",
                            headers={BINARY_HEADER: str(len(head))})

    return handle


def _decode_request(body: bytes, header_length: str | None) -> tuple[dict, dict]:
    header, blobs = _split_binary(body, header_length)
    return header, _decode_inputs(header, blobs)


def _check_json_reply(spec, inputs: dict, binary: dict, binary_all: bool) -> None:
    """Refuse, before any work, outputs too large to send as JSON (they can come as binary data)."""
    rows = len(next(iter(inputs.values()))) if inputs else 0
    as_json = [t for t in spec.outputs if not binary.get(t.name, binary_all) and (not binary or t.name in binary)]
    nbytes = rows * sum(math.prod(t.shape[1:]) * t.dtype.itemsize for t in as_json)
    if nbytes > MAX_JSON_BYTES:
        raise InvalidInput(f"outputs: {nbytes} bytes of outputs as JSON is over the limit of {MAX_JSON_BYTES}; ask "
                           'for binary data ("parameters": {"binary_data_output": true}) or for fewer rows')


def _encode_reply(model, request_id, outputs: dict, binary: dict, binary_all: bool) -> tuple[bytes, bytes]:
    reply = {"model_name": model.spec.name, "model_version": model.version, "outputs": []}
    if request_id is not None:
        reply["id"] = request_id
    tail = []
    for name, array in outputs.items():
        tensor = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary.get(name, binary_all):
            tail.append(to_raw(array))
            tensor["parameters"] = {"binary_data_size": len(tail[-1])}
        else:
            tensor["data"] = array.ravel().tolist()
        reply["outputs"].append(tensor)
    return json.dumps(reply).encode(), b"".join(tail)


def _parameters(entry: dict, field: str) -> dict:
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{field}: must be a JSON object")
    return parameters


def _split_binary(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header of a request, and the binary tensor data after it (the binary tensor extension)."""
    if header_length is None:
        json_part, blobs = body, b""
    else:
        if not (header_length.isascii() and header_length.isdigit() and int(header_length) <= len(body)):
            raise InvalidInput(f"{BINARY_HEADER}: {header_length[:20]!r} is not a length within the body")
        json_part, blobs = body[:int(header_length)], body[int(header_length):]
    if len(json_part) > MAX_JSON_BYTES:
        raise InvalidInput(f"body: {len(json_part)} bytes of JSON is over the limit of {MAX_JSON_BYTES}; send "
                           f"large tensors as binary data ({BINARY_HEADER})")
    try:
        header = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InvalidInput(f"body: not JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise InvalidInput('body: must be a JSON object {"inputs": [...]}')
    return header, blobs


def _decode_inputs(header: dict, blobs: bytes) -> dict:
    entries = header.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise InvalidInput('inputs: give a non-empty list of {"name", "shape", "datatype", "data"}')
    tensors, offset = {}, 0
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}]: needs a name")
        field = f"inputs[{name}]"
        shape, datatype = entry.get("shape"), entry.get("datatype")
        if name in tensors:
            raise InvalidInput(f"{field}: given twice")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape) or not isinstance(datatype, str):
            raise InvalidInput(f"{field}: needs shape (a list of integers) and datatype (a string)")
        size = _parameters(entry, f"{field}.parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(blobs):
                raise InvalidInput(f"{field}: binary_data_size {size!r} runs past the binary data")
            tensors[name] = from_raw(blobs[offset:offset + size], datatype, shape, field)
            offset += size
        elif "data" in entry:
            tensors[name] = from_values(entry["data"], datatype, shape, field)
        else:
            raise InvalidInput(f"{field}: needs data (or parameters.binary_data_size with binary data)")
    if offset != len(blobs):
        raise InvalidInput(f"body: {len(blobs) - offset} bytes of binary data belong to no input")
    return tensors


def _middleware(metrics: ServingMetrics, token: str):
    secret = token.encode()

    @web.middleware
    async def observe(request, handler):
        route = request.match_info.route.name
        method = f"http/{route.removesuffix('_v')}" if route else "http/unknown"
        start, code = time.perf_counter(), "OK"
        try:
            refused = None if not secret or route in OPEN_ROUTES else \
                token_refused(request.headers.get("Authorization"), secret)
            if refused is not None:
                code = "UNAUTHENTICATED"
                return web.json_response({"error": refused}, status=401)
            try:
                return await handler(request)
            except web.HTTPException as e:  # no such path, wrong verb, body too large
                code = "NOT_FOUND" if e.status == 404 else "INVALID_ARGUMENT"
                return web.json_response({"error": f"{request.method} {request.path}: {e.text or e.reason}"},
                                         status=e.status)
            except Exception as e:
                status, code, message = _status_of(e)
                return web.json_response({"error": message}, status=status)
        finally:
            if route:  # made-up paths are not labelled: clients cannot blow up the series' cardinality
                metrics.observe_request(method, code, time.perf_counter() - start)

    return observe


def _status_of(error: Exception) -> tuple[int, str, str]:
    for cls, status, code in _STATUSES:
        if isinstance(error, cls):
            return status, code, str(error)
    log.error("internal error in an HTTP call", exc_info=error)
    return 500, "INTERNAL", "internal error; see the server log"


async def start_http(app: web.Application, host: str, port: int, ssl_context=None) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks one); returns the runner (cleanup() stops it) and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, runner.addresses[0][1]
