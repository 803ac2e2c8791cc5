"""Golden bytes of every RPC on every engine: the same request and seed give the same response bytes
as the recorded ones (tests/serving/golden/rpcs.json), served from the bundled models in artifacts/.

The requests (serving/bench/catalogue.py) are sent as raw bytes; each response (or each event of a
stream) is hashed as serialized. Errors are recorded by status code. To record anew on purpose (a
change of behaviour that is meant), run with SEMGEN_WRITE_GOLDEN=1 and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory

from serving.bench.catalogue import valid_calls
from serving.core.metrics import ServingMetrics
from servingkit import serve_subprocess

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "rpcs.json"
MODELS = ROOT / "artifacts"
LATENT_SHAPE = (10, 128)  # the bundled stylegan's w+


def calls() -> list[tuple[str, str, bool, bytes]]:
    """(name, method path, server-streaming, request bytes), in the order they are sent."""
    return valid_calls(LATENT_SHAPE)


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


ENGINES = {"embedded": [], "torchserve": ["--engine", "torchserve"], "ray": ["--engine", "ray"]}
# Ray Serve's replicas give the embedded engine's bytes for every call; TorchServe's too, except FitHead, which it
# does not serve (UNIMPLEMENTED, and so the calls that use the fitted head differ)
RECORD = {"embedded": "embedded", "torchserve": "torchserve", "ray": "embedded"}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_rpc_gives_the_recorded_bytes(engine, tmp_path):
    if engine == "torchserve" and shutil.which("java") is None:
        pytest.skip("TorchServe needs Java")
    args = ["--models", str(MODELS), "--heads-dir", str(tmp_path / "heads"), "--onnx-dir", str(tmp_path / "onnx"),
            "--torchserve-dir", str(tmp_path / "ts"), "--max-batch", "4", *ENGINES[engine]]
    with serve_subprocess(args) as server:
        got = responses(server.address)
        with urllib.request.urlopen(server.metrics_url, timeout=30) as reply:
            exposition = reply.read().decode()
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("SEMGEN_WRITE_GOLDEN") and RECORD[engine] == engine:
        golden[engine] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert got == golden[RECORD[engine]]
    # what the calls show, so that a golden file full of errors cannot pass unnoticed
    assert got["generate"]["code"] == "OK" and got["generate_bad_level"]["code"] == "INVALID_ARGUMENT"
    assert got["imagine"]["code"] == "OK" and got["manipulate"]["code"] == "OK"
    # the Open Inference Protocol gives the embedded engine's bytes on every engine (TorchServe's too)
    for name in ("oip_metadata", "oip_mapping", "oip_synthesis", "oip_bad_shape"):
        assert got[name] == golden["embedded"][name] and got[name]["code"] in ("OK", "INVALID_ARGUMENT")
    # the same metric names on every engine, and the engine's own series filled in (queue, compute, batch size)
    assert families(exposition) == families(ServingMetrics().render().decode())
    for name in ("semgen_engine_compute_seconds_count", "semgen_engine_queue_seconds_count", "semgen_batch_size_count",
                 "semgen_model_info", "semgen_build_info"):
        assert any(line.startswith(name + "{") for line in exposition.splitlines()), name


def families(exposition: str) -> set[str]:
    """The semgen_ metric families (not the _created gauges prometheus_client adds once a series has a sample)."""
    names = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE semgen_")}
    return {name for name in names if not name.endswith("_created")}
