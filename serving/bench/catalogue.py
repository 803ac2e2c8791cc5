"""Requests for every RPC, as raw bytes for `channel.unary_unary(method)`: the valid calls the golden test
records and the soak bench replays, and the crafted ones the soak bench attacks the server with; fitted to the
served generator's size and heads by `generator_and_head`."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from serving.core.protos import higan_pb2, imagine_pb2, oip_pb2, pyramid_pb2, semantics_pb2

P, S, I, H = ("/semgen.v1.PyramidService/", "/semgen.v1.SemanticsService/", "/semgen.v1.ImagineService/",
              "/semgen.v1.HiganService/")
O = "/inference.GRPCInferenceService/"  # the Open Inference Protocol
LEVELS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc7", "fc8")  # the pyramid's
Call = tuple[str, str, bool, bytes]  # (name, method path, server-streaming, request bytes)


def png(seed: int, size: int = 64) -> bytes:
    return encoded(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def latents(seed: int, n: int, shape: tuple[int, int]) -> semantics_pb2.Latents:
    values = np.random.default_rng(seed).normal(0, 0.5, (n, *shape)).astype(np.float32)
    return semantics_pb2.Latents(shape=list(values.shape), values=values.ravel().tolist())


def class_mask(top_class: int, size: int = 64) -> bytes:
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2] = top_class
    return encoded(mask)


def infer(model: str, name: str, values: np.ndarray, raw: bool = True) -> oip_pb2.ModelInferRequest:
    """A ModelInfer of one FP32 input: raw little-endian bytes, or typed contents."""
    tensor = oip_pb2.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=list(values.shape))
    if not raw:
        tensor.contents.fp32_contents.extend(values.ravel().tolist())
    return oip_pb2.ModelInferRequest(model_name=model, inputs=[tensor],
                                     raw_input_contents=[values.astype("<f4").tobytes()] if raw else [])


def serialized(requests: list) -> list[Call]:
    return [(name, method, stream, request.SerializeToString()) for name, method, stream, request in requests]


def valid_calls(latent_shape: tuple[int, int], size: int = 64) -> list[Call]:
    """One or more calls of each of the 13 RPCs on the bundled models (heads lse, lse-8shot, nse1), and of the
    Open Inference Protocol's, in the order the golden test sends them; `latent_shape` is the generator's w+
    (layers, width; the width is also z's), `size` its image size (the class masks'; the pyramid's are 64 px)."""
    z = np.random.default_rng(14).normal(size=(2, latent_shape[1])).astype(np.float32)
    ws = np.random.default_rng(15).normal(0, 0.5, (1, *latent_shape)).astype(np.float32)
    half = pyramid_pb2.Mask(array=pyramid_pb2.MaskArray(width=64, height=64, values=[1.0] * 2048 + [0.0] * 2048))
    return serialized([
        ("generate", P + "Generate", False,
         pyramid_pb2.GenerateRequest(image=png(1), level="conv3", num_samples=2, seed=1)),
        ("generate_masks", P + "Generate", False, pyramid_pb2.GenerateRequest(
            image=png(2), num_samples=2, seed=2, class_index=1,
            level_masks=[pyramid_pb2.LevelMask(level="conv1"), pyramid_pb2.LevelMask(level="fc7", mask=half)])),
        ("generate_bad_level", P + "Generate", False, pyramid_pb2.GenerateRequest(image=png(1), level="conv9")),
        ("repaint", P + "Repaint", False,
         pyramid_pb2.RepaintRequest(image=png(3), region=half, level="conv4", num_samples=2, seed=3)),
        ("composite", P + "Composite", False, pyramid_pb2.CompositeRequest(
            image=png(4), object_image=png(5, 24), box=pyramid_pb2.Box(left=8, top=8, width=24, height=24),
            level="conv2", num_samples=2, seed=4)),
        ("sample", S + "Sample", False, semantics_pb2.SampleRequest(seeds=[5, 6], head="lse")),
        ("sample_8shot", S + "Sample", False,
         semantics_pb2.SampleRequest(seeds=[7], head="lse-8shot", truncation_psi=0.7)),
        ("segment", S + "Segment", False,
         semantics_pb2.SegmentRequest(latents=latents(8, 2, latent_shape), head="nse1")),
        ("segment_segmenter", S + "Segment", False,
         semantics_pb2.SegmentRequest(latents=latents(9, 1, latent_shape), head="segmenter")),
        ("list_heads", S + "ListHeads", False, semantics_pb2.ListHeadsRequest()),
        ("fit_head", S + "FitHead", False, semantics_pb2.FitHeadRequest(
            name="golden", latents=latents(10, 2, latent_shape), masks=[class_mask(1, size), class_mask(1, size)],
            class_names=["ground", "sky"], seed=3, iterations=5)),
        ("list_heads_after_fit", S + "ListHeads", False, semantics_pb2.ListHeadsRequest()),
        ("sample_fitted", S + "Sample", False, semantics_pb2.SampleRequest(seeds=[11], head="golden")),
        ("sample_conditional", S + "SampleConditional", True, semantics_pb2.SampleConditionalRequest(
            target_mask=class_mask(2, size), head="lse", num_samples=1, seed=4, n_init=4, iterations=3,
            preview_every=2)),
        ("edit_semantics", S + "EditSemantics", True, semantics_pb2.EditSemanticsRequest(
            latent=latents(12, 1, latent_shape), target_mask=class_mask(2, size), head="lse", iterations=3,
            preview_every=1)),
        ("imagine_info", I + "GetImagineInfo", False, imagine_pb2.GetImagineInfoRequest()),
        ("imagine", I + "Imagine", True, imagine_pb2.ImagineRequest(
            reference_png=png(13), num_variations=2, seed=3, stage1_iterations=2, stage2_iterations=2,
            preview_every=2)),
        ("list_attributes", H + "ListAttributes", False, higan_pb2.ListAttributesRequest()),
        ("manipulate", H + "Manipulate", False, higan_pb2.ManipulateRequest(
            seeds=higan_pb2.ManipulateRequest.Seeds(values=[1, 2]),
            edits=[higan_pb2.ManipulateRequest.Edit(attribute="horizon", strength=1.0)], sweep=[-1, 0, 1])),
        ("oip_metadata", O + "ModelMetadata", False, oip_pb2.ModelMetadataRequest(name="pyramid")),
        ("oip_mapping", O + "ModelInfer", False, infer("mapping", "z", z)),
        ("oip_synthesis", O + "ModelInfer", False, infer("synthesis_lse", "ws", ws, raw=False)),
        ("oip_bad_shape", O + "ModelInfer", False, infer("mapping", "z", z[:, :3])),
    ])


def long_jobs(latent_shape: tuple[int, int], size: int = 64) -> list[Call]:
    """Iterative jobs that run for seconds to minutes: the soak bench cancels them or lets their deadline pass."""
    return serialized([
        ("long_imagine", I + "Imagine", True, imagine_pb2.ImagineRequest(
            reference_png=png(20), num_variations=4, seed=1, stage1_iterations=2000, stage2_iterations=2000)),
        ("long_scs", S + "SampleConditional", True, semantics_pb2.SampleConditionalRequest(
            target_mask=class_mask(2, size), head="lse", num_samples=8, seed=2, n_init=256, iterations=500)),
        ("long_edit", S + "EditSemantics", True, semantics_pb2.EditSemanticsRequest(
            latent=latents(21, 1, latent_shape), target_mask=class_mask(1, size), head="lse", iterations=500)),
        ("long_fit", S + "FitHead", False, semantics_pb2.FitHeadRequest(
            name="soak-long", latents=latents(22, 8, latent_shape), masks=[class_mask(1, size)] * 8,
            class_names=["ground", "sky"], seed=1, iterations=2000)),
    ])


def reseeded_calls(latent_shape: tuple[int, int]) -> list[Call]:
    """Golden calls with another seed, under their own names: what a real change does to a reply, the scale the
    cross-machine tolerance must stay far below."""
    reseeded = {"generate": {"seed": 2}, "sample": {"seeds": [5, 7]}, "imagine": {"seed": 4}}
    types = {"generate": pyramid_pb2.GenerateRequest, "sample": semantics_pb2.SampleRequest,
             "imagine": imagine_pb2.ImagineRequest}
    calls = []
    for name, method, stream, request in valid_calls(latent_shape):
        if name in reseeded:
            message = types[name].FromString(request)
            for field, value in reseeded[name].items():
                message.ClearField(field)
                if isinstance(value, list):  # a repeated field
                    getattr(message, field).extend(value)
                else:
                    setattr(message, field, value)
            calls.append((name, method, stream, message.SerializeToString()))
    return calls


def iterative_jobs(latent_shape: tuple[int, int], iterations: int) -> list[Call]:
    """IMAGINE, SCS and SIE of the golden calls' kind, each run for `iterations` steps (IMAGINE: per stage): how far
    float noise of another CPU carries over an optimisation (`semgen bench golden`)."""
    n = iterations
    return serialized([
        (f"imagine_{n}", I + "Imagine", True, imagine_pb2.ImagineRequest(
            reference_png=png(13), num_variations=2, seed=3, stage1_iterations=n, stage2_iterations=n)),
        (f"sample_conditional_{n}", S + "SampleConditional", True, semantics_pb2.SampleConditionalRequest(
            target_mask=class_mask(2), head="lse", num_samples=2, seed=4, n_init=16, iterations=n)),
        (f"edit_semantics_{n}", S + "EditSemantics", True, semantics_pb2.EditSemanticsRequest(
            latent=latents(12, 1, latent_shape), target_mask=class_mask(2), head="lse", iterations=n)),
    ])


def crafted_calls(latent_shape: tuple[int, int], size: int = 64) -> list[Call]:
    """Requests built to hurt: images whose header promises far more pixels than their bytes hold, 16-bit
    images, a truncated PNG, huge strings and counts, a latent shape that lies. None may answer INTERNAL."""
    big = np.zeros((4096, 4096), np.uint8)
    big_jpeg, big_png = encoded(big, "JPEG"), encoded(big)  # a few KB each, 16-48 MiB decoded
    gray16 = encoded(np.full((64, 64), 40000, np.uint16))
    long_name = "x" * 16384
    mask = pyramid_pb2.Mask(png=big_png)
    lying = semantics_pb2.Latents(shape=[1 << 20, *latent_shape], values=[0.0] * 8)
    return serialized([
        ("big_reference_and_masks", P + "Generate", False, pyramid_pb2.GenerateRequest(
            image=big_jpeg, num_samples=1, level_masks=[pyramid_pb2.LevelMask(level=lv, mask=mask) for lv in LEVELS])),
        ("big_repaint_region", P + "Repaint", False,
         pyramid_pb2.RepaintRequest(image=big_jpeg, region=mask, level="conv4", num_samples=1)),
        ("big_object", P + "Composite", False, pyramid_pb2.CompositeRequest(
            image=png(2), object_image=big_jpeg, box=pyramid_pb2.Box(left=0, top=0, width=32, height=32),
            level="conv3", num_samples=1)),
        ("gray16_reference", P + "Generate", False,
         pyramid_pb2.GenerateRequest(image=gray16, level="conv5", num_samples=1, seed=1)),
        ("truncated_png", P + "Generate", False,
         pyramid_pb2.GenerateRequest(image=png(3)[:100], level="conv5", num_samples=1)),
        ("not_an_image", I + "Imagine", True, imagine_pb2.ImagineRequest(reference_png=b"GIF89a" + b"\0" * 64)),
        ("long_level", P + "Generate", False,
         pyramid_pb2.GenerateRequest(image=png(4), level=long_name, num_samples=1)),
        ("many_samples", P + "Generate", False,
         pyramid_pb2.GenerateRequest(image=png(5), level="conv5", num_samples=1 << 30)),
        ("long_class_name", S + "FitHead", False, semantics_pb2.FitHeadRequest(
            name="soak-names", latents=latents(6, 1, latent_shape), masks=[class_mask(1, size)],
            class_names=["ground", long_name])),
        ("unknown_head", S + "Sample", False, semantics_pb2.SampleRequest(seeds=[1], head=long_name)),
        ("lying_latents", S + "Segment", False, semantics_pb2.SegmentRequest(latents=lying, head="lse")),
        ("many_seeds", S + "Sample", False, semantics_pb2.SampleRequest(seeds=list(range(100000)), head="lse")),
        ("big_target_mask", S + "SampleConditional", True, semantics_pb2.SampleConditionalRequest(
            target_mask=big_png, head="lse", num_samples=1, n_init=4, iterations=2)),
        ("huge_sweep", H + "Manipulate", False, higan_pb2.ManipulateRequest(
            seeds=higan_pb2.ManipulateRequest.Seeds(values=list(range(64))),
            edits=[higan_pb2.ManipulateRequest.Edit(attribute="horizon", strength=1.0)],
            sweep=[float(i) for i in range(1000)])),
    ])


def mutated(request: bytes, rng: random.Random) -> bytes:
    """`request` with a few bytes flipped, cut short, or spliced with random bytes."""
    data = bytearray(request)
    how = rng.choice(("flip", "cut", "splice"))
    if how == "cut" or not data:
        return bytes(data[: rng.randrange(len(data) + 1)])
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    at = rng.randrange(len(data))
    return bytes(data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:])


