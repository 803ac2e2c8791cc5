"""Exit 0 if the server's grpc.health.v1 status is SERVING, 1 otherwise (Docker HEALTHCHECK).

    python -m serving.core.healthcheck --address 127.0.0.1:50051 [--service semgen.v1.PyramidService]
    python -m serving.core.healthcheck --tls-ca ca.pem [--tls-server-name NAME]     # a server with TLS

Health needs no token (the server exempts grpc.health.v1); with TLS it needs the CA (and, with mutual TLS,
a client certificate: --tls-cert/--tls-key).
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semgen.options import add_options, options_from_args
from serving.core.channel import Connection, open_channel


def check(address: str, service: str = "", timeout: float = 3.0, **channel_kwargs) -> str:
    """The status name (SERVING, NOT_SERVING, ...) or the gRPC error code name. `channel_kwargs`:
    open_channel's (credentials for TLS, server_name), e.g. Connection(...).channel_kwargs()."""
    with open_channel(address, **channel_kwargs) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--service", default="", help='service name; "" (default) is the whole server')
    parser.add_argument("--timeout", type=float, default=3.0)
    add_options(parser, Connection)
    args = parser.parse_args(argv)
    conn = options_from_args(Connection, args)
    status = check(conn.address, args.service, args.timeout, **conn.channel_kwargs())
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
