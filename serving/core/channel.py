"""Client plumbing every service's client shares: one channel with the server's limits and gRPC's own
retry policy, and reading the stream of an iterative job."""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from semgen.options import opt
from serving.core.auth import AUTH_KEY, TOKEN_ENV, read_token

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # matches the server's default
SERVICES = ("semgen.v1.PyramidService", "semgen.v1.SemanticsService", "semgen.v1.ImagineService",
            "semgen.v1.HiganService")
# UNAVAILABLE means the call did not run (model loading, a backend restarting, a draining replica), so
# gRPC itself retries it with backoff; a stream is retried only before its first reply arrives.
RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": service} for service in SERVICES],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


def job_result(events, on_progress=None):
    """Read the stream of an iterative job (SampleConditional, EditSemantics, Imagine): every
    progress to `on_progress`, then return the result."""
    for event in events:
        if event.HasField("result"):
            return event.result
        if on_progress is not None:
            on_progress(event.progress)
    raise RuntimeError("the job's stream ended without a result")


def follow_job(events, desc: str, show):
    """`job_result` with a tqdm progress bar: `show(bar, progress)` updates it for every progress.
    Ctrl-C cancels the job on the server."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="it")
    try:
        return job_result(events, lambda progress: show(bar, progress))
    except KeyboardInterrupt:
        events.cancel()
        raise
    finally:
        bar.close()


ADDRESS_ENV = "SEMGEN_ADDRESS"  # where `semgen client ...` and the Python clients go when no address is given
DEFAULT_ADDRESS = "127.0.0.1:50051"


def default_address() -> str:
    return os.environ.get(ADDRESS_ENV, "").strip() or DEFAULT_ADDRESS


@dataclass(frozen=True, kw_only=True)
class Connection:
    """How a client reaches the server: every `semgen client ...` command's options include these."""

    address: str = opt("", f"the server's host:port (default: ${ADDRESS_ENV} if set, else {DEFAULT_ADDRESS})")
    token_file: str | None = opt(None, f"file holding the server's bearer token (default: ${TOKEN_ENV} if set); "
                                       "sent as 'authorization: Bearer <token>'")
    tls: bool = opt(False, "TLS, the server's certificate checked against the system's CAs (implied by --tls-ca)")
    tls_ca: str | None = opt(None, "PEM of the CA that signed the server's certificate; turns TLS on")
    tls_cert: str | None = opt(None, "client certificate PEM, for a server that asks for one (mTLS)")
    tls_key: str | None = opt(None, "the client certificate's private key PEM")
    tls_server_name: str | None = opt(None, "the name the server's certificate must carry, if not the host of "
                                            "--address")

    def __post_init__(self):
        if not self.address:  # a frozen dataclass: set once, here
            object.__setattr__(self, "address", default_address())

    def channel_kwargs(self) -> dict:
        """ChannelClient's keyword arguments: token, credentials (None: plaintext), server_name."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        credentials = None
        if self.tls or self.tls_ca or self.tls_cert:
            credentials = tls_credentials(self.tls_ca, self.tls_cert, self.tls_key)
        return dict(token=read_token(self.token_file) or None, credentials=credentials,
                    server_name=self.tls_server_name)


def tls_credentials(ca: str | None = None, cert: str | None = None, key: str | None = None) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files: the CA to trust (None: the system's), a client cert + key (mTLS)."""
    def read(path):
        return Path(path).read_bytes() if path else None
    return grpc.ssl_channel_credentials(read(ca), read(key), read(cert))


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call (on TLS and plaintext channels alike)."""

    def __init__(self, token: str):
        self._pair = (AUTH_KEY, f"Bearer {token}")

    def _details(self, d):
        return _Details(d.method, d.timeout, (*(d.metadata or ()), self._pair), d.credentials,
                        d.wait_for_ready, getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    intercept_stream_stream = intercept_stream_unary


def open_channel(address: str, options=(), token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, server_name: str | None = None) -> grpc.Channel:
    """A channel to `address`: TLS when `credentials` are given (else plaintext), the bearer `token` on every call."""
    options = list(options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    channel = (grpc.secure_channel(address, credentials, options=options) if credentials is not None
               else grpc.insecure_channel(address, options=options))
    return grpc.intercept_channel(channel, _TokenInterceptor(token)) if token else channel


class ChannelClient:
    """One gRPC channel with the server's message limits; closes as a context manager. `address`: host:port
    (None: $SEMGEN_ADDRESS if set, else 127.0.0.1:50051).
    `token`: the server's bearer token; `credentials`: TLS (`tls_credentials(...)`), None for plaintext;
    `Connection(...).channel_kwargs()` gives both from a command's flags."""

    def __init__(self, address: str | None = None, timeout: float = 60.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, wait_for_ready: bool = False, *,
                 token: str | None = None, credentials: grpc.ChannelCredentials | None = None,
                 server_name: str | None = None):
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._channel = open_channel(address or default_address(), [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ], token, credentials, server_name)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
