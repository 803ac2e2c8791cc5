"""Server interceptor: request id, one log line and metrics for every RPC.

It wraps the handler's behaviour (not just the call to it) so it sees the *final* status code,
including aborts from servicers, cancellations and deadline expiry. Given the server's send limit, it
also serializes the replies itself: one over the limit is answered RESOURCE_EXHAUSTED and counted so
(grpc would fail it after the handler returned, and the RPC would be counted as OK).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
import uuid

import grpc

from serving.core.handlers import behaviour, handler_factory
from serving.core.metrics import ServingMetrics

log = logging.getLogger("serving.rpc")

REQUEST_ID_KEY = "x-request-id"
# The current RPC's request id, readable from servicer code and engine calls (one task per RPC).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("semgen_request_id", default="-")
# Health and reflection are polled by machines; log them at DEBUG to keep the log readable.
_QUIET_PREFIXES = ("grpc.health.", "grpc.reflection.")


def _request_id(metadata) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            # Reuse the client's id only if it is safe to put in a log line.
            if 0 < len(value) <= 128 and value.isascii() and value.isprintable():
                return value
    return uuid.uuid4().hex[:16]


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServingMetrics, max_send_bytes: int | None = None):
        self.metrics = metrics
        self.max_send_bytes = max_send_bytes  # grpc.max_send_message_length; None: replies are not checked

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            # Unknown method: grpc answers UNIMPLEMENTED. Not labelled, so clients cannot
            # blow up the metric's cardinality with made-up method names.
            return None
        method = handler_call_details.method.lstrip("/")
        return _wrap(handler, lambda context: self._observe(method, context), self.max_send_bytes)

    @contextlib.asynccontextmanager
    async def _observe(self, method: str, context):
        rid = _request_id(context.invocation_metadata())
        REQUEST_ID.set(rid)
        # Read now: grpc frees a cancelled call's core object, and peer() on it then crashes the process.
        peer = context.peer()
        with contextlib.suppress(Exception):  # the peer may already be gone
            await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
        in_flight = self.metrics.in_flight.labels(method=method)
        in_flight.inc()
        start = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            yield
            code = context.code() or grpc.StatusCode.OK
        except (asyncio.CancelledError, GeneratorExit):
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except BaseException:  # AbortError carries its code in the context; others are UNKNOWN
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            elapsed = time.perf_counter() - start
            in_flight.dec()
            self.metrics.observe_request(method, code.name, elapsed)
            level = logging.DEBUG if method.startswith(_QUIET_PREFIXES) else logging.INFO
            log.log(level, "%s %s %.1fms request_id=%s peer=%s",
                    method, code.name, elapsed * 1000, rid, peer)


def _wrap(handler: grpc.RpcMethodHandler, observe, max_send_bytes: int | None = None) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour run inside `observe(context)`; with `max_send_bytes`, its replies
    are serialized there too, and one over the limit is refused with RESOURCE_EXHAUSTED."""
    behavior = behaviour(handler)
    if behavior is None:
        return handler
    factory = handler_factory(handler.request_streaming, handler.response_streaming)

    serialize = handler.response_serializer
    checked = max_send_bytes is not None and serialize is not None

    async def sized(response, context):
        if not checked or response is None:
            return response
        data = serialize(response)
        if len(data) > max_send_bytes:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"response: {len(data)} bytes is over the server's message limit of "
                                f"{max_send_bytes} bytes (--max-message-bytes)")
        return data

    if inspect.isasyncgenfunction(behavior):  # streaming reply written with `yield`
        async def wrapped(request, context):
            async with observe(context):
                async for response in behavior(request, context):
                    yield await sized(response, context)
    elif inspect.iscoroutinefunction(behavior):
        async def wrapped(request, context):
            async with observe(context):
                return await sized(await behavior(request, context), context)
    else:  # a sync behaviour run by grpc's thread pool; all semgen servicers are async
        return handler

    def passing_bytes(response):  # replies `sized` serialized, and those a behaviour writes with context.write
        return response if isinstance(response, bytes) else serialize(response)

    return factory(wrapped, request_deserializer=handler.request_deserializer,
                   response_serializer=passing_bytes if checked else serialize)
