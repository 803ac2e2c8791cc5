"""The Open Inference Protocol (KServe v2) over gRPC and HTTP, checked with tritonclient, a client we did not write
(tests/serving/oip_client.py, run in its own process), against `semgen serve` on the bundled models."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from semgen.bundle import Bundle
from semgen.data.loaders import to_uint8
from semgen.pipelines.forward import Op
from semgen.pipelines.pyramid import PyramidPipeline
from semgen.runtime.onnx import OnnxModels
from serving.bench.catalogue import png
from serving.core.protos import oip_pb2, pyramid_pb2, pyramid_pb2_grpc
from servingkit import serve_subprocess

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "artifacts"
CLIENT = Path(__file__).with_name("oip_client.py")
CLIENT_PYTHON = ROOT / ".venv-oip" / "bin" / "python"  # tritonclient in its own venv (`make test-setup`)
LEVEL, SAMPLES, SEED = "conv4", 2, 7


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    onnx_dir = tmp_path_factory.mktemp("onnx")
    with serve_subprocess(["--models", str(MODELS), "--onnx-dir", str(onnx_dir),
                           "--heads-dir", str(tmp_path_factory.mktemp("heads"))]) as server:
        yield SimpleNamespace(**dataclasses.asdict(server), onnx_folder=Bundle(MODELS).exported_onnx(onnx_dir))


@pytest.fixture(scope="module")
def generated(server, tmp_path_factory):
    """The domain API's Generate of one reference, and the pyramid graph's inputs for the same request (the
    pipeline's own prepare step: the seeded noise, the label, the reference's features and the level masks)."""
    reference = png(11)
    with grpc.insecure_channel(server.address) as channel:
        reply = pyramid_pb2_grpc.PyramidServiceStub(channel).Generate(
            pyramid_pb2.GenerateRequest(image=reference, level=LEVEL, num_samples=SAMPLES, seed=SEED), timeout=60)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in reply.images])
    pipeline = PyramidPipeline.from_dir(MODELS, onnx=OnnxModels(server.onnx_folder))
    image = np.asarray(Image.open(io.BytesIO(reference)).convert("RGB"))
    prepared = pipeline.prepare(Op.GENERATE, dict(image=image, levels={LEVEL: None}, num_samples=SAMPLES, seed=SEED))
    inputs = dict(prepared.rows)
    inputs["classifier.image"] = np.random.default_rng(0).uniform(-1, 1, (3, 3, 64, 64)).astype(np.float32)
    path = tmp_path_factory.mktemp("oip") / "inputs.npz"
    np.savez(path, **inputs)
    return pixels, inputs, path, pipeline


def run_client(protocol: str, url: str, inputs: Path, out: Path) -> tuple[dict, dict]:
    assert CLIENT_PYTHON.exists(), f"{CLIENT_PYTHON} is missing: run `make test-setup` (tritonclient in its own venv)"
    done = subprocess.run([str(CLIENT_PYTHON), str(CLIENT), protocol, url, str(inputs), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), dict(np.load(out / "outputs.npz"))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_kserve_v2_client_gets_the_pixels_of_generate(protocol, server, generated, tmp_path):
    pixels, inputs, path, pipeline = generated
    url = server.address if protocol == "grpc" else server.http_url.removeprefix("http://")
    results, outputs = run_client(protocol, url, path, tmp_path)

    # the same pixels as the domain Generate gave for the same request
    image = outputs["pyramid.image"]
    assert image.dtype == np.float32 and image.shape == (SAMPLES, 3, 64, 64)
    assert np.array_equal(to_uint8(torch.from_numpy(image)), pixels)
    # the classifier's levels, with JSON tensors on HTTP, as the pipeline's own graph run gives them
    features = pipeline.onnx.run("classifier", {"image": inputs["classifier.image"]})
    for level in ("conv1", "conv5", "fc7", "fc8"):
        np.testing.assert_allclose(outputs[f"classifier.{level}"], features[level], rtol=0, atol=1e-6)

    assert results["live"] and results["ready"] and results["pyramid_ready"] and not results["unknown_ready"]
    assert results["server"]["name"] == "semgen"
    meta = results["pyramid_metadata"]
    shapes = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]}
    assert shapes["z"] == ("FP32", [-1, 64]) and shapes["labels"] == ("INT64", [-1])
    assert shapes["conv4_features"] == ("FP32", [-1, 128, 4, 4])
    assert meta["versions"] == [results["pyramid_version"]] and len(results["pyramid_version"]) == 16

    errors = results["errors"]
    invalid = "StatusCode.INVALID_ARGUMENT" if protocol == "grpc" else "400"
    assert errors["wrong_shape"]["status"] == invalid and errors["wrong_shape"]["message"].startswith("inputs[z]: shape")
    assert errors["wrong_datatype"]["status"] == invalid and "inputs[z]: datatype must be FP32" in errors["wrong_datatype"]["message"]
    assert errors["missing_input"]["status"] == invalid and "inputs[labels]: missing" in errors["missing_input"]["message"]
    assert errors["unknown_model"]["status"] == ("StatusCode.NOT_FOUND" if protocol == "grpc" else "404")
    assert "model_name: no model named 'no-such-model'" in errors["unknown_model"]["message"]


def get(url: str, headers=None, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_http_health_metadata_limits_and_the_metrics_port(server, generated):
    http = server.http_url
    assert get(f"{http}/healthz") == (200, b"ok\n") and get(f"{http}/readyz") == (200, b"ready\n")
    status, body = get(f"{http}/v2/models/mapping")
    meta = json.loads(body)
    assert status == 200 and meta["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 128]}]
    status, body = get(f"{http}/v2/models/mapping/versions/0000000000000000")
    assert status == 404 and json.loads(body)["error"].startswith("model_version: mapping has only version")
    # over --max-samples rows: refused before any work, naming the tensor
    z = {"inputs": [{"name": "z", "shape": [17, 128], "datatype": "FP32", "data": [0.0] * (17 * 128)}]}
    status, body = get(f"{http}/v2/models/mapping/infer", {"Content-Type": "application/json"}, json.dumps(z).encode())
    assert status == 400 and json.loads(body)["error"] == "inputs[z]: 17 rows is over the limit of 16 per request"
    status, body = get(f"{http}/v2/models/mapping/infer", data=b"{not json")
    assert status == 400 and json.loads(body)["error"].startswith("body: not JSON")
    one = {"inputs": [{"name": "z", "shape": [1, 128], "datatype": "FP32", "data": [[0.5] * 128]}]}
    status, body = get(f"{http}/v2/models/mapping/infer", data=json.dumps(one).encode())
    reply = json.loads(body)
    assert status == 200 and reply["outputs"][0]["name"] == "w" and reply["outputs"][0]["shape"] == [1, 128]
    w = np.asarray(reply["outputs"][0]["data"], np.float32)
    assert np.isfinite(w).all() and w.std() > 0
    # the metrics port answers /metrics only; probes are not requests
    assert get(server.metrics_url.replace("/metrics", "/healthz"))[0] == 404
    text = get(server.metrics_url)[1].decode()
    assert 'semgen_requests_total{code="INVALID_ARGUMENT",method="http/ModelInfer"}' in text
    assert 'semgen_probes_total{code="OK",method="http/health_live"}' in text
    assert not [line for line in samples(text, "semgen_requests_total") if 'method="http/health' in line]
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "semgen_build_info{",
                 'semgen_model_info{fingerprint="' + meta["versions"][0] + '",model="mapping",runtime="onnxruntime"}'):
        assert name in text


def test_grpc_oip_health_and_reflection_stay_out_of_the_request_series(server):
    with grpc.insecure_channel(server.address) as channel:
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                   response_deserializer=oip_pb2.ServerLiveResponse.FromString)
        assert live(b"", timeout=10).live
        ready = channel.unary_unary("/inference.GRPCInferenceService/ModelReady",
                                    request_serializer=oip_pb2.ModelReadyRequest.SerializeToString,
                                    response_deserializer=oip_pb2.ModelReadyResponse.FromString)
        assert ready(oip_pb2.ModelReadyRequest(name="synthesis_lse"), timeout=10).ready
    text = get(server.metrics_url)[1].decode()
    assert 'semgen_probes_total{code="OK",method="inference.GRPCInferenceService/ServerLive"}' in text
    requests = samples(text, "semgen_requests_total")
    assert requests and not [line for line in requests if "ServerLive" in line or "ModelReady" in line]
