"""Golden bytes of every RPC on both engines: the same request and seed give the same response bytes
as the recorded ones (tests/serving/golden/rpcs.json), served from the bundled models in artifacts/.

The requests are built from the generated stubs and sent as raw bytes; each response (or each event of a
stream) is hashed as serialized. Errors are recorded by status code. To record anew on purpose (a
change of behaviour that is meant), run with SEMGEN_WRITE_GOLDEN=1 and say why in the commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, message_factory
from PIL import Image

from serving._generated.semgen.v1 import higan_pb2, imagine_pb2, pyramid_pb2, semantics_pb2
from servingkit import serve_subprocess

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "rpcs.json"
MODELS = ROOT / "artifacts"
LATENT_SHAPE = (10, 128)  # the bundled stylegan's w+


def png(seed: int, size: int = 64) -> bytes:
    return _png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def latents(seed: int, n: int) -> semantics_pb2.Latents:
    values = np.random.default_rng(seed).normal(0, 0.5, (n, *LATENT_SHAPE)).astype(np.float32)
    return semantics_pb2.Latents(shape=list(values.shape), values=values.ravel().tolist())


def class_mask(top_class: int, size: int = 64) -> bytes:
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2] = top_class
    return _png(mask)


def calls() -> list[tuple[str, str, bool, bytes]]:
    """(name, method path, server-streaming, request bytes), in the order they are sent."""
    half = pyramid_pb2.Mask(array=pyramid_pb2.MaskArray(width=64, height=64, values=[1.0] * 2048 + [0.0] * 2048))
    p, s, i, h = "/semgen.v1.PyramidService/", "/semgen.v1.SemanticsService/", "/semgen.v1.ImagineService/", \
        "/semgen.v1.HiganService/"
    requests = [
        ("generate", p + "Generate", False,
         pyramid_pb2.GenerateRequest(image=png(1), level="conv3", num_samples=2, seed=1)),
        ("generate_masks", p + "Generate", False, pyramid_pb2.GenerateRequest(
            image=png(2), num_samples=2, seed=2, class_index=1,
            level_masks=[pyramid_pb2.LevelMask(level="conv1"), pyramid_pb2.LevelMask(level="fc7", mask=half)])),
        ("generate_bad_level", p + "Generate", False, pyramid_pb2.GenerateRequest(image=png(1), level="conv9")),
        ("repaint", p + "Repaint", False,
         pyramid_pb2.RepaintRequest(image=png(3), region=half, level="conv4", num_samples=2, seed=3)),
        ("composite", p + "Composite", False, pyramid_pb2.CompositeRequest(
            image=png(4), object_image=png(5, 24), box=pyramid_pb2.Box(left=8, top=8, width=24, height=24),
            level="conv2", num_samples=2, seed=4)),
        ("sample", s + "Sample", False, semantics_pb2.SampleRequest(seeds=[5, 6], head="lse")),
        ("sample_8shot", s + "Sample", False,
         semantics_pb2.SampleRequest(seeds=[7], head="lse-8shot", truncation_psi=0.7)),
        ("segment", s + "Segment", False, semantics_pb2.SegmentRequest(latents=latents(8, 2), head="nse1")),
        ("segment_segmenter", s + "Segment", False,
         semantics_pb2.SegmentRequest(latents=latents(9, 1), head="segmenter")),
        ("list_heads", s + "ListHeads", False, semantics_pb2.ListHeadsRequest()),
        ("fit_head", s + "FitHead", False, semantics_pb2.FitHeadRequest(
            name="golden", latents=latents(10, 2), masks=[class_mask(1), class_mask(1)],
            class_names=["ground", "sky"], seed=3, iterations=5)),
        ("list_heads_after_fit", s + "ListHeads", False, semantics_pb2.ListHeadsRequest()),
        ("sample_fitted", s + "Sample", False, semantics_pb2.SampleRequest(seeds=[11], head="golden")),
        ("sample_conditional", s + "SampleConditional", True, semantics_pb2.SampleConditionalRequest(
            target_mask=class_mask(2), head="lse", num_samples=1, seed=4, n_init=4, iterations=3,
            preview_every=2)),
        ("edit_semantics", s + "EditSemantics", True, semantics_pb2.EditSemanticsRequest(
            latent=latents(12, 1), target_mask=class_mask(2), head="lse", iterations=3, preview_every=1)),
        ("imagine_info", i + "GetImagineInfo", False, imagine_pb2.GetImagineInfoRequest()),
        ("imagine", i + "Imagine", True, imagine_pb2.ImagineRequest(
            reference_png=png(13), num_variations=2, seed=3, stage1_iterations=2, stage2_iterations=2,
            preview_every=2)),
        ("list_attributes", h + "ListAttributes", False, higan_pb2.ListAttributesRequest()),
        ("manipulate", h + "Manipulate", False, higan_pb2.ManipulateRequest(
            seeds=higan_pb2.ManipulateRequest.Seeds(values=[1, 2]),
            edits=[higan_pb2.ManipulateRequest.Edit(attribute="horizon", strength=1.0)], sweep=[-1, 0, 1])),
    ]
    return [(name, method, stream, request.SerializeToString()) for name, method, stream, request in requests]


def canonical(method: str, reply: bytes) -> bytes:
    """The reply re-serialized deterministically: map fields (losses, scores) have no fixed wire order."""
    service, name = method.strip("/").split("/")
    output = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name).output_type
    message = message_factory.GetMessageClass(output)()
    message.ParseFromString(reply)
    return message.SerializeToString(deterministic=True)


def responses(address: str) -> dict[str, dict]:
    """Each call's status code and the sha256 of its response bytes (a stream: of every event, in order)."""
    out = {}
    with grpc.insecure_channel(address) as channel:
        for name, method, stream, request in calls():
            digest = hashlib.sha256()
            try:
                if stream:
                    for event in channel.unary_stream(method)(request, timeout=300):
                        event = canonical(method, event)
                        digest.update(len(event).to_bytes(8, "little") + event)
                else:
                    digest.update(canonical(method, channel.unary_unary(method)(request, timeout=300)))
                out[name] = {"code": "OK", "sha256": digest.hexdigest()}
            except grpc.RpcError as error:
                out[name] = {"code": error.code().name}
    return out


ENGINES = {"embedded": [], "torchserve": ["--engine", "torchserve"]}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_rpc_gives_the_recorded_bytes(engine, tmp_path):
    if engine == "torchserve" and shutil.which("java") is None:
        pytest.skip("TorchServe needs Java")
    args = ["--models", str(MODELS), "--heads-dir", str(tmp_path / "heads"), "--onnx-dir", str(tmp_path / "onnx"),
            "--torchserve-dir", str(tmp_path / "ts"), "--max-batch", "4", *ENGINES[engine]]
    with serve_subprocess(args) as server:
        got = responses(server.address)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("SEMGEN_WRITE_GOLDEN"):
        golden[engine] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert got == golden[engine]
    # what the calls show, so that a golden file full of errors cannot pass unnoticed
    assert got["generate"]["code"] == "OK" and got["generate_bad_level"]["code"] == "INVALID_ARGUMENT"
    assert got["imagine"]["code"] == "OK" and got["manipulate"]["code"] == "OK"
