"""semgen.v1.HiganService: validate the proto, await the engine, encode the reply.

No torch here; status codes come from `rpc_errors` (the pipeline's ValueErrors arrive as
InvalidInput, its unknown attribute as NotFound).
"""

from __future__ import annotations

import asyncio

import numpy as np

from serving.higan.engine import Frames, HiganEngine, HiganInfo
from serving.higan.validation import check_manipulate
from serving.core.images import encode_pngs
from serving.core.protos import HIGAN_SERVICE, higan_pb2 as pb
from serving.core.servicer import AttachableServicer, register_handlers, rpc_errors, unary_handlers


class HiganServicer(AttachableServicer):
    """Registered before the model loads; answers UNAVAILABLE until `attach`."""

    engine: HiganEngine | None

    @rpc_errors
    async def ListAttributes(self, request: pb.ListAttributesRequest, context) -> pb.ListAttributesResponse:
        _, info = self._engine()
        num_ws, w_dim = info.latent_shape
        attributes = [pb.ListAttributesResponse.Attribute(
            name=a.name, level=a.level, default_layers=a.default_layers, validation_accuracy=a.val_acc,
            scale=a.scale) for a in info.attributes.values()]
        return pb.ListAttributesResponse(attributes=attributes, num_layers=num_ws, w_dim=w_dim,
                                         image_size=info.image_size)

    @rpc_errors
    async def Manipulate(self, request: pb.ManipulateRequest, context) -> pb.ManipulateResponse:
        engine, info = self._engine()
        args = check_manipulate(request, info, self.limits)
        result = await engine.manipulate(args.edits, args.seeds, args.latents, args.sweep, args.condition_on)
        return await self._reply(result, args.num_latents, info)

    @staticmethod
    async def _reply(result: Frames, n: int, info: HiganInfo) -> pb.ManipulateResponse:
        rows, size, (num_ws, w_dim) = len(result.sweep), info.image_size, info.latent_shape
        if (result.images.shape != (rows, n, size, size, 3) or result.latents.shape != (rows, n, num_ws, w_dim)
                or any(np.shape(s) != (rows, n) for s in result.scores.values())):
            raise RuntimeError(f"engine broke its contract: images {result.images.shape}, "
                               f"latents {result.latents.shape} for {rows} x {n} frames")
        # PIL encoding is CPU work too: keep it off the event loop.
        pngs = await asyncio.to_thread(encode_pngs, result.images.reshape(rows * n, size, size, 3))
        latents = np.asarray(result.latents, np.float32).reshape(rows * n, num_ws * w_dim)
        scores = {name: np.asarray(values, np.float32).ravel() for name, values in result.scores.items()}
        frames = [pb.ManipulateResponse.Frame(
            multiplier=result.sweep[k // n], index=k % n, image_png=png, latent=latents[k].tolist(),
            scores={name: float(values[k]) for name, values in scores.items()}) for k, png in enumerate(pngs)]
        return pb.ManipulateResponse(frames=frames, num_layers=num_ws, w_dim=w_dim, image_size=size)


def add_higan_servicer(server, servicer: HiganServicer) -> None:
    """Register like the generated `add_HiganServiceServicer_to_server`, with lenient deserializers
    (malformed request bytes get INVALID_ARGUMENT instead of UNKNOWN)."""
    rpcs = {
        "ListAttributes": (pb.ListAttributesRequest, pb.ListAttributesResponse),
        "Manipulate": (pb.ManipulateRequest, pb.ManipulateResponse),
    }
    register_handlers(server, HIGAN_SERVICE, unary_handlers(servicer, rpcs))
