"""Bearer-token authentication: a server interceptor that answers UNAUTHENTICATED unless the call carries
`authorization: Bearer <token>` metadata with the server's token (compared in constant time).

Exempt: grpc.health.v1.Health, so Docker's HEALTHCHECK and load balancers probe without the secret (health
tells only SERVING / NOT_SERVING). Reflection is NOT exempt: it lists the API, so it needs the token too.
The token travels in the clear unless the port has TLS (--tls-cert/--tls-key); without TLS use it on
loopback or behind a TLS-terminating proxy only.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

import grpc

from serving.core.handlers import handler_factory

AUTH_KEY = "authorization"
SCHEME = "bearer "
TOKEN_ENV = "SEMGEN_TOKEN"  # read when no --token-file is given (server and clients alike)
EXEMPT_SERVICES = ("grpc.health.v1.Health",)


def read_token(token_file: str | None) -> str:
    """The token in `token_file` (surrounding whitespace stripped), else $SEMGEN_TOKEN, else "" (no token).
    A named file that is missing or empty raises ValueError: a typo must not turn authentication off."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"--token-file: cannot read {token_file!r}: {e.strerror}") from None
        if not token:
            raise ValueError(f"--token-file: {token_file!r} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip()


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED without running it."""
    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    factory = handler_factory(handler.request_streaming, handler.response_streaming)
    return factory(deny, request_deserializer=None, response_serializer=handler.response_serializer)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Calls to every service but EXEMPT_SERVICES need `authorization: Bearer <token>`."""

    def __init__(self, token: str, exempt: tuple[str, ...] = EXEMPT_SERVICES):
        if not token:
            raise ValueError("BearerTokenInterceptor needs a non-empty token")
        self._token = token.encode()
        self._exempt = tuple(f"/{service}/" for service in exempt)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        given = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_KEY and isinstance(value, str):
                given = value
        refused = token_refused(given, self._token)
        return handler if refused is None else _denied(handler, refused)


def token_refused(given: str | None, token: bytes) -> str | None:
    """Why an `authorization` value (None: absent) does not carry `token`; None when it does."""
    if given is None:
        return ("this server needs a token: send 'authorization: Bearer <token>' "
                "(semgen client: --token-file or $SEMGEN_TOKEN)")
    if not given[:len(SCHEME)].lower() == SCHEME:
        return "authorization must be 'Bearer <token>'"
    if not hmac.compare_digest(given[len(SCHEME):].strip().encode(), token):
        return "invalid token"
    return None


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name (or 0.0.0.0, ::): may resolve to anything


def check_exposure(host: str, tls_cert: str, tls_key: str, tls_client_ca: str, token: str, insecure: bool,
                   host_flag: str = "--host") -> None:
    """`semgen serve`'s TLS and token flags: consistent, and a non-loopback --host only with TLS or a token,
    or with --insecure said out loud. Raises ValueError naming the flags."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if tls_client_ca and not tls_cert:
        raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key), ("--tls-client-ca", tls_client_ca)):
        if path and not Path(path).is_file():
            raise ValueError(f"{flag}: no such file {path!r}")
    if not (is_loopback(host) or tls_cert or token or insecure):
        raise ValueError(f"{host_flag} {host} is reachable from other machines, and this server has neither TLS "
                         f"(--tls-cert/--tls-key) nor a token (--token-file or ${TOKEN_ENV}): anyone who reaches "
                         f"the port could call every RPC. Add TLS and/or a token, or pass --insecure to serve it "
                         f"open anyway (e.g. on a private network)")
