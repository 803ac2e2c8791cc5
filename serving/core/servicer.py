"""Servicer plumbing every service shares: exceptions become status codes in one place, `rpc_errors`:
InvalidInput -> INVALID_ARGUMENT, NotFound -> NOT_FOUND, AlreadyExists -> ALREADY_EXISTS,
ResourceExhausted -> RESOURCE_EXHAUSTED, DeadlineExceeded -> DEADLINE_EXCEEDED, Unsupported -> UNIMPLEMENTED,
Unavailable -> UNAVAILABLE, anything else -> INTERNAL with a short message (the stack trace goes
to the server log under the request id, never to the client).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging

import grpc
from google.protobuf import message_factory

from semgen.bundle import MissingPart
from serving.core.admission import DEFAULT_DECODED_BYTES_IN_FLIGHT, Admission
from serving.core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unsupported,
)
from serving.core.handlers import handler_factory
from serving.core.interceptors import REQUEST_ID
from serving.core.validation import Limits, MalformedRequest, lenient_deserializer

log = logging.getLogger(__name__)


_STATUS_CODES = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (MissingPart, grpc.StatusCode.FAILED_PRECONDITION),
)


def rpc_errors(method):
    """Wrap an async servicer method (a coroutine, or an async generator for a streaming reply)
    so every failure leaves as an actionable gRPC status."""

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream_wrapper(self, request, context):
            try:
                if isinstance(request, MalformedRequest):
                    raise InvalidInput(request.reason)
                # aclosing: however the call ends, the method's own cleanup (stopping a job) runs now.
                async with contextlib.aclosing(method(self, request, context)) as replies:
                    async for reply in replies:
                        yield reply
            except grpc.aio.AbortError:  # the method already chose a status
                raise
            except Exception as e:
                await _abort(context, method, e)

        return stream_wrapper

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            if isinstance(request, MalformedRequest):
                raise InvalidInput(request.reason)
            return await method(self, request, context)
        except grpc.aio.AbortError:  # the method already chose a status
            raise
        except Exception as e:
            await _abort(context, method, e)

    return wrapper


# a status message travels in a header: over the peer's limit (16 KiB by default) the client sees a
# RESOURCE_EXHAUSTED of its own instead of our answer
MAX_DETAILS = 4096


async def _abort(context, method, error: Exception) -> None:
    for cls, code in _STATUS_CODES:
        if isinstance(error, cls):
            details = str(error)
            await context.abort(code, details if len(details) <= MAX_DETAILS else details[:MAX_DETAILS - 1] + "…")
    rid = REQUEST_ID.get()
    log.error("internal error in %s (request id %s)", method.__qualname__, rid, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error; see the server log for request id {rid}")


class AttachableServicer:
    """A servicer registered before its model loads: UNAVAILABLE until `attach`, NOT_FOUND after
    `not_served` (the bundle has no model for the service)."""

    def __init__(self, limits: Limits, engine=None, admission: Admission | None = None):
        self.limits = limits
        self.engine = engine
        # the server-wide budget of decoded bytes in flight: share one among the servicers (server.py)
        self.admission = admission or Admission(DEFAULT_DECODED_BYTES_IN_FLIGHT)
        self.absent: str | None = None

    def attach(self, engine) -> None:
        self.engine = engine

    def not_served(self, reason: str) -> None:
        """The bundle has no model for this service: answer NOT_FOUND with `reason` from now on."""
        self.absent = reason

    def _engine(self):
        """(engine, engine.info), or the status that says why there is none."""
        engine = self.engine
        if engine is None:
            raise NotFound(self.absent) if self.absent else Unavailable("model: still loading; retry shortly")
        return engine, engine.info


def register_handlers(server, service: str, handlers: dict) -> None:
    """Register method handlers like a generated `add_...Servicer_to_server` does."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def unary_handlers(servicer, rpcs: dict) -> dict:
    """Handlers of unary RPCs {name: (request class, response class)} on `servicer`'s methods of
    those names, with lenient deserializers (malformed request bytes get INVALID_ARGUMENT
    instead of UNKNOWN)."""
    return {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=lenient_deserializer(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
        for name, (request_cls, response_cls) in rpcs.items()
    }


def add_lenient_servicer(server, service, servicer) -> None:
    """Register a standard servicer (health, reflection) for `service` (its ServiceDescriptor) like its
    generated `add_..._to_server`, but with lenient deserializers: malformed request bytes get
    INVALID_ARGUMENT, where grpc would answer UNKNOWN."""
    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = handler_factory(method.client_streaming, method.server_streaming)(
            _refusing_malformed(getattr(servicer, method.name), method.client_streaming),
            request_deserializer=lenient_deserializer(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    register_handlers(server, service.full_name, handlers)


def _refusing_malformed(method, client_streaming: bool):
    """`method` (a coroutine, or an async generator) that first answers a MalformedRequest with INVALID_ARGUMENT."""

    def checked(request, context):
        if not client_streaming:
            return _check(request, context), request

        async def requests():
            async for item in request:
                await _check(item, context)
                yield item

        return None, requests()

    if inspect.isasyncgenfunction(method):
        async def stream(request, context):
            check, request = checked(request, context)
            if check is not None:
                await check
            async for reply in method(request, context):
                yield reply

        return stream

    async def unary(request, context):
        check, request = checked(request, context)
        if check is not None:
            await check
        return await method(request, context)

    return unary


async def _check(request, context) -> None:
    if isinstance(request, MalformedRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
