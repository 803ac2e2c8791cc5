"""The Open Inference Protocol's pieces on a fake graph (no models): tensor decoding, checks and limits, the HTTP
app (auth, the binary tensor extension, errors by status)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from semgen.pipelines.graphs import GraphSpec, TensorSpec
from serving.core.admission import Admission
from serving.core.errors import InvalidInput
from serving.core.metrics import ServingMetrics
from serving.core.protos import oip_pb2 as pb
from serving.core.validation import Limits
from serving.oip.http import BINARY_HEADER, create_app
from serving.oip.models import TensorModels
from serving.oip.tensors import decode_grpc_inputs, encode_grpc_outputs

DOUBLE = GraphSpec("double", (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),), "ab" * 32)


class DoublingEngine:
    graphs = {"double": DOUBLE}

    def __init__(self):
        self.calls = 0

    async def infer(self, graph, inputs, max_rows):
        self.calls += 1
        return {"y": inputs["x"] * 2}


def models(engine=None, **limits) -> TensorModels:
    m = TensorModels(Limits(**limits), Admission(1 << 30))
    m.attach([engine or DoublingEngine()])
    return m


def test_grpc_tensors_raw_and_typed_decode_the_same_and_errors_name_the_tensor():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    raw = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[3, 2])],
                               raw_input_contents=[x.tobytes()])
    typed = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[3, 2])])
    typed.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    assert np.array_equal(decode_grpc_inputs(raw)["x"], x) and np.array_equal(decode_grpc_inputs(typed)["x"], x)
    short = pb.ModelInferRequest(inputs=raw.inputs, raw_input_contents=[x.tobytes()[:-4]])
    with pytest.raises(InvalidInput, match=r"inputs\[x\]: 20 raw bytes, but FP32 \[3, 2\] takes 24"):
        decode_grpc_inputs(short)
    two = pb.ModelInferRequest(inputs=list(raw.inputs) * 2, raw_input_contents=[x.tobytes()])
    with pytest.raises(InvalidInput, match="raw_input_contents: 1 blobs for 2 inputs"):
        decode_grpc_inputs(two)
    odd = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="BF17", shape=[1])])
    with pytest.raises(InvalidInput, match=r"inputs\[x\]: datatype 'BF17' is not supported"):
        decode_grpc_inputs(odd)
    reply = pb.ModelInferResponse()
    encode_grpc_outputs(reply, {"y": x}, raw=False)
    assert list(reply.outputs[0].contents.fp32_contents) == x.ravel().tolist() and not reply.raw_output_contents


def test_checks_and_limits_come_before_the_engine_runs():
    engine = DoublingEngine()
    m = models(engine, max_samples=4, max_request_decoded_bytes=1000)

    async def infer(inputs, requested=()):
        return await m.infer("double", "", inputs, list(requested))

    x = np.ones((2, 2), np.float32)
    model, out = asyncio.run(infer({"x": x}))
    assert model.version == "ab" * 8 and np.array_equal(out["y"], 2 * x)
    for inputs, requested, message in (
            ({"x": np.ones((5, 2), np.float32)}, (), r"inputs\[x\]: 5 rows is over the limit of 4 per request"),
            ({"x": np.ones((2, 3), np.float32)}, (), r"inputs\[x\]: shape \[2, 3\] does not match \[-1, 2\]"),
            ({"x": np.ones((2, 2), np.int64)}, (), r"inputs\[x\]: datatype must be FP32"),
            ({"x": x, "w": x}, (), r"inputs\[w\]: double has no input of that name"),
            ({"x": x}, ("z",), r"outputs\[z\]: double has no output of that name")):
        with pytest.raises(InvalidInput, match=message):
            asyncio.run(infer(inputs, requested))
    big = models(engine, max_samples=1000, max_request_decoded_bytes=1000)
    with pytest.raises(InvalidInput, match="inputs: 1600 bytes of inputs and outputs is over the limit of 1000"):
        asyncio.run(big.infer("double", "", {"x": np.ones((100, 2), np.float32)}, []))
    assert engine.calls == 1


def http_calls(m: TensorModels, token: str, calls):
    """Run `calls(client)` against the HTTP app on a test server; returns what it returns."""
    async def run():
        async with TestClient(TestServer(create_app(m, ServingMetrics(), token))) as client:
            return await calls(client)

    return asyncio.run(run())


def test_http_token_binary_extension_and_errors():
    m = models()
    x = np.array([[1.5, -2.0]], np.float32)

    async def calls(client):
        out = {}
        out["health"] = (await client.get("/healthz")).status
        out["v2_ready"] = (await client.get("/v2/health/ready")).status
        no_token = await client.get("/v2/models/double")
        out["no_token"] = (no_token.status, (await no_token.json())["error"])
        auth = {"Authorization": "Bearer s3cret"}
        out["wrong_token"] = (await client.get("/v2/models/double", headers={"Authorization": "Bearer nope"})).status
        header = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                         "parameters": {"binary_data_size": 8}}],
                             "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
        reply = await client.post("/v2/models/double/infer", data=header + x.tobytes(),
                                  headers={**auth, BINARY_HEADER: str(len(header))})
        body, length = await reply.read(), int(reply.headers[BINARY_HEADER])
        out["binary"] = (reply.status, json.loads(body[:length]), np.frombuffer(body[length:], np.float32))
        bad = await client.post("/v2/models/double/infer", data=header + x.tobytes()[:4],
                                headers={**auth, BINARY_HEADER: str(len(header))})
        out["short"] = (bad.status, (await bad.json())["error"])
        missing = await client.post("/v2/models/nope/infer", json={"inputs": []}, headers=auth)
        out["no_inputs"] = (missing.status, (await missing.json())["error"])
        unknown = await client.get("/v2/models/nope", headers=auth)
        out["unknown"] = (unknown.status, (await unknown.json())["error"])
        out["no_route"] = (await client.get("/v3", headers=auth)).status
        return out

    out = http_calls(m, "s3cret", calls)
    assert out["health"] == 200 and out["v2_ready"] == 200
    assert out["no_token"] == (401, "this server needs a token: send 'authorization: Bearer <token>' "
                                    "(semgen client: --token-file or $SEMGEN_TOKEN)")
    assert out["wrong_token"] == 401
    status, head, y = out["binary"]
    assert status == 200 and head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.array_equal(y, [3.0, -4.0]) and head["model_version"] == "ab" * 8
    assert out["short"] == (400, "inputs[x]: binary_data_size 8 runs past the binary data")
    assert out["no_inputs"][0] == 400 and out["no_inputs"][1].startswith("inputs: give a non-empty list")
    assert out["unknown"] == (404, "model_name: no model named 'nope'; models: double")
    assert out["no_route"] == 404


def test_not_ready_until_attached():
    m = TensorModels(Limits(), Admission(1 << 20))

    async def calls(client):
        return ((await client.get("/readyz")).status, (await client.get("/v2/health/ready")).status,
                (await client.get("/v2/models/double")).status)

    assert http_calls(m, "", calls) == (503, 400, 503)


def test_a_non_loopback_http_host_needs_a_token_tls_or_insecure(monkeypatch):
    from serving.options import ServeOptions

    monkeypatch.delenv("SEMGEN_TOKEN", raising=False)
    with pytest.raises(ValueError, match="--http-host 0.0.0.0 is reachable from other machines"):
        ServeOptions(http_host="0.0.0.0").check()
    ServeOptions(http_host="0.0.0.0", insecure=True).check()
    ServeOptions(http_host="0.0.0.0", http_port=-1).check()  # HTTP off: nothing exposed


def test_http_malformed_requests_are_400_and_model_ready_needs_the_token():
    engine = DoublingEngine()
    m = models(engine, max_samples=2_000_000)
    auth = {"Authorization": "Bearer s3cret"}
    rows = 1_100_000  # 8.8 MB of FP32 outputs: too many for JSON, fine as binary data
    x = np.ones((rows, 2), np.float32)
    header = {"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}]}

    def binary_body(head):
        data = json.dumps(head).encode()
        return data + x.tobytes(), {**auth, BINARY_HEADER: str(len(data))}

    async def calls(client):
        out = {}
        out["ready_open"] = (await client.get("/v2/models/double/ready")).status
        out["v2_health_open"] = (await client.get("/v2/health/live")).status
        for case, body in (("parameters", {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                                       "data": [1, 2], "parameters": "x"}]}),
                           ("huge_shape", {"inputs": [{"name": "x", "shape": [2 ** 32, 2 ** 32], "datatype": "FP32",
                                                       "data": []}]}),
                           ("nested", None)):
            data = json.dumps(body).encode() if body else b"[" * 100_000 + b"]" * 100_000
            reply = await client.post("/v2/models/double/infer", data=data, headers=auth)
            out[case] = (reply.status, (await reply.json())["error"])
        reply = await client.post("/v2/models/double/infer", data=b"{}", headers={**auth, BINARY_HEADER: "²"})
        out["header_length"] = reply.status
        data, headers = binary_body(header)
        reply = await client.post("/v2/models/double/infer", data=data, headers=headers)
        out["json_too_large"] = (reply.status, (await reply.json())["error"])
        data, headers = binary_body({**header, "parameters": {"binary_data_output": True},
                                     "outputs": [{"name": "y", "parameters": {"binary_data": False}}]})
        reply = await client.post("/v2/models/double/infer", data=data, headers=headers)
        out["per_output_wins"] = reply.status
        data, headers = binary_body({**header, "parameters": {"binary_data_output": True}})
        reply = await client.post("/v2/models/double/infer", data=data, headers=headers)
        body = await reply.read()
        out["binary_ok"] = (reply.status, len(body) - int(reply.headers[BINARY_HEADER]))
        return out

    out = http_calls(m, "s3cret", calls)
    assert out["ready_open"] == 401 and out["v2_health_open"] == 200  # model readiness lists models: token
    assert out["parameters"] == (400, "inputs[x].parameters: must be a JSON object")
    assert out["huge_shape"][0] == 400 and out["huge_shape"][1].startswith("inputs[x]: shape [4294967296, 4294967296]")
    assert out["nested"] == (400, "body: not JSON (RecursionError)")
    assert out["header_length"] == 400
    assert out["json_too_large"] == (400, "outputs: 8800000 bytes of outputs as JSON is over the limit of 8388608; "
                                          'ask for binary data ("parameters": {"binary_data_output": true}) or for '
                                          "fewer rows")
    assert out["per_output_wins"] == 400  # binary_data false on y: JSON, too large again
    assert out["binary_ok"] == (200, 8_800_000) and engine.calls == 1  # only the binary call ran
