"""semgen.v1.PyramidService: decode + validate the proto, await the engine, encode the reply. No torch here."""

from __future__ import annotations

import asyncio

from serving.core.admission import RequestCost
from serving.core.errors import InvalidInput
from serving.core.images import decode_image, decode_mask, decoded_size, encode_pngs, off_loop
from serving.core.protos import PYRAMID_SERVICE, pyramid_pb2 as pb
from serving.core.servicer import AttachableServicer, register_handlers, rpc_errors, unary_handlers
from serving.pyramid.engine import Engine
from serving.pyramid.validation import check_box_inside, check_composite, check_generate, check_repaint


class PyramidServicer(AttachableServicer):
    """semgen.v1.PyramidService. Registered before the model loads; answers UNAVAILABLE until `attach`."""

    engine: Engine | None

    @rpc_errors
    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        engine, info = self._engine()
        args = check_generate(request, info, self.limits)
        cost = RequestCost(self.limits.max_request_decoded_bytes)  # from the headers, before decoding any
        size = cost.image(request.image, "image")
        for i, mask in enumerate(args.levels.values()):
            if mask is not None:
                cost.mask(mask, f"level_masks[{i}].mask", size)
        with self.admission.hold(cost.total, "image"):
            image = await self._decode(request.image, "image", size)
            levels = {}
            for i, (level, mask) in enumerate(args.levels.items()):
                levels[level] = None if mask is None else await self._mask(mask, f"level_masks[{i}].mask", image)
            result = await engine.generate(image, levels, args.num_samples, args.seed, args.class_index)
            del image, levels
            return await self._reply(result, args.num_samples, info)

    @rpc_errors
    async def Repaint(self, request: pb.RepaintRequest, context) -> pb.GenerateResponse:
        engine, info = self._engine()
        args = check_repaint(request, info, self.limits)
        cost = RequestCost(self.limits.max_request_decoded_bytes)
        size = cost.image(request.image, "image")
        cost.mask(request.region, "region", size)
        with self.admission.hold(cost.total, "image"):
            image = await self._decode(request.image, "image", size)
            region = await self._mask(request.region, "region", image)
            if not region.any():
                raise InvalidInput("region: empty (no pixel above 0); mark the region to repaint")
            result = await engine.repaint(image, region, args.level, args.num_samples, args.seed, args.class_index)
            del image, region
            return await self._reply(result, args.num_samples, info)

    @rpc_errors
    async def Composite(self, request: pb.CompositeRequest, context) -> pb.GenerateResponse:
        engine, info = self._engine()
        args = check_composite(request, info, self.limits)
        cost = RequestCost(self.limits.max_request_decoded_bytes)
        size, object_size = cost.image(request.image, "image"), cost.image(request.object_image, "object_image")
        with self.admission.hold(cost.total, "image"):
            image = await self._decode(request.image, "image", size)
            check_box_inside(args.box, image.shape[1], image.shape[0])
            obj = await self._decode(request.object_image, "object_image", object_size)
            result = await engine.composite(image, obj, args.box, args.level, args.num_samples, args.seed,
                                            args.class_index)
            del image, obj
            return await self._reply(result, args.num_samples, info)

    # ---- shared steps ------------------------------------------------------------------

    async def _decode(self, data: bytes, field: str, size: tuple[int, int] | None):
        # PIL decode/encode is CPU work too: keep large images off the event loop (`size`: the header's, read
        # for admission already)
        return await off_loop(decode_image, data, self.limits.max_image_bytes, self.limits.max_image_pixels, field,
                              size=decoded_size(data, size))

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
