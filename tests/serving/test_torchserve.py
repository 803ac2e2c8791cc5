"""TorchServe round trip: build a .mar from a throwaway batching handler, start TorchServe on free
loopback ports, send concurrent requests, read Prometheus metrics, stop and check the ports."""

from __future__ import annotations

import http.client
import textwrap
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from export.mar import build_mar
from serving.torchserve.config import port_open
from serving.torchserve.process import TorchServeProcess, TorchServeSettings, java_available

HANDLER = textwrap.dedent(
    """
    import os

    from serving.torchserve.handler import handler_settings  # the worker runs our venv's python


    def handle(data, context):
        if data is None:  # TorchServe calls handle(None, context) once to initialise
            settings = handler_settings(context)
            model_dir = context.system_properties["model_dir"]
            assert settings == {"suffix": "!"}, settings
            assert os.path.isfile(os.path.join(model_dir, "assets", "note.txt"))
            return None
        suffix = handler_settings(context)["suffix"].encode()
        batch = str(len(data)).encode()
        for i in range(len(data)):
            context.set_response_header(i, "x-batch-size", batch.decode())
        return [bytes(request["body"])[::-1] + suffix for request in data]
    """
)


def _post(port: int, body: bytes, token: dict) -> tuple[int, bytes, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/predictions/reverse", body=body,
                     headers={"Content-Type": "application/octet-stream", **token})
        reply = conn.getresponse()
        return reply.status, reply.read(), reply.getheader("x-batch-size")
    finally:
        conn.close()


_MANAGEMENT = "/org.pytorch.serve.grpc.management.ManagementAPIsService/"
_INFERENCE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"


def test_torchserve_round_trip(tmp_path):
    ok, reason = java_available()
    if not ok:
        pytest.skip(reason)

    handler = tmp_path / "reverse_handler.py"
    handler.write_text(HANDLER)
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "note.txt").write_text("kept as assets/note.txt")
    store = tmp_path / "store"
    mar = build_mar("reverse", handler, store, [assets], {
        "minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 50,
        "responseTimeout": 30, "handler": {"suffix": "!"},
    })
    assert mar == store / "reverse.mar" and mar.is_file()

    server = TorchServeProcess(TorchServeSettings(model_store=store, models=[mar.name]),
                               tmp_path / "ts")
    with server:
        assert server.alive()
        port = server.settings.inference_port
        bodies = [f"request-{i}-".encode() * (i + 1) for i in range(4)]
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda body: _post(port, body, server.keys.header("inference")), bodies))
        for body, (status, reply, _) in zip(bodies, replies):
            assert status == 200
            assert reply == body[::-1] + b"!"
        # with maxBatchDelay 50 ms the four concurrent requests share at least one batch
        assert max(int(batch) for _, _, batch in replies) > 1

        metrics_url = server.address.metrics_url + "/metrics"
        with urllib.request.urlopen(metrics_url, timeout=10) as reply:
            metrics = reply.read().decode()
        assert "# TYPE ts_inference_requests_total counter" in metrics
        assert 'ts_inference_requests_total{model_name="reverse"' in metrics

        # the HTTP management API (it can scale models to 0 workers) is on no TCP port, only on a socket in
        # a folder no other user can enter, where the gateway still sees the model ready
        assert not port_open(server.settings.host, server.settings.management_port)
        socket_path = server.settings.management_socket
        assert socket_path.is_socket() and socket_path.parent.stat().st_mode & 0o077 == 0
        assert server.address.model_ready("reverse")
        # the rest asks for the keys only we can read: HTTP inference, and both gRPC APIs (always on TCP)
        assert server.keys.path.stat().st_mode & 0o077 == 0
        status, reply, _ = _post(port, b"abc", {})
        assert status == 400 and b"Token Authorization failed" in reply
        assert _post(port, b"abc", {"Authorization": "Bearer guessed"})[0] == 400
        for port, method in [(server.settings.grpc_management_port, _MANAGEMENT + "ScaleWorker"),
                             (server.settings.grpc_inference_port, _INFERENCE + "Predictions")]:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.RpcError) as refused:
                    channel.unary_unary(method)(b"", timeout=10)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert server.address.model_ready("reverse")  # still 1 worker

    assert not server.alive()
    assert server.ports_open() == []


def test_the_key_file_of_an_operators_torchserve_is_checked(tmp_path):
    from serving.options import ServeOptions
    from serving.torchserve.config import KeyFile

    keys = tmp_path / "key_file.json"
    keys.write_text('{"inference": {"key": "abc"}, "management": {"key": "def"}, "API": {"key": "ghi"}}')
    ServeOptions(torchserve_address="http://127.0.0.1:8080", torchserve_key_file=str(keys)).check()
    for bad in (dict(torchserve_key_file=str(keys)),  # without --torchserve-address
                dict(torchserve_address="http://127.0.0.1:8080", torchserve_key_file=str(tmp_path / "none.json"))):
        with pytest.raises(ValueError, match="--torchserve-key-file"):
            ServeOptions(**bad).check()
    assert KeyFile(keys).header("inference") == {"Authorization": "Bearer abc"}
    assert KeyFile(keys).header("management") == {"Authorization": "Bearer def"}
    keys.write_text('{"inference": {"ke')  # half written: no header yet, and no error
    assert KeyFile(keys).header("inference") == {} and KeyFile(tmp_path / "none.json").header("inference") == {}
