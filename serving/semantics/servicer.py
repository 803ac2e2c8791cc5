"""semgen.v1.SemanticsService: decode + validate the proto, await the engine, encode the reply.

No torch here; status codes come from `rpc_errors`. The streaming RPCs forward the engine's job
events. When the client cancels or the deadline passes, grpc cancels this handler; leaving the
engine's event stream (`aclosing`) stops the job at its next iteration.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import numpy as np

from serving.core.admission import RequestCost
from serving.core.images import decode_class_mask, encode_mask_pngs, encode_png, encode_pngs, off_loop
from serving.core.latents import latents_message
from serving.core.protos import SEMANTICS_SERVICE, semantics_pb2 as pb
from serving.semantics.engine import HeadSummary, Progress, Samples, SemanticsEngine, SemanticsInfo
from serving.semantics.validation import (check_edit, check_fit_head, check_sample, check_sample_conditional, check_segment)
from serving.core.servicer import AttachableServicer, register_handlers, rpc_errors, unary_handlers
from serving.core.validation import lenient_deserializer


class SemanticsServicer(AttachableServicer):
    """Registered before the model loads; answers UNAVAILABLE until `attach`."""

    engine: SemanticsEngine | None

    @rpc_errors
    async def Sample(self, request: pb.SampleRequest, context) -> pb.SampleResponse:
        engine, info = self._engine()
        args = check_sample(request, info, self.limits)
        result = await engine.sample(args.seeds, args.latents, args.psi, args.head)
        return await self._samples(result, args.head or "")

    @rpc_errors
    async def Segment(self, request: pb.SegmentRequest, context) -> pb.SegmentResponse:
        engine, info = self._engine()
        args = check_segment(request, info, self.limits)
        masks = await engine.segment(args.latents, args.head)
        if masks.shape != (len(args.latents), info.image_size, info.image_size):
            raise RuntimeError(f"engine broke its contract: masks of shape {masks.shape}")
        return pb.SegmentResponse(masks=await asyncio.to_thread(encode_mask_pngs, masks),
                                  class_names=info.heads[args.head].class_names, head=args.head,
                                  width=info.image_size, height=info.image_size)

    @rpc_errors
    async def FitHead(self, request: pb.FitHeadRequest, context) -> pb.HeadInfo:
        engine, info = self._engine()
        args = check_fit_head(request, info, self.limits)
        cost = RequestCost(self.limits.max_request_decoded_bytes)  # from the headers, before decoding any
        for i, data in enumerate(request.masks):
            cost.class_mask(data, f"masks[{i}]", info.image_size)
        with self.admission.hold(cost.total * 2, "masks"):  # the decoded masks, and np.stack's copy
            masks = [await self._class_mask(data, f"masks[{i}]", len(args.class_names), "class_names", info)
                     for i, data in enumerate(request.masks)]
            head = await engine.fit_head(args.name, args.latents, np.stack(masks), args.class_names, args.seed,
                                         args.iterations, args.replace, context.time_remaining())
        return _head_info(head)

    @rpc_errors
    async def ListHeads(self, request: pb.ListHeadsRequest, context) -> pb.ListHeadsResponse:
        _, info = self._engine()
        heads = sorted(info.heads.values(), key=lambda h: (not h.bundled, h.name))
        return pb.ListHeadsResponse(heads=[_head_info(h) for h in heads])

    @rpc_errors
    async def SampleConditional(self, request: pb.SampleConditionalRequest, context):
        engine, info = self._engine()
        args = check_sample_conditional(request, info, self.limits)
        with self._hold_target(request.target_mask, info):  # for the job's lifetime
            target = await self._target_mask(request.target_mask, args.head, info)
            job = engine.sample_conditional(target, args.head, args.num_samples, args.seed, args.n_init,
                                            args.iterations, args.lr, args.space, args.psi, args.preview_every,
                                            context.time_remaining())
            async with contextlib.aclosing(job):
                async for event in job:
                    yield await self._job_event(event, args.head)

    @rpc_errors
    async def EditSemantics(self, request: pb.EditSemanticsRequest, context):
        engine, info = self._engine()
        args = check_edit(request, info, self.limits)
        with self._hold_target(request.target_mask, info):  # for the job's lifetime
            target = await self._target_mask(request.target_mask, args.head, info)
            job = engine.edit(args.latent, target, args.head, args.iterations, args.lr, args.space,
                              args.preview_every, context.time_remaining())
            async with contextlib.aclosing(job):
                async for event in job:
                    yield await self._job_event(event, args.head)

    # ---- shared steps ------------------------------------------------------------------

    async def _class_mask(self, data: bytes, field: str, num_classes: int, table: str, info: SemanticsInfo):
        # PIL decode/encode is CPU work too: keep it off the event loop.
        return await asyncio.to_thread(decode_class_mask, data, field, info.image_size, num_classes, table,
                                       self.limits.max_image_bytes, self.limits.max_image_pixels)

    def _hold_target(self, data: bytes, info: SemanticsInfo):
        cost = RequestCost(self.limits.max_request_decoded_bytes)
        cost.class_mask(data, "target_mask", info.image_size)
        return self.admission.hold(cost.total, "target_mask")

    async def _target_mask(self, data: bytes, head: str, info: SemanticsInfo):
        return await self._class_mask(data, "target_mask", len(info.heads[head].class_names), f"head {head!r}", info)

    async def _job_event(self, event: Progress | Samples, head: str) -> pb.JobEvent:
        if isinstance(event, Samples):
            return pb.JobEvent(result=await self._samples(event, head))
        preview = b"" if event.preview is None else await asyncio.to_thread(encode_png, event.preview)
        return pb.JobEvent(progress=pb.JobProgress(iteration=event.iteration, total_iterations=event.total,
                                                   loss=event.loss, preview=preview))

    async def _samples(self, result: Samples, head: str) -> pb.SampleResponse:
        n, height, width, _ = result.images.shape
        if len(result.latents) != n or (result.masks is not None and len(result.masks) != n):
            raise RuntimeError(f"engine broke its contract: {n} images, latents {result.latents.shape}")
        masks = [] if result.masks is None else await off_loop(encode_mask_pngs, result.masks, size=result.masks.size)
        return pb.SampleResponse(
            images=await off_loop(encode_pngs, result.images, size=result.images.size),
            latents=latents_message(result.latents),
            masks=masks,
            class_names=result.class_names,
            head=head,
            width=width,
            height=height,
            scores=[] if result.scores is None else result.scores.tolist(),
        )


def _head_info(head: HeadSummary) -> pb.HeadInfo:
    return pb.HeadInfo(name=head.name, kind=head.kind, class_names=head.class_names, bundled=head.bundled,
                       shots=head.shots)


def add_semantics_servicer(server, servicer: SemanticsServicer) -> None:
    """Register like the generated `add_SemanticsServiceServicer_to_server`, with lenient deserializers
    (malformed request bytes get INVALID_ARGUMENT instead of UNKNOWN)."""
    unary = {
        "Sample": (pb.SampleRequest, pb.SampleResponse),
        "Segment": (pb.SegmentRequest, pb.SegmentResponse),
        "FitHead": (pb.FitHeadRequest, pb.HeadInfo),
        "ListHeads": (pb.ListHeadsRequest, pb.ListHeadsResponse),
    }
    streaming = {"SampleConditional": pb.SampleConditionalRequest, "EditSemantics": pb.EditSemanticsRequest}
    handlers = unary_handlers(servicer, unary)
    for name, request_cls in streaming.items():
        handlers[name] = grpc.unary_stream_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=lenient_deserializer(request_cls),
            response_serializer=pb.JobEvent.SerializeToString,
        )
    register_handlers(server, SEMANTICS_SERVICE, handlers)
