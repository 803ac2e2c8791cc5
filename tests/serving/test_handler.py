"""The TorchServe handler run in-process with a stand-in context: the same bytes as the embedded
engine, per-request errors in a batch, streamed job events. (tests/serving/test_torchserve_engine.py
runs it on a real TorchServe.)"""

import asyncio
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from export.onnx import ensure_exported
from random_bundles import make_random_bundle, make_random_semantics_bundle
from semgen.runtime.onnx import OnnxModels
from serving.core import wire
from serving.core.batcher import BatchPolicy
from serving.pyramid.engine import EmbeddedEngine
from serving.torchserve.handler import SemgenHandler
from serving.semantics.engine import EmbeddedSemanticsEngine


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder laid out like an unpacked .mar: bundle/, onnx/, heads/."""
    root = tmp_path_factory.mktemp("handler")
    bundle = make_random_semantics_bundle(make_random_bundle(root / "bundle", image_size=32), image_size=32)
    shutil.copytree(ensure_exported(bundle, root / "cache"), root / "onnx")
    return root


class Context:
    """What TorchServe hands a handler, as far as ours reads it; intermediate replies are kept."""

    def __init__(self, model_dir, service, batch):
        self.system_properties = {"model_dir": str(model_dir)}
        self.model_yaml_config = {"handler": {"service": service, "ort_threads": 2}}
        self.request_ids = {i: f"req-{i}" for i in range(batch)}
        self.sent = []


def handle(handler, model_dir, service, requests, monkeypatch=None):
    context = Context(model_dir, service, len(requests))
    replies = handler.handle([{"body": bytearray(wire.pack(r))} for r in requests], context)
    return [[wire.unpack(m) for m in wire.unframe(__import__("io").BytesIO(r))] for r in replies], context


def test_pyramid_batch_gives_the_embedded_engines_bytes(model_dir):
    handler = SemgenHandler()
    handler.initialize(Context(model_dir, "pyramid", 1))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    requests = [{"op": "generate", "args": dict(image=image, levels={"conv3": None}, num_samples=2, seed=s)}
                for s in range(3)]
    requests.insert(1, {"op": "generate", "args": dict(image=image, levels={"conv9": None}, num_samples=1, seed=0)})
    replies, _ = handle(handler, model_dir, "pyramid", requests)
    assert replies[1][-1]["error"] == "InvalidInput" and replies[1][-1]["message"].startswith("level:")
    assert [r[-1]["batch_size"] for r in replies] == [4, 0, 0, 0]  # the batch counted once

    async def embedded():
        engine = EmbeddedEngine.from_dir(model_dir / "bundle", device="cpu", onnx=OnnxModels(model_dir / "onnx"),
                                         policy=BatchPolicy())
        try:
            return [await engine.generate(image, {"conv3": None}, 2, s) for s in range(3)]
        finally:
            await engine.close()

    for reply, expected in zip([replies[0], replies[2], replies[3]], asyncio.run(embedded())):
        assert reply[-1]["event"] == "GenerateResult"
        assert np.array_equal(reply[-1]["value"]["images"], expected.images)
    info = handle(handler, model_dir, "pyramid", [{"op": "info"}])[0][0][-1]["value"]
    assert info["image_size"] == 32 and "conv3" in info["levels"]


def test_jobs_stream_every_event(model_dir, monkeypatch):
    handler = SemgenHandler()
    handler.initialize(Context(model_dir, "semantics_jobs", 1))
    sent = []
    monkeypatch.setattr("serving.torchserve.handler._send_intermediate",
                        lambda context, index, message: sent.append(wire.unpack(next(wire.unframe(
                            __import__("io").BytesIO(message))))))
    latent = handler.engine._pipeline.latents_from_seeds([3]).numpy()
    target = np.zeros((32, 32), np.uint8)
    args = dict(latent=latent, target_mask=target, head="lse", iterations=4, lr=0.01, space="w+",
                preview_every=2, time_remaining=60.0)
    replies, _ = handle(handler, model_dir, "semantics_jobs", [{"op": "edit", "args": args}])
    assert replies[0][-1].get("event") == "Samples", replies[0][-1]
    assert [e["value"]["iteration"] for e in sent] == [1, 2, 3, 4]
    assert sent[1]["value"]["preview"].shape == (32, 32, 3) and sent[0]["value"]["preview"] is None
    final = replies[0][-1]
    assert final["event"] == "Samples" and final["value"]["images"].shape == (1, 32, 32, 3)

    async def embedded():
        engine = EmbeddedSemanticsEngine.from_dir(model_dir / "bundle", model_dir / "heads", device="cpu",
                                                  onnx=OnnxModels(model_dir / "onnx"))
        try:
            events = [e async for e in engine.edit(**args)]
        finally:
            await engine.close()
        return events[-1]

    assert np.array_equal(final["value"]["images"], asyncio.run(embedded()).images)
    bad = handle(handler, model_dir, "semantics_jobs", [{"op": "edit", "args": {**args, "head": "nope"}}])[0][0]
    assert bad[-1]["error"] == "NotFound" and "nope" in bad[-1]["message"]
