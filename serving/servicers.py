"""gRPC servicers: decode + validate the proto, await the engine, encode the reply.

No torch here. Exceptions become status codes in one place, `rpc_errors`:
InvalidInput -> INVALID_ARGUMENT, NotFound -> NOT_FOUND, AlreadyExists -> ALREADY_EXISTS,
ResourceExhausted -> RESOURCE_EXHAUSTED, DeadlineExceeded -> DEADLINE_EXCEEDED, Unsupported -> UNIMPLEMENTED,
Unavailable -> UNAVAILABLE, anything else -> INTERNAL with a short message (the stack trace goes
to the server log under the request id, never to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging

import grpc

from serving.engine import (
    AlreadyExists,
    DeadlineExceeded,
    Engine,
    InvalidInput,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unsupported,
)
from serving.images import decode_image, decode_mask, decoded_size, encode_pngs, off_loop
from serving.interceptors import REQUEST_ID
from serving.protos import PYRAMID_SERVICE, pyramid_pb2 as pb
from serving.validation import (
    Limits,
    MalformedRequest,
    check_box_inside,
    check_composite,
    check_generate,
    check_repaint,
    lenient_deserializer,
)

log = logging.getLogger(__name__)


_STATUS_CODES = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unsupported, grpc.StatusCode.UNIMPLEMENTED),
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


async def _abort(context, method, error: Exception) -> None:
    for cls, code in _STATUS_CODES:
        if isinstance(error, cls):
            await context.abort(code, str(error))
    rid = REQUEST_ID.get()
    log.error("internal error in %s (request id %s)", method.__qualname__, rid, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error; see the server log for request id {rid}")


class AttachableServicer:
    """A servicer registered before its model loads: UNAVAILABLE until `attach`, NOT_FOUND after
    `not_served` (the bundle has no model for the service)."""

    def __init__(self, limits: Limits, engine=None):
        self.limits = limits
        self.engine = engine
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


class PyramidServicer(AttachableServicer):
    """semgen.v1.PyramidService. Registered before the model loads; answers UNAVAILABLE until `attach`."""

    engine: Engine | None

    @rpc_errors
    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        engine, info = self._engine()
        args = check_generate(request, info, self.limits)
        image = await self._decode(request.image, "image")
        levels = {}
        for i, (level, mask) in enumerate(args.levels.items()):
            levels[level] = None if mask is None else await self._mask(mask, f"level_masks[{i}].mask", image)
        result = await engine.generate(image, levels, args.num_samples, args.seed, args.class_index)
        return await self._reply(result, args.num_samples, info)

    @rpc_errors
    async def Repaint(self, request: pb.RepaintRequest, context) -> pb.GenerateResponse:
        engine, info = self._engine()
        args = check_repaint(request, info, self.limits)
        image = await self._decode(request.image, "image")
        region = await self._mask(request.region, "region", image)
        if not region.any():
            raise InvalidInput("region: empty (no pixel above 0); mark the region to repaint")
        result = await engine.repaint(image, region, args.level, args.num_samples, args.seed, args.class_index)
        return await self._reply(result, args.num_samples, info)

    @rpc_errors
    async def Composite(self, request: pb.CompositeRequest, context) -> pb.GenerateResponse:
        engine, info = self._engine()
        args = check_composite(request, info, self.limits)
        image = await self._decode(request.image, "image")
        check_box_inside(args.box, image.shape[1], image.shape[0])
        obj = await self._decode(request.object_image, "object_image")
        result = await engine.composite(image, obj, args.box, args.level, args.num_samples, args.seed,
                                        args.class_index)
        return await self._reply(result, args.num_samples, info)

    # ---- shared steps ------------------------------------------------------------------

    async def _decode(self, data: bytes, field: str):
        # PIL decode/encode is CPU work too: keep large images off the event loop.
        return await off_loop(decode_image, data, self.limits.max_image_bytes, self.limits.max_image_pixels, field,
                              size=decoded_size(data))

    async def _mask(self, mask, field: str, image):
        height, width = image.shape[:2]
        return await asyncio.to_thread(
            decode_mask, mask, field, width, height, self.limits.max_image_bytes, self.limits.max_image_pixels
        )

    async def _reply(self, result, num_samples: int, info) -> pb.GenerateResponse:
        n, height, width, _ = result.images.shape
        if n != num_samples or not 0 <= result.class_index < len(info.class_names):
            raise RuntimeError(f"engine broke its contract: {n} images, class {result.class_index}")
        pngs = await off_loop(encode_pngs, result.images, size=result.images.size)
        return pb.GenerateResponse(
            images=pngs,
            class_index=result.class_index,
            class_name=info.class_names[result.class_index],
            level=result.level,
            width=width,
            height=height,
        )


def add_pyramid_servicer(server, servicer: PyramidServicer) -> None:
    """Register like the generated `add_PyramidServiceServicer_to_server`, but with a lenient
    deserializer so malformed request bytes get INVALID_ARGUMENT instead of UNKNOWN."""
    rpcs = {name: (request_cls, pb.GenerateResponse) for name, request_cls in
            (("Generate", pb.GenerateRequest), ("Repaint", pb.RepaintRequest), ("Composite", pb.CompositeRequest))}
    register_handlers(server, PYRAMID_SERVICE, unary_handlers(servicer, rpcs))