async def generator_and_head(address: str) -> tuple[tuple[int, int], int, bool]:
    """The generator's w+ (layers, width) and image size, read from a Sample reply: the catalogue's latents and
    masks must match them. A bundle without a head "lse" (an imported generator) gets one fitted here from
    four half-and-half masks, so that the mix's Sample, Segment, SampleConditional and EditSemantics run; the
    last value says whether it was."""
    import grpc
    from serving.core.protos import semantics_pb2 as pb
    from serving.core.images import pil_images

    async with grpc.aio.insecure_channel(address) as channel:
        reply = pb.SampleResponse.FromString(await channel.unary_unary(S + "Sample")(
            pb.SampleRequest(seeds=[0, 1, 2, 3]).SerializeToString(), timeout=300))
        size = pil_images(reply.images[:1])[0].size[0]
        heads = pb.ListHeadsResponse.FromString(await channel.unary_unary(S + "ListHeads")(
            pb.ListHeadsRequest().SerializeToString(), timeout=60)).heads
        fit = "lse" not in {h.name for h in heads}
        if fit:
            await channel.unary_unary(S + "FitHead")(pb.FitHeadRequest(
                name="lse", latents=reply.latents, masks=[class_mask(1, size)] * 4,
                class_names=["ground", "sky", "other"],  # the mix asks for class 2 as well
                seed=0, iterations=5).SerializeToString(), timeout=600)  # within the bench server's 30 s job limit
    layers, width = reply.latents.shape[1:]
    return (layers, width), size, fit
