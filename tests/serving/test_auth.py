"""Auth and TLS (issue 17, item 8): bearer token checked by an interceptor (health exempt), TLS and mutual TLS
on the port, a non-loopback --host refused without TLS or a token unless --insecure, and the client CLI's
--token-file/--tls-ca."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from servingkit import LEVELS, FakePipeline, in_thread, png_bytes, sample_value

from serving.core.auth import TOKEN_ENV
from serving.core.channel import Connection, open_channel, tls_credentials
from serving.core.healthcheck import check as health_check
from serving.core.metrics import ServingMetrics
from serving.engines import Engines
from serving.options import ServeOptions
from serving.pyramid.client import SemgenClient
from serving.pyramid.engine import EmbeddedEngine
from serving.server import add_port, attach_engines, create_server

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"


@pytest.fixture(autouse=True)
def no_env_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A self-signed certificate for localhost/127.0.0.1 (it is also its own CA) and a token file."""
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    (d / "token").write_text(TOKEN + "\n")
    (d / "wrong").write_text("not-the-token\n")
    return {name: str(d / f) for name, f in (("cert", "cert.pem"), ("key", "key.pem"), ("token", "token"),
                                             ("wrong", "wrong"))}


@contextlib.asynccontextmanager
async def secure_server(**options):
    """The real server (create_server + add_port, as `semgen serve` binds it) on a free loopback port."""
    opts = ServeOptions(port=0, **options)
    opts.check()
    metrics = ServingMetrics()
    gateway = await create_server(opts, metrics)
    port = add_port(gateway.server, opts, "127.0.0.1:0")
    await gateway.server.start()
    engine = EmbeddedEngine(FakePipeline(), LEVELS, metrics=metrics)
    await attach_engines(gateway, Engines(pyramid=engine), "fake")
    try:
        yield type("Server", (), dict(address=f"127.0.0.1:{port}", metrics=metrics))
    finally:
        await gateway.server.stop(0)
        await engine.close()


def generate(address: str, **channel_kwargs):
    """(reply, None) or (None, grpc code) of one Generate."""
    with SemgenClient(address, timeout=10, **channel_kwargs) as client:
        try:
            return client.generate_response(png_bytes(), "fc7", num_samples=1), None
        except grpc.RpcError as e:
            return None, e.code()


@pytest.fixture(scope="module")
def tls_token_server(pki):
    with in_thread(secure_server(tls_cert=pki["cert"], tls_key=pki["key"], token_file=pki["token"])) as server:
        yield server


def test_token_over_tls_is_needed_and_checked(tls_token_server, pki):
    tls = tls_credentials(pki["cert"])
    address = tls_token_server.address
    assert generate(address, credentials=tls)[1] == grpc.StatusCode.UNAUTHENTICATED  # no token
    assert generate(address, credentials=tls, token="not-the-token")[1] == grpc.StatusCode.UNAUTHENTICATED
    assert generate(address, credentials=tls, token=TOKEN.upper())[1] == grpc.StatusCode.UNAUTHENTICATED
    reply, error = generate(address, credentials=tls, token=TOKEN)
    assert error is None and len(reply.images) == 1
    # The refusals are counted by the telemetry interceptor (it runs outside the auth one).
    method = "semgen.v1.PyramidService/Generate"
    assert sample_value(tls_token_server.metrics, "semgen_requests_total", method=method, code="UNAUTHENTICATED") >= 3


def test_unauthenticated_message_says_what_to_send(tls_token_server, pki):
    with SemgenClient(tls_token_server.address, timeout=10, credentials=tls_credentials(pki["cert"])) as client:
        with pytest.raises(grpc.RpcError) as e:
            client.generate(png_bytes(), "fc7")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in e.value.details()


def test_health_needs_no_token_but_reflection_does(tls_token_server, pki):
    tls = tls_credentials(pki["cert"])
    assert health_check(tls_token_server.address, credentials=tls) == "SERVING"
    assert health_check(tls_token_server.address) != "SERVING"  # plaintext to a TLS port: no answer
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for token, expected in ((None, grpc.StatusCode.UNAUTHENTICATED), (TOKEN, None)):
        with open_channel(tls_token_server.address, credentials=tls, token=token) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            try:
                list(stub.ServerReflectionInfo(iter([request]), timeout=10))
                code = None
            except grpc.RpcError as e:
                code = e.code()
        assert code == expected


def test_healthcheck_command_with_tls_ca(tls_token_server, pki):
    from serving.core.healthcheck import main

    assert main(["--address", tls_token_server.address, "--tls-ca", pki["cert"]]) == 0


def test_token_without_tls_on_loopback(pki):
    with in_thread(secure_server(token_file=pki["token"])) as server:
        assert generate(server.address)[1] == grpc.StatusCode.UNAUTHENTICATED
        assert generate(server.address, token=TOKEN)[1] is None
        assert health_check(server.address) == "SERVING"


def test_mutual_tls_refuses_a_client_without_a_certificate(pki):
    with in_thread(secure_server(tls_cert=pki["cert"], tls_key=pki["key"], tls_client_ca=pki["cert"])) as server:
        assert generate(server.address, credentials=tls_credentials(pki["cert"]))[1] == grpc.StatusCode.UNAVAILABLE
        reply, error = generate(server.address, credentials=tls_credentials(pki["cert"], pki["cert"], pki["key"]))
        assert error is None and len(reply.images) == 1


def test_non_loopback_host_needs_tls_a_token_or_insecure(pki, monkeypatch):
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com"):
        with pytest.raises(ValueError, match="--insecure"):
            ServeOptions(host=host).check()
        ServeOptions(host=host, insecure=True).check()
        ServeOptions(host=host, token_file=pki["token"]).check()
        ServeOptions(host=host, tls_cert=pki["cert"], tls_key=pki["key"]).check()
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        ServeOptions(host=host).check()
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    ServeOptions(host="0.0.0.0").check()
    assert ServeOptions().token == TOKEN


@pytest.mark.parametrize("options, flag", [
    (dict(tls_cert="cert"), "--tls-key"),
    (dict(tls_client_ca="cert"), "--tls-client-ca"),
    (dict(tls_cert="/no/such.pem", tls_key="/no/such.pem"), "--tls-cert"),
    (dict(token_file="/no/such/token"), "--token-file"),
])
def test_tls_and_token_flags_are_checked(pki, options, flag):
    options = {k: pki.get(v, v) for k, v in options.items()}
    with pytest.raises(ValueError, match=flag):
        ServeOptions(**options).check()


def test_empty_token_file_is_an_error(tmp_path):
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        ServeOptions(token_file=str(tmp_path / "empty")).check()


def test_client_options_json_never_holds_the_token(pki):
    conn = Connection(token_file=pki["token"], tls_ca=pki["cert"])
    assert conn.channel_kwargs()["token"] == TOKEN
    assert TOKEN not in repr(conn)


def test_client_cli_with_token_file_and_tls_ca(tls_token_server, pki, tmp_path):
    (tmp_path / "ref.png").write_bytes(png_bytes())
    base = [sys.executable, "-m", "semgen_cli", "client", "pyramid", "generate", "--address", tls_token_server.address,
            "--image", str(tmp_path / "ref.png"), "--level", "fc7", "--num-samples", "1", "--tls-ca", pki["cert"]]
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    denied = subprocess.run([*base, "--out", str(tmp_path / "denied")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    done = subprocess.run([*base, "--out", str(tmp_path / "out"), "--token-file", pki["token"]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    assert TOKEN not in (tmp_path / "out" / "generate_options.json").read_text()
