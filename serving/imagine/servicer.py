"""semgen.v1.ImagineService: decode + validate the proto, await the engine, encode the reply.

No torch here; status codes come from `rpc_errors`. Imagine forwards the engine's job events.
When the client cancels or the deadline passes, grpc cancels this handler; leaving the engine's
event stream (`aclosing`) stops the job at its next iteration.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from serving.core.admission import RequestCost
from serving.core.errors import InvalidInput
from serving.core.images import decode_image, decode_region, encode_pngs
from serving.imagine.engine import ImagineEngine, ImagineInfo, ImagineJob, StepProgress, Variations
from serving.imagine.validation import ImagineArgs, check_imagine, proto_message
from serving.core.protos import IMAGINE_SERVICE, imagine_pb2 as pb
from serving.core.servicer import AttachableServicer, register_handlers, rpc_errors
from serving.core.validation import lenient_deserializer


class ImagineServicer(AttachableServicer):
    """Registered before the model loads; answers UNAVAILABLE until `attach`."""

    engine: ImagineEngine | None

    @rpc_errors
    async def GetImagineInfo(self, request: pb.GetImagineInfoRequest, context) -> pb.ImagineInfo:
        _, info = self._engine()
        return pb.ImagineInfo(
            image_size=info.image_size, class_names=info.class_names, layer_names=info.layer_names,
            default_layers=info.default_layers, shallow_layers=info.shallow_layers, deep_layers=info.deep_layers,
            default_stage1_iterations=info.default_stage1, default_stage2_iterations=info.default_stage2)

    @rpc_errors
    async def Imagine(self, request: pb.ImagineRequest, context):
        engine, info = self._engine()
        args = check_imagine(request, info, self.limits)
        with self.admission.hold(self._cost(request, args), "reference_png"):  # for the job's lifetime
            job = await self._decode(request, args)
            try:
                events = engine.imagine(job, context.time_remaining())
                async with contextlib.aclosing(events):
                    async for event in events:
                        yield await self._event(event, args.num_variations, info)
            except InvalidInput as e:  # the pipeline's own checks name its fields, not the request's
                raise InvalidInput(proto_message(str(e))) from None

    # ---- shared steps ------------------------------------------------------------------

    def _cost(self, request: pb.ImagineRequest, args: ImagineArgs) -> int:
        """The decoded bytes of the request's images and regions, from their headers (before decoding any)."""
        cost = RequestCost(self.limits.max_request_decoded_bytes)
        reference = cost.image(request.reference_png, "reference_png")
        if args.control == "shape":
            cost.image(request.shape.shape_png, "shape.shape_png")
        elif args.control == "style":
            cost.image(request.style.content_png, "style.content_png")
        elif args.control == "counterfactual":
            c = request.counterfactual
            query = cost.image(c.query_png, "counterfactual.query_png")
            cost.mask_png(c.query_region_png, "counterfactual.query_region_png", query)
            cost.mask_png(c.reference_region_png, "counterfactual.reference_region_png", reference)
        return cost.total

    async def _decode(self, request: pb.ImagineRequest, args: ImagineArgs) -> ImagineJob:
        # PIL decode/encode is CPU work too: keep it off the event loop.
        reference = await self._image(request.reference_png, "reference_png")
        images = {}
        if args.control == "shape":
            images["shape_image"] = await self._image(request.shape.shape_png, "shape.shape_png")
        elif args.control == "style":
            images["style_content"] = await self._image(request.style.content_png, "style.content_png")
        elif args.control == "counterfactual":
            c = request.counterfactual
            query = await self._image(c.query_png, "counterfactual.query_png")
            images.update(
                counterfactual_query=query,
                query_region=await self._region(c.query_region_png, "counterfactual.query_region_png", query),
                reference_region=await self._region(c.reference_region_png, "counterfactual.reference_region_png",
                                                    reference))
        return ImagineJob(reference=reference, num_variations=args.num_variations, seed=args.seed,
                          stage1=args.stage1, stage2=args.stage2, preview_every=args.preview_every,
                          layers=args.layers, position=args.position, shape_layers=args.shape_layers, **images)

    async def _image(self, data: bytes, field: str):
        return await asyncio.to_thread(decode_image, data, self.limits.max_image_bytes, self.limits.max_image_pixels,
                                       field)

    async def _region(self, data: bytes, field: str, image):
        height, width = image.shape[:2]
        return await asyncio.to_thread(decode_region, data, field, width, height, self.limits.max_image_bytes,
                                       self.limits.max_image_pixels)

    async def _event(self, event: StepProgress | Variations, k: int, info: ImagineInfo) -> pb.ImagineEvent:
        if isinstance(event, StepProgress):
            previews = [] if event.previews is None else await self._pngs(event.previews, k, info)
            return pb.ImagineEvent(progress=pb.ImagineProgress(
                stage=event.stage, iteration=event.iteration, total=event.total, losses=event.losses,
                preview_png=previews))
        predicted = [int(c) for c in event.predicted]
        if len(predicted) != k or len(event.seeds) != k or not 0 <= event.target_class < len(info.class_names):
            raise RuntimeError(f"engine broke its contract: {len(predicted)} predictions, {len(event.seeds)} seeds, "
                               f"class {event.target_class}")
        return pb.ImagineEvent(result=pb.ImagineResult(
            images_png=await self._pngs(event.images, k, info), target_class=event.target_class,
            target_class_name=event.class_name, predicted_class=predicted, seeds=event.seeds))

    @staticmethod
    async def _pngs(images, k: int, info: ImagineInfo) -> list[bytes]:
        if images.shape != (k, info.image_size, info.image_size, 3):
            raise RuntimeError(f"engine broke its contract: images of shape {images.shape}")
        return await asyncio.to_thread(encode_pngs, images)


def add_imagine_servicer(server, servicer: ImagineServicer) -> None:
    """Register like the generated `add_ImagineServiceServicer_to_server`, with lenient deserializers
    (malformed request bytes get INVALID_ARGUMENT instead of UNKNOWN)."""
    handlers = {
        "Imagine": grpc.unary_stream_rpc_method_handler(
            servicer.Imagine,
            request_deserializer=lenient_deserializer(pb.ImagineRequest),
            response_serializer=pb.ImagineEvent.SerializeToString,
        ),
        "GetImagineInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetImagineInfo,
            request_deserializer=lenient_deserializer(pb.GetImagineInfoRequest),
            response_serializer=pb.ImagineInfo.SerializeToString,
        ),
    }
    register_handlers(server, IMAGINE_SERVICE, handlers)
